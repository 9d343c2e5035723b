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
5. Pairs. Each pivotal token gives a DPO pair whose two answers part at ONE token: after
   Q + t1..t(i-1), chosen raises p, rejected lowers it. One of the two is the pivotal token itself;
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
   The pair file writes Q alone as the prompt and the answer so far, t1..t(i-1), at the start of both
   completions. DPO's term is the same either way with summed log-probs (dpo.py's default; not with
   --average-logprobs): the shared tokens' log-ratios are in both rewards and cancel from the margin.
   The NLL term dpo.py adds (RPO, the chosen completion's mean NLL) is not: it anchors the answer so
   far, as it anchors a whole answer in a full-length pair, and not one token. With the one token alone
   as its chosen answer, PTS-DPO from SFT lost points on the problems its pivots are not about (dev: 92%
   of them solved, full-length DPO 96%; LAB.md, "PTS pairs that carry the answer so far").
   The pair file is JSON lines in the format dpo.py reads (token ids are authoritative: re-encoding the
   text could merge the prefix and the completion token differently).

Cost, in rollouts: `python pts.py --help` spells it out, with what the toy SFT model measured (the log-prob
cut needs 2.7 estimates per searched answer, cutting in the middle 4.3).

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
- Within a question, no rollout batching across different prefixes: the search is sequential by nature
  (each cut depends on the last estimate), and one prefix at a time keeps the code short. Only the
  filter's estimates, which depend on nothing, are sampled for all questions in one batched call.

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
import cli
import parallel
import speed
from sample import sample_completions, strip_stop

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
    # BEGIN SOLUTION pivotal_tokens: the smallest k such that tokens start..k-1 hold half the total log-prob (middle if it is 0)
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
    # END SOLUTION pivotal_tokens


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
    tokens = [int(t) for t in tokens]  # tensor or numpy ids -> ints, so the prefixes hash as memo keys
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

    # BEGIN SOLUTION pivotal_tokens: subdivide segments from (0, n) with a stack, left first; cut at split_point while p changes >= p_gap
    segments = []  # (start, end) pairs covering 0..n in order: the report's Subdivide output
    stack = [(0, len(tokens))]
    while stack:
        start, end = stack.pop()
        if end - start == 1 or abs(p(start) - p(end)) < p_gap:  # a single token, or p flat across it
            segments.append((start, end))
            continue
        cut = split_point(logprobs, start, end)  # half the surprise, not half the length (docstring, 3.)
        # Push the right half first so the left half is searched first: segments come out in order.
        stack.append((cut, end))
        stack.append((start, cut))

    # Only a single-token segment can be a pivot; a whole segment with a small change is none.
    return [
        Pivot(start, tokens[start], p(start), p(end))
        for start, end in segments
        if end - start == 1 and abs(p(start) - p(end)) >= p_gap
    ]
    # END SOLUTION pivotal_tokens


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
        self.seed = seed  # base of the per-prefix seeds; run_search gives each question its own block
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
            self.memo[key] = Estimate(float(ok), [], [])  # no rollouts, so no alternatives at a finished answer
            return self.memo[key]
        return self.record(key, self.sample(list(key), self.next_seed()))

    def next_seed(self) -> int:
        """The seed of the next new prefix: one per prefix, in the order they are first asked for, so
        reruns are identical."""
        return self.seed + len(self.memo)

    def record(self, prefix, continuations: list[list[int]]) -> Estimate:
        """Grade the rollouts sampled at prefix (with next_seed()) and memoize the estimate. estimate()
        samples them itself; run_search samples every question's first estimate in one batched call."""
        key = tuple(int(t) for t in prefix)
        # The oracle reads the whole answer: the prefix may already hold part of the solution.
        successes = [bool(self.grade(list(key) + c)) for c in continuations]
        self.rollouts += len(continuations)
        self.tokens += sum(len(c) for c in continuations)
        self.memo[key] = Estimate(sum(successes) / max(1, len(successes)), continuations, successes)  # max: no 0/0
        return self.memo[key]


def model_estimator(model, tokenizer: data.Tokenizer, problem: toyworld.Problem, n_rollouts: int,
                    temperature: float, max_answer_tokens: int, seed: int) -> SuccessEstimator:
    """A SuccessEstimator that samples from `model` in Phi-4's chat format and grades with the world's oracle."""
    prompt_ids = toyworld.prompt_ids(tokenizer, problem, chat=True)  # ends where the assistant turn opens
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
    return logits.log_softmax(dim=-1).gather(-1, targets)[:, 0].tolist()  # (n, V) -> (n, 1) -> n floats


def success_curve(estimator: SuccessEstimator, answer: list[int]) -> list[float]:
    """p(success | answer[:i]) for i = 0 .. len(answer): every prefix estimated, the report's Figure 3.

    The search never needs this (it opens only the segments where p changes); it is for showing what
    the search exploits: p stays flat along most of an answer and jumps at a few tokens.
    """
    return [estimator(answer[:i]) for i in range(len(answer) + 1)]


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
        if continuation and continuation[0] != pivot.token:  # empty when no answer budget was left
            tally = counts.setdefault(continuation[0], [0, 0])
            tally[0] += 1
            tally[1] += int(ok)
    if pivot.raises:
        # The worst alternative: lowest success rate, then the most rollouts (best evidence), then id.
        candidates = [(s / n, -n, token) for token, (n, s) in counts.items() if s / n < 0.5]
    else:
        # The best alternative: highest success rate (sorted as its negative), same tie-breaks.
        candidates = [(-s / n, -n, token) for token, (n, s) in counts.items() if s / n > 0.5]
    return min(candidates)[2] if candidates else None  # tuples compare rate, then -count, then id


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
            key = (tuple(pair.prefix), pair.chosen, pair.rejected)  # a tuple: lists cannot go in a set
            if key not in seen:
                seen.add(key)
                result.pairs.append(pair)
    return result


def pair_record(tokenizer: data.Tokenizer, prompt_ids: list[int], problem: toyworld.Problem, pair: TokenPair,
                n_rollouts: int) -> dict:
    """One line of the pair file, in the format dpo.py reads: text for people, ids for training."""
    # The prompt is the question; both completions are the answer so far, then their own token (point 5 of
    # the module docstring: the same DPO margin as one-token completions, and an NLL term on the whole prefix).
    chosen, rejected = pair.prefix + [pair.chosen], pair.prefix + [pair.rejected]
    return {
        "prompt": tokenizer.decode(prompt_ids),
        "chosen": tokenizer.decode(chosen),
        "rejected": tokenizer.decode(rejected),
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "source": "pts",
        "question": problem.question,
        "answer": problem.answer,
        "position": pair.pivot.position,  # index of the pivot in the sampled answer: where the completions part
        "pivot": "raises" if pair.pivot.raises else "lowers",  # which of chosen/rejected is the pivot
        "p_before": pair.pivot.p_before,
        "p_after_chosen": pair.p_chosen,
        "p_after_rejected": pair.p_rejected,
        "rollouts": n_rollouts,
    }


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
    parser = cli.Parser(
        description="Pivotal Token Search: one-token DPO pairs at the tokens that decide success (Phi-4 section 4.3).",
        epilog=HELP_EPILOG,
    )
    parser.add_argument("--init", default="out/sft", help="chat-format checkpoint folder to search (an SFT model)")
    parser.add_argument("--data", default=data.TOY_DATA_DIR, help="data folder holding rl.jsonl (the questions)")
    parser.add_argument("--out", default="out/pts/pairs.jsonl", help="pair file (JSON lines); a .summary.json goes beside it")
    parser.add_argument("--questions", type=cli.at_least(1), default=100, help="questions of rl.jsonl to try (the first N)")
    # Two rollouts are the fewest that can estimate a probability; 32 is typical.
    parser.add_argument("--rollouts", type=cli.at_least(2), default=32, help="rollouts per p(success | prefix) estimate")
    # Greedy rollouts are all the same answer, so p would be 0 or 1: the temperature must be positive.
    parser.add_argument("--temperature", type=cli.positive, default=1.0, help="sampling temperature of rollouts and answers")
    parser.add_argument("--p-gap", type=cli.between(0.0, 1.0, low_open=True), default=0.2,
                        help="a token is pivotal when it moves p(success) by this much")
    parser.add_argument("--p-min", type=cli.between(0.0, 1.0), default=0.2, help="search only questions with p(success) >= this")
    parser.add_argument("--p-max", type=cli.between(0.0, 1.0), default=0.8, help="search only questions with p(success) <= this")
    parser.add_argument("--answers-per-question", type=cli.at_least(1), default=2, help="sampled answers searched per kept question")
    parser.add_argument("--max-answer-tokens", type=cli.at_least(1), default=120, help="longest answer (rollouts stop there)")
    parser.add_argument("--seed", type=int, default=1337, help="rollout seed (each prefix gets its own, deterministically)")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--bench", action="store_true",
                        help="measure rollout tokens/s with and without the shared-prefix cache, then exit")
    args = parser.parse_args()
    if args.p_min > args.p_max:
        parser.error(f"--p-min {args.p_min} must not exceed --p-max {args.p_max}")
    return args


