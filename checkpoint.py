"""Checkpoints: sharded save, exact resume, and a model (plus its tokenizer) from a folder. A room: every
stage reads and writes models through it, so there is one way to do each.

A checkpoint is a folder:

    out/STAGE/ckpt.pt                  the record: step, configs, every rank's data position and RNG
                                       state, and the name of the shard folder. Written last, atomically.
    out/STAGE/shards-0001200-3fa9c1/   torch.distributed.checkpoint (DCP): .metadata + one file per rank
    out/STAGE/tokenizer.json           the tokenizer the model was trained with (plain JSON)
    out/STAGE/log.jsonl                one record per optimizer step (written by trainer.py)

Each rank writes only its own pieces of the weights and AdamW moments, in parallel, so no process ever
gathers the 14B model. DCP stores every tensor with its global shape and where each piece belongs, so
the folder loads at another world size (resharding on the fly) or in one process as a full model.

Safety. The record holds only numbers, strings, lists, dicts and tensors, and is read with
`torch.load(weights_only=True)`, which refuses anything else: a crafted ckpt.pt cannot run code. DCP's
own `.metadata` file, however, is a pickle, and reading it runs whatever it holds: a checkpoint folder
is code. Open only folders you made; share models as safetensors (`model.save_pretrained(DIR)`,
hf.py), which are bytes plus a JSON header. Every loaded tensor is checked to be finite.

Every reading path raises ValueError with one line naming the folder and what is wrong; the scripts
print it as `error: ...` and exit 1.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import random
import shutil
import uuid
import warnings
import zlib

import numpy as np
import torch
import torch.distributed as dist  # its checkpoint and tensor packages: imported where used (parallel.py, "Imports")

import files
import parallel
from model import ModelConfig, Phi4
from tokenization import Tokenizer

CHECKPOINT = "ckpt.pt"
TOKENIZER = "tokenizer.json"
# DCP warns whenever it runs without a process group; for one-process stages that is the normal case.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")  # any of its wordings


# ----------------------------------------------------------------------------------------------------
# Random state, as plain data


def rng_state() -> dict:
    """Every random stream this process draws from, as tensors and numbers (no pickled objects)."""
    version, mt_state, gauss = random.getstate()  # Mersenne Twister: 625 ints, and a cached normal draw
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # 624 uint32 keys, position, cache
    return {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        # int64 holds every uint32 exactly, in a dtype weights_only loading accepts.
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this process's GPU only
    }


def set_rng_state(state: dict):
    """Put back what rng_state() captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())  # it takes a CPU byte tensor, wherever the record was loaded to
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


# ----------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(out_dir: str, model, optimizer, step: int, loader, run_config) -> None:
    """Write a checkpoint into out_dir; every rank calls it (a model without FSDP works too).

    An interruption at any moment leaves the last good checkpoint usable: the shards go into a new
    folder, the record is written to a temporary file and renamed over the old one (files.atomic_write),
    and only after that rename is the previous shard folder deleted.
    """
    import torch.distributed.checkpoint as dcp  # imported where used: see parallel.py, "Imports"
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    distributed = dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    # A fresh folder per save, never the one the current record points to; rank 0 names it.
    names = [f"shards-{step:07d}-{uuid.uuid4().hex[:6]}"]
    if distributed:
        dist.broadcast_object_list(names, src=0)  # one folder for all ranks: each uuid4() would differ
    shard_dir = os.path.join(out_dir, names[0])
    if optimizer is not None:
        # FQN-keyed state dicts of sharded tensors (DTensors): each rank contributes its pieces.
        model_state, optimizer_state = get_state_dict(model, optimizer)
        tensors = {"model": model_state, "optimizer": optimizer_state}
    else:
        tensors = {"model": get_model_state_dict(model)}
    dcp.save(tensors, checkpoint_id=shard_dir)  # collective: each rank writes its pieces, rank 0 the .metadata
    rank_state = {"loader": loader.state_dict() if loader is not None else None, "rng": rng_state()}
    rank_states = [None] * world_size if rank == 0 else None  # gather_object fills this list on rank 0 only
    if distributed:
        dist.gather_object(rank_state, rank_states, dst=0)  # data positions and RNG differ per rank: keep all
    else:
        rank_states = [rank_state]
    if rank == 0:
        record = {
            "step": step,
            "shards": names[0],
            # A checksum per shard file: flipped bits that still read as finite numbers are caught too.
            "checksums": shard_checksums(shard_dir),
            "world_size": world_size,
            "ranks": rank_states,  # per rank: {"loader": ..., "rng": ...}
            "model_config": model.config.to_dict(),
            # What --resume restores, and checks the flags typed today against.
            "train_config": dataclasses.asdict(run_config) if run_config is not None else None,
        }
        # The commit point: until this rename, the old record and the shard folder it names still stand.
        files.atomic_write(os.path.join(out_dir, CHECKPOINT), lambda f: torch.save(record, f), binary=True)
        # Committed: older shard folders (and any left by an interrupted save) are now garbage.
        for stale in glob.glob(os.path.join(out_dir, "shards-*")):
            if os.path.basename(stale) != names[0]:
                shutil.rmtree(stale, ignore_errors=True)
    if distributed:
        dist.barrier()  # nobody starts the next step (or exits) before the checkpoint is committed


