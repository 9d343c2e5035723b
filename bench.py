"""Benchmark: this project's Phi-4 next to transformers' Phi3ForCausalLM, same shape, same weights, one run.

Phi-4 is a phi3-type model (report section 3), so transformers' Phi3ForCausalLM is the implementation its
checkpoints are made for, and the fair yardstick for ours. Both models here hold the same weights: ours is
built from the preset, written with `model.save_pretrained(DIR)` (hf.py) and read back by
`Phi3ForCausalLM.from_pretrained(DIR)`; tests/test_bench.py checks they give the same logits.

    python bench.py                     # toy shape (vocab 1,088, seq 256, batch 16) on this machine, ~2 min
    python bench.py --threads 1         # steadier runs on a machine shared with other jobs
    python bench.py --repeats 3 --parts train,decode
    python bench.py --threads 1 --parts train --attn-impl naive --hf-attn eager   # both written-out attentions
    python bench.py --threads 1 --parts attention   # one layer's attention: naive, sdpa, blockwise (and triton)
    python bench.py --device cuda --size 14b --n-layer 4 --dtype bfloat16 --parts decode   # bf16 decode on a GPU

What each number means:

  matmul peak        FLOP/s of one large square matmul (2 n^3 FLOPs, median of --repeats), in fp32 and, where
                     the hardware has bf16 instructions (CPU: avx512_bf16 or amx_bf16; GPU: always), in bf16.
                     "peak" is the larger. It is measured today on these (possibly shared) cores, not taken from
                     a datasheet, so "% of peak" says how close the model comes to what its matmuls could do here.
  train step         tokens/s of one optimizer step on a fixed random batch: forward, cross-entropy, backward,
                     AdamW. Achieved FLOP/s = tokens/s x model.flops_per_token(seq_len): 6N + attention, the
                     PaLM convention train.py reports MFU with. Both models get the same count, so it is fair
                     even though ours spends more (its chunked loss recomputes the LM head in backward).
  decode             tokens/s of generation with a KV cache, every row's new tokens counted, prefill included:
                     batch 1 greedy and batch 64 sampling (temperature 1, no top-k / top-p). Achieved FLOP/s =
                     tokens/s x 2N (N: parameters without the input embedding, a lookup): the matmuls of one
                     token's forward. Attention over the cache is left out: a small underestimate at these lengths.
  precision/compile  our train step four ways: fp32 eager (what train.py does on a CPU), under
                     torch.autocast bf16, with each block compiled (train.py --compile), and both, then a
                     recommendation computed from those numbers: an option counts as faster only if it beat
                     fp32 in every paired repeat, and compilation only if it pays back within a default toy run.
                     "first call s" includes compilation, into an empty cache, as a first run would pay it.
  attention          one layer's attention alone, forward + backward, for each of our implementations (the
                     triton kernel on a GPU only), at the train step's shape and at 4x its context with a
                     quarter of its rows (midtraining's); fp32, and bf16 under autocast where the hardware has
                     it, as in a bf16 training step. Milliseconds per pass (medians) and the speed-up over sdpa,
                     the fused kernel transformers uses too.

How to read the ratios: "ours/HF" is our median tokens/s over transformers' at the same shape, weights and
work; above 1 means this project is faster. Because both sides are credited the same FLOPs per token, it is
also the ratio of achieved FLOP/s. Every tokens/s figure is the median of --repeats timed runs after one
warm-up run, and the runs of the two sides alternate (ours, HF, ours, HF, ...), so a slow drift in the load
of other jobs hits both alike; a burst that hits single runs is what the median is for. "vs fp32" in the
precision table is the same kind of ratio. On a machine shared with other jobs, trust the ratios more than
the absolute figures, and rerun when the medians' runs disagree (--json keeps every run).

Simplified on purpose: no gradient clipping, accumulation or FSDP in the timed step (train.py wraps even a
world of one in FSDP2; here both models run bare so only the model code differs), random tokens instead of
data, and one prompt length. transformers is a test/benchmark-only dependency: it is imported here, inside
functions, and a missing install prints one line and leaves its columns out.
"""

from __future__ import annotations

import os

# torch.compile's kernel compiler otherwise starts a pool of worker processes that keep running beside the
# timed steps; on a 2-core machine they steal the cores being measured. Set before torch is imported.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# Whether the user chose where torch.compile caches its kernels (inductor writes its default there itself).
USER_COMPILE_CACHE = "TORCHINDUCTOR_CACHE_DIR" in os.environ

