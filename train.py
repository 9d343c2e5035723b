"""Chapter: pretraining, midtraining and SFT, one loop for the recipe's token-prediction stages.

Phi-4 report section 3: pretraining on ~10T tokens at 4K context with linear warm-up and linear decay,
peak learning rate 3e-4, weight decay 0.1 (global batch 5,760 sequences); midtraining extends the context
to 16K with the RoPE base 10K -> 250K; report section 4: SFT on chat data. This file runs all three at any
size, from a laptop CPU to GPU nodes under torchrun:

    python train.py                                  # toy model on the synthetic world, ~5 min on 2 CPU cores
    python train.py --size small --data out/data/mine --device cuda --compile
    python train.py --resume --out out/pretrain      # continue exactly where a run stopped
    python train.py --stage midtrain --init out/pretrain   # context 4x, RoPE base x25, LR/3, 50% long documents
    python train.py --stage midtrain --init out/pretrain --rope-theta 800 --out out/midtrain_kept_base  # the ablation
    python train.py --stage sft --init out/midtrain  # chat format, loss on the assistant's tokens only
    torchrun --nproc_per_node=8 train.py --size 14b --activation-checkpointing --batch-size 1 ...
    python train.py --size 14b --dry-run --world-size 8    # the memory plan per rank, nothing allocated

What one step does (`lm_step`): it draws `grad_accum` micro-batches per rank so that one optimizer step
sees `--batch-tokens` tokens in all (the same number at any world size) however small the micro-batch,
and sums their losses weighted by the token count of the whole global batch. trainer.py does the rest
(schedule, clipping, AdamW, logging, checkpoints); the progress bar shows loss, learning rate, tokens/s
and model FLOP utilisation (MFU: achieved FLOP/s over the device's bf16 peak; "n/a" where unknown).

Every run, `python train.py` included, is one or more ranks of one code path (parallel.py): under FSDP2
each rank holds 1/world_size of the weights, gradients and AdamW state and reads its own rows of every
batch; a single CPU process skips the sharding (nothing to shard, and its hooks cost ~5%).

Simplified against the report: one data mixture (the synthetic world) instead of five sources, and the
optimizer betas and warm-up length are our choices (the report does not state them).
A checkpoint folder is code (its shard metadata is a pickle): open only your own; share models as
safetensors (checkpoint.py, hf.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import checkpoint
import cli
import data
import parallel
import trainer
from model import ATTN_IMPLS, CONTEXT_EXTENSION, PRESETS, ModelConfig, Phi4, get_config

# ----------------------------------------------------------------------------------------------------
# Configuration: every field is a command-line flag (underscores become dashes).


# Phi-4 divided its peak LR by 10 for midtraining (report section 3). Measured at toy scale, /10 adapts
# too little in 300 steps (recall at 4x stayed at 1-2%); /3 moves the model enough to use the new RoPE
# base, while the replayed half of each batch keeps the short-context skills.
MIDTRAIN_LR_DIVISOR = 3
# Phi-4 raised the RoPE base from 10K to 250K when it extended the context (report section 3): 25x. The
# toy's base is scaled to its context (model.py, PRESETS), so midtraining multiplies whatever base the
# model was pretrained with: 14b 10K -> 250K, toy 800 -> 20K.
ROPE_BASE_FACTOR = 25

# What each stage changes when its flags are not given. Toy-scale values; the Phi-4 numbers they mirror
# are in the comments (report sections 3 and 4).
STAGE_DEFAULTS = {
    # Phi-4: peak 3e-4 at 14B; a 1M-parameter model trains fastest near 3e-3. 40% of the toy rows are
    # first-line-recall documents (toyworld section 4): the long-range skill midtraining then stretches.
    "pretrain": dict(what="next-token prediction on token shards (+40% recall rows when the data has them)",
                     lr=3e-3, steps=1200, warmup_steps=50, long_fraction=data.RECALL_FRACTION),
    # Phi-4 (report section 3): context 4K -> 16K, RoPE base 10K -> 250K, peak LR divided by 10, 30% long
    # documents and 70% replayed pretraining data. The context becomes CONTEXT_EXTENSION x that of
    # the --init model (toy 256 -> 1024, 14b 4096 -> 16384), the RoPE base ROPE_BASE_FACTOR x its base and
    # the peak LR its pretraining LR divided by MIDTRAIN_LR_DIVISOR; all three are read from the --init
    # checkpoint by midtrain_settings() below. The toy uses half long rows: 300 small steps are its whole
    # extension budget.
    "midtrain": dict(what=f"context extension: 4x context, RoPE base x{ROPE_BASE_FACTOR}, LR/{MIDTRAIN_LR_DIVISOR}, "
                     "long/replay data 50/50; needs --init", long_fraction=0.5, steps=300, warmup_steps=15),
    # Phi-4: SFT at 1e-6, 300x below its pretraining peak. The toy keeps it 3x lower than pretraining: the
    # model is far from converged, the chat format is new to it, and midtraining's new RoPE base moved the
    # rotations its copying of numbers was learned with. At 1e-3 SFT re-fits them (test 72.5%, 97% on the
    # problems without "takes"); at 3e-4 it did not in 300 steps (28.2%, 38%; 600 steps: 68.8%). LAB.md,
    # "SFT after the new base".
    "sft": dict(what="chat format, loss on assistant tokens only; needs --init", lr=1e-3, steps=300, warmup_steps=20),
}
STAGES = tuple(STAGE_DEFAULTS)


@dataclass
class TrainConfig(trainer.RunConfig):
    """The flags of train.py: trainer.RunConfig's shared ones plus the stages' own."""

    stage: str = "pretrain"  # which stage of the recipe this run is (STAGES)
    size: str = "toy"  # model preset (model.PRESETS)
    data: str = data.TOY_DATA_DIR  # folder with tokenizer.json and train_*.bin / val_*.bin shards
    sft_data: str | None = None  # chat JSONL for --stage sft (default: DATA/sft.jsonl)
    seq_len: int | None = None  # tokens per sequence; default: the model's max_seq_len
    batch_tokens: int | None = None  # tokens per optimizer step (global); default: one micro-batch per rank
    eval_every: int = 200  # steps between held-out loss measurements (0: only at the end)
    eval_batches: int = 8  # micro-batches per rank per evaluation (toy: 8 x 16 x 256 = 32K target tokens)
    compile: bool = False  # torch.compile each block (GPU; slow to start on CPU)
    bf16_autocast: bool = False  # CPU: matmuls in bf16 under torch.autocast (fp32 weights and optimizer)
    attn_impl: str | None = None  # override the preset's attention: naive | sdpa | triton
    rope_theta: float | None = None  # RoPE base: of a fresh model, or the new one of midtraining (25x the old)
    long_data: str | None = None  # midtrain: folder with long_train_*.bin (default: --data, built on demand)
    long_fraction: float | None = None  # share of rows holding one whole document (midtrain long, pretrain recall)
    n_layer: int | None = None  # override the preset's depth (the 14b width with 4 blocks fits one GPU)
    activation_checkpointing: bool = False  # recompute each block in backward instead of storing it
    dry_run: bool = False  # print the per-rank memory plan and exit, allocating nothing
    world_size: int | None = None  # ranks the --dry-run plans for (a real run takes torchrun's)
    gpu_memory_gb: float = 80.0  # GPU memory the --dry-run checks the plan against

    HELP = {
        "out": "output folder for checkpoint, log.jsonl and tokenizer.json (default out/STAGE)",
        "steps": "optimizer steps in the whole run; the LR schedule spans them (default: per stage)",
        "lr": "peak learning rate after warm-up (default: per stage)",
        "warmup_steps": "linear warm-up steps (default: per stage)",
        "batch_size": "sequences per micro-batch per device",
        "stage": "recipe stage: " + ", ".join(f"{k} ({v['what']})" for k, v in STAGE_DEFAULTS.items()),
        "size": f"model preset: {', '.join(PRESETS)}",
        "data": "data folder from `python data.py` (built automatically for the toy world), or 'random' for benchmarks",
        "sft_data": "chat JSONL for --stage sft: {'messages': [...]} or world problems (default DATA/sft.jsonl)",
        "seq_len": "sequence length in tokens (default: the preset's max_seq_len)",
        "batch_tokens": "global tokens per optimizer step, kept at any world size; gradient accumulation fills "
        "the gap (default: one micro-batch per rank, batch_size x seq_len x world size)",
        "eval_every": "steps between held-out loss evaluations (0: only at the end)",
        "eval_batches": "micro-batches (per rank) per held-out evaluation",
        "compile": "compile each transformer block with torch.compile (GPU; slow to start on CPU)",
        "bf16_autocast": "CPU: run the matmuls in bf16 under torch.autocast, weights and AdamW staying fp32 (1.78x "
        "a toy step on a CPU with bf16 instructions; `python bench.py --parts precision` measures yours). "
        "GPUs already compute in bf16 through FSDP's mixed-precision policy",
        "attn_impl": "attention implementation: naive, sdpa, blockwise or triton; none given: sdpa, or for --resume "
                     "the run's own (blockwise is the fastest for training on a CPU, above all under --bf16-autocast; "
                     "triton needs a GPU)",
        "rope_theta": "RoPE base: for a fresh model (default: the preset's), or the base midtraining switches to "
        f"(default {ROPE_BASE_FACTOR}x the pretrained one; giving the pretrained base runs the ablation that extends "
        "the context without changing it)",
        "long_data": "midtrain: folder with long_train_*.bin / long_val_*.bin (default: --data, where the toy "
        "world's long documents are built on first use)",
        "long_fraction": "share of rows that hold one whole document: midtrain's long documents (default 0.5), or "
        "pretrain's recall documents where the data has them (default 0.4); the rest are packed pretraining rows",
        "n_layer": "override the preset's number of blocks (e.g. --size 14b --n-layer 4 to benchmark one GPU)",
        "activation_checkpointing": "recompute each block's activations in backward (less memory, ~1/3 more FLOPs)",
        "dry_run": "print the memory plan per rank (params, grads, AdamW, activations, FLOPs/token) and exit",
        "world_size": "number of ranks --dry-run plans for (default: torchrun's WORLD_SIZE, else 1)",
        "gpu_memory_gb": "GPU memory in GB that --dry-run checks the plan against",
    }
    # Each numeric flag's valid range, checked while parsing: a typo fails before any data is built.
    LIMITS = {
        "seq_len": cli.at_least(1), "batch_tokens": cli.at_least(1), "eval_every": cli.at_least(0),
        "eval_batches": cli.at_least(0), "rope_theta": cli.positive, "long_fraction": cli.between(0.0, 1.0),
        "n_layer": cli.at_least(1), "world_size": cli.at_least(1), "gpu_memory_gb": cli.positive,
    }


def resolve_stage(cfg: TrainConfig) -> TrainConfig:
    """Fill the flags left unset with the stage's defaults, and check the stage has what it needs."""
    defaults = STAGE_DEFAULTS[cfg.stage]
    updates = {k: v for k, v in defaults.items() if k != "what" and getattr(cfg, k) is None}  # a typed flag wins
    if cfg.out is None:
        updates["out"] = os.path.join("out", cfg.stage)
    if cfg.stage == "sft" and not (cfg.init or cfg.resume):
        raise ValueError("--stage sft fine-tunes a trained model: pass --init out/pretrain (or --resume)")
    if cfg.stage == "sft" and cfg.rope_theta:  # a new base moves every rotation the model learned; SFT keeps it
        raise ValueError("--rope-theta changes the RoPE base only in --stage pretrain or midtrain, not sft")
    # Another stage's data flag would be ignored: the run would train on other data than the one named.
    for flag, value, stage in (("--sft-data", cfg.sft_data, "sft"), ("--long-data", cfg.long_data, "midtrain")):
        if value is not None and cfg.stage != stage:
            raise ValueError(f"{flag} is for --stage {stage}; this run is --stage {cfg.stage}")
    cfg = dataclasses.replace(cfg, **updates)
    if cfg.stage == "midtrain":
        cfg = dataclasses.replace(cfg, **midtrain_settings(cfg))  # after the replace above: it needs --out
    return cfg


