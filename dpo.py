"""Direct Preference Optimization: teach a model which of two answers to prefer, without a reward model.

Phi-4 report section 4: after SFT, two rounds of DPO (Rafailov et al. 2023): round 1 on ~250K
single-token pairs from Pivotal Token Search (pts.py), round 2 on ~850K full-length pairs. Each pair is
a prompt x with a chosen completion y_c and a rejected one y_r. With the policy pi (the model being
trained) and a frozen reference pi_ref (the model DPO starts from),

    loss = -log sigmoid( beta * [ (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)) ] )

where every log pi(y|x) is the SUMMED log-probability of the completion's tokens (PHI4.md section 5).
beta * (log pi - log pi_ref) is the completion's implicit "reward": DPO raises the chosen one's above the
rejected one's, while the reference term keeps the policy from drifting far from where it started.

Commands:
    python dpo.py --init out/rs_sft --pairs out/rs/pairs.jsonl --out out/dpo       # full-length pairs
    python dpo.py --init out/sft --pairs out/pts/pairs.jsonl --out out/pts_dpo     # single-token PTS pairs
    python sample.py --init out/dpo --chat --eval                                  # what it bought
    torchrun --standalone --nproc_per_node=8 dpo.py --init ... --pairs ...         # FSDP2, as train.py

What this file does, top to bottom:
  1. sequence_logprobs: summed completion log-probs, log-softmax in float32.
  2. dpo_loss: the loss and both rewards.
  3. Pairs: reading the JSONL (ids preferred over text), guards, batching chosen and rejected together.
  4. The reference pass: reference log-probs computed ONCE before training and stored with the pairs, so
     only the policy is ever in memory (the reference is the same weights, before the first step).
  5. The training loop: the optimizer, schedule, atomic checkpoints and exact resume of train.py.

Simplified against the report: one round at a time (run the script twice for two rounds), no judge
model (our pairs are graded by the world's oracle), and beta/LR are our choices (the report does not
give them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data
import files
import parallel
from model import ModelConfig, Phi4
from train import (
    DEVICES,
    config_parser,
    learning_rate,
    load_optimizer,
    load_weights,
    make_optimizer,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    set_rng_state,
)

# ----------------------------------------------------------------------------------------------------
# 1. Sequence log-probabilities


def sequence_logprobs(model: Phi4, ids: torch.Tensor, completion_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of each row's completion: ids (B, T), completion_mask (B, T) -> (B,) float32.

    completion_mask[b, t] = 1 marks ids[b, t] as a completion token; its probability comes from the
    logits at position t - 1. The result is the SUM over the row's completion tokens (the quantity in the
    DPO loss). Two details matter for correctness:
      - log-softmax runs in float32 even under bf16/fp16 autocast: in half precision the normaliser
        (a log-sum-exp over 100K logits) loses most of its digits, and a sum over hundreds of tokens
        of such errors biases the loss; fp16 can overflow to inf and give NaN.
      - only completion positions go through the LM head: the prompt's logits are never needed, and at
        a 100K vocabulary they are most of the memory (for single-token PTS pairs, nearly all of it).
    `average=True` divides by the number of completion tokens: the "mean-per-token" variant, see
    dpo_loss for why it is not the default.
    """
    if bool(completion_mask[:, 0].any()):
        raise ValueError("completion_mask marks the first token, which no position predicts; a completion needs a prompt")
    mask = completion_mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1; which are completion tokens
    rows = mask.nonzero()[:, 0]  # (N,) the row of each completion token
    logits = model(ids[:, :-1], select=mask).float()  # (N, V)
    targets = ids[:, 1:][mask]  # (N,)
    token_logps = logits.log_softmax(dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add(0, rows, token_logps)  # (B,)
    if average:
        return sums / mask.sum(dim=1).clamp(min=1)
    return sums


# ----------------------------------------------------------------------------------------------------
# 2. The loss


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), averaged over pairs.

    Each argument is (B,): summed completion log-probs (sequence_logprobs). Returns (loss, chosen_rewards,
    rejected_rewards), the rewards beta * (log pi - log pi_ref) per pair, detached (they are for logging).
    With policy == reference both rewards are 0 and the loss is log 2: the model has no preference yet.

    Summed vs mean-per-token log-probs: the sum is the true log-probability of the completion, the
    quantity the DPO derivation is about. Averaging per token (dpo.py --average-logprobs) makes the
    pair's margin independent of length, which some recipes use on purpose; but then a long rejected
    answer is penalised as little as a short one, and the objective no longer matches the model's
    likelihood. We keep the sum by default, as the report's DPO does.
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}; pass --beta > 0")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    # logsigmoid is the stable form of log(sigmoid(x)): no overflow for large |x|.
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# ----------------------------------------------------------------------------------------------------
# 3. Pairs


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    ref_chosen: float | None = None  # reference log-probs, filled by the first pass
    ref_rejected: float | None = None


