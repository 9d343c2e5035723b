"""speed.py compares like with like: each pair of ways it times does the same work, and counts it the same way.
No timing is asserted (a shared machine's speed is not a property of the code).

- rollout_speed: the shared and the re-run prefill draw the same samples for a seed, and the tokens counted
  are each rollout's sampled tokens up to and including its stop token (counted here from generate's output).
- The length-grouped baseline of --bench-batch gives the engine's own answers under greedy decoding, so
  its tokens/s is the same work done another way.
- The three measurements behind sample.py --bench, --bench-batch and pts.py --bench print every row they promise.
"""

import re

import pytest
import torch

import speed
from sample import generate, sample_completions

STOP = 1  # a stop id the tiny model (seed 2) samples now and then: some rollouts stop early, some run out


def sampled_tokens(out: torch.Tensor, prompt_len: int) -> int:
    """The oracle's count: every row's tokens after the prompt, up to and including the first STOP."""
    total = 0
    for row in out[:, prompt_len:].tolist():
        total += row.index(STOP) + 1 if STOP in row else len(row)
    return total


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_shared_and_rerun_prefill_roll_out_the_same_tokens_and_count_them_to_the_stop(tiny_model):
    model = tiny_model(seed=2)
    idx = torch.tensor([[5, 9, 14, 7, 21]])  # (1, T)
    counts = {mode: speed.rollout_speed(model, idx, 6, 20, 1.0, STOP, seed=6, mode=mode)[1]
              for mode in ("shared", "repeat", "serial")}
    shared = generate(model, idx, 20, 1.0, seed=6, num_samples=6, stop_tokens=(STOP,))  # (6, <= T + 20)
    serial = [generate(model, idx, 20, 1.0, seed=6 + r, stop_tokens=(STOP,)) for r in range(6)]
    assert counts["shared"] == counts["repeat"] == sampled_tokens(shared, idx.shape[1])
    each = [sampled_tokens(out, idx.shape[1]) for out in serial]
    assert counts["serial"] == sum(each)
    assert len(set(each)) > 2  # one seed per rollout: they differ (one seed for all would count one rollout 6 times)
    assert 6 < counts["shared"] < 6 * 20  # some rollouts stopped early: the cut at the stop token is exercised


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache")
def test_the_length_grouped_baseline_gives_the_engines_greedy_answers(tiny_model):
    model = tiny_model(seed=1)
    prompts = [[5, 9, 14], [7, 21, 30, 2, 8], [11, 12, 13], [40, 41], [6, 6, 6, 6, 6]]  # lengths 2-5, two of 3
    baseline = speed.length_grouped_completions(model, prompts, 2, 12, (STOP, 4), temperature=0, seed=0,
                                                batch_rows=4)
    engine = sample_completions(model, prompts, 2, 12, (STOP, 4), temperature=0, seed=0, batch_rows=4)
    assert baseline == engine
    assert any(len(answer) < 12 for group in engine for answer in group)  # some answers stopped early


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_bench_batch_prints_both_ways_for_one_and_four_answers_per_prompt(capsys):
    speed.bench_batch(max_new_tokens=6, seed=0, n_prompts=5, batch_rows=8, repeats=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("5 prompts of 40-80 tokens, up to 6 new tokens")
    for n, line in zip((1, 4), lines[1:]):
        assert re.fullmatch(rf"n={n}: length-grouped batches +[\d,]+ t/s \| batched engine +[\d,]+ t/s \| [\d.]+x", line)


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_decode_and_rollout_benches_print_every_row(tiny_checkpoint, tmp_path, capsys):
    import checkpoint
    import toyworld

    tokenizer = tiny_checkpoint(tmp_path / "ckpt", max_seq_len=128)
    model, _ = checkpoint.load_model(str(tmp_path / "ckpt"))
    speed.decode_bench(model, tokenizer, max_new_tokens=8, device="cpu")
    decode = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in decode] == ["decode with KV cache", "decode without KV cache"]
    assert all(line.endswith("tokens/s (8 tokens, batch 1)") for line in decode)

    problem = toyworld.make_split(seed=0, n=1)[0]
    overall = speed.rollout_bench(model, tokenizer, problem, n_rollouts=3, temperature=1.0, max_answer_tokens=12,
                                  seed=0, repeats=1)
    rows = capsys.readouterr().out.splitlines()
    assert set(overall) == {"shared", "repeat", "serial"} and all(rate > 0 for rate in overall.values())
    assert [row.split("|")[0].strip().split("(")[-1] for row in rows[2:7]] == ["0%)", "25%)", "50%)", "75%)", "90%)"]
    assert rows[7].startswith("    all prefixes |")
