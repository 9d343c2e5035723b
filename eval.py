"""Chapter: evaluation. Held-out accuracy of any stage, long-context retrieval, and the stage report.

Phi-4's report measures every stage on benchmarks (Table 1) and ablations (Tables 2-9). At toy scale the
benchmark is the synthetic world's held-out split: problems decontaminated from all training text by
the 13-gram rule (report section 2), graded by the world's oracle, so a number here means "solved
this many unseen problems". Three measurements:

    held-out accuracy   greedy pass@1 with a 95% Wilson interval and per-level accuracy; sampled maj@k
    long context        retrieval of facts at 1x, 2x, 4x the pretraining context (what midtraining, report
                        section 3, is for) and held-out loss by position
    the report          out/report.md: every stage's training log and evaluation side by side

Commands:
    python eval.py --init out/pretrain               # document format: "Problem: ... Solution:"
    python eval.py --init out/sft --chat             # chat format, for SFT and later stages -> out/sft/eval.json
    python eval.py --init out/midtrain --long        # retrieval at 1x/2x/4x -> out/midtrain/eval_long.json
    python eval.py --report out/report.md            # the report of every stage under out/
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter

import torch
from tqdm import tqdm

import cli
import checkpoint
import data
import files
import parallel
import stats
import toyworld
from model import CONTEXT_EXTENSION, PRESETS, Phi4
from sample import sample_completions, strip_stop

# ----------------------------------------------------------------------------------------------------
# Held-out accuracy


def majority_answer(texts: list[str]) -> int | None:
    """The most frequent final answer among texts (ties: the one seen first); None if none has one.

    This is the vote of maj@k (self-consistency): k sampled solutions may reach the same number by
    different routes, and the number most of them agree on is taken as the model's answer. Samples with
    no "Answer:" line do not vote, so ["Answer: 7", "rambling", "Answer: 7"] votes 7, not "no answer".
    Example: answers 3, 5, 5, 3 tie at two votes each; 3 was seen first and wins, so a tie is broken
    by sample order, which the seed fixes, and a rerun gives the same vote.
    """
    answers = [a for a in map(toyworld.extract_answer, texts) if a is not None]
    if not answers:
        return None  # scored as wrong by the caller: None never equals a problem's answer
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)  # first in sample order among the most voted


@torch.no_grad()
def evaluate_problems(
    model: Phi4,
    tokenizer: data.Tokenizer,
    problems: list[toyworld.Problem],
    chat: bool = False,
    max_new_tokens: int = 120,
    batch_size: int = 64,
    maj_k: int = 0,
    temperature: float = 0.7,
    seed: int = 0,
) -> dict:
    """Greedy pass@1 (and, with maj_k > 0, sampled maj@k) on `problems`, graded by the world's oracle.

    -> {"accuracy", "n", "correct", "per_level"} (+ "maj_k", "maj_accuracy", "maj_correct").
    maj@k samples k answers at `temperature` and scores the most frequent final answer: it measures
    whether the model's *distribution* is right more often than not, which greedy decoding hides.
    It is not pass@k (right if ANY of k samples is right), which only grows with k; maj@k can fall
    below pass@1 when the right answer is the single most likely path but not the most common number.

    Pitfall: pass@1 here is greedy (temperature 0), one answer per problem, not the mean accuracy of
    sampled answers: a model can be right greedily and wrong in most samples, or the other way round.
    """
    # Both end markers stop an answer: a document-format model starts the next document with
    # <|endoftext|> (bos_id), a chat model closes its turn with <|im_end|>. What follows is not the answer.
    stop = (tokenizer.bos_id, tokenizer.im_end_id)
    prompts = [toyworld.prompt_ids(tokenizer, p, chat) for p in problems]
    # temperature 0 is argmax decoding: no seed, so pass@1 is the same number on every rerun.
    greedy = sample_completions(model, prompts, 1, max_new_tokens, stop, temperature=0, batch_rows=batch_size,
                                vocab_size=tokenizer.vocab_size)  # per problem: [one answer's ids]
    correct = [toyworld.check(p, tokenizer.decode(strip_stop(s[0], stop))) for p, s in zip(problems, greedy)]
    # Per level (the number of operations, 1-4): a stage that helps only easy problems shows here.
    per_level: dict[int, list[bool]] = {}
    for problem, ok in zip(problems, correct):
        per_level.setdefault(problem.level, []).append(ok)
    result = {
        "accuracy": sum(correct) / max(1, len(problems)),  # max: an empty --limit slice reads 0, not 0/0
        "n": len(problems),
        "correct": sum(correct),
        "per_level": {level: sum(v) / len(v) for level, v in sorted(per_level.items())},
    }
    if maj_k > 0:
        # k rows per prompt: the prompt is prefilled once and its KV cache copied to k rows.
        samples = sample_completions(model, prompts, maj_k, max_new_tokens, stop, temperature, seed=seed,
                                     vocab_size=tokenizer.vocab_size)  # per problem: k answers' ids
        votes = [majority_answer([tokenizer.decode(strip_stop(s, stop)) for s in group]) for group in samples]
        maj_correct = sum(vote == p.answer for vote, p in zip(votes, problems))  # a None vote is wrong
        result.update(maj_k=maj_k, maj_temperature=temperature, maj_correct=maj_correct,
                      maj_accuracy=maj_correct / max(1, len(problems)))
    return result


# ----------------------------------------------------------------------------------------------------
# Long-context evaluation: what midtraining did (Phi-4 report section 3, context extension)
#
# Measured at lengths that are multiples of the pretraining context (1x, 2x, 4x), on documents from
# toyworld.long_document (8 ledger entries and 4 problem openings; 2 ledger questions and 1 problem
# continuation are asked, the other facts are distractors):
#   far retrieval   layout "recall": the facts first, filler, the questions last, so each answer lies
#                   about the whole length after its fact. Needs attention across the whole context.
#   near retrieval  layout "near": the same kinds of questions, each right after its fact, at the end
#                   of the document. Needs the model to work at positions up to 4x, but only to look
#                   a few dozen tokens back, which pretraining taught.
#   loss            next-token loss on held-out midtraining-style documents of 4x the pretraining
#                   length, averaged over windows of the pretraining length.
# A question counts as answered when the model's most likely token is right at every answer position,
# given the document up to there: exactly what greedy decoding would write, scored for all questions of
# a document in one forward pass. A model whose context is shorter than a document is run with its RoPE
# tables extended at its own base (set_rope, the only way to run it there), which the result marks as
# "extrapolated": that is how the pretrained model is measured beyond its 1x.

LONG_MULTIPLES = (1, 2, 4)  # 4x is midtraining's extension (CONTEXT_EXTENSION): the farthest it trained
LONG_LAYOUTS = {"far": "recall", "near": "near"}  # report name -> toyworld.long_document layout
# Chance: copying the number of a random one of the document's 12 facts (8 ledger, 4 problem openings).
LONG_CHANCE = 1 / 12


@torch.no_grad()
def document_losses(model: Phi4, documents: list[list[int]], pad_id: int, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per document of n tokens: (next-token losses (n-1,), greedy predictions (n-1,)), in one batched forward."""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(documents), batch_size):
        chunk = documents[start : start + batch_size]
        width = max(map(len, chunk))  # T: the longest document of the chunk; shorter rows are padded
        idx = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T), padded at the end
        for row, ids in enumerate(chunk):
            idx[row, : len(ids)] = torch.tensor(ids)  # (n,) into row `row`; the rest stays pad_id
        hidden = model.hidden_states(idx.to(device))  # (B, T, C); causal, so padding changes nothing before it
        for row, ids in enumerate(chunk):
            n = len(ids)  # slicing to n drops the padded positions, so pad tokens are never scored
            # One row of logits at a time: (n, V) is the largest tensor alive, whatever the batch size.
            logits = model.lm_head(hidden[row, : n - 1]).float()  # (n-1, V)
            targets = idx[row, 1:n].to(device)  # (n-1,)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")  # (n-1,)
            results.append((losses.cpu(), logits.argmax(dim=-1).cpu()))  # argmax: what greedy decoding writes
    return results


