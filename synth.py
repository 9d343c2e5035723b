"""Synthetic data the Phi-4 way: a teacher model, written-out prompts, and checks that let only good data through.

A chapter. Phi-4 report, section 2 ("Synthetic data"): synthetic data generated with care, about 40% of
Phi-4's pretraining tokens, teaches reasoning better than web text. Section 2.2 describes the techniques
run below (plurality filtering of question-answer data is in 2.3), and the report's 13-gram
decontamination keeps evaluation items out of the training data. toyworld.py embeds a toy world that
needs no teacher; this chapter runs the report's techniques against a teacher you have (teacher.py: an
OpenAI-compatible server or this project's own model) and runs generated code only in sandbox.py.

How each pipeline maps to the report (section 2.2, and 2.3 for plurality):

    curate        seed curation: passages from web, books and code are scored by the teacher for
                  educational and reasoning value; the best are kept as seeds
    rewrite       rewrite and augment: a seed becomes exercises with worked solutions; each answer is
                  re-derived independently and kept only when the two agree (validation of math by agreement)
    dialogue      multi-agent prompting: a student agent and a teacher agent take alternating turns
    revise        self-revision: draft -> critique against a rubric (reasoning, factual accuracy) -> revise
    reverse-code  instruction reversal: code -> instruction -> regenerated code; the pair is kept only when the
                  regenerated code passes the original's tests (run in sandbox.py), or, without tests, is close
    plurality     plurality filtering: k sampled answers per question; unanimous (too easy) and
                  majority-less (ambiguous) questions are dropped; the majority answer becomes ground truth

Every generated record is checked against held-out text by toyworld.py's 13-gram rule when `--held-out` is
given (decontamination), and carries its provenance: seed id, pipeline, teacher and prompt version.

Sections, top to bottom (every prompt template is in prompts.py, in full; the teachers in teacher.py;
the code sandbox in sandbox.py):
    1. Parsing       scores, exercises, answers, verdicts and code blocks out of free-form replies
    2. Pipelines     one short function per technique: (teacher, input record) -> output records
    3. Running       inputs, resumable JSONL output, decontamination, the summary, and the CLI

Simplified, on purpose: prompts are one-shot templates where the report describes richer multi-stage
agent set-ups; curation scores each passage with one teacher call instead of training a classifier on the
scores, which is what one would do at web scale; requests go one at a time.

Commands (the teacher needs a model name: --model, or OPENAI_MODEL in the environment):
    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=my-model   # e.g. a local vLLM server
    python synth.py curate       --in passages/         --out out/synth/seeds.jsonl --min-score 6
    python synth.py rewrite      --in out/synth/seeds.jsonl --out out/synth/exercises.jsonl
    python synth.py plurality    --in out/synth/exercises.jsonl --out out/synth/questions.jsonl --k 5
    python synth.py dialogue     --in out/synth/seeds.jsonl --out out/synth/dialogues.jsonl --turns 4
    python synth.py revise       --in prompts.jsonl     --out out/synth/revised.jsonl --rounds 2
    python synth.py reverse-code --in snippets/         --out out/synth/code_pairs.jsonl
    python synth.py rewrite --local out/sft --in seeds.jsonl --out ex.jsonl   # own model, offline
    python -m pytest tests/test_synth.py tests/test_sandbox.py               # 127.0.0.1 only

Files: for --out NAME.jsonl, kept records are appended to NAME.jsonl and dropped ones, each with its
`dropped_by` reason, to NAME.rejected.jsonl (curate also keeps every score in NAME.scores.jsonl); rerun
the same command to resume. A malformed input line stops the run with `error: FILE, line N: ...`.
Replies are cached under --cache (default out/synth/cache). The API key is read from $OPENAI_API_KEY, or
from the variable --api-key-env names. The code sandbox needs Linux (see sandbox.py for its modes).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

import cli  # flags with ranges, errors as one line
import toyworld  # the world's answer extractor and the 13-gram decontamination rule; no torch
import files  # atomic writes and the JSONL reader that names file and line
import prompts  # every teacher prompt, in full
from sandbox import SandboxLimits, run_python
from teacher import DEFAULT_BASE_URL, MODEL_ENV, HTTPTeacher, LocalTeacher, TeacherError

# ----------------------------------------------------------------------------------------------------
# 1. Parsing free-form replies
#
# Teachers drift from the requested format, so parsers accept the common variants (markdown bold, "8/10",
# lower case) and take the last match, since a model may echo the instruction before answering.

def parse_score(reply: str) -> float | None:
    """The 0-10 score in a curation reply, or None when there is none."""
    matches = re.findall(r"score\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", reply, flags=re.IGNORECASE)
    if not matches:
        matches = re.findall(r"(\d+(?:\.\d+)?)\s*(?:/|out of)\s*10\b", reply, flags=re.IGNORECASE)
    if not matches and re.fullmatch(r"\d+(?:\.\d+)?", reply.strip().strip("*. ")):
        matches = [reply.strip().strip("*. ")]  # a reply that is nothing but the number
    if not matches:
        return None
    score = float(matches[-1])
    return score if 0 <= score <= 10 else None


def final_answer(text: str) -> str | None:
    """The text after the last 'Answer:' label (markdown bold allowed), or None."""
    matches = re.findall(r"^[\s*#]*answer\**\s*[:=]\s*\**(.+?)\**\s*$", text, flags=re.IGNORECASE | re.MULTILINE)
    return matches[-1].strip().rstrip(".") if matches else None


def normalize_answer(answer: str | None) -> str | None:
    """A comparable form of an answer: the integer the world's oracle reads if there is one, else the phrase
    in lower case with spaces collapsed. Two answers agree when their normal forms are equal."""
    if answer is None:
        return None
    integer = toyworld.extract_answer(f"Answer: {answer}")  # the same reader that grades the toy world
    if integer is not None and re.fullmatch(r"[-+]?[\d,]+", answer.strip()):
        return str(integer)
    return " ".join(answer.lower().split()) or None


def parse_exercises(reply: str) -> list[dict]:
    """Exercises in the prompts.REWRITE_SYSTEM format -> [{question, solution, answer}], skipping broken blocks."""
    exercises = []
    for block in re.split(r"^[\s#*]*exercise\s*\d+\s*[:.]?\**\s*$", reply, flags=re.IGNORECASE | re.MULTILINE):
        found = re.search(r"question\**\s*:\s*(.+?)\s*solution\**\s*:\s*(.+)", block, flags=re.IGNORECASE | re.DOTALL)
        answer = final_answer(block)
        if not found or answer is None:
            continue  # a block without all three parts cannot be validated, so it is not training data
        # The solution keeps its final "Answer: ..." line: the world's format ends every solution that way.
        exercises.append({"question": found.group(1).strip(), "solution": found.group(2).strip(), "answer": answer})
    return exercises


def parse_verdict(critique: str) -> str | None:
    """"pass", "revise", or None when the critic gave no verdict line (then the draft does not pass)."""
    matches = re.findall(r"verdict\**\s*:\s*\**\s*(pass|revise)", critique, flags=re.IGNORECASE)
    return matches[-1].lower() if matches else None


def extract_code(reply: str) -> str:
    """The first fenced code block in a reply, or the whole reply when the model forgot the fence."""
    found = re.search(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", reply, flags=re.DOTALL | re.IGNORECASE)
    return (found.group(1) if found else reply).strip() + "\n"


def code_similarity(a: str, b: str) -> float:
    """difflib's ratio (0..1) over code with comments, blank lines and indentation width ignored."""
    # Cutting at "#" also cuts strings that contain one; a tokenizer-exact comment strip would not,
    # but the ratio is only a rough gate and both sides are cut the same way.
    def normal(code):
        lines = (line.split("#", 1)[0].strip() for line in code.splitlines())
        return "\n".join(line for line in lines if line)
    return difflib.SequenceMatcher(None, normal(a), normal(b), autojunk=False).ratio()


