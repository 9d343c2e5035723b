"""sample.py: generation with the KV cache against full recomputation, the sampling filters against
their definitions, stop tokens, seeding, and clear errors for prompts that do not fit."""

import pytest
import torch

from sample import generate, row_uniforms, sample_next


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_greedy_generation_with_the_cache_equals_generation_without_it(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl)
    idx = torch.randint(0, 61, (3, 7), generator=torch.Generator().manual_seed(1))
    cached = generate(model, idx, 40, temperature=0, use_cache=True)
    uncached = generate(model, idx, 40, temperature=0, use_cache=False)
    assert cached.shape == (3, 47)
    assert torch.equal(cached, uncached)


@pytest.mark.slow  # compiling takes tens of seconds on a CPU
@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_compiled_decode_steps_give_the_tokens_of_the_eager_ones_greedy_and_seeded(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 61, (3, 7), generator=torch.Generator().manual_seed(1))
    for temperature in (0.0, 1.0):  # greedy, then sampling from each row's own seeded stream
        eager = generate(model, idx, 40, temperature=temperature, seed=5)
        compiled = generate(model, idx, 40, temperature=temperature, seed=5, compiled=True)
        assert torch.equal(compiled, eager)
    assert generate(model, idx[:1], 30, temperature=0, compiled=True).shape == (1, 37)  # a new batch size, no error


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_seeded_sampling_with_the_cache_equals_sampling_without_it(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(2))
    a = generate(model, idx, 30, temperature=1.0, top_k=20, seed=9, use_cache=True)
    b = generate(model, idx, 30, temperature=1.0, top_k=20, seed=9, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_the_same_seed_gives_the_same_samples_and_another_seed_differs(tiny_model):
    model = tiny_model()
    idx = torch.zeros(4, 3, dtype=torch.long)
    a = generate(model, idx, 25, temperature=1.5, seed=1)
    assert torch.equal(a, generate(model, idx, 25, temperature=1.5, seed=1))
    assert not torch.equal(a, generate(model, idx, 25, temperature=1.5, seed=2))


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_rows_stop_at_a_stop_token_and_are_padded_with_it(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 61, (4, 3), generator=torch.Generator().manual_seed(3))
    free = generate(model, idx, 20, temperature=0)
    stop = int(free[0, 6])  # a token row 0 is known to produce at its 4th generated step
    out = generate(model, idx, 20, temperature=0, stop_tokens=[stop])
    row = out[0, 3:].tolist()
    first = row.index(stop)
    assert first <= 3 and all(t == stop for t in row[first:])


def test_a_negative_sampling_seed_is_refused_naming_the_flag():
    # numpy's SeedSequence would refuse it too, but with a message that names no flag.
    assert row_uniforms(0, [0, 1], steps=3).shape == (2, 3)
    with pytest.raises(ValueError, match="sampling seeds must be >= 0 .*got -1; change --seed"):
        row_uniforms(-1, [0, 1], steps=3)

@pytest.mark.exercise("sampling")
def test_top_k_of_one_and_a_tiny_top_p_both_equal_greedy():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=g), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6, generator=g), greedy)


@pytest.mark.exercise("sampling")
def test_top_p_samples_only_from_the_smallest_set_reaching_p():
    # Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two (0.5 < 0.7 <= 0.8).
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(2000, 1)
    picks = sample_next(logits, 1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {1, 3}
    share = (picks == 1).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.04)  # renormalised within the kept set


