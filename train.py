"""One training loop for the Phi-4 recipe's token-prediction stages.

Phi-4 report section 3: pretraining on ~10T tokens at 4K context with AdamW-style optimisation, linear
warm-up and linear decay, peak learning rate 3e-4, weight decay 0.1 (global batch 5,760 sequences).
This file runs the same loop at any size, from a laptop CPU to GPU nodes under torchrun:

    python train.py                                  # toy model on the synthetic world, ~5 min on 2 CPU cores
    python train.py --size small --data out/data/mine --device cuda --compile
    python train.py --resume --out out/pretrain      # continue exactly where a run stopped
    python train.py --stage midtrain --init out/pretrain   # context 4x, RoPE base 250K, LR/10, 30% long documents
    python train.py --stage midtrain --init out/pretrain --rope-theta 10000 --out out/midtrain_base10k  # the ablation
    torchrun --nproc_per_node=8 train.py --size 14b --activation-checkpointing --batch-size 1 ...
    python train.py --size 14b --dry-run --world-size 8    # the memory plan per rank, nothing allocated

Every run, `python train.py` included, is one or more ranks of FSDP2 (parallel.py): each rank holds
1/world_size of the weights, gradients and AdamW state and reads its own rows of every batch.

Pieces, top to bottom: TrainConfig (every flag, with --help), the learning-rate schedule, the optimizer,
checkpoints (sharded, atomic, exact resume), evaluation, and the loop itself.

What a step does: it draws `grad_accum` micro-batches per rank so that one optimizer step sees
`--batch-tokens` tokens in all (the same number at any world size) however small the micro-batch, sums
their losses weighted by the token count of the whole global batch, clips the gradient norm, and steps
AdamW. The progress bar shows loss, learning rate, tokens/s and model FLOP
utilisation (MFU: achieved FLOP/s over the device's bf16 peak; "n/a" where the peak is unknown).

Simplified against the report: one data mixture (the synthetic world) instead of five sources, and the
optimizer betas and warm-up length are our choices (the report does not state them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import random
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

import data
import parallel
from model import PRESETS, ModelConfig, Phi4, get_config, peak_flops

# ----------------------------------------------------------------------------------------------------
# Configuration: every field is a command-line flag (underscores become dashes).


# What each stage changes when its flags are not given. Toy-scale values; the Phi-4 numbers they mirror
# are in the comments (report sections 3 and 4).
STAGE_DEFAULTS = {
    # Phi-4: peak 3e-4 at 14B; a 1M-parameter model trains fastest near 3e-3.
    "pretrain": dict(what="next-token prediction on token shards", lr=3e-3, steps=1200, warmup_steps=50),
    # Phi-4 (report section 3): context 4K -> 16K, RoPE base 10K -> 250K, peak LR divided by 10, 30% long
    # documents and 70% replayed pretraining data. The context becomes MIDTRAIN_CONTEXT_FACTOR x that of
    # the --init model (toy 256 -> 1024, 14b 4096 -> 16384) and the peak LR its pretraining LR / 10;
    # both are read from the --init checkpoint by midtrain_settings() below.
    "midtrain": dict(what="context extension: 4x context, RoPE base 250K, LR/10, long/replay data 30/70; needs --init",
                     rope_theta=250_000.0, long_fraction=0.3, steps=150, warmup_steps=15),
    # Phi-4: SFT at 1e-6, 300x below its pretraining peak. We keep the learning rate 10x lower than
    # pretraining: the toy model is far from converged, and the chat format is new to it.
    "sft": dict(what="chat format, loss on assistant tokens only; needs --init", lr=3e-4, steps=300, warmup_steps=20),
}
STAGES = tuple(STAGE_DEFAULTS)


@dataclass
class TrainConfig:
    stage: str = "pretrain"  # which stage of the recipe this run is (STAGES below)
    size: str = "toy"  # model preset (model.PRESETS)
    data: str = data.TOY_DATA_DIR  # folder with tokenizer.json and train_*.bin / val_*.bin shards
    sft_data: str | None = None  # chat JSONL for --stage sft (default: DATA/sft.jsonl)
    out: str | None = None  # checkpoint, log and tokenizer go here (default: out/STAGE)
    init: str | None = None  # start from the weights of this checkpoint folder (fresh optimizer)
    resume: bool = False  # continue the run saved in --out, exactly (optimizer, data position, RNG)
    seed: int = 1337
    steps: int | None = None  # optimizer steps in the whole run (the schedule is laid out over these)
    stop_at: int | None = None  # stop after this step (as if interrupted); --resume continues it
    batch_size: int = 16  # sequences per micro-batch on each device
    seq_len: int | None = None  # tokens per sequence; default: the model's max_seq_len
    batch_tokens: int | None = None  # tokens per optimizer step (global); default: one micro-batch per rank
    lr: float | None = None  # peak learning rate (Phi-4 14B: 3e-4; small models tolerate more)
    min_lr_ratio: float = 0.0  # the linear decay ends at lr * min_lr_ratio
    warmup_steps: int | None = None
    weight_decay: float = 0.1  # Phi-4's value; applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200  # steps between held-out loss measurements (0: only at the end)
    eval_batches: int = 8
    save_every: int = 500  # steps between checkpoints (and one at the end)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile each block (GPU; slow to start on CPU)
    attn_impl: str | None = None  # override the preset's attention: naive | sdpa | triton
    rope_theta: float | None = None  # RoPE base: of a fresh model, or the new one of midtraining (250K)
    long_data: str | None = None  # midtrain: folder with long_train_*.bin (default: --data, built on demand)
    long_fraction: float | None = None  # midtrain: share of rows that are long documents (default 0.3)
    n_layer: int | None = None  # override the preset's depth (the 14b width with 4 blocks fits one GPU)
    activation_checkpointing: bool = False  # recompute each block in backward instead of storing it
    dry_run: bool = False  # print the per-rank memory plan and exit, allocating nothing
    world_size: int | None = None  # ranks the --dry-run plans for (a real run takes torchrun's)
    gpu_memory_gb: float = 80.0  # GPU memory the --dry-run checks the plan against

    HELP = {
        "stage": "recipe stage: " + ", ".join(f"{k} ({v['what']})" for k, v in STAGE_DEFAULTS.items()),
        "size": f"model preset: {', '.join(PRESETS)}",
        "data": "data folder from `python data.py` (built automatically for the toy world), or 'random' for benchmarks",
        "sft_data": "chat JSONL for --stage sft: {'messages': [...]} or world problems (default DATA/sft.jsonl)",
        "out": "output folder for checkpoint, log.jsonl and tokenizer.json (default out/STAGE)",
        "init": "checkpoint folder whose weights start this run (optimizer and step start fresh)",
        "resume": "continue the run in --out exactly where its last checkpoint left it",
        "seed": "seed for weights, data order and sampling",
        "steps": "optimizer steps in the whole run; the LR schedule spans them (default: per stage)",
        "stop_at": "stop after this step as if interrupted (resume later with --resume)",
        "batch_size": "sequences per micro-batch per device",
        "seq_len": "sequence length in tokens (default: the preset's max_seq_len)",
        "batch_tokens": "global tokens per optimizer step, kept at any world size; gradient accumulation fills "
        "the gap (default: one micro-batch per rank, batch_size x seq_len x world size)",
        "lr": "peak learning rate after warm-up (default: per stage)",
        "min_lr_ratio": "final learning rate as a fraction of --lr (linear decay)",
        "warmup_steps": "linear warm-up steps (default: per stage)",
        "weight_decay": "AdamW weight decay on matrices (not on norm gains)",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "grad_clip": "clip the global gradient norm to this (0 disables)",
        "eval_every": "steps between held-out loss evaluations (0: only at the end)",
        "eval_batches": "micro-batches (per rank) per held-out evaluation",
        "save_every": "steps between checkpoints, plus one at the end (0: no checkpoints, for benchmarks)",
        "device": "auto (cuda if available, else cpu), cpu or cuda",
        "compile": "compile each transformer block with torch.compile (GPU; slow to start on CPU)",
        "attn_impl": "attention implementation: naive, sdpa or triton",
        "rope_theta": "RoPE base: for a fresh model, or the base midtraining switches to (default 250000; "
        "--rope-theta 10000 runs the ablation that extends the context without changing the base)",
        "long_data": "midtrain: folder with long_train_*.bin / long_val_*.bin (default: --data, where the toy "
        "world's long documents are built on first use)",
        "long_fraction": "midtrain: share of rows that hold one long document; the rest replay pretraining data",
        "n_layer": "override the preset's number of blocks (e.g. --size 14b --n-layer 4 to benchmark one GPU)",
        "activation_checkpointing": "recompute each block's activations in backward (less memory, ~1/3 more FLOPs)",
        "dry_run": "print the memory plan per rank (params, grads, AdamW, activations, FLOPs/token) and exit",
        "world_size": "number of ranks --dry-run plans for (default: torchrun's WORLD_SIZE, else 1)",
        "gpu_memory_gb": "GPU memory in GB that --dry-run checks the plan against",
    }




def resolve_stage(cfg: TrainConfig) -> TrainConfig:
    """Fill the flags left unset with the stage's defaults, and check the stage has what it needs."""
    defaults = STAGE_DEFAULTS[cfg.stage]
    updates = {k: v for k, v in defaults.items() if k != "what" and getattr(cfg, k) is None}
    if cfg.out is None:
        updates["out"] = os.path.join("out", cfg.stage)
    if cfg.stage == "sft" and not (cfg.init or cfg.resume):
        raise ValueError("--stage sft fine-tunes a trained model: pass --init out/pretrain (or --resume)")
    if cfg.stage == "sft" and cfg.rope_theta:
        raise ValueError("--rope-theta changes the RoPE base only in --stage pretrain or midtrain, not sft")
    cfg = dataclasses.replace(cfg, **updates)
    if cfg.stage == "midtrain":
        cfg = dataclasses.replace(cfg, **midtrain_settings(cfg))
    return cfg