# ----------------------------------------------------------------------------------------------------
# 2. Pipelines
#
# Each takes a teacher and one input record (it has an "id" plus the pipeline's field) and returns output
# records. A record with a "dropped_by" reason failed a check: it goes to the rejects file, not the data.

def provenance(item: dict, pipeline: str, teacher, record_id: str | None = None) -> dict:
    # seed_id ties every output to its input (and lets a rerun skip finished inputs); teacher and prompt
    # version let a later reader drop everything one model or one version of a prompt produced.
    return {"id": record_id or item["id"], "seed_id": item["id"], "pipeline": pipeline,
            "teacher": teacher.name, "prompt_version": prompts.PROMPT_VERSIONS[pipeline]}


def score_passage(teacher, item: dict) -> list[dict]:
    """Seed curation, step 1: the teacher's 0-10 score for one passage (selection happens in select_seeds)."""
    reply = teacher.complete([{"role": "system", "content": prompts.CURATE_SYSTEM},
                              {"role": "user", "content": prompts.CURATE_USER.format(passage=item["text"])}])
    # The rationale is kept beside the score: a human auditing the cut-off reads why, not just how much.
    record = {**provenance(item, "curate", teacher), "text": item["text"], "score": parse_score(reply),
              "rationale": reply.strip()}
    if record["score"] is None:
        record["dropped_by"] = "unparseable score"
    return [record]


