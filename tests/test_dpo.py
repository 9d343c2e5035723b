"""dpo.py: the loss against its known answers, sequence log-probs against a naive per-token loop, the
guards, the reference pass, and a short training run on pairs with a known preference."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import data
import dpo
import checkpoint
import parallel

# The DPO tests' tiny model: narrower than the shared default, with a milder init (std 0.1).
DPO_MODEL = dict(n_layer=2, d_model=32, n_head=4, n_kv_head=2, ffn_dim=64, max_seq_len=48, init_std=0.1)


def naive_logprobs(model, prompt: list[int], completion: list[int]) -> float:
    """Oracle: one full forward per completion token, the log-prob of that token after everything before it."""
    total = 0.0
    with torch.no_grad():
        for i, token in enumerate(completion):
            prefix = torch.tensor([prompt + completion[:i]])  # (1, t)
            logits = model(prefix)[0, -1].double()  # (V,)
            total += (logits.log_softmax(-1)[token]).item()
    return total


# ----------------------------------------------------------------------------------------------------
# The loss


@pytest.mark.exercise("dpo_loss")
def test_policy_equal_to_reference_gives_loss_ln2_and_zero_rewards():
    logps = torch.tensor([-12.0, -3.5, -40.0])
    other = torch.tensor([-9.0, -7.0, -1.0])
    loss, chosen, rejected = dpo.dpo_loss(logps, other, logps, other, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert torch.equal(chosen, torch.zeros(3)) and torch.equal(rejected, torch.zeros(3))


@pytest.mark.exercise("dpo_loss")
def test_dpo_loss_matches_its_formula_on_known_numbers():
    loss, chosen, rejected = dpo.dpo_loss(torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), beta=0.5)
    # chosen log-ratio +1, rejected log-ratio -1 -> rewards +0.5 and -0.5, loss -log sigmoid(1)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), rel=1e-6)


@pytest.mark.exercise("dpo_loss")
def test_swapping_chosen_and_rejected_flips_the_sign_of_the_margin():
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(5, generator=generator) for _ in range(4))
    _, chosen, rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=0.2)
    _, chosen_swapped, rejected_swapped = dpo.dpo_loss(pr, pc, rr, rc, beta=0.2)
    assert torch.allclose(chosen - rejected, -(chosen_swapped - rejected_swapped))
    assert (chosen - rejected).abs().min() > 0  # the check above is not vacuous


@pytest.mark.exercise("dpo_loss")
def test_the_loss_gradient_raises_chosen_and_lowers_rejected_log_probs():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-4.0], requires_grad=True)
    loss, _, _ = dpo.dpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending the loss raises pc and lowers pr


def test_a_non_positive_beta_is_refused_naming_the_flag():
    with pytest.raises(ValueError, match="--beta"):
        dpo.dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.0)


# ----------------------------------------------------------------------------------------------------
# Sequence log-probs


class BigramLM(torch.nn.Module):
    """A stand-in model with Phi4's forward(ids, select=) contract: next-token logits are a table row per token."""

    def __init__(self, vocab: int = 13):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids, select=None):
        logits = self.table[ids]  # (B, T, V)
        return logits if select is None else logits[select]  # (N, V) for the selected positions


