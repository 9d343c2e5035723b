"""Generation: sampling from a trained Phi-4-style model with a KV cache.

Decoding is two phases. Prefill runs the whole prompt through the model once, filling the KV cache
(model.KVCache) with every layer's keys and values. Decode then feeds one new token at a time: each
step costs a forward over a single position, attending to the cache, instead of re-running the whole
sequence. Phi-4 generation starts after `<|im_start|>assistant<|im_sep|>` and stops at `<|im_end|>`
(PHI4.md section 2); pretraining-style documents stop at `<|endoftext|>`.

Commands:
    python sample.py                                 # newest checkpoint in out/: worked solutions to held-out problems
    python sample.py --init out/pretrain --prompt "Problem: Mia has 3 apples." --num-samples 3 --temperature 0.8
    python sample.py --chat --prompt "Mia has 3 apples. ..."    # Phi-4 chat format (for SFT checkpoints)
    python sample.py --bench                         # decode tokens/s with and without the KV cache
    python sample.py --init out/sft --chat --eval    # held-out greedy pass@1 and maj@8 -> out/sft/eval.json
    python sample.py --init out/sft --rejection-sampling --out out/rs   # best-of-n SFT data + preference pairs
    python sample.py --hf ~/phi-4                    # chat with the released Phi-4 (a Hugging Face folder)
    python sample.py --hf ~/phi-4 --prompt "What is 17 * 23?" --max-new-tokens 200   # one question, no loop

Simplified: prompts in one batch have the same length (left padding is not needed by this repo's
callers: rollouts repeat one prompt), and there is no speculative decoding or paged cache.
"""

from __future__ import annotations

import argparse
import codecs
import glob
import json
import os
import random
import sys
import time
from collections import Counter

import torch
from tqdm import tqdm

import data
import hf
import files
import toyworld
from model import KVCache, Phi4
from train import load_checkpoint, model_from_checkpoint, resolve_device

