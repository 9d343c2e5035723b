"""Pivotal Token Search (PTS): find the few tokens of an answer that decide whether it ends up right,
and turn each into a one-token DPO pair. Phi-4 report section 4.3 and Figure 4.

Why. A wrong answer is usually wrong because of one or two tokens: the step where the solution takes a
wrong turn ("15 - 6 = 8"), or a formatting slip that the oracle rejects. Full-answer DPO pairs
(chosen answer vs rejected answer) spread their signal over every token the two answers differ in, most
of which do not matter. PTS puts the preference exactly on the token where the probability of success
jumps, and Phi-4 built its first DPO round from such pairs (SFT -> +PTS DPO: MATH 77.1 -> 80.5).

The algorithm, in prose.
1. p(success | prefix). For a question Q with an oracle and a prefix t1..ti of an answer, sample N
   continuations of Q + t1..ti from the model and let the oracle grade each finished answer; the
   fraction accepted estimates p(success | t1..ti). The N continuations share the prefix, so the prefix
   is run through the model once and its KV cache copied to N rows (sample.generate's num_samples),
   instead of N times (`--bench` measures what that saves: the longer the prefix, the more).
   Estimates are memoized per prefix: the search asks for the same prefixes again.
2. Pivotal tokens. Token ti is pivotal when |p(t1..ti) - p(t1..t(i-1))| >= p_gap (0.2 in the report).
   Testing every token costs one estimate per token. The report's recursive subdivision costs far less:
   a segment T after a prefix across which p barely changes (|p(prefix) - p(prefix + T)| < p_gap) is
   taken to hold no pivot and left whole; a segment across which p changes is cut in two and both
   halves are searched, down to single tokens. Only segments with a change are opened, so an answer
   with k pivots costs about 2 + k log2(length) estimates instead of `length`.
3. Where to cut. Not in the middle: where the cumulative sum of the segment's token log-probs reaches
   half the segment's total. p(prefix) is the average of p(prefix + t) over the model's next token t,
   so a token the model was nearly sure of (log-prob ~ 0) cannot move p much: the jumps sit on the
   surprising tokens, and cutting at the half-way point of the surprise splits the candidates evenly.
4. Questions. Only questions with 0.2 <= p(success | Q) <= 0.8 are searched: in an easy question no
   token matters much, and in a hopeless one no token rescues it.
5. Pairs. Each pivotal token gives a DPO pair whose prompt is Q + t1..t(i-1) and whose two completions
   are ONE token each: chosen raises p, rejected lowers it. One of the two is the pivotal token itself;
   the other is an alternative drawn from the first tokens of the N rollouts already sampled at that
   prefix (they are free: they were needed to estimate p_before). Our exact rule:
     - a pivot that raises p is `chosen`; `rejected` is the alternative first token (not the pivot)
       whose rollouts mostly failed (success rate < 1/2), the lowest success rate first, then the one
       seen in most rollouts, then the smallest token id;
     - a pivot that lowers p is `rejected`; `chosen` is the alternative whose rollouts mostly succeeded
       (rate > 1/2), the highest rate first, same tie-breaks;
     - the alternative's own p(success | prefix + alternative) is then estimated with N fresh rollouts,
       and the pair is kept only if the alternative really moves p the other way (below p_before for a
       rejected token, above it for a chosen one). A first-token success rate rests on a handful of
       rollouts, so this check costs one estimate per pivot and keeps chance winners out.
   The pair file is JSON lines in the format dpo.py reads (token ids are authoritative: re-encoding the
   text could merge the prefix and the completion token differently).

Cost, in rollouts: N per question for the filter (the filter's rollouts double as the sampled answers
that get searched; a finished answer is graded, not rolled out), then per searched answer N for each
cut the subdivision makes, at most about k log2(answer tokens) for k pivots, plus N per pivot to check
its alternative. Measured on the toy SFT model (N = 32, ~45-token answers): 2.7 estimates, ~90
rollouts, per searched answer with the log-prob cut, against 4.3 estimates when cutting in the middle;
the filter (32 rollouts per question, of which ~1 in 6 is kept) is over half of the bill.

Where this simplifies the report.
- p(success) is a plain Monte-Carlo fraction from N rollouts at one temperature; the report does not
  state N or the temperature. With N = 32 an estimate has a standard error up to 0.09, so some pivots
  are noise and some real ones are missed; more rollouts sharpen both.
- The answers searched are the filter's own rollouts (the first --answers-per-question of them), not a
  separate sample; the alternative token is one per pivot, chosen by the rule above (the report only
  says it comes from the rollouts). The check of the alternative's own p is our addition. The oracle
  is the synthetic world's exact answer check.
- Not a simplification, but a property of the report's search worth knowing: subdivision stops on a
  segment whose two ends have similar p, so a rise and a fall of p inside one segment cancel and are
  not found. That is the price of searching in log2(length) estimates.
- No rollout batching across different prefixes: the search is sequential by nature (each cut depends
  on the last estimate), and one prefix at a time keeps the code short.

Commands:
    python pts.py --init out/sft --questions 200 --rollouts 32          # -> out/pts/pairs.jsonl + summary
    python pts.py --init out/sft --bench                                 # rollout tok/s: shared prefix vs not
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

import data
import files
import toyworld
import checkpoint
import parallel
from sample import generate, sample_completions, strip_stop

# ----------------------------------------------------------------------------------------------------
# 1. Pivotal tokens by recursive subdivision (model-free: works with any p_success callable)


@dataclass
class Pivot:
    """One pivotal token: answer[position] moved p(success) from p_before to p_after."""

    position: int  # index in the answer; its prefix is answer[:position]
    token: int
    p_before: float  # p(success | answer[:position])
    p_after: float  # p(success | answer[:position + 1])

    @property
    def raises(self) -> bool:
        """Whether the pivot helps: it becomes the chosen token of its pair if so, the rejected one if not."""
        return self.p_after > self.p_before


def split_point(logprobs: list[float], start: int, end: int) -> int:
    """Where to cut the segment start..end-1 (two tokens or more): the cut k makes tokens start..k-1
    hold at least half of the segment's total log-prob, with k as small as that allows.

    Example: log-probs [-6.0, -0.1, -0.1, -0.1] total -6.3; the first token alone holds more than half,
    so the cut is right after it (k = 1), where a middle cut would give k = 2.
    """
    total = sum(logprobs[start:end])
    if total >= 0.0:
        # Every token had probability 1 (log-prob 0): no surprise to split by, so cut in the middle.
        return (start + end) // 2
    cumulative = 0.0
    for k in range(start, end - 1):
        cumulative += logprobs[k]
        if cumulative <= total / 2:  # log-probs are negative: "reaches half" means at or below it
            return k + 1
    # Only the last token is left: it holds more than half of the mass by itself.
    return end - 1


def find_pivotal_tokens(
    tokens, logprobs, p_success: Callable[[tuple[int, ...]], float], p_gap: float = 0.2
) -> list[Pivot]:
    """The pivotal tokens of one sampled answer, in order of position.

    tokens: the answer's ids t1..tn; logprobs: log p(ti | Q, t1..t(i-1)) under the distribution they
    were sampled from; p_success(prefix) -> float for a tuple of answer tokens (the question is the
    callable's business). Each distinct prefix is asked for at most once.

    This is the report's Subdivide(prefix, T): a segment T is kept whole when it has one token or when
    p changes across it by less than p_gap; otherwise it is cut at the log-prob midpoint (split_point)
    and both halves are searched, left first. The recursion is unrolled into an explicit stack, so long
    answers whose cuts peel one token at a time cannot hit Python's recursion limit.
    """
    tokens = [int(t) for t in tokens]
    logprobs = [float(x) for x in logprobs]
    if len(tokens) != len(logprobs):
        raise ValueError(f"{len(tokens)} tokens but {len(logprobs)} log-probs; pass one log-prob per token")
    if not 0.0 < p_gap <= 1.0:
        raise ValueError(f"p_gap must be in (0, 1], got {p_gap}; change --p-gap")
    if not tokens:
        return []

    # p of the first `length` answer tokens, memoized by length (same answer, so same prefix).
    p_memo: dict[int, float] = {}

    def p(length: int) -> float:
        """p(success) after the first `length` answer tokens: each cut asks for both its ends, and
        neighbouring segments share an end, so without the memo most estimates would be paid twice."""
        if length not in p_memo:
            p_memo[length] = float(p_success(tuple(tokens[:length])))
        return p_memo[length]

    segments = []  # (start, end) pairs covering 0..n in order: the report's Subdivide output
    stack = [(0, len(tokens))]
    while stack:
        start, end = stack.pop()
        if end - start == 1 or abs(p(start) - p(end)) < p_gap:
            segments.append((start, end))
            continue
        cut = split_point(logprobs, start, end)
        # Push the right half first so the left half is searched first: segments come out in order.
        stack.append((cut, end))
        stack.append((start, cut))

    # Only a single-token segment can be a pivot; a whole segment with a small change is none.
    return [
        Pivot(start, tokens[start], p(start), p(end))
        for start, end in segments
        if end - start == 1 and abs(p(start) - p(end)) >= p_gap
    ]


# ----------------------------------------------------------------------------------------------------
# 2. p(success | prefix): Monte-Carlo rollouts graded by the oracle, memoized per prefix


@dataclass
class Estimate:
    """What is known at one prefix: p, and the rollouts it came from (their first tokens are the
    alternatives PTS draws from, and the root's rollouts are the answers it searches)."""

    p: float
    continuations: list[list[int]]  # each ends with the stop token when the model stopped in time
    successes: list[bool]


class SuccessEstimator:
    """p(success | prefix) for one question, callable as `estimator(prefix) -> float`.

    sample(prefix, seed) -> continuations: N rollouts after the question + prefix.
    grade(answer_tokens) -> bool: the oracle on a whole answer (prefix + continuation).
    A prefix that is already a whole answer (it ends with the stop token, or reached the answer length
    limit) is graded directly: p is 0 or 1 and costs no rollout.
    """

    def __init__(self, sample: Callable, grade: Callable, stop_token: int, max_answer_tokens: int, seed: int = 0,
                 prompt_ids: list[int] | None = None):
        self.sample, self.grade = sample, grade
        self.prompt_ids = prompt_ids or []  # the question's tokens, which every prefix continues
        self.stop_token, self.max_answer_tokens = stop_token, max_answer_tokens
        self.seed = seed
        self.memo: dict[tuple[int, ...], Estimate] = {}
        self.rollouts = 0  # continuations sampled: the cost PTS is measured in
        self.tokens = 0  # tokens those continuations hold

    def __call__(self, prefix) -> float:
        """p(success | prefix): what find_pivotal_tokens needs; estimate() keeps the rollouts too."""
        return self.estimate(prefix).p

    def estimate(self, prefix) -> Estimate:
        """The memoized Estimate at prefix: rollouts are sampled only the first time it is asked for."""
        # Tuples of plain ints are hashable and equal whatever the caller passed (list, tuple, tensor ids).
        key = tuple(int(t) for t in prefix)
        if key in self.memo:
            return self.memo[key]
        if (key and key[-1] == self.stop_token) or len(key) >= self.max_answer_tokens:
            # Nothing left to sample: the answer is what it is, and the oracle knows p exactly.
            ok = bool(self.grade(list(key)))
            estimate = Estimate(float(ok), [], [])
        else:
            # A new seed per new prefix, in the order they are first asked for: reruns are identical.
            continuations = self.sample(list(key), self.seed + len(self.memo))
            # The oracle reads the whole answer: the prefix may already hold part of the solution.
            successes = [bool(self.grade(list(key) + c)) for c in continuations]
            self.rollouts += len(continuations)
            self.tokens += sum(len(c) for c in continuations)
            estimate = Estimate(sum(successes) / max(1, len(successes)), continuations, successes)
        self.memo[key] = estimate
        return estimate


def model_estimator(model, tokenizer: data.Tokenizer, problem: toyworld.Problem, n_rollouts: int,
                    temperature: float, max_answer_tokens: int, seed: int) -> SuccessEstimator:
    """A SuccessEstimator that samples from `model` in Phi-4's chat format and grades with the world's oracle."""
    prompt_ids = toyworld.prompt_ids(tokenizer, problem, chat=True)
    stop = tokenizer.eos_id  # <|im_end|>: the end of the assistant turn
    # An answer may not run past the context either: cap its length so that question + answer fits.
    max_answer_tokens = min(max_answer_tokens, model.config.max_seq_len - len(prompt_ids))
    if max_answer_tokens < 1:
        raise ValueError(f"the question takes {len(prompt_ids)} tokens, the whole context; use a longer-context model")

    def sample(prefix: list[int], seed: int) -> list[list[int]]:
        """n_rollouts continuations of the question + prefix, each at most the answer budget left."""
        # One prompt, n_rollouts continuations: the shared prefix is prefilled once (batch 1), then its
        # KV cache is copied to N rows; each continuation ends just after its stop token.
        return sample_completions(model, [prompt_ids + prefix], n_rollouts, max_answer_tokens - len(prefix), (stop,),
                                  temperature, seed=seed, vocab_size=tokenizer.vocab_size)[0]

    def grade(answer: list[int]) -> bool:
        """The world's oracle on a whole answer: True when its last "Answer:" number is right."""
        # The oracle reads text; <|im_end|> is the turn's end, not part of what the model answered.
        return toyworld.check(problem, tokenizer.decode(strip_stop(answer, (stop,))))

    return SuccessEstimator(sample, grade, stop, max_answer_tokens, seed, prompt_ids)


@torch.no_grad()
def answer_logprobs(model, prompt_ids: list[int], answer: list[int], temperature: float,
                    vocab_size: int | None = None) -> list[float]:
    """log p(answer[i] | prompt, answer[:i]) under the temperature-scaled distribution it was sampled
    from (over the first vocab_size ids, as generate samples), for every i, in one forward pass."""
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids + answer], device=device)  # (1, T)
    # Position j predicts token j + 1: the answer's tokens are predicted by positions P-1 .. T-2.
    logits = model(idx)[0, len(prompt_ids) - 1 : -1, :vocab_size].float() / temperature  # (n, V)
    # The scaling by 1/temperature must match generate's: PTS cuts where the sampler was surprised,
    # and at temperature 1.5 a token's surprise is not the one at temperature 1.
    targets = torch.tensor(answer, device=device)[:, None]  # (n, 1)
    return logits.log_softmax(dim=-1).gather(-1, targets)[:, 0].tolist()