@pytest.mark.exercise("sequence_logprobs")
def test_summed_and_mean_logprobs_of_a_bigram_model_equal_a_token_by_token_float64_loop():
    model = BigramLM()
    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 11]])
    # Row 0: prompt of 2, completion of 3, one pad. Row 1: prompt of 1, completion of 5.
    completion = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    table = model.table.detach().double()
    expected = []
    for row, flags in zip(ids.tolist(), completion.tolist()):
        # Token t is scored by the distribution after token t - 1.
        expected.append(sum(table[row[t - 1]].log_softmax(-1)[row[t]].item() for t in range(1, len(row)) if flags[t]))
    sums = dpo.sequence_logprobs(model, ids, completion)
    assert sums.dtype == torch.float32
    assert sums.tolist() == pytest.approx(expected, rel=1e-6)
    means = dpo.sequence_logprobs(model, ids, completion, average=True)
    assert means.tolist() == pytest.approx([expected[0] / 3, expected[1] / 5], rel=1e-6)
    sums.sum().backward()  # the policy's log-probs must carry gradient to its weights
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs")
def test_summed_logprobs_match_a_naive_per_token_loop_on_padded_rows(tiny_model):
    model = tiny_model(**DPO_MODEL).eval()
    pairs = [dpo.Pair([1, 5, 9], [4, 4, 7, 2], [3]), dpo.Pair([8, 2, 2, 6, 1, 1], [5], [9, 9, 9, 9, 3])]
    ids, mask = dpo.collate(pairs, pad_id=0, device="cpu")
    with torch.no_grad():
        got = dpo.sequence_logprobs(model, ids, mask)
    expected = [naive_logprobs(model, p.prompt, p.chosen) for p in pairs] + [naive_logprobs(model, p.prompt, p.rejected) for p in pairs]
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def test_the_completion_mask_of_a_batch_covers_exactly_the_completion_tokens():
    ids, mask = dpo.collate([dpo.Pair([7, 8], [1, 2, 3], [4])], pad_id=0, device="cpu")
    assert ids.tolist() == [[7, 8, 1, 2, 3], [7, 8, 4, 0, 0]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs")
def test_mean_per_token_logprobs_are_the_sums_divided_by_completion_length(tiny_model):
    model = tiny_model(**DPO_MODEL).eval()
    ids, mask = dpo.collate([dpo.Pair([1, 2], [3, 4, 5], [6])], pad_id=0, device="cpu")
    with torch.no_grad():
        sums = dpo.sequence_logprobs(model, ids, mask)
        means = dpo.sequence_logprobs(model, ids, mask, average=True)
    assert means.tolist() == pytest.approx([sums[0].item() / 3, sums[1].item() / 1], rel=1e-6)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs")
def test_a_single_token_completion_scores_the_log_softmax_after_the_prompt(tiny_model):
    model = tiny_model(**DPO_MODEL).eval()
    prompt = [3, 1, 4, 1, 5]
    ids, mask = dpo.collate([dpo.Pair(prompt, [9], [2])], pad_id=0, device="cpu")
    with torch.no_grad():
        got = dpo.sequence_logprobs(model, ids, mask)
        last = model(torch.tensor([prompt]))[0, -1].log_softmax(-1)
    assert got.tolist() == pytest.approx([last[9].item(), last[2].item()], abs=1e-5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logprobs_have_no_nan_and_stay_near_float32_under_half_precision_autocast(dtype, tiny_model):
    model = tiny_model(**DPO_MODEL)
    with torch.no_grad():
        model.lm_head.weight.mul_(60.0)  # logits of several hundred: a naive half-precision softmax overflows
    ids, mask = dpo.collate([dpo.Pair([1, 2, 3], [4, 5, 6, 7, 8, 9], [10])], pad_id=0, device="cpu")
    with torch.no_grad():
        reference = dpo.sequence_logprobs(model, ids, mask)
        try:
            with torch.autocast("cpu", dtype=dtype):
                half = dpo.sequence_logprobs(model, ids, mask)
        except RuntimeError as error:  # an older CPU autocast without float16
            pytest.skip(f"CPU autocast does not support {dtype}: {error}")
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert reference.abs().min() > 10  # large log-probs: the comparison below is a real one
    assert torch.allclose(half, reference, rtol=0.05)


@pytest.mark.exercise("rope")
def test_a_completion_on_the_first_position_is_refused(tiny_model):
    model = tiny_model(**DPO_MODEL).eval()
    with pytest.raises(ValueError, match="first token"):
        dpo.sequence_logprobs(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]]))


# ----------------------------------------------------------------------------------------------------
# Pairs and the reference pass


def write_pairs(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.exercise("bpe")
def test_pairs_with_empty_completions_or_too_long_for_the_context_are_skipped_and_counted(toy_data_dir, tmp_path):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    good = {"prompt": "Q: 1 + 2?", "chosen": "Answer: 3", "rejected": "Answer: 4"}
    records = [good, dict(good, chosen=""), dict(good, prompt="1 + 1 = 2. " * 40), dict(good, rejected_ids=[])]
    pairs, kept, skipped = dpo.read_pairs(write_pairs(tmp_path / "p.jsonl", records), tokenizer, max_len=64)
    assert len(pairs) == 1 and kept == [good]
    assert skipped == {"empty_completion": 2, "too_long": 1}
    with pytest.raises(ValueError, match="no usable pairs"):
        dpo.read_pairs(write_pairs(tmp_path / "q.jsonl", records[1:]), tokenizer, max_len=64)


@pytest.mark.exercise("bpe")
def test_a_missing_pairs_file_or_a_pair_without_its_text_is_refused_naming_it(toy_data_dir, tmp_path):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    with pytest.raises(ValueError, match="pairs file .*none.jsonl not found"):
        dpo.read_pairs(str(tmp_path / "none.jsonl"), tokenizer, max_len=64)
    no_chosen = {"prompt": "Q: 1 + 2?", "rejected": "Answer: 4"}
    with pytest.raises(ValueError, match="p.jsonl, line 1: .*'chosen' is missing"):
        dpo.read_pairs(write_pairs(tmp_path / "p.jsonl", [no_chosen]), tokenizer, max_len=64)


def test_fewer_pairs_than_one_batch_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match="3 pairs are fewer than --batch-size 8"):
        dpo.PairLoader(3, batch_size=8, seed=0)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs")
