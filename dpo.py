"""Direct Preference Optimization: teach a model which of two answers to prefer, without a reward model.

Phi-4 report section 4: after SFT, two rounds of DPO (Rafailov et al. 2023): round 1 on ~250K
single-token pairs from Pivotal Token Search (pts.py), round 2 on ~850K full-length pairs. Each pair is
a prompt x with a chosen completion y_c and a rejected one y_r. With the policy pi (the model being
trained) and a frozen reference pi_ref (the model DPO starts from),

    loss = -log sigmoid( beta * [ (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x)) ] )

where every log pi(y|x) is the SUMMED log-probability of the completion's tokens (Rafailov et al. eq. 7).
beta * (log pi - log pi_ref) is the completion's implicit "reward": DPO raises the chosen one's above the
rejected one's, while the reference term keeps the policy from drifting far from where it started.

Commands:
    python dpo.py --init out/rs_sft --pairs out/rs/pairs.jsonl --out out/dpo       # full-length pairs
    python dpo.py --init out/sft --pairs out/pts/pairs.jsonl --out out/pts_dpo     # PTS pairs: part at one token
    python eval.py --init out/dpo --chat                                          # what it bought
    torchrun --standalone --nproc_per_node=8 dpo.py --init ... --pairs ...         # FSDP2, as train.py

What this file does, top to bottom:
  1. sequence_logprobs: summed completion log-probs, log-softmax in float32.
  2. dpo_loss: the loss and both rewards.
  3. Pairs: reading the JSONL (ids preferred over text), guards, batching chosen and rejected together.
  4. The reference pass: reference log-probs computed ONCE before training and stored with the pairs, so
     only the policy is ever in memory (the reference is the same weights, before the first step). The
     stored values carry a fingerprint of the model that computed them; pairs from another model are rescored.
  5. The training step; trainer.py runs it (schedule, clipping, checkpoints, exact resume), as for train.py.

Simplified against the report: one round at a time (run the script twice for two rounds), no judge
model (our pairs are graded by the world's oracle), and beta/LR are our choices (the report does not
give them).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import checkpoint
import cli
import data
import files
import parallel
import trainer
from model import ModelConfig, Phi4


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
        a 100K vocabulary they are most of the memory (for a long prompt before a short answer, nearly all of it).
    `average=True` divides by the number of completion tokens: the "mean-per-token" variant, see
    dpo_loss for why it is not the default.
    """
    if bool(completion_mask[:, 0].any()):
        raise ValueError("completion_mask marks the first token, which no position predicts; a completion needs a prompt")
    # BEGIN SOLUTION sequence_logprobs: position t predicts token t + 1: sum log_softmax of completion tokens per row (or the mean)
    mask = completion_mask[:, 1:].bool()  # (B, T-1): position t predicts token t+1; which are completion tokens
    rows = mask.nonzero()[:, 0]  # (N,) the row of each completion token
    # select=mask: the model applies the LM head to the N completion positions only (see above).
    logits = model(ids[:, :-1], select=mask).float()  # (N, V)
    targets = ids[:, 1:][mask]  # (N,)
    token_logps = logits.log_softmax(dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    # Scatter-add each token's log-prob into its row: rows have different completion lengths, so a
    # flat (N,) list and a row index avoid padding the log-probs back to (B, T-1).
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add(0, rows, token_logps)  # (B,)
    if average:
        # clamp: a row with no completion token (never produced by collate, possible from a caller)
        # would divide 0 by 0; it keeps its sum of 0 instead of becoming NaN.
        return sums / mask.sum(dim=1).clamp(min=1)
    # END SOLUTION sequence_logprobs
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
    # BEGIN SOLUTION dpo_loss: -logsigmoid(beta * (chosen log-ratio - rejected log-ratio)).mean(); detached beta * log-ratios
    # The reference enters only through these differences: a pair the reference already prefers gets
    # no extra push, which is what keeps DPO from rewarding what the policy knew before training.
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    # logsigmoid is the stable form of log(sigmoid(x)): no overflow for large |x|.
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
    # END SOLUTION dpo_loss


# ----------------------------------------------------------------------------------------------------
# 3. Pairs


@dataclass
class Pair:
    """One preference pair as token ids, with the reference's summed log-probs of both completions."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    ref_chosen: float | None = None  # reference log-probs, filled by the first pass
    ref_rejected: float | None = None


def read_pairs(path: str, tokenizer: data.Tokenizer, max_len: int, fingerprint: str | None = None,
               ) -> tuple[list[Pair], list[dict], dict]:
    """Pairs from JSONL -> (usable pairs, their records, counts of what was skipped and why).

    A record holds `prompt`, `chosen`, `rejected` as text (the format other DPO tools read), and may hold
    `prompt_ids`, `chosen_ids`, `rejected_ids`: when present, the ids are used as they are, because
    encoding the texts separately can merge tokens differently than the model sampled them (and a
    PTS pair's two completions must part at exactly one token).
    Reference log-probs stored in a record are used only when its `ref_fingerprint` equals `fingerprint`
    (the model and tokenizer this run starts from): a file scored by another model would otherwise
    train against the wrong reference, silently.
    Guards: a pair with an empty completion has nothing to compare and is skipped; a pair whose prompt
    plus completion exceeds the model's context is skipped (truncating it would score a different answer).
    """
    if not os.path.exists(path):
        raise ValueError(f"pairs file {path} not found; make pairs with `python rejection_sampling.py` or pts.py (--pairs)")
    pairs, records = [], []
    skipped = {"empty_completion": 0, "too_long": 0}
    for line_no, record in files.iter_jsonl(path):
        prompt, chosen, rejected = (pair_ids(record, key, tokenizer, f"{path}, line {line_no}")
                                    for key in ("prompt", "chosen", "rejected"))
        # An empty prompt is refused too: the first token has no position that predicts it.
        if not chosen or not rejected or not prompt:
            skipped["empty_completion"] += 1
            continue
        if len(prompt) + max(len(chosen), len(rejected)) > max_len:
            skipped["too_long"] += 1
            continue
        # Stored reference log-probs are reused only when they are trustworthy: the same model made them
        # (fingerprint) and they are finite numbers (Python's json reads NaN and Infinity; an edited file may hold null).
        refs = (record.get("ref_chosen_logp"), record.get("ref_rejected_logp"))
        trusted = fingerprint is not None and record.get("ref_fingerprint") == fingerprint
        if not trusted or not all(isinstance(r, (int, float)) and math.isfinite(r) for r in refs):
            refs = (None, None)  # recomputed by the reference pass
        pairs.append(Pair(prompt, chosen, rejected, *refs))
        records.append(record)
    if not pairs:
        raise ValueError(f"no usable pairs in {path} (skipped: {skipped}); check the file or the model's context")
    return pairs, records, skipped


def pair_ids(record: dict, key: str, tokenizer: data.Tokenizer, where: str) -> list[int]:
    """The ids of one side of a pair: `KEY_ids` when present (checked), else the encoded `KEY` text."""
    ids = record.get(f"{key}_ids")
    if ids is None:
        if not isinstance(record.get(key), str):
            raise files.DataError(f"{where}: a pair needs prompt, chosen and rejected as text (or *_ids); {key!r} is missing")
        return tokenizer.encode(record[key], allow_special=True)
    # bool is an int subclass and 3.0 is not an id: only true integers inside the vocabulary pass.
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < tokenizer.vocab_size for i in ids):
        raise files.DataError(f"{where}: {key}_ids must be a list of integer ids in 0..{tokenizer.vocab_size - 1}")
    return ids


def reference_fingerprint(folder: str) -> str:
    """Names the model and tokenizer of a checkpoint folder: its shard folder (a fresh random name per
    save), step and config, and the tokenizer file's bytes. Stored with reference log-probs."""
    record = checkpoint.read_checkpoint(folder)
    # sort_keys: the same config must hash the same whatever order its dict was built in.
    digest = hashlib.sha256(json.dumps([record["shards"], record["step"], record["model_config"]], sort_keys=True).encode())
    with open(os.path.join(folder, checkpoint.TOKENIZER), "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:16]


def collate(pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows in one batch -> ids (2B, T), completion_mask (2B, T).

    One forward for both halves halves the number of model calls. Rows are right-padded: with causal
    attention no real token ever attends to a pad after it, so no attention mask is needed, and the
    pads are outside the completion mask.
    """
    # Chosen first, then rejected, in the same pair order: row i and row B + i are one pair, which is
    # how callers split the (2B,) log-probs back into chosen [:B] and rejected [B:].
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
        """The pair indices of the next global batch; an epoch's last partial batch is dropped, so
        every batch has exactly B pairs and splits evenly over the ranks."""
        if self.position + self.B > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        # The shuffle is rebuilt from (seed, epoch) each time instead of kept: the loader's whole state
        # is two integers, which is what a checkpoint needs to resume at the exact same pair.
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        batch = order[self.position : self.position + self.B]
        self.position += self.B
        return batch

    def state_dict(self) -> dict:
        """What a checkpoint stores to resume at the same pair (the order itself is recomputed)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict):
        """Resume at the epoch and position that state_dict recorded."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ----------------------------------------------------------------------------------------------------
# 4. The reference pass


@torch.no_grad()
def reference_logprobs(model: Phi4, pairs: list[Pair], pad_id: int, batch_size: int, average: bool) -> None:
    """Fill pair.ref_chosen / pair.ref_rejected with the model's log-probs, before any training step.

    The reference model of DPO is the starting policy, frozen. Its log-probs of the pairs never change,
    so computing them once here, with the same weights, replaces a second model in memory for the whole
    run (at 14B in bf16: 29 GB saved per GPU) and a second forward per step.
    """
    # eval(): the reference must be deterministic. Our model has no dropout, but a policy that did would
    # otherwise score the pairs with noise, and that noise would be frozen into every step's loss.
    model.eval()
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch"):
        chunk = pairs[start : start + batch_size]
        ids, mask = collate(chunk, pad_id, device)
        logps = sequence_logprobs(model, ids, mask, average)  # (2b,): chosen rows, then rejected rows
        for pair, chosen, rejected in zip(chunk, logps[: len(chunk)].tolist(), logps[len(chunk) :].tolist()):
            # A -inf reference makes every later loss inf or NaN; fail here, before any step is wasted.
            if not (math.isfinite(chosen) and math.isfinite(rejected)):
                raise ValueError("the starting model gives a non-finite log-prob to a pair; check --init")
            pair.ref_chosen, pair.ref_rejected = chosen, rejected
    model.train()


def prepare_pairs(cfg: DPOConfig, model: Phi4, tokenizer: data.Tokenizer, world) -> list[Pair]:
    """The pairs with their reference log-probs, computed now or read back from OUT/pairs.jsonl.

    The stored copy is what a resumed run reads: recomputing with weights that have since moved would
    give a different reference. Its fingerprint ties it to the --init model.
    """
    stored = os.path.join(cfg.out, "pairs.jsonl")
    pairs_file = stored if cfg.resume else cfg.pairs
    if cfg.resume:  # our own file, written when this run started: its fingerprint is the --init model's
        fingerprint = next((r.get("ref_fingerprint") for r in files.read_jsonl(stored)), None) if os.path.exists(stored) else None
    else:
        fingerprint = reference_fingerprint(cfg.init)
    pairs, records, skipped = read_pairs(pairs_file, tokenizer, model.config.max_seq_len, fingerprint)
    if world.is_main:
        print(f"{len(pairs)} pairs from {pairs_file}" + (f" (skipped {skipped})" if any(skipped.values()) else ""))
    missing = sum(p.ref_chosen is None for p in pairs)
    if missing:
        if cfg.resume:
            raise ValueError(f"{stored} lacks reference log-probs of this model; start again without --resume")
        if world.is_main and (missing < len(pairs) or any("ref_chosen_logp" in r for r in records)):
            print(f"note: {missing} pairs carry no reference log-probs of --init {cfg.init}; computing them")
        # Every rank scores every pair, in the same order: FSDP's all-gathers need all ranks in step,
        # and this pass runs once.
        reference_logprobs(model, pairs, tokenizer.pad_id, cfg.batch_size, cfg.average_logprobs)
        # FSDP2 keeps the root's weights gathered after a forward (for the backward it expects); without
        # a backward they stay so. Shard them again before the optimizer takes hold of the parameters.
        if hasattr(model, "reshard"):  # an FSDP model (several ranks or a GPU)
            model.reshard()
        if world.is_main:
            for pair_record, pair in zip(records, pairs):
                pair_record.update(ref_chosen_logp=pair.ref_chosen, ref_rejected_logp=pair.ref_rejected,
                                   ref_fingerprint=fingerprint)
            files.write_jsonl(stored, records)
    return pairs


# ----------------------------------------------------------------------------------------------------
# 5. Training


@dataclass
class DPOConfig(trainer.RunConfig):
    """The flags of dpo.py: trainer.RunConfig's shared ones with DPO's defaults, plus beta."""

    out: str = "out/dpo"
    pairs: str | None = None  # JSONL of preference pairs
    beta: float = 0.1  # strength of the pull towards the reference: higher = more conservative
    average_logprobs: bool = False  # mean-per-token log-probs instead of sums (see dpo_loss)
    # Keep every attention projection as the policy started (train the MLPs, norms and embeddings): on the toy
    # world DPO's damage is to copying, which attention does (LAB.md, "Where DPO's damage lives").
    freeze_attention: bool = False
    steps: int = 100
    # With the NLL anchor below, 1e-4 moves the toy policy (preference accuracy ~0.85 in 100 steps) without
    # the collapse plain DPO showed at that rate; `python eval.py --split dev` compares rates.
    lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0  # no decay: DPO is a short nudge, and the reference term already regularises
    save_every: int = 100
    # RPO (Pang et al. 2024): plus nll_weight x the chosen answer's mean per-token negative log-likelihood.
    # DPO alone may lower the chosen answer's likelihood along with the rejected one's (both rewards fall,
    # the margin still grows); the NLL term anchors the chosen answer, which keeps sampled answers sane.
    nll_weight: float = 1.0
    # The control: 0 trains on the NLL term alone (SFT on the chosen answers, same pairs, steps and LR), so
    # a comparison with it shows what the preference itself adds (README, "Results").
    preference_weight: float = 1.0
    # The stop: the run ends once the chosen reward, averaged over the last 10 steps, falls below this.
    min_chosen_reward: float = -1.0

    HELP = {
        "init": "checkpoint folder of the starting policy, which is also the frozen reference",
        "out": "output folder: checkpoint, log.jsonl, pairs.jsonl with reference log-probs",
        "seed": "seed for the pair order",
        "batch_size": "pairs per step (split evenly over the ranks)",
        "pairs": "JSONL of pairs: prompt/chosen/rejected text, optionally prompt_ids/chosen_ids/rejected_ids",
        "beta": "DPO beta: how strongly the policy is held near the reference (higher = closer)",
        "average_logprobs": "use mean-per-token log-probs instead of sums (length-normalised; see dpo_loss)",
        "freeze_attention": "keep the attention projections (q, k, v, o) fixed; train the rest",
        "nll_weight": "weight of the chosen answer's mean per-token NLL added to the DPO loss (RPO; 0: plain DPO)",
        "preference_weight": "weight of the DPO term itself (0: the NLL term alone, SFT on the chosen answers: "
        "the control that shows what the preference adds)",
        "min_chosen_reward": "stop once the chosen reward, averaged over the last 10 steps, falls below this "
        "(the policy is un-learning the answers it should prefer)",
    }
    LIMITS = {"beta": cli.positive, "nll_weight": cli.at_least(0.0, float),
              "preference_weight": cli.at_least(0.0, float)}


def dpo_step(model: Phi4, pairs: list[Pair], loader: PairLoader, cfg: DPOConfig, pad_id: int, world):
    """One optimizer step's forward and backward on a batch of pairs, as a function for trainer.run_loop."""

    def step() -> dict:
        # Each rank takes every W-th pair of the global batch. Its loss is the mean over its own pairs;
        # FSDP averages gradients over ranks, so the update is that of the mean over the whole batch.
        batch = [pairs[i] for i in loader.next_indices()[world.rank :: world.world_size]]
        ids, mask = collate(batch, pad_id, world.device)
        logps = sequence_logprobs(model, ids, mask, cfg.average_logprobs)  # (2b,)
        b = len(batch)
        # Reference log-probs are plain numbers from the reference pass: no gradient flows into them.
        ref_chosen = torch.tensor([p.ref_chosen for p in batch], device=world.device)  # (b,)
        ref_rejected = torch.tensor([p.ref_rejected for p in batch], device=world.device)  # (b,)
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:b], logps[b:], ref_chosen, ref_rejected, cfg.beta)
        # The RPO term: the chosen answers' mean per-token NLL, from the same log-probs (a sum per row
        # divided by its completion length, then averaged over pairs).
        chosen_lengths = mask[:b, 1:].sum(dim=1).clamp(min=1)  # (b,) completion tokens per chosen row
        nll = -(logps[:b] if cfg.average_logprobs else logps[:b] / chosen_lengths).mean()
        dpo_part = loss.detach()  # the DPO loss alone, for the log: ln 2 at the first step
        (cfg.preference_weight * loss + cfg.nll_weight * nll).backward()
        # What healthy DPO looks like: the loss falls from ln 2 = 0.693, preference accuracy rises towards
        # 1, and the margin (chosen minus rejected reward) grows. Both rewards often drift *down* (the
        # policy lowers the likelihood of everything it did not prefer), which is fine while the margin
        # grows; a chosen reward that plunges steeply means the policy is leaving the reference for
        # degenerate text: lower the LR or raise beta, and watch held-out accuracy.
        margin = chosen_rewards - rejected_rewards  # (b,)
        # Metrics over the whole global batch: sums over ranks, divided by the batch size.
        sums = torch.stack([dpo_part * b, chosen_rewards.sum(), rejected_rewards.sum(), (margin > 0).float().sum(),
                            nll.detach() * b])
        dist.all_reduce(sums)
        loss_mean, chosen_mean, rejected_mean, n_right, nll_mean = (sums / cfg.batch_size).tolist()
        return {"loss": loss_mean, "chosen_reward": chosen_mean, "rejected_reward": rejected_mean,
                "margin": chosen_mean - rejected_mean, "accuracy": n_right, "nll": nll_mean,
                "n_tokens": parallel.global_sum(ids.numel(), world)}

    return step


def chosen_reward_collapse(records: list[dict], floor: float, window: int = 10) -> str | None:
    """The reason to stop when the chosen reward, averaged over the last `window` steps, is below floor.

    A falling chosen reward means the policy now finds the answers it should prefer less likely than the
    reference did: the margin can still grow (the rejected ones fall faster), but what is being learned
    is to avoid the data, not to produce it. Averaged, because one batch's reward is noisy.
    """
    if len(records) < window:
        return None
    mean = sum(r["chosen_reward"] for r in records[-window:]) / window
    return f"chosen reward {mean:.2f} (mean of the last {window} steps) < --min-chosen-reward {floor}" if mean < floor else None


def train_dpo(cfg: DPOConfig) -> list[dict]:
    """DPO from cfg.init on cfg.pairs -> the logged records (rank 0 also writes OUT/log.jsonl).

    Like train.py, every run is one or more ranks of one code path (parallel.py): `python dpo.py` is a
    world of one, `torchrun --nproc_per_node=N dpo.py ...` shards with FSDP2 and splits each batch of
    pairs over N ranks.
    """
    if not cfg.resume and not cfg.init:
        raise ValueError("DPO starts from a trained model: pass --init out/sft (or --resume)")
    if not cfg.pairs and not cfg.resume:
        raise ValueError("pass --pairs FILE.jsonl (from `python rejection_sampling.py` or pts.py)")
    if cfg.resume:  # the saved run's settings: the same pairs, schedule and beta
        cfg = trainer.resume_settings(cfg, checkpoint.read_checkpoint(cfg.out))
    world = parallel.init_distributed(parallel.resolve_device(cfg.device))
    try:
        return train_dpo_on(cfg, world)
    finally:
        parallel.shutdown(world)


def train_dpo_on(cfg: DPOConfig, world: parallel.Distributed) -> list[dict]:
    """The DPO run proper, on one rank of `world`."""
    if cfg.preference_weight == 0 and cfg.nll_weight == 0:
        raise ValueError("--preference-weight 0 and --nll-weight 0 leave nothing to train; raise one of them")
    if cfg.batch_size % world.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} pairs must split evenly over {world.world_size} ranks; "
                         f"pick a multiple of {world.world_size}")
    # Seeded like train.py so that a rerun with the same flags repeats; the pair order itself comes from
    # PairLoader's own generator, so it does not depend on what else consumed random numbers.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    source = cfg.out if cfg.resume else cfg.init
    record = checkpoint.read_checkpoint(source)
    tokenizer = checkpoint.load_tokenizer(source)

    def shard(model):  # FSDP2, as train.py: no rank ever holds the whole policy
        parallel.parallelize(model, world.mesh, activation_checkpointing=False, compile=False,
                             mixed_precision=world.device.type == "cuda", shard=parallel.needs_fsdp(world))

    model = checkpoint.build_model(ModelConfig.from_dict(record["model_config"]), world.device, record, shard)
    os.makedirs(cfg.out, exist_ok=True)
    pairs = prepare_pairs(cfg, model, tokenizer, world)
    # The output folder must be loadable on its own (eval.py --init out/dpo), so it gets a tokenizer.
    if world.is_main:
        checkpoint.save_tokenizer(os.path.join(source, checkpoint.TOKENIZER), cfg.out)

    if cfg.freeze_attention:  # the optimizer takes only parameters that require a gradient
        for block in model.blocks:
            block.attn.requires_grad_(False)
    optimizer = trainer.make_optimizer(model, cfg, world.device)
    loader = PairLoader(len(pairs), cfg.batch_size, cfg.seed)  # global batches: the same on every rank
    start_step = 0
    if cfg.resume:
        checkpoint.load_optimizer(record, model, optimizer)  # AdamW moments from the checkpoint's shards
        loader.load_state_dict(record["ranks"][0]["loader"])
        checkpoint.set_rng_state(record["ranks"][0]["rng"])
        start_step = record["step"]
    records = trainer.run_loop(
        cfg, world, model, optimizer, loader, start_step, "dpo", dpo_step(model, pairs, loader, cfg, tokenizer.pad_id, world),
        show={"loss": "{:.3f}", "margin": "{:.2f}", "accuracy": "{:.2f}", "chosen_reward": "{:.2f}",
              "rejected_reward": "{:.2f}", "nll": "{:.3f}"},
        should_stop=lambda records: chosen_reward_collapse(records, cfg.min_chosen_reward),
    )
    if records and world.is_main:
        last = records[-10:]
        mean = lambda key: np.mean([r[key] for r in last])  # noqa: E731
        print(f"done: step {records[-1]['step']} | last {len(last)} steps: loss {mean('loss'):.3f} "
              f"margin {mean('margin'):.2f} accuracy {mean('accuracy'):.2f} | checkpoint {cfg.out}")
    return records


def parse_args(argv=None) -> DPOConfig:
    """The command line as a DPOConfig: one flag per field, help from DPOConfig.HELP, ranges from LIMITS."""
    parser = cli.config_parser(DPOConfig, __doc__.split("\n")[0], {"device": list(parallel.DEVICES)},
                               epilog="A checkpoint folder is code (its shard metadata is a pickle): open only your own.")
    cfg = DPOConfig(**vars(parser.parse_args(argv)))
    return trainer.with_given(cfg, cli.given_flags(parser, argv))


if __name__ == "__main__":
    # Every error message names the flag or file to change; a traceback would bury it.
    cli.main(lambda: train_dpo(parse_args()))