# ----------------------------------------------------------------------------------------------------
# Choosing the next token


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,). temperature 0 means greedy (argmax).

    top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability reaches p
    (nucleus sampling). Both cut off the long tail of unlikely tokens, where most sampling errors of a
    small model come from. They compose: top-k first, then top-p within what is left.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the first token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate(
    model: Phi4,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens=(),
    seed: int | None = None,
    use_cache: bool = True,
    on_token=None,
    num_samples: int = 1,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Continue each row of idx (B, T) by up to max_new_tokens tokens -> (B * num_samples, T + n).

    A row that emits one of `stop_tokens` keeps it and is padded with it afterwards; generation ends
    early once every row has stopped. `seed` makes sampling reproducible (a private generator, so the
    global RNG is untouched). `use_cache=False` recomputes the whole sequence at every step: the slow
    reference that the tests compare the cache against. `on_token(next_token)`, if given, is called with
    each new (B,) column as soon as it is chosen (stop tokens included), so a caller can stream text.

    `num_samples` continues every row that many times (output rows b*n .. b*n+n-1 continue row b). The
    prompt is prefilled once and its KV cache copied to the n rows (KVCache.expand), instead of
    prefilling n copies of it: the saving that rollouts from one shared prefix live on (pts.py). With a
    seed, the samples equal those of passing each row repeated n times.

    `vocab_size` (pass tokenizer.vocab_size) keeps sampling to real token ids: the model's vocabulary is
    padded past the tokenizer's last id (to a multiple of 64), and a padding id, rare as it is at
    temperature 1, has no text to decode.
    """
    model.eval()
    B, T = idx.shape
    limit = model.config.max_seq_len
    if T >= limit:
        raise ValueError(f"prompt of {T} tokens does not fit the model's context of {limit}; shorten the prompt")
    max_new_tokens = min(max_new_tokens, limit - T)  # never run past the RoPE table
    device = idx.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, B, T + max_new_tokens, device=device, dtype=dtype) if use_cache else None

    def last_logits(tokens: torch.Tensor) -> torch.Tensor:
        # Only the last position's logits are needed: skip the LM head (the largest matmul) elsewhere.
        hidden = model.hidden_states(tokens, cache)  # (B, t, C)
        return model.lm_head(hidden[:, -1])[:, :vocab_size]  # (B, V), or (B, vocab_size)

    logits = last_logits(idx)  # prefill
    if num_samples > 1:
        # From here on every row is num_samples rows, each with its own copy of the prompt's keys/values.
        if cache is not None:
            cache.expand(num_samples)  # (L, B, K, S, D) -> (L, B * n, K, S, D)
        logits = logits.repeat_interleave(num_samples, dim=0)  # (B, V) -> (B * n, V)
        idx = idx.repeat_interleave(num_samples, dim=0)  # (B, T) -> (B * n, T)
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=device)
    out = idx
    for _ in range(max_new_tokens):
        next_token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        # Rows that already stopped repeat their stop token instead of generating more.
        next_token = torch.where(finished, out[:, -1], next_token)
        out = torch.cat([out, next_token[:, None]], dim=1)  # (B, t + 1)
        if on_token is not None:
            on_token(next_token)
        if len(stop):
            finished |= torch.isin(next_token, stop)
            if bool(finished.all()):
                break
        logits = last_logits(next_token[:, None] if use_cache else out)
    return out


def completions(tokenizer: data.Tokenizer, out: torch.Tensor, prompt_len: int, stop_tokens=()) -> list[str]:
    """Decode the generated part of each row, cut at (and without) its first stop token."""
    texts = []
    for row in out[:, prompt_len:].tolist():
        for i, token in enumerate(row):
            if token in stop_tokens:
                row = row[:i]
                break
        texts.append(tokenizer.decode(row))
    return texts


# ----------------------------------------------------------------------------------------------------
# Evaluation on the world's held-out problems


def problem_prompt_ids(tokenizer: data.Tokenizer, problem: toyworld.Problem, chat: bool) -> list[int]:
    """How a problem is posed: as a textbook document (pretrained models) or a user turn (chat models)."""
    if chat:
        return tokenizer.render_prompt([{"role": "user", "content": problem.question}])
    return tokenizer.encode(toyworld.problem_prompt(problem))


@torch.no_grad()
def sample_completions(
    model: Phi4,
    prompts: list[list[int]],
    n: int,
    max_new_tokens: int,
    stop_tokens,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_rows: int = 256,
    progress: str | None = None,
    vocab_size: int | None = None,
) -> list[list[list[int]]]:
    """n completions of every prompt -> [prompt][sample] token ids, cut just after the first stop token.

    Many rows decode together, which is where the KV cache pays: prompts of equal length share a batch
    (generate needs rectangular input), each prefilled once and continued n times (generate's
    num_samples), at most `batch_rows` rows per batch. `vocab_size` keeps samples to the tokenizer's ids.
    Temperature 0 gives n copies of the greedy answer. A completion without a stop token hit
    max_new_tokens (or the context) and is returned as it is: callers decide what an unfinished answer
    is worth (the oracle usually rejects it, as it ends before "Answer:").
    """
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    per_batch = max(1, batch_rows // n)  # prompts per batch
    batches = [
        (length, indices[start : start + per_batch])
        for length, indices in sorted(by_length.items())
        for start in range(0, len(indices), per_batch)
    ]
    results: list[list[list[int]]] = [[] for _ in prompts]
    stop = set(stop_tokens)
    for b, (length, chunk) in enumerate(tqdm(batches, desc=progress, unit="batch", disable=progress is None)):
        idx = torch.tensor([prompts[i] for i in chunk], device=device)  # (len(chunk), length)
        # Seed per batch: the samples do not depend on what ran before (resumable, comparable).
        out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens, seed=seed + b,
                       num_samples=n, vocab_size=vocab_size)  # (len(chunk) * n, length + new)
        for row, ids in enumerate(out[:, length:].tolist()):
            end = next((j + 1 for j, token in enumerate(ids) if token in stop), len(ids))
            results[chunk[row // n]].append(ids[:end])
    return results


def majority_answer(texts: list[str]) -> int | None:
    """The most frequent final answer among texts (ties: the one seen first); None if none has one."""
    answers = [a for a in map(toyworld.extract_answer, texts) if a is not None]
    if not answers:
        return None
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


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
    """
    stop = (tokenizer.bos_id, tokenizer.im_end_id)
    prompts = [problem_prompt_ids(tokenizer, p, chat) for p in problems]
    greedy = sample_completions(model, prompts, 1, max_new_tokens, stop, temperature=0, batch_rows=batch_size,
                                vocab_size=tokenizer.vocab_size)
    correct = [toyworld.check(p, tokenizer.decode(strip_stop(s[0], stop))) for p, s in zip(problems, greedy)]
    per_level: dict[int, list[bool]] = {}
    for problem, ok in zip(problems, correct):
        per_level.setdefault(problem.level, []).append(ok)
    result = {
        "accuracy": sum(correct) / max(1, len(problems)),
        "n": len(problems),
        "correct": sum(correct),
        "per_level": {level: sum(v) / len(v) for level, v in sorted(per_level.items())},
    }
    if maj_k > 0:
        samples = sample_completions(model, prompts, maj_k, max_new_tokens, stop, temperature, seed=seed,
                                     vocab_size=tokenizer.vocab_size)
        votes = [majority_answer([tokenizer.decode(strip_stop(s, stop)) for s in group]) for group in samples]
        maj_correct = sum(vote == p.answer for vote, p in zip(votes, problems))
        result.update(maj_k=maj_k, maj_temperature=temperature, maj_correct=maj_correct,
                      maj_accuracy=maj_correct / max(1, len(problems)))
    return result


def strip_stop(ids: list[int], stop_tokens) -> list[int]:
    """A completion without its final stop token (the text the oracle reads)."""
    return ids[:-1] if ids and ids[-1] in stop_tokens else ids


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a binomial proportion (Wilson score: sane at 0% and 100%, unlike +-2se)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------------------------------
# Rejection sampling (Phi-4 report section 4: SFT responses "chosen by best-of-n")


def rejection_sampling(
    model: Phi4,
    tokenizer: data.Tokenizer,
    problems: list[toyworld.Problem],
    n: int,
    max_new_tokens: int = 120,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_rows: int = 256,
) -> tuple[list[dict], list[dict], dict]:
    """Sample n answers per problem, let the oracle grade them -> (sft_records, pairs, summary).

    sft_records: one conversation per problem that had a correct answer ({"messages": [...]}, the format
      train.py --stage sft reads): the model's own accepted answer becomes its next training target.
    pairs: one full-length preference pair per problem that had both a correct and an incorrect answer,
      {"prompt", "chosen", "rejected"} as text (what other DPO tools read) plus the exact token ids
      (`*_ids`, what dpo.py trains on: re-encoding the text could merge tokens differently).
    Only finished answers (ending in <|im_end|>) can be accepted; a rambling answer that ran out of
    tokens is a good *rejected* example, since stopping is part of what the model must learn.
    """
    stop = (tokenizer.im_end_id,)
    prompts = [problem_prompt_ids(tokenizer, p, chat=True) for p in problems]
    samples = sample_completions(
        model, prompts, n, max_new_tokens, stop, temperature, top_k, top_p, seed, batch_rows, progress="rejection sampling",
        vocab_size=tokenizer.vocab_size,
    )
    sft_records, pairs = [], []
    n_correct = n_all_right = n_all_wrong = 0
    for problem, prompt, group in zip(problems, prompts, samples):
        verdicts = [bool(s) and s[-1] == tokenizer.im_end_id and toyworld.check(problem, tokenizer.decode(s[:-1])) for s in group]
        good = [s for s, ok in zip(group, verdicts) if ok]
        bad = [s for s, ok in zip(group, verdicts) if not ok]
        n_correct += len(good)
        n_all_right += not bad
        n_all_wrong += not good
        if good:
            # Samples are i.i.d., so the first accepted one is a uniform pick among the accepted.
            answer = tokenizer.decode(good[0][:-1])
            sft_records.append({"messages": [{"role": "user", "content": problem.question},
                                             {"role": "assistant", "content": answer}], "source": "rejection_sampling"})
        if good and bad:
            pairs.append({
                "prompt": tokenizer.decode(prompt), "chosen": tokenizer.decode(good[0]), "rejected": tokenizer.decode(bad[0]),
                "prompt_ids": prompt, "chosen_ids": good[0], "rejected_ids": bad[0],
                "source": "rejection_sampling", "question": problem.question, "answer": problem.answer,
            })
    summary = {
        "problems": len(problems), "samples_per_problem": n, "temperature": temperature,
        "sample_accuracy": n_correct / max(1, n * len(problems)),
        "pass_at_n": 1 - n_all_wrong / max(1, len(problems)),
        "all_correct": n_all_right, "all_wrong": n_all_wrong,
        "sft_records": len(sft_records), "pairs": len(pairs),
    }
    return sft_records, pairs, summary


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

LONG_MULTIPLES = (1, 2, 4)
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
        width = max(map(len, chunk))
        idx = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T), padded at the end
        for row, ids in enumerate(chunk):
            idx[row, : len(ids)] = torch.tensor(ids)
        hidden = model.hidden_states(idx.to(device))  # (B, T, C); causal, so padding changes nothing before it
        for row, ids in enumerate(chunk):
            n = len(ids)
            # One row of logits at a time: (n, V) is the largest tensor alive, whatever the batch size.
            logits = model.lm_head(hidden[row, : n - 1]).float()  # (n-1, V)
            targets = idx[row, 1:n].to(device)  # (n-1,)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")  # (n-1,)
            results.append((losses.cpu(), logits.argmax(dim=-1).cpu()))
    return results


