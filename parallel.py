"""Scaling train.py out: process groups, FSDP2 sharding, and the memory plan behind `--dry-run`.

Phi-4 (report section 3) trained 14.66B parameters on ~10T tokens. AdamW in mixed precision keeps, for
every parameter, an fp32 master weight (4 bytes), an fp32 gradient (4) and two fp32 moments (8):
16 bytes per parameter, 235 GB for 14B, before a single activation. No GPU holds that, so the model is
sharded across ranks with FSDP2 (PyTorch's `fully_shard`, the engine torchtitan uses):

    * Every parameter is split along its first dimension into world_size pieces; rank r stores only
      piece r, and so do its gradient and its optimizer state. 16 bytes/param become 16/W per rank.
    * Just before a block runs, its pieces are all-gathered into full weights (in bf16, half the bytes
      of fp32), and freed again right after; the next block's all-gather overlaps the current block's
      compute (prefetching). Backward gathers again, computes full gradients, and reduce-scatters
      them in fp32, so each rank ends up with the summed gradient of its own piece only.
    * The optimizer then steps on the pieces: no rank ever touches a full parameter outside a block's
      forward or backward. Data parallelism comes for free: each rank reads different data.

`parallelize()` applies this in one order, for reasons given at each step:

    1. activation checkpointing per block   (innermost: recomputation must run inside FSDP's unshard)
    2. torch.compile per block              (compiles the block's maths, not FSDP's communication)
    3. fully_shard on each block            (one all-gather/reduce-scatter unit per block)
    4. fully_shard on the root              (embedding, final norm and LM head form the last unit)

A model is built on the meta device (shapes, no memory), sharded, and only then materialised with
`to_empty()`, so a rank allocates 1/W of the weights; `Phi4.init_weights()` then fills each shard with
its rows of the same full random tensors at any world size (see model.py), so runs are reproducible
whether they use 1 rank or 64.

Launching (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process):

    python train.py ...                                   # world size 1: the same code path
    torchrun --nproc_per_node=2 train.py --device cpu     # two CPU processes over gloo (what the tests run)
    torchrun --nproc_per_node=8 train.py --size 14b       # one 8-GPU node over NCCL
    python train.py --size 14b --dry-run --world-size 8   # the memory plan, without allocating anything

Simplified against production stacks: one data-parallel dimension only (no tensor, pipeline or context
parallelism, no HSDP), which is all a 14B model at 4K-16K context needs on 80 GB GPUs.

Imports. FSDP2, DTensor and distributed checkpointing (`torch.distributed.fsdp`, `.tensor`, `.checkpoint`)
are imported inside the functions that use them (here, model.py and checkpoint.py), not at the top: they
pull in sympy and take ~1 s to import, on top of torch's ~1.3 s, and every script's `--help` and
flag errors would wait for them (`python train.py --help`: 1.7-2.0 s instead of 2.7-3.7 on 2 cores).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.utils.checkpoint import checkpoint

from model import ModelConfig, Phi4

# ----------------------------------------------------------------------------------------------------
# Distributed setup: one process per device, started by torchrun (or plain python for world size 1).


@dataclass
class Distributed:
    """Where this process stands: its rank among world_size, its device, and the 1-D device mesh."""

    rank: int
    world_size: int
    local_rank: int  # index among the processes of this machine: picks the GPU
    device: torch.device
    mesh: DeviceMesh
    owns_group: bool  # True when init_distributed created the process group (and shutdown destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, logs and writes the small files; every rank computes and writes its shards."""
        return self.rank == 0


# ----------------------------------------------------------------------------------------------------
# Peak throughput table for MFU (dense bf16 tensor-core FLOP/s, without sparsity). MFU is only
# reported where the device is in this table: a made-up peak would make the number meaningless.

PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower, matched first below
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def peak_flops(device: torch.device | str) -> float | None:
    """Dense bf16 peak of a CUDA device by name, or None (CPU, unknown GPU) to print MFU as n/a."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # longest key first: "H100 PCIe"
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """--device: auto picks the GPU when there is one. On a CPU, the allocator also learns to keep what it
    frees (keep_freed_memory): every script picks its device here, so every CPU run gets that."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "cpu":
        keep_freed_memory()
    return torch.device(name)


