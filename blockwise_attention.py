"""Causal attention for CPU training: query blocks that skip the masked triangle, and backward by hand.

`model.py` selects this with `attn_impl="blockwise"` (`train.py --attn-impl blockwise`, as speedrun.sh's
training stages do). It computes the same function as `model.naive_attention` (grouped-query attention,
causal masks aligned bottom-right, an optional per-row mask) and exists for one reason: on a CPU, torch's
fused attention (`F.scaled_dot_product_attention`, which transformers' Phi3ForCausalLM calls too) is slow,
above all its backward and above all in bf16. At the toy's shape (16 rows x 256 tokens, 4 query heads of 32
sharing 2 KV heads) one layer's forward + backward under bf16 autocast is 1.67x faster here, and the whole
train step 1.19-1.34x transformers' on two kinds of CPU and many hours, 1.29-1.31x in the steadiest runs
(`python bench.py --threads 1 --parts attention,train`; README, "Performance"). Nothing here is CPU-specific in principle; on a GPU the Triton kernel
(flash_attention.py) is the fast path, and it rests on the same two ideas.

Idea 1: query blocks skip the masked triangle
---------------------------------------------
Causal attention's score matrix is half -inf: query t sees keys 0..t only (t + S - T with a cache of
S - T keys before the T queries). Cut the queries into blocks of BLOCK_T positions; block i (positions
[i*BLOCK_T, (i+1)*BLOCK_T)) needs keys [0, S - T + (i+1)*BLOCK_T) only, and the keys after them are never
multiplied, masked, exponentiated or stored. With n blocks the computed part of the T x T matrix is
(n + 1) / (2n) of it: 62.5% at the toy's 4 blocks of 64, 53% at 16 blocks (1,024 tokens). Each block holds
its whole row of visible keys, so its softmax is an ordinary one, in one pass: no running maximum as in
FlashAttention's online softmax, which a CPU with large caches does not need at these lengths.

Idea 2: write the backward instead of letting autograd derive it
----------------------------------------------------------------
Autograd through the written-out forward keeps the scores and the probabilities of every layer and runs
the generic softmax and masking backward over them. The gradients have a closed form, the one FlashAttention
uses (and flash_attention.py's kernels): with P the probabilities, O = P V and dO the incoming gradient,

    dV = P^T dO      dP = dO V^T      dS = P * (dP - delta)      dQ = scale * dS K      dK = scale * dS^T Q

where delta = rowsum(dO * O) (one number per query row, since sum_j P_ij dP_ij = dO_i . O_i). So forward
saves P once and backward is four matmuls per block and two elementwise passes over P, in place. For
grouped-query attention the sum over the G query heads that share a KV head comes out of the matmuls: dK
and dV are never expanded.

Precision: fp32 throughout (fp64 inputs stay fp64), whatever the input dtype and autocast (switched off
inside), with the result cast back to the input dtype. bf16 scores lose the small probabilities. Rounding
P, dP and dS to bf16 as FlashAttention-2 does on a GPU would let the matmuls use the CPU's bf16
instructions: 21.2 against 25.5 ms a layer at the toy's shape, for a rounding per element to reason about
(LAB.md, "Blockwise attention on the CPU", has a recipe run of that version).

Layout
------
q (B, H, T, D) is laid out as (B*K, T*G, D) with row t*G + g: the G query heads of one KV head stacked
under each other, position-major. One batched matmul per KV head then serves its whole group without
repeating K and V, and a block of positions is a contiguous block of rows. The causal bias of a block is
0 where the key is visible and -inf where not, added by the same `baddbmm` that computes the scores; it
depends only on the shapes, so it is made once and reused by every layer and step. Each relayout casts
in the same pass, and the output comes back in the (B, T, H, D) memory layout of the projections around
it, so the model's (B, T, H*D) view of it costs no copy (nor does its gradient's way back in): together
1.03x one layer's forward + backward at 16 x 256, 1.06-1.07x at 4 x 1,024, 1.00-1.02x the toy's train step, the
same numbers to the bit (LAB.md, "Another CPU").

Dims legend: B batch, H query heads, K key/value heads, G = H // K, T queries, S keys, D head dim.
"""
import functools
import math

import torch

BLOCK_T = 64  # query positions per block: 4 at the toy's 256 tokens, 16 at 1,024 (LAB.md: why not 32 or 128)


def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, T, D), k and v (B, K, S, D) -> (B, H, T, D): model.naive_attention's contract.

    causal: query t sees keys s <= t + (S - T) (bottom-right). mask (B, T, S), True where row b's query t
    may see key s, replaces the causal mask (batched generation); with a mask there is one block.
    """
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    if causal and mask is None and T > S:
        raise ValueError(f"causal attention aligns the T queries with the last T of the S keys, so it needs "
                         f"T <= S; got T={T}, S={S}")
    return _BlockwiseAttention.apply(q, k, v, causal and mask is None, mask)


def _rows(x: torch.Tensor, K: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, T, D) -> (B*K, T*G, D) in `dtype`, row t*G + g: a KV head's G query heads, position-major (one copy).
    K and V themselves (H = K, so G = 1) become (B*K, S, D) the same way."""
    B, H, T, D = x.shape
    G = H // K
    rows = torch.empty(B, K, T, G, D, dtype=dtype, device=x.device)
    rows.copy_(x.view(B, K, G, T, D).transpose(2, 3))  # the layout and the cast in one pass
    return rows.view(B * K, T * G, D)  # (B*K, T*G, D)