def midtrain_settings(cfg: TrainConfig) -> dict:
    """The context length, RoPE base and peak LR of a midtraining run, from the model it starts from.

    --init: the new context is 4x the checkpoint's max_seq_len, the base ROPE_BASE_FACTOR x its rope_theta
    and the peak LR the one it was pretrained with divided by MIDTRAIN_LR_DIVISOR (all from the checkpoint's
    small record file; no weights are read). --seq-len, --rope-theta and --lr override them. --resume: the
    values the run was started with, from its own checkpoint.
    Without either (only for --dry-run) the preset stands in for the pretrained model.
    """
    if cfg.resume:
        # The run's own record: its model is already extended, so 4x its max_seq_len would be 16x the original.
        started = checkpoint.read_checkpoint(cfg.out).get("train_config") or {}
        return {"seq_len": cfg.seq_len or started.get("seq_len"), "lr": cfg.lr or started.get("lr"),
                "rope_theta": cfg.rope_theta or started.get("rope_theta")}
    if cfg.init:
        record = checkpoint.read_checkpoint(cfg.init)
        pretrained = ModelConfig.from_dict(record["model_config"])
        pretrain_lr = (record.get("train_config") or {}).get("lr")
    elif cfg.dry_run:  # a memory plan needs shapes only, so no pretrained checkpoint has to exist yet
        pretrained, pretrain_lr = get_config(cfg.size), None
    else:
        raise ValueError("--stage midtrain extends a pretrained model: pass --init out/pretrain (or --resume)")
    # BEGIN SOLUTION context_extension: seq_len: --seq-len or 4x the pretrained context; rope_theta: --rope-theta or 25x the pretrained base; lr: --lr or pretraining's / divisor
    return {
        "seq_len": cfg.seq_len or CONTEXT_EXTENSION * pretrained.max_seq_len,
        "rope_theta": cfg.rope_theta or ROPE_BASE_FACTOR * pretrained.rope_theta,
        # Rounded to 6 digits so the log shows 0.0003, not 0.00030000000000000003.
        "lr": cfg.lr or float(f"{(pretrain_lr or STAGE_DEFAULTS['pretrain']['lr']) / MIDTRAIN_LR_DIVISOR:.6g}"),
    }
    # END SOLUTION context_extension


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