import argparse  # noqa: E402  (after the environment variable above, on purpose)
import contextlib
import datetime
import json
import math
import statistics
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F

import cli
import parallel
from model import ATTENTION, CONTEXT_EXTENSION, PRESETS, ModelConfig, Phi4, get_config
from sample import generate

# The row labels of the printed tables (tests/test_bench.py looks for each).
TRAIN_ROW = "train step"
GREEDY_ROW = "decode batch 1 greedy"
COMPILED_ROW = "decode batch 1 greedy, compiled"
SAMPLING_ROW = "decode batch {n} sampling"
FP32_ROW = "fp32 eager"
BF16_ROW = "bf16 autocast"
COMPILE_ROW = "torch.compile"
BF16_COMPILE_ROW = "bf16 + compile"  # train.py --bf16-autocast --compile
PARTS = ("peak", "train", "decode", "precision", "attention")

# The toy tokenizer's 1,029 ids padded to a multiple of 64: the vocabulary `python train.py` gives the toy model.
TOY_VOCAB = 1088

# ----------------------------------------------------------------------------------------------------
# Timing helpers


def synchronize(device: torch.device):
    """GPU work is asynchronous: wait for it before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Call each run once to warm up, then `repeats` times in turn (a b c a b c ...).

    Each run returns a rate (tokens/s). Returns ({name: [rate per repeat]}, {name: seconds of the warm-up
    call}); the warm-up time is what compilation and first-call allocation cost. Alternating the runs
    spreads a background job's load evenly over them, so their ratio stays fair on shared cores.
    """
    warmup_s = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        warmup_s[name] = time.perf_counter() - start
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(run())
    return rates, warmup_s


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratios(rates: list[float], base_rates: list[float]) -> list[float]:
    """Repeat i of one run over repeat i of another: run back to back, the two shared the same load."""
    return [rate / base for rate, base in zip(rates, base_rates)]


# ----------------------------------------------------------------------------------------------------
# The machine's matmul peak


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets from /proc/cpuinfo (Linux); empty elsewhere or without any."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]


def has_fast_bf16(device: torch.device) -> bool:
    """Whether a bf16 matmul can beat fp32 here: any CUDA GPU with bf16, a CPU with bf16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_bf16_flags())


def matmul_flops(n: int, dtype: torch.dtype, repeats: int, device: torch.device) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul: 2 n^3 multiply-adds over the median time of `repeats` calls."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    a @ b  # warm-up: the first call picks a kernel and allocates its workspace
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / median(times)


def measure_peak(n: int, repeats: int, device: torch.device) -> dict:
    """{"fp32": FLOP/s, "bf16": FLOP/s or None, "peak": the larger}."""
    fp32 = matmul_flops(n, torch.float32, repeats, device)
    bf16 = matmul_flops(n, torch.bfloat16, repeats, device) if has_fast_bf16(device) else None
    return {"fp32": fp32, "bf16": bf16, "peak": max(fp32, bf16 or 0.0), "n": n}


# ----------------------------------------------------------------------------------------------------
# The two models, same weights


def bench_config(size: str, vocab_size: int | None, n_layer: int | None, attn_impl: str = "sdpa") -> ModelConfig:
    """The preset, with the toy vocabulary train.py gives `toy` (TOY_VOCAB) and the attention asked for."""
    overrides = {"vocab_size": vocab_size or (TOY_VOCAB if size == "toy" else PRESETS[size].vocab_size),
                 "attn_impl": attn_impl}
    if n_layer:
        overrides["n_layer"] = n_layer
    return get_config(size, **overrides)


def build_ours(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Phi4:
    """Our model, initialised as train.py does (N(0, init_std), seeded), without a full-size CPU copy first."""
    with torch.device("meta"):
        model = Phi4(config)  # shapes only
    model.to_empty(device=device)
    model.init_weights(torch.Generator().manual_seed(seed))
    model.to(dtype)
    model.set_rope()  # .to(dtype) also cast the RoPE tables; they stay float32 (model.rope_tables says why)
    return model


def import_transformers():
    """transformers, or None with one line saying how to get it (it is a test/benchmark-only dependency)."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: its columns are left out "
              "(pip install -r requirements-dev.txt to compare against Phi3ForCausalLM)")
        return None
    transformers.utils.logging.set_verbosity_error()  # no load reports or generation-config advice
    transformers.utils.logging.disable_progress_bar()
    return transformers


