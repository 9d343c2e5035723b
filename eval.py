"""Chapter: evaluation. Held-out accuracy of any stage, long-context recall, and the knowledge quiz.

Phi-4's report measures every stage on benchmarks (Table 1) and ablations (Tables 2-9). At toy scale the
benchmark is the synthetic world's held-out test split (2,000 problems) and a dev split for choosing
hyper-parameters: problems decontaminated from all training text by the 13-gram rule (report section
2), graded by the world's oracle, so a number here means "solved this many unseen problems". Every
measurement keeps one result per item, so report.py can pair two stages item by item (McNemar).

    held-out accuracy   greedy pass@1 with a 95% Wilson interval, per level and per kind ("takes" problems,
                        the phrasing the SFT teacher gets wrong); optional sampled maj@k
    long context        recall of a document's first line at 1x, 2x, 4x the pretraining context (what
                        midtraining, report section 3, is for) and held-out loss by position
    knowledge quiz      facts that only the web-like pretraining corpus states (report section 2's
                        synthetic-vs-web trade-off: reasoning against knowledge)

Commands:
    python eval.py --init out/pretrain               # document format: "Problem: ... Solution:"
    python eval.py --init out/sft --chat             # chat format, for SFT and later stages -> out/sft/eval.json
    python eval.py --init out/sft --chat --split dev # the dev split, for choosing hyper-parameters
    python eval.py --init out/midtrain --long        # recall at 1x/2x/4x -> out/midtrain/eval_long.json
    python eval.py --init out/pretrain --quiz        # knowledge quiz -> out/pretrain/eval_quiz.json
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter

import regex
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
    batch_size: int = 256,
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
    # temperature 0 is argmax decoding: no seed, so pass@1 is the same number on every rerun. 256 rows
    # decode together (sample_completions' default, which rejection sampling uses too): on one CPU thread
    # 1.1-1.3x sooner than 64, the same answers.
    greedy = sample_completions(model, prompts, 1, max_new_tokens, stop, temperature=0, batch_rows=batch_size,
                                vocab_size=tokenizer.vocab_size)  # per problem: [one answer's ids]
    correct = [toyworld.check(p, tokenizer.decode(strip_stop(s[0], stop))) for p, s in zip(problems, greedy)]
    # Per level (the number of operations, 1-4): a stage that helps only easy problems shows here.
    per_level: dict[int, list[bool]] = {}
    for problem, ok in zip(problems, correct):
        per_level.setdefault(problem.level, []).append(ok)
    # Per kind: problems with the phrasing the SFT teacher gets wrong ("takes", toyworld section 3) and the rest.
    traps = [ok for p, ok in zip(problems, correct) if toyworld.is_trap(p)]
    plain = [ok for p, ok in zip(problems, correct) if not toyworld.is_trap(p)]
    result = {
        "accuracy": sum(correct) / max(1, len(problems)),  # max: an empty --limit slice reads 0, not 0/0
        "n": len(problems),
        "correct": sum(correct),
        "per_level": {level: sum(v) / len(v) for level, v in sorted(per_level.items())},
        "per_kind": {"takes": sum(traps) / max(1, len(traps)), "other": sum(plain) / max(1, len(plain))},
        # One character per problem, in split order: what report.py pairs between two stages (McNemar).
        "results": "".join("1" if ok else "0" for ok in correct),
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
# Measured at lengths that are multiples of the pretraining context (1x, 2x, 4x), on first-line-recall
# documents (toyworld section 4): "Key: 47" on the first line, arithmetic drills, and "The key was 47."
# at the very end, so the answer lies the whole length after its key. Pretraining taught this within
# 256 tokens; only a model whose attention works across 1,024 positions answers at 4x.
#   recall   greedy accuracy on the key, per length, with one result per document (for paired tests)
#   loss     next-token loss on recall documents of 4x the pretraining length, per window of 1x
# A key counts as recalled when the model's most likely token is right at every answer position, given
# the document up to there: exactly what greedy decoding would write, scored in one forward pass. A model
# whose context is shorter than a document is run with its RoPE tables extended at its own base
# (set_rope, the only way to run it there), which the result marks as "extrapolated": that is how the
# pretrained model is measured beyond its 1x.

LONG_MULTIPLES = (1, 2, 4)  # 4x is midtraining's extension (CONTEXT_EXTENSION): the farthest it trained
LONG_CHANCE = 1 / len(toyworld.RECALL_VALUES)  # guessing one of the 90 two-digit keys


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


def recall_results(model: Phi4, documents: list[toyworld.LongDocument], pad_id: int) -> list[bool]:
    """Per document: whether greedy decoding would write its key at the end (every token of it right)."""
    scored = document_losses(model, [doc.ids for doc in documents], pad_id)
    results = []
    for doc, (_, predicted) in zip(documents, scored):
        answer = doc.answers[0]
        span = range(answer["position"], answer["position"] + answer["n_tokens"])
        results.append(all(int(predicted[p - 1]) == doc.ids[p] for p in span))  # token p is predicted at p - 1
    return results


@torch.no_grad()
def evaluate_long_context(model: Phi4, tokenizer: data.Tokenizer, base_len: int, n_docs: int = 200,
                          seed: int = toyworld.LONG_EVAL_SEED, progress: bool = False) -> dict:
    """Recall at 1x, 2x and 4x base_len, and held-out loss by position (see the section comment)."""
    model.eval()
    trained_len = model.config.max_seq_len  # restored in `finally`, even when a length fails midway
    result = {"max_seq_len": trained_len, "rope_theta": model.config.rope_theta, "base_len": base_len,
              "n_docs": n_docs, "chance": LONG_CHANCE, "retrieval": []}
    longest = max(LONG_MULTIPLES) * base_len
    if longest > trained_len:
        model.set_rope(max_seq_len=longest)  # same base: extrapolation past the trained context
    try:
        for k, multiple in enumerate(tqdm(LONG_MULTIPLES, desc="long-context eval", disable=not progress)):
            length = multiple * base_len
            rng = random.Random(seed + k)  # the same documents for every model: results pair up by document
            documents = [toyworld.recall_document(rng, tokenizer, length) for _ in range(n_docs)]
            correct = recall_results(model, documents, tokenizer.pad_id)
            # "extrapolated": RoPE angles the model never saw in training, so a low score may be the
            # positions, not the retrieval; the report marks such cells with *.
            result["retrieval"].append({
                "length": length, "multiple": multiple, "extrapolated": length > trained_len,
                "mean_distance": sum(d.answers[0]["position"] - d.answers[0]["fact_position"] for d in documents) / n_docs,
                "accuracy": sum(correct) / n_docs, "ci95": stats.wilson_interval(sum(correct), n_docs),
                "results": "".join("1" if ok else "0" for ok in correct),
            })
        # Loss by position, on recall documents of the longest length from the evaluation seed.
        rng = random.Random(seed + len(LONG_MULTIPLES))
        documents = [toyworld.recall_document(rng, tokenizer, longest).ids for _ in range(min(n_docs, 64))]
        scored = document_losses(model, documents, tokenizer.pad_id)
        # One bucket per window of base_len positions: a model that only learned 1x has a flat loss in
        # the first bucket and a rising one after it; a midtrained model stays flat.
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


# ----------------------------------------------------------------------------------------------------
# The knowledge quiz: what only the web-like corpus knows (toyworld section 2)


@torch.no_grad()
def evaluate_quiz(model: Phi4, tokenizer: data.Tokenizer) -> dict:
    """Greedy completion of every fact prompt ("Mia has a pet" -> " cat"): right when its first word is the fact."""
    items = toyworld.quiz_items()
    prompts = [tokenizer.encode(prompt) for prompt, _ in items]
    answers = sample_completions(model, prompts, 1, 4, (tokenizer.bos_id,), temperature=0,
                                 vocab_size=tokenizer.vocab_size)  # per item: [ids]; 4 tokens hold any fact word
    # The first word of the completion, punctuation dropped: " harbor. Mia has" -> "harbor".
    correct = [regex.findall(r"\p{L}+", tokenizer.decode(s[0]))[:1] == [word] for (_, word), s in zip(items, answers)]
    return {"accuracy": sum(correct) / len(items), "n": len(items), "correct": sum(correct),
            "ci95": stats.wilson_interval(sum(correct), len(items)), "results": "".join("1" if ok else "0" for ok in correct)}


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


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; argv=None reads sys.argv, a list lets a test parse flags without a process.

    Impossible values stop here with argparse's usage message naming the flag, before a model is loaded.
    """
    parser = cli.Parser(description="Score a checkpoint on the held-out problems, long-context recall or the knowledge quiz.")
    parser.add_argument("--init", default=None, help="checkpoint folder (default: the newest under out/)")
    parser.add_argument("--chat", action="store_true", help="pose problems as a user turn (SFT and later stages)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder with eval.jsonl (test) and dev.jsonl")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="test: eval.jsonl -> eval.json (the reported numbers); dev: dev.jsonl -> eval_dev.json, "
                        "the split every hyper-parameter is chosen on")
    parser.add_argument("--limit", type=cli.at_least(1), default=None, help="score only the first N problems (no eval.json is written)")
    parser.add_argument("--maj-k", type=cli.at_least(0), default=0, help="also sampled maj@k with k votes (0: greedy only)")
    parser.add_argument("--maj-temperature", type=cli.positive, default=0.7, help="sampling temperature of the maj@k votes")
    parser.add_argument("--max-new-tokens", type=cli.at_least(1), default=120, help="tokens per answer")
    parser.add_argument("--seed", type=int, default=1337, help="sampling seed of the maj@k votes")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--long", action="store_true",
                        help="recall of a document's first line from its end, in documents of 1x, 2x, 4x the "
                        "pretraining context, and held-out loss by position; writes eval_long.json into --init")
    parser.add_argument("--quiz", action="store_true",
                        help="the knowledge quiz (facts only the web-like corpus states); writes eval_quiz.json into --init")
    parser.add_argument("--long-base", type=cli.at_least(1), default=None,
                        help="with --long: the pretraining context the multiples refer to (default: from the checkpoint)")
    parser.add_argument("--long-docs", type=cli.at_least(1), default=200, help="with --long: documents per length")
    args = parser.parse_args(argv)  # the numeric ranges are checked by the flag types (cli.py)
    cli.refuse_unused(parser, args, {"long_base": "long", "long_docs": "long", "maj_temperature": "maj_k"}, argv)
    return args


