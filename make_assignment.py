"""The student version of this repository: every marked solution block becomes a NotImplementedError.

A tool for teachers. The reference code carries its exercises inside function bodies:

    def apply_rope(x, cos, sin):
        \"\"\"Rotate x (B, heads, T, D) by the angles of its positions; cos and sin are (T, D).\"\"\"
        # BEGIN SOLUTION rope: rotate each pair (x[i], x[i + D/2]) by its angle: x * cos + rotate_half(x) * sin
        ...
        # END SOLUTION rope

and `python make_assignment.py OUT_DIR` copies the tree to OUT_DIR with each block replaced by

        raise NotImplementedError("rope: rotate each pair (x[i], x[i + D/2]) by its angle: ...")

so signatures, docstrings and every comment outside the blocks stay; `--only rope,dpo_loss` blanks only
those exercises (a shorter assignment, or a student who starts later in the recipe). The exercises, their
points and times are the table at the top of EXERCISES.md; the tests that grade each one carry
`@pytest.mark.exercise("<id>", ...)` (grade_assignment.py scores them). OUT_DIR also gets
`assignment.json`, the manifest: id -> files, functions, tests, points, expected minutes, prerequisites.

What never goes to students: .git (its history holds every solution), this file and its tests, out/.
A marker that is unpaired, nested, unknown to EXERCISES.md, or not inside a function body stops the
command before anything is written.

    python make_assignment.py OUT_DIR [--only IDS]   # the student version
    python make_assignment.py --list                 # the exercises and where their blocks are
    python make_assignment.py --trace                # which exercises each test executes (keeps the test markers honest)
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import cli
import files
from grade_assignment import EXERCISES_FILE, read_exercises, graded_tests

ROOT = os.path.dirname(os.path.abspath(__file__))

# "# BEGIN SOLUTION <id>: <hint>" and "# END SOLUTION <id>", alone on their lines.
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION (?P<id>[a-z][a-z0-9_]*): (?P<hint>\S.*?)\s*$")
END = re.compile(r"^(?P<indent>[ \t]*)# END SOLUTION (?P<id>[a-z][a-z0-9_]*)\s*$")
ANY_MARKER = re.compile(r"#\s*(BEGIN|END) SOLUTION")

# Never copied: version control (the history holds the solutions), outputs, caches, the handout maker itself.
SKIP_DIRS = {".git", "out", "__pycache__", ".pytest_cache", ".venv", "data_cache"}
SKIP_FILES = {"make_assignment.py", os.path.join("tests", "test_assignment.py")}
SKIP_SUFFIXES = (".pyc", ".tiktoken", ".tmp")


@dataclass
class Block:
    """One marked solution block: lines begin..end of `path` (0-based, the two marker lines included)."""

    exercise: str
    hint: str
    path: str  # relative to the tree's root
    begin: int
    end: int
    indent: str
    function: str  # qualified name of the enclosing function, e.g. "RMSNorm.forward"
    solution: list[str] = field(default_factory=list)  # the lines between the markers


def tree_files(root: str) -> list[str]:
    """Paths (relative to root) of every file the student version may contain, sorted."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in names:
            path = os.path.relpath(os.path.join(folder, name), root)
            if path not in SKIP_FILES and not name.endswith(SKIP_SUFFIXES):
                found.append(path)
    return sorted(found)


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(def line, last line, qualified name) of every function, 1-based lines."""
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def find_blocks(root: str, paths: list[str], known: set[str]) -> list[Block]:
    """Every solution block of the .py files among `paths`; ValueError (naming file and line) on any bad marker."""
    blocks = []
    for path in paths:
        if not path.endswith(".py"):
            continue
        with open(os.path.join(root, path), encoding="utf-8") as f:
            lines = f.read().split("\n")
        if not any(ANY_MARKER.search(line) for line in lines):
            continue
        functions = _functions(ast.parse("\n".join(lines), filename=path))
        open_block = None
        for i, line in enumerate(lines):
            where = f"{path}:{i + 1}"
            begin, end = BEGIN.match(line), END.match(line)
            if begin:
                if open_block is not None:
                    raise ValueError(f"{where}: BEGIN SOLUTION inside the block opened at line {open_block.begin + 1}")
                if begin["id"] not in known:
                    raise ValueError(f"{where}: unknown exercise {begin['id']!r}; add it to the table in {EXERCISES_FILE}")
                # The innermost function whose body holds the marker line: the stub must live in a body.
                inside = [f for f in functions if f[0] < i + 1 <= f[1]]
                if not inside:
                    raise ValueError(f"{where}: a solution block must be inside a function body")
                name = max(inside)[2]  # the latest-starting one is the innermost
                open_block = Block(begin["id"], begin["hint"], path, i, -1, begin["indent"], name)
            elif end:
                if open_block is None:
                    raise ValueError(f"{where}: END SOLUTION {end['id']} without a BEGIN")
                if end["id"] != open_block.exercise or end["indent"] != open_block.indent:
                    raise ValueError(f"{where}: END SOLUTION {end['id']} does not close BEGIN SOLUTION "
                                     f"{open_block.exercise} of line {open_block.begin + 1} (same id, same indentation)")
                open_block.end = i
                open_block.solution = lines[open_block.begin + 1:i]
                if not any(s.strip() for s in open_block.solution):
                    raise ValueError(f"{where}: the block of {open_block.exercise} is empty")
                blocks.append(open_block)
                open_block = None
            elif ANY_MARKER.search(line):
                raise ValueError(f"{where}: malformed marker {line.strip()!r}; write "
                                 "'# BEGIN SOLUTION <id>: <hint>' or '# END SOLUTION <id>' alone on the line")
        if open_block is not None:
            raise ValueError(f"{path}:{open_block.begin + 1}: BEGIN SOLUTION {open_block.exercise} is never closed")
    return blocks


def stub(block: Block) -> str:
    """The line that replaces a block: the exercise id and its hint, at the block's indentation."""
    return f"{block.indent}raise NotImplementedError({json.dumps(f'{block.exercise}: {block.hint}')})"