def select_seeds(scored: list[dict], min_score: float = 6.0, keep_fraction: float = 1.0) -> list[dict]:
    """Seed curation, step 2: keep passages scoring >= min_score that also rank in the top keep_fraction."""
    # Records already dropped (unparseable score, decontamination) take no part in the ranking.
    ranked = sorted((r for r in scored if "dropped_by" not in r), key=lambda r: (-r["score"], r["id"]))
    n_top = math.ceil(keep_fraction * len(ranked))
    for rank, record in enumerate(ranked):
        if record["score"] < min_score:
            record["dropped_by"] = "score below --min-score"
        elif rank >= n_top:
            record["dropped_by"] = "outside --keep-fraction"
    ranked_ids = {id(r) for r in ranked}
    return ranked + [r for r in scored if id(r) not in ranked_ids]


def rewrite_seed(teacher, item: dict, n_exercises: int = 3, verify: bool = True) -> list[dict]:
    """Rewrite and augment: a seed passage -> exercises with worked solutions, each answer checked by agreement."""
    reply = teacher.complete([
        {"role": "system", "content": prompts.REWRITE_SYSTEM.format(n_exercises=n_exercises)},
        {"role": "user", "content": prompts.REWRITE_USER.format(passage=item["text"])}])
    exercises = parse_exercises(reply)
    if not exercises:  # the whole reply is recorded, so prompt problems can be diagnosed from the rejects
        return [{**provenance(item, "rewrite", teacher), "reply": reply, "dropped_by": "unparseable exercises"}]
    records = []
    for number, exercise in enumerate(exercises, start=1):
        record = {**provenance(item, "rewrite", teacher, f"{item['id']}/ex{number}"), **exercise}
        if verify:
            # Solve the question afresh, without the solution in view: a wrong worked solution rarely
            # agrees with an independent derivation, so disagreement is a strong signal of an error.
            record["check_answer"] = final_answer(teacher.complete(prompts.solve_messages(exercise["question"])))
            if normalize_answer(record["check_answer"]) != normalize_answer(exercise["answer"]):
                record["dropped_by"] = "answer disagreement"
        records.append(record)
    return records