def read_pairs(path: str, tokenizer: data.Tokenizer, max_len: int) -> tuple[list[Pair], list[dict], dict]:
    """Pairs from JSONL -> (usable pairs, their records, counts of what was skipped and why).

    A record holds `prompt`, `chosen`, `rejected` as text (the format other DPO tools read), and may hold
    `prompt_ids`, `chosen_ids`, `rejected_ids`: when present, the ids are used as they are, because
    encoding the texts separately can merge tokens differently than the model sampled them (and a
    single-token PTS completion must stay exactly one token).
    Guards: a pair with an empty completion has nothing to compare and is skipped; a pair whose prompt
    plus completion exceeds the model's context is skipped (truncating it would score a different answer).
    """
    if not os.path.exists(path):
        raise ValueError(f"pairs file {path} not found; make pairs with `python sample.py --rejection-sampling` or pts.py (--pairs)")
    pairs, records = [], []
    skipped = {"empty_completion": 0, "too_long": 0}
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                ids = [
                    record[f"{k}_ids"] if f"{k}_ids" in record else tokenizer.encode(record[k], allow_special=True)
                    for k in ("prompt", "chosen", "rejected")
                ]
            except KeyError as missing:
                raise ValueError(f"{path}:{line_number}: a pair needs prompt, chosen and rejected (missing {missing})") from None
            prompt, chosen, rejected = ids
            if not chosen or not rejected or not prompt:
                skipped["empty_completion"] += 1
                continue
            if len(prompt) + max(len(chosen), len(rejected)) > max_len:
                skipped["too_long"] += 1
                continue
            pairs.append(Pair(prompt, chosen, rejected, record.get("ref_chosen_logp"), record.get("ref_rejected_logp")))
            records.append(record)
    if not pairs:
        raise ValueError(f"no usable pairs in {path} (skipped: {skipped}); check the file or the model's context")
    return pairs, records, skipped


