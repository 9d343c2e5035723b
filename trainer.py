"""The optimisation loop every training stage shares: flags, AdamW, the schedule, the step loop. A room.

train.py (pretraining, midtraining, SFT) and dpo.py differ only in what one step computes: next-token
loss on a batch of rows, or the DPO loss on a batch of preference pairs. Everything around that is the
same and lives here, once:

    RunConfig                   the flags both scripts share, each help text and range written once
    resume_settings             --resume continues the saved run: its settings, not today's defaults
    learning_rate               linear warm-up, then linear decay (the shape Phi-4 reports, section 3)
    make_optimizer              AdamW, weight decay on matrices only
    run_loop                    for each step: set the LR, call the stage's step (forward + backward),
                                clip, stop at a non-finite loss or gradient, step AdamW, log one record,
                                evaluate and checkpoint when due

The loop is the same on one CPU and on many GPUs under torchrun (parallel.py): a stage's step function
does its own cross-rank sums, so the records are global.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

import checkpoint
import cli
import files
import parallel


# ----------------------------------------------------------------------------------------------------
# Flags


@dataclass
class RunConfig:
    """The flags of every training run. Stage scripts subclass it to add their own and change defaults."""

    out: str | None = None  # checkpoint, log and tokenizer go here
    init: str | None = None  # start from the weights of this checkpoint folder (fresh optimizer)
    resume: bool = False  # continue the run saved in --out, exactly (optimizer, data position, RNG)
    seed: int = 1337
    steps: int | None = None  # optimizer steps in the whole run (the schedule is laid out over these)
    stop_at: int | None = None  # stop after this step (as if interrupted); --resume continues it
    batch_size: int = 16  # per rank: rows of tokens (train.py) or preference pairs (dpo.py)
    lr: float | None = None  # peak learning rate
    min_lr_ratio: float = 0.0  # the linear decay ends at lr * min_lr_ratio
    warmup_steps: int | None = None
    weight_decay: float = 0.1  # Phi-4's value; applied to matrices only
    beta1: float = 0.9
    beta2: float = 0.95  # not PyTorch's 0.999: a shorter memory of gradient size rides out loss spikes (GPT-3)
    grad_clip: float = 1.0  # the usual value for language models; the report does not state one
    save_every: int = 500  # steps between checkpoints (and one at the end); 0: none
    device: str = "auto"  # auto | cpu | cuda

    HELP = {
        "out": "output folder for the checkpoint, log.jsonl and tokenizer.json",
        "init": "checkpoint folder whose weights start this run (optimizer and step start fresh)",
        "resume": "continue the run in --out exactly where its last checkpoint left it",
        "seed": "seed for weights, data order and sampling",
        "steps": "optimizer steps in the whole run; the LR schedule spans them",
        "stop_at": "stop after this step as if interrupted (resume later with --resume)",
        "batch_size": "sequences (or pairs) per micro-batch per device",
        "lr": "peak learning rate after warm-up",
        "min_lr_ratio": "final learning rate as a fraction of --lr (linear decay)",
        "warmup_steps": "linear warm-up steps",
        "weight_decay": "AdamW weight decay on matrices (not on norm gains)",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "grad_clip": "clip the global gradient norm to this (0 disables)",
        "save_every": "steps between checkpoints, plus one at the end (0: no checkpoints, for benchmarks)",
        "device": "auto (cuda if available, else cpu), cpu or cuda",
    }
    # The valid range of each numeric flag, checked while parsing (cli.config_parser).
    LIMITS = {
        "steps": cli.at_least(1), "stop_at": cli.at_least(1), "batch_size": cli.at_least(1),
        "lr": cli.at_least(0.0, float), "min_lr_ratio": cli.between(0.0, 1.0), "warmup_steps": cli.at_least(0),
        "weight_decay": cli.at_least(0.0, float), "beta1": cli.between(0.0, 1.0, high_open=True),
        "beta2": cli.between(0.0, 1.0, high_open=True), "grad_clip": cli.at_least(0.0, float),
        "save_every": cli.at_least(0),
    }


# What --resume lets a user change: where and how often to save, evaluate and stop, and how to run
# (device, compilation, checkpointing). Everything else shapes the run itself (its schedule, batches,
# data, model), so a resumed run takes it from its checkpoint and refuses a different value.
SAFE_ON_RESUME = ("resume", "out", "stop_at", "save_every", "eval_every", "eval_batches", "device", "compile",
                  "activation_checkpointing", "dry_run", "world_size", "gpu_memory_gb")


def resume_settings(cfg: RunConfig, record: dict, world_size: int | None = None) -> RunConfig:
    """The settings of the run a checkpoint belongs to, for --resume.

    Flags the user typed (cfg.given, from cli.given_flags; for a config built in code, every field that
    differs from its default) must agree with the saved run unless they are in SAFE_ON_RESUME.
    With `world_size` (train.py, where --batch-size counts rows per rank), the batch that must agree is
    the global one, batch_size x ranks: a 2-rank run with --batch-size 2 resumes in one process at 4.
    """
    saved = record.get("train_config") or {}
    given = getattr(cfg, "given", None)
    if given is None:
        # Built in code, so no flags were typed: every field changed from its default counts as given.
        given = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default}
    restored = {}
    for field in dataclasses.fields(cfg):
        if field.name in SAFE_ON_RESUME or field.name not in saved:  # a flag newer than the checkpoint keeps today's
            continue
        mine, theirs = getattr(cfg, field.name), saved[field.name]
        if field.name == "batch_size" and world_size is not None:
            restored["batch_size"] = global_batch(mine if field.name in given else None, theirs,
                                                  record.get("world_size", 1), world_size)
            continue
        if field.name in given and mine != theirs:
            flag = "--" + field.name.replace("_", "-")
            raise ValueError(f"{flag} {mine} differs from the run being resumed ({flag} {theirs}); a resumed run keeps "
                             f"its settings (only {', '.join('--' + n.replace('_', '-') for n in SAFE_ON_RESUME[2:])} "
                             "may change): drop the flag, or start a new run with another --out")
        restored[field.name] = theirs
    return with_given(dataclasses.replace(cfg, **restored), given)


def global_batch(mine: int | None, saved: int, saved_ranks: int, ranks: int) -> int:
    """--batch-size per rank for a resumed run: the saved global micro-batch split over today's ranks."""
    rows = saved * saved_ranks  # rows per micro-step over all ranks: what the data order depends on
    if mine is not None and mine * ranks != rows:
        raise ValueError(f"--batch-size {mine} x {ranks} rank(s) = {mine * ranks} rows differs from the run being "
                         f"resumed ({saved} x {saved_ranks} = {rows}); drop --batch-size or match it")
    if rows % ranks:
        raise ValueError(f"the resumed run reads {rows} rows per micro-step, which {ranks} ranks cannot share; "
                         f"resume on a number of ranks that divides {rows}")
    return rows // ranks


