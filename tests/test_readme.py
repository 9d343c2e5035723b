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


@pytest.mark.parametrize("script", ["model.py", "data.py", "train.py", "sample.py", "synth.py", "dpo.py", "pts.py"])
def test_every_script_answers_help(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout


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