def build_dialogue(teacher, item: dict, n_turns: int = 4) -> list[dict]:
    """Multi-agent prompting: a student and a teacher agent alternate for n_turns, student first."""
    systems = {"student": prompts.DIALOGUE_STUDENT_SYSTEM.format(passage=item["text"]),
               "teacher": prompts.DIALOGUE_TEACHER_SYSTEM.format(passage=item["text"])}
    turns: list[tuple[str, str]] = []  # (speaker, text)
    for turn in range(n_turns):
        speaker = ("student", "teacher")[turn % 2]
        messages = [{"role": "system", "content": systems[speaker]}]
        if speaker == "student":
            messages.append({"role": "user", "content": prompts.DIALOGUE_OPENING})
        # Chat models know two sides only: each agent sees its own past turns as "assistant" and the other
        # agent's as "user", so the same teacher model can play both parts without confusing them.
        messages += [{"role": "assistant" if who == speaker else "user", "content": text} for who, text in turns]
        reply = teacher.complete(messages).strip()
        if not reply:
            return [{**provenance(item, "dialogue", teacher), "dropped_by": f"empty turn {turn + 1}"}]
        turns.append((speaker, reply))
    # As chat data the student is the user and the teacher the assistant, whose turns carry the SFT loss.
    messages = [{"role": "user" if who == "student" else "assistant", "content": text} for who, text in turns]
    return [{**provenance(item, "dialogue", teacher), "messages": messages}]


def self_revise(teacher, item: dict, rounds: int = 2) -> list[dict]:
    """Self-revision: draft, then up to `rounds` x (critique -> revise); the final draft must pass the rubric."""
    task = item["prompt"]
    draft = teacher.complete([{"role": "system", "content": prompts.DRAFT_SYSTEM}, {"role": "user", "content": task}])
    history = []  # every draft with the critique it received, so the improvement itself is data too
    for round_number in range(rounds + 1):
        critique = teacher.complete([{"role": "system", "content": prompts.CRITIQUE_SYSTEM},
                                     {"role": "user", "content": prompts.CRITIQUE_USER.format(task=task, draft=draft)}])
        verdict = parse_verdict(critique)
        history.append({"draft": draft, "critique": critique, "verdict": verdict})
        if verdict == "pass" or round_number == rounds:
            break  # good enough, or out of rounds: either way this last draft has been critiqued
        draft = teacher.complete([{"role": "system", "content": prompts.REVISE_SYSTEM}, {"role": "user", "content":
                                  prompts.REVISE_USER.format(task=task, draft=draft, critique=critique)}]).strip()
    record = {**provenance(item, "revise", teacher), "prompt": task, "response": draft, "history": history}
    if history[-1]["verdict"] != "pass":
        record["dropped_by"] = "rubric not met after --rounds"
    return [record]


def reverse_code(teacher, item: dict, min_similarity: float = 0.7, limits: SandboxLimits | None = None) -> list[dict]:
    """Instruction reversal: code -> instruction -> regenerated code; keep (instruction, original code) only
    when the regenerated code passes the original's tests, or, without tests, is close to the original."""
    code, tests = item["code"], item.get("tests")
    instruction = teacher.complete([{"role": "system", "content": prompts.CODE_TO_INSTRUCTION_SYSTEM},
                                    {"role": "user", "content": prompts.CODE_TO_INSTRUCTION_USER.format(code=code)}]).strip()
    regenerated = extract_code(teacher.complete([{"role": "system", "content": prompts.INSTRUCTION_TO_CODE_SYSTEM},
                                                 {"role": "user", "content": instruction}]))
    # The kept pair is the instruction with the ORIGINAL code: the round trip only vouches for the instruction.
    record = {**provenance(item, "reverse-code", teacher), "instruction": instruction, "code": code,
              "regenerated_code": regenerated}
    if tests:
        # Tests are appended to the code and run as one script: a failing assert is a non-zero exit.
        original = run_python(code + "\n\n" + tests, limits)
        if not original.ok:
            record["dropped_by"] = f"original fails its own tests ({original.reason})"  # nothing to judge by
            return [record]
        result = run_python(regenerated + "\n\n" + tests, limits)
        record["validation"] = result.reason
        if not result.ok:
            record["dropped_by"] = f"regenerated code fails tests ({result.reason})"
    else:
        # Without tests, closeness is the report's criterion: the instruction said enough to rebuild the code.
        record["similarity"] = round(code_similarity(code, regenerated), 4)
        if record["similarity"] < min_similarity:
            record["dropped_by"] = "regenerated code not similar enough (--min-similarity)"
    return [record]