def build_theirs(ours: Phi4, transformers, attn_implementation: str = "sdpa"):
    """transformers' Phi3ForCausalLM holding exactly our weights, on our device and dtype.

    The weights travel the way a user's would: our Hugging Face export (hf.save_phi4: fused qkv_proj and
    gate_up_proj, config.json) read by transformers' own loader. SDPA attention unless --hf-attn says eager
    (transformers' written-out attention, as --attn-impl naive is ours).
    """
    parameter = next(ours.parameters())
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        theirs = transformers.Phi3ForCausalLM.from_pretrained(
            folder, dtype=parameter.dtype, attn_implementation=attn_implementation
        )
    return theirs.to(parameter.device)


def train_flops_per_token(model: Phi4, seq_len: int) -> float:
    """The FLOPs one trained token costs: model.flops_per_token, the count train.py's MFU uses."""
    return model.flops_per_token(seq_len)


def decode_flops_per_token(model: Phi4) -> float:
    """2N: one multiply-add per weight of every matmul (all but the input embedding, a table lookup)."""
    return 2 * model.num_params(exclude_embedding=True)


# ----------------------------------------------------------------------------------------------------
# Training step


def our_loss(model, inputs, targets):
    """Ours the way train.py calls it: the model computes its chunked cross-entropy itself."""
    return model(inputs, targets)


def their_loss(model, inputs, targets):
    """Theirs on the same targets. (Passing labels= would shift them by one and score one position less.)"""
    logits = model(input_ids=inputs, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # (B*T, V) against (B*T,)


class TrainStep:
    """`steps` optimizer steps on one fixed random batch; each call returns tokens/s.

    Every model gets its own AdamW with train.py's betas and weight decay (on every tensor here: sparing
    the norm gains, as train.py does, or another learning rate would not change the time). `autocast` runs forward and loss under torch.autocast bf16; backward follows the
    dtypes autocast chose, as it should.
    """

    def __init__(self, model, loss_fn, batch, steps: int, autocast: bool = False):
        self.model, self.loss_fn, self.batch, self.steps, self.autocast = model.train(), loss_fn, batch, steps, autocast
        self.device = batch[0].device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                           fused=self.device.type == "cuda")
        self.losses = []  # loss of every step, first (warm-up) step included

    def __call__(self) -> float:
        inputs, targets = self.batch
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.loss_fn(self.model, inputs, targets)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.losses.append(loss.item())  # .item() waits for the step, like the trainer's logging
        synchronize(self.device)
        return self.steps * inputs.numel() / (time.perf_counter() - start)


def random_batch(vocab_size: int, batch_size: int, seq_len: int, device, seed: int = 0):
    """Inputs and next-token targets (B, T) each, from one random (B, T + 1) row block, as train.py's RandomTokens."""
    rows = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    return rows[:, :-1].to(device), rows[:, 1:].to(device)  # (B, T), (B, T)


def attention_pass(attention, shape: tuple, dtype: torch.dtype, device, seed: int) -> Callable[[], float]:
    """A call runs one layer's causal attention forward and backward on random q (B, H, T, D) and k, v
    (B, K, T, D) -> tokens/s. bf16 runs under autocast, as a bf16 training step calls the attention."""
    B, H, K, T, D = shape
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(s, generator=generator).to(device, dtype).requires_grad_()
                     for s in [(B, H, T, D), (B, K, T, D), (B, K, T, D), (B, H, T, D)])

    def run() -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attention(q, k, v, causal=True)  # (B, H, T, D)
        out.backward(grad.detach())
        synchronize(device)
        q.grad = k.grad = v.grad = None
        return B * T / (time.perf_counter() - start)

    return run


# ----------------------------------------------------------------------------------------------------
# Decoding


def check_decoded(out: torch.Tensor, prompt: torch.Tensor, new_tokens: int, who: str):
    """Tokens/s are only comparable if both sides decoded exactly new_tokens per row: say so if not."""
    if tuple(out.shape) != (prompt.shape[0], prompt.shape[1] + new_tokens):
        raise RuntimeError(f"{who} returned {tuple(out.shape)} tokens, expected "
                           f"{(prompt.shape[0], prompt.shape[1] + new_tokens)}: the decode comparison is off")