def parse_args(argv=None) -> TrainConfig:
    """train.py's flags as a TrainConfig; `given` records which were typed, for --resume to check."""
    choices = {"size": list(PRESETS), "stage": list(STAGES), "attn_impl": list(ATTN_IMPLS),
               "device": list(parallel.DEVICES)}
    parser = cli.config_parser(TrainConfig, __doc__.split("\n")[0], choices, epilog=CHECKPOINT_TRUST)
    args = parser.parse_args(argv)
    cli.refuse_unused(parser, args, {"gpu_memory_gb": "dry_run"}, argv)
    cfg = TrainConfig(**vars(args))  # stage defaults are filled in by resolve_stage()
    return trainer.with_given(cfg, cli.given_flags(parser, argv))


# Printed at the end of --help, where someone about to pass a downloaded folder to --init will read it.
CHECKPOINT_TRUST = ("A checkpoint folder is code: its shard metadata is a pickle, so open (--init, --resume) only "
                    "folders you made. Share models as safetensors: model.save_pretrained(DIR), read by sample.py --hf.")


# ----------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, loader: data.TokenLoader, n_batches: int, device) -> float:
    """Mean held-out loss over the first n_batches of the validation stream (the same every time).

    Under torchrun each rank scores its own rows of every batch; the sums are added over ranks.
    """
    model.eval()
    loader.load_state_dict({"position": 0, "epoch": 0})  # rewind: val_loss changes only when the model does
    total, count = 0.0, 0
    for _ in range(n_batches):
        inputs, targets = loader.next_batch()
        inputs, targets = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)
        total += model(inputs, targets, reduction="sum").item()  # a sum, so every target token weighs the same
        count += int((targets != -100).sum())  # -100: padding, or a non-assistant token in SFT; not scored
    model.train()
    if dist.is_initialized():
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)  # float64: counts past 2^24 stay exact
        dist.all_reduce(sums)
        total, count = sums.tolist()
    return total / count