def run_bench(args: argparse.Namespace, model, tokenizer: data.Tokenizer, problems: list[toyworld.Problem],
              problems_file: str) -> None:
    """--bench: the rollout speed table on the first question, and the two speed-ups it adds up to."""
    if not problems:
        raise ValueError(f"{problems_file} holds no questions; --bench needs one")
    overall = speed.rollout_bench(model, tokenizer, problems[0], args.rollouts, args.temperature, args.max_answer_tokens,
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
                               lowering=0, no_pair=0, rollouts=0, rollout_tokens=0, estimates=0, decision_pivots=0)
    decision_ids = {tokenizer.encode(f" {word}")[0] for word in toyworld.DECISIONS.values()}  # " gets", ...
    figure = None  # Figure 3: the first searched answer with a pivot at a decision word
    # Seeds never overlap across questions: each question gets a block of 100,003 prefix seeds.
    estimators = [model_estimator(model, tokenizer, problem, args.rollouts, args.temperature, args.max_answer_tokens,
                                  seed=args.seed + 100_003 * i) for i, problem in enumerate(problems)]
    # The filter's estimate (the question alone) of every question in one call of the batched engine: its
    # rows stay full, where one question's rollouts fill an eighth of them (1.7x sooner on one thread).
    # Each question keeps its own seed, so the rollouts are those its own call would have drawn; the
    # engine stops each row at the context, as the estimator's own cap does.
    roots = sample_completions(model, [e.prompt_ids for e in estimators], args.rollouts, args.max_answer_tokens,
                               (tokenizer.eos_id,), args.temperature, seed=[e.next_seed() for e in estimators],
                               progress="pts: the filter's rollouts", vocab_size=tokenizer.vocab_size)
    for estimator, continuations in zip(estimators, roots):
        estimator.record((), continuations)
    bar = tqdm(zip(problems, estimators), total=len(problems), desc="pts", unit="question")
    for problem, estimator in bar:
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
        totals["decision_pivots"] += sum(pivot.token in decision_ids for pivot in result.pivots)
        if figure is None and any(pivot.token in decision_ids for pivot in result.pivots):
            figure = figure3(estimator, tokenizer, problem, args, decision_ids,
                             lambda answer: answer_logprobs(model, estimator.prompt_ids, answer, args.temperature,
                                                            tokenizer.vocab_size))
        # Records keep question order, so the pairs of one question sit together in the file.
        records += [pair_record(tokenizer, estimator.prompt_ids, problem, pair, args.rollouts) for pair in result.pairs]
        bar.set_postfix_str(f"kept {totals['kept']}, pivots {totals['pivots']}, pairs {len(records)}, "
                            f"rollouts {totals['rollouts']:,}")
    bar.close()
    totals["figure3"] = figure
    return records, totals, time.perf_counter() - start