MIDTRAIN_CONTEXT_FACTOR = 4  # Phi-4: 4K -> 16K


def midtrain_settings(cfg: TrainConfig) -> dict:
    """The context length and peak LR of a midtraining run, from the model it starts from.

    --init: the new context is 4x the checkpoint's max_seq_len and the peak LR a tenth of the one it
    was pretrained with (both from the checkpoint's small record file; no weights are read). --seq-len
    and --lr override them. --resume: the values the run was started with, from its own checkpoint.
    Without either (only for --dry-run) the preset stands in for the pretrained model.
    """
    if cfg.resume:
        started = read_checkpoint(cfg.out).get("train_config") or {}
        return {"seq_len": cfg.seq_len or started.get("seq_len"), "lr": cfg.lr or started.get("lr")}
    if cfg.init:
        record = read_checkpoint(cfg.init)
        pretrained = ModelConfig.from_dict(record["model_config"])
        pretrain_lr = (record.get("train_config") or {}).get("lr")
    elif cfg.dry_run:
        pretrained, pretrain_lr = get_config(cfg.size), None
    else:
        raise ValueError("--stage midtrain extends a pretrained model: pass --init out/pretrain (or --resume)")
    return {
        "seq_len": cfg.seq_len or MIDTRAIN_CONTEXT_FACTOR * pretrained.max_seq_len,
        # Rounded to 6 digits so the log shows 0.0003, not 0.00030000000000000003.
        "lr": cfg.lr or float(f"{(pretrain_lr or STAGE_DEFAULTS['pretrain']['lr']) / 10:.6g}"),
    }


