"""The code sandbox: run a generated Python program in a separate, limited process. A room: synth.py's
instruction-reversal pipeline calls `run_python` to check regenerated code against its tests.

Phi-4 report, section 2 (synthetic data): code data is validated by execution, and "instruction reversal"
keeps a (instruction, code) pair only when code regenerated from the instruction passes the original's
tests. Running model-written code is the risky part, so every run goes through this file.

Layout, top to bottom:
    1. Limits and results     SandboxLimits, RunResult
    2. Choosing the isolation isolation_mode(): "namespaces" when this machine allows them, else
                              "process-limits"; every RunResult says which one it ran in
    3. The parent             run_python: temp folder, supervisor process, verdict
    4. The supervisor         runs between us and the program: mounts, limits, kill-all at the end
    5. The program's guard    an audit hook, then the program itself
    6. CLI

Three processes take part. We (the parent) start a supervisor with an empty environment in a fresh
temporary folder; the supervisor sets up the isolation, forks the program, waits for it at most
`timeout` seconds, then kills every process the program left behind and reports back through a pipe.

What it blocks, in mode "namespaces" (needs `unshare` from util-linux and user namespaces, which most
Linux kernels allow to unprivileged users; it is the mode on the machine this was written on):
    - the parent's environment and processes: the program lives in its own PID namespace with its own
      /proc, so /proc/<parent pid>/environ does not exist for it; its own environment is empty;
    - writes outside its temporary folder: in a private mount namespace every mount is remounted
      read-only except a bind mount of the temporary folder; the program runs with an empty capability
      bounding set (and no_new_privs), so it cannot remount anything writable again;
    - the network: an empty network namespace (only a downed loopback); the kernel refuses every connect;
    - runaway processes: RLIMIT_NPROC counts the namespace's processes (kernel 5.14+ counts per user
      namespace; older kernels count every process of the same real uid); when the program ends, the
      supervisor, PID 1 of the namespace, kills every survivor, and its exit makes the kernel kill any
      that remain, even ones that called setsid();
    - as root, the program runs as `nobody` (uid 65534) on the host, so it cannot read root-only files.
What it does not block, in any mode: reading files this user (or `nobody`) may read; using CPU up to the
wall timeout; filling the temporary folder with many files (RLIMIT_FSIZE caps each file, not their sum);
kernel exploits. For hostile code at scale use a VM or gVisor-style sandbox behind this same interface.

The fallback, mode "process-limits" (no `unshare`, or user namespaces disabled, e.g. some CI
containers): the same supervisor, rlimits and audit hook, but no namespaces. Then:
    - run as root, the program runs as `nobody`: it cannot read root's /proc/<pid>/environ or write
      root's files, but it can write world-writable folders (/tmp);
    - run as a normal user, the program shares that user's rights: it CAN read the user's other processes'
      environments through /proc and write the user's files. Do not hold secrets in such a process;
    - the network is blocked only by the audit hook, which ctypes can go around;
    - the supervisor is a child subreaper: orphans (setsid() included) are re-parented to it and killed
      when the program ends. A normal-user program can kill its supervisor first; the parent then kills
      the process group, and a process that left it (setsid) escapes.

Limits in both modes: wall clock (`timeout`), address space (RLIMIT_AS), CPU seconds, file size (also
bounds captured output), no core dumps, process count (RLIMIT_NPROC), `python -I` (no PYTHON* variables,
no user site-packages) and an audit hook that refuses sockets, subprocesses, exec and os.fork. The audit
hook is a Python-level speed bump: ctypes calls libc directly, so the kernel-level layers above are the
walls. As `nobody` the interpreter may find a different set of installed packages: generated code is
asked to use the standard library only.

Commands:
    python sandbox.py solution.py --timeout 5      # run a file in the sandbox, print the verdict and mode
    python sandbox.py --which                      # print the isolation mode this machine gives
    python -m pytest tests/test_sandbox.py         # the escape attempts, each must be stopped
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Only the standard library is imported at the top: this file is copied into the temporary folder and run
# there, by an interpreter that may not see this project or its packages.

NOBODY = 65534  # the conventional unprivileged uid and gid; root drops to it before running a program
NAMESPACES, PROCESS_LIMITS = "namespaces", "process-limits"
GRACE_SECONDS = 10.0  # beyond the program's timeout: supervisor start-up and clean-up
SUPERVISOR_FILE, PROGRAM_FILE = "_sandbox.py", "solution.py"

# ----------------------------------------------------------------------------------------------------
# 1. Limits and results


@dataclass
class SandboxLimits:
    timeout: float = 10.0  # wall-clock seconds
    memory_mb: int = 1024  # address space; Python itself needs ~30 MB, numpy ~200 MB more
    output_kb: int = 1024  # largest file the program may write, stdout and stderr included
    max_processes: int = 64  # processes and threads the program may add (RLIMIT_NPROC counts threads too)


@dataclass
class RunResult:
    ok: bool  # exited with status 0 within the limits
    # "ok", "timeout", "memory limit", "network blocked", "blocked call", "process limit", "cpu limit",
    # "output limit", "exit N", or "sandbox failure" (the supervisor itself did not report)
    reason: str
    returncode: int | None  # negative: killed by that signal
    stdout: str
    stderr: str
    isolation: str = NAMESPACES  # the mode it ran in: "namespaces" or "process-limits"
    stray_processes: int = 0  # processes still alive when the program ended; the sandbox killed them


# ----------------------------------------------------------------------------------------------------
# 2. Choosing the isolation

# --user: a user namespace, so no privilege is needed for the others; --map-root-user: we are uid 0
# inside it (and nobody, or ourselves, outside); --pid --fork --mount-proc: the supervisor becomes PID 1
# of a new PID namespace with its own /proc; --mount: private mounts to make read-only; --net: no network;
# --kill-child: if unshare dies (we kill it on a hang), the kernel kills the supervisor, hence the namespace.
UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child",
           "--mount", "--net", "--"]


@functools.cache
def isolation_mode() -> str:
    """"namespaces" when a trial run in them works on this machine, else "process-limits"."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return PROCESS_LIMITS
    # A real trial rather than a feature check: user namespaces can be switched off by sysctl, seccomp
    # or a container runtime in ways that only show up when one is used.
    trial = run_python("print('ok')", SandboxLimits(timeout=20.0), isolation=NAMESPACES)
    return NAMESPACES if trial.ok and trial.stdout == "ok\n" else PROCESS_LIMITS


