"""The handout: make_assignment.py's student version and grade_assignment.py's scores.

The fast tests check the markers, the stubs and the manifest; the slow ones run the student version's
tests and prove the map from blocks to tests: with every block blanked each graded test fails with its
exercise's NotImplementedError while every other test passes, and putting back one block makes exactly
that exercise's own tests pass.
"""
import ast
import csv
import io
import json
import os
import subprocess
import sys

import pytest

import grade_assignment
import make_assignment
from conftest import triton_kernel_skip_reason
from grade_assignment import EXERCISES_FILE, graded_tests, read_exercises, score_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXERCISES = read_exercises(os.path.join(ROOT, EXERCISES_FILE))
IDS = [e["id"] for e in EXERCISES]


def reference_blocks():
    return make_assignment.find_blocks(ROOT, make_assignment.tree_files(ROOT), set(IDS))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The student version with every exercise blanked, made once for this module."""
    out = tmp_path_factory.mktemp("handout") / "student"
    manifest = make_assignment.make_assignment(str(out), root=ROOT)
    return out, manifest


def test_the_exercise_table_the_sections_and_the_blocks_name_the_same_exercises():
    blocks = reference_blocks()
    assert {b.exercise for b in blocks} == set(IDS)
    with open(os.path.join(ROOT, EXERCISES_FILE)) as f:
        sections = [line.split("`")[1] for line in f if line.startswith("## ") and "`" in line]
    assert sections == IDS  # one section per exercise, in the table's order


def test_each_section_of_exercises_md_quotes_the_hints_of_its_exercises_blocks():
    with open(os.path.join(ROOT, EXERCISES_FILE)) as f:
        sections = {part.split("`")[1]: part for part in f.read().split("\n## ")[1:] if part[:1].isdigit()}
    for block in reference_blocks():
        assert f"`{block.hint}`" in sections[block.exercise], block.exercise


def test_every_exercise_has_its_own_tests_and_every_test_marker_names_a_known_exercise():
    graded = graded_tests(os.path.join(ROOT, "tests"))
    assert set().union(*graded.values()) <= set(IDS)
    own = {key: [t for t, ids in graded.items() if ids == {key}] for key in IDS}
    assert all(own.values()), [key for key, tests in own.items() if not tests]


def signatures(tree: ast.AST) -> list[tuple]:
    """(name, arguments, docstring) of every function, in the order of the source."""
    return [(n.name, ast.unparse(n.args), ast.get_docstring(n)) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_student_version_imports_compiles_and_keeps_every_signature_and_docstring(student):
    out, _ = student
    modules = sorted(p[:-3].replace(os.sep, ".") for p in make_assignment.tree_files(str(out))
                     if p.endswith(".py") and os.sep not in p)
    imported = subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], cwd=out, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    for path in make_assignment.tree_files(ROOT):
        if not path.endswith(".py"):
            continue
        with open(os.path.join(ROOT, path)) as f:
            reference = ast.parse(f.read())
        with open(out / path) as f:
            handout = ast.parse(f.read())  # compiles
        assert signatures(handout) == signatures(reference), path


def test_every_block_becomes_one_stub_naming_its_exercise_and_no_marker_or_solution_line_remains(student):
    out, _ = student
    blocks = reference_blocks()
    texts = {}
    for path in make_assignment.tree_files(ROOT):
        with open(out / path, encoding="utf-8", errors="replace") as f:
            texts[path] = f.read()
    # Markers live in code; the docs (README, EXERCISES.md) may show one as an example.
    assert not [path for path, text in texts.items() if path.endswith(".py") and make_assignment.ANY_MARKER.search(text)]
    assert all(make_assignment.stub(block) in texts[block.path] for block in blocks)
    stubs = sum(text.count("raise NotImplementedError(") for text in texts.values())
    reference_raises = 0
    for path in texts:
        with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
            reference_raises += f.read().count("raise NotImplementedError(")
    assert stubs == reference_raises + len(blocks)
    # No solution line is left anywhere in the handout, unless the reference has the same line outside every
    # block too (a loop header such as `for pair in zip(ids, ids[1:]):` may be both setup and solution).
    outside = set()
    for path in texts:
        with open(os.path.join(ROOT, path), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        inside = {i for b in blocks if b.path == path for i in range(b.begin, b.end + 1)}
        outside |= {line.strip() for i, line in enumerate(lines) if i not in inside}
    handout = {line.strip() for text in texts.values() for line in text.split("\n")}
    leaked = [(b.exercise, line.strip()) for b in blocks for line in b.solution
              if line.strip() and line.strip() not in outside and line.strip() in handout]
    assert not leaked


def test_the_handout_leaves_out_version_control_outputs_and_the_handout_maker(student):
    out, _ = student
    assert not (out / ".git").exists() and not (out / "out").exists()
    assert not (out / "make_assignment.py").exists() and not (out / "tests" / "test_assignment.py").exists()
    assert (out / "grade_assignment.py").exists() and (out / EXERCISES_FILE).exists()


def test_the_manifest_maps_each_exercise_to_its_functions_own_tests_points_and_minutes(student):
    out, manifest = student
    assert json.loads((out / "assignment.json").read_text()) == manifest
    exercises = manifest["exercises"]
    assert list(exercises) == IDS and manifest["total_points"] == sum(e["points"] for e in EXERCISES)
    assert exercises["dpo_loss"]["functions"] == ["dpo.py:dpo_loss"]
    assert exercises["rmsnorm_swiglu"]["functions"] == ["model.py:MLP.forward", "model.py:RMSNorm.forward"]
    graded = graded_tests(os.path.join(ROOT, "tests"))
    for key, entry in exercises.items():
        assert entry["blanked"] and entry["tests"] == sorted(t for t, ids in graded.items() if ids == {key})
        assert all(key in graded[t] and len(graded[t]) > 1 for t in entry["also_needed_by"])


def test_only_blanks_the_named_exercises_and_refuses_unknown_ones(tmp_path):
    manifest = make_assignment.make_assignment(str(tmp_path / "a"), only={"rope"}, root=ROOT)
    assert [k for k, e in manifest["exercises"].items() if e["blanked"]] == ["rope"]
    model_text = (tmp_path / "a" / "model.py").read_text()
    assert model_text.count("raise NotImplementedError(\"rope: ") == 2
    assert "x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)" in model_text  # RMSNorm kept
    assert not make_assignment.ANY_MARKER.search(model_text)
    with pytest.raises(ValueError, match="unknown exercises"):
        make_assignment.make_assignment(str(tmp_path / "b"), only={"ropes"}, root=ROOT)
    with pytest.raises(ValueError, match="exists"):
        make_assignment.make_assignment(str(tmp_path / "a"), root=ROOT)
    make_assignment.make_assignment(str(tmp_path / "new" / "folders" / "c"), only={"dpo_loss"}, root=ROOT)
    assert (tmp_path / "new" / "folders" / "c" / "assignment.json").exists()
    with pytest.raises(ValueError, match="is inside the tree it copies"):
        make_assignment.make_assignment(os.path.join(ROOT, "out", "handout"), root=ROOT)  # would copy itself


BAD_MARKERS = {
    "is never closed": "def f():\n    # BEGIN SOLUTION rope: h\n    return 1\n",
    "END SOLUTION rope without a BEGIN": "def f():\n    return 1\n    # END SOLUTION rope\n",
    "inside the block opened": "def f():\n    # BEGIN SOLUTION rope: h\n    # BEGIN SOLUTION rope: h\n    x = 1\n"
                               "    # END SOLUTION rope\n    # END SOLUTION rope\n",
    "unknown exercise 'ropes'": "def f():\n    # BEGIN SOLUTION ropes: h\n    return 1\n    # END SOLUTION ropes\n",
    "inside a function body": "# BEGIN SOLUTION rope: h\nX = 1\n# END SOLUTION rope\n",
    "does not close": "def f():\n    # BEGIN SOLUTION rope: h\n    return 1\n    # END SOLUTION bpe\n",
    "malformed marker": "def f():\n    # BEGIN SOLUTION rope\n    return 1\n",
    "is empty": "def f():\n    x = 1\n    # BEGIN SOLUTION rope: h\n\n    # END SOLUTION rope\n    return x\n",
}


@pytest.mark.parametrize("message", list(BAD_MARKERS))
def test_a_bad_marker_is_refused_naming_the_file_and_line(tmp_path, message):
    (tmp_path / "chapter.py").write_text(BAD_MARKERS[message])
    with pytest.raises(ValueError, match=r"chapter\.py:\d+: .*" + message.split("'")[0]):
        make_assignment.find_blocks(str(tmp_path), ["chapter.py"], {"rope", "bpe"})


def test_make_assignment_answers_help_and_refuses_a_missing_out_dir_in_one_line():
    helped = subprocess.run([sys.executable, "make_assignment.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and "usage" in helped.stdout
    bare = subprocess.run([sys.executable, "make_assignment.py"], cwd=ROOT, capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1 and "OUT_DIR" in bare.stderr


def test_the_trace_credits_each_test_with_the_blocks_it_runs_itself_through_a_fixture_or_a_subprocess(tmp_path):
    """make_assignment.py --trace on a tree of two blocks and five tests, against what each test runs by design."""
    (tmp_path / "EXERCISES.md").write_text("| # | id | exercise | report | points | minutes | needs |\n"
                                          "|---|---|---|---|---|---|---|\n"
                                          "| 1 | `a` | A | §1 | 5 | 10 | - |\n| 2 | `b` | B | §2 | 5 | 10 | - |\n")
    (tmp_path / "chapter.py").write_text(
        "def f():\n    # BEGIN SOLUTION a: return 1\n    return 1\n    # END SOLUTION a\n\n\n"
        "def g():\n    # BEGIN SOLUTION b: return 2\n    return 2\n    # END SOLUTION b\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text(
        "import pytest\nimport chapter\n\n\n@pytest.fixture(scope='session')\ndef two():\n    return chapter.g()\n")
    (tmp_path / "tests" / "test_t.py").write_text(
        "import subprocess, sys\nimport chapter\n\n\n"
        "def test_itself():\n    assert chapter.f() == 1\n\n\n"
        "def test_fixture(two):\n    assert two == 2 and chapter.f() == 1\n\n\n"  # a's hit is the test's, not two's
        "def test_again_fixture(two):\n    assert two == 2\n\n\n"  # the session fixture ran once, for the test before
        "def test_subprocess():\n    subprocess.run([sys.executable, '-c', 'import chapter; chapter.g()'], check=True)\n\n\n"
        "def test_nothing():\n    assert True\n")
    traced = make_assignment.trace(["-p", "no:cacheprovider", "tests"], root=str(tmp_path))
    assert traced == {"tests/test_t.py::test_itself": {"a"}, "tests/test_t.py::test_fixture": {"a", "b"},
                      "tests/test_t.py::test_again_fixture": {"b"}, "tests/test_t.py::test_subprocess": {"b"},
                      "tests/test_t.py::test_nothing": set()}


def test_the_trace_report_names_tests_whose_markers_differ_from_the_blocks_they_run():
    traced = {"tests/t.py::test_a[1]": {"rope"}, "tests/t.py::test_a[2]": {"bpe"}, "tests/t.py::test_b": set(),
              "tests/t.py::test_c": {"rope"}}
    marked = {"tests/t.py::test_a": {"rope", "bpe"}, "tests/t.py::test_b": {"rope"}, "tests/t.py::test_c": {"rope"}}
    assert make_assignment.trace_report(traced, marked) == ["tests/t.py::test_b: marked ['rope'], runs -"]


def test_the_score_table_gives_an_exercises_points_once_all_its_own_tests_pass_and_counts_shared_ones_apart():
    exercises = [{"id": "a", "title": "A", "points": 10}, {"id": "b", "title": "B", "points": 6}]
    results = [{"exercises": ["a"], "outcome": "passed"}, {"exercises": ["a"], "outcome": "failed"},
               {"exercises": ["a", "b"], "outcome": "passed"}, {"exercises": ["b"], "outcome": "passed"},
               {"exercises": ["b"], "outcome": "passed"}, {"exercises": [], "outcome": "failed"}]
    table = score_table(exercises, results)
    assert [(r["passed"], r["tests"], r["points"], r["shared_passed"], r["shared"]) for r in table] == [
        (1, 2, 0, 1, 1), (2, 2, 6, 1, 1)]


def test_an_exercise_table_missing_or_naming_an_exercise_no_block_defines_is_refused(tmp_path):
    (tmp_path / "EXERCISES.md").write_text("# Exercises\n\nNo table yet.\n")
    with pytest.raises(ValueError, match="EXERCISES.md has no exercise table"):
        read_exercises(str(tmp_path / "EXERCISES.md"))
    (tmp_path / "EXERCISES.md").write_text("| # | id | exercise | report | points | minutes | needs |\n"
                                          "|---|---|---|---|---|---|---|\n| 1 | `a` | A | §1 | 5 | 10 | - |\n")
    (tmp_path / "chapter.py").write_text("def f():\n    return 1\n")  # no block for `a`
    with pytest.raises(ValueError, match=r"lists exercises no block defines: \['a'\]"):
        make_assignment.make_assignment(str(tmp_path / "handout"), root=str(tmp_path))


def test_the_exercise_list_gives_each_exercises_points_minutes_and_blocks_and_writes_nothing(tmp_path):
    listed = subprocess.run([sys.executable, os.path.join(ROOT, "make_assignment.py"), "--list"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and os.listdir(tmp_path) == []
    exercises = read_exercises(os.path.join(ROOT, EXERCISES_FILE))
    lines = listed.stdout.splitlines()
    assert [line.split()[:5] for line in lines] == [[e["id"], str(e["points"]), "pts", str(e["minutes"]), "min"]
                                                    for e in exercises]
    blocks = make_assignment.find_blocks(ROOT, make_assignment.tree_files(ROOT), {e["id"] for e in exercises})
    for exercise, line in zip(exercises, lines):
        assert all(f"{b.path}:{b.function}" in line for b in blocks if b.exercise == exercise["id"])


def test_the_score_table_as_csv_has_one_row_per_exercise_asked_for(monkeypatch, capsys, tmp_path):
    results = [{"exercises": ["rope"], "outcome": "passed"}, {"exercises": ["rope"], "outcome": "failed"},
               {"exercises": ["bpe"], "outcome": "passed"}, {"exercises": ["bpe", "rope"], "outcome": "passed"}]
    asked = []
    monkeypatch.setattr(grade_assignment, "run_tests", lambda ids, everything: asked.append(ids) or results)
    monkeypatch.setattr(sys, "argv", ["grade_assignment.py", "bpe", "rope", "--csv", "--json", str(tmp_path / "r.json")])
    grade_assignment.main()
    table = {e["id"]: e for e in read_exercises(os.path.join(ROOT, EXERCISES_FILE))}
    bpe, rope = table["bpe"], table["rope"]
    assert asked == [["bpe", "rope"]] and json.loads((tmp_path / "r.json").read_text()) == results
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == [
        ["exercise", "title", "tests passed", "tests", "points", "of", "shared passed", "shared"],
        ["bpe", bpe["title"], "1", "1", str(bpe["points"]), str(bpe["points"]), "1", "1"],
        ["rope", rope["title"], "1", "2", "0", str(rope["points"]), "1", "1"]]  # one own test failed: no points


def test_grading_an_unknown_exercise_id_is_refused_naming_the_known_ones():
    result = subprocess.run([sys.executable, "grade_assignment.py", "ropes"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown exercise ids ['ropes']; known: ") and "rope" in result.stderr


def test_a_table_row_with_a_missing_cell_is_refused_naming_the_line(tmp_path):
    (tmp_path / "E.md").write_text("| # | id | exercise | report | points | minutes | needs |\n|---|---|---|---|---|---|---|\n"
                                  "| 1 | `a` | A | §1 | 5 | 10 | - |\n| 2 | `b` | B | §2 | 5 | - |\n")
    with pytest.raises(ValueError, match=r"E\.md:4: 6 cells"):
        read_exercises(str(tmp_path / "E.md"))


def run_student_tests(folder, *args) -> list[dict]:
    """grade_assignment.py in `folder` -> one record per test (outcome, exercise ids, failure text)."""
    results = os.path.join(folder, "results.json")
    subprocess.run([sys.executable, "grade_assignment.py", "--json", results, *args], cwd=folder,
                   capture_output=True, text=True, timeout=1800)
    with open(results) as f:
        return json.load(f)


def failed_with_its_error(record) -> bool:
    """Failed, and the NotImplementedError of one of its exercises says why (or skipped, as the reference
    skips it on this machine: no CL100K_PATH, no GPU)."""
    if record["outcome"] == "skipped":
        return True
    return record["outcome"] == "failed" and any(f"NotImplementedError: {i}: " in record["text"] for i in record["exercises"])


def test_the_student_version_fails_each_test_of_one_exercise_with_that_exercises_error(student):
    out, manifest = student
    records = run_student_tests(str(out), "dpo_loss")
    own = [r for r in records if r["exercises"] == ["dpo_loss"]]
    assert {r["test"].split("[")[0] for r in own} == set(manifest["exercises"]["dpo_loss"]["tests"])
    assert all(failed_with_its_error(r) for r in own), [r["test"] for r in own if not failed_with_its_error(r)]


@pytest.mark.slow
def test_in_the_student_version_every_graded_test_fails_with_its_error_and_every_other_test_passes(student):
    out, _ = student
    records = run_student_tests(str(out), "--everything")
    assert len(records) > 300
    wrong = [r["test"] for r in records if (not failed_with_its_error(r) if r["exercises"] else r["outcome"] == "failed")]
    assert not wrong


@pytest.mark.slow
@pytest.mark.parametrize("key", IDS)
def test_putting_back_one_exercise_makes_exactly_its_own_tests_pass(tmp_path, key):
    if key == "flash_forward" and (reason := triton_kernel_skip_reason()):  # every test of it would be skipped
        pytest.skip(f"flash_forward's tests run the Triton kernel: {reason}")
    out = tmp_path / "student"
    make_assignment.make_assignment(str(out), only=set(IDS) - {key}, root=ROOT)
    records = run_student_tests(str(out))
    own = [r for r in records if r["exercises"] == [key]]
    assert any(r["outcome"] == "passed" for r in own)
    assert all(r["outcome"] in ("passed", "skipped") for r in own), [r["test"] for r in own if r["outcome"] == "failed"]
    others = [r for r in records if r["exercises"] != [key]]
    assert all(failed_with_its_error(r) for r in others), [r["test"] for r in others if not failed_with_its_error(r)]