def _heads(x: torch.Tensor, B: int, H: int, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of _rows: (B*K, T*G, D) -> (B, H, T, D) in `dtype`, laid out in memory as (B, T, H, D), the
    layout of the projections it came from and goes back to, so that neither direction copies again."""
    BK, TG, D = x.shape
    K = BK // B
    G = H // K
    T = TG // G
    heads = torch.empty(B, T, K, G, D, dtype=dtype, device=x.device)
    heads.copy_(x.view(B, K, T, G, D).transpose(1, 2))  # (B, T, K, G, D)
    return heads.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)


def _blocks(T: int, S: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first position, end position, keys visible) of each query block; one block unless causal."""
    if not causal:
        return [(0, T, S)]
    return [(t0, min(t0 + BLOCK_T, T), S - T + min(t0 + BLOCK_T, T)) for t0 in range(0, T, BLOCK_T)]


def _bias(t0: int, t1: int, keys: int, T: int, S: int, G: int, causal: bool, mask, K: int, dtype, device):
    """The additive mask of one block: 0 where visible, -inf where not; (T_blk*G, keys) or (B*K, T_blk*G, keys)."""
    if mask is not None:
        B = mask.shape[0]
        # (B, T, S) -> (B, K, T, G, S) -> (B*K, T*G, S): every head of a row sees what the row's mask allows.
        visible = mask[:, None, t0:t1, None, :keys].expand(B, K, t1 - t0, G, keys).reshape(B * K, (t1 - t0) * G, keys)
        return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
    if causal:
        return _causal_bias(t0, t1, keys, T, S, G, dtype, torch.device(device))
    return None


@functools.lru_cache(maxsize=16)  # a 1,024-token row's 16 blocks; bounded, so long contexts cannot pile biases up
def _causal_bias(t0: int, t1: int, keys: int, T: int, S: int, G: int, dtype, device) -> torch.Tensor:
    """A causal block's bias, (T_blk*G, keys), made once per shape: every layer and step asks for the same ones."""
    position = torch.arange(t0, t1, device=device).repeat_interleave(G)  # (T_blk*G,): row t*G + g is query t
    visible = torch.arange(keys, device=device)[None, :] <= position[:, None] + (S - T)  # (T_blk*G, keys)
    return torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))


class _BlockwiseAttention(torch.autograd.Function):
    """Forward block by block, saving P (fp32); backward from the closed-form gradients above."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, mask):
        B, H, T, D = q.shape
        K, S = k.shape[1], k.shape[2]
        G = H // K
        # fp32 at least (fp64 inputs stay fp64, for the tests' exact reference), whatever autocast would
        # choose (the docstring's "Precision" says what bf16 matmuls would save).
        dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(q.device.type, enabled=False):
            q_rows = _rows(q, K, dtype)  # (B*K, T*G, D)
            k_rows, v_rows = _rows(k, K, dtype), _rows(v, K, dtype)  # (B*K, S, D) each: G = 1, one row a position
            out = torch.empty(B * K, T * G, D, dtype=dtype, device=q.device)
            probs = []
            for t0, t1, keys in _blocks(T, S, causal):
                rows = slice(t0 * G, t1 * G)
                bias = _bias(t0, t1, keys, T, S, G, causal, mask, K, dtype, q.device)
                k_t = k_rows[:, :keys].transpose(1, 2)  # (B*K, D, keys)
                if bias is None:
                    scores = torch.bmm(q_rows[:, rows], k_t).mul_(1.0 / math.sqrt(D))  # (B*K, T_blk*G, keys)
                else:
                    scores = torch.baddbmm(bias, q_rows[:, rows], k_t, alpha=1.0 / math.sqrt(D))  # (B*K, T_blk*G, keys)
                p = torch.softmax(scores, dim=-1)  # (B*K, T_blk*G, keys)
                out[:, rows] = torch.bmm(p, v_rows[:, :keys])  # (B*K, T_blk*G, D)
                probs.append(p)
        ctx.save_for_backward(q_rows, k_rows, v_rows, out, *probs)
        ctx.dims, ctx.causal, ctx.dtypes = (B, H, K, G, T, S, D), causal, (q.dtype, k.dtype, v.dtype)
        return _heads(out, B, H, q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q_rows, k_rows, v_rows, out, *probs = ctx.saved_tensors
        B, H, K, G, T, S, D = ctx.dims
        with torch.autocast(q_rows.device.type, enabled=False):
            do = _rows(grad_out, K, out.dtype)  # (B*K, T*G, D)
            delta = (do * out).sum(-1, keepdim=True)  # (B*K, T*G, 1): rowsum(dO * O)
            dq = torch.empty_like(q_rows)  # (B*K, T*G, D)
            dk, dv = torch.zeros_like(k_rows), torch.zeros_like(v_rows)  # (B*K, S, D): sums over query blocks
            for (t0, t1, keys), p in zip(_blocks(T, S, ctx.causal), probs):
                rows = slice(t0 * G, t1 * G)
                dv[:, :keys].baddbmm_(p.transpose(1, 2), do[:, rows])  # += P^T dO
                dp = torch.bmm(do[:, rows], v_rows[:, :keys].transpose(1, 2))  # (B*K, T_blk*G, keys): dO V^T
                ds = dp.sub_(delta[:, rows]).mul_(p).mul_(1.0 / math.sqrt(D))  # scale * P * (dP - delta), in place
                dq[:, rows] = torch.bmm(ds, k_rows[:, :keys])  # (B*K, T_blk*G, D)
                dk[:, :keys].baddbmm_(ds.transpose(1, 2), q_rows[:, rows])  # += dS^T Q: (B*K, keys, D)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        dq = _heads(dq, B, H, q_dtype)  # (B, H, T, D)
        return dq, dk.view(B, K, S, D).to(k_dtype), dv.view(B, K, S, D).to(v_dtype), None, None