def retrieval_accuracy(model: Phi4, documents: list[toyworld.LongDocument], pad_id: int) -> dict:
    """Greedy accuracy on the documents' questions, overall and per kind, with the mean fact distance."""
    scored = document_losses(model, [doc.ids for doc in documents], pad_id)
    answers = []  # (kind, correct, distance)
    for doc, (_, predicted) in zip(documents, scored):
        for answer in doc.answers:
            span = range(answer["position"], answer["position"] + answer["n_tokens"])
            # The token at position p is predicted from position p - 1.
            correct = all(int(predicted[p - 1]) == doc.ids[p] for p in span)
            answers.append((answer["kind"], correct, answer["position"] - answer["fact_position"]))
    entry = {"n": len(answers), "mean_distance": sum(a[2] for a in answers) / len(answers)}
    for kind in ("all", "ledger", "problem"):
        chosen = [ok for k, ok, _ in answers if kind in ("all", k)]
        entry[f"{kind}_accuracy"] = sum(chosen) / len(chosen)
        entry[f"{kind}_ci95"] = wilson_interval(sum(chosen), len(chosen))
    return entry


@torch.no_grad()
def evaluate_long_context(model: Phi4, tokenizer: data.Tokenizer, base_len: int, n_docs: int = 64,
                          seed: int = toyworld.LONG_EVAL_SEED, progress: bool = False) -> dict:
    """Far and near retrieval at 1x, 2x and 4x base_len, and held-out loss by position (see the section comment)."""
    model.eval()
    trained_len = model.config.max_seq_len
    result = {"max_seq_len": trained_len, "rope_theta": model.config.rope_theta, "base_len": base_len,
              "n_docs": n_docs, "chance": LONG_CHANCE, "retrieval": []}
    longest = max(LONG_MULTIPLES) * base_len
    if longest > trained_len:
        model.set_rope(max_seq_len=longest)  # same base: extrapolation past the trained context
    try:
        settings = [(name, multiple) for name in LONG_LAYOUTS for multiple in LONG_MULTIPLES]
        for k, (name, multiple) in enumerate(tqdm(settings, desc="long-context eval", disable=not progress)):
            length = multiple * base_len
            rng = random.Random(seed + k)  # the same documents for every model
            documents = [toyworld.long_document(rng, tokenizer, length, layout=LONG_LAYOUTS[name]) for _ in range(n_docs)]
            entry = {"layout": name, "length": length, "multiple": multiple, "extrapolated": length > trained_len}
            result["retrieval"].append({**entry, **retrieval_accuracy(model, documents, tokenizer.pad_id)})

        # Loss by position, on documents like the midtraining ones but from the evaluation seed.
        rng = random.Random(seed)
        documents = [toyworld.long_training_document(rng, tokenizer, longest).ids for _ in range(n_docs)]
        scored = document_losses(model, documents, tokenizer.pad_id)
        buckets = []
        for start in range(0, longest, base_len):
            # Loss at position t is the loss of predicting token t + 1.
            values = torch.cat([losses[start : start + base_len] for losses, _ in scored])
            buckets.append({"start": start, "end": start + base_len, "loss": float(values.mean()), "n_tokens": len(values)})
        result["loss_by_position"] = buckets
    finally:
        if longest > trained_len:
            model.set_rope(max_seq_len=trained_len)  # leave the model as it was loaded
    return result


