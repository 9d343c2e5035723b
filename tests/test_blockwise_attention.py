"""blockwise_attention.py: output and hand-written gradients against attention in float64 with autograd.

The oracle is written here with einsum over explicitly repeated KV heads and a visibility matrix built from
index comparisons (or the caller's mask), so it shares no code with the function under test. Cases: lengths
that are and are not multiples of BLOCK_T, queries after a cache (T < S) and one-token decode, GQA ratios
1, 2 and 3, causal and not, a per-row mask, bf16 within the error of torch's own fused attention, and fp32
scores under bf16 autocast.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import blockwise_attention
from blockwise_attention import BLOCK_T, blockwise_attention as attention


def oracle(q, k, v, causal=True, mask=None):
    """softmax(q k^T / sqrt(D) with invisible keys at -inf) v, in q's dtype; mask (B, T, S) replaces causal."""
    B, H, T, D = q.shape
    S, G = k.shape[2], H // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, H, S, D) each
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(D)  # (B, H, T, S)
    if mask is not None:
        visible = mask[:, None]  # (B, 1, T, S)
    else:
        visible = torch.arange(S)[None, :] <= torch.arange(T)[:, None] + (S - T) if causal else torch.ones(T, S, dtype=torch.bool)
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v)  # (B, H, T, D)


def inputs(B, H, K, T, S, D, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                     for shape in [(B, H, T, D), (B, K, S, D), (B, K, S, D), (B, H, T, D)])
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad


def output_and_grads(fn, q, k, v, grad, **kwargs):
    """[out, dq, dk, dv] of fn on fresh leaves copied from q, k, v."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves, **kwargs)
    out.backward(grad)
    return [out.detach()] + [x.grad for x in leaves]


SHAPES = [  # B, H, K, T, S, D
    (2, 4, 2, 2 * BLOCK_T, 2 * BLOCK_T, 16),  # whole blocks
    (2, 6, 2, 100, 100, 8),  # a ragged last block, 3 query heads per KV head
    (1, 2, 2, 2 * BLOCK_T + 1, 2 * BLOCK_T + 1, 8),  # a last block of one position, no grouping
    (2, 4, 2, 70, 130, 8),  # queries after 60 cached keys (chunked prefill)
    (3, 4, 1, 1, 37, 16),  # one-token decode, 4 query heads on one KV head
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}_K{}_T{}_S{}_D{}".format(*s))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_output_and_every_gradient_equal_float64_attention_with_autograd(shape, causal):
    q, k, v, grad = inputs(*shape)
    ours = output_and_grads(attention, q, k, v, grad, causal=causal)
    exact = output_and_grads(oracle, q, k, v, grad, causal=causal)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, exact):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m: f"{name}: {m}")


def test_a_per_row_mask_replaces_the_causal_mask_in_the_output_and_the_gradients():
    # Row 0 sees the last 5 of 9 keys causally (left padding of 4), row 1 sees all 9 causally.
    q, k, v, grad = inputs(2, 4, 2, 3, 9, 8)
    causal = torch.arange(9)[None, :] <= torch.arange(3)[:, None] + 6  # (T, S)
    mask = causal.repeat(2, 1, 1)  # (B, T, S)
    mask[0, :, :4] = False
    ours = output_and_grads(attention, q, k, v, grad, mask=mask)
    exact = output_and_grads(oracle, q, k, v, grad, mask=mask)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, exact):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m: f"{name}: {m}")
    assert ours[2][0, :, :4].abs().max() == 0  # the padding's keys got no gradient


def test_bf16_errors_are_no_larger_than_twice_those_of_torchs_fused_attention():
    # The toy's layer: 16 rows x 256 tokens, 4 query heads of 32 on 2 KV heads. fp32 softmax, P and dS
    # rounded to bf16 as matmul operands only (as FlashAttention-2 does): about one bf16 rounding.
    # Queries x4: scores up to ~40, where a bf16 score is off by up to 0.125 and so is a logit of the softmax.
    q, k, v, grad = inputs(4, 4, 2, 256, 256, 32, dtype=torch.bfloat16)
    q = (4 * q.detach()).requires_grad_()
    exact = output_and_grads(oracle, *(x.double() for x in (q, k, v, grad)))
    ours = output_and_grads(attention, q, k, v, grad)
    fused = output_and_grads(lambda *x: F.scaled_dot_product_attention(*x, is_causal=True, enable_gqa=True), q, k, v, grad)
    for name, a, f, e in zip(["out", "dq", "dk", "dv"], ours, fused, exact):
        assert a.dtype == torch.bfloat16, name
        ours_error, fused_error = (a.double() - e).abs().max().item(), (f.double() - e).abs().max().item()
        assert ours_error <= 2 * fused_error, f"{name}: {ours_error:.2e} vs sdpa's {fused_error:.2e}"


def test_under_bf16_autocast_the_scores_stay_fp32():
    # Autocast would run the score matmul in bf16; inside, it is switched off, so fp32 inputs give the
    # same output with or without it.
    q, k, v, _ = inputs(2, 4, 2, 100, 100, 16, dtype=torch.float32)
    plain = attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = attention(q, k, v)
    torch.testing.assert_close(autocast, plain, atol=0, rtol=0)


def test_the_output_and_the_query_gradient_come_back_in_the_projections_layout_in_the_inputs_dtype():
    # The model views the output as (B, T, H*D) and q_proj's gradient is (B, T, H*D): laid out as (B, T, H, D),
    # neither view copies. A bf16 input gets bf16 back, computed in fp32 inside.
    q, k, v, grad = inputs(2, 4, 2, 70, 70, 16, dtype=torch.bfloat16)
    out = attention(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)  # as the layers below receive them (not .grad,
    for x in (out, dq):                                       # which takes its leaf's layout)
        assert x.dtype == torch.bfloat16 and x.shape == (2, 4, 70, 16)
        assert x.transpose(1, 2).is_contiguous()  # (B, T, H, D) in memory: .view(B, T, H * D) works
    assert dk.dtype == dv.dtype == torch.bfloat16


def test_a_causal_blocks_bias_is_made_once_and_never_written_to():
    first = blockwise_attention._bias(64, 128, 128, 200, 200, 2, True, None, 2, torch.float32, torch.device("cpu"))
    q, k, v, grad = inputs(1, 2, 1, 200, 200, 8, dtype=torch.float32)
    output_and_grads(attention, q, k, v, grad)  # uses the same bias, from the cache
    again = blockwise_attention._bias(64, 128, 128, 200, 200, 2, True, None, 2, torch.float32, torch.device("cpu"))
    assert again is first
    rows = torch.arange(64, 128).repeat_interleave(2)[:, None]  # (128, 1): row t*G + g is query t
    assert torch.equal(first == 0, torch.arange(128)[None, :] <= rows)  # 0 where visible, -inf elsewhere


def test_causal_attention_with_more_queries_than_keys_is_refused():
    q, k, v, _ = inputs(1, 2, 1, 5, 4, 8)
    with pytest.raises(ValueError, match="T <= S"):
        attention(q, k, v, causal=True)


def test_the_blocks_skip_every_key_a_block_cannot_see_and_cover_every_query():
    blocks = blockwise_attention._blocks(T=200, S=260, causal=True)  # 60 cached keys, then 200 queries
    assert [b[0] for b in blocks] == list(range(0, 200, BLOCK_T))
    assert blocks[-1][1] == 200
    for t0, t1, keys in blocks:
        assert keys == 60 + t1  # the last query of the block (t1 - 1) sees keys 0 .. 60 + t1 - 1


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_a_model_step_with_blockwise_attention_gives_the_loss_and_gradients_of_sdpa(tiny_model):
    # The same weights and batch through both attentions (the blocks share one config object), two blocks
    # of queries and a ragged third: the same loss and the same gradient of every weight.
    T = 2 * BLOCK_T + 5
    model = tiny_model(max_seq_len=T, attn_impl="sdpa")
    idx = torch.randint(0, 61, (2, T + 1), generator=torch.Generator().manual_seed(0))
    results = {}
    for impl in ("sdpa", "blockwise"):
        model.config.attn_impl = impl
        model.zero_grad(set_to_none=True)
        loss = model(idx[:, :-1], targets=idx[:, 1:])
        loss.backward()
        results[impl] = (loss.detach(), {name: p.grad for name, p in model.named_parameters()})
    torch.testing.assert_close(results["blockwise"][0], results["sdpa"][0], atol=1e-6, rtol=1e-6)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["blockwise"][1][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