def our_decode(model, prompt, new_tokens: int, temperature: float, seed: int, compiled: bool = False) -> Callable[[], float]:
    """A call generates new_tokens after every row of prompt (B, T) with sample.generate -> tokens/s
    (`compiled`: each decode step through sample.compiled_decode_step)."""

    def run() -> float:
        device = prompt.device
        synchronize(device)
        start = time.perf_counter()
        out = generate(model, prompt, new_tokens, temperature=temperature, seed=seed, compiled=compiled)
        synchronize(device)
        check_decoded(out, prompt, new_tokens, "ours")
        return prompt.shape[0] * new_tokens / (time.perf_counter() - start)

    return run


def hf_generation_config(transformers, new_tokens: int, temperature: float):
    """transformers' generate settings that do our generate's work: exactly new_tokens per row, and greedy
    (temperature 0) or sampling from the whole distribution (no top-k, no top-p)."""
    if temperature == 0:
        sampling = dict(do_sample=False)
    else:
        # transformers samples among the 50 most likely tokens unless told otherwise; ours samples them all.
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    # No end-of-text id, and min = max, so no row stops early and both sides decode the same count.
    return transformers.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                                         pad_token_id=0, use_cache=True, **sampling)


def their_decode(model, transformers, prompt, new_tokens: int, temperature: float, seed: int) -> Callable[[], float]:
    """The same with transformers' generate and its own KV cache -> tokens/s."""
    config = hf_generation_config(transformers, new_tokens, temperature)
    model.eval()

    def run() -> float:
        device = prompt.device
        torch.manual_seed(seed)  # transformers samples from the global generator
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, generation_config=config)
        synchronize(device)
        check_decoded(out, prompt, new_tokens, "transformers")
        return prompt.shape[0] * new_tokens / (time.perf_counter() - start)

    return run


# ----------------------------------------------------------------------------------------------------
# Precision and compilation of our train step


def compile_blocks(model: Phi4) -> Phi4:
    """What `train.py --compile` does (parallel.parallelize): compile each block's forward; all share one graph."""
    for block in model.blocks:
        block.forward = torch.compile(block.forward)
    return model


@contextlib.contextmanager
def fresh_compile_cache():
    """An empty, temporary cache for torch.compile's kernels (unless TORCHINDUCTOR_CACHE_DIR is set), so the
    compile time measured is what a first `train.py --compile` pays, not a rerun that finds them cached."""
    if USER_COMPILE_CACHE:
        yield
        return
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="bench_inductor_") as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder  # read by inductor each time it looks for its cache
        try:
            yield
        finally:
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def recommend(rates: dict[str, list[float]], warmup_s: dict[str, float], tokens_per_step: int,
              steps_per_call: int, run_steps: int) -> list[str]:
    """One line per option against fp32 eager, then the recommendation, all computed from the measurements.

    rates: tokens/s of each timed call (of steps_per_call steps) per option; warmup_s: seconds of each
    option's first call. The calls alternate, so call i of every option shared its background load with
    call i of fp32. An option counts as faster when it won every such pair (a sign test: 5 wins out of 5
    happen by chance 1 time in 32) and its median is at least 5% above fp32's. Compilation also has to
    earn back its start-up time within a run of `run_steps` steps (a default toy pretraining run).
    """
    step_s = {name: tokens_per_step / median(values) for name, values in rates.items()}  # seconds per step
    lines, wins = [], {}
    for name in (BF16_ROW, COMPILE_ROW, BF16_COMPILE_ROW):
        if name not in rates:
            continue
        ratios = paired_ratios(rates[name], rates[FP32_ROW])  # > 1: the option is faster
        speedup = median(rates[name]) / median(rates[FP32_ROW])
        if min(ratios) > 1 and speedup >= 1.05:
            verdict = f"faster in all {len(ratios)} paired repeats"
        elif max(ratios) < 1 and speedup <= 0.95:
            verdict = f"slower in all {len(ratios)} paired repeats"
        else:
            verdict = f"no clear difference: paired ratios {min(ratios):.2f}-{max(ratios):.2f}"
        lines.append(f"{name}: {speedup:.2f}x fp32 eager ({verdict})")
        if not verdict.startswith("faster"):
            continue
        if name in (COMPILE_ROW, BF16_COMPILE_ROW):
            # Start-up cost: how much longer the first (compiling) call took than a compiled call.
            compile_s = max(0.0, warmup_s[name] - steps_per_call * step_s[name])
            payback = math.ceil(compile_s / (step_s[FP32_ROW] - step_s[name]))  # faster, so the saving is > 0
            lines.append(f"{name}: {compile_s:.0f} s to compile, paid back after {payback:,} steps "
                         f"(a default toy run is {run_steps:,})")
            if payback > run_steps:
                continue
        wins[name] = speedup
    if wins:
        best = max(wins, key=wins.get)
        lines.append(f"recommendation: use {best} for the train step on this machine ({wins[best]:.2f}x fp32 eager)")
    else:
        lines.append("recommendation: keep fp32 eager (train.py's CPU default): neither bf16 autocast nor "
                     "torch.compile is a clear win on this machine")
    return lines