def midtrain_changes(record: dict, config: ModelConfig, cfg: TrainConfig) -> list[str]:
    """One line per thing midtraining changed, old -> new, printed at the start of the run."""
    before = ModelConfig.from_dict(record["model_config"])
    pretrain_lr = (record.get("train_config") or {}).get("lr")
    same_base = before.rope_theta == config.rope_theta
    return [
        f"midtrain: max_seq_len {before.max_seq_len} -> {config.max_seq_len} (RoPE tables rebuilt for {config.max_seq_len} positions)",
        f"midtrain: rope_theta {before.rope_theta:g} -> {config.rope_theta:g}"
        + (" (unchanged: the ablation that extends the context with the old base)" if same_base else ""),
        f"midtrain: peak lr {pretrain_lr if pretrain_lr is not None else 'unknown'} (pretraining) -> {cfg.lr:g}",
        f"midtrain: data {cfg.long_fraction:.0%} long documents, {1 - cfg.long_fraction:.0%} replayed pretraining data",
    ]


DEVICES = ["auto", "cpu", "cuda"]


def config_parser(config_class, helps: dict, choices: dict, description: str) -> argparse.ArgumentParser:
    """A parser with one flag per field of a config dataclass (underscores become dashes), its default
    and help text; bool fields are switches. train.py and dpo.py build their --help from this."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=helps[field.name])
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(field.type, str)
        parser.add_argument(flag, type=kind, default=field.default, help=helps[field.name], choices=choices.get(field.name))
    return parser


def parse_args(argv=None) -> TrainConfig:
    choices = {"size": list(PRESETS), "stage": list(STAGES), "device": DEVICES, "attn_impl": ["naive", "sdpa", "triton"]}
    parser = config_parser(TrainConfig, TrainConfig.HELP, choices, __doc__.split("\n")[0])
    return TrainConfig(**vars(parser.parse_args(argv)))  # stage defaults are filled in by resolve_stage()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------------
# Learning-rate schedule: linear warm-up, then linear decay (the shape Phi-4 reports).


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.lr * (1.0 - progress * (1.0 - cfg.min_lr_ratio))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D tensors (matrices, embeddings) only.

    Decaying the RMSNorm gains would pull them towards zero and shrink every block's input for no
    regularising benefit, so 1-D parameters are left alone (the usual practice since GPT-3).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused CUDA implementation updates all tensors in a few kernels instead of one per tensor.
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


# ----------------------------------------------------------------------------------------------------
# Checkpoints: sharded tensors written by every rank at once, committed by one small record file.
#
#     out/STAGE/ckpt.pt                  the record: step, configs, every rank's data position and RNG,
#                                        and the name of the shard folder. Written last, atomically.
#     out/STAGE/shards-0001200-3fa9c1/   torch.distributed.checkpoint (DCP): .metadata + one file per rank
#
# Each rank writes only its own pieces of the weights and AdamW moments, in parallel, so no process
# ever gathers the 14B model. DCP stores every tensor with its global shape and where each piece
# belongs, so the folder loads at another world size (resharding on the fly) or in a single process as
# a full state dict (load_checkpoint, which sample.py uses).

CHECKPOINT = "ckpt.pt"
# DCP warns whenever it runs without a process group; for sample.py and tests that is the normal case.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def rng_state() -> dict:
    """Every random stream this process draws from, to put it back exactly on resume."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def save_checkpoint(out_dir: str, model, optimizer, step: int, loader, model_config, train_config):
    """Write a checkpoint into out_dir; every rank calls it (a model without FSDP works too).

    An interruption at any moment leaves the last good checkpoint usable: the shards go into a new
    folder, the record is written to a temporary file and renamed over the old one (os.replace is
    atomic), and only after that rename is the previous shard folder deleted.
    """
    distributed = dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    os.makedirs(out_dir, exist_ok=True)
    # A fresh folder per save, never the one the current record points to; rank 0 names it.
    names = [f"shards-{step:07d}-{uuid.uuid4().hex[:6]}"]
    if distributed:
        dist.broadcast_object_list(names, src=0)
    shard_dir = os.path.join(out_dir, names[0])
    if optimizer is not None:
        # FQN-keyed state dicts of sharded tensors (DTensors): each rank contributes its pieces.
        model_state, optimizer_state = get_state_dict(model, optimizer)
        tensors = {"model": model_state, "optimizer": optimizer_state}
    else:
        tensors = {"model": get_model_state_dict(model)}
    dcp.save(tensors, checkpoint_id=shard_dir)
    rank_state = {"loader": loader.state_dict() if loader is not None else None, "rng": rng_state()}
    rank_states = [None] * world_size if rank == 0 else None
    if distributed:
        dist.gather_object(rank_state, rank_states, dst=0)
    else:
        rank_states = [rank_state]
    if rank == 0:
        record = {
            "step": step,
            "shards": names[0],
            "world_size": world_size,
            "loader": rank_states[0]["loader"],  # rank 0's position; loaders count global batches
            "ranks": rank_states,  # per rank: {"loader": ..., "rng": ...}
            "model_config": model_config.to_dict(),
            "train_config": dataclasses.asdict(train_config) if train_config is not None else None,
        }
        path = os.path.join(out_dir, CHECKPOINT)
        tmp = path + ".tmp"
        torch.save(record, tmp)
        os.replace(tmp, path)
        # Committed: older shard folders (and any left by an interrupted save) are now garbage.
        for stale in glob.glob(os.path.join(out_dir, "shards-*")):
            if os.path.basename(stale) != names[0]:
                shutil.rmtree(stale, ignore_errors=True)
    if distributed:
        dist.barrier()  # nobody starts the next step (or exits) before the checkpoint is committed