def pretraining_length(path: str, model: Phi4) -> int:
    """The context a checkpoint's model was pretrained at, which the 1x, 2x, 4x of the evaluation refer to.

    A midtraining checkpoint extended it by MIDTRAIN_CONTEXT_FACTOR; any other uses its preset's context
    (toy 256, 14b 4096), or its own when it was trained shorter. --long-base overrides this.
    """
    from model import PRESETS  # the record only (size, stage): no weights are read here
    from train import MIDTRAIN_CONTEXT_FACTOR, read_checkpoint

    train_config = read_checkpoint(path).get("train_config") or {}
    if train_config.get("stage") == "midtrain":
        return model.config.max_seq_len // MIDTRAIN_CONTEXT_FACTOR
    preset = PRESETS.get(train_config.get("size"))
    return min(model.config.max_seq_len, preset.max_seq_len) if preset else model.config.max_seq_len


def long_context_lines(root: str, stages: list[str]) -> list[str]:
    """The report's long-context table: one row per stage folder that has an eval_long.json."""
    rows, first = [], None
    for stage in stages:
        path = os.path.join(root, stage, "eval_long.json")
        if not os.path.exists(path):
            continue
        result = read_json(path)
        first = first or result
        cells = [
            f"{100 * e['ledger_accuracy']:.0f}% / {100 * e['problem_accuracy']:.0f}%{'*' if e['extrapolated'] else ''}"
            for e in result["retrieval"]
        ]
        cells += [f"{bucket['loss']:.3f}" for bucket in result["loss_by_position"]]
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
# Loading