# ----------------------------------------------------------------------------------------------------
# 3. From pivots to one-token DPO pairs


@dataclass
class TokenPair:
    """A one-token preference at answer[:position]: chosen raises p(success), rejected lowers it."""

    prefix: list[int]  # the answer tokens before the pivot (the question comes in front of them)
    chosen: int
    rejected: int
    pivot: Pivot
    p_chosen: float  # p(success | prefix + chosen)
    p_rejected: float  # p(success | prefix + rejected)


def alternative_token(estimate: Estimate, pivot: Pivot) -> int | None:
    """The contrasting token for a pivot, from the first tokens of the rollouts at its prefix.

    Raising pivot: the first token whose rollouts mostly failed; lowering pivot: the one whose rollouts
    mostly succeeded (see the module docstring for the tie-breaks). None when no rollout started with a
    token other than the pivot that fits.
    """
    counts: dict[int, list[int]] = {}  # first token -> [rollouts starting with it, successes among them]
    for continuation, ok in zip(estimate.continuations, estimate.successes):
        # The pivot itself is no alternative: a pair needs two different tokens.
        if continuation and continuation[0] != pivot.token:
            tally = counts.setdefault(continuation[0], [0, 0])
            tally[0] += 1
            tally[1] += int(ok)
    if pivot.raises:
        # The worst alternative: lowest success rate, then the most rollouts (best evidence), then id.
        candidates = [(s / n, -n, token) for token, (n, s) in counts.items() if s / n < 0.5]
    else:
        # The best alternative: highest success rate (sorted as its negative), same tie-breaks.
        candidates = [(-s / n, -n, token) for token, (n, s) in counts.items() if s / n > 0.5]
    return min(candidates)[2] if candidates else None