# ----------------------------------------------------------------------------------------------------
# Setup: data, model, loaders


def prepare_data(cfg: TrainConfig) -> data.Tokenizer | None:
    """Build the toy data the first time; otherwise check the data folder is usable."""
    if cfg.data == "random":
        return None  # RandomTokens: no tokenizer, no files
    # Only the default folder is built on demand; an empty folder the user named is a mistake to report.
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
        data.ensure_long_documents(cfg.data, cfg.seq_len + 1)  # +1: a row's targets are its inputs shifted by one
    return data.Tokenizer.load(tokenizer_file)


def model_config(cfg: TrainConfig, tokenizer: data.Tokenizer | None, record: dict | None) -> ModelConfig:
    """The shape of this run's model: the checkpoint's for --init/--resume, else the preset's."""
    if record is not None:
        config = ModelConfig.from_dict(record["model_config"])  # the weights fix the shape; preset flags cannot
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
    # The attention implementation is speed only, not the weights, and the fastest one depends on the run:
    # every run takes --attn-impl or the default, never a checkpoint's (pretraining at 256 tokens with
    # 'naive' would make midtraining's 1,024-token rows 2-3x slower). --resume gets its run's own flag
    # back with the other settings (trainer.resume_settings), before this.
    config = dataclasses.replace(config, attn_impl=cfg.attn_impl or ModelConfig.attn_impl)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:  # an id would index past the embedding
        raise ValueError(f"tokenizer of --data {cfg.data} has {tokenizer.vocab_size} ids but the model only "
                         f"{config.vocab_size}; pick a matching --size or --data")
    return config