def retrieval_accuracy(model: Phi4, documents: list[toyworld.LongDocument], pad_id: int) -> dict:
    """Greedy accuracy on the documents' questions, overall and per kind, with the mean fact distance."""
    scored = document_losses(model, [doc.ids for doc in documents], pad_id)
    answers = []  # (kind, correct, distance)
    for doc, (_, predicted) in zip(documents, scored):
        for answer in doc.answers:
            # A number can take several tokens: all of them must be right, as a greedy answer would need.
            span = range(answer["position"], answer["position"] + answer["n_tokens"])
            # The token at position p is predicted from position p - 1.
            correct = all(int(predicted[p - 1]) == doc.ids[p] for p in span)
            answers.append((answer["kind"], correct, answer["position"] - answer["fact_position"]))
    # The mean distance shows that "far" really is far: about the document length, against a few dozen
    # tokens for "near", so a gap between the two layouts is a gap in long-range attention.
    entry = {"n": len(answers), "mean_distance": sum(a[2] for a in answers) / len(answers)}
    for kind in ("all", "ledger", "problem"):
        chosen = [ok for k, ok, _ in answers if kind in ("all", k)]  # "all" pools both kinds
        entry[f"{kind}_accuracy"] = sum(chosen) / len(chosen)
        entry[f"{kind}_ci95"] = stats.wilson_interval(sum(chosen), len(chosen))
    return entry