def collate(pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows in one batch -> ids (2B, T), completion_mask (2B, T).

    One forward for both halves halves the number of model calls. Rows are right-padded: with causal
    attention no real token ever attends to a pad after it, so no attention mask is needed, and the
    pads are outside the completion mask.
    """
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (2B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (2B, T)
    for i, (prompt, completion) in enumerate(rows):
        n = len(prompt) + len(completion)
        ids[i, :n] = torch.tensor(prompt + completion)
        mask[i, len(prompt) : n] = 1
    return ids.to(device), mask.to(device)


class PairLoader:
    """Batches of pairs in a seeded shuffle per epoch; state (epoch, position) makes resume exact."""

    def __init__(self, n_pairs: int, batch_size: int, seed: int):
        if n_pairs < batch_size:
            raise ValueError(f"{n_pairs} pairs are fewer than --batch-size {batch_size}; lower --batch-size")
        self.n, self.B, self.seed = n_pairs, batch_size, seed
        self.epoch, self.position = 0, 0

    def next_indices(self) -> list[int]:
        if self.position + self.B > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        batch = order[self.position : self.position + self.B]
        self.position += self.B
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ----------------------------------------------------------------------------------------------------
# 4. The reference pass


@torch.no_grad()
def reference_logprobs(model: Phi4, pairs: list[Pair], pad_id: int, batch_size: int, average: bool, autocast) -> None:
    """Fill pair.ref_chosen / pair.ref_rejected with the model's log-probs, before any training step.

    The reference model of DPO is the starting policy, frozen. Its log-probs of the pairs never change,
    so computing them once here, with the same weights, replaces a second model in memory for the whole
    run (at 14B in bf16: 29 GB saved per GPU) and a second forward per step.
    """
    model.eval()
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch"):
        chunk = pairs[start : start + batch_size]
        ids, mask = collate(chunk, pad_id, device)
        with autocast:
            logps = sequence_logprobs(model, ids, mask, average)  # (2b,)
        for pair, chosen, rejected in zip(chunk, logps[: len(chunk)].tolist(), logps[len(chunk) :].tolist()):
            pair.ref_chosen, pair.ref_rejected = chosen, rejected
    model.train()


# ----------------------------------------------------------------------------------------------------
# 5. Training


@dataclass
class DPOConfig:
    init: str | None = None  # checkpoint folder of the starting policy (= the reference)
    pairs: str | None = None  # JSONL of preference pairs
    out: str = "out/dpo"
    resume: bool = False
    seed: int = 1337
    beta: float = 0.1  # strength of the pull towards the reference: higher = more conservative
    average_logprobs: bool = False  # mean-per-token log-probs instead of sums (see dpo_loss)
    steps: int = 100
    stop_at: int | None = None  # stop after this step as if interrupted (tests of --resume)
    batch_size: int = 16  # pairs per step
    lr: float = 1e-5  # toy sweep on 1.6K full pairs: 1e-5 helped a little, 3e-5 and 1e-4 lowered held-out accuracy
    min_lr_ratio: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.0  # no decay: DPO is a short nudge, and the reference term already regularises
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    save_every: int = 100
    device: str = "auto"


def train_dpo(cfg: DPOConfig) -> list[dict]:
    """DPO from cfg.init on cfg.pairs -> the logged records (rank 0 also writes OUT/log.jsonl).

    Like train.py, every run is one or more ranks of FSDP2 (parallel.py): `python dpo.py` is a world of
    one, `torchrun --nproc_per_node=N dpo.py ...` splits each batch of pairs over N ranks.
    """
    if not cfg.resume and not cfg.init:
        raise ValueError("DPO starts from a trained model: pass --init out/sft (or --resume)")
    if not cfg.pairs and not cfg.resume:
        raise ValueError("pass --pairs FILE.jsonl (from `sample.py --rejection-sampling` or pts.py)")
    world = parallel.init_distributed(resolve_device(cfg.device))
    try:
        return train_dpo_on(cfg, world)
    finally:
        parallel.shutdown(world)


def build_policy(record: dict, world: parallel.Distributed) -> Phi4:
    """The checkpoint's model, built on meta, sharded with FSDP2, then filled: no rank holds it whole."""
    with torch.device("meta"):
        model = Phi4(ModelConfig.from_dict(record["model_config"]))
    parallel.parallelize(model, world.mesh, activation_checkpointing=False, compile=False,
                         mixed_precision=world.device.type == "cuda")
    model.to_empty(device=world.device)
    load_weights(record, model)
    model.set_rope()  # the RoPE tables are not saved: rebuild them from the config
    return model


def train_dpo_on(cfg: DPOConfig, world: parallel.Distributed) -> list[dict]:
    """The DPO run proper, on one rank of `world`."""
    device, W = world.device, world.world_size
    say = print if world.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for everyone
    if cfg.batch_size % W:
        raise ValueError(f"--batch-size {cfg.batch_size} pairs must split evenly over {W} ranks; pick a multiple of {W}")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    source = cfg.out if cfg.resume else cfg.init
    record = read_checkpoint(source)
    if cfg.resume and "model" in record:
        raise ValueError(f"{cfg.out} holds a single-file checkpoint of an older dpo.py: use it with --init, not --resume")
    tokenizer_file = os.path.join(source, "tokenizer.json")
    if not os.path.exists(tokenizer_file):
        raise ValueError(f"{tokenizer_file} is missing; --init must be a checkpoint folder from train.py")
    tokenizer = data.Tokenizer.load(tokenizer_file)
    model = build_policy(record, world)
    # On GPUs FSDP's mixed precision already computes in bf16; CPU runs stay in fp32.
    autocast = contextlib.nullcontext()

    # Pairs with their reference log-probs are stored in OUT: a resumed run reads them instead of
    # recomputing them with weights that have since moved.
    stored = os.path.join(cfg.out, "pairs.jsonl")
    pairs_file = stored if cfg.resume else cfg.pairs
    pairs, records, skipped = read_pairs(pairs_file, tokenizer, model.config.max_seq_len)
    say(f"{len(pairs)} pairs from {pairs_file}" + (f" (skipped {skipped})" if any(skipped.values()) else ""))
    if any(p.ref_chosen is None for p in pairs):
        if cfg.resume:
            raise ValueError(f"{stored} lacks reference log-probs; start again without --resume")
        # Every rank scores every pair, in the same order: FSDP's all-gathers need all ranks in step,
        # and this pass runs once.
        reference_logprobs(model, pairs, tokenizer.pad_id, cfg.batch_size, cfg.average_logprobs, autocast)
        # FSDP2 keeps the root's weights gathered after a forward (for the backward it expects); without
        # a backward they stay so. Shard them again before the optimizer takes hold of the parameters.
        model.reshard()
        if world.is_main:
            for pair_record, pair in zip(records, pairs):
                pair_record.update(ref_chosen_logp=pair.ref_chosen, ref_rejected_logp=pair.ref_rejected)
            files.write_jsonl(stored, records)
    if not cfg.resume and world.is_main:  # keep the tokenizer with the weights: the folder is self-contained
        shutil.copyfile(tokenizer_file, os.path.join(cfg.out, "tokenizer.json"))

    optimizer = make_optimizer(model, cfg, device)
    loader = PairLoader(len(pairs), cfg.batch_size, cfg.seed)  # global batches: the same on every rank
    start_step = 0
    if cfg.resume:
        load_optimizer(record, model, optimizer)  # AdamW moments from the checkpoint's shards
        loader.load_state_dict(record["loader"])
        start_step = record["step"]
        set_rng_state(record["ranks"][0]["rng"])
    elif world.is_main and os.path.exists(os.path.join(cfg.out, "log.jsonl")):
        os.remove(os.path.join(cfg.out, "log.jsonl"))  # a fresh run: do not append to an old log

    log_path = os.path.join(cfg.out, "log.jsonl")
    records_out = []
    model.train()
    run_start = time.perf_counter()
    last_step = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    bar = tqdm(range(start_step, last_step), initial=start_step, total=cfg.steps, desc="dpo", dynamic_ncols=True,
               mininterval=1.0, disable=not world.is_main)
    for step in bar:
        t0 = time.perf_counter()
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Each rank takes every W-th pair of the global batch. Its loss is the mean over its own pairs;
        # FSDP averages gradients over ranks, so the update is that of the mean over the whole batch.
        batch = [pairs[i] for i in loader.next_indices()[world.rank :: W]]
        ids, mask = collate(batch, tokenizer.pad_id, device)
        with autocast:
            logps = sequence_logprobs(model, ids, mask, cfg.average_logprobs)  # (2b,)
        b = len(batch)
        ref_chosen = torch.tensor([p.ref_chosen for p in batch], device=device)
        ref_rejected = torch.tensor([p.ref_rejected for p in batch], device=device)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:b], logps[b:], ref_chosen, ref_rejected, cfg.beta)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        grad_norm = parallel.full_value(grad_norm)  # a DTensor when the gradients are sharded
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # What healthy DPO looks like: the loss falls from ln 2 = 0.693, preference accuracy rises towards
        # 1, and the margin (chosen minus rejected reward) grows. Both rewards often drift *down* (the
        # policy lowers the likelihood of everything it did not prefer), which is fine while the margin
        # grows; a chosen reward that plunges steeply means the policy is leaving the reference for
        # degenerate text: lower the LR or raise beta, and watch held-out accuracy.
        margin = chosen_rewards - rejected_rewards
        # Metrics over the whole global batch: sums over ranks, divided by the batch size.
        sums = torch.stack([loss.detach() * b, chosen_rewards.sum(), rejected_rewards.sum(), (margin > 0).float().sum()])
        dist.all_reduce(sums)
        loss_mean, chosen_mean, rejected_mean, n_right = (sums / cfg.batch_size).tolist()
        record_out = {
            "step": step + 1, "loss": loss_mean, "lr": lr, "grad_norm": float(grad_norm),
            "chosen_reward": chosen_mean, "rejected_reward": rejected_mean,
            "margin": chosen_mean - rejected_mean, "accuracy": n_right,
            "tok_s": parallel.global_sum(ids.numel(), world) / (time.perf_counter() - t0),
            "time_s": time.perf_counter() - run_start,
        }
        bar.set_postfix(loss=f"{loss_mean:.3f}", margin=f"{record_out['margin']:.2f}", acc=f"{n_right:.2f}",
                        chosen=f"{chosen_mean:.2f}", rejected=f"{rejected_mean:.2f}")
        records_out.append(record_out)
        if world.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record_out) + "\n")
        if (step + 1) % cfg.save_every == 0 or step + 1 == last_step:
            save_checkpoint(cfg.out, model, optimizer, step + 1, loader, model.config, cfg)
    bar.close()
    if records_out:
        last = records_out[-10:]
        say(
            f"done: step {records_out[-1]['step']} | last {len(last)} steps: loss {np.mean([r['loss'] for r in last]):.3f} "
            f"margin {np.mean([r['margin'] for r in last]):.2f} accuracy {np.mean([r['accuracy'] for r in last]):.2f} "
            f"| checkpoint {cfg.out}"
        )
    return records_out


