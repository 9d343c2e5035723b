"""pts.py: Pivotal Token Search checked against mocks whose answers are known.

- find_pivotal_tokens on a success probability that is a step function of the prefix length: exactly the
  steps of at least p_gap are found, with their p_before and p_after, wherever the cuts fall;
- the cut is the cumulative log-prob midpoint, not the middle token;
- each prefix is evaluated at most once, and evaluations grow with log(length), not length;
- rollouts from a shared prefix (prefill once, expand the KV cache) equal rollouts that re-run the prefix;
- pair construction on a mock world: the question filter, the alternative-token rule, the check of the
  alternative, one-token completions and the JSONL fields dpo.py reads.
"""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

import data
import pts
import toyworld
from model import KVCache, ModelConfig
from pts import (
    Estimate,
    Pivot,
    SuccessEstimator,
    alternative_token,
    answer_logprobs,
    find_pivotal_tokens,
    model_estimator,
    pair_record,
    pivot_pair,
    search_question,
    success_curve,
    split_point,
)
from sample import generate


@pytest.fixture(autouse=True)
def one_thread():
    """Run this file's tiny models on one thread: a second one gains nothing at this size, and waiting on
    it costs 100x when another process holds the other core (seen on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class CountingSuccess:
    """A p_success mock: a known function of the prefix length that records every prefix it is asked for."""

    def __init__(self, p_of_length):
        self.p_of_length = p_of_length
        self.calls = []

    def __call__(self, prefix):
        self.calls.append(tuple(prefix))
        return self.p_of_length(len(prefix))


def steps(length: int) -> float:
    """p jumps up by 0.4 at token 9, slips by 0.1 at token 19 (below p_gap), falls by 0.7 at token 29."""
    if length < 10:
        return 0.5
    if length < 20:
        return 0.9
    if length < 30:
        return 0.8
    return 0.1


# ----------------------------------------------------------------------------------------------------
# find_pivotal_tokens


@pytest.mark.exercise("pivotal_tokens")
@pytest.mark.parametrize("logprob_seed", [None, 0, 1, 2, 3])
def test_a_step_function_of_the_prefix_gives_exactly_its_pivots_with_their_probabilities(logprob_seed):
    tokens = list(range(100, 140))
    # Uniform log-probs put the cuts in the middle; random ones put them anywhere: the answer must not change.
    rng = random.Random(logprob_seed)
    logprobs = [-1.0] * 40 if logprob_seed is None else [-rng.expovariate(1.0) for _ in tokens]
    pivots = find_pivotal_tokens(tokens, logprobs, CountingSuccess(steps), p_gap=0.2)
    assert pivots == [Pivot(9, 109, 0.5, 0.9), Pivot(29, 129, 0.8, 0.1)]
    assert pivots[0].raises and not pivots[1].raises


@pytest.mark.exercise("pivotal_tokens")
def test_a_smaller_gap_also_finds_the_small_step():
    pivots = find_pivotal_tokens(list(range(40)), [-1.0] * 40, CountingSuccess(steps), p_gap=0.05)
    assert [p.position for p in pivots] == [9, 19, 29]


@pytest.mark.exercise("pivotal_tokens")
def test_a_rise_and_a_fall_inside_one_segment_cancel_and_are_not_searched():
    # The report's algorithm keeps a segment whole when its two ends agree: a known blind spot.
    bump = CountingSuccess(lambda n: 0.9 if 10 <= n < 20 else 0.5)
    assert find_pivotal_tokens(list(range(40)), [-1.0] * 40, bump, p_gap=0.2) == []
    assert sorted(map(len, bump.calls)) == [0, 40]


@pytest.mark.exercise("pivotal_tokens")
def test_the_cut_is_where_the_cumulative_log_prob_reaches_half_the_segment_total():
    assert split_point([-6.0, -0.1, -0.1, -0.1], 0, 4) == 1  # the first token holds most of the mass
    assert split_point([-1.0] * 8, 0, 8) == 4  # uniform mass: the middle
    assert split_point([-0.1, -0.1, -0.1, -6.0], 0, 4) == 3  # the last token holds most: cut before it
    assert split_point([0.0] * 6, 0, 6) == 3  # no mass at all: the middle
    assert split_point([-5.0, -1.0, -1.0, -1.0, -1.0], 1, 5) == 3  # a segment that starts inside the answer


@pytest.mark.exercise("pivotal_tokens")
def test_a_sequence_whose_first_token_carries_most_log_prob_is_split_right_after_it():
    success = CountingSuccess(lambda n: 0.0 if n < 5 else 1.0)
    find_pivotal_tokens(list(range(8)), [-10.0] + [-0.1] * 7, success, p_gap=0.2)
    # Both ends first, then the cut: after token 0 (prefix length 1), not in the middle (length 4).
    assert [len(c) for c in success.calls[:3]] == [0, 8, 1]


@pytest.mark.exercise("pivotal_tokens")
def test_p_success_is_called_at_most_once_per_distinct_prefix():
    success = CountingSuccess(steps)
    rng = random.Random(5)
    find_pivotal_tokens(list(range(40)), [-rng.expovariate(1.0) for _ in range(40)], success, p_gap=0.05)
    assert len(success.calls) == len(set(success.calls))


@pytest.mark.exercise("pivotal_tokens")
def test_evaluations_grow_with_the_log_of_the_length_not_the_length():
    def calls(length: int) -> int:
        success = CountingSuccess(lambda n: 0.2 if n <= length // 3 else 0.8)  # one pivot, at length // 3
        pivots = find_pivotal_tokens(list(range(length)), [-1.0] * length, success, p_gap=0.2)
        assert [p.position for p in pivots] == [length // 3]
        return len(success.calls)

    short, long = calls(16), calls(256)
    # Bisection towards one pivot: the two ends, then about one new prefix per halving.
    assert long <= 2 + 2 * math.log2(256)
    assert long - short <= 2 * (math.log2(256) - math.log2(16))  # 16x the length, a few more calls


def test_mismatched_inputs_and_a_bad_gap_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="log-probs"):
        find_pivotal_tokens([1, 2, 3], [-1.0], CountingSuccess(steps))
    with pytest.raises(ValueError, match="--p-gap"):
        find_pivotal_tokens([1, 2, 3], [-1.0] * 3, CountingSuccess(steps), p_gap=0.0)
    assert find_pivotal_tokens([], [], CountingSuccess(steps)) == []


# ----------------------------------------------------------------------------------------------------
# Rollouts from a shared prefix


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache", "sampling")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_rollouts_from_a_shared_prefix_equal_rollouts_that_rerun_the_prefix(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl)
    prefix = torch.randint(0, 61, (1, 11), generator=torch.Generator().manual_seed(1))  # (1, T)
    for seed in range(2):
        shared = generate(model, prefix, 24, temperature=1.0, stop_tokens=[3], seed=seed, num_samples=8)
        rerun = generate(model, prefix.repeat(8, 1), 24, temperature=1.0, stop_tokens=[3], seed=seed)  # (8, T)
        assert shared.shape[0] == 8
        assert torch.equal(shared, rerun)
        assert len({tuple(row) for row in shared.tolist()}) > 1  # real samples, not one answer copied


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_rollouts_never_sample_ids_past_the_tokenizer_vocabulary(tiny_model):
    # The toy model's vocabulary is padded past the tokenizer's last id; those ids have no text.
    model = tiny_model()
    prefix = torch.zeros(1, 4, dtype=torch.long)  # (1, T)
    free = generate(model, prefix, 30, temperature=5.0, seed=0, num_samples=8)
    assert free[:, 4:].max() >= 20  # a flat distribution does reach the high ids...
    limited = generate(model, prefix, 30, temperature=5.0, seed=0, num_samples=8, vocab_size=20)
    assert limited[:, 4:].max() < 20  # ...unless sampling is kept to the first vocab_size ids


def test_expanding_the_cache_copies_each_row_next_to_itself():
    config = ModelConfig(vocab_size=61, n_layer=2, d_model=48, n_head=6, n_kv_head=2, ffn_dim=96, max_seq_len=64)
    cache = KVCache(config, batch_size=2, max_len=8)
    cache.k[:, 0], cache.k[:, 1] = 1.0, 2.0
    cache.expand(3)
    assert cache.k.shape == (2, 6, 2, 8, 8) and cache.v.shape == cache.k.shape
    assert cache.k[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    cache.k[:, 0] = 7.0  # real copies: writing one row leaves its siblings alone
    assert cache.k[0, 1, 0, 0, 0] == 1.0


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_answer_logprobs_equal_a_step_by_step_float32_reference(tiny_model):
    model = tiny_model()
    prompt, answer = [5, 9, 2, 40], [7, 7, 30, 1, 59]
    got = answer_logprobs(model, prompt, answer, temperature=0.7)
    expected = []
    for i, token in enumerate(answer):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer[:i]]))[0, -1] / 0.7  # (V,)
        expected.append(float(logits.log_softmax(-1)[token]))
    assert got == pytest.approx(expected, abs=1e-5)


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_the_model_estimator_counts_rollouts_and_grades_a_finished_answer_without_any(tiny_model):
    tokenizer = data.Tokenizer.train("Mia has 3 apples. Then she buys 2 more. Answer: 5\n" * 20, 400)
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    problem = toyworld.Problem("Mia has 3 apples. Then she buys 2 more. How many?", "Answer: 5", 5, 1)
    estimator = model_estimator(model, tokenizer, problem, n_rollouts=6, temperature=1.0, max_answer_tokens=20, seed=0)
    assert estimator.prompt_ids == tokenizer.render_prompt([{"role": "user", "content": problem.question}])
    root = estimator.estimate(())
    assert len(root.continuations) == 6 and estimator.rollouts == 6
    for continuation in root.continuations:  # each stops at <|im_end|> or at the answer length limit
        assert len(continuation) <= 20
        assert tokenizer.eos_id not in continuation[:-1]
        assert continuation[-1] == tokenizer.eos_id or len(continuation) == 20
    estimator.estimate(())
    assert estimator.rollouts == 6  # memoized
    finished = tokenizer.encode("Answer: 5") + [tokenizer.eos_id]
    assert estimator(finished) == 1.0 and estimator(tokenizer.encode("Answer: 4") + [tokenizer.eos_id]) == 0.0
    assert estimator.rollouts == 6  # a finished answer is graded, not rolled out


@pytest.mark.exercise("bpe", "chat_mask", "rope")
def test_a_question_that_fills_the_whole_context_is_refused_before_any_rollout(tiny_model):
    tokenizer = data.Tokenizer.train("Mia has 3 apples. Then she buys 2 more. Answer: 5\n" * 20, 400)
    problem = toyworld.Problem("Mia has 3 apples. Then she buys 2 more. How many?", "Answer: 5", 5, 1)
    n_prompt = len(toyworld.prompt_ids(tokenizer, problem, chat=True))
    for max_seq_len, refused in [(n_prompt, True), (n_prompt + 1, False)]:  # one answer token fits: no refusal
        model = tiny_model(vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len)
        if refused:
            with pytest.raises(ValueError, match=f"the question takes {n_prompt} tokens, the whole context"):
                model_estimator(model, tokenizer, problem, n_rollouts=2, temperature=1.0, max_answer_tokens=20, seed=0)
        else:
            model_estimator(model, tokenizer, problem, n_rollouts=2, temperature=1.0, max_answer_tokens=20, seed=0)


def test_a_p_min_above_p_max_is_refused_before_a_model_is_loaded(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pts.py", "--p-min", "0.9", "--p-max", "0.5"])
    with pytest.raises(SystemExit) as exit_:
        pts.parse_args()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --p-min 0.9 must not exceed --p-max 0.5")
    monkeypatch.setattr(sys, "argv", ["pts.py", "--p-min", "0.5", "--p-max", "0.5"])
    assert pts.parse_args().p_min == 0.5  # equal bounds are one band, and allowed


# ----------------------------------------------------------------------------------------------------
# From pivots to pairs, on a mock world


STOP = 0


def mock_estimator(first_tokens, n=8, lucky_after=()):
    """A world whose answers are [1, 2, x, 3, 4, STOP]: correct iff x == 7, or x is in `lucky_after` and
    the rollout continues with token 5 (an answer that recovers). Rollouts from the question or from
    [1, 2] pick x in the order `first_tokens` (cycled); after x they finish [3, 4, STOP], except that
    after a lucky x they finish [5, STOP]."""

    def sample(prefix, seed):
        if len(prefix) < 3:
            rows = [([1, 2] + [first_tokens[r % len(first_tokens)]])[len(prefix):] for r in range(n)]
            return [row + [3, 4, STOP] for row in rows]
        return [[5, STOP] if prefix[2] in lucky_after else [3, 4, STOP] for _ in range(n)]

    def grade(answer):
        return answer[2] == 7 or (answer[2] in lucky_after and 5 in answer)

    return SuccessEstimator(sample, grade, STOP, max_answer_tokens=10, prompt_ids=[90, 91])


def uniform_logprobs(answer):
    return [-1.0] * len(answer)


def test_questions_outside_the_band_are_not_searched_and_cost_one_estimate():
    for first_tokens in ([7], [8]):  # always right (p = 1), always wrong (p = 0)
        estimator = mock_estimator(first_tokens)
        result = search_question(estimator, uniform_logprobs)
        assert not result.kept and result.answers == 0 and result.pairs == []
        assert estimator.rollouts == 8


@pytest.mark.exercise("pivotal_tokens")
def test_a_raising_and_a_lowering_pivot_give_the_same_pair_once():
    # x: 7 (right) in 3 rollouts of 8, 8 in 3, 9 in 2 -> p(question) = 3/8.
    estimator = mock_estimator([7, 8, 9])
    result = search_question(estimator, uniform_logprobs, answers_per_question=2)
    assert result.kept and result.p == 3 / 8 and result.answers == 2
    # Answer [1, 2, 7, ...] has a raising pivot at 7; answer [1, 2, 8, ...] a lowering one at 8.
    assert result.pivots == [Pivot(2, 7, 3 / 8, 1.0), Pivot(2, 8, 3 / 8, 0.0)]
    # Raising: rejected = the alternative that failed most (8 and 9 both always fail; 8 has more
    # rollouts). Lowering: chosen = the alternative that succeeded most (7). Both make 7 over 8.
    assert len(result.pairs) == 1
    pair = result.pairs[0]
    assert (pair.prefix, pair.chosen, pair.rejected) == ([1, 2], 7, 8)
    assert (pair.p_chosen, pair.p_rejected) == (1.0, 0.0)


@pytest.mark.exercise("pivotal_tokens")
def test_an_alternative_whose_own_estimate_does_not_move_p_gives_no_pair():
    # From [1, 2], rollouts through 8 end [3, 4, STOP] and fail; but from [1, 2, 8] every rollout
    # recovers with [5, STOP]. The first-token rate says 8 is bad, its own estimate says it is not.
    estimator = mock_estimator([7, 8, 8, 8], lucky_after=(8,))
    result = search_question(estimator, uniform_logprobs, answers_per_question=1)
    assert result.pivots == [Pivot(2, 7, 0.25, 1.0)]
    assert result.pairs == [] and result.no_pair == 1


def test_the_alternative_token_rule_on_known_rollout_tallies():
    # First tokens (success): 5 is the pivot; 6: 0/2, 8: 0/3, 9: 1/2 (a tie, neither mostly), 10: 1/1.
    rollouts = [(5, False), (5, True), (6, False), (6, False), (8, False), (8, False), (8, False),
                (9, True), (9, False), (10, True)]
    estimate = Estimate(0.3, [[t, STOP] for t, _ in rollouts], [ok for _, ok in rollouts])
    assert alternative_token(estimate, Pivot(0, 5, 0.3, 0.9)) == 8  # raising: worst rate, most rollouts
    assert alternative_token(estimate, Pivot(0, 5, 0.3, 0.0)) == 10  # lowering: best rate
    assert alternative_token(estimate, Pivot(0, 10, 0.3, 0.0)) is None  # only 9 is left, at exactly 1/2


def test_a_pivot_whose_prefix_rollouts_hold_no_other_first_token_gives_no_pair_and_no_new_rollout():
    estimator = mock_estimator([7])  # every rollout from [1, 2] continues with 7: there is nothing to contrast
    estimator.estimate([1, 2])  # the search has this estimate already when it asks for a pair
    rollouts = estimator.rollouts
    assert pivot_pair(estimator, [1, 2, 7, 3, 4, STOP], Pivot(2, 7, 1.0, 0.0)) is None
    assert estimator.rollouts == rollouts


@pytest.mark.exercise("bpe", "pivotal_tokens")
def test_pair_records_share_the_answer_so_far_part_at_the_pivot_and_hold_the_fields_dpo_reads():
    tokenizer = data.Tokenizer.train("Mia has 3 apples. Answer: 5\n" * 20, 400)
    estimator = mock_estimator([7, 8, 9])
    result = search_question(estimator, uniform_logprobs)
    problem = toyworld.Problem("Mia has 3 apples.", "Answer: 3", 3, 1)
    record = json.loads(json.dumps(pair_record(tokenizer, estimator.prompt_ids, problem, result.pairs[0], 8)))
    assert record["prompt_ids"] == [90, 91]  # the question alone
    # Both completions: the answer up to the pivot, then the token that raises p or the one that lowers it.
    assert record["chosen_ids"] == [1, 2, 7] and record["rejected_ids"] == [1, 2, 8]
    assert record["position"] == 2  # where the two completions part
    assert record["prompt"] == tokenizer.decode([90, 91])
    assert record["chosen"] == tokenizer.decode([1, 2, 7]) and record["rejected"] == tokenizer.decode([1, 2, 8])
    assert record["source"] == "pts" and record["question"] == problem.question
    assert (record["p_before"], record["p_after_chosen"], record["p_after_rejected"]) == (3 / 8, 1.0, 0.0)


def test_an_impossible_flag_fails_before_loading_a_model_and_names_the_flag():
    run = subprocess.run([sys.executable, "pts.py", "--init", "no/such/dir", "--rollouts", "1"], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode != 0 and run.stderr.startswith("error: ") and "--rollouts" in run.stderr


def test_the_success_curve_estimates_every_prefix_and_shows_the_pivots_as_jumps():
    oracle = CountingSuccess(steps)
    curve = success_curve(oracle, list(range(100, 140)))
    assert curve == [steps(i) for i in range(41)]  # one value per prefix, the empty one included
    assert [i for i in range(40) if abs(curve[i + 1] - curve[i]) >= 0.2] == [9, 29]  # the pivots of `steps`