def pivot_pair(estimator: SuccessEstimator, answer: list[int], pivot: Pivot) -> TokenPair | None:
    """The DPO pair of one pivot, or None when no alternative moves p the other way (see the docstring)."""
    prefix = answer[: pivot.position]
    # The estimate at the prefix exists already (the search computed p_before): its rollouts are free.
    alternative = alternative_token(estimator.estimate(prefix), pivot)
    if alternative is None:
        return None
    p_alternative = estimator(prefix + [alternative])  # N fresh rollouts, memoized like every prefix
    # Kept only when the alternative moves p the other way from p_before than the pivot does, so that
    # chosen and rejected sit on opposite sides of it (their p differ by more than p_gap).
    if pivot.raises and p_alternative < pivot.p_before:
        return TokenPair(prefix, pivot.token, alternative, pivot, pivot.p_after, p_alternative)
    if not pivot.raises and p_alternative > pivot.p_before:
        return TokenPair(prefix, alternative, pivot.token, pivot, p_alternative, pivot.p_after)
    return None


@dataclass
class QuestionResult:
    """What the search did on one question."""

    p: float  # p(success | question), the filter's estimate
    kept: bool  # inside the filter band, so searched
    answers: int = 0  # sampled answers searched
    pivots: list[Pivot] = field(default_factory=list)
    pairs: list[TokenPair] = field(default_factory=list)
    no_pair: int = 0  # pivots that gave no pair: no alternative, or it failed the check