# ----------------------------------------------------------------------------------------------------
# Printing


def format_flops(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:,.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:,.1f} GFLOP/s"


def flops_cell(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> str:
    """'85.3 GFLOP/s (24%)': achieved FLOP/s and its share of the measured matmul peak."""
    if tokens_per_s is None:
        return "n/a"
    achieved = tokens_per_s * flops_per_token
    return format_flops(achieved) + (f" ({achieved / peak:.1%})" if peak else "")


def noise_note(samples: dict[str, list[float]]) -> str | None:
    """A line of advice when the runs behind a table disagree by more than 30% of their median."""
    worst = max((max(runs) - min(runs)) / median(runs) for runs in samples.values())
    if worst <= 0.3:
        return None
    return (f"note: runs of one figure differ by up to {worst:.0%} of their median (other jobs on the cores?); "
            "rerun, or on a shared machine try --threads 1, whose runs are steadier")


def print_comparison(rows: list[dict], peak: float | None):
    """The side-by-side table: one row per workload, ours against transformers."""
    print(f"\n{'what':<32} {'ours tok/s':>12} {'HF tok/s':>12} {'ours/HF':>8}   {'ours FLOP/s (% peak)':<24} "
          f"{'HF FLOP/s (% peak)':<24}")
    for row in rows:
        ours, theirs = row["ours_tok_s"], row["hf_tok_s"]
        ratio = f"{row['ratio']:7.2f}x" if theirs else f"{'n/a':>8}"
        print(f"{row['name']:<32} {ours:>12,.0f} {theirs or float('nan'):>12,.0f} {ratio}   "
              f"{flops_cell(ours, row['flops_per_token'], peak):<24} "
              f"{flops_cell(theirs, row['flops_per_token'], peak):<24}", flush=True)
    for row in rows:
        if "compile_s" in row:
            print(f"({row['name']}: the first call, compile included, took {row['compile_s']:.1f} s)")


def print_precision(results: dict, flops_per_token: float, peak: float | None, label: str):
    """Our train step in fp32, bf16 autocast, compiled and both, against fp32."""
    print(f"\nour {label}: precision and compilation")
    print(f"{'mode':<16} {'tok/s':>10} {'vs fp32':>8}   {'FLOP/s (% peak)':<24} {'loss, step 1':>12} {'first call s':>12}")
    for name, result in results.items():
        print(f"{name:<16} {result['tok_s']:>10,.0f} {result['vs_fp32']:>7.2f}x   "
              f"{flops_cell(result['tok_s'], flops_per_token, peak):<24} {result['first_loss']:>12.6f} "
              f"{result['warmup_s']:>12.1f}", flush=True)


# ----------------------------------------------------------------------------------------------------
# The command


def comparison_row(name: str, flops_per_token: float, rates: dict[str, list[float]]) -> dict:
    """One workload's figures: the median of each side and their ratio ours/HF (None without HF)."""
    theirs = rates.get("hf")
    return {"name": name, "flops_per_token": flops_per_token, "samples": rates, "ours_tok_s": median(rates["ours"]),
            "hf_tok_s": median(theirs) if theirs else None,
            "ratio": median(rates["ours"]) / median(theirs) if theirs else None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.Parser(description="Train-step and decode tokens/s of this project next to transformers' "
                                    "Phi3ForCausalLM (same shape, same weights), achieved FLOP/s against a measured "
                                    "matmul peak, and what bf16 autocast and torch.compile buy our train step.")
    parser.add_argument("--repeats", type=cli.at_least(1), default=5, help="timed runs per figure (medians)")
    parser.add_argument("--size", default="toy", choices=list(PRESETS), help="model preset")
    parser.add_argument("--n-layer", type=cli.at_least(1), default=None, help="override the preset's depth")
    parser.add_argument("--vocab-size", type=cli.at_least(1), default=None,
                        help=f"vocabulary rows (default {TOY_VOCAB} for toy, as train.py gives it; else the preset's)")
    parser.add_argument("--batch-size", type=cli.at_least(1), default=16, help="training rows per step")
    parser.add_argument("--seq-len", type=cli.at_least(1), default=256, help="training tokens per row")
    parser.add_argument("--train-steps", type=cli.at_least(1), default=3, help="optimizer steps per timed run")
    parser.add_argument("--prompt-len", type=cli.at_least(1), default=32, help="prompt tokens before decoding")
    parser.add_argument("--new-tokens", type=cli.at_least(1), default=128, help="tokens decoded per row")
    parser.add_argument("--sample-batch", type=cli.at_least(1), default=64, help="rows of the sampling decode")
    parser.add_argument("--matmul-size", type=cli.at_least(1), default=2048, help="n of the n x n peak matmul")
    parser.add_argument("--device", default="auto", choices=parallel.DEVICES, help="where to run")
    parser.add_argument("--threads", type=cli.at_least(1), default=None,
                        help="CPU threads for torch (default: torch's choice, one per core)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weights of the ours-vs-HF rows (default float32 on CPU, bfloat16 on GPU); "
                        "the precision part is always fp32 weights")
    parser.add_argument("--attn-impl", default="sdpa", choices=["sdpa", "naive", "blockwise"],
                        help="our attention (naive: the written-out one, its softmax in bf16 under autocast; blockwise: CPU training's)")
    parser.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"],
                        help="transformers' attention (eager: its written-out one)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave torch.compile out (the compiled decode row and the precision part)")
    parser.add_argument("--no-hf", action="store_true", help="leave transformers out (ours only)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every measurement to this file")
    parser.add_argument("--seed", type=int, default=0, help="weights, batch and sampling seed")
    args = parser.parse_args(argv)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown or not args.parts:
        parser.error(f"--parts {','.join(unknown) or '(empty)'}: choose among {','.join(PARTS)}")
    if args.no_hf and "hf_attn" in cli.given_flags(parser, argv):
        parser.error("--hf-attn sets transformers' attention, which --no-hf leaves out; drop one of the two")
    return args


def run(args: argparse.Namespace) -> dict:
    """Measure the chosen parts, print each table as soon as it is done, return every number."""
    device = parallel.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # bf16 on a GPU (what decoding runs in there), fp32 on a CPU (what train.py and sample.py use there).
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    config = bench_config(args.size, args.vocab_size, args.n_layer, args.attn_impl)
    check_lengths(args, config)
    # Imported only when a part compares against it: the peak and the precision part are ours alone.
    transformers = None if args.no_hf or not {"train", "decode"} & set(args.parts) else import_transformers()
    ours = build_ours(config, device, dtype, args.seed)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({', '.join(cpu_bf16_flags()) or 'no bf16 flags'})",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__ if transformers else None,
        "dtype": str(dtype).removeprefix("torch."), "config": config.to_dict(), "args": vars(args),
    }
    print_header(results, ours, config, args)
    peak = None
    if "peak" in args.parts:
        results["peak"] = measure_peak(args.matmul_size, args.repeats, device)
        peak = results["peak"]["peak"]
        bf16 = format_flops(results["peak"]["bf16"]) if results["peak"]["bf16"] else "n/a (no bf16 instructions)"
        print(f"\nmatmul peak ({args.matmul_size} x {args.matmul_size}): fp32 {format_flops(results['peak']['fp32'])}, "
              f"bf16 {bf16}; peak = {format_flops(peak)}")
    theirs = build_theirs(ours, transformers, args.hf_attn) if transformers else None
    rows = compare_with_transformers(args, config, device, ours, theirs, transformers)
    if rows:
        print_comparison(rows, peak)
        note = noise_note({f"{row['name']} {side}": runs for row in rows for side, runs in row["samples"].items()})
        if note:
            print(note)
        results["rows"] = rows
    del ours, theirs  # free them before the precision part builds three more models
    if "precision" in args.parts:
        results.update(measure_precision(args, config, device, peak))
    if "attention" in args.parts:
        results["attention"] = measure_attention(args, config, device)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


