"""train.py: exact resume, overfitting one batch, a golden loss curve, the LR schedule, atomic checkpoints
that survive an interrupted save, and one-line errors with a non-zero exit for bad input."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import data
import parallel
import train
import trainer
from model import get_config
from torch.distributed.checkpoint.api import CheckpointException
from train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(os.path.dirname(__file__), "golden_loss.json")


# The runs of these tests: 8 steps of 512 tokens (two micro-batches of 4 x 64), seed 7.
SMALL = dict(steps=8, batch_tokens=512, warmup_steps=2, eval_batches=2, seed=7)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_resuming_from_a_checkpoint_gives_the_same_losses_as_an_uninterrupted_run(toy_data_dir, tmp_path, toy_run):
    straight = train.train(toy_run(tmp_path / "a", **SMALL))
    first = train.train(toy_run(tmp_path / "b", **SMALL | dict(stop_at=3)))
    resumed = train.train(toy_run(tmp_path / "b", **SMALL | dict(resume=True)))
    assert [r["step"] for r in first + resumed] == list(range(1, 9))
    # Identical on CPU: same weights, optimizer moments, data position and schedule after the restart.
    assert [r["loss"] for r in first + resumed] == [r["loss"] for r in straight]


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_gradient_accumulation_matches_one_big_micro_batch(toy_data_dir, tmp_path, toy_run):
    one = train.train(toy_run(tmp_path / "a", **SMALL | dict(steps=3, batch_size=8)))
    accumulated = train.train(toy_run(tmp_path / "b", **SMALL | dict(steps=3, batch_size=2)))  # 4 x 2 rows
    for a, b in zip(one, accumulated):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope")
def test_overfitting_one_batch_drives_the_loss_near_zero(toy_data_dir):
    cfg = TrainConfig(data=toy_data_dir, seq_len=32, seed=0)
    model = checkpoint.build_model(train.model_config(cfg, train.prepare_data(cfg), None), "cpu")
    loader = train.data.TokenLoader(train.data.shard_paths(toy_data_dir, "train"), 2, 32)
    inputs, targets = (torch.from_numpy(t) for t in loader.next_batch())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = model(inputs, targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first > 5.0 and loss.item() < 0.05


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_the_first_steps_of_the_toy_run_follow_the_golden_loss_curve(toy_data_dir, tmp_path, toy_run):
    """Guards against silent changes to init, data order, loss or optimizer. Regenerate the golden file
    with REGENERATE_GOLDEN=1 only after a deliberate change, and say why in the commit."""
    losses = [r["loss"] for r in train.train(toy_run(tmp_path, **SMALL | dict(steps=6)))]
    if os.environ.get("REGENERATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            json.dump({"losses": losses}, f, indent=2)
    with open(GOLDEN) as f:
        golden = json.load(f)["losses"]
    assert losses == pytest.approx(golden, abs=2e-3)
    assert losses[-1] < losses[0] - 0.5  # and it is learning


@pytest.mark.exercise("lr_schedule")
def test_learning_rate_warms_up_linearly_then_decays_linearly_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, steps=14, min_lr_ratio=0.1)
    lrs = [trainer.learning_rate(s, cfg) for s in range(14)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.55)
    assert trainer.learning_rate(14, cfg) == pytest.approx(0.1)


@pytest.mark.exercise("bpe", "rope")
def test_weight_decay_applies_to_matrices_and_not_to_norm_gains(toy_data_dir):
    cfg = TrainConfig(data=toy_data_dir, seq_len=32)
    model = checkpoint.build_model(train.model_config(cfg, train.prepare_data(cfg), None), "cpu")
    decay, no_decay = trainer.make_optimizer(model, train.resolve_stage(TrainConfig()), torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(p) for n, p in model.named_parameters() if "norm" in n}


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
@pytest.mark.parametrize("crash_in", ["shards", "record"])
def test_an_interrupted_save_leaves_the_last_good_checkpoint_intact(toy_data_dir, tmp_path, monkeypatch, crash_in, toy_run):
    """A checkpoint is a folder of tensor shards (written through torch.save streams by every rank) and
    the ckpt.pt record naming it (a file written last); the power may go out during either."""
    cfg = toy_run(tmp_path, **SMALL | dict(steps=2))
    train.train(cfg)
    good = checkpoint.read_checkpoint(str(tmp_path))
    model, _ = checkpoint.load_model(str(tmp_path))
    good_weights = {k: v.clone() for k, v in model.state_dict().items()}
    real_save = torch.save

    def crash_mid_write(obj, f):
        writing_record = isinstance(obj, dict) and "shards" in obj  # the record; anything else is a shard
        if writing_record != (crash_in == "record"):
            return real_save(obj, f)
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the power goes out while writing

    monkeypatch.setattr(torch, "save", crash_mid_write)
    # torch.distributed.checkpoint reports a failure on any rank as a CheckpointException.
    with pytest.raises((KeyboardInterrupt, CheckpointException)):
        checkpoint.save_checkpoint(str(tmp_path), model, None, 99, None, cfg)
    monkeypatch.undo()
    survivor = checkpoint.read_checkpoint(str(tmp_path))
    assert survivor["step"] == good["step"] == 2
    reloaded, _ = checkpoint.load_model(str(tmp_path))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in good_weights.items())


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_a_checkpoint_records_the_resolved_configs(toy_data_dir, tmp_path, toy_run):
    train.train(toy_run(tmp_path, **SMALL | dict(steps=1)))
    state = checkpoint.read_checkpoint(str(tmp_path))
    assert state["model_config"]["max_seq_len"] == 64
    assert state["train_config"]["seq_len"] == 64 and state["ranks"][0]["loader"]["position"] > 0
    assert os.path.exists(tmp_path / "tokenizer.json")


def test_a_run_from_init_picks_its_own_attention_and_a_resumed_run_keeps_its_own():
    # The parent pretrained with 'naive' (fastest at 256 tokens on a CPU); its child must not inherit it.
    record = {"model_config": train.get_config("toy", attn_impl="naive").to_dict()}
    assert train.model_config(TrainConfig(init="out/pretrain"), None, record).attn_impl == "sdpa"
    assert train.model_config(TrainConfig(init="out/pretrain", attn_impl="triton"), None, record).attn_impl == "triton"
    saved = record | {"train_config": {"attn_impl": "naive"}}  # what the parent run itself resumes from
    resumed = trainer.resume_settings(TrainConfig(resume=True), saved)
    assert train.model_config(resumed, None, saved).attn_impl == "naive"
    assert train.model_config(TrainConfig(attn_impl="naive"), None, None).attn_impl == "naive"


# -- bad input: one clear line, non-zero exit ----------------------------------------------------


def run_train_cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_an_unknown_size_exits_non_zero_naming_the_flag():
    result = run_train_cli("--size", "15b")
    assert result.returncode != 0 and "--size" in result.stderr and "15b" in result.stderr


@pytest.mark.exercise("bpe")
def test_a_missing_checkpoint_exits_with_one_clear_line(tmp_path, toy_data_dir):
    result = run_train_cli("--init", str(tmp_path / "nowhere"), "--data", toy_data_dir, "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in")


@pytest.mark.exercise("bpe")
def test_a_corrupt_checkpoint_exits_with_one_clear_line(tmp_path, toy_data_dir):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"not a checkpoint")
    result = run_train_cli("--init", str(tmp_path / "bad"), "--data", toy_data_dir, "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert "corrupt" in result.stderr.strip().splitlines()[-1]


def test_a_data_folder_without_shards_exits_with_one_clear_line(tmp_path):
    result = run_train_cli("--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --data {tmp_path} holds no train_*.bin shards")


@pytest.mark.exercise("bpe")
def test_a_data_folder_without_its_tokenizer_is_refused_naming_it(tmp_path, toy_data_dir):
    for shard in glob.glob(os.path.join(toy_data_dir, "train_*.bin")):  # the shards, not the tokenizer
        shutil.copy(shard, tmp_path)
    with pytest.raises(ValueError, match=f"--data {tmp_path} has no tokenizer.json"):
        train.prepare_data(train.TrainConfig(data=str(tmp_path)))


@pytest.mark.exercise("bpe")
def test_a_checkpoint_with_fewer_embedding_rows_than_the_tokenizer_has_ids_is_refused(toy_data_dir):
    tokenizer = train.prepare_data(train.TrainConfig(data=toy_data_dir))
    record = {"model_config": get_config("toy", vocab_size=64).to_dict()}  # ids 64 and up would index past it
    with pytest.raises(ValueError, match=f"has {tokenizer.vocab_size} ids but the model only 64"):
        train.model_config(train.TrainConfig(data=toy_data_dir), tokenizer, record)


@pytest.mark.exercise("bpe")
def test_a_batch_too_large_for_memory_is_refused_before_training_naming_the_flags(tmp_path, toy_data_dir):
    result = run_train_cli("--seq-len", "100000", "--data", toy_data_dir, "--out", str(tmp_path / "o"), "--steps", "1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "--seq-len" in result.stderr


@pytest.mark.exercise("bpe", "chat_mask")
def test_sft_conversations_longer_than_the_rows_are_left_out_and_the_count_is_printed(toy_data_dir, tmp_path, toy_run, capsys):
    # Cut-off answers would teach stopping mid-solution; a silent drop would hide a too-short --seq-len.
    cfg = train.resolve_stage(toy_run(tmp_path, stage="sft", init=str(tmp_path / "pre"), seq_len=None))
    tokenizer = train.prepare_data(cfg)
    loader, _ = train.make_loaders(cfg, tokenizer, 100)
    lengths = [len(tokenizer.render_chat(c)[0]) for c in data.read_conversations(os.path.join(toy_data_dir, "sft.jsonl"))]
    trained = lengths[len(lengths) - len(loader.examples) - loader.n_dropped:]  # the tail: the head is held out
    too_long = sum(n > 101 for n in trained)
    assert 0 < too_long < len(trained) and loader.n_dropped == too_long and len(loader.examples) == len(trained) - too_long
    assert f"note: {too_long} conversations longer than --seq-len 100 were left out" in capsys.readouterr().out


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_sft_loss_is_the_mean_cross_entropy_over_assistant_tokens_only(toy_data_dir, tmp_path, toy_run):
    # 128 tokens: the toy world's conversations (two people, the chat template) do not fit in 64.
    train.train(toy_run(tmp_path / "pre", **SMALL | dict(steps=2, seq_len=128)))
    cfg = toy_run(tmp_path / "sft", **SMALL | dict(stage="sft", init=str(tmp_path / "pre"), steps=1, seq_len=None, batch_tokens=512, lr=0.0))
    records = train.train(cfg)
    # Oracle: the same first batch, scored by hand with the init weights and the render mask.
    cfg = train.resolve_stage(cfg)
    tokenizer = train.prepare_data(cfg)
    model, _ = checkpoint.load_model(str(tmp_path / "pre"), "cpu")
    loader, _ = train.make_loaders(cfg, tokenizer, model.config.max_seq_len)
    inputs, targets = loader.next_batch()
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).float()
    keep = torch.from_numpy(targets) != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], torch.from_numpy(targets)[keep])
    assert records[0]["loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert 0 < keep.sum() < keep.numel()  # some positions are masked out, some are not


@pytest.mark.exercise("bpe")
def test_sft_without_init_exits_with_one_clear_line_naming_the_flag(tmp_path, toy_data_dir):
    result = subprocess.run(
        [sys.executable, "train.py", "--stage", "sft", "--data", toy_data_dir, "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode != 0 and result.stderr.strip().startswith("error:") and "--init" in result.stderr


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_a_fresh_models_depth_and_rope_base_come_from_the_flags(toy_run, tmp_path):
    train.train(toy_run(tmp_path, steps=1, n_layer=1, rope_theta=1234.0))
    config = checkpoint.read_checkpoint(str(tmp_path))["model_config"]
    assert (config["n_layer"], config["rope_theta"]) == (1, 1234.0)  # the toy preset has 4 layers and base 800


@pytest.mark.exercise("bpe")
def test_only_the_default_data_folder_is_built_on_demand_and_a_missing_one_named_by_the_user_is_refused(
        toy_data_dir, tmp_path, monkeypatch, capsys):
    built = []

    def build(out_dir, **kwargs):  # the toy world, as data.py would build it (copied: building takes a minute)
        built.append(out_dir)
        shutil.copytree(toy_data_dir, out_dir, dirs_exist_ok=True)

    default = str(tmp_path / "toy")
    monkeypatch.setattr(data, "TOY_DATA_DIR", default)
    monkeypatch.setattr(data, "build_toy_dataset", build)
    assert train.prepare_data(TrainConfig(data=default)).vocab_size > 256
    assert built == [default] and f"no data in {default}: building the toy synthetic world" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--data .*mine holds no train_\\*.bin shards"):
        train.prepare_data(TrainConfig(data=str(tmp_path / "mine")))  # a folder that is not there: a typo, not a build
    assert built == [default]


def test_sft_refuses_a_new_rope_base():
    cfg = train.TrainConfig(stage="sft", init="out/midtrain", rope_theta=20000.0)
    with pytest.raises(ValueError, match="--rope-theta changes the RoPE base only in --stage pretrain or midtrain"):
        train.resolve_stage(cfg)


def test_a_resumed_run_keeps_its_rows_per_micro_step_at_any_number_of_ranks():
    # Saved by 2 ranks of 4 rows: every micro-step read 8 rows, and the data order depends on that.
    assert trainer.global_batch(None, saved=4, saved_ranks=2, ranks=4) == 2
    assert trainer.global_batch(8, saved=4, saved_ranks=2, ranks=1) == 8
    with pytest.raises(ValueError, match=r"--batch-size 4 x 1 rank\(s\) = 4 rows differs .* \(4 x 2 = 8\)"):
        trainer.global_batch(4, saved=4, saved_ranks=2, ranks=1)
    with pytest.raises(ValueError, match="reads 8 rows per micro-step, which 3 ranks cannot share"):
        trainer.global_batch(None, saved=4, saved_ranks=2, ranks=3)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule")
def test_bf16_autocast_changes_the_rounding_not_the_training(toy_run, tmp_path):
    """--bf16-autocast runs the CPU matmuls in bf16: the losses move by rounding only (an autocast that
    silently did nothing would give exactly the fp32 losses), and both runs learn alike."""
    fp32 = [r["loss"] for r in train.train(toy_run(tmp_path / "fp32", steps=4))]
    bf16 = [r["loss"] for r in train.train(toy_run(tmp_path / "bf16", steps=4, bf16_autocast=True))]
    assert fp32 != bf16
    assert bf16 == pytest.approx(fp32, abs=2e-2)


class BigramLM(torch.nn.Module):
    """A stand-in language model for the step function: next-token logits are a table row per current token."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, inputs, targets, reduction="mean"):
        logits = self.table[inputs]  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)