def search_question(
    estimator: SuccessEstimator,
    logprobs_of: Callable[[list[int]], list[float]],
    p_gap: float = 0.2,
    answers_per_question: int = 2,
    p_min: float = 0.2,
    p_max: float = 0.8,
) -> QuestionResult:
    """PTS on one question: the filter, then the pivots of a few sampled answers and their pairs.

    The answers searched are the first `answers_per_question` rollouts of the filter's estimate (an
    unbiased sample of the model's answers, already paid for). Pairs repeated across answers (two
    answers sharing a prefix can share a pivot) are kept once.
    """
    # The empty prefix is the question alone: its p is the filter (report section 4.3 keeps questions
    # the model sometimes solves), and its rollouts are the answers searched.
    root = estimator.estimate(())
    result = QuestionResult(root.p, p_min <= root.p <= p_max)
    if not result.kept:
        return result
    seen = set()  # (prefix, chosen, rejected) of the pairs kept so far
    for answer in root.continuations[:answers_per_question]:
        result.answers += 1
        # The estimator is the p_success callable: its memo is shared by every answer of the question,
        # so prefixes two answers have in common (always the empty one) are estimated once.
        pivots = find_pivotal_tokens(answer, logprobs_of(answer), estimator, p_gap)
        result.pivots += pivots
        for pivot in pivots:
            pair = pivot_pair(estimator, answer, pivot)
            if pair is None:
                result.no_pair += 1
                continue
            key = (tuple(pair.prefix), pair.chosen, pair.rejected)
            if key not in seen:
                seen.add(key)
                result.pairs.append(pair)
    return result