def test_a_starting_model_that_gives_a_pair_a_non_finite_log_prob_is_refused_before_training(tiny_model):
    model = tiny_model(**DPO_MODEL)
    with torch.no_grad():
        model.lm_head.weight[7] = float("nan")  # every log-prob is NaN: the softmax sums over token 7 too
    with pytest.raises(ValueError, match="non-finite log-prob"):
        dpo.reference_logprobs(model, [dpo.Pair([1, 2], [3], [4])], pad_id=0, batch_size=1, average=False)


def test_dpo_without_pairs_or_with_a_batch_the_ranks_cannot_share_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(ValueError, match="pass --pairs"):
        dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), out=str(tmp_path / "dpo")))
    three_ranks = parallel.Distributed(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"), mesh=None,
                                       owns_group=False)  # only its size is read before the refusal
    with pytest.raises(ValueError, match="--batch-size 8 pairs must split evenly over 3 ranks"):
        dpo.train_dpo_on(dpo.DPOConfig(init=str(tmp_path / "init"), pairs="p.jsonl", batch_size=8), three_ranks)


@pytest.mark.exercise("bpe")
def test_token_ids_in_a_pair_record_win_over_its_text(toy_data_dir, tmp_path):
    tokenizer = data.Tokenizer.load(f"{toy_data_dir}/tokenizer.json")
    record = {"prompt": "x", "chosen": "yy", "rejected": "z", "prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8]}
    pairs, _, _ = dpo.read_pairs(write_pairs(tmp_path / "p.jsonl", [record]), tokenizer, max_len=64)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ([5, 6], [7], [8])


def preference_pairs(tokenizer, n=48):
    """Pairs with one known preference: after any prompt, the token for "7" beats the token for "3"."""
    seven, three = tokenizer.encode("7"), tokenizer.encode("3")
    generator = torch.Generator().manual_seed(5)
    records = []
    for _ in range(n):
        prompt = torch.randint(10, 200, (int(torch.randint(3, 9, (1,), generator=generator)),), generator=generator).tolist()
        records.append({"prompt": tokenizer.decode(prompt), "chosen": "7", "rejected": "3",
                        "prompt_ids": prompt, "chosen_ids": seven, "rejected_ids": three})
    return records


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_training_on_a_known_preference_drives_accuracy_and_margin_up(toy_data_dir, tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer))
    cfg = dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"), steps=25,
                        batch_size=8, lr=3e-3, warmup_steps=2, device="cpu", beta=0.5)
    records = dpo.train_dpo(cfg)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # step 1 runs at policy == reference
    assert records[-1]["accuracy"] == 1.0 and records[-1]["margin"] > 1.0 and records[-1]["loss"] < 0.4


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_freeze_attention_leaves_every_attention_weight_as_it_was_and_trains_the_rest(toy_data_dir, tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=8))
    dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"), steps=3,
                                batch_size=8, lr=1e-3, warmup_steps=0, device="cpu", freeze_attention=True))
    before = checkpoint.load_model(str(tmp_path / "init"), "cpu")[0].state_dict()
    after = checkpoint.load_model(str(tmp_path / "dpo"), "cpu")[0].state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and not any(".attn." in name for name in moved)
    assert any(".mlp." in name for name in moved) and "embed.weight" in moved


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_reference_logprobs_are_computed_once_from_the_init_weights_and_stored_with_the_pairs(toy_data_dir, tmp_path, monkeypatch, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=16))
    built = []
    original = checkpoint.build_model
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: built.append(1) or original(*a, **k))
    dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"), steps=3,
                                batch_size=8, lr=1e-3, warmup_steps=1, device="cpu"))
    assert len(built) == 1  # one model in memory: the policy; the reference is its frozen first pass
    stored = [json.loads(line) for line in open(tmp_path / "dpo" / "pairs.jsonl")]
    init, _ = checkpoint.load_model(str(tmp_path / "init"), "cpu")
    pairs, _, _ = dpo.read_pairs(pairs_file, tokenizer, 64)
    ids, mask = dpo.collate(pairs, tokenizer.pad_id, "cpu")
    with torch.no_grad():
        expected = dpo.sequence_logprobs(init, ids, mask)
    assert [r["ref_chosen_logp"] for r in stored] == pytest.approx(expected[:16].tolist(), abs=1e-5)
    assert [r["ref_rejected_logp"] for r in stored] == pytest.approx(expected[16:].tolist(), abs=1e-5)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_resuming_dpo_gives_the_same_losses_as_an_uninterrupted_run(toy_data_dir, tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=24))
    base = dict(init=str(tmp_path / "init"), pairs=pairs_file, steps=6, batch_size=8, lr=1e-3, warmup_steps=1, device="cpu")
    full = dpo.train_dpo(dpo.DPOConfig(out=str(tmp_path / "a"), **base))
    dpo.train_dpo(dpo.DPOConfig(out=str(tmp_path / "b"), stop_at=3, **base))
    resumed = dpo.train_dpo(dpo.DPOConfig(out=str(tmp_path / "b"), resume=True, **base))
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[3:]], abs=1e-6)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_a_resumed_run_whose_stored_pairs_lost_their_reference_log_probs_is_refused(toy_data_dir, tmp_path, tiny_checkpoint):
    # Recomputing them would score the pairs with the trained weights, not the --init ones.
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=8))
    cfg = dict(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"), steps=2, batch_size=8, device="cpu")
    dpo.train_dpo(dpo.DPOConfig(stop_at=1, **cfg))
    stored = tmp_path / "dpo" / "pairs.jsonl"
    records = [json.loads(line) for line in stored.read_text().splitlines()]
    assert all("ref_chosen_logp" in record for record in records)
    write_pairs(stored, [{k: v for k, v in record.items() if not k.startswith("ref_")} for record in records])
    with pytest.raises(ValueError, match="lacks reference log-probs of this model"):
        dpo.train_dpo(dpo.DPOConfig(resume=True, **cfg))


def test_dpo_without_init_exits_with_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "dpo.py", "--pairs", "x.jsonl", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "--init" in result.stderr


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_two_torchrun_ranks_train_dpo_like_one_process_with_the_same_batch(toy_data_dir, tmp_path, tiny_checkpoint):
    """The FSDP2 path of train.py, reused: each rank takes half of every batch of pairs."""
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=24))
    flags = dict(init=str(tmp_path / "init"), pairs=pairs_file, steps=4, batch_size=8, lr=1e-3, warmup_steps=1, device="cpu")
    single = dpo.train_dpo(dpo.DPOConfig(out=str(tmp_path / "one"), **flags))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "dpo.py",
               "--out", str(tmp_path / "two")]
    for name, value in flags.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)))  # its torchelastic_* folder stays in tmp_path
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads(line) for line in open(tmp_path / "two" / "log.jsonl")]
    assert [r["loss"] for r in ranks] == pytest.approx([r["loss"] for r in single], rel=1e-5)
    assert [r["margin"] for r in ranks] == pytest.approx([r["margin"] for r in single], rel=1e-4, abs=1e-7)
    assert single[-1]["margin"] > 0  # it did learn something, so the comparison is not of two no-ops