@pytest.mark.exercise("rope")
def test_a_prompt_longer_than_the_context_raises_a_clear_error(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match="context"):
        generate(model, torch.zeros(1, 64, dtype=torch.long), 5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_generation_stops_at_the_end_of_the_context_instead_of_wrapping(tiny_model):
    model = tiny_model()
    out = generate(model, torch.zeros(1, 60, dtype=torch.long), 50, temperature=0)
    assert out.shape == (1, 64)


# -- held-out evaluation --------------------------------------------------------------------------

import json  # noqa: E402

import data  # noqa: E402
import toyworld
import eval as evaluation  # noqa: E402
import rejection_sampling  # noqa: E402
import sample  # noqa: E402
import stats  # noqa: E402


def problems_by_prompt(tokenizer, problems) -> dict[tuple, tuple[int, "toyworld.Problem"]]:
    """Prompt ids as evaluation renders them -> (index, problem): how a fake sampler knows what it was asked."""
    return {tuple(tokenizer.encode(toyworld.problem_prompt(p))): (i, p) for i, p in enumerate(problems)}

@pytest.mark.exercise("bpe", "rope")
def test_evaluation_scores_a_known_answer_mock_exactly(toy_data_dir, monkeypatch, tiny_model):
    """A fake sampler that answers correctly exactly for odd-indexed problems must score 50%."""
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    problems = toyworld.make_split(99, 40)
    by_prompt = problems_by_prompt(tokenizer, problems)

    def fake_sample_completions(model, prompts, n, max_new_tokens, stop_tokens, *args, **kwargs):
        assert n == 1  # greedy evaluation asks for one answer per prompt
        groups = []
        for prompt in prompts:
            i, problem = by_prompt[tuple(prompt)]
            answer = problem.answer if i % 2 else problem.answer + 1
            groups.append([tokenizer.encode(f"Answer: {answer}") + [tokenizer.bos_id]])  # cut after the stop token
        return groups

    # eval.py samples through the batched engine (sample_completions), which no longer calls generate.
    monkeypatch.setattr(evaluation, "sample_completions", fake_sample_completions)
    model = tiny_model()
    result = evaluation.evaluate_problems(model, tokenizer, problems, batch_size=3)
    assert result["n"] == 40 and result["correct"] == 20 and result["accuracy"] == 0.5


@pytest.mark.exercise("bpe", "rope")
def test_a_partial_held_out_run_never_replaces_the_checkpoints_score(toy_data_dir, tmp_path, monkeypatch, tiny_model):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    problems = toyworld.make_split(97, 3)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in problems))

    by_prompt = problems_by_prompt(tokenizer, problems)

    def all_right(model, prompts, n, *args, **kwargs):
        return [[tokenizer.encode(f"Answer: {by_prompt[tuple(ids)][1].answer}")] for ids in prompts]

    monkeypatch.setattr(evaluation, "sample_completions", all_right)
    model, score = tiny_model(), tmp_path / "ckpt" / "eval.json"
    score.parent.mkdir()
    evaluation.run_heldout(model, tokenizer, str(score.parent), evaluation.parse_args(["--data", str(tmp_path / "data"), "--limit", "2"]))
    assert not score.exists()  # 2 of 3 problems: printed, not saved as the stage's score
    evaluation.run_heldout(model, tokenizer, str(score.parent), evaluation.parse_args(["--data", str(tmp_path / "data")]))
    assert json.loads(score.read_text())["n"] == 3 and json.loads(score.read_text())["accuracy"] == 1.0