@torch.no_grad()
def evaluate_long_context(model: Phi4, tokenizer: data.Tokenizer, base_len: int, n_docs: int = 64,
                          seed: int = toyworld.LONG_EVAL_SEED, progress: bool = False) -> dict:
    """Far and near retrieval at 1x, 2x and 4x base_len, and held-out loss by position (see the section comment)."""
    model.eval()
    trained_len = model.config.max_seq_len  # restored in `finally`, even when a length fails midway
    result = {"max_seq_len": trained_len, "rope_theta": model.config.rope_theta, "base_len": base_len,
              "n_docs": n_docs, "chance": LONG_CHANCE, "retrieval": []}
    longest = max(LONG_MULTIPLES) * base_len
    if longest > trained_len:
        model.set_rope(max_seq_len=longest)  # same base: extrapolation past the trained context
    try:
        # Six cells: (far, near) x (1x, 2x, 4x); k numbers them, so each cell has its own fixed documents.
        settings = [(name, multiple) for name in LONG_LAYOUTS for multiple in LONG_MULTIPLES]
        for k, (name, multiple) in enumerate(tqdm(settings, desc="long-context eval", disable=not progress)):
            length = multiple * base_len
            rng = random.Random(seed + k)  # the same documents for every model
            documents = [toyworld.long_document(rng, tokenizer, length, layout=LONG_LAYOUTS[name]) for _ in range(n_docs)]
            # "extrapolated": RoPE angles the model never saw in training, so a low score may be the
            # positions, not the retrieval; the report marks such cells with *.
            entry = {"layout": name, "length": length, "multiple": multiple, "extrapolated": length > trained_len}
            result["retrieval"].append({**entry, **retrieval_accuracy(model, documents, tokenizer.pad_id)})

        # Loss by position, on documents like the midtraining ones but from the evaluation seed.
        rng = random.Random(seed)
        documents = [toyworld.long_training_document(rng, tokenizer, longest).ids for _ in range(n_docs)]
        scored = document_losses(model, documents, tokenizer.pad_id)
        # One bucket per window of base_len positions: a model that only learned 1x has a flat loss in
        # the first bucket and a rising one after it; a midtrained model stays flat (or falls: more context).
        buckets = []
        for start in range(0, longest, base_len):
            # Loss at position t is the loss of predicting token t + 1.
            values = torch.cat([losses[start : start + base_len] for losses, _ in scored])  # (n_docs * base_len,)
            buckets.append({"start": start, "end": start + base_len, "loss": float(values.mean()), "n_tokens": len(values)})
        result["loss_by_position"] = buckets
    finally:
        if longest > trained_len:
            model.set_rope(max_seq_len=trained_len)  # leave the model as it was loaded
    return result


def pretraining_length(path: str, model: Phi4) -> int:
    """The context a checkpoint's model was pretrained at, which the 1x, 2x, 4x of the evaluation refer to.

    A midtraining checkpoint extended it by CONTEXT_EXTENSION; any other uses its preset's context
    (toy 256, 14b 4096), or its own when it was trained shorter. --long-base overrides this.
    """
    train_config = checkpoint.read_checkpoint(path).get("train_config") or {}  # the record only: no weights
    if train_config.get("stage") == "midtrain":
        # Its max_seq_len is already the extended one; the multiples must refer to what it was before.
        return model.config.max_seq_len // CONTEXT_EXTENSION
    preset = PRESETS.get(train_config.get("size"))  # None when the record names no known preset
    return min(model.config.max_seq_len, preset.max_seq_len) if preset else model.config.max_seq_len


