"""Tests for the Triton FlashAttention-2 kernel (flash_attention.py).

Every check compares against an oracle written here: plain attention in float64 (K and V repeated for
grouped-query attention, bottom-right causal mask built from index comparisons) with autograd providing dq,
dk and dv. It is not `model.naive_attention`, the project's readable attention, because that one computes
its scores in float32 whatever the input dtype: right for the model, but on float64 inputs it would give
float32 accuracy. It is written differently on purpose, and torch's SDPA checks it in turn. The cases cover
batch > 1, lengths that are not multiples of any block size (1, 17, 100, 257), queries shorter than keys
(chunked prefill and one-token decode), GQA ratios 1, 2 and 4, causal and not, head dims 32, 64 and 128,
fp32 and fp16 (bf16 on a GPU only: Triton 3.9's interpreter computes tl.dot on bf16 operands wrongly),
non-contiguous inputs, causal block skipping, and clear errors for bad shapes.

On CPU the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py before import); the file is sized
to finish in well under two minutes on two cores. The whole module is skipped where Triton is missing.
"""
import importlib
import math

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import triton_kernel_skip_reason  # noqa: E402
from flash_attention import flash_attention  # noqa: E402  (after the skip: without Triton there is nothing to test)

# The module itself (its attribute `flash_attention` is the function of the same name).
kernel_module = importlib.import_module("flash_attention")