def test_the_recall_lengths_of_a_midtrained_checkpoint_are_multiples_of_its_context_before_extension(monkeypatch):
    model = type("Model", (), {"config": type("Config", (), {"max_seq_len": 1024})()})()
    # The midtrained one from its record alone; a pretrained one from its preset; one without a record from itself.
    for record, base in [({"train_config": {"stage": "midtrain"}}, 256),
                         ({"train_config": {"stage": "pretrain", "size": "toy"}}, 256), ({}, 1024)]:
        monkeypatch.setattr(evaluation.checkpoint, "read_checkpoint", lambda path: record)
        assert evaluation.pretraining_length("ckpt", model) == base


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "kv_cache")
def test_shown_samples_say_why_an_answer_ended_without_a_stop_token_and_what_the_oracle_says(toy_data_dir, tiny_model, capsys):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    model = tiny_model(vocab_size=64 * -(-tokenizer.vocab_size // 64), max_seq_len=256)
    problems = toyworld.read_problems(f"{toy_data_dir}/eval.jsonl")[:2]
    sample.show_samples(model, tokenizer, sample.parse_args(["--data", toy_data_dir, "--num-samples", "2",
                                                              "--max-new-tokens", "3"]), "cpu")
    out = capsys.readouterr().out
    assert out.count("[stopped after --max-new-tokens 3 tokens]") == 2  # an untrained model does not stop in 3
    assert [f"[oracle: wrong; expected {p.answer}]" in out for p in problems] == [True, True]
    sample.show_samples(model, tokenizer, sample.parse_args(["--prompt", "Mia", "--num-samples", "1",
                                                              "--max-new-tokens", "1000"]), "cpu")
    assert "[stopped at the model's context of 256 tokens]" in capsys.readouterr().out


@pytest.mark.exercise("bpe", "rope")
def test_maj_at_k_scores_the_most_frequent_of_k_sampled_answers(toy_data_dir, monkeypatch, tiny_model):
    """Greedy always wrong; of 3 samples, 2 right for even problems and 1 right for odd ones: maj@3 is 50%."""
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    problems = toyworld.make_split(98, 10)
    by_prompt = problems_by_prompt(tokenizer, problems)
    calls = []

    def fake_sample_completions(model, prompts, n, max_new_tokens, stop_tokens, temperature, *args, **kwargs):
        calls.append((n, temperature))
        groups = []
        for prompt in prompts:
            i, problem = by_prompt[tuple(prompt)]
            right = [True, True, False] if i % 2 == 0 else [False, False, True]
            answers = [problem.answer if ok else problem.answer + 1 + j for j, ok in enumerate(right)][:n] if n > 1 else [-1]
            groups.append([tokenizer.encode(f"Answer: {a}") for a in answers])
        return groups

    monkeypatch.setattr(evaluation, "sample_completions", fake_sample_completions)
    result = evaluation.evaluate_problems(tiny_model(), tokenizer, problems, maj_k=3, temperature=0.9)
    assert calls == [(1, 0), (3, 0.9)]  # greedy, then k samples at the given temperature
    assert result["accuracy"] == 0.0 and result["maj_correct"] == 5 and result["maj_accuracy"] == 0.5


def test_wilson_interval_matches_known_values():
    low, high = stats.wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)  # no problems: every accuracy possible, not 0 / 0


# ----------------------------------------------------------------------------------------------------
# Batched sampling, maj@k and rejection sampling


def test_no_prompts_or_no_new_tokens_give_empty_completions_without_running_the_model():
    # A model that fails when called: nothing may reach it.
    model = type("Unreachable", (), {"__getattr__": lambda self, name: pytest.fail(f"model.{name} was used")})()
    assert sample.sample_completions(model, [], 3, 10, (0,)) == []
    assert sample.sample_completions(model, [[1, 2], [3]], 2, 0, (0,)) == [[[], []], [[], []]]


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_sampled_completions_at_temperature_zero_equal_greedy_generation_and_end_after_the_stop_token(tiny_model):
    model = tiny_model()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]]
    stop = (5, 17)
    groups = sample.sample_completions(model, prompts, n=3, max_new_tokens=12, stop_tokens=stop, temperature=0, batch_rows=4)
    for prompt, group in zip(prompts, groups):
        out = generate(model, torch.tensor([prompt]), 12, temperature=0, stop_tokens=stop)[0, len(prompt):].tolist()
        end = next((j + 1 for j, t in enumerate(out) if t in stop), len(out))
        assert group == [out[:end]] * 3


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_sampled_completions_are_reproducible_and_differ_across_samples(tiny_model):
    model = tiny_model()
    first = sample.sample_completions(model, [[1, 2, 3]], n=6, max_new_tokens=10, stop_tokens=(), temperature=1.0, seed=3)
    again = sample.sample_completions(model, [[1, 2, 3]], n=6, max_new_tokens=10, stop_tokens=(), temperature=1.0, seed=3)
    assert first == again and len({tuple(s) for s in first[0]}) > 1


def test_majority_answer_picks_the_most_frequent_answer_and_ignores_missing_ones():
    assert evaluation.majority_answer(["Answer: 3", "Answer: 5", "no answer", "Answer: 5"]) == 5
    assert evaluation.majority_answer(["Answer: 4", "Answer: 2"]) == 4  # a tie goes to the first seen
    assert evaluation.majority_answer(["nothing", ""]) is None


@pytest.mark.exercise("bpe", "chat_mask", "rejection_sampling")
def test_rejection_sampling_keeps_only_oracle_approved_answers_and_pairs_a_correct_with_an_incorrect_one(toy_data_dir, monkeypatch):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    problems = toyworld.make_split(7, 3)
    end = tokenizer.im_end_id

    def answer(problem, delta, finished=True):
        return tokenizer.encode(f"{problem.solution.rsplit('Answer:', 1)[0]}Answer: {problem.answer + delta}") + ([end] if finished else [])

    # Problem 0: wrong, right, right-but-unfinished. Problem 1: all wrong. Problem 2: all right.
    canned = [
        [answer(problems[0], 1), answer(problems[0], 0), answer(problems[0], 0, finished=False)],
        [answer(problems[1], 2), answer(problems[1], 3), answer(problems[1], 4)],
        [answer(problems[2], 0), answer(problems[2], 0), answer(problems[2], 0)],
    ]
    monkeypatch.setattr(rejection_sampling, "sample_completions", lambda model, prompts, n, *a, **k: canned)
    sft, pairs, summary = rejection_sampling.rejection_sampling(None, tokenizer, problems, n=3)

    assert [r["messages"][0]["content"] for r in sft] == [problems[0].question, problems[2].question]
    assert all(toyworld.check(p, r["messages"][1]["content"]) for p, r in zip((problems[0], problems[2]), sft))
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["prompt_ids"] == tokenizer.render_prompt([{"role": "user", "content": problems[0].question}])
    assert pair["chosen_ids"] == canned[0][1] and pair["rejected_ids"] == canned[0][0]
    assert pair["chosen"] == tokenizer.decode(canned[0][1]) and pair["prompt"] == tokenizer.decode(pair["prompt_ids"])
    assert summary["sample_accuracy"] == pytest.approx(4 / 9) and summary["all_wrong"] == 1 and summary["all_correct"] == 1