def rewrite(text: str, blocks: list[Block], blank: set[str]) -> str:
    """`text` with the blocks of exercises in `blank` stubbed out and every marker line of the others removed."""
    lines = text.split("\n")
    out, skip_until = [], -1
    starts = {b.begin: b for b in blocks}
    ends = {b.end for b in blocks}
    for i, line in enumerate(lines):
        if i <= skip_until:
            continue
        if i in starts:
            block = starts[i]
            if block.exercise in blank:
                out.append(stub(block))
                skip_until = block.end
            continue  # a kept block loses its BEGIN line ...
        if i in ends:
            continue  # ... and its END line
        out.append(line)
    return "\n".join(out)


def make_assignment(out_dir: str, only: set[str] | None = None, root: str = ROOT) -> dict:
    """Write the student version of `root` to `out_dir` (which must not exist yet) -> the manifest."""
    exercises = read_exercises(os.path.join(root, EXERCISES_FILE))
    known = {e["id"] for e in exercises}
    if only is not None and only - known:
        raise ValueError(f"--only names unknown exercises {sorted(only - known)}; known: {', '.join(sorted(known))}")
    paths = tree_files(root)
    blocks = find_blocks(root, paths, known)
    blank = known if only is None else only
    defined = {b.exercise for b in blocks}
    if known - defined:
        raise ValueError(f"{EXERCISES_FILE} lists exercises no block defines: {sorted(known - defined)}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise ValueError(f"{out_dir} exists; pass a new folder (the student version is written from scratch)")
    if out_dir.startswith(os.path.abspath(root) + os.sep):
        raise ValueError(f"{out_dir} is inside the tree it copies; pass a folder outside {root}")

    by_path: dict[str, list[Block]] = {}
    for block in blocks:
        by_path.setdefault(block.path, []).append(block)
    # Written to a temporary sibling, then renamed: an interrupted run leaves no half-made handout.
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".assignment-", dir=os.path.dirname(out_dir))
    try:
        for path in paths:
            source, target = os.path.join(root, path), os.path.join(staging, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if path in by_path:
                with open(source, encoding="utf-8") as f:
                    text = rewrite(f.read(), by_path[path], blank)
                compile(text, path, "exec")  # a stub that breaks the syntax is this tool's bug, caught here
                with open(target, "w", encoding="utf-8") as f:
                    f.write(text)
                shutil.copymode(source, target)
            else:
                shutil.copy2(source, target)
        manifest = build_manifest(root, exercises, blocks, blank)
        files.atomic_write_text(os.path.join(staging, "assignment.json"), json.dumps(manifest, indent=1) + "\n")
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def build_manifest(root: str, exercises: list[dict], blocks: list[Block], blank: set[str]) -> dict:
    """id -> where its blocks are, which tests grade it, points, minutes, prerequisites (EXERCISES.md)."""
    graded = graded_tests(os.path.join(root, "tests"))  # test node id -> exercise ids
    manifest = {}
    for exercise in exercises:
        key = exercise["id"]
        mine = [b for b in blocks if b.exercise == key]
        manifest[key] = {
            "title": exercise["title"], "blanked": key in blank,
            "files": sorted({b.path for b in mine}),
            "functions": sorted({f"{b.path}:{b.function}" for b in mine}),
            "tests": sorted(t for t, ids in graded.items() if ids == {key}),  # its own tests: the points
            "also_needed_by": sorted(t for t, ids in graded.items() if key in ids and ids != {key}),
            "points": exercise["points"], "minutes": exercise["minutes"], "needs": exercise["needs"],
        }
    return {"exercises": manifest, "total_points": sum(e["points"] for e in exercises)}


# ----------------------------------------------------------------------------------------------------
# --trace: which exercise blocks each test actually runs


TRACE_MODULE = '''"""Written by make_assignment.py --trace: records which exercise blocks each test executes."""
import os

import pytest


def hit(exercise):
    with open(os.environ["EXERCISE_TRACE_FILE"], "a") as f:
        f.write(os.environ.get("EXERCISE_TRACE_WHO", "import") + "\\t" + exercise + "\\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    before = os.environ.get("EXERCISE_TRACE_WHO", "")
    os.environ["EXERCISE_TRACE_WHO"] = "fixture:" + fixturedef.argname
    yield
    os.environ["EXERCISE_TRACE_WHO"] = before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    os.environ["EXERCISE_TRACE_WHO"] = "test:" + item.nodeid
    with open(os.environ["EXERCISE_TRACE_FILE"], "a") as f:
        f.write("uses\\t" + item.nodeid + "\\t" + " ".join(item.fixturenames) + "\\n")
    yield
    os.environ["EXERCISE_TRACE_WHO"] = "idle"
'''


def trace(pytest_args: list[str], root: str = ROOT) -> dict[str, set[str]]:
    """Run the tests on a copy whose blocks record each execution -> test node id -> exercises it runs.

    A fixture's executions count for every test that uses it (a session fixture runs once but every
    test that asks for it needs it), and subprocesses (train.py run as a script) record into the same
    file through the environment.
    """
    known = {e["id"] for e in read_exercises(os.path.join(root, EXERCISES_FILE))}
    paths = tree_files(root)
    blocks = find_blocks(root, paths, known)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "tree")
        for path in paths:
            os.makedirs(os.path.dirname(os.path.join(copy, path)), exist_ok=True)
            shutil.copy2(os.path.join(root, path), os.path.join(copy, path))
        for path in {b.path for b in blocks}:
            with open(os.path.join(copy, path), encoding="utf-8") as f:
                lines = f.read().split("\n")
            for block in sorted((b for b in blocks if b.path == path), key=lambda b: -b.begin):
                lines.insert(block.begin + 1, f'{block.indent}__import__("exercise_trace").hit("{block.exercise}")')
            with open(os.path.join(copy, path), "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
        with open(os.path.join(copy, "exercise_trace.py"), "w") as f:
            f.write(TRACE_MODULE)
        log = os.path.join(tmp, "trace.tsv")
        env = {**os.environ, "EXERCISE_TRACE_FILE": log, "PYTHONPATH": copy}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "exercise_trace", *pytest_args], cwd=copy, env=env)
        fixture_hits: dict[str, set[str]] = {}
        test_hits: dict[str, set[str]] = {}
        uses: dict[str, list[str]] = {}
        with open(log) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if parts[0] == "uses":
                    uses[parts[1]] = parts[2].split()
                elif parts[0].startswith("fixture:"):
                    fixture_hits.setdefault(parts[0][len("fixture:"):], set()).add(parts[1])
                elif parts[0].startswith("test:"):
                    test_hits.setdefault(parts[0][len("test:"):], set()).add(parts[1])
    return {test: test_hits.get(test, set()).union(*(fixture_hits.get(n, set()) for n in names))
            for test, names in uses.items()}


