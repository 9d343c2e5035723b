"""sample.py's batched engine (sample_completions) against the plainest oracle: one prompt at a time,
the whole sequence re-run at every step (no KV cache, no padding, no other rows in the batch).

Sample j of prompt i draws from numpy's default_rng([seed, i * n + j]), the seeding sample.py documents;
the oracle draws from that stream itself. The engine must give the oracle's tokens exactly, greedy and
seeded, for prompts of different lengths in one batch, rows that stop early (their slots refilled) and
rows cut by max_new_tokens or by the context. Also: a seed per prompt equal to a call per prompt,
per-row positions in model.hidden_states against each row decoded alone, batch_rows and neighbours
changing no sample, generate agreeing with the engine, and clear errors for what cannot run.
"""

import numpy as np
import pytest
import torch

import model as model_module
from model import KVCache
from sample import generate, sample_completions, sample_next

# Prompt lengths 1 to 50 of a 64-token context: the 50-token prompt has only 14 tokens of room left.
LENGTHS = [3, 9, 1, 14, 6, 9, 22, 50, 5]
STOP = (5, 17, 33)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and wait 100x on it when another job holds the core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_prompts(vocab: int = 61) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (length,), generator=generator).tolist() for length in LENGTHS]


@torch.no_grad()
def one_at_a_time(model, prompt, row, max_new_tokens, stop, temperature, seed, top_k=None, vocab_size=None):
    """The oracle: one sequence, the full forward at every step, draw t of the stream (seed, row) at step t."""
    draws = np.random.default_rng([seed, row]).random(max_new_tokens)
    sequence = list(prompt)
    for t in range(min(max_new_tokens, model.config.max_seq_len - len(prompt))):
        logits = model(torch.tensor([sequence]))[:, -1, :vocab_size]  # (1, V)
        token = int(sample_next(logits, temperature, top_k, uniform=torch.tensor([draws[t]], dtype=torch.float64)))
        sequence.append(token)
        if token in stop:
            break
    return sequence[len(prompt):]


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_greedy_answers_to_prompts_of_different_lengths_equal_one_at_a_time_decoding_without_a_cache(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl)
    prompts = make_prompts()
    # Three slots for nine prompts: slots are refilled as answers stop, then dropped as the queue empties.
    answers = sample_completions(model, prompts, n=1, max_new_tokens=30, stop_tokens=STOP, temperature=0, batch_rows=3)
    expected = [[one_at_a_time(model, p, i, 30, STOP, 0, seed=0)] for i, p in enumerate(prompts)]
    assert answers == expected
    # The comparison covers rows that stop early, rows that run to max_new_tokens, and one cut by the context.
    flat = [a for group in answers for a in group]
    assert any(a[-1] in STOP and len(a) < 14 for a in flat)
    assert any(len(a) == 30 and a[-1] not in STOP for a in flat)
    assert len(answers[LENGTHS.index(50)][0]) <= 14


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache", "sampling")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_seeded_samples_equal_one_at_a_time_sampling_from_each_rows_own_stream(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl)
    prompts = make_prompts(vocab=50)
    n, seed = 3, 11
    answers = sample_completions(model, prompts, n, max_new_tokens=25, stop_tokens=STOP, temperature=1.0, top_k=20,
                                 seed=seed, batch_rows=7, vocab_size=50)
    expected = [[one_at_a_time(model, p, i * n + j, 25, STOP, 1.0, seed, top_k=20, vocab_size=50) for j in range(n)]
                for i, p in enumerate(prompts)]
    assert answers == expected
    flat = [a for group in answers for a in group]
    assert any(a[-1] in STOP for a in flat) and any(a[-1] not in STOP for a in flat)  # early stops and full runs
    assert any(len(set(map(tuple, group))) > 1 for group in answers)  # n real samples, not one copied


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_a_samples_tokens_depend_neither_on_batch_rows_nor_on_the_other_prompts(tiny_model):
    model = tiny_model()
    prompts = make_prompts()
    options = dict(stop_tokens=STOP, temperature=1.0, seed=5)
    wide = sample_completions(model, prompts, 4, 20, batch_rows=64, **options)
    assert sample_completions(model, prompts, 4, 20, batch_rows=4, **options) == wide
    # Prompt 0 owns rows 0..3 whether or not the eight other prompts come along.
    assert sample_completions(model, prompts[:1], 4, 20, **options)[0] == wide[0]


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_a_seed_per_prompt_gives_each_prompt_the_samples_of_a_call_of_its_own(tiny_model):
    model = tiny_model()
    prompts = make_prompts()
    seeds = [100 + 7 * i for i in range(len(prompts))]
    options = dict(stop_tokens=STOP, temperature=1.0, batch_rows=8)
    batched = sample_completions(model, prompts, 3, 20, seed=seeds, **options)
    assert batched == [sample_completions(model, [p], 3, 20, seed=s, **options)[0] for p, s in zip(prompts, seeds)]
    # The seeds matter: one seed for the whole call draws other streams for every prompt but the first.
    assert sample_completions(model, prompts, 3, 20, seed=seeds[0], **options)[1:] != batched[1:]
    with pytest.raises(ValueError, match="2 seeds for 9 prompts"):
        sample_completions(model, prompts, 3, 20, seed=seeds[:2], **options)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_generate_with_num_samples_gives_the_engines_samples_of_the_same_rows(tiny_model):
    model = tiny_model()
    idx = torch.randint(0, 61, (3, 8), generator=torch.Generator().manual_seed(4))  # (B, T): equal lengths
    out = generate(model, idx, 20, temperature=1.0, stop_tokens=STOP, seed=2, num_samples=2)  # (6, T + new)
    answers = sample_completions(model, idx.tolist(), 2, 20, STOP, temperature=1.0, seed=2)
    for row, ids in enumerate(out[:, 8:].tolist()):
        end = next((j + 1 for j, token in enumerate(ids) if token in STOP), len(ids))  # cut the stop padding
        assert ids[:end] == answers[row // 2][row % 2]


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_per_row_positions_give_each_row_the_logits_it_gets_decoded_alone(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl)
    sequences = [[4, 8, 15, 16, 23, 42, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    cache = KVCache(model.config, batch_size=2, max_len=16)
    with torch.no_grad():
        # Each row's prompt (all but its last two tokens) prefilled alone, then moved into its row.
        for row, sequence in enumerate(sequences):
            alone = KVCache(model.config, batch_size=1, max_len=len(sequence) - 2)
            model.hidden_states(torch.tensor([sequence[:-2]]), alone)
            cache.load_rows(torch.tensor([row]), alone)
        # Then the last two tokens of both rows, one at a time, each at its own row's positions.
        logits = []
        for back in (2, 1):
            tokens = torch.tensor([[s[-back]] for s in sequences])  # (2, 1)
            positions = torch.tensor([[len(s) - back] for s in sequences])  # (2, 1): 5 and 10, then 6 and 11
            logits.append(model.lm_head(model.hidden_states(tokens, cache, positions))[:, 0])  # (2, V)
        for row, sequence in enumerate(sequences):
            full = model(torch.tensor([sequence]))[0, -2:]  # (2, V): the last two positions, no cache
            torch.testing.assert_close(torch.stack([logits[0][row], logits[1][row]]), full, atol=1e-5, rtol=1e-5)


def test_the_triton_attention_refuses_a_per_row_mask_with_a_message_naming_the_other_implementations():
    q = torch.zeros(1, 2, 1, 8)
    k = v = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="'sdpa' or 'naive'"):
        model_module.triton_attention(q, k, v, mask=torch.ones(1, 1, 4, dtype=torch.bool))


@pytest.mark.exercise("rope")
def test_a_prompt_that_fills_the_context_raises_a_clear_error(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match="context"):
        sample_completions(model, [[1, 2], [0] * 64], 1, 5, STOP)