class FixedBatches:
    """A loader that hands out the given (inputs, targets) batches in order."""

    def __init__(self, batches):
        self.batches = list(batches)

    def next_batch(self):
        return self.batches.pop(0)


@pytest.mark.exercise("lr_schedule")
def test_four_micro_batches_give_the_loss_and_gradient_of_the_mean_over_all_their_target_tokens():
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 11, size=(4, 6))
    targets = rng.integers(0, 11, size=(4, 6))
    targets[0, :5] = -100  # rows with 1, 3, 6 and 6 scored tokens: a per-micro-batch mean would overweight row 0
    targets[1, :3] = -100
    world = parallel.init_distributed(torch.device("cpu"))
    try:
        results = {}
        for accum in (1, 4):
            model = BigramLM()
            rows = np.split(np.arange(4), accum)
            step = train.lm_step(model, FixedBatches((inputs[r], targets[r]) for r in rows), accum, world)
            results[accum] = (step()["loss"], model.table.grad.clone())
    finally:
        parallel.shutdown(world)
    # The oracle: one float64 mean over every scored token of the four rows.
    table = BigramLM().table.detach().double().requires_grad_()
    mask = torch.from_numpy(targets != -100)
    logits = table[torch.from_numpy(inputs)][mask]
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets)[mask])
    loss.backward()
    for accum, (got_loss, got_grad) in results.items():
        assert got_loss == pytest.approx(loss.item(), rel=1e-6), accum
        torch.testing.assert_close(got_grad.double(), table.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.exercise("lr_schedule")
def test_a_step_without_a_single_target_token_is_refused_instead_of_dividing_by_zero():
    inputs = np.zeros((2, 6), dtype=np.int64)
    targets = np.full((2, 6), -100)  # SFT rows whose assistant turn was cut off: nothing to score
    world = parallel.init_distributed(torch.device("cpu"))
    try:
        step = train.lm_step(BigramLM(), FixedBatches([(inputs, targets)]), 1, world)
        with pytest.raises(ValueError, match="a training batch has no target token"):
            step()
    finally:
        parallel.shutdown(world)


def test_a_checkpoint_whose_ranks_stopped_at_different_data_positions_resumes_only_on_as_many_ranks():
    record = {"ranks": [{"loader": {"position": 3}, "rng": None}, {"loader": {"position": 5}, "rng": None}]}
    world = parallel.Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mesh=None, owns_group=False)
    with pytest.raises(ValueError, match="written by 2 ranks at different data positions; resume it on 2 ranks"):
        train.restore_position(record, FixedBatches([]), world)