def build_model(cfg: TrainConfig, tokenizer, world: parallel.Distributed) -> tuple[Phi4, dict | None]:
    """The model for this run, sharded with FSDP2: fresh from the preset, from --init, or from --resume.
    Returns (model, the checkpoint record read for --init/--resume, or None)."""
    record = checkpoint.read_checkpoint(cfg.out if cfg.resume else cfg.init) if (cfg.resume or cfg.init) else None
    config = model_config(cfg, tokenizer, record)
    # Refuse a run that cannot fit before anything is allocated, rather than fail with out-of-memory mid-step.
    plan = parallel.memory_plan(config, world.world_size, cfg.batch_size, cfg.seq_len or config.max_seq_len,
                                mixed_precision=world.device.type == "cuda")
    parallel.check_fits(plan["total_checkpointed" if cfg.activation_checkpointing else "total"], world.device,
                        f"training --size {cfg.size} at --batch-size {cfg.batch_size} x {plan['seq_len']} tokens",
                        parallel.TRAINING_REMEDY)

    def shard(model):  # FSDP2 for several ranks or a GPU (bf16 there); one CPU process only gets AC/compile
        parallel.parallelize(model, world.mesh, cfg.activation_checkpointing, cfg.compile, world.device.type == "cuda",
                             shard=parallel.needs_fsdp(world))

    model = checkpoint.build_model(config, world.device, record, shard, cfg.seed)  # each rank allocates only 1/W
    if cfg.stage == "midtrain" and not cfg.resume:
        # Context extension: the same weights with RoPE tables for the longer context and the new base.
        # set_rope records both in model.config, so every checkpoint of this run carries them.
        model.set_rope(max_seq_len=cfg.seq_len, rope_theta=cfg.rope_theta)
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
        """The next (inputs, targets), each (B, T), the same as TokenLoader's."""
        rng = np.random.default_rng((self.seed, self.position))  # keyed by batch index: no stream state to save
        self.position += 1
        rows = rng.integers(0, self.vocab_size, size=self.shape, dtype=np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]  # inputs (B, T), targets (B, T)

    def state_dict(self) -> dict:
        """What checkpoint.py saves per rank: one integer is the whole state."""
        return {"position": self.position}

    def load_state_dict(self, state: dict):
        self.position = int(state["position"])


