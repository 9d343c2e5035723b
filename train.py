"""One training loop for the Phi-4 recipe's token-prediction stages.

Phi-4 report section 3: pretraining on ~10T tokens at 4K context with AdamW-style optimisation, linear
warm-up and linear decay, peak learning rate 3e-4, weight decay 0.1 (global batch 5,760 sequences).
This file runs the same loop at any size, on CPU or one GPU:

    python train.py                                  # toy model on the synthetic world, ~5 min on 2 CPU cores
    python train.py --size small --data out/data/mine --device cuda --compile
    python train.py --resume --out out/pretrain      # continue exactly where a run stopped

Pieces, top to bottom: TrainConfig (every flag, with --help), the learning-rate schedule, the optimizer,
checkpoints (atomic writes, exact resume), evaluation, and the loop itself.

What a step does: it draws `grad_accum` micro-batches so that one optimizer step sees `--batch-tokens`
tokens however small the micro-batch, sums their losses weighted by token count, clips the gradient
norm, and steps AdamW. The progress bar shows loss, learning rate, tokens/s and model FLOP
utilisation (MFU: achieved FLOP/s over the device's bf16 peak; "n/a" where the peak is unknown).

Simplified against the report: one data mixture (the synthetic world) instead of five sources, and the
optimizer betas and warm-up length are our choices (the report does not state them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import data
from model import PRESETS, ModelConfig, Phi4, get_config, peak_flops

# ----------------------------------------------------------------------------------------------------
# Configuration: every field is a command-line flag (underscores become dashes).


# What each stage changes when its flags are not given. Toy-scale values; the Phi-4 numbers they mirror
# are in the comments (report sections 3 and 4).
STAGE_DEFAULTS = {
    # Phi-4: peak 3e-4 at 14B; a 1M-parameter model trains fastest near 3e-3.
    "pretrain": dict(what="next-token prediction on token shards", lr=3e-3, steps=1200, warmup_steps=50),
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
    batch_tokens: int | None = None  # tokens per optimizer step (global); default: one micro-batch
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
    compile: bool = False  # torch.compile the model (GPU; slow to start on CPU)
    attn_impl: str | None = None  # override the preset's attention: naive | sdpa | triton

    HELP = {
        "stage": "recipe stage: " + ", ".join(f"{k} ({v['what']})" for k, v in STAGE_DEFAULTS.items()),
        "size": f"model preset: {', '.join(PRESETS)}",
        "data": "data folder from `python data.py` (built automatically for the toy world)",
        "sft_data": "chat JSONL for --stage sft: {'messages': [...]} or world problems (default DATA/sft.jsonl)",
        "out": "output folder for checkpoint, log.jsonl and tokenizer.json (default out/STAGE)",
        "init": "checkpoint folder whose weights start this run (optimizer and step start fresh)",
        "resume": "continue the run in --out exactly where its last checkpoint left it",
        "seed": "seed for weights, data order and sampling",
        "steps": "optimizer steps in the whole run; the LR schedule spans them (default: per stage)",
        "stop_at": "stop after this step as if interrupted (resume later with --resume)",
        "batch_size": "sequences per micro-batch per device",
        "seq_len": "sequence length in tokens (default: the preset's max_seq_len)",
        "batch_tokens": "global tokens per optimizer step; gradient accumulation fills the gap",
        "lr": "peak learning rate after warm-up (default: per stage)",
        "min_lr_ratio": "final learning rate as a fraction of --lr (linear decay)",
        "warmup_steps": "linear warm-up steps (default: per stage)",
        "weight_decay": "AdamW weight decay on matrices (not on norm gains)",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "grad_clip": "clip the global gradient norm to this (0 disables)",
        "eval_every": "steps between held-out loss evaluations (0: only at the end)",
        "eval_batches": "micro-batches per held-out evaluation",
        "save_every": "steps between checkpoints",
        "device": "auto (cuda if available, else cpu), cpu or cuda",
        "compile": "compile the model with torch.compile",
        "attn_impl": "attention implementation: naive, sdpa or triton",
    }




def resolve_stage(cfg: TrainConfig) -> TrainConfig:
    """Fill the flags left unset with the stage's defaults, and check the stage has what it needs."""
    defaults = STAGE_DEFAULTS[cfg.stage]
    updates = {k: v for k, v in defaults.items() if k != "what" and getattr(cfg, k) is None}
    if cfg.out is None:
        updates["out"] = os.path.join("out", cfg.stage)
    if cfg.stage == "sft" and not (cfg.init or cfg.resume):
        raise ValueError("--stage sft fine-tunes a trained model: pass --init out/pretrain (or --resume)")
    return dataclasses.replace(cfg, **updates)