def run_long(model: Phi4, tokenizer: data.Tokenizer, path: str, args) -> None:
    """--long: print the retrieval table and write eval_long.json beside the checkpoint."""
    base_len = args.long_base or pretraining_length(path, model)  # what "1x" means for this model
    start = time.perf_counter()
    result = evaluate_long_context(model, tokenizer, base_len, args.long_docs, progress=True)
    result["seconds"] = time.perf_counter() - start
    print(f"context {result['max_seq_len']}, RoPE base {result['rope_theta']:g}; chance {100 * LONG_CHANCE:.1f}%")
    for entry in result["retrieval"]:
        low, high = entry["ci95"]
        print(f"recall at {entry['multiple']}x ({entry['length']} tokens, mean distance {entry['mean_distance']:.0f}): "
              f"{100 * entry['accuracy']:.1f}% of {result['n_docs']} (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
              + (" | extrapolated past the trained context" if entry["extrapolated"] else ""))
    print("held-out loss by position: " + ", ".join(f"{b['start']}-{b['end']}: {b['loss']:.3f}" for b in result["loss_by_position"]))
    files.write_json(os.path.join(path, "eval_long.json"), result)


def run_heldout(model: Phi4, tokenizer: data.Tokenizer, path: str, args) -> None:
    """Greedy pass@1 and maj@k on the held-out split; a full run writes eval.json beside the checkpoint."""
    split_file = "eval.jsonl" if args.split == "test" else "dev.jsonl"
    problems = toyworld.read_problems(os.path.join(args.data, split_file))[: args.limit]  # [:None] keeps all
    start = time.perf_counter()
    result = evaluate_problems(model, tokenizer, problems, chat=args.chat, max_new_tokens=args.max_new_tokens,
                               maj_k=args.maj_k, temperature=args.maj_temperature, seed=args.seed)
    low, high = stats.wilson_interval(result["correct"], result["n"])  # n = 2,000 puts +-2 points around 50%
    result.update(ci95=[low, high], split=args.split, format="chat" if args.chat else "document",
                  seconds=time.perf_counter() - start)
    levels = ", ".join(f"L{k} {100 * v:.0f}%" for k, v in result["per_level"].items())  # "L1 80%, L2 55%, ..."
    kinds = f"takes {100 * result['per_kind']['takes']:.0f}%, other {100 * result['per_kind']['other']:.0f}%"
    print(f"{args.split} pass@1 (greedy): {100 * result['accuracy']:.1f}% of {result['n']} "
          f"(95% CI {100 * low:.1f}-{100 * high:.1f}%) | {levels} | {kinds} | {result['seconds']:.1f}s")
    if args.maj_k:
        result["maj_ci95"] = stats.wilson_interval(result["maj_correct"], result["n"])
        low, high = result["maj_ci95"]
        print(f"held-out maj@{args.maj_k} (T={result['maj_temperature']}): {100 * result['maj_accuracy']:.1f}% "
              f"(95% CI {100 * low:.1f}-{100 * high:.1f}%)")
    if args.limit is None:  # a partial score must not replace the stage's real one
        files.write_json(os.path.join(path, "eval.json" if args.split == "test" else "eval_dev.json"), result)


def run_quiz(model: Phi4, tokenizer: data.Tokenizer, path: str, args) -> None:
    """--quiz: the knowledge quiz -> eval_quiz.json beside the checkpoint."""
    result = evaluate_quiz(model, tokenizer)
    low, high = result["ci95"]
    print(f"knowledge quiz: {100 * result['accuracy']:.1f}% of {result['n']} facts (95% CI {100 * low:.1f}-{100 * high:.1f}%)")
    files.write_json(os.path.join(path, "eval_quiz.json"), result)


if __name__ == "__main__":
    args = parse_args()
    try:
        path = args.init or checkpoint.newest_checkpoint()
        if path is None:
            raise ValueError("no checkpoint under out/; train one with `python train.py` or pass --init DIR")
        model, tokenizer = checkpoint.load_model(path, parallel.resolve_device(args.device))
        print(f"loaded {path}: {model.num_params():,} parameters, context {model.config.max_seq_len}")
        (run_long if args.long else run_quiz if args.quiz else run_heldout)(model, tokenizer, path, args)
    except ValueError as error:
        # Every ValueError message names what to change; a traceback would bury it.
        sys.exit(f"error: {error}")