def check_lengths(args: argparse.Namespace, config) -> None:
    """Fail before building anything: a sequence past the RoPE table would only fail deep inside a forward."""
    if {"train", "precision"} & set(args.parts) and args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the {args.size} context of {config.max_seq_len}")
    if "decode" in args.parts and args.prompt_len + args.new_tokens > config.max_seq_len:
        raise ValueError(f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds the {args.size} "
                         f"context of {config.max_seq_len}; lower --new-tokens")


def print_header(results: dict, ours, config, args: argparse.Namespace) -> None:
    """Where and what was measured: the lines that make a table comparable with another machine's."""
    N = ours.num_params(exclude_embedding=True)
    threads = f"{results['threads']} thread" + ("s" if results["threads"] != 1 else "")
    print(f"bench.py {results['date']}: {results['device']}, {threads}, torch {torch.__version__}, "
          f"transformers {results['transformers'] or 'not used'}")
    print(f"model: {args.size} shape, vocab {config.vocab_size}, {config.n_layer} layers, d_model {config.d_model}, "
          f"heads {config.n_head}/{config.n_kv_head}, FFN {config.ffn_dim}; N = {N:,} parameters without the "
          f"input embedding; {results['dtype']} weights; medians of {args.repeats} runs, ours and HF alternating")
    print(f"attention: ours {config.attn_impl}" + (f", transformers {args.hf_attn}" if results["transformers"] else ""))


