"""The README is true: its quick start is the two commands CI and users run, every script answers --help,
and (slow) the main job runs as written on a fresh copy of the repository."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_start_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_install_and_run_then_test():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "pip install -r requirements.txt" in commands[0] and "speedrun.sh" in commands[0]


def test_ci_runs_exactly_the_readme_test_command():
    test_command = quick_start_commands()[1]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_lines = [line.split("#")[0].strip() for line in f]
    assert test_command in ci_lines


@pytest.mark.parametrize("script", ["model.py", "data.py", "train.py", "sample.py", "eval.py", "report.py", "rejection_sampling.py",
                                    "dpo.py", "pts.py", "synth.py", "benchmarks.py", "bench.py", "flash_attention.py",
                                    "scripts/measure_hf_load.py", "grade_assignment.py"])
def test_every_script_answers_help(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout


def test_the_scripts_import_without_fsdp_dtensor_or_distributed_checkpointing():
    # parallel.py, "Imports": those packages cost every --help and flag error ~1 s; the functions that
    # shard, save or load import them when called.
    heavy = ("torch.distributed.fsdp", "torch.distributed.tensor", "torch.distributed.checkpoint")
    code = ("import sys, train, dpo, eval, sample, rejection_sampling, pts, bench, benchmarks\n"
            f"print(sorted(name for name in sys.modules if name.startswith({heavy!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_sizes_table_matches_what_model_py_prints():
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Sizes", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")
    )}
    printed = subprocess.run([sys.executable, "model.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in printed.splitlines():
        # "  toy:       1,049,728 params (918,656 without embedding), 0.01 GFLOP/token at T=256"
        match = re.match(r"\s*(\w+):\s+([\d,]+) params .*?, ([\d.,]+) GFLOP/token at T=(\d+)", line)
        name, params, gflops, context = match.groups()
        assert rows[name][6] == params, name
        assert rows[name][7] == f"{gflops} at T={context}", name


def test_the_file_tree_lists_exactly_the_tracked_python_files():
    with open(os.path.join(ROOT, "README.md")) as f:
        tree = f.read().split("## Files", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in tree.splitlines() if line.strip()}
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert {name for name in tracked if not name.startswith("tests/")} <= listed


@pytest.mark.exercise(
    "bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "lr_schedule", "context_extension", "sampling",
    "rejection_sampling", "sequence_logprobs", "dpo_loss", "pivotal_tokens",
)
@pytest.mark.slow
def test_the_main_job_runs_as_written_on_a_fresh_copy(tmp_path):
    """Runs speedrun.sh (minutes) in a copy of the tracked files, as a fresh clone would."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), tmp_path / name)
    result = subprocess.run(["bash", "speedrun.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=4200)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| pretrain |" in report and "not evaluated" not in report


@pytest.mark.parametrize("args", [["--seeds", "0"], ["--seeds"], ["--seeds", "two"], ["--fast"]])
def test_speedrun_refuses_a_bad_argument_in_one_line_before_running_anything(tmp_path, args):
    # A copy without the project beside it: were the check to let the argument through, the first stage
    # would fail at once instead of starting a 20-minute run.
    shutil.copy2(os.path.join(ROOT, "speedrun.sh"), tmp_path / "speedrun.sh")
    result = subprocess.run(["bash", "speedrun.sh", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_speedrun_answers_help_with_its_stages_and_the_seeds_option(tmp_path):
    shutil.copy2(os.path.join(ROOT, "speedrun.sh"), tmp_path / "speedrun.sh")
    result = subprocess.run(["bash", "speedrun.sh", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--seeds N" in result.stdout and "pretrain_web" in result.stdout
    assert "--resume" in result.stdout
    assert "set -euo" not in result.stdout


# speedrun.sh's two lanes, checked with a stand-in `python` that takes a moment, refuses to start a stage
# whose inputs (--init, --pairs, --sft-data, --data) no finished stage has written yet, and records when it
# ran and on how many threads. A lane that starts a stage too early, or runs it on both cores, shows here.
FAKE_PYTHON = r'''#!{python}
import json, os, sys, time
script, args = sys.argv[1], sys.argv[2:]
opt = lambda name: args[args.index(name) + 1] if name in args else None
record = dict(script=script, args=args, threads=os.environ.get("OMP_NUM_THREADS"), start=time.time())
if script == "report.py" and opt("--best-dev"):
    print("3e-5")
    sys.exit(0)
for name in ("--init", "--data"):
    if opt(name) and not os.path.exists(os.path.join(opt(name), "done")):
        sys.exit(f"fake: {{script}} started before {{opt(name)}} was written")
for name in ("--pairs", "--sft-data"):
    if opt(name) and not os.path.exists(opt(name)):
        sys.exit(f"fake: {{script}} started before {{opt(name)}} was written")
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.1")) * (20 if os.environ.get("FAKE_SLOW") in args else 1))
if os.environ.get("FAKE_FAIL") in args:
    sys.exit(f"fake: {{os.environ['FAKE_FAIL']}} failed")
written = ["out/data/toy", "out/data/toy/web"] if script == "data.py" else [opt("--out")] if opt("--out") else []
for path in written:
    if path.endswith(".jsonl"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        continue
    os.makedirs(path, exist_ok=True)
    files = {{"rejection_sampling.py": ["pairs.jsonl", "sft.jsonl"], "data.py": ["sft.jsonl"]}}.get(script, [])
    for name in files + ["done"]:
        open(os.path.join(path, name), "w").close()
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(dict(record, end=time.time())) + "\n")
'''


def run_speedrun_with_a_fake_python(tmp_path, *args, **env):
    shutil.copy2(os.path.join(ROOT, "speedrun.sh"), tmp_path / "speedrun.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)  # a second run in the same folder (--resume) finds it there
    (bin_dir / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    (bin_dir / "python").chmod(0o755)
    log = tmp_path / "log"
    earlier = len(log.read_text().splitlines()) if log.exists() else 0  # a second run records after the first
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(log), **env)
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(["bash", "speedrun.sh", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    runs = [json.loads(line) for line in log.read_text().splitlines()[earlier:]] if log.exists() else []
    return result, {" ".join([run["script"], *run["args"]]): run for run in runs}


def option(run, name):
    return run["args"][run["args"].index(name) + 1] if name in run["args"] else None


def test_speedrun_runs_independent_stages_side_by_side_on_one_thread_each_and_in_order(tmp_path):
    result, runs = run_speedrun_with_a_fake_python(tmp_path, "--seeds", "3")
    assert result.returncode == 0, result.stderr
    assert "[speedrun] total:" in result.stdout
    pretrain = next(run for run in runs.values() if option(run, "--out") == "out/pretrain")
    web = next(run for run in runs.values() if option(run, "--out") == "out/pretrain_web")
    assert pretrain["start"] < web["end"] and web["start"] < pretrain["end"], "the two pretrainings ran in a row"
    lanes = [run for run in runs.values() if run["script"] not in ("data.py", "report.py", "sample.py")]
    assert len(lanes) == 33 + 2 * 8  # the recipe's stages, and eight for each extra seed
    assert all(run["threads"] == "1" for run in lanes)
    copied = {"out/dpo": "out/dpo_sweep/lr3e-5"}  # the dev split's choice (the fake's) is copied to out/dpo
    for run in runs.values():  # every stage that reads a checkpoint started after it was written
        init = copied.get(option(run, "--init"), option(run, "--init"))
        if init:
            writer = next(other for other in runs.values() if option(other, "--out") == init)
            assert writer["end"] <= run["start"], run


def test_speedrun_stops_and_names_the_log_when_a_stage_of_the_second_lane_fails(tmp_path):
    result, runs = run_speedrun_with_a_fake_python(tmp_path, FAKE_FAIL="out/pretrain_web")
    assert result.returncode != 0
    assert "out/logs/web_pretraining.log" in result.stderr
    assert "fake: out/pretrain_web failed" in (tmp_path / "out" / "logs" / "web_pretraining.log").read_text()
    assert not any("midtrain" in command for command in runs), "a later stage ran after the failure"


def test_a_failed_speedrun_stops_the_lane_running_beside_it(tmp_path):
    result, _ = run_speedrun_with_a_fake_python(tmp_path, FAKE_FAIL="out/pretrain", FAKE_SLOW="out/pretrain_web")
    assert result.returncode != 0
    time.sleep(3)  # the slow stage (20 x 0.1 s) would have finished and logged by now, had it been left running
    log = (tmp_path / "log").read_text()
    assert "pretrain_web" not in log and "out/pretrain --quiz" not in log


def test_a_stopped_speedrun_resumes_at_the_phase_that_did_not_finish(tmp_path):
    result, first = run_speedrun_with_a_fake_python(tmp_path, FAKE_FAIL="out/midtrain_kept_base")
    assert result.returncode != 0 and "bash speedrun.sh --resume" in result.stderr
    assert "data.py" in first and any("--out out/pretrain_web" in command for command in first)
    result, second = run_speedrun_with_a_fake_python(tmp_path, "--resume")
    assert result.returncode == 0, result.stderr
    assert "[speedrun] total:" in result.stdout and "stopped" not in result.stderr
    assert "[speedrun] pretraining: finished before, skipped (--resume)" in result.stdout
    assert not any("--stage pretrain " in command or command == "data.py" for command in second)
    # The phase that failed runs again whole, its lane that had finished included, and so does every later one.
    assert any("--out out/midtrain " in command + " " for command in second)
    assert any("--out out/midtrain_kept_base" in command for command in second)
    assert any("--out out/pts_dpo_dpo" in command for command in second)


def test_a_speedrun_without_resume_runs_every_phase_again(tmp_path):
    result, _ = run_speedrun_with_a_fake_python(tmp_path)
    assert result.returncode == 0, result.stderr
    result, again = run_speedrun_with_a_fake_python(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    assert "data.py" in again and any("--out out/pretrain_web" in command for command in again)