def read_checkpoint(path: str) -> dict:
    """The record of a checkpoint (its folder or its ckpt.pt): step, configs, data positions, RNG.

    Reads no tensors; "shard_dir" is added, the folder holding them. A clear ValueError if unusable.
    """
    file = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ValueError(f"no checkpoint at {path} (expected {file}); check --init/--resume/--out")
    try:
        # weights_only=False: the RNG states include numpy objects. Only load checkpoints you trust.
        record = torch.load(file, map_location="cpu", weights_only=False)
        if not isinstance(record, dict) or "model_config" not in record or not ("shards" in record or "model" in record):
            raise ValueError("missing model_config or shards")
    except Exception as error:  # truncated zip, wrong format, anything torch.load raises
        raise ValueError(f"checkpoint {file} is corrupt or not from train.py: {error}") from None
    if "model" in record:
        return record  # the single-file format of train.py before sharding: the full weights are inside
    record["shard_dir"] = os.path.join(os.path.dirname(file), record["shards"])
    if not os.path.isdir(record["shard_dir"]):
        raise ValueError(f"checkpoint {file} needs its shard folder {record['shard_dir']}, which is missing")
    return record


def load_checkpoint(path: str, device="cpu") -> dict:
    """A checkpoint as one process sees it: the record plus "model", the full (unsharded) state dict.

    For sample.py and the later stages, which run one process. DCP's metadata gives every tensor's
    global shape and dtype, so we allocate full tensors and let DCP fill them from all ranks' files.
    """
    record = read_checkpoint(path)
    if "model" in record:  # single-file format
        return dict(record, model={name: tensor.to(device) for name, tensor in record["model"].items()})
    try:
        metadata = dcp.FileSystemReader(record["shard_dir"]).read_metadata()
        model_state = {
            key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
            for key, meta in metadata.state_dict_metadata.items()
            if key.startswith("model.")
        }
        # no_dist: this process reads everything itself, even inside a torchrun job.
        dcp.load({"model": model_state}, checkpoint_id=record["shard_dir"], no_dist=True)
    except Exception as error:
        raise ValueError(f"checkpoint shards in {record['shard_dir']} are corrupt or incomplete: {error}") from None
    return dict(record, model={name: tensor.to(device) for name, tensor in model_state.items()})