def plurality_filter(teacher, item: dict, k: int = 5) -> list[dict]:
    """Plurality filtering: k independent answers; keep questions with a strict majority that is not unanimous."""
    # Sample i is request i: a distinct seed for the server and a distinct cache entry for us. Sample 0 is
    # the very request rewrite's verification makes, so questions from `rewrite` get it from the cache.
    samples = [teacher.complete(prompts.solve_messages(item["question"]), sample_index=i) for i in range(k)]
    votes = [normalize_answer(final_answer(sample)) for sample in samples]
    record = {**provenance(item, "plurality", teacher), "question": item["question"], "votes": votes}
    counts = Counter(vote for vote in votes if vote is not None)  # an unparseable sample votes for nothing
    top_answer, top_count = counts.most_common(1)[0] if counts else (None, 0)
    if top_count == k:
        record["dropped_by"] = "unanimous (too easy)"  # every sample right: nothing left to learn
    elif top_count * 2 <= k:
        record["dropped_by"] = "no majority (ambiguous)"  # likely ill-posed, or beyond the teacher
    else:
        # The majority answer stands in for a ground truth we do not have; one of its solutions is the target.
        record.update(answer=top_answer, agreement=top_count / k, solution=samples[votes.index(top_answer)])
    return [record]


# ----------------------------------------------------------------------------------------------------
# 3. Running: inputs, resumable outputs, decontamination, summary, CLI
#
# Output is JSONL appended and flushed one record at a time, so a crash loses at most the record being
# written (flush hands it to the OS: it survives the process, not a power cut). On a rerun every input whose
# id already appears as a seed_id in the output or the rejects file is skipped.

# Which input field each pipeline reads; a plain text file in --in becomes one record with this field.
TEXT_SUFFIXES = (".txt", ".md", ".py")
INPUT_SUFFIXES = (".jsonl", *TEXT_SUFFIXES)
INPUT_FIELD = {"curate": "text", "rewrite": "text", "dialogue": "text", "revise": "prompt",
               "reverse-code": "code", "plurality": "question"}


def load_items(path: str, field: str) -> list[dict]:
    """Input records from a .jsonl file, a plain text file (.txt, .md, .py), or a folder of them.

    A folder's files of other types (a README.pdf, .DS_Store) are passed over. Raises files.DataError naming
    the file (and line) for a malformed line, a record without `field`, duplicate ids, a file of another
    type named directly, or no records at all; main prints it as one `error: ...` line.
    """
    root = Path(path)
    paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    if not root.is_dir() and root.suffix not in INPUT_SUFFIXES:
        raise files.DataError(f"{root}: not a file synth.py reads (.jsonl, or text: {', '.join(TEXT_SUFFIXES)})")
    items = []
    for file in paths:
        if file.suffix == ".jsonl":
            records = files.read_jsonl(str(file))
            # read_jsonl skips blank lines, so record i sits on the i-th non-blank line: that number names it.
            with open(file, encoding="utf-8") as f:
                line_numbers = [n for n, line in enumerate(f, start=1) if line.strip()]
            for line_number, record in zip(line_numbers, records):
                if not isinstance(record.get(field), str):
                    raise files.DataError(f"{file}, line {line_number}: no text field {field!r}")
                record.setdefault("id", f"{file.stem}:{line_number}")  # stable across reruns, so resume works
                items.append(record)
        elif file.suffix in TEXT_SUFFIXES:
            items.append({"id": str(file.relative_to(root)) if root.is_dir() else file.stem,
                          field: file.read_text(encoding="utf-8")})
    if not items:  # an empty run would exit 0 having done nothing, or decontaminate against nothing
        raise files.DataError(f"{path}: no records (synth.py reads .jsonl files and text files: "
                              f"{', '.join(TEXT_SUFFIXES)})")
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        raise files.DataError(f"{path}: duplicate ids {sorted(i for i, n in Counter(ids).items() if n > 1)[:3]}")
    return items