def make_loaders(cfg: TrainConfig, tokenizer: data.Tokenizer, seq_len: int, rank: int = 0, world_size: int = 1):
    """(train loader, held-out loader or None) for the stage: token shards, or chat conversations for SFT."""
    if cfg.stage == "sft":
        conversations = data.read_conversations(cfg.sft_data or os.path.join(cfg.data, "sft.jsonl"))
        examples = [tokenizer.render_chat(c) for c in conversations]  # (ids, loss mask): assistant tokens only
        n_val = min(200, len(examples) // 10)  # the head of the file is the held-out part
        # The held-out loader gets seed 0, so its rows do not change with --seed.
        make = lambda ex, seed: data.ChatLoader(ex, cfg.batch_size, seq_len, tokenizer.pad_id, rank, world_size, seed)
        train_loader = make(examples[n_val:], cfg.seed)
        if train_loader.n_dropped:
            print(f"note: {train_loader.n_dropped} conversations longer than --seq-len {seq_len} were left out")
        # A held-out part smaller than one global batch (batch_size x world_size rows) cannot fill one.
        return train_loader, (make(examples[:n_val], 0) if n_val >= cfg.batch_size * world_size else None)
    if cfg.stage == "midtrain":
        # Long documents, one per row, and replayed pretraining rows (data.MixtureLoader says
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
    # Pretraining: rows cut from one stream of concatenated documents (packed, no padding, nothing wasted),
    # and, where the data has recall documents (the toy world's), --long-fraction of the rows hold one
    # each, at position 0 as data.MixtureLoader explains: the document's first line is always in the row.
    if data.shard_paths(cfg.data, "recall_train") and cfg.long_fraction:
        longest = max(len(doc) for path in data.shard_paths(cfg.data, "recall_train")
                      for doc in data.shard_documents(path, tokenizer.bos_id))
        if longest > seq_len + 1:
            raise ValueError(f"--data {cfg.data} has recall documents of up to {longest} tokens, more than a row of "
                             f"--seq-len {seq_len}; pass --long-fraction 0 (no recall rows) or raise --seq-len")
        make = lambda split: data.MixtureLoader(
            data.shard_paths(cfg.data, split), data.shard_paths(cfg.data, f"recall_{split}"), cfg.batch_size, seq_len,
            cfg.long_fraction, tokenizer.bos_id, tokenizer.pad_id, rank, world_size,
        )
        has_val = bool(data.shard_paths(cfg.data, "val") and data.shard_paths(cfg.data, "recall_val"))
        return make("train"), (make("val") if has_val else None)
    train_loader = data.TokenLoader(data.shard_paths(cfg.data, "train"), cfg.batch_size, seq_len, rank, world_size)
    val_paths = data.shard_paths(cfg.data, "val")
    val_loader = data.TokenLoader(val_paths, cfg.batch_size, seq_len, rank, world_size) if val_paths else None
    return train_loader, val_loader


def plan_memory(cfg: TrainConfig) -> str:
    """--dry-run: the per-rank memory plan of this run, computed from shapes alone (nothing allocated)."""
    if cfg.resume or cfg.init:
        config = ModelConfig.from_dict(checkpoint.read_checkpoint(cfg.out if cfg.resume else cfg.init)["model_config"])
    else:
        overrides = {"max_seq_len": cfg.seq_len} if cfg.seq_len else {}
        if cfg.n_layer:
            overrides["n_layer"] = cfg.n_layer
        config = get_config(cfg.size, **overrides)
    world_size = cfg.world_size or int(os.environ.get("WORLD_SIZE", 1))  # asked for, else torchrun's
    # Plans are for GPUs (bf16 compute) unless the run is explicitly on CPU (fp32).
    plan = parallel.memory_plan(
        config, world_size, cfg.batch_size, cfg.seq_len or config.max_seq_len, mixed_precision=cfg.device != "cpu"
    )
    return parallel.format_plan(plan, cfg.gpu_memory_gb, cfg.activation_checkpointing)


def accumulation_steps(cfg: TrainConfig, seq_len: int, world_size: int) -> int:
    """Micro-batches per optimizer step. The global batch is counted in tokens and --batch-tokens fixes it
    at any world size: one micro-step moves batch_size x seq_len tokens on each rank, and gradient
    accumulation makes up the rest. Without the flag, a step is one micro-batch on every rank."""
    micro_tokens = cfg.batch_size * seq_len * world_size  # tokens one micro-step moves over all ranks
    batch_tokens = cfg.batch_tokens or micro_tokens
    if batch_tokens % micro_tokens != 0:
        raise ValueError(
            f"--batch-tokens {batch_tokens} (global) must be a multiple of --batch-size {cfg.batch_size} x "
            f"--seq-len {seq_len} x {world_size} ranks = {micro_tokens}; lower --batch-size or raise --batch-tokens"
        )
    # Phi-4's 5,760 x 4,096 = 23.6M tokens per step on 64 ranks at --batch-size 1 is 90 micro-steps.
    return batch_tokens // micro_tokens


def restore_position(record: dict, loader, world: parallel.Distributed) -> None:
    """--resume: put this rank's loader and RNG streams back where the checkpoint left them."""
    ranks = record["ranks"]
    if len(ranks) == world.world_size:
        mine = ranks[world.rank]  # the same world: each rank takes back its own data position and RNG
    else:
        # Another world size: DCP has already resharded the weights and AdamW state. The loaders count
        # global batches, so every rank's position is the same number and carries over; no training
        # step draws random numbers, so rank 0's RNG streams serve every rank.
        if len({json.dumps(r["loader"], sort_keys=True) for r in ranks}) > 1:
            raise ValueError(f"this checkpoint was written by {len(ranks)} ranks at different data positions; "
                             f"resume it on {len(ranks)} ranks")
        if world.is_main:
            print(f"note: resuming a {len(ranks)}-rank checkpoint on {world.world_size} ranks (weights and optimizer resharded)")
        mine = ranks[0]
    loader.load_state_dict(mine["loader"])
    checkpoint.set_rng_state(mine["rng"])


def autocast(cfg: TrainConfig, device: torch.device):
    """bf16 autocast for --bf16-autocast on a CPU, else nothing: a GPU gets bf16 from FSDP's policy."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast and device.type == "cpu")


def lm_step(model, loader, grad_accum: int, world: parallel.Distributed, precision=contextlib.nullcontext):
    """One optimizer step's forward and backward for next-token prediction, as a function for run_loop.
    `precision()` makes the context the forward runs in (autocast, or nothing)."""
    device, W = world.device, world.world_size

    def step() -> dict:
        # Fetch the step's micro-batches first, so each loss can be divided by the step's total number
        # of target tokens on all ranks: every token then weighs the same, however they fall into
        # micro-batches and ranks.
        batches = [loader.next_batch() for _ in range(grad_accum)]
        n_tokens = parallel.global_sum(sum(inputs.size for inputs, _ in batches), world)  # padding too: for tok/s
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        # BEGIN SOLUTION lr_schedule: count the step's targets (!= -100) on all ranks; backward each micro-batch's sum / that
        n_targets = parallel.global_sum(sum(int((t != -100).sum()) for _, t in batches), world)
        if n_targets == 0:
            raise ValueError("a training batch has no target token (SFT rows without an assistant turn?)")
        for inputs, targets in batches:
            inputs = torch.from_numpy(inputs).to(device, non_blocking=True)  # (B, T) token ids
            targets = torch.from_numpy(targets).to(device, non_blocking=True)  # (B, T), -100 where not scored
            with precision():  # the loss itself is computed in fp32 either way (chunked_cross_entropy)
                loss = model(inputs, targets, reduction="sum") / n_targets
            # FSDP's reduce-scatter averages gradients over the W ranks; scaling by W turns that average
            # into the sum, so the gradient is exactly that of the global token-weighted mean loss.
            (loss * W).backward()
            loss_sum += loss.detach()
        # END SOLUTION lr_schedule
        dist.all_reduce(loss_sum)  # each rank holds its share of the global mean; the shares add up to it
        return {"loss": loss_sum.item(), "n_tokens": n_tokens}

    return step


# ----------------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainConfig) -> list[dict]:
    """Run one training job as this process's rank; returns the logged records (rank 0 also writes
    them to out/log.jsonl). `python train.py` is a world of one, through the same code."""
    if cfg.resume:  # the saved run's settings, before any stage default could replace them
        out = cfg.out or os.path.join("out", cfg.stage)
        cfg = trainer.resume_settings(trainer.with_given(dataclasses.replace(cfg, out=out), getattr(cfg, "given", None)),
                                      checkpoint.read_checkpoint(out), int(os.environ.get("WORLD_SIZE", 1)))
    cfg = resolve_stage(cfg)  # stage defaults fill only what the flags and --resume left unset
    if cfg.dry_run:
        print(plan_memory(cfg))
        return []
    world = parallel.init_distributed(parallel.resolve_device(cfg.device))  # a group of one without torchrun
    try:
        return train_on(cfg, world)
    finally:
        parallel.shutdown(world)


def train_on(cfg: TrainConfig, world: parallel.Distributed) -> list[dict]:
    """The training run proper, on one rank of `world` (train() sets it up and tears it down)."""
    say = print if world.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for everyone
    if cfg.world_size and cfg.world_size != world.world_size:
        raise ValueError(f"--world-size {cfg.world_size} is for --dry-run; torchrun sets the real one ({world.world_size} here)")
    # Every global generator, for anything not handed its own (the weights get a seeded one in build_model).
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # Rank 0 builds the toy data if needed while the others wait, so they never read half-written shards.
    tokenizer = prepare_data(cfg) if world.is_main else None
    dist.barrier()  # rank 0 has finished writing
    if not world.is_main:
        tokenizer = prepare_data(cfg)

    model, record = build_model(cfg, tokenizer, world)
    if cfg.stage == "midtrain" and not cfg.resume:
        for line in midtrain_changes(record, model.config, cfg):
            say(line)
    seq_len = cfg.seq_len or model.config.max_seq_len
    if seq_len > model.config.max_seq_len:  # the RoPE tables end there: later positions would have no rotation
        raise ValueError(f"--seq-len {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}")
    grad_accum = accumulation_steps(cfg, seq_len, world.world_size)
    if cfg.data == "random":
        # Seed per rank: ranks must draw different rows, as they would read different rows of real data.
        train_loader, val_loader = RandomTokens(model.config.vocab_size, cfg.batch_size, seq_len, cfg.seed + world.rank), None
    else:
        train_loader, val_loader = make_loaders(cfg, tokenizer, seq_len, world.rank, world.world_size)
    optimizer = trainer.make_optimizer(model, cfg, world.device)  # after sharding: AdamW's moments are sharded too
    start_step = 0
    if cfg.resume:
        checkpoint.load_optimizer(record, model, optimizer)
        restore_position(record, train_loader, world)
        start_step = record["step"]  # the schedule, the log and the step count continue from here
    if world.is_main and tokenizer is not None:
        checkpoint.save_tokenizer(os.path.join(cfg.data, "tokenizer.json"), cfg.out)  # sample.py reads it there
    os.makedirs(cfg.out, exist_ok=True)

    # The resolved configs, so the log alone says exactly what ran (every checkpoint saves them too).
    say(f"model: {json.dumps(model.config.to_dict())}")
    say(f"train: {json.dumps(dataclasses.asdict(cfg))}")
    say(f"{model.num_params():,} parameters | {world.world_size} rank(s) x {grad_accum} micro-batches of "
        f"{cfg.batch_size}x{seq_len} = {grad_accum * cfg.batch_size * seq_len * world.world_size:,} tokens/step | "
        f"device {world.device.type}" + (" | activation checkpointing" if cfg.activation_checkpointing else ""))
    def evaluate_fn():
        # Each rank scores its rows of eval_batches global batches: the same rows at any world size
        # that keeps batch_size x world_size (the global micro-batch) the same.
        with autocast(cfg, world.device):  # scored as it is trained
            return evaluate(model, val_loader, cfg.eval_batches, world.device)

    records = trainer.run_loop(
        cfg, world, model, optimizer, train_loader, start_step, cfg.stage,
        lm_step(model, train_loader, grad_accum, world, lambda: autocast(cfg, world.device)),
        show={"loss": "{:.3f}", "lr": "{:.1e}", "tok_s": "{:,.0f}", "mfu": "{:.1%}", "peak_mem_gb": "{:.1f}GB",
              "val_loss": "{:.3f}"},
        evaluate=evaluate_fn if val_loader is not None and cfg.eval_batches > 0 else None,
        eval_every=cfg.eval_every, flops_per_token=model.flops_per_token(seq_len),
    )
    say(summary_line(records, cfg))
    return records


def summary_line(records: list[dict], cfg: TrainConfig) -> str:
    """The run in one line: final losses, median throughput and MFU (the first step, which allocates and
    compiles, left out), peak memory, and where the checkpoint is."""
    if not records:
        return f"done: nothing to run (already at step {cfg.stop_at or cfg.steps})"
    last = records[-1]
    steady = records[1:] or records
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]  # None where the device's peak is unknown
    # Medians, not means: one slow step (a recompilation, a busy shared machine) moves a mean, not a median.
    return (
        f"done: step {last['step']} loss {last['loss']:.4f}"
        + (f" val_loss {last['val_loss']:.4f}" if "val_loss" in last else "")
        + f" | median {np.median([r['tok_s'] for r in steady]):,.0f} tok/s"
        + (f", MFU {100 * np.median(mfus):.1f}%" if mfus else "")
        + (f", peak memory {last['peak_mem_gb']:.1f} GB/GPU" if "peak_mem_gb" in last else "")
        + (f" | checkpoint {cfg.out}" if cfg.save_every > 0 else "")
    )


if __name__ == "__main__":
    cli.main(lambda: train(parse_args()))