def load_weights(record: dict, model: torch.nn.Module):
    """Fill a (sharded) model with a checkpoint's weights: each rank reads only its own pieces."""
    if "model" in record:  # single-file format: every rank holds the full weights and keeps its pieces
        set_model_state_dict(model, record["model"], options=StateDictOptions(full_state_dict=True))
        return
    model_state = get_model_state_dict(model)  # what this rank holds: the keys and shard layout to fill
    try:
        dcp.load({"model": model_state}, checkpoint_id=record["shard_dir"])
    except Exception as error:
        raise ValueError(f"cannot load weights from {record['shard_dir']}: {error}") from None
    set_model_state_dict(model, model_state)


def load_optimizer(record: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Restore AdamW's moments and step counts, resharded to this run's world size if it changed."""
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.load({"optimizer": optimizer_state}, checkpoint_id=record["shard_dir"])
    except Exception as error:
        raise ValueError(f"cannot resume from {record['shard_dir']} (no optimizer state?): {error}; use --init") from None
    set_optimizer_state_dict(model, optimizer, optimizer_state)


def model_from_checkpoint(state: dict, device) -> Phi4:
    """Rebuild the model of a checkpoint: its saved config (rope_theta and all) and its weights."""
    config = ModelConfig.from_dict(state["model_config"])
    with torch.device("meta"):
        model = Phi4(config)
    model.to_empty(device=device)
    model.load_state_dict(state["model"])
    model.set_rope()  # the RoPE tables are not saved: rebuild them from the config
    return model


# ----------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, loader: data.TokenLoader, n_batches: int, device, autocast) -> float:
    """Mean held-out loss over the first n_batches of the validation stream (the same every time).

    Under torchrun each rank scores its own rows of every batch; the sums are added over ranks.
    """
    model.eval()
    loader.load_state_dict({"position": 0, "epoch": 0})
    total, count = 0.0, 0
    for _ in range(n_batches):
        inputs, targets = loader.next_batch()
        inputs, targets = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
        with autocast:
            total += model(inputs, targets, reduction="sum").item()
        count += int((targets != -100).sum())
    model.train()
    if dist.is_initialized():
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / count


# ----------------------------------------------------------------------------------------------------
# The run


def prepare_data(cfg: TrainConfig) -> data.Tokenizer | None:
    """Build the toy data the first time; otherwise check the data folder is usable."""
    if cfg.data == "random":
        return None  # RandomTokens: no tokenizer, no files
    if cfg.data == data.TOY_DATA_DIR and not data.shard_paths(cfg.data, "train"):
        print(f"no data in {cfg.data}: building the toy synthetic world first (python data.py)")
        data.build_toy_dataset(cfg.data)
    if not data.shard_paths(cfg.data, "train"):
        raise ValueError(f"--data {cfg.data} holds no train_*.bin shards; build them with `python data.py`")
    tokenizer_file = os.path.join(cfg.data, "tokenizer.json")
    if not os.path.exists(tokenizer_file):
        raise ValueError(f"--data {cfg.data} has no tokenizer.json; rebuild it with `python data.py`")
    if cfg.stage == "midtrain" and cfg.long_data is None:
        # The world's long documents, built once per row length with this folder's tokenizer.
        data.ensure_long_documents(cfg.data, cfg.seq_len + 1)
    return data.Tokenizer.load(tokenizer_file)


def build_model(cfg: TrainConfig, tokenizer: data.Tokenizer | None, device, shard=None) -> tuple[Phi4, dict | None]:
    """The model for this run: fresh from the preset, from --init weights, or from --resume.

    It is built on the meta device (shapes, no memory), handed to `shard` if given (train() passes
    parallel.parallelize: FSDP2), and only then materialised on `device` and filled, so that under
    torchrun each rank allocates and initialises only its own shards. Returns (model, the checkpoint
    record read for --init/--resume, or None).
    """
    record = None
    if cfg.resume or cfg.init:
        record = read_checkpoint(cfg.out if cfg.resume else cfg.init)
        config = ModelConfig.from_dict(record["model_config"])
    else:
        overrides = {}
        if tokenizer is not None and tokenizer.name != "phi4":
            # A tokenizer trained on our own corpus: size the embedding to it, rounded up to a multiple
            # of 64 so the LM-head matmul keeps an aligned shape (the extra rows are never targets).
            overrides["vocab_size"] = 64 * math.ceil(tokenizer.vocab_size / 64)
        if cfg.seq_len:
            overrides["max_seq_len"] = cfg.seq_len
        if cfg.n_layer:
            overrides["n_layer"] = cfg.n_layer
        if cfg.rope_theta:
            overrides["rope_theta"] = cfg.rope_theta
        config = get_config(cfg.size, **overrides)
    if cfg.attn_impl:
        config = dataclasses.replace(config, attn_impl=cfg.attn_impl)
    with torch.device("meta"):
        model = Phi4(config)
    if shard is not None:
        shard(model)
    model.to_empty(device=device)
    if record is not None:
        load_weights(record, model)
        if cfg.stage == "midtrain" and not cfg.resume:
            # Context extension: the same weights with RoPE tables for the longer context and the new
            # base. set_rope records both in model.config, so every checkpoint of this run carries them.
            model.set_rope(max_seq_len=cfg.seq_len, rope_theta=cfg.rope_theta)
        else:
            model.set_rope()  # the RoPE tables are not saved: rebuild them from the config
    else:
        # Seeded generator: the same weights on any device and any number of ranks.
        model.init_weights(torch.Generator().manual_seed(cfg.seed))
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer of --data {cfg.data} has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; pick a matching --size or --data"
        )
    return model, record


class RandomTokens:
    """--data random: uniformly random token ids in the shape of real batches, for throughput only.

    Nothing to learn (the loss stays near ln V), no tokenizer: it times the training step of a preset
    with its real vocabulary (the 14b's 100,352) without first preparing data in that vocabulary.
    """

    def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int):
        self.vocab_size, self.shape, self.seed = vocab_size, (batch_size, seq_len + 1), seed
        self.position = 0  # batches drawn so far: with the seed, it fixes the next batch (exact resume)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.position))
        self.position += 1
        rows = rng.integers(0, self.vocab_size, size=self.shape, dtype=np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]  # inputs (B, T), targets (B, T)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict):
        self.position = int(state["position"])


def make_loaders(cfg: TrainConfig, tokenizer: data.Tokenizer, seq_len: int, rank: int = 0, world_size: int = 1):
    """(train loader, held-out loader or None) for the stage: token shards, or chat conversations for SFT."""
    if cfg.stage == "sft":
        conversations = data.read_conversations(cfg.sft_data or os.path.join(cfg.data, "sft.jsonl"))
        examples = [tokenizer.render_chat(c) for c in conversations]
        n_val = min(200, len(examples) // 10)  # the tail of the file is the held-out part
        make = lambda ex, seed: data.ChatLoader(ex, cfg.batch_size, seq_len, tokenizer.pad_id, rank, world_size, seed)
        train_loader = make(examples[n_val:], cfg.seed)
        if train_loader.n_dropped:
            print(f"note: {train_loader.n_dropped} conversations longer than --seq-len {seq_len} were left out")
        return train_loader, (make(examples[:n_val], 0) if n_val >= cfg.batch_size * world_size else None)
    if cfg.stage == "midtrain":
        # 30% long documents, one per row, and 70% replayed pretraining rows (data.MixtureLoader says
        # how each is packed and why); the held-out loss is measured on the same mixture.
        long_dir = cfg.long_data or cfg.data
        make = lambda split: data.MixtureLoader(
            data.shard_paths(cfg.data, split), data.shard_paths(long_dir, f"long_{split}"), cfg.batch_size, seq_len,
            cfg.long_fraction, tokenizer.bos_id, tokenizer.pad_id, rank, world_size,
        )
        train_loader = make("train")
        if rank == 0:
            print(f"midtrain data: {len(train_loader.documents)} long documents from {long_dir}, "
                  f"{100 * train_loader.long_token_share():.1f}% of target tokens")
        has_val = bool(data.shard_paths(cfg.data, "val") and data.shard_paths(long_dir, "long_val"))
        return train_loader, (make("val") if has_val else None)
    train_loader = data.TokenLoader(data.shard_paths(cfg.data, "train"), cfg.batch_size, seq_len, rank, world_size)
    val_paths = data.shard_paths(cfg.data, "val")
    val_loader = data.TokenLoader(val_paths, cfg.batch_size, seq_len, rank, world_size) if val_paths else None
    return train_loader, val_loader


def plan_memory(cfg: TrainConfig) -> str:
    """--dry-run: the per-rank memory plan of this run, computed from shapes alone (nothing allocated)."""
    if cfg.resume or cfg.init:
        config = ModelConfig.from_dict(read_checkpoint(cfg.out if cfg.resume else cfg.init)["model_config"])
    else:
        overrides = {"max_seq_len": cfg.seq_len} if cfg.seq_len else {}
        if cfg.n_layer:
            overrides["n_layer"] = cfg.n_layer
        config = get_config(cfg.size, **overrides)
    world_size = cfg.world_size or int(os.environ.get("WORLD_SIZE", 1))
    # Plans are for GPUs (bf16 compute) unless the run is explicitly on CPU (fp32).
    plan = parallel.memory_plan(
        config, world_size, cfg.batch_size, cfg.seq_len or config.max_seq_len, mixed_precision=cfg.device != "cpu"
    )
    return parallel.format_plan(plan, cfg.gpu_memory_gb, cfg.activation_checkpointing)


def train(cfg: TrainConfig) -> list[dict]:
    """Run one training job as this process's rank; returns the logged records (rank 0 also writes
    them to out/log.jsonl). `python train.py` is a world of one, through the same code."""
    cfg = resolve_stage(cfg)
    if cfg.dry_run:
        print(plan_memory(cfg))
        return []
    world = parallel.init_distributed(resolve_device(cfg.device))
    try:
        return train_on(cfg, world)
    finally:
        parallel.shutdown(world)


def train_on(cfg: TrainConfig, world: parallel.Distributed) -> list[dict]:
    """The training run proper, on one rank of `world` (train() sets it up and tears it down)."""
    device, W = world.device, world.world_size
    say = print if world.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for everyone
    if cfg.world_size and cfg.world_size != W:
        raise ValueError(f"--world-size {cfg.world_size} is for --dry-run; torchrun sets the real one ({W} here)")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # Rank 0 builds the toy data if needed while the others wait, so they never read half-written shards.
    if world.is_main:
        tokenizer = prepare_data(cfg)
    dist.barrier()
    if not world.is_main:
        tokenizer = prepare_data(cfg)

    # FSDP2 on every run (a world of one included); bf16 mixed precision on GPUs, fp32 on CPUs.
    def shard(model):
        parallel.parallelize(model, world.mesh, cfg.activation_checkpointing, cfg.compile, device.type == "cuda")

    model, record = build_model(cfg, tokenizer, device, shard)
    if cfg.stage == "midtrain" and not cfg.resume:
        for line in midtrain_changes(record, model.config, cfg):
            say(line)
    config = model.config
    seq_len = cfg.seq_len or config.max_seq_len
    if seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
    # The global batch is counted in tokens and --batch-tokens fixes it at any world size: one micro-step
    # moves batch_size x seq_len tokens on each of the W ranks, and gradient accumulation makes up the
    # rest. Without the flag, a step is one micro-batch on every rank.
    micro_tokens = cfg.batch_size * seq_len * W
    batch_tokens = cfg.batch_tokens or micro_tokens
    if batch_tokens % micro_tokens != 0:
        raise ValueError(
            f"--batch-tokens {batch_tokens} (global) must be a multiple of --batch-size {cfg.batch_size} x "
            f"--seq-len {seq_len} x {W} ranks = {micro_tokens}; lower --batch-size or raise --batch-tokens"
        )
    grad_accum = batch_tokens // micro_tokens

    if cfg.data == "random":
        train_loader, val_loader = RandomTokens(config.vocab_size, cfg.batch_size, seq_len, cfg.seed + world.rank), None
    else:
        train_loader, val_loader = make_loaders(cfg, tokenizer, seq_len, world.rank, W)
    optimizer = make_optimizer(model, cfg, device)
    start_step = 0
    if cfg.resume:
        if "model" in record:
            raise ValueError(f"{cfg.out} holds a single-file checkpoint of an older train.py: use it with --init, not --resume")
        load_optimizer(record, model, optimizer)
        start_step = record["step"]
        ranks = record["ranks"]
        if len(ranks) == W:
            mine = ranks[world.rank]
        else:
            # Another world size: DCP has already resharded the weights and AdamW state. The loaders
            # count global batches, so every rank's position is the same number and carries over; no
            # training step draws random numbers, so rank 0's RNG streams serve every rank.
            if len({json.dumps(r["loader"], sort_keys=True) for r in ranks}) > 1:
                raise ValueError(f"{cfg.out} was written by {len(ranks)} ranks at different data positions; resume it on {len(ranks)} ranks")
            say(f"note: resuming a {len(ranks)}-rank checkpoint on {W} ranks (weights and optimizer resharded)")
            mine = ranks[0]
        train_loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
    # Keep the tokenizer with the weights, so a checkpoint folder is self-contained for sample.py.
    os.makedirs(cfg.out, exist_ok=True)
    if world.is_main and tokenizer is not None:
        shutil.copyfile(os.path.join(cfg.data, "tokenizer.json"), os.path.join(cfg.out, "tokenizer.json"))

    # No autocast: FSDP's mixed-precision policy already hands bf16 weights to every matmul on GPUs.
    autocast = contextlib.nullcontext()
    peak = peak_flops(device)
    flops_per_token = model.flops_per_token(seq_len)

    say(f"model: {json.dumps(config.to_dict())}")
    say(f"train: {json.dumps(dataclasses.asdict(cfg))}")
    say(
        f"{model.num_params():,} parameters | {W} rank(s) x {grad_accum} micro-batches of {cfg.batch_size}x{seq_len} "
        f"= {batch_tokens:,} tokens/step | device {device.type}"
        + (" | activation checkpointing" if cfg.activation_checkpointing else "")
    )

    log_path = os.path.join(cfg.out, "log.jsonl")
    records = []
    last_step = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    model.train()
    run_start = time.perf_counter()
    bar = tqdm(
        range(start_step, last_step), initial=start_step, total=last_step, desc=cfg.stage, dynamic_ncols=True,
        mininterval=1.0, disable=not world.is_main,
    )
    for step in bar:
        t0 = time.perf_counter()
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Fetch the step's micro-batches first, so each loss can be divided by the step's total number
        # of target tokens on all ranks: every token then weighs the same, however they fall into
        # micro-batches and ranks.
        batches = [train_loader.next_batch() for _ in range(grad_accum)]
        n_targets = parallel.global_sum(sum(int((t != -100).sum()) for _, t in batches), world)
        n_tokens = parallel.global_sum(sum(inputs.size for inputs, _ in batches), world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for inputs, targets in batches:
            inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
            targets = torch.from_numpy(targets).to(device, non_blocking=True)
            loss = model(inputs, targets, reduction="sum") / n_targets
            # FSDP's reduce-scatter averages gradients over the W ranks; scaling by W turns that average
            # into the sum, so the gradient is exactly that of the global token-weighted mean loss.
            (loss * W).backward()
            loss_sum += loss.detach()
        dist.all_reduce(loss_sum)
        loss_value = loss_sum.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norm = parallel.full_value(grad_norm)  # a DTensor when the gradients are sharded
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens_per_s = n_tokens / dt
        # MFU per GPU: the whole run's FLOP/s over the peak of all W devices.
        mfu = tokens_per_s * flops_per_token / (peak * W) if peak else None
        record = {"step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tok_s": tokens_per_s, "mfu": mfu,
                  "time_s": time.perf_counter() - run_start}
        if device.type == "cuda":
            record["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        is_last = step + 1 == last_step
        if val_loader is not None and cfg.eval_batches > 0 and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or is_last):
            # Each rank scores its rows of eval_batches global batches: the same rows at any world size
            # that keeps batch_size x world_size (the global micro-batch) the same.
            record["val_loss"] = evaluate(model, val_loader, cfg.eval_batches, device, autocast)
        bar.set_postfix(
            loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_s:,.0f}",
            mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a",
            **({"mem": f"{record['peak_mem_gb']:.1f}GB"} if "peak_mem_gb" in record else {}),
            **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}),
        )
        records.append(record)
        if world.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if cfg.save_every > 0 and ((step + 1) % cfg.save_every == 0 or is_last):
            save_checkpoint(cfg.out, model, optimizer, step + 1, train_loader, model.config, cfg)
    bar.close()
    if records:
        summary = records[-1]
        steady = records[1:] or records  # the first step includes warm-up (allocation, compilation)
        mfus = [r["mfu"] for r in steady if r["mfu"] is not None]
        say(
            f"done: step {summary['step']} loss {summary['loss']:.4f}"
            + (f" val_loss {summary['val_loss']:.4f}" if "val_loss" in summary else "")
            + f" | median {np.median([r['tok_s'] for r in steady]):,.0f} tok/s"
            + (f", MFU {100 * np.median(mfus):.1f}%" if mfus else "")
            + (f", peak memory {summary['peak_mem_gb']:.1f} GB/GPU" if "peak_mem_gb" in summary else "")
            + (f" | checkpoint {os.path.join(cfg.out, CHECKPOINT)}" if cfg.save_every > 0 else "")
        )
    return records


if __name__ == "__main__":
    cfg = parse_args()
    try:
        train(cfg)
    except ValueError as error:
        sys.exit(f"error: {error}")