def parse_args(argv=None) -> DPOConfig:
    helps = {
        "init": "checkpoint folder of the starting policy, which is also the frozen reference",
        "pairs": "JSONL of pairs: prompt/chosen/rejected text, optionally prompt_ids/chosen_ids/rejected_ids",
        "out": "output folder: checkpoint, log.jsonl, pairs.jsonl with reference log-probs",
        "resume": "continue the run in --out exactly where its last checkpoint left it",
        "seed": "seed for the pair order",
        "beta": "DPO beta: how strongly the policy is held near the reference (higher = closer)",
        "average_logprobs": "use mean-per-token log-probs instead of sums (length-normalised; see dpo_loss)",
        "steps": "optimizer steps (the LR schedule spans them)",
        "stop_at": "stop after this step as if interrupted (continue with --resume)",
        "batch_size": "pairs per step",
        "lr": "peak learning rate after warm-up",
        "min_lr_ratio": "final learning rate as a fraction of --lr (linear decay)",
        "warmup_steps": "linear warm-up steps",
        "weight_decay": "AdamW weight decay on matrices",
        "beta1": "AdamW beta1",
        "beta2": "AdamW beta2",
        "grad_clip": "clip the global gradient norm to this (0 disables)",
        "save_every": "steps between checkpoints",
        "device": "auto (cuda if available, else cpu), cpu or cuda",
    }
    parser = config_parser(DPOConfig, helps, {"device": DEVICES}, __doc__.split("\n")[0])
    return DPOConfig(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    try:
        train_dpo(parse_args())
    except ValueError as error:
        sys.exit(f"error: {error}")