def newest_checkpoint(root: str = "out") -> str | None:
    """The folder of the most recently written ckpt.pt under root, or None."""
    files = glob.glob(os.path.join(root, "**", "ckpt.pt"), recursive=True)
    return os.path.dirname(max(files, key=os.path.getmtime)) if files else None


def load_model(path: str, device="cpu") -> tuple[Phi4, data.Tokenizer]:
    """A train.py checkpoint folder -> (model in eval mode, its tokenizer)."""
    state = load_checkpoint(path, device)
    model = model_from_checkpoint(state, device).eval()
    tokenizer_file = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "tokenizer.json")
    if not os.path.exists(tokenizer_file):
        raise ValueError(f"{tokenizer_file} is missing; a checkpoint folder from train.py holds one")
    return model, data.Tokenizer.load(tokenizer_file)


def load_hf(hf_dir: str, device, dtype_name: str | None = None) -> tuple[Phi4, data.Tokenizer]:
    """A Hugging Face Phi-4 folder -> (model, tokenizer). bf16 on a GPU (the release's dtype); float32
    on a CPU unless asked otherwise, since CPU bf16 matmuls are slow on most machines."""
    dtype = getattr(torch, dtype_name) if dtype_name else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = Phi4.from_pretrained(hf_dir, device=device, dtype=dtype)
    return model, hf.load_tokenizer(hf_dir)


def chat(model: Phi4, tokenizer: data.Tokenizer, args, device):
    """Phi-4's chat format, streamed token by token: a loop on stdin, or one turn with --prompt.

    The whole conversation is re-rendered each turn (system, user, assistant, ...) and ends with an
    open assistant header; the reply stops at <|im_end|> and joins the history for the next turn.
    """
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turn = 0
    while True:
        if args.prompt is not None:
            user = args.prompt
        else:
            try:
                user = input("\nuser> ")
            except EOFError:  # Ctrl-D ends the chat
                print()
                break
            if user.strip() in ("", "/exit", "/quit"):
                break
        messages.append({"role": "user", "content": user})
        ids = tokenizer.render_prompt(messages)
        # A long chat outgrows the context: forget the oldest exchange (never the system prompt) until
        # the rest fits; a single message that is too long still fails with generate's clear error.
        first = 1 if args.system else 0
        while len(ids) >= model.config.max_seq_len and len(messages) > first + 1:
            del messages[first : first + 2]
            ids = tokenizer.render_prompt(messages)
            print("[the conversation outgrew the context: forgot the oldest exchange]", file=sys.stderr)
        idx = torch.tensor([ids], device=device)  # (1, T)
        # A token may end in the middle of a UTF-8 character (emoji, CJK): the incremental decoder
        # holds such bytes back until the character is complete, instead of printing garbage.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def show(next_token: torch.Tensor):
            token = int(next_token[0])
            if token != tokenizer.im_end_id:
                print(utf8.decode(tokenizer.encoding.decode_single_token_bytes(token)), end="", flush=True)

        if args.prompt is None:
            print("assistant> ", end="", flush=True)
        start = time.perf_counter()
        out = generate(
            model, idx, args.max_new_tokens, args.temperature or 0.0, args.top_k, args.top_p,
            stop_tokens=(tokenizer.im_end_id,), seed=args.seed + turn, on_token=show, vocab_size=tokenizer.vocab_size,
        )
        print(utf8.decode(b"", final=True))
        n_new = out.shape[1] - idx.shape[1]
        print(f"[{n_new} tokens, {n_new / (time.perf_counter() - start):.1f} tokens/s]", file=sys.stderr)
        reply = completions(tokenizer, out, idx.shape[1], (tokenizer.im_end_id,))[0]
        messages.append({"role": "assistant", "content": reply})
        turn += 1
        if args.prompt is not None:
            break


STAGE_ORDER = ("pretrain", "midtrain", "sft", "rs_sft", "dpo", "sft_dpo", "pts_dpo", "pts_dpo_dpo")

# The toy version of the report's Table 9 (SFT -> +PTS DPO): which stage folder holds which row.
TABLE9 = (("SFT", "sft"), ("SFT + PTS-DPO", "pts_dpo"), ("SFT + full-length DPO", "sft_dpo"),
          ("SFT + PTS-DPO, then full-length DPO", "pts_dpo_dpo"))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def accuracy_cells(result: dict | None) -> tuple[str, str]:
    """'41.2% of 500 (37.0-45.6%)' for greedy pass@1 and for maj@k, or placeholders."""
    if result is None:
        return "not evaluated", "-"
    low, high = result["ci95"]
    greedy = f"{100 * result['accuracy']:.1f}% of {result['n']} ({100 * low:.1f}-{100 * high:.1f}%)"
    if "maj_accuracy" not in result:
        return greedy, "-"
    low, high = result["maj_ci95"]
    return greedy, f"{100 * result['maj_accuracy']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%)"