def shard_checksums(shard_dir: str) -> dict[str, int]:
    """CRC-32 of every file DCP wrote (all ranks' data files and .metadata), by name."""
    sums = {}
    for name in sorted(os.listdir(shard_dir)):
        crc = 0
        with open(os.path.join(shard_dir, name), "rb") as f:
            while block := f.read(1 << 24):  # 16 MB at a time: memory stays flat for any shard size
                crc = zlib.crc32(block, crc)
        sums[name] = crc
    return sums


def save_tokenizer(tokenizer_file: str, out_dir: str):
    """Keep the tokenizer with the weights, so a checkpoint folder is self-contained."""
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, TOKENIZER)
    if os.path.abspath(tokenizer_file) != os.path.abspath(target):
        shutil.copyfile(tokenizer_file, target)


# ----------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str) -> dict:
    """The record of a checkpoint folder: step, configs, data positions, RNG. Reads no weights.

    "shard_dir" is added: the folder holding the tensors.
    """
    file = os.path.join(path, CHECKPOINT)
    if not os.path.exists(file):
        raise ValueError(f"no checkpoint in {path} (expected {file}); check --init/--resume/--out")
    try:
        # weights_only=True: tensors and plain containers only, so no code in the file can run.
        record = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {file} is corrupt or not ours: {first_line[:200]}") from None
    if not isinstance(record, dict) or not {"model_config", "shards", "step", "ranks"} <= record.keys():
        raise ValueError(f"checkpoint {file} is not from this project (it lacks model_config/shards/step)")
    record["shard_dir"] = os.path.join(path, record["shards"])
    if not os.path.isdir(record["shard_dir"]):
        raise ValueError(f"checkpoint {path} needs its shard folder {record['shards']}, which is missing")
    return record


def check_finite(named_tensors, where: str):
    """Refuse weights with NaN or infinity, naming the first such tensor (flipped bits, a diverged run)."""
    from torch.distributed.tensor import DTensor

    for name, tensor in named_tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor  # this rank's shard: nothing gathered
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            raise ValueError(f"{where}: tensor {name} holds NaN or infinite values")


def verify_shards(record: dict) -> None:
    """Every file the record lists must be there with the same bytes (its CRC-32 from save time).

    This reads the shard folder once (seconds per GB), right before its tensors are loaded: it is what
    turns a bit flipped on disk into an error instead of a silently different model.
    """
    expected = record.get("checksums") or {}
    found = shard_checksums(record["shard_dir"])
    for name, crc in expected.items():
        if name not in found:
            raise ValueError(f"checkpoint shard file {record['shard_dir']}/{name} is missing")
        if found[name] != crc:
            raise ValueError(f"checkpoint shard file {record['shard_dir']}/{name} is corrupt (its checksum differs)")


