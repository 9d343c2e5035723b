"""Tests for sandbox.py: generated programs that try to escape, and the guard that must stop each one.

Every test runs a real program in the sandbox and checks the outcome from outside, with the parent's own
eyes (a secret in our environment, a file in a folder we own, the process table), not with the sandbox's
own account of what happened. Tests run in each isolation mode this machine offers: "namespaces" (PID,
mount, network and user namespaces) and the "process-limits" fallback; a test is skipped, with the reason,
where the mode does not promise what the test checks (see sandbox.py's docstring).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import sandbox

LIMITS = sandbox.SandboxLimits(timeout=20.0, memory_mb=256, max_processes=16)
SHORT = sandbox.SandboxLimits(timeout=2.0, memory_mb=256, max_processes=16)
AS_ROOT = os.geteuid() == 0


def namespaces_or_skip():
    if sandbox.isolation_mode() != sandbox.NAMESPACES:
        pytest.skip("this machine cannot create user namespaces (`unshare --user` fails): fallback mode only")


@pytest.fixture(params=[sandbox.NAMESPACES, sandbox.PROCESS_LIMITS])
def mode(request):
    if request.param == sandbox.NAMESPACES:
        namespaces_or_skip()
    return request.param


@pytest.fixture
def open_folder():
    """A world-writable folder outside the sandbox, so that only the sandbox (not file modes) can protect it."""
    folder = tempfile.mkdtemp(prefix="sandbox-test-")
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder)


def processes_named(name: str) -> list[int]:
    """Pids of live processes whose command name (/proc/PID/comm, 15 bytes at most) is `name`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if comm == name and state != "Z":
            found.append(int(entry))
    return found


# A program sets its command name with prctl(PR_SET_NAME); every process it forks inherits the name, so
# the test can find them all in the process table afterwards.
NAME_ITSELF = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.prctl(15, {name!r}.encode(), 0, 0, 0)\n"


# ----------------------------------------------------------------------------------------------------
# The parent's environment


def test_a_program_cannot_read_the_parents_environment_through_proc(mode, tmp_path):
    if mode == sandbox.PROCESS_LIMITS and not AS_ROOT:
        pytest.skip("fallback mode as a normal user: the program shares our uid and can read our /proc (documented)")
    # /proc/PID/environ shows a process's environment as it was at exec; a variable set later (os.environ,
    # monkeypatch) never appears there. So the "parent" is a fresh interpreter started with the secret.
    secret = f"sk-{uuid.uuid4().hex}"
    # The program tries its parent, the parent's parent, and every process it can see.
    program = ("import os\ntargets = [os.getppid(), PARENT] + [p for p in os.listdir('/proc') if p.isdigit()]\n"
               "for pid in targets:\n    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
               "    except OSError as error:\n        print('refused', pid, error)\n")
    parent = ("import os, sys, sandbox\n"
              f"result = sandbox.run_python({program!r}.replace('PARENT', str(os.getpid())), "
              f"sandbox.SandboxLimits(timeout=20.0), isolation={mode!r})\n"
              "print(result.ok, result.stdout, result.stderr)\n")
    seen = subprocess.run([sys.executable, "-c", parent], env={**os.environ, "TEACHER_API_KEY": secret},
                          cwd=os.path.dirname(sandbox.__file__), capture_output=True, text=True, timeout=120)
    assert seen.stdout.startswith("True"), seen.stdout + seen.stderr
    assert secret not in seen.stdout + seen.stderr


def test_the_program_sees_an_empty_environment(mode):
    result = sandbox.run_python("import os\nprint(sorted(os.environ))\n", LIMITS, isolation=mode)
    assert result.stdout == "['HOME', 'LANG', 'PATH', 'TMPDIR']\n"


# ----------------------------------------------------------------------------------------------------
# Writes


def test_a_program_cannot_write_a_file_outside_its_temporary_folder(open_folder):
    namespaces_or_skip()  # the fallback does not confine writes to world-writable folders (documented)
    target = os.path.join(open_folder, "escaped.txt")
    result = sandbox.run_python(f"open({target!r}, 'w').write('escaped')\n", LIMITS)
    assert not os.path.exists(target)
    assert not result.ok and "Read-only file system" in result.stderr