# glibc's mallopt parameters (malloc.h): a freed block larger than M_TRIM_THRESHOLD at the top of the heap
# goes back to the OS; a request of M_MMAP_THRESHOLD bytes or more gets pages of its own, unmapped on free.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for the next allocation instead of returning it to the OS.

    A CPU training step allocates and frees the same large buffers every step: activations, logits,
    gradients (a toy step's largest, the fp32 logits of 4,096 tokens, is 18 MB). By default glibc gives a
    block above its mmap threshold (128 KB, rising to at most 32 MB as it sees such blocks freed) pages of
    its own, unmapped on free, and trims the heap's free top back to the OS beyond twice that threshold;
    a step frees far more than that at once, so the next step maps it all again, a page fault and a
    zeroed 4 KB page at a time: 12,000-16,000 faults per toy train step. With both thresholds at 1 GiB the
    heap keeps the blocks and a step faults ~1 time; the step is 1.02-1.36x faster, median 1.08x (six runs
    alternated on one core; README, "Performance"). The cost: the process keeps its peak memory instead
    of shrinking between steps, which nothing here needs. The numbers computed do not change.

    -> True where applied. Linux with glibc only; elsewhere (macOS, musl) nothing changes and -> False.
    A glibc that refuses an mmap threshold of 1 GiB gets 32 MiB, the most its own default would reach.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has other knobs, or none
        return False
    if not mallopt(M_TRIM_THRESHOLD, 1 << 30):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30) or mallopt(M_MMAP_THRESHOLD, 32 << 20))


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up, or make a one-process group when run as `python train.py`.

    device is "cpu" or "cuda"; on CUDA each process takes GPU LOCAL_RANK. The backend is NCCL for GPU
    tensors and gloo for CPU tensors. A world of one still gets a real process group (over an in-memory
    store, no network) so that the single-GPU run goes through exactly the same FSDP code as 64 GPUs.
    """
    launched_by_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "lower torchrun's --nproc_per_node (or check CUDA_VISIBLE_DEVICES)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # "cpu:gloo,cuda:nccl": one group, two transports, so small CPU objects (RNG states, counters) can
    # travel next to the GPU tensors.
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        if launched_by_torchrun:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world_size,))
    return Distributed(rank, world_size, local_rank, device, mesh, owns_group)


def shutdown(world: Distributed):
    """Leave the process group (only if we made it): NCCL warns at exit about groups left open."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def global_sum(value: float | int, world: Distributed) -> float:
    """The sum of a number over all ranks (in float64, so token counts stay exact)."""
    total = torch.tensor(float(value), dtype=torch.float64, device=world.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item()


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (e.g. the gradient norm of sharded gradients), else x itself."""
    from torch.distributed.tensor import DTensor  # see "Imports" above

    return x.full_tensor() if isinstance(x, DTensor) else x


# ----------------------------------------------------------------------------------------------------
# parallelize: activation checkpointing, compile, FSDP2.


def checkpoint_block(block: torch.nn.Module):
    """Make `block` keep only its input for backward and recompute everything else when needed.

    Without it every block keeps about 25 x d_model + 8 x ffn_dim bytes per token for backward (bf16)
    (memory_plan below counts them); with it, one d_model-wide input per block, at the cost of one
    extra forward (about a third more FLOPs). We replace the instance's forward rather than wrap the
    module, so parameter names (and therefore checkpoints) are the same with and without it.
    """
    inner_forward = block.forward

    def forward(*args, **kwargs):
        # use_reentrant=False: the modern implementation; it supports keyword arguments, torch.compile,
        # and inputs that do not require grad (our cos/sin tables).
        return checkpoint(inner_forward, *args, use_reentrant=False, **kwargs)

    block.forward = forward


def parallelize(
    model: Phi4,
    mesh: DeviceMesh,
    activation_checkpointing: bool = False,
    compile: bool = False,
    mixed_precision: bool = True,
    shard: bool = True,
) -> Phi4:
    """Shard `model` (built on the meta device, not yet materialised) over `mesh` with FSDP2, in place.

    mixed_precision: compute with bf16 copies of the weights, reduce gradients in fp32, keep fp32 master
    weights and optimizer state (use it on GPUs; CPUs run fp32, where bf16 matmuls are slow).
    shard=False applies activation checkpointing and compilation only: one fp32 process on a CPU has
    nothing to shard or cast, and FSDP's hooks alone cost it ~5% of a toy step (measured: 18,559 vs
    19,632 tok/s). Checkpoints are the same either way, so a run resumes at any world size.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # see "Imports" above

    # bf16 halves all-gather traffic and activation memory; reductions stay in fp32 because summing
    # many ranks' gradients in bf16 (8 bits of mantissa) would lose the small ones.
    # cast_forward_inputs=False: the blocks receive the RoPE tables, which must stay fp32 (model.py:
    # a bf16 angle blurs positions beyond a few thousand); the residual stream is bf16 anyway because
    # the embedding weights it comes from are.
    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if mixed_precision else None,
        reduce_dtype=torch.float32,
        cast_forward_inputs=False,
    )
    for block in model.blocks:
        # 1. Checkpointing goes innermost: FSDP gathers a block's weights before its backward begins,
        #    so the recomputed forward finds them in place and never triggers a second all-gather.
        if activation_checkpointing:
            checkpoint_block(block)
        # 2. Compile the block's computation (its forward function), not the module call: FSDP's hooks
        #    stay outside the graph and keep running eagerly around it, which is the combination
        #    PyTorch supports. All blocks share one shape, so one compiled graph serves all 40.
        if compile:
            block.forward = torch.compile(block.forward)
        if not shard:
            continue
        # 3. One FSDP unit per block: the all-gathered bf16 weights of only ~2 blocks (the current one
        #    and the prefetched next) exist at any moment.
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # 4. The root takes what is left: embedding, final norm and LM head (1B of Phi-4's 14.7B). Its
    #    weights stay gathered from forward to the end of backward, since backward starts with them.
    if shard:
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def needs_fsdp(world: "Distributed") -> bool:
    """FSDP2 for several ranks (sharding) or a GPU (its bf16 mixed-precision policy); not for one CPU process."""
    return world.world_size > 1 or world.device.type == "cuda"