# ----------------------------------------------------------------------------------------------------
# The NLL term (RPO) and the stop on a collapsing chosen reward


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_the_logged_nll_is_the_chosen_answers_mean_per_token_negative_log_likelihood(toy_data_dir, tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    records = preference_pairs(tokenizer, n=8)
    for record in records[::2]:  # chosen answers of two lengths, so a per-token mean differs from a per-pair one
        record["chosen_ids"] = tokenizer.encode("7 7 7")
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", records)
    # One step over all 8 pairs: the NLL is logged from the forward before the update.
    logged = dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"),
                                         steps=1, batch_size=8, lr=1e-3, warmup_steps=0, device="cpu"))
    model, _ = checkpoint.load_model(str(tmp_path / "init"), "cpu")
    expected = sum(-naive_logprobs(model, r["prompt_ids"], r["chosen_ids"]) / len(r["chosen_ids"]) for r in records) / 8
    assert logged[0]["nll"] == pytest.approx(expected, rel=1e-4)
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the DPO part alone: policy == reference


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "sequence_logprobs", "dpo_loss")
def test_an_answer_prefix_shared_by_both_completions_leaves_the_dpo_loss_and_adds_to_the_nll(tiny_model):
    # pts.py writes the answer so far at the start of both completions, not at the end of the prompt.
    policy, reference = tiny_model(0, **DPO_MODEL), tiny_model(1, **DPO_MODEL)
    question, so_far, chosen, rejected = [3, 1, 4], [1, 5, 9, 2], [6], [5]

    def loss_and_chosen_logp(pair):
        ids, mask = dpo.collate([pair], pad_id=0, device="cpu")
        with torch.no_grad():
            policy_logps = dpo.sequence_logprobs(policy, ids, mask)  # (2,): chosen, rejected
            reference_logps = dpo.sequence_logprobs(reference, ids, mask)  # (2,)
        loss, _, _ = dpo.dpo_loss(policy_logps[:1], policy_logps[1:], reference_logps[:1], reference_logps[1:], beta=1.0)
        return loss.item(), policy_logps[0].item()

    loss_in_prompt, chosen_in_prompt = loss_and_chosen_logp(dpo.Pair(question + so_far, chosen, rejected))
    loss_shared, chosen_shared = loss_and_chosen_logp(dpo.Pair(question, so_far + chosen, so_far + rejected))
    assert abs(loss_in_prompt - math.log(2)) > 1e-3  # policy and reference differ: the next check is not vacuous
    assert loss_shared == pytest.approx(loss_in_prompt, abs=1e-5)
    # What the NLL term reads, the chosen completion's log-prob, now holds the answer so far as well.
    assert chosen_shared - chosen_in_prompt == pytest.approx(naive_logprobs(policy, question, so_far), abs=1e-4)