def figure3(estimator: SuccessEstimator, tokenizer: data.Tokenizer, problem: toyworld.Problem,
            args: argparse.Namespace, decision_ids: set[int], logprobs_of) -> dict | None:
    """p(success) at every prefix of the first searched answer of this question with a decision-word pivot."""
    for answer in estimator.estimate(()).continuations[: args.answers_per_question]:
        # Memoized: finding the pivots again costs no rollout; the curve below costs one estimate per token.
        pivots = find_pivotal_tokens(answer, logprobs_of(answer), estimator, args.p_gap)
        if any(pivot.token in decision_ids for pivot in pivots):
            return {"question": problem.question, "tokens": [tokenizer.decode([t]) for t in answer],
                    "p_success": success_curve(estimator, answer),
                    # Pivot at position k moves p from p_success[k] to p_success[k + 1]: marked after it.
                    "pivots": [{"index": p.position + 1, "p_after": p.p_after, "token": tokenizer.decode([p.token])}
                               for p in pivots]}
    return None


def write_results(args: argparse.Namespace, problems: list[toyworld.Problem], records: list[dict], totals: dict,
                  seconds: float) -> None:
    """The pair file, its summary beside it, and the same counts on the terminal."""
    figure = totals.pop("figure3")
    if figure is not None:
        files.write_json(os.path.join(os.path.dirname(args.out) or ".", "figure3.json"), figure)
    rollouts_per_pair = round(totals["rollouts"] / len(records)) if records else None  # None: no pair found
    summary = dict(questions=len(problems), **totals, pairs=len(records), seconds=round(seconds, 1),
                   rollouts_per_pair=rollouts_per_pair, config=vars(args))
    # Written only once the search is done, atomically: dpo.py never reads half a file.
    files.write_jsonl(args.out, records)
    summary_file = os.path.splitext(args.out)[0] + ".summary.json"  # pairs.jsonl -> pairs.summary.json
    files.atomic_write_text(summary_file, json.dumps(summary, indent=2))
    print(
        f"questions: {len(problems)} tried, {totals['kept']} kept ({args.p_min} <= p <= {args.p_max}; "
        f"{totals['too_easy']} too easy, {totals['too_hard']} too hard)\n"
        f"answers searched: {totals['answers']}, pivots found: {totals['pivots']} "
        f"({totals['raising']} raise p, {totals['lowering']} lower it; {totals['decision_pivots']} at a decision "
        f"word), {totals['no_pair']} without a pair "
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
    problems = toyworld.read_problems(problems_file)[: args.questions]  # the first N: a bigger run extends a smaller
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
    cli.main(main)  # every error names the flag or file to change, in one line: a traceback would bury it