# ----------------------------------------------------------------------------------------------------
# The memory plan (--dry-run): what each rank will hold, computed from shapes alone.

GB = 1e9  # decimal gigabytes, as GPU vendors count (an "80 GB" H100 holds 80 GiB = 85.9 GB)


def activation_bytes_per_token_per_block(config: ModelConfig, compute_bytes: int) -> int:
    """Bytes autograd keeps per token in one block for its backward, counted from model.py's code.

    compute_bytes is 2 under bf16 mixed precision, 4 in fp32. Per sub-layer:
      RMSNorm (x2)     its fp32 input and fp32 normalised value (8C, always fp32) and 1/rms (4)
      attention        the normalised input of q/k/v_proj (C), q after RoPE (C), k and v (2 x C*K/H),
                       the attention output (C, which o_proj reads through a view: flash attention
                       lays it out token-major, so the reshape copies nothing), plus flash attention's
                       fp32 log-sum-exp (4 bytes per head)
      MLP              the normalised input of gate/up (C), gate and silu(gate) (2F), up (F), and
                       silu(gate)*up for down_proj (F)
    Residual additions and RoPE's multiplications by constant tables keep nothing per token.
    tests/test_parallel.py checks this count against the tensors autograd really saves.
    """
    C, F, H, K = config.d_model, config.ffn_dim, config.n_head, config.n_kv_head
    norms = 2 * (8 * C + 4)
    attention = compute_bytes * (3 * C + 2 * C * K // H) + 4 * H
    mlp = compute_bytes * (C + 4 * F)
    return norms + attention + mlp


def memory_plan(
    config: ModelConfig,
    world_size: int,
    batch_size: int,
    seq_len: int,
    mixed_precision: bool = True,
    loss_chunk: int = 4096,
) -> dict:
    """Bytes per rank for training `config` with FSDP2 and AdamW, without allocating anything.

    The model is built on the meta device to count its parameters. Returns a dict of named byte counts
    (per rank) plus the inputs, read by format_plan(). The states are exact; buffers and activations
    are the largest terms of what the code keeps (the CUDA context, allocator fragmentation and NCCL's
    own buffers, a few GB, come on top).
    """
    with torch.device("meta"):
        model = Phi4(config)
    n_params = model.num_params()
    n_block = sum(p.numel() for p in model.blocks[0].parameters())
    n_root = n_params - config.n_layer * n_block  # embedding + final norm + LM head
    compute_bytes = 2 if mixed_precision else 4
    tokens = batch_size * seq_len  # per rank per micro-batch
    C, L, V = config.d_model, config.n_layer, config.vocab_size
    per_block = activation_bytes_per_token_per_block(config, compute_bytes)
    final_norm = 8 * C + compute_bytes * C  # its fp32 internals and the bf16 hidden states fed to the loss
    plan = {
        "n_params": n_params,
        "world_size": world_size,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "mixed_precision": mixed_precision,
        # Sharded states: each rank holds 1/W of every tensor (FSDP pads the last piece, a few rows).
        "params": 4 * n_params / world_size,  # fp32 master weights
        "grads": 4 * n_params / world_size,  # fp32 gradients (after the reduce-scatter)
        "optimizer": 8 * n_params / world_size,  # AdamW exp_avg and exp_avg_sq, fp32
        # Gathered copies in flight: the root's weights for the whole step and its gradients through
        # backward, two blocks' weights (current + prefetched), and one block's gradients both in the
        # compute dtype and in the fp32 copy handed to the reduce-scatter.
        "buffers": compute_bytes * (2 * n_root + 2 * n_block) + (compute_bytes + 4) * n_block,
        # Without checkpointing every block keeps its activations until its backward runs.
        "activations": tokens * (L * per_block + final_norm),
        # With it, each block keeps its input only, and one block at a time is recomputed in full.
        "activations_checkpointed": tokens * (L * compute_bytes * C + per_block + final_norm),
        # The chunked loss (model.py) holds one chunk of logits: compute-dtype and fp32 values, and
        # the fp32 and compute-dtype gradients during its recomputation in backward.
        "logits": min(tokens, loss_chunk) * V * (2 * compute_bytes + 8),
        "flops_per_token": model.flops_per_token(seq_len),
    }
    plan["states"] = plan["params"] + plan["grads"] + plan["optimizer"]
    fixed = plan["states"] + plan["buffers"] + plan["logits"]
    plan["total"] = fixed + plan["activations"]
    plan["total_checkpointed"] = fixed + plan["activations_checkpointed"]
    return plan


def available_bytes(device: torch.device) -> float | None:
    """Memory a rank on `device` can use now: the GPU's free memory, or on a CPU the machine's available
    memory (Linux's MemAvailable) shared by the ranks on this host. None where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 / int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    except (OSError, KeyError, ValueError):
        return None


def check_fits(needed: float, device: torch.device, what: str, remedy: str) -> None:
    """Refuse, before anything is allocated, a job whose plan does not fit the device (one line)."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise ValueError(f"{what} needs {needed / GB:.1f} GB per rank but {torch.device(device).type} has "
                         f"{available / GB:.1f} GB available; {remedy}")