if reason := triton_kernel_skip_reason():
    pytest.skip(reason, allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Largest error allowed, as a fraction of the reference tensor's largest magnitude (floored at 1, the scale
# of the random inputs, so that exactly-zero gradients such as dq with a single key are not held to 0).
# fp32 dots are exact fp32 (differences come from summation order); 16-bit inputs round P and dS to the
# input dtype before the matmuls, as FlashAttention-2 does.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 3e-2}


# ------------------------------------------------------------------------------------------------------------
# The oracle and helpers
# ------------------------------------------------------------------------------------------------------------

def oracle_attention(q, k, v, causal, scale=None):
    """softmax(scale * q k^T + mask) v in the inputs' dtype; query i sees key j iff j <= i + S - T."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, T, S)
    if causal:
        T, S = scores.shape[-2:]
        i = torch.arange(T, device=q.device)[:, None]  # (T, 1)
        j = torch.arange(S, device=q.device)[None, :]  # (1, S)
        scores = scores.masked_fill(j > i + (S - T), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)


def make_inputs(B, H, K, T, S, D, dtype, seed=0):
    """Random q (B, H, T, D), k, v (B, K, S, D) leaf tensors and an output gradient, all in `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(shape, generator=gen).to(DEVICE, dtype)
                     for shape in [(B, H, T, D), (B, K, S, D), (B, K, S, D), (B, H, T, D)])
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout


def kernel_and_oracle(q, k, v, dout, causal, scale=None):
    """(out, dq, dk, dv) from the kernel and from the float64 oracle on the same (rounded) inputs."""
    out = flash_attention(q, k, v, causal=causal, scale=scale)
    out.backward(dout)
    ours = [out, q.grad, k.grad, v.grad]
    exact_inputs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    exact_out = oracle_attention(*exact_inputs, causal=causal, scale=scale)
    exact_out.backward(dout.double())
    return ours, [exact_out] + [x.grad for x in exact_inputs]


def assert_close(actual, expected, dtype, name):
    """Max error relative to the reference's largest magnitude (at least 1) must stay under the tolerance."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = (actual.double() - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    assert error <= TOLERANCE[dtype] * scale, f"{name}: max error {error:.3e} vs largest value {scale:.3e}"


def assert_all_close(ours, exact, dtype):
    """out, dq, dk and dv each come back in the input dtype (no fp16 hard-coded anywhere) and match."""
    for name, actual, expected in zip(["out", "dq", "dk", "dv"], ours, exact):
        assert actual.dtype == dtype, f"{name} has dtype {actual.dtype}, expected {dtype}"
        assert_close(actual, expected, dtype, name)


# ------------------------------------------------------------------------------------------------------------
# Output and gradients against the oracle
# ------------------------------------------------------------------------------------------------------------

# (B, H, K, T, S, D, causal, dtype): an economical cover of the axes rather than their full product.
CASES = {
    "t17_gqa1_d32_causal_fp32": (2, 4, 4, 17, 17, 32, True, torch.float32),
    "t100_gqa2_d64_full_fp32": (2, 4, 2, 100, 100, 64, False, torch.float32),
    "t257_gqa4_d64_causal_fp32": (2, 4, 1, 257, 257, 64, True, torch.float32),
    "t1_s1_gqa2_d32_causal_fp32": (3, 2, 1, 1, 1, 32, True, torch.float32),
    "t17_s100_gqa2_d32_causal_prefill_fp32": (2, 4, 2, 17, 100, 32, True, torch.float32),
    "t1_s257_gqa4_d128_causal_decode_fp32": (2, 4, 1, 1, 257, 128, True, torch.float32),
    "t100_s17_gqa2_d32_full_fp32": (2, 2, 1, 100, 17, 32, False, torch.float32),
    "t100_gqa2_d128_causal_fp16": (2, 4, 2, 100, 100, 128, True, torch.float16),
    "t257_gqa4_d32_full_fp16": (2, 4, 1, 257, 257, 32, False, torch.float16),
    "t17_s257_gqa1_d64_causal_prefill_fp16": (2, 2, 2, 17, 257, 64, True, torch.float16),
}


# Under TRITON_INTERPRET the two 257 x 257 cases take ~25 of the file's ~40 s on 2 cores, so they run with
# `-m slow`; several query and key blocks, a ragged last block and GQA 4 stay covered by the others.
SLOW_CASES = {"t257_gqa4_d64_causal_fp32", "t257_gqa4_d32_full_fp16"}


@pytest.mark.exercise("flash_forward")
@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in SLOW_CASES else case
                                  for case in CASES], ids=list(CASES))
def test_output_and_gradients_match_float64_oracle(case):
    B, H, K, T, S, D, causal, dtype = CASES[case]
    q, k, v, dout = make_inputs(B, H, K, T, S, D, dtype)
    assert_all_close(*kernel_and_oracle(q, k, v, dout, causal), dtype)


@pytest.mark.exercise("flash_forward")
@pytest.mark.gpu
@pytest.mark.parametrize("T, S, causal", [(257, 257, True), (100, 100, False), (17, 300, True)])
def test_bfloat16_output_and_gradients_match_float64_oracle_at_phi4_head_shapes(T, S, causal):
    # Phi-4 heads: D = 128 with 4 query heads per KV head (40 / 10), here 8 / 2 to stay small.
    q, k, v, dout = make_inputs(2, 8, 2, T, S, 128, torch.bfloat16)
    assert_all_close(*kernel_and_oracle(q, k, v, dout, causal), torch.bfloat16)


# ------------------------------------------------------------------------------------------------------------
# Properties the model relies on
# ------------------------------------------------------------------------------------------------------------

def test_oracle_matches_torch_sdpa_when_queries_and_keys_align():
    # With T == S, bottom-right and top-left causal masks coincide, so torch's SDPA checks the oracle itself.
    q, k, v, _ = make_inputs(2, 4, 2, 33, 33, 32, torch.float64)
    for causal in (True, False):
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=causal)
        torch.testing.assert_close(oracle_attention(q, k, v, causal), expected)


@pytest.mark.exercise("flash_forward")
def test_chunked_prefill_equals_the_last_rows_of_full_causal_attention():
    # A KV cache holds S keys; the newest T queries must see exactly what they would in one full pass.
    q_full, k, v, _ = make_inputs(2, 4, 2, 100, 100, 32, torch.float32)
    with torch.no_grad():
        expected = oracle_attention(q_full.double(), k.double(), v.double(), causal=True)[:, :, -17:]
        chunk = flash_attention(q_full[:, :, -17:], k, v, causal=True)  # (B, H, 17, D)
    assert_close(chunk, expected, torch.float32, "out")


@pytest.mark.exercise("flash_forward")
def test_explicit_scale_is_used_instead_of_one_over_sqrt_head_dim():
    q, k, v, dout = make_inputs(2, 4, 2, 17, 40, 32, torch.float32)
    assert_all_close(*kernel_and_oracle(q, k, v, dout, causal=True, scale=0.5), torch.float32)


@pytest.mark.exercise("flash_forward")
def test_non_contiguous_inputs_in_the_models_layout_are_handled():
    # The model holds (B, T, H, D) and passes transposed views; the kernel must honour the real strides.
    B, H, K, T, D = 2, 4, 2, 33, 32
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(B, T, H, D, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()  # (B, H, T, D) view
    k = torch.randn(B, T, K, D, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()  # (B, K, T, D) view
    v = torch.randn(B, T, K, D, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()  # (B, K, T, D) view
    dout = torch.randn(B, T, H, D, generator=gen).to(DEVICE).transpose(1, 2)  # (B, H, T, D) view
    assert not q.is_contiguous()
    assert_all_close(*kernel_and_oracle(q, k, v, dout, causal=True), torch.float32)


@pytest.mark.exercise("flash_forward")
def test_causal_attention_never_reads_key_blocks_above_the_diagonal():
    # Poison V beyond the first query block's diagonal with NaN. A masked key still multiplies its value
    # by probability 0 and 0 * NaN = NaN, so finite rows prove those blocks were skipped, not just masked.
    block = min(kernel_module._launch_config(name, 32, torch.float32)["BLOCK_M"] for name in ("fwd", "dq"))
    q, k, v, dout = make_inputs(2, 2, 1, 3 * block, 3 * block, 32, torch.float32)
    clean = oracle_attention(q.detach().double(), k.detach().double(), v.detach().double(), causal=True)
    poisoned_v = v.detach().clone()
    poisoned_v[:, :, block:] = float("nan")
    poisoned_v.requires_grad_()
    out = flash_attention(q, k, poisoned_v, causal=True)
    out.backward(dout)
    assert torch.isfinite(out[:, :, :block]).all() and torch.isfinite(q.grad[:, :, :block]).all()
    assert_close(out[:, :, :block], clean[:, :, :block], torch.float32, "out")


# ------------------------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------------------------

def test_query_heads_not_a_multiple_of_kv_heads_raise_value_error():
    q, k, v, _ = make_inputs(1, 6, 4, 8, 8, 32, torch.float32)
    with pytest.raises(ValueError, match="multiple of the number of KV heads"):
        flash_attention(q, k, v)


@pytest.mark.parametrize("q_shape, kv_shape, causal, message", [
    ((1, 2, 8, 32), (1, 2, 8, 64), False, "head dim differs"),  # q and k/v must share D
    ((1, 2, 9, 32), (1, 2, 8, 32), True, "T <= S"),  # bottom-right causal needs no more queries than keys
    ((2, 8, 32), (1, 2, 8, 32), False, "expects 4-D q"),  # heads not split off
    ((2, 2, 8, 32), (1, 2, 8, 32), False, "q has batch 2 but k and v have batch 1"),
    ((1, 2, 0, 32), (1, 2, 8, 32), False, "B, T and S must be at least 1"),
])
def test_inconsistent_shapes_raise_value_error_saying_why(q_shape, kv_shape, causal, message):
    q = torch.randn(*q_shape, device=DEVICE)
    k = v = torch.randn(*kv_shape, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v, causal=causal)


def test_k_and_v_of_different_shapes_dtypes_or_devices_raise_value_error_saying_why():
    q, k, v = (torch.randn(1, 2, 8, 32, device=DEVICE) for _ in range(3))
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        flash_attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="must share one dtype"):
        flash_attention(q, k, v.double())
    with pytest.raises(ValueError, match="must share one dtype"):
        flash_attention(q.double(), k.double(), v.double())  # float64 is not a kernel dtype
    with pytest.raises(ValueError, match="must be on one device"):
        flash_attention(q, k, v.to("meta"))


def test_cpu_tensors_outside_the_interpreter_raise_runtime_error_saying_what_to_set(monkeypatch):
    monkeypatch.setattr(kernel_module, "INTERPRET", False)
    q = k = v = torch.randn(1, 2, 8, 32)
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        flash_attention(q, k, v)


def test_unsupported_head_dim_raises_value_error():
    q = k = v = torch.randn(1, 2, 8, 48, device=DEVICE)
    with pytest.raises(ValueError, match="not supported"):
        flash_attention(q, k, v)


def test_calling_without_triton_raises_runtime_error(monkeypatch):
    # Simulates a CPU-only PyTorch install, where `import triton` fails and HAS_TRITON is False.
    monkeypatch.setattr(kernel_module, "HAS_TRITON", False)
    q = k = v = torch.randn(1, 2, 8, 32, device=DEVICE)
    with pytest.raises(RuntimeError, match="needs Triton"):
        flash_attention(q, k, v)
