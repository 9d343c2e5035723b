"""Scores the exercises of EXERCISES.md from the tests that carry their ids: one table for a gradebook.

A test that grades an exercise carries `@pytest.mark.exercise("<id>", ...)` with the id of every solution
block it runs (make_assignment.py --trace checks them). A test with one id is that exercise's own test; the
exercise earns its points when all of its own tests pass (a piece that is half right is not yet a piece the
rest of the recipe can build on, and some own tests only need the code to run, not to be right). A test
with several ids checks that solved pieces work together, so it passes only once all of them are solved:
it is shown beside each of them, not scored.

    python grade_assignment.py                  # every exercise: a table
    python grade_assignment.py rope kv_cache    # only these
    python grade_assignment.py --csv            # the same table as CSV, to paste into a gradebook
    python -m pytest --exercise rope            # the tests of one exercise, with pytest's own report

Everything grades on a CPU (the Triton exercise under Triton's interpreter, as tests/conftest.py sets up).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import os
import sys

import cli

ROOT = os.path.dirname(os.path.abspath(__file__))
EXERCISES_FILE = "EXERCISES.md"
COLUMNS = ("#", "id", "exercise", "report", "points", "minutes", "needs")  # the table at the top of EXERCISES.md


def read_exercises(path: str = os.path.join(ROOT, EXERCISES_FILE)) -> list[dict]:
    """The rows of the exercise table in EXERCISES.md, in order: id, title, report, points, minutes, needs."""
    rows, header_seen = [], False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.startswith("|"):
                if header_seen and rows:
                    break  # the table ended
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if tuple(c.lower() for c in cells) == COLUMNS:
                header_seen = True
                continue
            if not header_seen or set("".join(cells)) <= set("-: "):
                continue  # a table before ours, or the |---| rule under the header
            if len(cells) != len(COLUMNS):
                raise ValueError(f"{path}:{number}: {len(cells)} cells, the exercise table has {len(COLUMNS)}")
            row = dict(zip(COLUMNS, cells))
            try:
                points, minutes = int(row["points"]), int(row["minutes"])
            except ValueError:
                raise ValueError(f"{path}:{number}: points and minutes must be whole numbers") from None
            needs = [n.strip(" `") for n in row["needs"].split(",") if n.strip(" `-")]
            rows.append({"id": row["id"].strip("`"), "title": row["exercise"], "report": row["report"],
                         "points": points, "minutes": minutes, "needs": needs})
    if not rows:
        raise ValueError(f"{path} has no exercise table (a header row {' | '.join(COLUMNS)})")
    return rows


def exercise_ids(item) -> set[str]:
    """The exercises a collected test grades: the ids of all its `exercise` markers (module-level and its own)."""
    return {i for marker in item.iter_markers("exercise") for i in marker.args}


def _exercise_ids(decorators) -> set[str]:
    """The ids of every `pytest.mark.exercise(...)` among decorators (or a pytestmark value)."""
    ids = set()
    for node in decorators:
        for call in ast.walk(node):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "exercise"):
                ids.update(a.value for a in call.args if isinstance(a, ast.Constant))
    return ids


def graded_tests(tests_dir: str) -> dict[str, set[str]]:
    """test node id (tests/file.py::function) -> its exercise ids, read from the source (module-level
    `pytestmark` and function decorators add up, as pytest's markers do). Tests with no id are left out."""
    found = {}
    for name in sorted(os.listdir(tests_dir)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        with open(os.path.join(tests_dir, name), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=name)
        module_ids = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
                module_ids |= _exercise_ids([node.value])
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                ids = module_ids | _exercise_ids(node.decorator_list)
                if ids:
                    found[f"{os.path.basename(tests_dir)}/{name}::{node.name}"] = ids
    return found


class Recorder:
    """A pytest plugin: each test's outcome, its exercise ids and the text of its failure."""

    def __init__(self):
        self.ids: dict[str, list[str]] = {}
        self.results: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.ids[item.nodeid] = sorted(exercise_ids(item))

    def pytest_runtest_logreport(self, report):
        record = self.results.setdefault(report.nodeid, {"test": report.nodeid, "outcome": "passed", "text": ""})
        if report.failed:
            record["outcome"] = "failed"
            # The traceback plus captured output: a subprocess's NotImplementedError shows up in the latter.
            record["text"] += report.longreprtext + "".join(content for _, content in report.sections)
        elif report.skipped and record["outcome"] == "passed":
            record["outcome"] = "skipped"
        record["exercises"] = self.ids.get(report.nodeid, [])


def run_tests(ids: list[str] | None, everything: bool = False, extra: list[str] = ()) -> list[dict]:
    """Run the graded tests (of `ids`, or all; every test with `everything`) in-process -> one record per test."""
    import pytest

    os.chdir(ROOT)  # pytest.ini and tests/ are found from here
    selection = [] if everything else [arg for i in (ids or ["any"]) for arg in ("--exercise", i)]
    recorder = Recorder()
    # --tb=no -rN: the table is the report (`python -m pytest --exercise ID` shows the tracebacks), and
    # pytest's progress goes to stderr, so stdout holds the table alone: `--csv > grades.csv` works.
    with contextlib.redirect_stdout(sys.stderr):
        pytest.main(["-q", "--tb=no", "-rN", "-p", "no:cacheprovider", *selection, *extra], plugins=[recorder])
    return list(recorder.results.values())


def score_table(exercises: list[dict], results: list[dict]) -> list[dict]:
    """Per exercise: own tests passed / total, points (all of them once every own test passes, else 0),
    shared tests passed / total."""
    table = []
    for exercise in exercises:
        key = exercise["id"]
        own = [r for r in results if r["exercises"] == [key]]
        shared = [r for r in results if key in r["exercises"] and r["exercises"] != [key]]
        passed = sum(r["outcome"] == "passed" for r in own)
        table.append({
            "id": key, "title": exercise["title"], "passed": passed, "tests": len(own),
            "points": exercise["points"] if own and passed == len(own) else 0, "of": exercise["points"],
            "shared_passed": sum(r["outcome"] == "passed" for r in shared), "shared": len(shared),
        })
    return table


def main() -> None:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="exercise ids to grade (default: all of EXERCISES.md)")
    parser.add_argument("--csv", action="store_true", help="print the table as CSV")
    parser.add_argument("--json", default=None, help="also write every test's record (outcome, exercises, failure text) here")
    parser.add_argument("--everything", action="store_true", help="run every test, graded or not (with --json: "
                        "how the handout is checked)")
    args = parser.parse_args()
    exercises = read_exercises()
    known = {e["id"] for e in exercises}
    if set(args.ids) - known:
        raise ValueError(f"unknown exercise ids {sorted(set(args.ids) - known)}; known: {', '.join(e['id'] for e in exercises)}")
    results = run_tests(args.ids or None, args.everything)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    chosen = [e for e in exercises if not args.ids or e["id"] in args.ids]
    table = score_table(chosen, results)
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["exercise", "title", "tests passed", "tests", "points", "of", "shared passed", "shared"])
        for row in table:
            writer.writerow([row[k] for k in ("id", "title", "passed", "tests", "points", "of", "shared_passed", "shared")])
        return
    print(f"\n{'exercise':<20} {'own tests':>10} {'points':>12}   shared tests (need other exercises too)")
    for row in table:
        print(f"{row['id']:<20} {row['passed']:>4} / {row['tests']:<3} {row['points']:>5} / {row['of']:<4}"
              f"   {row['shared_passed']} / {row['shared']}")
    total, of = sum(r["points"] for r in table), sum(r["of"] for r in table)
    print(f"{'total':<20} {'':>10} {total:>5} / {of}")


if __name__ == "__main__":
    cli.main(main)