def pair_record(tokenizer: data.Tokenizer, prompt_ids: list[int], problem: toyworld.Problem, pair: TokenPair,
                n_rollouts: int) -> dict:
    """One line of the pair file, in the format dpo.py reads: text for people, ids for training."""
    # The prompt is the question and the answer so far; each completion is the one token after it.
    full_prompt = prompt_ids + pair.prefix
    return {
        "prompt": tokenizer.decode(full_prompt),
        "chosen": tokenizer.decode([pair.chosen]),
        "rejected": tokenizer.decode([pair.rejected]),
        "prompt_ids": full_prompt,
        "chosen_ids": [pair.chosen],
        "rejected_ids": [pair.rejected],
        "source": "pts",
        "question": problem.question,
        "answer": problem.answer,
        "position": pair.pivot.position,  # index of the pivot in the sampled answer
        "pivot": "raises" if pair.pivot.raises else "lowers",  # which of chosen/rejected is the pivot
        "p_before": pair.pivot.p_before,
        "p_after_chosen": pair.p_chosen,
        "p_after_rejected": pair.p_rejected,
        "rollouts": n_rollouts,
    }


# ----------------------------------------------------------------------------------------------------
# 4. Benchmark: rollouts from one prefix, with and without the shared-prefix KV cache


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
        outs = [generate(model, idx, budget, temperature, seed=seed, num_samples=n, **options)]
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
        for row in out[:, idx.shape[1]:].tolist():
            tokens += row.index(stop) + 1 if stop in row else len(row)
    return seconds, tokens


def bench(model, tokenizer, problem, n_rollouts, temperature, max_answer_tokens, seed, repeats=3) -> dict:
    """Rollout tokens/s from prefixes at 0% .. 90% of a sampled answer, three ways, side by side.

    The search asks for prefixes all along an answer, so the overall line (every prefix's tokens over
    every prefix's time) is the figure that matches a PTS run. Returns {mode: overall tokens/s}.
    """
    device = next(model.parameters()).device
    stop = tokenizer.eos_id
    prompt_ids = toyworld.prompt_ids(tokenizer, problem, chat=True)
    max_answer_tokens = min(max_answer_tokens, model.config.max_seq_len - len(prompt_ids))
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
        budget = max_answer_tokens - len(prefix)
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