# ----------------------------------------------------------------------------------------------------
# 3. The parent: run_python


def run_python(code: str, limits: SandboxLimits | None = None, isolation: str | None = None) -> RunResult:
    """Run `code` as a script in the sandbox and report whether and why it failed."""
    limits = limits or SandboxLimits()
    isolation = isolation or isolation_mode()
    # A root parent runs the program as nobody, with an interpreter nobody can run (ours may sit below
    # /root); when there is none, the program keeps root's uid (see the module docstring).
    python = nobody_python() if os.geteuid() == 0 else sys.executable
    as_nobody = os.geteuid() == 0 and python is not None
    with tempfile.TemporaryDirectory(prefix="synth-sandbox-") as workdir, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # The bind mount and the supervisor's chdir need the real path, without symlinks.
        workdir = os.path.realpath(workdir)
        # The program is a file, not `-c`: tracebacks then name solution.py and its real line numbers.
        Path(workdir, PROGRAM_FILE).write_text(code, encoding="utf-8")
        shutil.copyfile(__file__, Path(workdir, SUPERVISOR_FILE))  # readable by nobody, unlike our tree
        if as_nobody:
            os.chown(workdir, NOBODY, NOBODY)  # the one folder the program may write
        status_read, status_write = os.pipe()  # the supervisor's one-line report comes back here
        config = {"mode": isolation, "workdir": workdir, "python": python or sys.executable,
                  "timeout": limits.timeout, "memory": limits.memory_mb * 2**20, "output": limits.output_kb * 1024,
                  "max_processes": limits.max_processes, "status_fd": status_write,
                  "drop_to_nobody": as_nobody and isolation != NAMESPACES}
        command = [config["python"], "-I", "-X", "utf8", SUPERVISOR_FILE, "_supervise", json.dumps(config)]
        # In the namespace mode root becomes nobody before unshare, so that uid 0 inside maps to an
        # unprivileged uid outside: the kernel exempts real root from RLIMIT_NPROC.
        drop = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody and isolation == NAMESPACES else {}
        # Output goes to unnamed files, not pipes: RLIMIT_FSIZE then bounds it, and the program cannot
        # swap them for others by name.
        process = subprocess.Popen(
            (UNSHARE if isolation == NAMESPACES else []) + command, cwd=workdir,
            env={"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(status_write,),
            start_new_session=True, **drop)
        os.close(status_write)
        try:
            process.wait(timeout=limits.timeout + GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # the supervisor hangs: killed below, and its report is missing
        # The whole process group: unshare and, through --kill-child, the namespace; in the fallback, the
        # supervisor and whatever stayed in its group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        os.set_blocking(status_read, False)  # a report is there or not; never wait for one
        try:
            report = os.read(status_read, 65536)
        except BlockingIOError:
            report = b""
        os.close(status_read)
        stdout, stderr = read_output(out, head=True), read_output(err, head=False)
    return verdict(json.loads(report) if report else None, stdout, stderr, isolation)


@functools.cache
def nobody_python() -> str | None:
    """An interpreter (3.9 or newer) that uid nobody can start: ours, else the system's python3, else None."""
    for candidate in dict.fromkeys([sys.executable, shutil.which("python3", path=os.defpath)]):
        try:
            check = subprocess.run([candidate, "-I", "-c", "import sys; sys.exit(sys.version_info < (3, 9))"],
                                   user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", env={},
                                   capture_output=True, timeout=30)
        except (OSError, TypeError, subprocess.TimeoutExpired):
            continue  # TypeError: which() found nothing
        if check.returncode == 0:
            return candidate
    return None


def read_output(file, head: bool) -> str:
    # The first 64 KB of stdout (answers come first) and the last 64 KB of stderr (the traceback's end).
    file.seek(0)
    raw = file.read()
    return (raw[:65536] if head else raw[-65536:]).decode("utf-8", "replace")


def verdict(report: dict | None, stdout: str, stderr: str, isolation: str) -> RunResult:
    """Name the failure, so that a summary says which check dropped what."""
    if report is None or report.get("error"):
        # The supervisor died or could not set up the isolation: the program's fate is unknown.
        detail = (report or {}).get("error") or "the supervisor did not report"
        return RunResult(False, "sandbox failure", None, stdout, stderr + f"\nsandbox: {detail}", isolation)
    code = os.waitstatus_to_exitcode(report["status"])
    # The order matters: a timed-out program also has a negative return code, and a blocked socket or
    # a refused fork is also a non-zero exit.
    if report["timed_out"]:
        reason = "timeout"
    elif code == 0:
        reason = "ok"
    elif "MemoryError" in stderr:
        reason = "memory limit"
    elif "sandbox blocked socket" in stderr:
        reason = "network blocked"
    elif "sandbox blocked" in stderr:
        reason = "blocked call"
    elif "Resource temporarily unavailable" in stderr or "can't start new thread" in stderr:
        reason = "process limit"  # EAGAIN is what fork() and clone() return at RLIMIT_NPROC
    elif code == -signal.SIGXCPU:
        reason = "cpu limit"
    elif code == -signal.SIGXFSZ or "File too large" in stderr:  # Python ignores SIGXFSZ: writes fail instead
        reason = "output limit"
    else:
        reason = f"exit {code}"
    return RunResult(reason == "ok", reason, code, stdout, stderr, isolation, report["stray_processes"])


# ----------------------------------------------------------------------------------------------------
# 4. The supervisor
#
# Runs as `python -I _sandbox.py _supervise CONFIG` inside the temporary folder: PID 1 of the new PID
# namespace (mode "namespaces"), or a plain child of ours (mode "process-limits"). It never runs
# generated code itself; it forks the program and outlives it.

# From <sys/mount.h> and <linux/prctl.h>; the os module has no mount() and no prctl().
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 4096, 1 << 21, 1 << 24
# Mount flags that the kernel locks on mounts inherited from a more privileged namespace: a remount
# must repeat them or it is refused with EPERM.
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 24, 38, 36


def libc_call(name: str, *args) -> None:
    """Call a libc function that returns -1 on error, raising OSError with errno like the os module."""
    import ctypes  # imported here: the program's process should not find it preloaded

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}{args}: {os.strerror(error)}")


def unescape_mount_path(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def make_filesystem_read_only(workdir: str) -> None:
    """In our private mount namespace: every mount read-only, except a bind mount of the temporary folder."""
    libc_call("mount", workdir.encode(), workdir.encode(), None, MS_BIND, None)
    os.chdir(workdir)  # the old working directory was on the mount below the bind; step onto the new one
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target, options = unescape_mount_path(fields[4]), fields[5].split(",")
        if target == workdir or "ro" in options:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(bit for name, bit in KEPT_FLAGS.items() if name in options)
        try:
            libc_call("mount", None, target.encode(), None, flags, None)
        except OSError as error:
            # A mount we cannot even reach (below a folder only root may enter) the program cannot reach
            # either; any other refusal leaves something writable, so the run must not go ahead.
            if error.errno not in (1, 2, 13) or (error.errno == 1 and os.path.exists(target)):
                raise


def processes_of(uid: int) -> int:
    """How many processes with this real uid are visible in /proc."""
    count = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as f:
                count += any(line.split()[1] == str(uid) for line in f if line.startswith("Uid:"))
        except (OSError, IndexError):
            pass  # not a process, or one that just ended
    return count


def become_program(config: dict) -> None:
    """In the forked child: set every limit, give up privileges, and exec the guarded program."""
    os.close(config["status_fd"])  # the program must not forge the supervisor's report
    timeout_cpu = math.ceil(config["timeout"]) + 1  # above the wall limit: it only fires for multi-core burners
    limits = {resource.RLIMIT_AS: config["memory"], resource.RLIMIT_CPU: timeout_cpu,
              resource.RLIMIT_FSIZE: config["output"], resource.RLIMIT_CORE: 0}
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))  # soft == hard: the program cannot raise them again
    if config["drop_to_nobody"]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    # RLIMIT_NPROC counts processes of the real uid that already exist, so the budget is added to them.
    # In a namespace, unshare counts too but lives outside our /proc: one more.
    nproc = processes_of(os.getuid()) + (config["mode"] == NAMESPACES) + config["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if config["mode"] == NAMESPACES:
        # We are uid 0 of the user namespace. An empty bounding set means exec grants no capabilities, so
        # the program cannot remount the filesystem writable or touch the namespace's setup.
        for capability in range(64):
            try:
                libc_call("prctl", PR_CAPBSET_DROP, capability, 0, 0, 0)
            except OSError:
                break  # EINVAL: past the last capability this kernel knows
        libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives them back either
    os.execv(config["python"], [config["python"], "-I", "-X", "utf8", SUPERVISOR_FILE, "_run"])


def descendants() -> list[int]:
    """Live (not zombie) processes below this one in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                # The command name may hold spaces and parentheses: the fields start after the last ")".
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def kill_descendants() -> int:
    """SIGKILL every process below us until none is left; return how many there were."""
    killed = set()
    # Passes until a scan finds nobody: a process forked during one pass is caught by the next. As a
    # subreaper (or PID 1) we inherit every orphan, so nothing drops out of the tree while we look.
    for _ in range(1000):
        alive = descendants()
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        reap_children()
        time.sleep(0.01)
    return len(killed)


def supervise(config: dict) -> None:
    """Set up the isolation, run the program with a wall-clock limit, clean up, report through the pipe."""
    report = {"status": None, "timed_out": False, "stray_processes": 0, "error": None}
    try:
        if config["mode"] == NAMESPACES:
            make_filesystem_read_only(config["workdir"])
        libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come to us, not to the host's init
    except OSError as error:
        report["error"] = f"isolation setup failed: {error}"
    if report["error"] is None:
        program = os.fork()
        if program == 0:
            try:
                become_program(config)
            except BaseException as error:  # exec failed: say why, on the program's stderr
                print(f"sandbox: could not start the program: {error!r}", file=sys.stderr, flush=True)
            os._exit(126)  # never return into the supervisor's code
        deadline = time.monotonic() + config["timeout"]
        while report["status"] is None:
            pid, status = os.waitpid(-1, os.WNOHANG)  # reaps orphans too, so zombies do not pile up
            if pid == program:
                report["status"] = status
            elif pid == 0 and time.monotonic() > deadline:
                os.kill(program, signal.SIGKILL)
                report["timed_out"] = True
                report["status"] = os.waitpid(program, 0)[1]
            elif pid == 0:
                time.sleep(0.01)
        # Whatever the program started and left running is killed now, not when its sleep ends.
        report["stray_processes"] = kill_descendants()
    os.write(config["status_fd"], json.dumps(report).encode())


# ----------------------------------------------------------------------------------------------------
# 5. The program's guard


def refuse_escapes(event: str, args) -> None:
    """An audit hook: refuse the calls that leave the process (network, subprocesses, exec, fork)."""
    if event.startswith(("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn")) or \
            event in ("os.system", "os.fork", "os.forkpty", "pty.spawn"):
        raise PermissionError("sandbox blocked " + event)


def run_guarded_program() -> None:
    # Audit hooks cannot be removed once added: everything the program does from here on passes it.
    sys.addaudithook(refuse_escapes)
    sys.argv = [PROGRAM_FILE]
    with open(PROGRAM_FILE, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, PROGRAM_FILE, "exec"), {"__name__": "__main__"})


# ----------------------------------------------------------------------------------------------------
# 6. CLI


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The two internal entry points, used by the copy of this file inside the temporary folder.
    if argv[:1] == ["_supervise"]:
        supervise(json.loads(argv[1]))
        return 0
    if argv[:1] == ["_run"]:
        run_guarded_program()
        return 0
    import cli  # here, not at the top: the copy of this file in the temporary folder runs without the project

    parser = cli.Parser(description="Run a Python file in the sandbox synth.py uses for generated code, and "
                                    "print the verdict.")
    parser.add_argument("file", nargs="?", help="the Python file to run")
    parser.add_argument("--which", action="store_true", help="only print the isolation mode of this machine")
    parser.add_argument("--timeout", type=cli.between(0.0, 3600.0, low_open=True), default=10.0, help="wall-clock seconds")
    parser.add_argument("--memory-mb", type=cli.at_least(64), default=1024, help="address-space limit (MB)")
    parser.add_argument("--isolation", choices=[NAMESPACES, PROCESS_LIMITS], help="force a mode (default: best)")
    args = parser.parse_args(argv)
    if args.which:
        print(isolation_mode())
        return 0
    if not args.file:
        parser.error("file: give a Python file to run, or --which")
    if not os.path.isfile(args.file):
        parser.error(f"file: {args.file} is not a file")
    result = run_python(Path(args.file).read_text(encoding="utf-8"),
                        SandboxLimits(timeout=args.timeout, memory_mb=args.memory_mb), args.isolation)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    summary = {k: v for k, v in asdict(result).items() if k not in ("stdout", "stderr")}
    print(json.dumps(summary), file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
