"""Midtraining (context extension): RoPE tables against a float64 formula for the new base and length,
a midtrained checkpoint that reloads with 4x the context and 25x the RoPE base (or the old base, for the
ablation), positions past the table refused instead of wrapped, long recall documents whose keys are
re-derived from their text, the long/replay mixture counted row by row, and the long-context
evaluation scored on oracle predictors."""

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import toyworld
import checkpoint
import eval as evaluation
import train
from model import KVCache, ModelConfig, Phi4, get_config, rope_tables
from train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pretrained(toy_data_dir, tmp_path_factory, toy_run):
    out = tmp_path_factory.mktemp("pretrain")
    train.train(toy_run(out))
    # Long documents for midtraining's rows of 4 x 64 + 1 tokens; fewer than the default keeps this fast.
    data.ensure_long_documents(toy_data_dir, 257, n_train=300, n_val=16)
    return str(out)


@pytest.fixture(scope="module")
def toy_tokenizer(toy_data_dir):
    return data.Tokenizer.load(os.path.join(toy_data_dir, "tokenizer.json"))


# -- RoPE tables and the checkpoint of a midtraining run ---------------------------------------------


def reference_tables(n_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of m * theta^(-2i/D) in float64, channel i and i + D/2 sharing an angle (rotate half)."""
    cos = torch.empty(n_positions, head_dim, dtype=torch.float64)
    sin = torch.empty(n_positions, head_dim, dtype=torch.float64)
    for i in range(head_dim // 2):
        angles = torch.arange(n_positions, dtype=torch.float64) * theta ** (-2 * i / head_dim)
        cos[:, i] = cos[:, i + head_dim // 2] = torch.cos(angles)
        sin[:, i] = sin[:, i + head_dim // 2] = torch.sin(angles)
    return cos, sin


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "context_extension")
@pytest.mark.parametrize("keep_base", [False, True])  # the recipe (25x the base), and the ablation that keeps it
def test_a_midtrained_checkpoint_reloads_with_4x_the_context_and_the_new_rope_base(toy_data_dir, pretrained, tmp_path, keep_base, capsys, toy_run):
    old = checkpoint.read_checkpoint(pretrained)["model_config"]["rope_theta"]
    theta = old if keep_base else 25 * old  # Phi-4: 10K -> 250K
    flags = dict(stage="midtrain", init=pretrained, seq_len=None, batch_size=2, eval_batches=1)
    if keep_base:
        flags["rope_theta"] = old  # --rope-theta with the pretrained base
    train.train(toy_run(tmp_path, **flags))
    printed = capsys.readouterr().out
    state = checkpoint.read_checkpoint(str(tmp_path))
    assert state["model_config"]["max_seq_len"] == 4 * 64 and state["model_config"]["rope_theta"] == theta
    assert state["train_config"]["lr"] == pytest.approx(train.STAGE_DEFAULTS["pretrain"]["lr"] / train.MIDTRAIN_LR_DIVISOR)
    # Each change is logged old -> new.
    assert "max_seq_len 64 -> 256" in printed and f"rope_theta {old:g} -> {theta:g}" in printed
    assert "peak lr 0.003 (pretraining) -> 0.001" in printed
    # Reloaded, the model has tables for 256 positions at the new base (float32 against float64).
    model, _ = checkpoint.load_model(str(tmp_path), "cpu")
    cos, sin = reference_tables(256, model.config.head_dim, theta)
    assert model.rope_cos.shape == (256, model.config.head_dim)
    torch.testing.assert_close(model.rope_cos.double(), cos, atol=2e-5, rtol=0)
    torch.testing.assert_close(model.rope_sin.double(), sin, atol=2e-5, rtol=0)


@pytest.mark.exercise("bpe", "rmsnorm_swiglu", "rope", "lr_schedule", "context_extension")
def test_an_interrupted_midtraining_run_resumes_to_the_same_losses(toy_data_dir, pretrained, tmp_path, toy_run):
    flags = dict(stage="midtrain", seq_len=None, batch_size=2, steps=3)
    straight = train.train(toy_run(tmp_path / "a", init=pretrained, **flags))
    first = train.train(toy_run(tmp_path / "b", init=pretrained, stop_at=1, **flags))
    # --resume alone: the context, base and LR come back from the run's own checkpoint.
    resumed = train.train(toy_run(tmp_path / "b", resume=True, **flags))
    assert [r["loss"] for r in first + resumed] == [r["loss"] for r in straight]
    old = checkpoint.read_checkpoint(pretrained)["model_config"]["rope_theta"]
    assert checkpoint.read_checkpoint(str(tmp_path / "b"))["model_config"]["rope_theta"] == 25 * old


@pytest.mark.exercise("rope")
def test_the_rope_tables_of_the_new_base_turn_slower_than_the_old_ones_at_every_channel_pair_but_the_first():
    """Raising the base slows every rotation but the fastest: the slow pairs, which carry long-range
    position, then stay within the angles pretraining saw over 4x the distance."""
    old_cos, old_sin = rope_tables(2, 32, 10_000.0)  # the project's tables, checked against float64 below
    new_cos, new_sin = rope_tables(2, 32, 250_000.0)
    torch.testing.assert_close(new_sin.double(), reference_tables(2, 32, 250_000.0)[1], atol=1e-6, rtol=0)
    # The angle of one position step, per channel pair (atan2 keeps the tiny angles that arccos would lose).
    old_angle = torch.atan2(old_sin[1, :16], old_cos[1, :16]).double()
    new_angle = torch.atan2(new_sin[1, :16], new_cos[1, :16]).double()
    assert float(old_angle[0]) == pytest.approx(1.0, abs=1e-6) and float(new_angle[0]) == pytest.approx(1.0, abs=1e-6)
    assert bool((new_angle[1:] < old_angle[1:]).all())
    # The slowest pair at 4 x 256 positions under 250K turns less than under 10K over 256 positions.
    assert rope_tables(1025, 32, 250_000.0)[1][1024, 15] < rope_tables(257, 32, 10_000.0)[1][256, 15]


@pytest.mark.exercise("rope")
def test_the_toy_rope_base_turns_its_slowest_pair_over_its_context_as_far_as_phi4s_turns_over_4k():
    """The toy's base is Phi-4's geometry scaled down: its slowest pair, the one a head can match a name
    with at any distance, stays nearly still over the pretraining context, turns ~2 rad over 4x (where
    the kept-base ablation stops recalling) and is nearly still again after midtraining's 25x base."""
    def slowest_angle(config, position, theta):  # the angle of the last channel pair at one position
        cos, sin = rope_tables(position + 1, config.head_dim, theta)
        return math.atan2(float(sin[position, config.head_dim // 2 - 1]), float(cos[position, config.head_dim // 2 - 1]))

    toy, phi4 = get_config("toy"), get_config("14b")
    for multiple in (1, 4):
        ours = slowest_angle(toy, multiple * toy.max_seq_len, toy.rope_theta)
        theirs = slowest_angle(phi4, multiple * phi4.max_seq_len, phi4.rope_theta)
        assert ours == pytest.approx(theirs, rel=0.05)
    assert slowest_angle(toy, 4 * toy.max_seq_len, toy.rope_theta) > 1.5
    assert slowest_angle(toy, 4 * toy.max_seq_len, 25 * toy.rope_theta) < 0.15


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "context_extension")
def test_positions_beyond_the_extended_table_raise_a_clear_error_instead_of_wrapping():
    model = Phi4(ModelConfig(vocab_size=64, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, max_seq_len=16))
    model.set_rope(max_seq_len=64, rope_theta=250_000.0)  # what midtraining does
    model(torch.zeros(1, 64, dtype=torch.long))  # the whole new context works
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    # Through a KV cache as well: 60 tokens cached, then 5 more would need positions 60..64.
    cache = KVCache(model.config, batch_size=1, max_len=64)
    model(torch.zeros(1, 60, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_seq_len 64"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


@pytest.mark.exercise("bpe")
def test_midtraining_without_a_pretrained_model_exits_with_one_clear_line_naming_the_flag(toy_data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--stage", "midtrain", "--data", toy_data_dir, "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "--init" in last


@pytest.mark.exercise("context_extension")
def test_the_14b_midtraining_goes_from_4096_to_16384_tokens_with_base_250k_and_a_third_of_the_lr(tmp_path):
    # A checkpoint record of a pretrained 14b (no weights are read to plan the extension).
    (tmp_path / "shards-0000001-abcdef").mkdir()
    record = {"step": 1, "shards": "shards-0000001-abcdef", "model_config": train.get_config("14b").to_dict(),
              "train_config": {"lr": 3e-4, "size": "14b"}, "ranks": []}
    torch.save(record, tmp_path / "ckpt.pt")
    cfg = train.resolve_stage(TrainConfig(stage="midtrain", size="14b", init=str(tmp_path)))
    assert (cfg.seq_len, cfg.rope_theta, cfg.lr) == (16384, 250_000.0, pytest.approx(1e-4))
    planned = train.resolve_stage(TrainConfig(stage="midtrain", size="14b", dry_run=True))  # no checkpoint: the preset
    assert (planned.seq_len, planned.rope_theta) == (16384, 250_000.0)


# -- long documents ----------------------------------------------------------------------------------


@pytest.mark.exercise("bpe")
def test_the_long_shards_hold_recall_documents_of_every_length_that_fit_a_row(toy_data_dir, toy_tokenizer):
    meta = data.ensure_long_documents(toy_data_dir, 257)
    assert meta["doc_tokens"] == 257 and meta["long_train_documents"] > 0
    shard = data.read_shard(data.shard_paths(toy_data_dir, "long_train")[0])
    starts = np.flatnonzero(np.asarray(shard) == toy_tokenizer.bos_id)
    assert starts[0] == 0 and len(starts) == meta["long_train_documents"]
    lengths = np.diff([*starts, len(shard)])
    assert lengths.max() <= 257 and lengths.min() < 128  # random lengths: short distances are practised too
    for text in toy_tokenizer.decode(np.asarray(shard).tolist()).split("<|endoftext|>")[1:50]:
        # Oracle: the key on the first line is the number the last line recalls.
        key = re.match(r"Key: (\w+)\n", text).group(1)
        assert text.endswith(f"The key was {key}.\n") and text.count("Key") == 1



@pytest.mark.exercise("bpe")
def test_long_documents_are_reused_for_the_same_row_length_and_rebuilt_for_another(toy_data_dir, tmp_path, capsys):
    shutil.copy(os.path.join(toy_data_dir, "tokenizer.json"), tmp_path)  # the folder's own tokenizer, nothing else
    bos = data.Tokenizer.load(os.path.join(toy_data_dir, "tokenizer.json")).bos_id

    def longest():
        return max(len(doc) for doc in data.shard_documents(data.shard_paths(str(tmp_path), "long_train")[0], bos))

    assert data.ensure_long_documents(str(tmp_path), 65, n_train=40, n_val=4)["doc_tokens"] == 65
    assert "building long documents of up to 65 tokens" in capsys.readouterr().out
    assert data.ensure_long_documents(str(tmp_path), 65, n_train=40, n_val=4)["doc_tokens"] == 65
    assert capsys.readouterr().out == ""  # built for this length already
    assert longest() <= 65
    assert data.ensure_long_documents(str(tmp_path), 129, n_train=40, n_val=4)["doc_tokens"] == 129
    assert "building long documents of up to 129 tokens" in capsys.readouterr().out
    assert 65 < longest() <= 129  # a longer --seq-len gets longer documents, not the old ones

# -- the 30/70 mixture ---------------------------------------------------------------------------------


@pytest.fixture
def mixture_shards(tmp_path):
    """A replay stream 0, 1, 2, ... and 7 long documents [bos, 1000k, 1000k+1, ...] of lengths 5..11."""
    bos, pad = 999, 998
    data.write_shard(str(tmp_path / "train_000.bin"), np.arange(5000) % 900)
    documents = [[bos] + [1000 * k + i for i in range(4 + k)] for k in range(1, 8)]
    data.write_shard(str(tmp_path / "long_train_000.bin"), np.concatenate(documents))
    return str(tmp_path), documents, bos, pad


def test_the_mixture_puts_exactly_30_percent_of_rows_on_long_documents_spread_evenly(mixture_shards):
    folder, documents, bos, pad = mixture_shards
    loader = data.MixtureLoader(data.shard_paths(folder, "train"), data.shard_paths(folder, "long_train"),
                                batch_size=10, seq_len=12, long_fraction=0.3, bos_id=bos, pad_id=pad)
    rows, targets = [], []
    for _ in range(20):
        inputs, batch_targets = loader.next_batch()
        rows += list(inputs)
        targets += list(batch_targets)
    is_long = [row[0] == bos for row in rows]  # a replay row never holds a bos here
    assert sum(is_long) == 60  # 30% of 200 rows
    assert all(sum(is_long[i : i + 10]) == 3 for i in range(0, 200, 10))  # 3 in every 10: no clumps
    next_replay, next_document = 0, 0
    for row, target, long_row in zip(rows, targets, is_long):
        if long_row:
            # One whole document at position 0, padding after it, no loss on the padding.
            document = documents[next_document % len(documents)]
            next_document += 1
            n = len(document)
            assert list(row[:n]) == document and (row[n:] == pad).all()
            assert list(target[: n - 1]) == document[1:] and (target[n - 1 :] == -100).all()
        else:
            # Replay rows are consecutive 13-token windows of the pretraining stream, as in pretraining.
            expected = (np.arange(next_replay * 13, next_replay * 13 + 13) % 5000) % 900
            next_replay += 1
            assert list(row) == list(expected[:-1]) and list(target) == list(expected[1:])


def test_the_long_token_share_midtraining_prints_is_the_share_of_target_tokens_its_rows_give_long_documents(mixture_shards):
    folder, documents, bos, pad = mixture_shards
    loader = data.MixtureLoader(data.shard_paths(folder, "train"), data.shard_paths(folder, "long_train"),
                                batch_size=10, seq_len=12, long_fraction=0.3, bos_id=bos, pad_id=pad)
    long = total = 0
    for _ in range(70):  # 700 rows: 210 long ones, each of the 7 documents 30 times
        inputs, targets = loader.next_batch()
        for row, target in zip(inputs, targets):
            n = int((target != -100).sum())
            total, long = total + n, long + (n if row[0] == bos else 0)
    assert (long, total) == (1680, 7560)  # 210 x 8 targets (lengths 6-12, one fewer each), 490 x 12
    assert loader.long_token_share() == pytest.approx(long / total)
    replay_only = data.MixtureLoader(data.shard_paths(folder, "train"), [], 10, 12, 0.0, bos, pad)
    assert replay_only.long_token_share() == 0.0


def test_the_mixture_splits_the_same_global_rows_over_ranks_and_resumes_exactly(mixture_shards):
    folder, _, bos, pad = mixture_shards
    make = lambda rank, world_size, batch: data.MixtureLoader(
        data.shard_paths(folder, "train"), data.shard_paths(folder, "long_train"), batch, 12, 0.3, bos, pad, rank, world_size)
    single = make(0, 1, 8)
    ranks = [make(0, 2, 4), make(1, 2, 4)]
    for _ in range(5):
        whole, _ = single.next_batch()
        halves = [r.next_batch()[0] for r in ranks]
        assert (np.concatenate(halves) == whole).all()
    resumed = make(0, 1, 8)
    resumed.load_state_dict(single.state_dict())
    assert (resumed.next_batch()[0] == single.next_batch()[0]).all()


def test_long_documents_longer_than_a_row_are_refused_with_the_flag_to_change(mixture_shards):
    folder, _, bos, pad = mixture_shards
    with pytest.raises(ValueError, match="--seq-len"):
        data.MixtureLoader(data.shard_paths(folder, "train"), data.shard_paths(folder, "long_train"), 4, 8, 0.3, bos, pad)


# -- the evaluation ----------------------------------------------------------------------------------


@pytest.mark.exercise("bpe", "rope", "context_extension")
def test_the_long_context_eval_scores_a_perfect_predictor_100_percent_and_a_shifted_one_0(toy_tokenizer, monkeypatch):
    model = Phi4(ModelConfig(vocab_size=960, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64, max_seq_len=256))

    def oracle(shift):
        # Predicts token t+1 from position t exactly (shift 0), or always one id off (shift 1).
        def document_losses(model, documents, pad_id, batch_size=8):
            return [(torch.zeros(len(ids) - 1), torch.tensor(ids[1:]) + shift) for ids in documents]
        return document_losses

    monkeypatch.setattr(evaluation, "document_losses", oracle(0))
    perfect = evaluation.evaluate_long_context(model, toy_tokenizer, base_len=256, n_docs=4)
    monkeypatch.setattr(evaluation, "document_losses", oracle(1))
    shifted = evaluation.evaluate_long_context(model, toy_tokenizer, base_len=256, n_docs=4)
    assert [e["multiple"] for e in perfect["retrieval"]] == [1, 2, 4]
    assert all(e["accuracy"] == 1.0 and e["results"] == "1111" for e in perfect["retrieval"])
    assert all(e["accuracy"] == 0.0 and e["results"] == "0000" for e in shifted["retrieval"])
    assert [e["extrapolated"] for e in perfect["retrieval"]] == [False, True, True]
    # The key sits on the first line and is asked on the last: the distance is nearly the whole length.
    assert [e["mean_distance"] > 256 * e["multiple"] - 24 for e in perfect["retrieval"]] == [True] * 3
    assert [b["start"] for b in perfect["loss_by_position"]] == [0, 256, 512, 768]


@pytest.mark.exercise("bpe", "rope", "context_extension")
def test_the_long_context_eval_extends_rope_only_past_the_models_context_and_restores_it(toy_tokenizer, monkeypatch):
    def exact(model, documents, pad_id, batch_size=8):  # a perfect predictor: the forward is not under test
        return [(torch.zeros(len(ids) - 1), torch.tensor(ids[1:])) for ids in documents]

    monkeypatch.setattr(evaluation, "document_losses", exact)
    for max_seq_len, extended_to in [(1024, []), (256, [1024, 256])]:  # 4 x 256 fits, or extend then restore
        model = Phi4(ModelConfig(vocab_size=960, n_layer=1, d_model=32, n_head=2, n_kv_head=1, ffn_dim=64,
                                 max_seq_len=max_seq_len))
        calls, set_rope = [], model.set_rope
        monkeypatch.setattr(model, "set_rope", lambda max_seq_len: calls.append(max_seq_len) or set_rope(max_seq_len=max_seq_len))
        result = evaluation.evaluate_long_context(model, toy_tokenizer, base_len=256, n_docs=2)
        assert calls == extended_to and model.config.max_seq_len == max_seq_len
        assert [e["extrapolated"] for e in result["retrieval"]] == [256 * m > max_seq_len for m in (1, 2, 4)]
    assert model.config.max_seq_len == 256 and model.rope_cos.shape[0] == 256  # left as it was loaded


@pytest.mark.exercise("bpe")
def test_pretraining_rows_hold_recall_documents_at_position_zero_at_the_stated_share(toy_data_dir, toy_tokenizer, toy_run, tmp_path):
    cfg = toy_run(tmp_path, seq_len=256, long_fraction=0.3)
    loader, val_loader = train.make_loaders(cfg, toy_tokenizer, 256)
    rows = [row for _ in range(10) for row in loader.next_batch()[0]]  # 40 rows
    recall = [row for row in rows if row[0] == toy_tokenizer.bos_id and toy_tokenizer.decode(row[1:4].tolist()).startswith("Key:")]
    assert len(recall) == 12  # 30% of 40, spread evenly
    for row in recall:
        text = toy_tokenizer.decode([t for t in row.tolist() if t != toy_tokenizer.pad_id])
        key = re.match(r"<\|endoftext\|>Key: (\w+)\n", text).group(1)
        assert text.endswith(f"The key was {key}.\n")
    assert val_loader is not None
    with pytest.raises(ValueError, match="--long-fraction 0"):
        train.make_loaders(toy_run(tmp_path, seq_len=64, long_fraction=0.3), toy_tokenizer, 64)