def parse_args(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        help_text = TrainConfig.HELP[field.name]
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(field.type, str)
        kwargs = dict(type=kind, default=field.default, help=help_text)
        if field.name == "size":
            kwargs["choices"] = list(PRESETS)
        if field.name == "stage":
            kwargs["choices"] = list(STAGES)
        if field.name == "device":
            kwargs["choices"] = ["auto", "cpu", "cuda"]
        if field.name == "attn_impl":
            kwargs["choices"] = ["naive", "sdpa", "triton"]
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(argv)
    return TrainConfig(**vars(args))  # stage defaults are filled in by resolve_stage()


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
# Checkpoints: one file per run folder, written atomically, holding everything needed to continue.

CHECKPOINT = "ckpt.pt"


def save_checkpoint(out_dir: str, model, optimizer, step: int, loader, model_config, train_config):
    """Write out_dir/ckpt.pt so that an interruption at any moment leaves the last good one intact.

    torch.save writes into a temporary file in the same folder; only a complete file is renamed over
    the old checkpoint (os.replace is atomic), so a crash mid-write loses the new save, never the old.
    """
    os.makedirs(out_dir, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "loader": loader.state_dict() if loader is not None else None,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "model_config": model_config.to_dict(),
        "train_config": dataclasses.asdict(train_config) if train_config is not None else None,
    }
    path = os.path.join(out_dir, CHECKPOINT)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, device="cpu") -> dict:
    """Read a checkpoint (a folder holding ckpt.pt, or the file itself) with a clear error when unusable."""
    file = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ValueError(f"no checkpoint at {path} (expected {file}); check --init/--resume/--out")
    try:
        # weights_only=False: the RNG states include numpy objects. Only load checkpoints you trust.
        state = torch.load(file, map_location=device, weights_only=False)
        if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
            raise ValueError("missing model or model_config")
    except Exception as error:  # truncated zip, wrong format, anything torch.load raises
        raise ValueError(f"checkpoint {file} is corrupt or not from train.py: {error}") from None
    return state


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
    """Mean held-out loss over the first n_batches of the validation stream (the same every time)."""
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
    return total / count


# ----------------------------------------------------------------------------------------------------
# The run


def prepare_data(cfg: TrainConfig) -> data.Tokenizer:
    """Build the toy data the first time; otherwise check the data folder is usable."""
    if cfg.data == data.TOY_DATA_DIR and not data.shard_paths(cfg.data, "train"):
        print(f"no data in {cfg.data}: building the toy synthetic world first (python data.py)")
        data.build_toy_dataset(cfg.data)
    if not data.shard_paths(cfg.data, "train"):
        raise ValueError(f"--data {cfg.data} holds no train_*.bin shards; build them with `python data.py`")
    tokenizer_file = os.path.join(cfg.data, "tokenizer.json")
    if not os.path.exists(tokenizer_file):
        raise ValueError(f"--data {cfg.data} has no tokenizer.json; rebuild it with `python data.py`")
    return data.Tokenizer.load(tokenizer_file)


def build_model(cfg: TrainConfig, tokenizer: data.Tokenizer, device) -> tuple[Phi4, dict | None]:
    """The model for this run: fresh from the preset, from --init weights, or from --resume."""
    state = None
    if cfg.resume:
        state = load_checkpoint(cfg.out, device)
    elif cfg.init:
        state = load_checkpoint(cfg.init, device)
    if state is not None:
        model = model_from_checkpoint(state, device)
    else:
        overrides = {}
        if tokenizer.name != "phi4":
            # A tokenizer trained on our own corpus: size the embedding to it, rounded up to a multiple
            # of 64 so the LM-head matmul keeps an aligned shape (the extra rows are never targets).
            overrides["vocab_size"] = 64 * math.ceil(tokenizer.vocab_size / 64)
        if cfg.seq_len:
            overrides["max_seq_len"] = cfg.seq_len
        config = get_config(cfg.size, **overrides)
        with torch.device("meta"):
            model = Phi4(config)
        model.to_empty(device=device)
        # Seeded generator: the same weights on any device, whatever else consumed random numbers.
        model.init_weights(torch.Generator().manual_seed(cfg.seed))
    if cfg.attn_impl:
        model.config.attn_impl = cfg.attn_impl
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer of --data {cfg.data} has {tokenizer.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; pick a matching --size or --data"
        )
    return model, state


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
    train_loader = data.TokenLoader(data.shard_paths(cfg.data, "train"), cfg.batch_size, seq_len, rank, world_size)
    val_paths = data.shard_paths(cfg.data, "val")
    val_loader = data.TokenLoader(val_paths, cfg.batch_size, seq_len, rank, world_size) if val_paths else None
    return train_loader, val_loader