def compare_with_transformers(args: argparse.Namespace, config, device, ours, theirs, transformers) -> list[dict]:
    """The decode and train rows of the comparison table: ours and transformers' runs alternating."""
    rows = []
    if "decode" in args.parts:
        # Random ids: the speed does not depend on the text. Row 0 alone is the greedy prompt, all rows the
        # sampling batch (distinct prompts, so neither side can share a prefill between rows).
        prompt_ids = torch.randint(0, config.vocab_size, (args.sample_batch, args.prompt_len),
                                   generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
        for name, prompt, temperature in [(GREEDY_ROW, prompt_ids[:1], 0.0),
                                          (SAMPLING_ROW.format(n=args.sample_batch), prompt_ids, 1.0)]:
            runs = {"ours": our_decode(ours, prompt, args.new_tokens, temperature, args.seed)}
            if theirs is not None:
                runs["hf"] = their_decode(theirs, transformers, prompt, args.new_tokens, temperature, args.seed)
            rates, _ = interleaved(runs, args.repeats)
            rows.append(comparison_row(name, decode_flops_per_token(ours), rates))
        if not args.no_compile and device.type == "cpu":
            # The same greedy decode with our steps compiled (sample.compiled_decode_step), against the same
            # transformers generate, alternating again: the first call's time is the compile.
            runs = {"ours": our_decode(ours, prompt_ids[:1], args.new_tokens, 0.0, args.seed, compiled=True)}
            if theirs is not None:
                runs["hf"] = their_decode(theirs, transformers, prompt_ids[:1], args.new_tokens, 0.0, args.seed)
            rates, warmup_s = interleaved(runs, args.repeats)
            rows.append({**comparison_row(COMPILED_ROW, decode_flops_per_token(ours), rates),
                         "compile_s": warmup_s["ours"]})
    if "train" in args.parts:
        # After decoding: training moves the weights, and decoding should see the weights both sides loaded.
        batch = random_batch(config.vocab_size, args.batch_size, args.seq_len, device, args.seed)
        runs = {"ours": TrainStep(ours, our_loss, batch, args.train_steps)}
        if theirs is not None:
            runs["hf"] = TrainStep(theirs, their_loss, batch, args.train_steps)
        rates, _ = interleaved(runs, args.repeats)
        rows.insert(0, comparison_row(f"{TRAIN_ROW}, batch {args.batch_size} x {args.seq_len}",
                                      train_flops_per_token(ours, args.seq_len), rates))
        if device.type == "cpu" and has_fast_bf16(device) and next(ours.parameters()).dtype == torch.float32:
            # What the toy recipe trains with (speedrun.sh: --bf16-autocast), and the same autocast for
            # transformers: both sides get the CPU's bf16 matmuls, so the ratio is of the code, not the dtype.
            runs = {"ours": TrainStep(ours, our_loss, batch, args.train_steps, autocast=True)}
            if theirs is not None:
                runs["hf"] = TrainStep(theirs, their_loss, batch, args.train_steps, autocast=True)
            rates, _ = interleaved(runs, args.repeats)
            rows.insert(1, comparison_row(f"{TRAIN_ROW} bf16 autocast", train_flops_per_token(ours, args.seq_len), rates))
    return rows


def measure_attention(args: argparse.Namespace, config, device) -> list[dict]:
    """One layer's attention, every implementation at two shapes and two precisions; prints the table."""
    impls = ["naive", "sdpa", "blockwise"]
    if device.type == "cuda":
        from flash_attention import HAS_TRITON

        impls += ["triton"] if HAS_TRITON else []
    shapes = [(args.batch_size, args.seq_len),
              (max(1, args.batch_size // CONTEXT_EXTENSION), args.seq_len * CONTEXT_EXTENSION)]
    dtypes = [torch.float32] + ([torch.bfloat16] if has_fast_bf16(device) else [])
    H, K, D = config.n_head, config.n_kv_head, config.head_dim
    print(f"\none layer's attention, forward + backward, {H} query heads on {K} KV heads of {D}: ms per pass "
          "(speed-up over sdpa)")
    print(f"{'rows x tokens':<16} {'dtype':<9}" + "".join(f" {impl:>18}" for impl in impls))
    rows = []
    for batch, seq in shapes:
        for dtype in dtypes:
            runs = {impl: attention_pass(ATTENTION[impl], (batch, H, K, seq, D), dtype, device, args.seed) for impl in impls}
            rates, _ = interleaved(runs, args.repeats)
            ms = {impl: 1e3 * batch * seq / median(rates[impl]) for impl in impls}
            cells = "".join(" " + f"{ms[impl]:.1f} ({ms['sdpa'] / ms[impl]:.2f}x)".rjust(18) for impl in impls)
            print(f"{f'{batch} x {seq}':<16} {str(dtype).removeprefix('torch.'):<9}{cells}", flush=True)
            rows.append({"batch": batch, "seq_len": seq, "dtype": str(dtype).removeprefix("torch."), "ms": ms,
                         "samples": rates})
    return rows


def measure_precision(args: argparse.Namespace, config, device, peak) -> dict:
    """Our train step in fp32, under bf16 autocast, compiled, and both: fresh fp32 copies of the same weights,
    the same batch, steps alternating between them; prints the table and the recommendation."""
    batch = random_batch(config.vocab_size, args.batch_size, args.seq_len, device, args.seed)
    fresh = lambda: build_ours(config, device, torch.float32, args.seed)  # noqa: E731
    runs = {FP32_ROW: TrainStep(fresh(), our_loss, batch, args.train_steps),
            BF16_ROW: TrainStep(fresh(), our_loss, batch, args.train_steps, autocast=True)}
    if not args.no_compile:
        # compile_blocks only wraps the blocks; compiling happens in the first (warm-up) call, which
        # `interleaved` times: that is the start-up cost the recommendation weighs.
        runs[COMPILE_ROW] = TrainStep(compile_blocks(fresh()), our_loss, batch, args.train_steps)
        runs[BF16_COMPILE_ROW] = TrainStep(compile_blocks(fresh()), our_loss, batch, args.train_steps, autocast=True)
    with fresh_compile_cache():
        rates, warmup_s = interleaved(runs, args.repeats)
    precision = {name: {"tok_s": median(rates[name]), "samples": rates[name],
                        "vs_fp32": median(rates[name]) / median(rates[FP32_ROW]),
                        "warmup_s": warmup_s[name], "first_loss": runs[name].losses[0]} for name in runs}
    flops_per_token = train_flops_per_token(runs[FP32_ROW].model, args.seq_len)
    print_precision(precision, flops_per_token, peak, f"{TRAIN_ROW}, batch {args.batch_size} x {args.seq_len}")
    note = noise_note(rates)
    if note:
        print(note)
    from train import STAGE_DEFAULTS  # the length of a default toy run, where it is defined

    lines = recommend(rates, warmup_s, args.batch_size * args.seq_len, args.train_steps,
                      STAGE_DEFAULTS["pretrain"]["steps"])
    print("\n" + "\n".join(lines))
    return {"precision": precision, "recommendation": lines}


if __name__ == "__main__":
    cli.main(lambda: run(parse_args()))