def trace_report(traced: dict[str, set[str]], marked: dict[str, set[str]]) -> list[str]:
    """One line per test whose markers differ from what it runs (function-level ids: parameters merged)."""
    by_function: dict[str, set[str]] = {}
    for test, ids in traced.items():
        by_function.setdefault(test.split("[")[0], set()).update(ids)
    lines = []
    for test in sorted(set(by_function) | set(marked)):
        runs, says = by_function.get(test), marked.get(test, set())
        if runs is not None and runs != says:
            lines.append(f"{test}: marked {sorted(says) or '-'}, runs {sorted(runs) or '-'}")
    return lines


def main() -> None:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", help="the folder to write the student version to (must not exist)")
    parser.add_argument("--only", default=None, help="comma-separated exercise ids to blank (default: all)")
    parser.add_argument("--list", action="store_true", help="print the exercises and their blocks, write nothing")
    parser.add_argument("--trace", action="store_true",
                        help="run the tests with every block recording its use; print tests whose markers differ")
    args = parser.parse_args()
    if args.list:
        exercises = read_exercises(os.path.join(ROOT, EXERCISES_FILE))
        blocks = find_blocks(ROOT, tree_files(ROOT), {e["id"] for e in exercises})
        for e in exercises:
            where = ", ".join(sorted({f"{b.path}:{b.function}" for b in blocks if b.exercise == e["id"]}))
            print(f"{e['id']:<20} {e['points']:>3} pts {e['minutes']:>4} min  {where}")
        return
    if args.trace:
        lines = trace_report(trace([]), graded_tests(os.path.join(ROOT, "tests")))
        print("\n".join(lines) if lines else "every test's exercise markers match the blocks it runs")
        sys.exit(1 if lines else 0)
    if not args.out_dir:
        parser.error("pass OUT_DIR (or --list / --trace)")
    only = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    manifest = make_assignment(args.out_dir, only)
    blanked = [k for k, e in manifest["exercises"].items() if e["blanked"]]
    print(f"wrote {args.out_dir}: {len(blanked)} exercises blanked ({', '.join(blanked)}), "
          f"{manifest['total_points']} points; see {EXERCISES_FILE} and assignment.json")


if __name__ == "__main__":
    cli.main(main)