def train(cfg: TrainConfig) -> list[dict]:
    """Run one training job; returns the list of logged records (also written to out/log.jsonl)."""
    cfg = resolve_stage(cfg)
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tokenizer = prepare_data(cfg)
    model, state = build_model(cfg, tokenizer, device)
    config = model.config
    seq_len = cfg.seq_len or config.max_seq_len
    if seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
    micro_tokens = cfg.batch_size * seq_len
    batch_tokens = cfg.batch_tokens or micro_tokens
    if batch_tokens % micro_tokens != 0:
        raise ValueError(f"--batch-tokens {batch_tokens} must be a multiple of batch_size*seq_len = {micro_tokens}")
    grad_accum = batch_tokens // micro_tokens

    train_loader, val_loader = make_loaders(cfg, tokenizer, seq_len)
    optimizer = make_optimizer(model, cfg, device)
    start_step = 0
    if cfg.resume:
        optimizer.load_state_dict(state["optimizer"])
        train_loader.load_state_dict(state["loader"])
        start_step = state["step"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    # Keep the tokenizer with the weights, so a checkpoint folder is self-contained for sample.py.
    os.makedirs(cfg.out, exist_ok=True)
    shutil.copyfile(os.path.join(cfg.data, "tokenizer.json"), os.path.join(cfg.out, "tokenizer.json"))

    # bf16 autocast on GPU: matmuls in bf16, master weights and optimizer state in fp32.
    use_bf16 = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    forward = torch.compile(model) if cfg.compile else model
    peak = peak_flops(device)
    flops_per_token = model.flops_per_token(seq_len)

    print(f"model: {json.dumps(config.to_dict())}")
    print(f"train: {json.dumps(dataclasses.asdict(cfg))}")
    print(
        f"{model.num_params():,} parameters | {grad_accum} micro-batches of {cfg.batch_size}x{seq_len} "
        f"= {batch_tokens:,} tokens/step | device {device}"
    )

    log_path = os.path.join(cfg.out, "log.jsonl")
    records = []
    last_step = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    model.train()
    run_start = time.perf_counter()
    bar = tqdm(
        range(start_step, last_step), initial=start_step, total=last_step, desc=cfg.stage, dynamic_ncols=True, mininterval=1.0
    )
    for step in bar:
        t0 = time.perf_counter()
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Fetch the step's micro-batches first, so each loss can be divided by the step's total number
        # of target tokens: every token then weighs the same, however they fall into micro-batches.
        batches = [train_loader.next_batch() for _ in range(grad_accum)]
        n_targets = sum(int((t != -100).sum()) for _, t in batches)
        n_tokens = sum(inputs.size for inputs, _ in batches)
        loss_sum = 0.0
        for inputs, targets in batches:
            inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
            targets = torch.from_numpy(targets).to(device, non_blocking=True)
            with autocast:
                loss = forward(inputs, targets, reduction="sum") / n_targets
            loss.backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        tokens_per_s = n_tokens / dt
        mfu = tokens_per_s * flops_per_token / peak if peak else None
        record = {"step": step + 1, "loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm), "tok_s": tokens_per_s, "mfu": mfu,
                  "time_s": time.perf_counter() - run_start}
        is_last = step + 1 == last_step
        if val_loader is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or is_last):
            record["val_loss"] = evaluate(model, val_loader, cfg.eval_batches, device, autocast)
        bar.set_postfix(
            loss=f"{loss_sum:.3f}", lr=f"{lr:.1e}", tok_s=f"{tokens_per_s:,.0f}",
            mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a",
            **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}),
        )
        records.append(record)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.save_every == 0 or is_last:
            save_checkpoint(cfg.out, model, optimizer, step + 1, train_loader, model.config, cfg)
    bar.close()
    if records:
        summary = records[-1]
        tok_s = [r["tok_s"] for r in records[1:]] or [records[0]["tok_s"]]
        print(
            f"done: step {summary['step']} loss {summary['loss']:.4f}"
            + (f" val_loss {summary['val_loss']:.4f}" if "val_loss" in summary else "")
            + f" | median {np.median(tok_s):,.0f} tok/s | checkpoint {os.path.join(cfg.out, CHECKPOINT)}"
        )
    return records


if __name__ == "__main__":
    cfg = parse_args()
    try:
        train(cfg)
    except ValueError as error:
        sys.exit(f"error: {error}")
