"""The README is true: its quick start is the two commands CI and users run, every script answers --help,
and (slow) the main job runs as written on a fresh copy of the repository."""

import os
import re
import shutil
import subprocess
import sys

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
                                    "dpo.py", "pts.py", "synth.py", "benchmarks.py", "bench.py", "kernels/flash_attention.py",
                                    "scripts/measure_hf_load.py", "grade_assignment.py"])
def test_every_script_answers_help(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout


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
    assert "set -euo" not in result.stdout
