"""Chapter: generation. Sampling from a Phi-4-style model with a KV cache, one or many rows at once.

Decoding is two phases. Prefill runs the whole prompt through the model once, filling the KV cache
(model.KVCache) with every layer's keys and values. Decode then feeds one new token at a time: each
step costs a forward over a single position, attending to the cache, instead of re-running the whole
sequence. Phi-4's chat generation starts after `<|im_start|>assistant<|im_sep|>` and stops at
`<|im_end|>` (the released chat template); pretraining-style documents stop at `<|endoftext|>`.

Two loops, in the order a reader needs them. `generate` decodes one rectangular batch (B, T) until every
row has stopped: the plain loop, with streaming and the no-cache reference, used by chat, the local
teacher of synth.py and single answers. `sample_completions` is the batched engine that evaluation
(eval.py, benchmarks.py), rejection sampling and Pivotal Token Search rollouts (pts.py) run on: prompts
of any length share `batch_rows` rows, and a row that finishes takes the next prompt at once
(continuous batching). Seeding: sample j of prompt i (output row i * n + j) draws from its own stream,
seeded by (seed, row) (row_uniforms), so it never depends on which rows share its batch.

Commands:
    python sample.py                                 # newest checkpoint in out/: worked solutions to held-out problems
    python sample.py --init out/pretrain --prompt "Problem: Mia has 3 apples." --num-samples 3 --temperature 0.8
    python sample.py --init out/sft --chat --prompt "Mia has 3 apples. ..."   # Phi-4 chat format (SFT checkpoints)
    python sample.py --bench                         # decode tokens/s with and without the KV cache
    python sample.py --bench-batch                   # the batched engine against length-grouped batches
    python sample.py --hf ~/phi-4                    # chat with the released Phi-4 (a Hugging Face folder)
    python sample.py --hf ~/phi-4 --prompt "What is 17 * 23?" --max-new-tokens 200   # one question, no loop

Simplified: no speculative decoding and no paged cache (the engine preallocates batch_rows full-length
rows); new prompts are right-padded to the longest one admitted with them (prompts are admitted
shortest first, so neighbours have similar lengths and little is padded).

Shapes use model.py's legend: B rows, T prompt tokens, S cached tokens, C d_model, K key/value heads,
D head dim, V vocabulary; n is num_samples, t the sequence length so far, R the engine's rows (slots),
M its largest number of new tokens.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import cli
import checkpoint
import data
import hf
import parallel
import toyworld
from model import KVCache, Phi4

# ----------------------------------------------------------------------------------------------------
# Choosing the next token


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,). temperature 0 means greedy (argmax).

    top_k keeps the k most likely tokens; top_p keeps the smallest set whose probability reaches p
    (nucleus sampling). Both cut off the long tail of unlikely tokens, where most sampling errors of a
    small model come from. They compose: top-k first, then top-p within what is left.

    `uniform` (B,) holds each row's draw in [0, 1) (the row's own stream, see row_uniforms); without it
    the draws come from `generator`, or the global RNG.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,); no randomness, so no draw is used
    # BEGIN SOLUTION sampling: logits / temperature in float32; -inf below the k-th best; top-p: -inf once the tokens before reach p
    # Dividing by temperature before the softmax: below 1 sharpens toward argmax, above 1 flattens.
    logits = logits.float() / temperature  # float32: a bf16 softmax loses the tail the filters act on
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))  # ties with the k-th best all stay
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V), rising to 1 along V
        # Drop a token when the tokens before it already reach top_p; the first token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    # END SOLUTION sampling
    probs = logits.softmax(dim=-1)  # (B, V); a token masked to -inf gets probability exactly 0
    if uniform is None:
        uniform = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=torch.float64)
    # Inverse CDF instead of torch.multinomial: one draw per row, taken from that row's own stream, where
    # multinomial draws the whole batch from one generator (a row's sample would depend on its neighbours).
    # Token i owns the slice [cdf[i-1], cdf[i]) of [0, total); the draw, scaled to total, lands in one.
    # float64, so that u * total rounds up to total (past the last slice) about once in 1e16 draws.
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    threshold = uniform.to(cdf)[:, None] * cdf[:, -1:]  # (B, 1)
    # right=True: the first i with cdf[i] > threshold; a zero-probability token has an empty slice, so
    # it is never chosen. The clamp only guards that one-in-1e16 rounding.
    return torch.searchsorted(cdf, threshold, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)  # (B,)


def row_uniforms(seed: int, rows: list[int], steps: int, device=None) -> torch.Tensor:
    """(len(rows), steps) float64 draws in [0, 1): row r's stream is numpy's default_rng([seed, r]).

    The seeding of every sampled sequence: row is its index in the call's output (prompt i, sample j of
    n: row i * n + j), and its t-th new token is chosen by draw t (sample_next). A sample then depends on
    the seed, its row and the model only: never on the rows that share its batch, on batch_rows, or on
    the order the engine admits prompts. So `generate(idx, seed=s, num_samples=n)` equals
    `sample_completions` on the rows of idx, and both equal decoding each row alone (tests/test_engine.py).
    (seed, r) goes through numpy's SeedSequence, which hashes it: seed 1's row 0 and seed 0's row 1 get
    unrelated streams (seed + r would not; PTS calls with consecutive seeds). Drawn once per sequence,
    so decoding does no per-row Python work.
    """
    if seed < 0:
        raise ValueError(f"sampling seeds must be >= 0 (numpy's SeedSequence), got {seed}; change --seed")
    streams = [np.random.default_rng([seed, row]).random(steps) for row in rows]  # one (steps,) array each
    return torch.tensor(np.array(streams).reshape(len(rows), steps), device=device)  # (rows, steps)


# ----------------------------------------------------------------------------------------------------
# Generation, one rectangular batch


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
    compiled: bool = False,
) -> torch.Tensor:
    """Continue each row of idx (B, T) by up to max_new_tokens tokens -> (B * num_samples, T + n).

    A row that emits one of `stop_tokens` keeps it and is padded with it afterwards; generation ends
    early once every row has stopped. `seed` makes sampling reproducible: output row r draws from its
    own stream (row_uniforms), and the global RNG is untouched. `use_cache=False` recomputes the whole
    sequence at every step: the slow reference that the tests compare the cache against.
    `on_token(next_token)`, if given, is called with each new (B,) column as soon as it is chosen (stop
    tokens included), so a caller can stream text.

    `num_samples` continues every row that many times (output rows b*n .. b*n+n-1 continue row b). The
    prompt is prefilled once and its KV cache copied to the n rows (KVCache.expand), instead of
    prefilling n copies of it: the saving that rollouts from one shared prefix live on (pts.py). With a
    seed, the samples equal those of passing each row repeated n times.

    `vocab_size` (pass tokenizer.vocab_size) keeps sampling to real token ids: the model's vocabulary is
    padded past the tokenizer's last id (to a multiple of 64), and a padding id, rare as it is at
    temperature 1, has no text to decode.

    `compiled=True` runs each one-token decode step through compiled_decode_step (the same tokens; worth
    its one-off compile only for long runs of batch-1 decoding, see there).
    """
    model.eval()
    B, T = idx.shape
    limit = model.config.max_seq_len
    if T >= limit:
        raise ValueError(f"prompt of {T} tokens does not fit the model's context of {limit}; shorten the prompt")
    if T + max_new_tokens > limit:
        # Never run past the RoPE table; say so, or an answer cut at the context looks like a model's choice.
        print(f"note: generation stops at the model's context of {limit} tokens ({limit - T} new tokens "
              f"instead of {max_new_tokens})", file=sys.stderr)
        max_new_tokens = limit - T
    device = idx.device
    # Column t of the table is every row's draw for its t-th new token (None: the global RNG draws).
    uniforms = None if seed is None else row_uniforms(seed, range(B * num_samples), max_new_tokens, device)
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)  # (n_stop,), for torch.isin
    dtype = next(model.parameters()).dtype  # the cache stores keys/values in the weights' dtype
    # Allocated once for prompt + every new token: decoding then only writes into it, never reallocates.
    # Sized for B rows; with num_samples it is expanded after the prefill, never prefilled n times.
    cache = KVCache(model.config, B, T + max_new_tokens, device=device, dtype=dtype) if use_cache else None

    decode_step = compiled_decode_step(model) if compiled and cache is not None else None

    def last_logits(tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the next token after `tokens` (B, t): the new tokens when cached, else everything."""
        if decode_step is not None and tokens.shape[1] == 1:
            return decode_step(tokens, cache)[:, :vocab_size]  # (B, V), or (B, vocab_size)
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
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=device)  # (B * n,): rows past a stop token
    out = idx  # (B * n, t): prompt, then each new column appended
    for step in range(max_new_tokens):
        draw = uniforms[:, step] if uniforms is not None else None  # (B * n,)
        next_token = sample_next(logits, temperature, top_k, top_p, uniform=draw)  # (B,)
        # Rows that already stopped repeat their stop token instead of generating more.
        next_token = torch.where(finished, out[:, -1], next_token)  # (B,): the tensor stays rectangular
        out = torch.cat([out, next_token[:, None]], dim=1)  # (B, t + 1)
        if on_token is not None:
            on_token(next_token)
        if len(stop):
            finished |= torch.isin(next_token, stop)  # a row stays finished once it has stopped
            if bool(finished.all()):
                break
        # With the cache, only the new column (B, 1) runs; without it, the whole sequence (B, t) again:
        # one position's forward per token against t positions', the gap `--bench` measures.
        logits = last_logits(next_token[:, None] if use_cache else out)
    return out