HELP_EPILOG = """\
cost in rollouts: every p(success | prefix) estimate samples --rollouts continuations (one batch).
Each question costs one estimate for the filter (its rollouts are also the answers searched). Each of
the --answers-per-question answers of a kept question costs one estimate per cut of the recursive
subdivision (at most ~k log2(answer length) for k pivots) plus one per pivot to check the alternative
token. Toy SFT model, --rollouts 32: ~2.7 estimates (~90 rollouts) per searched answer, so 400
questions cost ~23,500 rollouts (55% of them the filter's) and give ~70 pairs in ~3 minutes on one
CPU core. The summary reports the exact counts.
"""

def parse_args() -> argparse.Namespace:
    """The command line, with impossible settings rejected before a model is loaded (ValueError naming
    the flag to change): a bad flag should cost a second, not a checkpoint load."""
    parser = argparse.ArgumentParser(
        description="Pivotal Token Search: one-token DPO pairs at the tokens that decide success (Phi-4 section 4.3).",
        epilog=HELP_EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--init", default="out/sft", help="chat-format checkpoint folder to search (an SFT model)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder holding rl.jsonl (the questions)")
    parser.add_argument("--out", default="out/pts/pairs.jsonl", help="pair file (JSON lines); a .summary.json goes beside it")
    parser.add_argument("--questions", type=int, default=100, help="questions of rl.jsonl to try (the first N)")
    parser.add_argument("--rollouts", type=int, default=32, help="rollouts per p(success | prefix) estimate")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of rollouts and answers")
    parser.add_argument("--p-gap", type=float, default=0.2, help="a token is pivotal when it moves p(success) by this much")
    parser.add_argument("--p-min", type=float, default=0.2, help="search only questions with p(success) >= this")
    parser.add_argument("--p-max", type=float, default=0.8, help="search only questions with p(success) <= this")
    parser.add_argument("--answers-per-question", type=int, default=2, help="sampled answers searched per kept question")
    parser.add_argument("--max-answer-tokens", type=int, default=120, help="longest answer (rollouts stop there)")
    parser.add_argument("--seed", type=int, default=1337, help="rollout seed (each prefix gets its own, deterministically)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    parser.add_argument("--bench", action="store_true",
                        help="measure rollout tokens/s with and without the shared-prefix cache, then exit")
    args = parser.parse_args()
    if args.rollouts < 2:
        raise ValueError(f"--rollouts {args.rollouts} cannot estimate a probability; use 2 or more (32 is typical)")
    if args.temperature <= 0:
        raise ValueError("--temperature must be > 0: greedy rollouts are all the same answer, so p is 0 or 1")
    if not 0.0 <= args.p_min <= args.p_max <= 1.0:
        raise ValueError(f"need 0 <= --p-min <= --p-max <= 1, got {args.p_min} and {args.p_max}")
    if args.questions < 1 or args.answers_per_question < 1:
        raise ValueError("--questions and --answers-per-question must be at least 1")
    return args


def run_bench(args: argparse.Namespace, model, tokenizer: data.Tokenizer, problems: list[toyworld.Problem],
              problems_file: str) -> None:
    """--bench: the rollout speed table on the first question, and the two speed-ups it adds up to."""
    if not problems:
        raise ValueError(f"{problems_file} holds no questions; --bench needs one")
    overall = bench(model, tokenizer, problems[0], args.rollouts, args.temperature, args.max_answer_tokens,
                    args.seed)
    print(f"shared prefix vs re-running it: {overall['shared'] / overall['repeat']:.2f}x "
          f"(same samples, same batch), {overall['shared'] / overall['serial']:.1f}x (one rollout at a time)")


def run_search(args: argparse.Namespace, model, tokenizer: data.Tokenizer,
               problems: list[toyworld.Problem]) -> tuple[list[dict], dict, float]:
    """PTS over every question: (pair records for dpo.py, running counts for the summary, seconds).

    The counts are what the summary reports and what the help's cost estimate is checked against;
    `estimates` is the number of distinct prefixes looked at, `rollouts` what they cost.
    """
    start = time.perf_counter()
    records, totals = [], dict(kept=0, too_easy=0, too_hard=0, answers=0, pivots=0, raising=0,
                               lowering=0, no_pair=0, rollouts=0, rollout_tokens=0, estimates=0)
    bar = tqdm(problems, desc="pts", unit="question")
    for i, problem in enumerate(bar):
        # Seeds never overlap across questions: each question gets a block of 100,003 prefix seeds.
        estimator = model_estimator(model, tokenizer, problem, args.rollouts, args.temperature,
                                    args.max_answer_tokens, seed=args.seed + 100_003 * i)
        # The log-probs come from the same temperature as the samples: the distribution that drew them.
        result = search_question(
            estimator,
            lambda answer: answer_logprobs(model, estimator.prompt_ids, answer, args.temperature,
                                           tokenizer.vocab_size),
            args.p_gap, args.answers_per_question, args.p_min, args.p_max,
        )
        totals["kept"] += result.kept
        totals["too_easy"] += result.p > args.p_max
        totals["too_hard"] += result.p < args.p_min
        totals["answers"] += result.answers
        totals["pivots"] += len(result.pivots)
        totals["raising"] += sum(pivot.raises for pivot in result.pivots)
        totals["lowering"] += sum(not pivot.raises for pivot in result.pivots)
        totals["no_pair"] += result.no_pair
        totals["rollouts"] += estimator.rollouts
        totals["rollout_tokens"] += estimator.tokens
        totals["estimates"] += len(estimator.memo)
        # Records keep question order, so the pairs of one question sit together in the file.
        records += [pair_record(tokenizer, estimator.prompt_ids, problem, pair, args.rollouts) for pair in result.pairs]
        bar.set_postfix_str(f"kept {totals['kept']}, pivots {totals['pivots']}, pairs {len(records)}, "
                            f"rollouts {totals['rollouts']:,}")
    bar.close()
    return records, totals, time.perf_counter() - start


def write_results(args: argparse.Namespace, problems: list[toyworld.Problem], records: list[dict], totals: dict,
                  seconds: float) -> None:
    """The pair file, its summary beside it, and the same counts on the terminal."""
    rollouts_per_pair = round(totals["rollouts"] / len(records)) if records else None
    summary = dict(questions=len(problems), **totals, pairs=len(records), seconds=round(seconds, 1),
                   rollouts_per_pair=rollouts_per_pair, config=vars(args))
    # Written only once the search is done, atomically: dpo.py never reads half a file.
    files.write_jsonl(args.out, records)
    summary_file = os.path.splitext(args.out)[0] + ".summary.json"
    files.atomic_write_text(summary_file, json.dumps(summary, indent=2))
    print(
        f"questions: {len(problems)} tried, {totals['kept']} kept ({args.p_min} <= p <= {args.p_max}; "
        f"{totals['too_easy']} too easy, {totals['too_hard']} too hard)\n"
        f"answers searched: {totals['answers']}, pivots found: {totals['pivots']} "
        f"({totals['raising']} raise p, {totals['lowering']} lower it), {totals['no_pair']} without a pair "
        f"(no alternative, or it failed the check)\n"
        f"pairs: {len(records)} -> {args.out}\n"
        f"rollouts: {totals['rollouts']:,} ({totals['rollout_tokens']:,} tokens, {totals['estimates']:,} prefixes), "
        f"{rollouts_per_pair or '-'} per pair, {seconds:.0f}s\n"
        f"summary -> {summary_file}"
    )


def main() -> None:
    """Load the questions and the model, then either benchmark rollouts or run the search."""
    args = parse_args()
    device = parallel.resolve_device(args.device)
    problems_file = os.path.join(args.data, "rl.jsonl")
    if not os.path.exists(problems_file):
        raise ValueError(f"{problems_file} not found; build the data with `python data.py` or pass --data")
    problems = toyworld.read_problems(problems_file)[: args.questions]
    model, tokenizer = checkpoint.load_model(args.init, device)
    print(f"loaded {args.init}: {model.num_params():,} parameters, on {device}")
    if args.bench:
        run_bench(args, model, tokenizer, problems, problems_file)
        sys.exit(0)  # a benchmark writes no pairs: it must not overwrite a pair file of a real run
    # The resolved config, printed before the long search so a log shows what produced the pairs.
    print(json.dumps({k: v for k, v in vars(args).items() if k != "bench"}))
    records, totals, seconds = run_search(args, model, tokenizer, problems)
    write_results(args, problems, records, totals, seconds)


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        # Every message names the flag to change; a traceback would bury it.
        sys.exit(f"error: {error}")