def write_report(root: str, path: str):
    """out/report.md: for every stage folder under root, what training did and what the eval measured."""
    stages = [d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "log.jsonl"))] if os.path.isdir(root) else []
    stages.sort(key=lambda d: (STAGE_ORDER.index(d) if d in STAGE_ORDER else len(STAGE_ORDER), d))
    evals = {s: read_json(os.path.join(root, s, "eval.json")) if os.path.exists(os.path.join(root, s, "eval.json")) else None
             for s in stages}
    maj_k = next((e["maj_k"] for e in evals.values() if e and "maj_k" in e), None)
    lines = [
        "# Report of the toy Phi-4 recipe",
        "",
        f"| stage | steps | train loss | held-out loss | median tok/s | wall (s) | held-out pass@1 (95% CI) | maj@{maj_k or 'k'} (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        with open(os.path.join(root, stage, "log.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        last = records[-1]
        val = next((r["val_loss"] for r in reversed(records) if "val_loss" in r), None)
        tok_s = sorted(r["tok_s"] for r in records)[len(records) // 2]
        wall = f"{last['time_s']:.0f}" if "time_s" in last else "?"
        val_text = f"{val:.4f}" if val is not None else "-"
        greedy, majority = accuracy_cells(evals[stage])
        lines.append(f"| {stage} | {last['step']} | {last['loss']:.4f} | {val_text} | {tok_s:,.0f} | {wall} | {greedy} | {majority} |")
    lines += ["", "Held-out problems are decontaminated from all training text by the 13-gram rule (data.py)."]

    rs_summary = os.path.join(root, "rs", "summary.json")
    if os.path.exists(rs_summary):
        s = read_json(rs_summary)
        lines += ["", "## Rejection sampling", "",
                  f"{s['problems']} problems x {s['samples_per_problem']} samples at T={s['temperature']} from {s.get('init', '?')}: "
                  f"{100 * s['sample_accuracy']:.1f}% of samples correct, pass@{s['samples_per_problem']} {100 * s['pass_at_n']:.1f}%, "
                  f"{s['sft_records']} accepted answers (rs_sft trains on them), {s['pairs']} correct-vs-incorrect pairs (dpo trains on them)."]
    dpo_rows = []
    for stage in stages:
        with open(os.path.join(root, stage, "log.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        if "margin" in records[-1]:
            tail = records[-10:]
            mean = lambda key: sum(r[key] for r in tail) / len(tail)
            dpo_rows.append(f"| {stage} | {records[-1]['step']} | {mean('loss'):.3f} | {mean('chosen_reward'):.2f} | "
                            f"{mean('rejected_reward'):.2f} | {mean('margin'):.2f} | {mean('accuracy'):.2f} |")
    if dpo_rows:
        lines += ["", "## DPO training (means of the last 10 steps)", "",
                  "| stage | steps | loss | chosen reward | rejected reward | margin | preference accuracy |",
                  "|---|---|---|---|---|---|---|", *dpo_rows]
    if sum(evals.get(folder) is not None for _, folder in TABLE9) >= 2:
        lines += ["", "## Toy Table 9: Pivotal Token Search (report: SFT -> +PTS DPO, MATH 77.1 -> 80.5)", "",
                  f"| model | held-out pass@1 (95% CI) | maj@{maj_k or 'k'} (95% CI) |", "|---|---|---|"]
        for name, folder in TABLE9:
            greedy, majority = accuracy_cells(evals.get(folder))
            lines.append(f"| {name} | {greedy} | {majority} |")
    lines += long_context_lines(root, stages)  # present once a stage has run sample.py --eval-long
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    files.atomic_write_text(path, "\n".join(lines) + "\n")


def decode_speed(model, prompt: torch.Tensor, n_tokens: int, use_cache: bool) -> float:
    """Tokens/s of greedy decoding of n_tokens after `prompt` (no stop tokens, so exactly n_tokens)."""
    start = time.perf_counter()
    generate(model, prompt, n_tokens, temperature=0, use_cache=use_cache)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return n_tokens * prompt.shape[0] / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Sample from a checkpoint.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--init", default=None, help="checkpoint folder (default: the newest under out/)")
    parser.add_argument("--prompt", default=None, help="text to continue (default: held-out toy problems)")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt as a user turn in Phi-4's chat format")
    parser.add_argument("--num-samples", type=int, default=3, help="completions (or held-out problems) to show")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="tokens to generate per completion")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default 0; 0.7 for maj@k votes, 1.0 for rejection sampling)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=1337, help="sampling seed")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder with eval.jsonl (default prompts)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    parser.add_argument("--bench", action="store_true", help="measure decode tokens/s with and without the KV cache")
    parser.add_argument("--eval", action="store_true", help="greedy pass@1 on the held-out problems; writes eval.json into --init")
    parser.add_argument("--eval-limit", type=int, default=None, help="with --eval: score only the first N problems")
    parser.add_argument("--maj-k", type=int, default=8, help="with --eval: also sampled maj@k with k votes (0: greedy only)")
    parser.add_argument("--eval-long", action="store_true",
                        help="retrieval of facts far back (far) and just before (near) in documents of 1x, 2x, 4x the "
                        "pretraining context, and held-out loss by position; writes eval_long.json into --init")
    parser.add_argument("--long-base", type=int, default=None,
                        help="with --eval-long: the pretraining context the multiples refer to (default: from the checkpoint)")
    parser.add_argument("--long-docs", type=int, default=64, help="with --eval-long: documents per length")
    parser.add_argument("--rejection-sampling", action="store_true",
                        help="sample --rs-samples answers to --rs-problems problems of DATA/rl.jsonl, grade them with the "
                        "oracle, write best-of-n SFT data (OUT/sft.jsonl) and preference pairs (OUT/pairs.jsonl)")
    parser.add_argument("--rs-problems", type=int, default=1500, help="with --rejection-sampling: problems to sample on")
    parser.add_argument("--rs-samples", type=int, default=8, help="with --rejection-sampling: answers per problem (the n of best-of-n)")
    parser.add_argument("--rs-skip", type=int, default=0, help="with --rejection-sampling: start at this problem of rl.jsonl")
    parser.add_argument("--out", default="out/rs", help="with --rejection-sampling: output folder")
    parser.add_argument("--report", default=None, metavar="FILE", help="write a markdown report of every stage under out/ and exit")
    parser.add_argument("--hf", default=None, metavar="DIR",
                        help="chat with a Hugging Face Phi-4 folder (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--system", default=None, help="with --hf: a system prompt for the chat")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="with --hf: weight dtype (default bfloat16 on GPU, float32 on CPU; "
                        "bfloat16 halves memory: 29 GB for Phi-4 instead of 59)")
    args = parser.parse_args()

    try:
        if args.report:
            write_report("out", args.report)
            print(open(args.report).read())
            sys.exit(0)
        device = resolve_device(args.device)
        if args.hf:
            start = time.perf_counter()
            model, tokenizer = load_hf(args.hf, device, args.dtype)
            print(f"loaded {args.hf} in {time.perf_counter() - start:.1f}s: {model.num_params():,} parameters, "
                  f"{next(model.parameters()).dtype}, context {model.config.max_seq_len}", file=sys.stderr)
            chat(model, tokenizer, args, device)
            sys.exit(0)
        path = args.init or newest_checkpoint()
        if path is None:
            raise ValueError("no checkpoint under out/; train one with `python train.py` or pass --init DIR")
        model, tokenizer = load_model(path, device)
        print(f"loaded {path}: {model.num_params():,} parameters, context {model.config.max_seq_len}")

        if args.bench:
            # Same prompt, same number of tokens, greedy; medians of 3 runs, measured side by side.
            prompt = torch.tensor([tokenizer.encode("Problem: Mia has 3 apples.")], device=device)
            n = min(args.max_new_tokens, model.config.max_seq_len - prompt.shape[1] - 1)
            for use_cache in (True, False):
                speeds = sorted(decode_speed(model, prompt, n, use_cache) for _ in range(3))
                print(f"decode {'with' if use_cache else 'without'} KV cache: {speeds[1]:,.0f} tokens/s ({n} tokens, batch 1)")
            sys.exit(0)

        if args.eval_long:
            base_len = args.long_base or pretraining_length(path, model)
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
            files.atomic_write_text(os.path.join(path, "eval_long.json"), json.dumps(result, indent=2))
            sys.exit(0)

        if args.eval:
            eval_file = os.path.join(args.data, "eval.jsonl")
            if not os.path.exists(eval_file):
                raise ValueError(f"{eval_file} not found; build the data with `python data.py` or pass --data")
            problems = toyworld.read_problems(eval_file)[: args.eval_limit]
            start = time.perf_counter()
            result = evaluate_problems(
                model, tokenizer, problems, chat=args.chat, max_new_tokens=args.max_new_tokens, maj_k=args.maj_k,
                temperature=0.7 if args.temperature is None else args.temperature, seed=args.seed,
            )
            low, high = wilson_interval(result["correct"], result["n"])
            result.update(ci95=[low, high], format="chat" if args.chat else "document", seconds=time.perf_counter() - start)
            levels = ", ".join(f"L{k} {100 * v:.0f}%" for k, v in result["per_level"].items())
            print(
                f"held-out pass@1 (greedy): {100 * result['accuracy']:.1f}% of {result['n']} "
                f"(95% CI {100 * low:.1f}-{100 * high:.1f}%) | {levels} | {result['seconds']:.1f}s"
            )
            if args.maj_k:
                result["maj_ci95"] = wilson_interval(result["maj_correct"], result["n"])
                low, high = result["maj_ci95"]
                print(f"held-out maj@{args.maj_k} (T={result['maj_temperature']}): {100 * result['maj_accuracy']:.1f}% "
                      f"(95% CI {100 * low:.1f}-{100 * high:.1f}%)")
            files.atomic_write_text(os.path.join(path, "eval.json"), json.dumps(result, indent=2))
            sys.exit(0)

        if args.rejection_sampling:
            rl_file = os.path.join(args.data, "rl.jsonl")
            if not os.path.exists(rl_file):
                raise ValueError(f"{rl_file} not found; build the data with `python data.py` or pass --data")
            problems = toyworld.read_problems(rl_file)[args.rs_skip : args.rs_skip + args.rs_problems]
            if not problems:
                raise ValueError(f"{rl_file} has no problems after --rs-skip {args.rs_skip}")
            if args.rs_samples < 2:
                raise ValueError("--rs-samples must be at least 2 to choose among answers and form pairs")
            temperature = 1.0 if args.temperature is None else args.temperature
            if temperature <= 0:
                raise ValueError("rejection sampling needs diverse answers: pass --temperature > 0")
            start = time.perf_counter()
            sft_records, pairs, summary = rejection_sampling(
                model, tokenizer, problems, args.rs_samples, args.max_new_tokens, temperature, args.top_k, args.top_p, args.seed,
            )
            summary.update(init=path, seconds=time.perf_counter() - start)
            files.write_jsonl(os.path.join(args.out, "sft.jsonl"), sft_records)
            files.write_jsonl(os.path.join(args.out, "pairs.jsonl"), pairs)
            files.atomic_write_text(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=2))
            print(
                f"rejection sampling: {summary['problems']} problems x {args.rs_samples} samples in {summary['seconds']:.0f}s | "
                f"sample accuracy {100 * summary['sample_accuracy']:.1f}% | pass@{args.rs_samples} {100 * summary['pass_at_n']:.1f}% | "
                f"{summary['sft_records']} accepted answers -> {args.out}/sft.jsonl | {summary['pairs']} pairs -> {args.out}/pairs.jsonl"
            )
            sys.exit(0)

        if args.prompt is not None and args.chat:
            prompts = [tokenizer.render_prompt([{"role": "user", "content": args.prompt}])] * args.num_samples
            stop, problems = (tokenizer.im_end_id,), None
        elif args.prompt is not None:
            prompts = [tokenizer.encode(args.prompt)] * args.num_samples
            stop, problems = (tokenizer.bos_id,), None
        else:
            eval_file = os.path.join(args.data, "eval.jsonl")
            if not os.path.exists(eval_file):
                raise ValueError(f"{eval_file} not found; pass --prompt or build data with `python data.py`")
            problems = toyworld.read_problems(eval_file)[: args.num_samples]
            prompts = [problem_prompt_ids(tokenizer, p, args.chat) for p in problems]  # --chat: as a user turn
            stop = (tokenizer.bos_id, tokenizer.im_end_id)

        n_generated, elapsed = 0, 0.0
        for i, prompt in enumerate(prompts):
            idx = torch.tensor([prompt], device=device)
            start = time.perf_counter()
            out = generate(
                model, idx, args.max_new_tokens, args.temperature or 0.0, args.top_k, args.top_p,
                stop_tokens=stop, seed=args.seed + i, use_cache=not args.no_cache, vocab_size=tokenizer.vocab_size,
            )
            elapsed += time.perf_counter() - start
            n_generated += out.shape[1] - idx.shape[1]
            text = completions(tokenizer, out, idx.shape[1], stop)[0]
            print("-" * 80)
            print(tokenizer.decode(prompt) + text)
            if problems is not None:
                verdict = "correct" if toyworld.check(problems[i], text) else "wrong"
                print(f"[oracle: {verdict}; expected {problems[i].answer}]")
        print("-" * 80)
        print(f"{n_generated} tokens in {elapsed:.2f}s: {n_generated / max(elapsed, 1e-9):,.1f} tokens/s")
    except ValueError as error:
        sys.exit(f"error: {error}")