def compiled_decode_step(model: Phi4):
    """(tokens (B, 1), cache) -> next-token logits (B, V): one decode step of `model`, through torch.compile.

    A one-token step of a small model is almost all overhead: ~25 small ops per layer, each a Python call
    and a kernel launch costing more than its arithmetic. Compiling fuses them, and inductor's cpp_wrapper
    calls the fused kernels from generated C++ instead of Python. dynamic=True gives one graph for every
    cache length and batch size, so the growing cache does not recompile each step. The compile costs
    tens of seconds once per process and model, so generate() uses it only when asked (bench.py measures
    both, and the first call's time).
    """
    step = getattr(model, "_compiled_decode_step", None)
    if step is None:
        def forward(tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return model.lm_head(model.hidden_states(tokens, cache)[:, -1])  # (B, V)

        step = torch.compile(forward, dynamic=True, options={"cpp_wrapper": True})
        model._compiled_decode_step = step  # one compile per model, however many generate() calls
    return step


def strip_stop(ids: list[int], stop_tokens) -> list[int]:
    """A completion without its final stop token (the text the oracle reads)."""
    return ids[:-1] if ids and ids[-1] in stop_tokens else ids


# ----------------------------------------------------------------------------------------------------
# The batched engine: many prompts of any length, continuous batching
#
# The engine owns R rows ("slots"), each holding one sequence at its own length: the model takes one
# position per row (model.hidden_states' `positions`), so rows of different lengths decode in one
# forward. When sequences finish, their slots take the next prompts from the queue: these are prefilled
# together in a small cache of their own, which is copied into the free slots, n times per prompt (the
# samples of one prompt share one prefill). Once the queue is empty, finished rows are dropped instead.


class Engine:
    """Continuous batching: n samples of every prompt through `rows` slots. Use sample_completions."""

    # Per-slot state, row i of each is slot i; all are indexed together when slots are dropped.
    SLOT_STATE = ("sequence", "length", "new", "budget", "tokens", "uniforms", "logits")

    def __init__(self, model: Phi4, prompts, n, max_new_tokens, stop_tokens, sampling, seed, rows, vocab_size):
        self.model, self.prompts, self.n, self.sampling, self.seed = model, prompts, n, sampling, seed
        self.vocab_size = vocab_size
        if not isinstance(seed, int) and len(seed) != len(prompts):
            raise ValueError(f"{len(seed)} seeds for {len(prompts)} prompts: pass one seed, or one per prompt")
        limit = model.config.max_seq_len
        for i, prompt in enumerate(prompts):
            if not 0 < len(prompt) < limit:
                raise ValueError(f"prompt {i} has {len(prompt)} tokens; it needs 1 to {limit - 1} "
                                 f"(the model's context is {limit}): shorten it")
        clipped = sum(len(prompt) + max_new_tokens > limit for prompt in prompts)
        if clipped:  # say so once: an answer cut at the context would otherwise look like the model's choice
            print(f"note: {clipped} of {len(prompts)} prompts leave fewer than {max_new_tokens} new tokens in the "
                  f"model's context of {limit}; their answers stop there", file=sys.stderr)
        device = next(model.parameters()).device
        self.max_new_tokens = max_new_tokens
        # Each row's room: max_new_tokens, or what is left of the context after its prompt.
        cache_len = min(limit, max(map(len, prompts)) + max_new_tokens)
        R, M = max(n, rows), max_new_tokens  # at least one prompt's n samples fit
        self.cache = KVCache(model.config, R, cache_len, device=device, dtype=next(model.parameters()).dtype)
        self.sequence = torch.full((R,), -1, dtype=torch.long, device=device)  # row i*n+j in the slot, -1: free
        self.length = torch.zeros(R, dtype=torch.long, device=device)  # prompt + new tokens so far
        self.new = torch.zeros(R, dtype=torch.long, device=device)  # new tokens so far: their column in `tokens`
        self.budget = torch.zeros(R, dtype=torch.long, device=device)  # new tokens the sequence may have
        self.tokens = torch.zeros(R, M, dtype=torch.long, device=device)  # (R, M) the new tokens
        self.uniforms = torch.zeros(R, M, dtype=torch.float64, device=device)  # (R, M) the slot's draws
        self.logits = torch.zeros(R, vocab_size or model.config.vocab_size, device=device)  # (R, V) next token's
        self.stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)  # (n_stop,)
        self.running = 0  # sequences in slots: counted here, so the loop needs no device sync to know
        # Shortest prompts last, popped first: prompts admitted together have similar lengths (less padding).
        self.queue = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        self.results: list[list[list[int]]] = [[[] for _ in range(n)] for _ in prompts]

    def admit(self):
        """Start as many queued prompts as there are free slots for n samples each."""
        free = (self.sequence < 0).nonzero().squeeze(-1)  # (n_free,) slot indices
        chosen = [self.queue.pop() for _ in range(min(len(free) // self.n, len(self.queue)))]
        if not chosen:
            return
        prompts = [self.prompts[i] for i in chosen]
        T = max(map(len, prompts))
        # Right padding: pads sit after a row's last real token, so causal attention never shows them to it.
        idx = torch.tensor([p + [0] * (T - len(p)) for p in prompts], device=self.sequence.device)  # (P, T)
        prompt_cache = KVCache(self.model.config, len(prompts), T, idx.device, self.cache.k.dtype)
        hidden = self.model.hidden_states(idx, prompt_cache)  # (P, T, C)
        lengths = torch.tensor([len(p) for p in prompts], device=idx.device)  # (P,)
        # Each prompt's next-token logits come from its own last real token, not the padded end.
        last = hidden[torch.arange(len(prompts), device=idx.device), lengths - 1]  # (P, C)
        logits = self.model.lm_head(last)[:, : self.vocab_size]  # (P, V)
        # The n samples of a prompt share its prefill: n copies of its keys/values, not n forwards.
        if self.n > 1:
            prompt_cache.expand(self.n)  # (L, P, K, T, D) -> (L, P * n, K, T, D)
        slots = free[: len(prompts) * self.n]  # (P * n,)
        self.cache.load_rows(slots, prompt_cache)
        rows = [i * self.n + j for i in chosen for j in range(self.n)]  # output rows, in slot order
        self.sequence[slots] = torch.tensor(rows, device=idx.device)
        self.length[slots] = lengths.repeat_interleave(self.n)  # (P,) -> (P * n,)
        self.new[slots] = 0
        # Stop at max_new_tokens or at the end of the context, whichever comes first.
        self.budget[slots] = (self.model.config.max_seq_len - self.length[slots]).clamp(max=self.max_new_tokens)
        if isinstance(self.seed, int):  # one seed for the call: streams by output row
            uniforms = row_uniforms(self.seed, rows, self.max_new_tokens, idx.device)  # (P * n, M)
        else:  # a seed per prompt: streams by sample within the prompt
            uniforms = torch.cat([row_uniforms(self.seed[i], range(self.n), self.max_new_tokens, idx.device)
                                  for i in chosen])  # (P * n, M)
        self.uniforms[slots] = uniforms
        self.logits[slots] = logits.repeat_interleave(self.n, dim=0).to(self.logits.dtype)  # (P * n, V)
        self.running += len(rows)

    def step(self) -> torch.Tensor:
        """Sample every slot's next token, record it, and retire sequences that end. -> the tokens (R,)."""
        slots = torch.arange(len(self.sequence), device=self.sequence.device)  # (R,)
        active = self.sequence >= 0  # (R,)
        # One draw per slot, its sequence's next one; free slots sample too (cheaper than gathering).
        token = sample_next(self.logits, *self.sampling, uniform=self.uniforms[slots, self.new])  # (R,)
        self.tokens[slots, self.new] = token  # free slots scribble on column 0, rewritten when reused
        self.new += active
        self.length += active
        # A sequence ends at a stop token (kept) or when its budget is spent.
        finished = active & (torch.isin(token, self.stop) | (self.new >= self.budget))  # (R,)
        if bool(finished.any()):
            done = finished.nonzero().squeeze(-1)  # (n_done,)
            # Python work per finished sequence, never per token: one copy of its tokens to a list.
            finished_rows = zip(self.sequence[done].tolist(), self.new[done].tolist(), self.tokens[done].tolist())
            for row, count, ids in finished_rows:
                self.results[row // self.n][row % self.n] = ids[:count]
            self.sequence[done], self.new[done], self.length[done] = -1, 0, 1  # free: parked at position 0
            self.running -= len(done)
        return token

    def drop_free_slots(self):
        """Keep only running slots: after the queue empties, finished rows would otherwise keep costing compute."""
        keep = (self.sequence >= 0).nonzero().squeeze(-1)  # (running,)
        for name in self.SLOT_STATE:
            setattr(self, name, getattr(self, name)[keep])  # (R, ...) -> (running, ...)
        self.cache.keep_rows(keep)

    def run(self, progress: str | None = None) -> list[list[list[int]]]:
        """Decode until every sequence has finished -> [prompt][sample] token ids."""
        bar = tqdm(total=len(self.prompts) * self.n, desc=progress, unit="answer", disable=progress is None)
        while self.queue or self.running:
            R = len(self.sequence)
            # Refill in groups, not one prompt per step: each admission is a forward of its own, and a
            # slot idling a few steps costs less than a prefill for every finished sequence. The last
            # prompts go in as soon as they all fit. Once the queue is empty, free slots are dropped in
            # groups too (each drop copies the cache). On --bench-batch's workload 96% of row-steps do work.
            if self.queue and R - self.running >= max(self.n, min(R // 16, len(self.queue) * self.n)):
                self.admit()
            elif not self.queue and R - self.running >= max(1, R // 8):
                self.drop_free_slots()
            running_before = self.running
            token = self.step()
            bar.update(running_before - self.running)
            if self.running == 0:
                continue  # no logits to compute: admit the next prompts, or stop
            # The new token sits at position length - 1 of its row (free slots: at 0, harmlessly).
            positions = (self.length - 1)[:, None]  # (R, 1)
            hidden = self.model.hidden_states(token[:, None], self.cache, positions)  # (R, 1, C)
            self.logits = self.model.lm_head(hidden[:, 0])[:, : self.vocab_size].float()  # (R, V)
        bar.close()
        return self.results


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
    seed: int | list[int] = 0,
    batch_rows: int = 256,
    progress: str | None = None,
    vocab_size: int | None = None,
) -> list[list[list[int]]]:
    """n completions of every prompt -> [prompt][sample] token ids, cut just after the first stop token.

    Runs the batched engine: `batch_rows` rows decode together whatever the prompts' lengths, each
    prompt is prefilled once and continued n times, and a finished row takes the next prompt.
    Sample j of prompt i draws from the stream (seed, i * n + j) (see the module docstring), so it does
    not depend on batch_rows or on the other prompts. `seed` may also be a list, one seed per prompt:
    sample j of prompt i then draws from (seed[i], j), the stream it would have as the only prompt of a
    call with seed[i], so calls made one prompt at a time can be batched without changing a token.
    `vocab_size` keeps samples to the tokenizer's ids.
    Temperature 0 gives n copies of the greedy answer. A completion without a stop token hit
    max_new_tokens (or the context) and is returned as it is: callers decide what an unfinished answer
    is worth (the oracle usually rejects it, as it ends before "Answer:").
    """
    if not prompts or max_new_tokens < 1:
        return [[[] for _ in range(n)] for _ in prompts]  # nothing to generate (generate returns the prompt)
    model.eval()
    rows = min(batch_rows, len(prompts) * n)  # no more slots than sequences
    engine = Engine(model, prompts, n, max_new_tokens, stop_tokens, (temperature, top_k, top_p), seed, rows, vocab_size)
    return engine.run(progress)


# ----------------------------------------------------------------------------------------------------
# Chat and the command line


def chat(model: Phi4, tokenizer: data.Tokenizer, args, device):
    """Phi-4's chat format, streamed token by token: a loop on stdin, or one turn with --prompt.

    The whole conversation is re-rendered each turn (system, user, assistant, ...) and ends with an
    open assistant header; the reply stops at <|im_end|> and joins the history for the next turn.
    """
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turn = 0  # seeds differ per turn: the same question asked twice may get a different reply
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
        first = 1 if args.system else 0  # the index of the oldest message that may be forgotten
        while len(ids) >= model.config.max_seq_len and len(messages) > first + 1:
            del messages[first : first + 2]  # one user message and the assistant reply to it
            ids = tokenizer.render_prompt(messages)
            print("[the conversation outgrew the context: forgot the oldest exchange]", file=sys.stderr)
        idx = torch.tensor([ids], device=device)  # (1, T)
        # A token may end in the middle of a UTF-8 character (emoji, CJK): the incremental decoder
        # holds such bytes back until the character is complete, instead of printing garbage.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def show(next_token: torch.Tensor):
            """generate's on_token: print each new token's text as soon as it is chosen."""
            token = int(next_token[0])  # (1,): one conversation, one row
            if token != tokenizer.im_end_id:  # the turn's end marker is structure, not text to print
                print(utf8.decode(tokenizer.encoding.decode_single_token_bytes(token)), end="", flush=True)

        if args.prompt is None:
            print("assistant> ", end="", flush=True)
        start = time.perf_counter()
        out = generate(
            model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
            stop_tokens=(tokenizer.im_end_id,), seed=args.seed + turn, on_token=show, vocab_size=tokenizer.vocab_size,
        )
        print(utf8.decode(b"", final=True))  # flush any bytes still held back, then end the line
        n_new = out.shape[1] - idx.shape[1]  # out (1, T + n_new)
        print(f"[{n_new} tokens, {n_new / (time.perf_counter() - start):.1f} tokens/s]", file=sys.stderr)
        # The history stores text; render_prompt adds <|im_end|> back when it renders the next turn.
        reply = tokenizer.decode(strip_stop(out[0, idx.shape[1]:].tolist(), (tokenizer.im_end_id,)))
        messages.append({"role": "assistant", "content": reply})
        turn += 1
        if args.prompt is not None:
            break


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; argv=None reads sys.argv, a list lets tests parse flags without a process.

    Impossible values stop here with a usage message naming the flag, before any model is loaded.
    """
    parser = cli.Parser(description="Generate text from a checkpoint or a Hugging Face Phi-4 folder.")
    parser.add_argument("--init", default=None, help="checkpoint folder (default: the newest under out/)")
    parser.add_argument("--hf", default=None, metavar="DIR",
                        help="chat with a Hugging Face Phi-4 folder (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("--prompt", default=None, help="text to continue (default: held-out toy problems)")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt as a user turn in Phi-4's chat format")
    parser.add_argument("--system", default=None, help="with --hf: a system prompt for the chat")
    parser.add_argument("--num-samples", type=cli.at_least(1), default=3, help="completions (or held-out problems) to show")
    parser.add_argument("--max-new-tokens", type=cli.at_least(1), default=120, help="tokens to generate per completion")
    parser.add_argument("--temperature", type=cli.at_least(0.0, float), default=0.0, help="0 = greedy; higher = more varied")
    parser.add_argument("--top-k", type=cli.at_least(1), default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=cli.between(0.0, 1.0, low_open=True), default=None, help="nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--seed", type=int, default=1337, help="sampling seed")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="with --hf: weight dtype (default bfloat16 on GPU, float32 on CPU; "
                        "bfloat16 halves memory: 29 GB for Phi-4 instead of 59)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder with eval.jsonl (default prompts)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    parser.add_argument("--bench", action="store_true", help="measure decode tokens/s with and without the KV cache")
    parser.add_argument("--bench-batch", action="store_true",
                        help="tokens/s of the batched engine against length-grouped batches (a random toy model)")
    args = parser.parse_args(argv)  # the numeric ranges are checked by the flag types (cli.py)
    cli.refuse_unused(parser, args, {"system": "hf", "dtype": "hf"}, argv)
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty; give some text to continue")
    return args


def show_samples(model: Phi4, tokenizer: data.Tokenizer, args, device) -> None:
    """Print completions of --prompt, or of the first held-out problems with the oracle's verdict."""
    problems = None  # set only for held-out problems, which the oracle can grade
    # The stop token follows the format: <|im_end|> ends a chat turn, <|endoftext|> (bos_id) starts the
    # next document, after which a pretrained model would write an unrelated one.
    if args.prompt is not None and args.chat:
        prompts, stop = [tokenizer.render_prompt([{"role": "user", "content": args.prompt}])] * args.num_samples, (tokenizer.im_end_id,)
    elif args.prompt is not None:
        prompts, stop = [tokenizer.encode(args.prompt)] * args.num_samples, (tokenizer.bos_id,)
    else:
        eval_file = os.path.join(args.data, "eval.jsonl")
        if not os.path.exists(eval_file):
            raise ValueError(f"{eval_file} not found; pass --prompt or build data with `python data.py`")
        problems = toyworld.read_problems(eval_file)[: args.num_samples]
        prompts = [toyworld.prompt_ids(tokenizer, p, args.chat) for p in problems]  # --chat: as a user turn
        stop = (tokenizer.bos_id, tokenizer.im_end_id)  # either format: --chat or not
    for i, prompt in enumerate(prompts):
        idx = torch.tensor([prompt], device=device)  # (1, T)
        out = generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, stop_tokens=stop,
                       seed=args.seed + i, use_cache=not args.no_cache, vocab_size=tokenizer.vocab_size)
        new = out[0, idx.shape[1]:].tolist()  # (1, T + new) -> the new ids only
        text = tokenizer.decode(strip_stop(new, stop))
        print("-" * 80)
        print(tokenizer.decode(prompt) + text)
        # Say why an answer ended without a stop token, so a cut-off answer is not read as the model's.
        if len(new) == args.max_new_tokens and new[-1] not in stop:
            print(f"[stopped after --max-new-tokens {args.max_new_tokens} tokens]")
        elif idx.shape[1] + len(new) >= model.config.max_seq_len and new[-1] not in stop:
            print(f"[stopped at the model's context of {model.config.max_seq_len} tokens]")
        if problems is not None:
            verdict = "correct" if toyworld.check(problems[i], text) else "wrong"
            print(f"[oracle: {verdict}; expected {problems[i].answer}]")
    print("-" * 80)


if __name__ == "__main__":
    import speed  # the speed measurements import this file: loaded here, once this file is

    args = parse_args()
    try:
        if args.bench_batch:
            speed.bench_batch(args.max_new_tokens, args.seed)  # a random model of its own: no checkpoint needed
            sys.exit(0)
        device = parallel.resolve_device(args.device)
        if args.hf:
            start = time.perf_counter()
            model, tokenizer = hf.load(args.hf, device, args.dtype)
            print(f"loaded {args.hf} in {time.perf_counter() - start:.1f}s: {model.num_params():,} parameters, "
                  f"{next(model.parameters()).dtype}, context {model.config.max_seq_len}", file=sys.stderr)
            chat(model, tokenizer, args, device)
            sys.exit(0)  # the released model speaks chat only: no toy held-out set, no --bench
        path = args.init or checkpoint.newest_checkpoint()
        if path is None:
            raise ValueError("no checkpoint under out/; train one with `python train.py` or pass --init DIR")
        model, tokenizer = checkpoint.load_model(path, device)
        print(f"loaded {path}: {model.num_params():,} parameters, context {model.config.max_seq_len}")
        if args.bench:
            speed.decode_bench(model, tokenizer, args.max_new_tokens, device)
        else:
            show_samples(model, tokenizer, args, device)
    except ValueError as error:
        sys.exit(f"error: {error}")