def test_a_chosen_reward_below_the_floor_for_ten_steps_is_a_reason_to_stop():
    steady = [{"chosen_reward": -0.5}] * 10
    assert dpo.chosen_reward_collapse(steady, floor=-1.0) is None
    assert dpo.chosen_reward_collapse(steady[:9] + [{"chosen_reward": -10.0}] * 0, floor=-1.0) is None  # < 10 steps
    falling = [{"chosen_reward": -0.5}] * 5 + [{"chosen_reward": -2.0}] * 5  # mean -1.25
    assert "-1.25" in dpo.chosen_reward_collapse(falling, floor=-1.0)
    assert dpo.chosen_reward_collapse(falling, floor=-1.3) is None


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_dpo_stops_and_saves_at_the_step_the_chosen_reward_collapses(toy_data_dir, tmp_path, tiny_checkpoint):
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", preference_pairs(tokenizer, n=16))
    # A floor above any reward the run can reach at the start (rewards begin at 0): it stops at step 10.
    records = dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / "dpo"),
                                          steps=30, batch_size=8, lr=1e-3, warmup_steps=1, device="cpu",
                                          min_chosen_reward=5.0))
    assert len(records) == 10 and checkpoint.read_checkpoint(str(tmp_path / "dpo"))["step"] == 10


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "sequence_logprobs", "dpo_loss")
def test_with_preference_weight_0_the_rejected_answers_change_nothing(toy_data_dir, tmp_path, tiny_checkpoint):
    # The NLL-only control: two runs whose pairs differ only in the rejected answer train the same weights;
    # with the preference term on, the same two runs part (so the comparison can tell them apart).
    tokenizer = tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    records = preference_pairs(tokenizer, n=8)
    other = [dict(r, rejected="5", rejected_ids=tokenizer.encode("5")) for r in records]

    def trained(pairs, name, weight):
        pairs_file = write_pairs(tmp_path / f"{name}.jsonl", pairs)
        dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=pairs_file, out=str(tmp_path / name), steps=2,
                                    batch_size=8, lr=1e-3, warmup_steps=0, device="cpu", preference_weight=weight))
        return checkpoint.load_model(str(tmp_path / name), "cpu")[0].state_dict()

    for weight, same in ((0.0, True), (1.0, False)):
        first, second = trained(records, f"a{weight}", weight), trained(other, f"b{weight}", weight)
        assert all(torch.equal(first[name], second[name]) for name in first) == same


@pytest.mark.exercise("bpe", "rope")
def test_preference_and_nll_weights_both_0_are_refused_naming_the_flags(toy_data_dir, tmp_path, tiny_checkpoint):
    tiny_checkpoint(tmp_path / "init", **dict(DPO_MODEL, max_seq_len=64))
    with pytest.raises(ValueError, match="--preference-weight 0 and --nll-weight 0"):
        dpo.train_dpo(dpo.DPOConfig(init=str(tmp_path / "init"), pairs=str(tmp_path / "none.jsonl"), out=str(tmp_path / "dpo"),
                                    device="cpu", preference_weight=0.0, nll_weight=0.0))