TRAINING_REMEDY = ("lower --batch-size or --seq-len, use more ranks (torchrun --nproc_per_node), "
                   "--activation-checkpointing or a smaller --size; --dry-run shows the whole plan")


def format_plan(plan: dict, gpu_memory_gb: float, activation_checkpointing: bool) -> str:
    """The plan as a table: one column per rank, one for all ranks together, and the verdicts."""
    W = plan["world_size"]
    precision = "bf16 compute, fp32 master weights and reductions" if plan["mixed_precision"] else "fp32"

    def row(label: str, nbytes: float, all_ranks: bool = True) -> str:
        total = f"{W * nbytes / GB:10.2f} GB" if all_ranks else ""
        return f"  {label:<52}{nbytes / GB:10.2f} GB   {total}".rstrip()

    def verdict(nbytes: float) -> str:
        spare = gpu_memory_gb - nbytes / GB
        return f"fits {gpu_memory_gb:g} GB ({spare:.1f} GB spare)" if spare >= 0 else f"does NOT fit {gpu_memory_gb:g} GB"

    chosen = "with" if activation_checkpointing else "without"
    lines = [
        f"memory plan: {plan['n_params']:,} parameters on {W} rank(s), micro-batch {plan['batch_size']} x "
        f"{plan['seq_len']} tokens per rank, {precision}",
        f"  {'':<52}{'per rank':>13}   {'all ranks':>13}",
        row("parameters (fp32 shards)", plan["params"]),
        row("gradients (fp32 shards)", plan["grads"]),
        row("AdamW moments (2 x fp32 shards)", plan["optimizer"]),
        row(f"= model states: 16 bytes/param split over {W} rank(s)", plan["states"]),
        row("FSDP gathered weights and gradients in flight", plan["buffers"], False),
        row("activations without checkpointing", plan["activations"], False),
        row("activations with --activation-checkpointing", plan["activations_checkpointed"], False),
        row("logits of one loss chunk", plan["logits"], False),
        row("total without activation checkpointing", plan["total"], False) + "  " + verdict(plan["total"]),
        row("total with activation checkpointing", plan["total_checkpointed"], False)
        + "  "
        + verdict(plan["total_checkpointed"]),
        f"  training FLOPs per token (6N + attention, for MFU): {plan['flops_per_token']:.3e}",
        f"  this run is {chosen} activation checkpointing; not counted: the CUDA context, allocator "
        "fragmentation and NCCL's own buffers (a few GB)",
    ]
    return "\n".join(lines)