def test_a_program_cannot_remount_the_filesystem_writable(open_folder):
    namespaces_or_skip()
    target = os.path.join(open_folder, "escaped.txt")
    # MS_REMOUNT | MS_BIND = 4128: what the supervisor did to make "/" read-only, undone; it needs a
    # capability the program no longer has.
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"for path in (b'/', {os.path.dirname(open_folder).encode()!r}):\n"
            "    print(libc.mount(None, path, None, 4128, None), ctypes.get_errno())\n"
            f"open({target!r}, 'w').write('escaped')\n")
    sandbox.run_python(code, LIMITS)
    assert not os.path.exists(target)


def test_a_program_can_write_in_its_own_temporary_folder(mode):
    result = sandbox.run_python("open('notes.txt', 'w').write('hi')\nprint(open('notes.txt').read())\n",
                                LIMITS, isolation=mode)
    assert (result.ok, result.stdout) == (True, "hi\n")


# ----------------------------------------------------------------------------------------------------
# Processes


def test_a_fork_loop_through_os_fork_is_refused(mode):
    result = sandbox.run_python("import os\nwhile True:\n    if os.fork() == 0:\n        break\n", LIMITS, isolation=mode)
    assert (result.ok, result.reason) == (False, "blocked call")


def test_a_fork_loop_through_libc_is_stopped_at_the_process_limit(mode):
    # ctypes goes around the audit hook; only RLIMIT_NPROC stops it. Children sleep, so they all count.
    # The loop stops itself at 300 so that a broken limit fails this test instead of flooding the machine.
    code = ("import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\nfor n in range(300):\n"
            "    pid = libc.fork()\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
            "    if pid < 0:\n        print(n)\n"
            "        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))\n")
    result = sandbox.run_python(code, LIMITS, isolation=mode)
    assert (result.ok, result.reason) == (False, "process limit")
    assert int(result.stdout) <= LIMITS.max_processes
    assert result.stray_processes == int(result.stdout)  # the sleeping children, killed at the end


def test_a_fork_bomb_through_libc_ends_at_the_timeout_and_leaves_no_process(mode):
    name = f"bomb{uuid.uuid4().hex[:8]}"
    result = sandbox.run_python(NAME_ITSELF.format(name=name) + "while True:\n    libc.fork()\n", SHORT,
                                isolation=mode)
    assert result.reason == "timeout"
    assert processes_named(name) == []


def test_a_child_that_calls_setsid_is_killed_when_the_program_ends(mode):
    # setsid() leaves the process group that a plain killpg would reach. The child would outlive the
    # program by a second; it must be gone as soon as run_python returns, and stay gone.
    name = f"setsid{uuid.uuid4().hex[:8]}"
    code = NAME_ITSELF.format(name=name) + (
        "import os, time\nif libc.fork() == 0:\n    libc.setsid()\n    time.sleep(1.5)\n"
        "    open('marker', 'w').write('alive')\n    print('child still alive', flush=True)\n    os._exit(0)\n"
        "print('parent done')\n")
    result = sandbox.run_python(code, LIMITS, isolation=mode)
    assert (result.ok, result.stdout, result.stray_processes) == (True, "parent done\n", 1)
    assert processes_named(name) == []
    time.sleep(2.0)  # past the child's sleep: a survivor would print now
    assert processes_named(name) == []


# ----------------------------------------------------------------------------------------------------
# Network and reporting


def test_a_program_calling_libc_directly_cannot_connect_to_this_machine():
    namespaces_or_skip()  # the fallback blocks sockets with the audit hook only, which ctypes goes around
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        address = "struct.pack('H', 2) + struct.pack('!H4s8x', %d, bytes([127, 0, 0, 1]))" % listener.getsockname()[1]
        code = ("import ctypes, struct\nlibc = ctypes.CDLL(None)\nfd = libc.socket(2, 1, 0)\n"
                f"address = {address}\nassert libc.connect(fd, address, len(address)) == 0\n")
        result = sandbox.run_python(code, LIMITS)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert not result.ok


def test_the_result_names_the_isolation_mode_it_ran_in(mode):
    assert sandbox.run_python("pass\n", LIMITS, isolation=mode).isolation == mode


@pytest.mark.parametrize("argv, message", [
    ([], "file: give a Python file to run, or --which"),
    (["/no/such/file.py"], "file: /no/such/file.py is not a file"),
    (["--timeout", "-1", "x.py"], "argument --timeout: must be in (0, 3600], got -1"),
    (["--memory-mb", "0", "x.py"], "argument --memory-mb: must be at least 64, got 0"),
])
def test_the_command_line_refuses_bad_input_in_one_line_naming_the_argument(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        sandbox.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