def long_context_lines(root: str, stages: list[str]) -> list[str]:
    """The report's long-context table: one row per stage folder that has an eval_long.json."""
    rows, first = [], None  # first: the earliest stage with a result, whose cells name the columns
    for stage in stages:
        path = os.path.join(root, stage, "eval_long.json")
        if not os.path.exists(path):
            continue
        result = files.read_json(path)
        first = first or result  # the same --long settings give the same columns for every stage
        cells = [
            f"{100 * e['ledger_accuracy']:.0f}% / {100 * e['problem_accuracy']:.0f}%{'*' if e['extrapolated'] else ''}"
            for e in result["retrieval"]
        ]
        cells += [f"{bucket['loss']:.3f}" for bucket in result["loss_by_position"]]  # one cell per window
        rows.append(f"| {stage} | {result['max_seq_len']} | {result['rope_theta']:g} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    headers = [f"{e['layout']} {e['multiple']}x ({e['length']})" for e in first["retrieval"]]
    headers += [f"loss {b['start']}-{b['end']}" for b in first["loss_by_position"]]
    return [
        "", "## Long context (midtraining: 4x context, RoPE base 250K)", "",
        "| stage | context | RoPE base | " + " | ".join(headers) + " |",
        "|---|---|---|" + "---|" * len(headers),
        *rows,
        "",
        f"Retrieval cells: ledger / problem accuracy (greedy), {first['n_docs']} documents per cell, 2 ledger and 1 "
        f"problem question each; chance (copying one of the document's 12 facts) {100 * first['chance']:.1f}%. "
        "far: each fact about the whole document before its question; near: right before it, at the end of the "
        "document. * = beyond the model's trained context (RoPE tables extended at its own base). "
        "Loss: held-out long documents, mean next-token loss per window of positions.",
    ]


# ----------------------------------------------------------------------------------------------------
# The stage report

# The recipe's order (report sections 3-4: pretraining, midtraining, SFT, then the DPO rounds), so the
# report reads top to bottom as the model was built; unknown folders go last, by name.
STAGE_ORDER = ("pretrain", "midtrain", "sft", "rs_sft", "dpo", "sft_dpo", "pts_dpo", "pts_dpo_dpo")

# The toy version of the report's Table 9 (SFT -> +PTS DPO): which stage folder holds which row.
TABLE9 = (("SFT", "sft"), ("SFT + PTS-DPO", "pts_dpo"), ("SFT + full-length DPO", "sft_dpo"),
          ("SFT + PTS-DPO, then full-length DPO", "pts_dpo_dpo"))


def accuracy_cells(result: dict | None) -> tuple[str, str]:
    """'41.2% of 500 (37.0-45.6%)' for greedy pass@1 and for maj@k, or placeholders."""
    if result is None:
        return "not evaluated", "-"  # the stage trained but eval.py has not been run on it
    low, high = result["ci95"]  # the interval goes next to the number: a 2-point gain inside it is noise
    greedy = f"{100 * result['accuracy']:.1f}% of {result['n']} ({100 * low:.1f}-{100 * high:.1f}%)"
    if "maj_accuracy" not in result:
        return greedy, "-"  # evaluated with --maj-k 0
    low, high = result["maj_ci95"]
    return greedy, f"{100 * result['maj_accuracy']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%)"


def write_report(root: str, path: str):
    """out/report.md: for every stage folder under root, what training did and what the eval measured."""
    stages = [d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "log.jsonl"))] if os.path.isdir(root) else []
    stages.sort(key=lambda d: (STAGE_ORDER.index(d) if d in STAGE_ORDER else len(STAGE_ORDER), d))  # recipe order
    evals = {s: files.read_json(os.path.join(root, s, "eval.json")) if os.path.exists(os.path.join(root, s, "eval.json")) else None
             for s in stages}
    maj_k = next((e["maj_k"] for e in evals.values() if e and "maj_k" in e), None)  # the column header's k
    lines = [
        "# Report of the toy Phi-4 recipe",
        "",
        f"| stage | steps | train loss | held-out loss | median tok/s | wall (s) | held-out pass@1 (95% CI) | maj@{maj_k or 'k'} (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        records = files.read_jsonl(os.path.join(root, stage, "log.jsonl"))
        last = records[-1]
        # The latest held-out loss: it is logged only every few steps, so the last record may lack one.
        val = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)
        # Median, not mean: the first steps include compilation and warm-up and would drag a mean down.
        tok_s = sorted(r["tok_s"] for r in records)[len(records) // 2]
        wall = f"{last['time_s']:.0f}" if "time_s" in last else "?"
        val_text = f"{val:.4f}" if val is not None else "-"
        greedy, majority = accuracy_cells(evals[stage])
        lines.append(f"| {stage} | {last['step']} | {last['loss']:.4f} | {val_text} | {tok_s:,.0f} | {wall} | {greedy} | {majority} |")
    lines += ["", "Held-out problems are decontaminated from all training text by the 13-gram rule (toyworld.py)."]

    rs_summary = os.path.join(root, "rs", "summary.json")
    if os.path.exists(rs_summary):
        # pass@n (any of n samples right) is the ceiling of rejection sampling: problems it misses give
        # no accepted answer at all, and sample accuracy is the share of samples that survive the oracle.
        s = files.read_json(rs_summary)
        lines += ["", "## Rejection sampling", "",
                  f"{s['problems']} problems x {s['samples_per_problem']} samples at T={s['temperature']} from {s.get('init', '?')}: "
                  f"{100 * s['sample_accuracy']:.1f}% of samples correct, pass@{s['samples_per_problem']} {100 * s['pass_at_n']:.1f}%, "
                  f"{s['sft_records']} accepted answers (rs_sft trains on them), {s['pairs']} correct-vs-incorrect pairs (dpo trains on them)."]
    dpo_rows = []
    for stage in stages:
        records = files.read_jsonl(os.path.join(root, stage, "log.jsonl"))
        if "margin" in records[-1]:  # only DPO logs a margin: this picks the DPO stages
            # A mean over the last steps: a single step's batch makes these numbers jump.
            tail = records[-10:]
            mean = lambda key: sum(r[key] for r in tail) / len(tail)
            dpo_rows.append(f"| {stage} | {records[-1]['step']} | {mean('loss'):.3f} | {mean('chosen_reward'):.2f} | "
                            f"{mean('rejected_reward'):.2f} | {mean('margin'):.2f} | {mean('accuracy'):.2f} |")
    if dpo_rows:
        lines += ["", "## DPO training (means of the last 10 steps)", "",
                  "| stage | steps | loss | chosen reward | rejected reward | margin | preference accuracy |",
                  "|---|---|---|---|---|---|---|", *dpo_rows]
    if sum(evals.get(folder) is not None for _, folder in TABLE9) >= 2:  # a comparison needs two rows
        lines += ["", "## Toy Table 9: Pivotal Token Search (report: SFT -> +PTS DPO, MATH 77.1 -> 80.5)", "",
                  f"| model | held-out pass@1 (95% CI) | maj@{maj_k or 'k'} (95% CI) |", "|---|---|---|"]
        for name, folder in TABLE9:
            greedy, majority = accuracy_cells(evals.get(folder))
            lines.append(f"| {name} | {greedy} | {majority} |")
    lines += long_context_lines(root, stages)  # present once a stage has run eval.py --long
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # `or "."`: a bare file name has no folder
    files.atomic_write_text(path, "\n".join(lines) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; argv=None reads sys.argv, a list lets a test parse flags without a process.

    Impossible values stop here with argparse's usage message naming the flag, before a model is loaded.
    """
    parser = cli.Parser(description="Score a checkpoint on the held-out problems, or write the report.")
    parser.add_argument("--init", default=None, help="checkpoint folder (default: the newest under out/)")
    parser.add_argument("--chat", action="store_true", help="pose problems as a user turn (SFT and later stages)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder with eval.jsonl")
    parser.add_argument("--limit", type=cli.at_least(1), default=None, help="score only the first N problems (no eval.json is written)")
    parser.add_argument("--maj-k", type=cli.at_least(0), default=8, help="also sampled maj@k with k votes (0: greedy only)")
    parser.add_argument("--maj-temperature", type=cli.positive, default=0.7, help="sampling temperature of the maj@k votes")
    parser.add_argument("--max-new-tokens", type=cli.at_least(1), default=120, help="tokens per answer")
    parser.add_argument("--seed", type=int, default=1337, help="sampling seed of the maj@k votes")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--long", action="store_true",
                        help="retrieval of facts far back (far) and just before (near) in documents of 1x, 2x, 4x the "
                        "pretraining context, and held-out loss by position; writes eval_long.json into --init")
    parser.add_argument("--long-base", type=cli.at_least(1), default=None,
                        help="with --long: the pretraining context the multiples refer to (default: from the checkpoint)")
    parser.add_argument("--long-docs", type=cli.at_least(1), default=64, help="with --long: documents per length")
    parser.add_argument("--report", default=None, metavar="FILE", help="write a markdown report of every stage under out/ and exit")
    return parser.parse_args(argv)  # the numeric ranges are checked by the flag types (cli.py)


def run_long(model: Phi4, tokenizer: data.Tokenizer, path: str, args) -> None:
    """--long: print the retrieval table and write eval_long.json beside the checkpoint."""
    base_len = args.long_base or pretraining_length(path, model)  # what "1x" means for this model
    start = time.perf_counter()
    result = evaluate_long_context(model, tokenizer, base_len, args.long_docs, progress=True)
    result["seconds"] = time.perf_counter() - start
    print(f"context {result['max_seq_len']}, RoPE base {result['rope_theta']:g}; chance {100 * LONG_CHANCE:.1f}%")
    for entry in result["retrieval"]:
        low, high = entry["all_ci95"]
        print(f"{entry['layout']} retrieval at {entry['multiple']}x ({entry['length']} tokens, mean distance "
              f"{entry['mean_distance']:.0f}): {100 * entry['all_accuracy']:.1f}% of {entry['n']} "
              f"(95% CI {100 * low:.1f}-{100 * high:.1f}%) | ledger {100 * entry['ledger_accuracy']:.1f}%, "
              f"problem {100 * entry['problem_accuracy']:.1f}%"
              + (" | extrapolated past the trained context" if entry["extrapolated"] else ""))
    print("held-out loss by position: " + ", ".join(f"{b['start']}-{b['end']}: {b['loss']:.3f}" for b in result["loss_by_position"]))
    files.write_json(os.path.join(path, "eval_long.json"), result)


def run_heldout(model: Phi4, tokenizer: data.Tokenizer, path: str, args) -> None:
    """Greedy pass@1 and maj@k on the held-out split; a full run writes eval.json beside the checkpoint."""
    problems = toyworld.read_problems(os.path.join(args.data, "eval.jsonl"))[: args.limit]  # [:None] keeps all
    start = time.perf_counter()
    result = evaluate_problems(model, tokenizer, problems, chat=args.chat, max_new_tokens=args.max_new_tokens,
                               maj_k=args.maj_k, temperature=args.maj_temperature, seed=args.seed)
    low, high = stats.wilson_interval(result["correct"], result["n"])  # n = 500 puts +-4 points around 50%
    result.update(ci95=[low, high], format="chat" if args.chat else "document", seconds=time.perf_counter() - start)
    levels = ", ".join(f"L{k} {100 * v:.0f}%" for k, v in result["per_level"].items())  # "L1 80%, L2 55%, ..."
    print(f"held-out pass@1 (greedy): {100 * result['accuracy']:.1f}% of {result['n']} "
          f"(95% CI {100 * low:.1f}-{100 * high:.1f}%) | {levels} | {result['seconds']:.1f}s")
    if args.maj_k:
        result["maj_ci95"] = stats.wilson_interval(result["maj_correct"], result["n"])
        low, high = result["maj_ci95"]
        print(f"held-out maj@{args.maj_k} (T={result['maj_temperature']}): {100 * result['maj_accuracy']:.1f}% "
              f"(95% CI {100 * low:.1f}-{100 * high:.1f}%)")
    if args.limit is None:  # a partial score must not replace the stage's real one
        files.write_json(os.path.join(path, "eval.json"), result)


if __name__ == "__main__":
    args = parse_args()
    try:
        if args.report:  # the report reads what earlier runs wrote; it loads no model
            write_report("out", args.report)
            print(open(args.report).read())
            sys.exit(0)
        path = args.init or checkpoint.newest_checkpoint()
        if path is None:
            raise ValueError("no checkpoint under out/; train one with `python train.py` or pass --init DIR")
        model, tokenizer = checkpoint.load_model(path, parallel.resolve_device(args.device))
        print(f"loaded {path}: {model.num_params():,} parameters, context {model.config.max_seq_len}")
        (run_long if args.long else run_heldout)(model, tokenizer, path, args)
    except ValueError as error:
        # Every ValueError message names what to change; a traceback would bury it.
        sys.exit(f"error: {error}")