def load_weights(record: dict, model: torch.nn.Module):
    """Fill a (possibly sharded) model with a checkpoint's weights: each rank reads only its own pieces."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
    from torch.distributed.tensor import DTensor

    verify_shards(record)  # the optimizer's tensors share these files: one check covers both
    model_state = get_model_state_dict(model)  # what this rank holds: the keys and shard layout to fill
    sharded = any(isinstance(t, DTensor) for t in model_state.values())
    try:
        # no_dist: an unsharded model reads everything itself, even inside a torchrun job.
        dcp.load({"model": model_state}, checkpoint_id=record["shard_dir"], no_dist=not sharded)
    # DCP's failures derive from BaseException, not Exception: named here, a corrupt shard becomes our
    # one-line error instead of a traceback, and Ctrl-C (KeyboardInterrupt) still stops the program.
    except (Exception, CheckpointException) as error:
        raise ValueError(f"cannot load weights from {record['shard_dir']}: {_last_line(error)}") from None
    check_finite(model_state.items(), record["shard_dir"])
    set_model_state_dict(model, model_state)


def load_optimizer(record: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """Restore AdamW's moments and step counts, resharded to this run's world size if it changed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    optimizer_state = get_optimizer_state_dict(model, optimizer)  # laid out as this run's shards; DCP fills it
    try:
        dcp.load({"optimizer": optimizer_state}, checkpoint_id=record["shard_dir"])
    except (Exception, CheckpointException) as error:  # as in load_weights
        raise ValueError(f"cannot resume from {record['shard_dir']} (no optimizer state?): {_last_line(error)}; "
                         "use --init") from None
    set_optimizer_state_dict(model, optimizer, optimizer_state)


def _last_line(error: BaseException) -> str:
    """DCP wraps the real failure in a multi-line report whose last line names the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def load_tokenizer(folder: str) -> Tokenizer:
    """The tokenizer saved beside a checkpoint's weights."""
    path = os.path.join(folder, TOKENIZER)
    if not os.path.exists(path):
        raise ValueError(f"{path} is missing; a checkpoint folder from train.py holds one")
    return Tokenizer.load(path)


# ----------------------------------------------------------------------------------------------------
# Building a model: the one place that turns a config or a checkpoint into a Phi4


def build_model(config: ModelConfig, device, record: dict | None = None, shard=None, seed: int = 0) -> Phi4:
    """A Phi4 of `config` on `device`: the checkpoint's weights when `record` is given, else a fresh init.

    The model is built on the meta device (shapes, no memory), handed to `shard` if given (FSDP2 from
    parallel.parallelize), and only then materialised and filled, so that under torchrun each rank
    allocates and initialises only its own shards. The RoPE tables are never saved: they are rebuilt
    from config (rope_theta, max_seq_len), which is how midtraining changes them.
    """
    with torch.device("meta"):
        model = Phi4(config)
    if shard is not None:
        shard(model)
    model.to_empty(device=device)  # real but uninitialised memory, for this rank's shards only
    if record is not None:
        load_weights(record, model)
        model.set_rope()  # the tables are non-persistent buffers: to_empty left them as garbage
    else:
        # Seeded generator: the same weights on any device and any number of ranks.
        model.init_weights(torch.Generator().manual_seed(seed))
    return model


def load_model(path: str, device="cpu") -> tuple[Phi4, Tokenizer]:
    """A checkpoint folder -> (its model in eval mode on one device, its tokenizer)."""
    record = read_checkpoint(path)
    tokenizer = load_tokenizer(path)
    # The attention the training run chose was its speed choice, not the weights': generation takes the
    # default, which batches rows of different lengths (the triton kernel takes no per-row mask).
    config = dataclasses.replace(ModelConfig.from_dict(record["model_config"]), attn_impl=ModelConfig.attn_impl)
    with torch.device("meta"):
        n_params = Phi4(config).num_params()  # on the meta device: counting costs no memory
    parallel.check_fits(4 * n_params, device, f"the model of {path} (float32)", "use a machine with more memory")
    model = build_model(config, torch.device(device), record)  # no shard function: one process holds it all
    return model.eval(), tokenizer


def newest_checkpoint(root: str = "out") -> str | None:
    """The folder of the most recently written checkpoint under root, or None."""
    found = glob.glob(os.path.join(root, "**", CHECKPOINT), recursive=True)
    return os.path.dirname(max(found, key=os.path.getmtime)) if found else None