def rejects_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name.removesuffix(".jsonl") + ".rejected.jsonl")


def read_output(path: Path) -> list[dict]:
    """Records already written to one of our outputs; [] before the first run.

    A torn last line (a run killed mid-write) is cut off the file first: it is the one record that was
    not finished, and the rerun writes it again.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        files.atomic_write_text(str(path), text[: text.rfind("\n") + 1])
    return files.read_jsonl(str(path))


class Decontaminator:
    """toyworld.py's 13-gram rule: a record sharing any word 13-gram with the held-out texts is dropped."""

    def __init__(self, held_out_texts: list[str], n: int = 13):
        self.n = n
        self.banned = set().union(*(toyworld.ngrams(text, n) for text in held_out_texts))

    def check(self, record: dict) -> dict:
        text_fields = ("text", "question", "solution", "prompt", "response", "instruction", "code")
        # Field by field, so that no n-gram straddles the end of one field and the start of the next.
        texts = [record[f] for f in text_fields if isinstance(record.get(f), str)]
        texts += [m["content"] for m in record.get("messages", [])]
        if "dropped_by" not in record and any(toyworld.ngrams(text, self.n) & self.banned for text in texts):
            record["dropped_by"] = f"decontamination ({self.n}-gram overlap with --held-out)"
        return record