def with_given(cfg: RunConfig, given: set[str] | None) -> RunConfig:
    """Attach the set of typed flags to a config (not a dataclass field: it is not saved)."""
    cfg.given = given
    return cfg


# ----------------------------------------------------------------------------------------------------
# Learning rate and optimizer


def learning_rate(step: int, cfg: RunConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warm-up to cfg.lr, then linear decay."""
    # BEGIN SOLUTION lr_schedule: warm-up lr * (step + 1) / warmup_steps, then linear decay to lr * min_lr_ratio at cfg.steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps  # step 0 gets lr / warmup_steps: no step is wasted at LR 0
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)  # a run that is all warm-up must not divide by zero
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)  # 0 at the peak, 1 at step --steps
    return cfg.lr * (1.0 - progress * (1.0 - cfg.min_lr_ratio))
    # END SOLUTION lr_schedule


def make_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
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
# The loop


def start_log(path: str, start_step: int):
    """log.jsonl holds one record per step: a fresh run starts it empty, a resumed run keeps the records
    up to its checkpoint's step (the steps after the last save are about to be run again)."""
    resumed = start_step > 0 and os.path.exists(path)
    files.write_jsonl(path, [r for r in files.read_jsonl(path) if r.get("step", 0) <= start_step] if resumed else [])


def run_loop(cfg: RunConfig, world: parallel.Distributed, model, optimizer, loader, start_step: int, desc: str,
             step_fn: Callable[[], dict], show: dict[str, str], evaluate: Callable[[], float] | None = None,
             eval_every: int = 0, flops_per_token: float | None = None,
             should_stop: Callable[[list[dict]], str | None] | None = None) -> list[dict]:
    """Run optimizer steps start_step..last and return their records (rank 0 also appends them to log.jsonl).

    step_fn does one step's forward and backward and returns its metrics, already summed over ranks:
    at least "loss" and "n_tokens" (tokens processed on all ranks). show maps record keys to formats
    for the progress bar. evaluate, when given, runs every eval_every steps and at the end. should_stop,
    when given, sees the records after each step and returns a reason to end the run there (the model of
    that step is saved, the reason printed), or None to go on.
    """
    device, W = world.device, world.world_size
    log_path = os.path.join(cfg.out, "log.jsonl")
    if world.is_main:
        start_log(log_path, start_step)
    peak = parallel.peak_flops(device) if flops_per_token else None  # one device's bf16 FLOP/s; None where unknown (CPU)
    # --stop-at ends the run early but leaves the schedule laid out over --steps, as an interruption would.
    last_step = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    records = []
    model.train()
    run_start = time.perf_counter()
    bar = tqdm(range(start_step, last_step), initial=start_step, total=last_step, desc=desc, dynamic_ncols=True,
               mininterval=1.0, disable=not world.is_main)
    for step in bar:
        t0 = time.perf_counter()
        # Set by hand, not by an LR scheduler object: the LR is a function of the step alone, so --resume
        # needs no scheduler state to restore.
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        metrics = step_fn()
        # Clipping returns the norm before clipping: the number that says whether the step was sane.
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(parallel.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        if not (math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)):
            # Stop before the optimizer writes NaN into the weights: the last checkpoint stays good.
            raise ValueError(f"step {step + 1}: loss {metrics['loss']} / gradient norm {grad_norm} is not finite; "
                             f"nothing after the last checkpoint was saved (lower --lr, or check the data)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # None, not zeros: the memory is free until the next backward
        if device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: without this the clock stops before they finish
        tokens_per_s = metrics.pop("n_tokens") / (time.perf_counter() - t0)  # of the whole world: n_tokens is global
        record = {"step": step + 1, **metrics, "lr": lr, "grad_norm": grad_norm, "tok_s": tokens_per_s}
        if flops_per_token:
            # MFU per GPU: the whole run's FLOP/s over the peak of all W devices; None where unknown.
            record["mfu"] = tokens_per_s * flops_per_token / (peak * W) if peak else None
        record["time_s"] = time.perf_counter() - run_start  # since this process started (a resume restarts at 0)
        if device.type == "cuda":
            record["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9  # this rank's high-water mark
        is_last = step + 1 == last_step
        if evaluate is not None and ((eval_every and (step + 1) % eval_every == 0) or is_last):
            record["val_loss"] = evaluate()
        bar.set_postfix({key: fmt.format(record[key]) for key, fmt in show.items() if record.get(key) is not None})
        records.append(record)
        if world.is_main:
            with open(log_path, "a") as f:  # a line per step: a crash loses at most the step in progress
                f.write(json.dumps(record) + "\n")
        reason = should_stop(records) if should_stop else None
        if cfg.save_every > 0 and ((step + 1) % cfg.save_every == 0 or is_last or reason):
            checkpoint.save_checkpoint(cfg.out, model, optimizer, step + 1, loader, cfg)
        if reason:
            if world.is_main:
                print(f"stopping at step {step + 1}: {reason}")
            break
    bar.close()
    return records
