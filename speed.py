"""How fast generation is: the measurements behind `sample.py --bench`, `sample.py --bench-batch` and
`pts.py --bench`. A room: each compares two ways of generating the same tokens side by side, in one run,
alternating them so a neighbour's load on a shared machine slows both alike, and reports medians.

    decode_bench    greedy decoding with and without the KV cache, batch 1 (what the cache buys)
    rollout_bench   PTS rollouts from one prefix: shared prefill, re-run prefill, one at a time
    bench_batch     the batched engine against length-grouped rectangular batches (what the engine buys)
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import toyworld
from model import ModelConfig, Phi4
from sample import generate, sample_completions


def decode_speed(model, prompt: torch.Tensor, n_tokens: int, use_cache: bool) -> float:
    """Tokens/s of greedy decoding of n_tokens after `prompt` (no stop tokens, so exactly n_tokens)."""
    start = time.perf_counter()
    generate(model, prompt, n_tokens, temperature=0, use_cache=use_cache)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
    return n_tokens * prompt.shape[0] / (time.perf_counter() - start)  # every row's tokens count


def decode_bench(model: Phi4, tokenizer, max_new_tokens: int, device) -> None:
    """Same prompt, same number of tokens, greedy; medians of 3 runs, with and without the cache side by side."""
    prompt = torch.tensor([tokenizer.encode("Problem: Mia has 3 apples.")], device=device)  # (1, T)
    n = min(max_new_tokens, model.config.max_seq_len - prompt.shape[1] - 1)
    for use_cache in (True, False):
        # The first run pays for warm-up (allocation, kernel selection); the median of 3 ignores it.
        speeds = sorted(decode_speed(model, prompt, n, use_cache) for _ in range(3))
        print(f"decode {'with' if use_cache else 'without'} KV cache: {speeds[1]:,.0f} tokens/s ({n} tokens, batch 1)")


# ----------------------------------------------------------------------------------------------------
# Rollout speed (pts.py --bench): rollouts from one prefix, with and without the shared-prefix KV cache


def rollout_speed(model, idx: torch.Tensor, n: int, budget: int, temperature: float, stop: int,
                  seed: int, mode: str, vocab_size: int | None = None) -> tuple[float, int]:
    """(seconds, rollout tokens) for n rollouts of idx (1, T). Tokens count each row up to its stop
    token, so padding after a stop is not counted as work done.

    mode "shared": prefill once, copy the cache to n rows. "repeat": n copies of the prefix in one
    batch, prefilled n times (same samples as "shared" for a seed). "serial": one rollout at a time.
    """
    options = dict(stop_tokens=(stop,), vocab_size=vocab_size)
    start = time.perf_counter()
    if mode == "shared":
        outs = [generate(model, idx, budget, temperature, seed=seed, num_samples=n, **options)]  # (n, <= T + budget)
    elif mode == "repeat":
        outs = [generate(model, idx.repeat(n, 1), budget, temperature, seed=seed, **options)]  # (n, T)
    else:
        # Different seeds per rollout, or all n would be the same sample.
        outs = [generate(model, idx, budget, temperature, seed=seed + r, **options) for r in range(n)]
    if idx.device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
    seconds = time.perf_counter() - start
    tokens = 0
    for out in outs:
        for row in out[:, idx.shape[1]:].tolist():  # (rows, <= budget): sampled tokens, prefix dropped
            tokens += row.index(stop) + 1 if stop in row else len(row)  # + 1: the stop token was sampled too
    return seconds, tokens


def rollout_bench(model, tokenizer, problem, n_rollouts, temperature, max_answer_tokens, seed, repeats=3) -> dict:
    """Rollout tokens/s from prefixes at 0% .. 90% of a sampled answer, three ways, side by side.

    The search asks for prefixes all along an answer, so the overall line (every prefix's tokens over
    every prefix's time) is the figure that matches a PTS run. Returns {mode: overall tokens/s}.
    """
    device = next(model.parameters()).device
    stop = tokenizer.eos_id
    prompt_ids = toyworld.prompt_ids(tokenizer, problem, chat=True)
    max_answer_tokens = min(max_answer_tokens, model.config.max_seq_len - len(prompt_ids))  # fit the context
    # One answer of the model's own, so the prefixes are the kind the search really asks about.
    answer = generate(model, torch.tensor([prompt_ids], device=device), max_answer_tokens, temperature,
                      stop_tokens=(stop,), seed=seed, vocab_size=tokenizer.vocab_size)[0, len(prompt_ids):].tolist()
    # The stop token ends the answer: a prefix that contains it is finished and would need no rollouts.
    answer = answer[: answer.index(stop)] if stop in answer else answer
    modes = {"shared": "shared prefix", "repeat": "re-run, batched", "serial": "one at a time"}
    print(f"{n_rollouts} rollouts per prefix, temperature {temperature}, question of {len(prompt_ids)} tokens, "
          f"sampled answer of {len(answer)} tokens, {device}; tokens/s, median of {repeats} runs")
    print(f"{'prefix':>16} | " + " | ".join(f"{name:>15}" for name in modes.values()) + " | shared/batched")
    totals = {mode: [0.0, 0] for mode in modes}  # mode -> [seconds, tokens] over every prefix
    # The longer the prefix, the more a shared prefill saves, and the fewer tokens are left to decode.
    for fraction in (0.0, 0.25, 0.5, 0.75, 0.9):
        prefix = answer[: int(fraction * len(answer))]
        idx = torch.tensor([prompt_ids + prefix], device=device)  # (1, T)
        budget = max_answer_tokens - len(prefix)  # the prefix counts toward the answer's length, as in PTS
        speeds = {}
        for mode in modes:
            runs = sorted(rollout_speed(model, idx, n_rollouts, budget, temperature, stop, seed, mode,
                                        tokenizer.vocab_size) for _ in range(repeats))
            seconds, tokens = runs[len(runs) // 2]  # the median run (by time)
            speeds[mode] = tokens / seconds
            totals[mode][0] += seconds
            totals[mode][1] += tokens
        label = f"{idx.shape[1]} tok ({fraction:.0%})"
        print(f"{label:>16} | " + " | ".join(f"{speeds[m]:>11,.0f} t/s" for m in modes)
              + f" | {speeds['shared'] / speeds['repeat']:.2f}x")
    # Summed tokens over summed seconds, not a mean of rates: long prefixes with few tokens left to
    # decode would otherwise count as much as the short prefixes where most of the time goes.
    overall = {mode: tokens / seconds for mode, (seconds, tokens) in totals.items()}
    print(f"{'all prefixes':>16} | " + " | ".join(f"{overall[m]:>11,.0f} t/s" for m in modes)
          + f" | {overall['shared'] / overall['repeat']:.2f}x")
    return overall


# ----------------------------------------------------------------------------------------------------
# Batched speed (--bench-batch): the engine against the approach it replaced


def length_grouped_completions(model, prompts, n, max_new_tokens, stop_tokens, temperature, seed, batch_rows):
    """The approach the engine replaced, kept as --bench-batch's baseline: prompts of equal length share a
    rectangular batch (generate), and a batch decodes until its last row stops. -> [prompt][sample] ids."""
    by_length: dict[int, list[int]] = {}  # prompt length -> prompt indices
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    per_batch = max(1, batch_rows // n)  # prompts per batch
    results: list[list[list[int]]] = [[] for _ in prompts]
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            idx = torch.tensor([prompts[i] for i in chunk])  # (len(chunk), length)
            out = generate(model, idx, max_new_tokens, temperature, stop_tokens=stop_tokens, seed=seed + start,
                           num_samples=n)  # (len(chunk) * n, length + new)
            for row, ids in enumerate(out[:, length:].tolist()):  # the prompt dropped
                # j + 1 keeps the stop token and cuts the stop-token padding after it.
                end = next((j + 1 for j, token in enumerate(ids) if token in stop_tokens), len(ids))
                results[chunk[row // n]].append(ids[:end])
    return results


def bench_batch(max_new_tokens: int, seed: int, n_prompts: int = 500, batch_rows: int = 256, repeats: int = 3):
    """Tokens/s of the engine and of length-grouped batches, side by side: same model, prompts and rows.

    A random toy-shaped model (the `toy` preset, vocabulary 832) on CPU, n_prompts prompts of 40-80 tokens.
    Its next-token distribution is near uniform, so 14 stop ids out of 832 end an answer with probability
    1.7% per token: answers stop at random points (mean ~50 of 120 tokens), as a trained model's do.
    Tokens count each answer up to its stop token; padding after it is not work done.
    """
    config = ModelConfig(vocab_size=832, n_layer=4, d_model=128, n_head=4, n_kv_head=2, ffn_dim=384, max_seq_len=256)
    model = Phi4(config)
    model.init_weights(torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(14, 832, size=int(length)).tolist() for length in rng.integers(40, 81, size=n_prompts)]
    stop = tuple(range(14))
    print(f"{n_prompts} prompts of 40-80 tokens, up to {max_new_tokens} new tokens, temperature 1, {batch_rows} rows, "
          f"{torch.get_num_threads()} threads; tokens/s, median of {repeats} runs")
    for n in (1, 4):  # one answer per prompt (greedy evaluation), four (maj@k, rejection sampling)
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(repeats):
            # Alternate the two, so that a neighbour's load on a shared machine slows both alike.
            for name, run in (("before", length_grouped_completions), ("after", sample_completions)):
                start = time.perf_counter()
                answers = run(model, prompts, n, max_new_tokens, stop, temperature=1.0, seed=seed,
                              batch_rows=batch_rows)
                rates[name].append(sum(len(a) for group in answers for a in group) / (time.perf_counter() - start))
        speeds = {name: statistics.median(values) for name, values in rates.items()}
        print(f"n={n}: length-grouped batches {speeds['before']:>8,.0f} t/s | "
              f"batched engine {speeds['after']:>8,.0f} t/s | {speeds['after'] / speeds['before']:.2f}x")