def process(items: list[dict], step, out_path: Path, desc: str, decontaminator=None) -> Counter:
    """Run step(item) -> records over the inputs not yet done; append kept and rejected records as they come."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reject_path = rejects_path(out_path)
    # Rejects count as done too: rerunning a dropped input would only reproduce the same verdict.
    done = {r["seed_id"] for r in read_output(out_path) + read_output(reject_path)}
    counts = Counter(skipped=sum(item["id"] in done for item in items))
    # Appended record by record, not rewritten atomically: rewriting the whole file per record would cost
    # time quadratic in its length, and a torn last line is repaired by read_output on the next run.
    with open(out_path, "a", encoding="utf-8") as kept_file, open(reject_path, "a", encoding="utf-8") as reject_file:
        for item in tqdm([item for item in items if item["id"] not in done], desc=desc, unit="input"):
            for record in step(item):
                if decontaminator is not None:
                    record = decontaminator.check(record)
                counts["generated"] += 1
                counts[record.get("dropped_by", "kept")] += 1
                target = reject_file if "dropped_by" in record else kept_file
                target.write(json.dumps(record, ensure_ascii=False) + "\n")
                target.flush()
    return counts


def summary_line(pipeline: str, counts: Counter) -> str:
    dropped = {k: v for k, v in counts.items() if k not in ("generated", "kept", "skipped")}
    parts = [f"{pipeline}: {counts['generated']} generated, {counts['kept']} kept",
             f"{counts['skipped']} inputs already done"]
    parts += [f"dropped {n} by {reason}" for reason, n in sorted(dropped.items())]
    return "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    io = common.add_argument_group("input and output")
    io.add_argument("--in", dest="input", required=True,
                    help="input .jsonl (one record per line, with an 'id' and the pipeline's field), a .txt/.md/.py "
                         "file, or a folder of them (its files of other types are passed over)")
    io.add_argument("--out", required=True, help="output NAME.jsonl; dropped records go to NAME.rejected.jsonl beside it")
    io.add_argument("--held-out", help="held-out/eval texts (.jsonl or text files); records sharing a 13-gram "
                                       "with them are dropped")
    io.add_argument("--held-out-field", default="question", help="field read from --held-out .jsonl records")
    io.add_argument("--limit", type=cli.at_least(1), help="process only the first N inputs")
    teacher = common.add_argument_group("teacher (HTTP endpoint by default, or --local)")
    teacher.add_argument("--base-url", help="OpenAI-compatible base URL ending in /v1 (default: $OPENAI_BASE_URL, "
                                            f"else {DEFAULT_BASE_URL})")
    teacher.add_argument("--model", help=f"model name sent to the endpoint (default: ${MODEL_ENV})")
    teacher.add_argument("--api-key-env", default="OPENAI_API_KEY",
                         help="name of the environment variable holding the API key (keys never go on the command line)")
    teacher.add_argument("--local", metavar="CKPT_DIR", help="use this project's checkpoint in-process instead")
    teacher.add_argument("--device", default="cpu", help="device for --local (cpu or cuda)")
    teacher.add_argument("--cache", default="out/synth/cache", help="folder of cached replies (HTTP teacher)")
    teacher.add_argument("--timeout", type=cli.positive, default=120.0, help="seconds for a whole HTTP request, however slowly the reply arrives")
    teacher.add_argument("--retries", type=cli.at_least(0), default=4, help="retries after a failed HTTP request")
    teacher.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (> 0 for plurality)")
    teacher.add_argument("--max-tokens", type=cli.at_least(1), default=1024, help="longest reply, in tokens")
    teacher.add_argument("--seed", type=int, default=0, help="base sampling seed; sample i uses seed + i")

    parser = cli.Parser(
        description="Phi-4-style synthetic data (report section 2) from a teacher model, with validation. "
                    "Run `python synth.py PIPELINE --help` for a pipeline's flags.",
        epilog=__doc__[__doc__.index("Commands"):], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="PIPELINE")
    # Each pipeline's parser is a cli.Parser too (errors in one line); its help names defaults itself.
    add = functools.partial(commands.add_parser, parents=[common], formatter_class=argparse.HelpFormatter)
    curate = add("curate", help="score passages 0-10 for educational/reasoning value and keep the best")
    curate.add_argument("--min-score", type=float, default=6.0, help="keep passages scoring at least this")
    curate.add_argument("--keep-fraction", type=cli.between(0.0, 1.0, low_open=True), default=1.0, help="and only the top fraction (0-1] of them")
    rewrite = add("rewrite", help="turn seed passages into exercises with worked solutions")
    rewrite.add_argument("--n-exercises", type=cli.at_least(1), default=3, help="exercises requested per seed")
    rewrite.add_argument("--no-verify", action="store_true", help="skip the independent re-derivation of answers")
    dialogue = add("dialogue", help="a student agent and a teacher agent alternate turns about each seed")
    dialogue.add_argument("--turns", type=int, default=4, help="turns in each conversation, student first")
    revise = add("revise", help="draft -> critique against a rubric -> revise, for each prompt")
    revise.add_argument("--rounds", type=cli.at_least(0), default=2, help="most revisions per prompt")
    reverse = add("reverse-code", help="code -> instruction -> regenerated code, validated by tests or similarity")
    reverse.add_argument("--min-similarity", type=cli.between(0.0, 1.0), default=0.7, help="difflib ratio needed when there are no tests")
    reverse.add_argument("--exec-timeout", type=cli.between(0.0, 3600.0, low_open=True), default=10.0, help="wall seconds per sandboxed run")
    reverse.add_argument("--memory-mb", type=cli.at_least(64), default=1024, help="address-space limit per sandboxed run")
    plurality = add("plurality", help="sample k answers per question; keep non-unanimous majorities")
    plurality.add_argument("--k", type=int, default=5, help="answers sampled per question (at least 3)")
    return parser


def check_args(parser: argparse.ArgumentParser, args, need_teacher: bool = True) -> None:
    """Impossible settings fail at once with one line that names the flag to change."""
    if not Path(args.input).exists():
        parser.error(f"--in: no such file or folder: {args.input}")
    if args.held_out and not Path(args.held_out).exists():
        parser.error(f"--held-out: no such file or folder: {args.held_out}")
    if args.local and not Path(args.local).is_dir():
        parser.error(f"--local: not a checkpoint folder: {args.local}")
    if need_teacher and not args.local and not (args.model or os.environ.get(MODEL_ENV)):
        parser.error(f"--model: no teacher model; pass --model (or set {MODEL_ENV}), or --local CKPT_DIR")
    if args.command == "plurality" and args.k < 3:
        parser.error("--k must be at least 3: with fewer samples a majority cannot differ from unanimity")
    if args.command == "dialogue" and args.turns < 2:
        parser.error("--turns must be at least 2 (one student turn and one teacher turn)")


def make_teacher(args):
    # The key is read from the variable --api-key-env names: a key passed as a flag would sit in shell
    # history and in `ps` output for every user of the machine to see.
    if args.local:
        return LocalTeacher.from_checkpoint(args.local, device=args.device, max_new_tokens=args.max_tokens,
                                            temperature=args.temperature, seed=args.seed)
    return HTTPTeacher(model=args.model, base_url=args.base_url, api_key=os.environ.get(args.api_key_env),
                       cache_dir=args.cache, timeout=args.timeout, retries=args.retries,
                       temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)


def main(argv=None, teacher=None) -> int:
    """The CLI; `teacher` lets a caller (or a test) pass a ready teacher instead of the teacher flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args, need_teacher=teacher is None)
    try:
        items = load_items(args.input, INPUT_FIELD[args.command])[: args.limit]
        held_out = load_items(args.held_out, args.held_out_field) if args.held_out else None
    except (OSError, files.DataError) as error:
        # A bad input file is the user's to fix: one line naming the file and line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    teacher = teacher or make_teacher(args)  # only now: a bad flag should fail before a model is loaded
    decontaminator = Decontaminator([r[args.held_out_field] for r in held_out]) if held_out else None
    limits = SandboxLimits(timeout=getattr(args, "exec_timeout", 10.0), memory_mb=getattr(args, "memory_mb", 1024))
    steps = {
        "curate": lambda item: score_passage(teacher, item),
        "rewrite": lambda item: rewrite_seed(teacher, item, args.n_exercises, verify=not args.no_verify),
        "dialogue": lambda item: build_dialogue(teacher, item, args.turns),
        "revise": lambda item: self_revise(teacher, item, args.rounds),
        "reverse-code": lambda item: reverse_code(teacher, item, args.min_similarity, limits),
        "plurality": lambda item: plurality_filter(teacher, item, args.k),
    }
    out_path = Path(args.out)
    # Curation ranks all passages at once, so its scores stream to a side file and the selection is written last.
    stream_path = out_path.with_name(out_path.name.removesuffix(".jsonl") + ".scores.jsonl") \
        if args.command == "curate" else out_path
    print(f"{args.command}: {len(items)} inputs, teacher {teacher.name}, prompts {prompts.PROMPT_VERSIONS[args.command]}",
          file=sys.stderr)
    try:
        counts = process(items, steps[args.command], stream_path, args.command, decontaminator)
    except TeacherError as error:
        print(f"error: {error}\n(records written so far are kept in {stream_path}; rerun to resume)", file=sys.stderr)
        return 1
    if args.command == "curate":
        records = select_seeds(read_output(stream_path) + read_output(rejects_path(stream_path)),
                               args.min_score, args.keep_fraction)
        counts = Counter(generated=len(records), skipped=counts["skipped"])
        counts.update(r.get("dropped_by", "kept") for r in records)
        for path, chosen in ((out_path, [r for r in records if "dropped_by" not in r]),
                             (rejects_path(out_path), [r for r in records if "dropped_by" in r])):
            files.write_jsonl(str(path), chosen)  # rewritten whole, atomically: the selection is final
    print(summary_line(args.command, counts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