@pytest.mark.exercise("rejection_sampling")
def test_judging_accepts_only_finished_correct_answers_and_pairs_the_first_right_with_the_first_wrong(byte_tokenizer):
    tok = byte_tokenizer
    problem = toyworld.make_split(7, 1)[0]
    end = tok.im_end_id
    right = tok.encode(f"Answer: {problem.answer}") + [end]
    wrong = tok.encode(f"Answer: {problem.answer + 1}") + [end]
    unfinished = tok.encode(f"Answer: {problem.answer}")  # ran out of tokens before <|im_end|>
    accepted, chosen, rejected, n_correct = rejection_sampling.judge(tok, problem, [unfinished, [], wrong, right, right], 5)
    assert accepted == [f"Answer: {problem.answer}"] and n_correct == 2
    assert chosen == right and rejected == unfinished  # the first of each kind, <|im_end|> kept in the pair
    assert rejection_sampling.judge(tok, problem, [right, right], 5) == ([f"Answer: {problem.answer}"], None, None, 2)
    assert rejection_sampling.judge(tok, problem, [wrong, unfinished], 5) == ([], None, None, 0)


@pytest.mark.exercise("rejection_sampling")
def test_judging_keeps_distinct_correct_answers_up_to_the_cap(byte_tokenizer):
    tok = byte_tokenizer
    problem = toyworld.make_split(9, 1)[0]
    # Three correct answers in two wordings (one repeated), and a third wording.
    first, second, third = (tok.encode(f"{prefix}Answer: {problem.answer}") + [tok.im_end_id] for prefix in ("", "So:\n", "Well:\n"))
    accepted, *_ = rejection_sampling.judge(tok, problem, [first, first, second, third], max_accepted=2)
    assert accepted == [tok.decode(first[:-1]), tok.decode(second[:-1])]
    accepted, *_ = rejection_sampling.judge(tok, problem, [first, first, second, third], max_accepted=5)
    assert len(accepted) == 3  # the repeated answer counts once


@pytest.mark.exercise("rejection_sampling")
def test_judging_by_steps_refuses_a_right_answer_whose_steps_are_wrong(byte_tokenizer):
    tok = byte_tokenizer
    problem = toyworld.make_split(7, 1)[0]
    end = tok.im_end_id
    reference = tok.encode(problem.solution) + [end]
    # The answer line kept, the first step's result changed: right by the answer, wrong by the steps.
    slipped_text = problem.solution.replace(" = ", " = 1", 1)
    slipped = tok.encode(slipped_text) + [end]
    assert toyworld.check(problem, slipped_text) and not toyworld.check_steps(problem, slipped_text)
    by_answer = rejection_sampling.judge(tok, problem, [slipped, reference], 5)
    assert by_answer == ([slipped_text, problem.solution], None, None, 2)
    by_steps = rejection_sampling.judge(tok, problem, [slipped, reference], 5, rejection_sampling.JUDGES["steps"])
    assert by_steps == ([problem.solution], reference, slipped, 1)  # the slip becomes the rejected answer


@pytest.mark.exercise("bpe")
def test_the_knowledge_quiz_grades_the_first_word_of_each_completion_against_the_fact(toy_data_dir, monkeypatch):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    items = toyworld.quiz_items()
    # Right for every third item, with the sentence going on as a fact page does; wrong words for the rest.
    def fake_sample_completions(model, prompts, n, *args, **kwargs):
        return [[tokenizer.encode(f" {items[i][1]}. Mia has" if i % 3 == 0 else " museum")] for i in range(len(prompts))]

    monkeypatch.setattr(evaluation, "sample_completions", fake_sample_completions)
    result = evaluation.evaluate_quiz(None, tokenizer)
    expected = [i % 3 == 0 or word == "museum" for i, (_, word) in enumerate(items)]
    assert result["results"] == "".join("1" if ok else "0" for ok in expected)
    assert result["correct"] == sum(expected) and result["n"] == len(items)
