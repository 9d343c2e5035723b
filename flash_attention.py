"""FlashAttention-2 in Triton: forward and backward, causal, grouped-query attention, any length.

This is the attention kernel that `model.py` uses with `attn_impl="triton"`, written to be read. Phi-4 is a
40-layer decoder with 40 query heads and 10 KV heads of dimension 128 (Phi-4 report, section 3), trained at
4K and then 16K context: at those lengths the attention score matrix, not the weights, decides what fits in
GPU memory. This file shows how attention is computed without ever storing that matrix.

What is computed
----------------
For one (batch, head): queries Q (T, D), keys K (S, D), values V (S, D) and a scale (default 1/sqrt(D)):

    O = softmax(scale * Q K^T + mask) V             (softmax over the S keys of each query row)

Written naively that materialises the (T, S) score matrix: at T = S = 16K it is 256M numbers per head, 1 GiB
in fp32, times 40 heads, times the batch. FlashAttention never writes it to GPU memory (HBM). Each program
instance of the kernel owns BLOCK_M query rows of one (batch, head), keeps a (BLOCK_M, D) output
accumulator in registers, and walks over K and V in blocks of BLOCK_N keys; only one (BLOCK_M, BLOCK_N)
tile of scores exists at a time, on chip. FlashAttention-2 (Dao, 2023) puts the key loop inside and spreads
the query blocks over the GPU, so each program writes its output once, with no atomics.

The online softmax, in prose
----------------------------
A softmax row needs its maximum (for numerical stability) and its sum, but the kernel sees only BLOCK_N
keys at a time. So for every query row it keeps three running quantities over the keys seen so far:

    m    the largest score seen so far;
    l    the sum, over the keys seen, of exp(score - m);
    acc  the sum, over the keys seen, of exp(score - m) * v   (a D-vector).

The invariant after each key block is: acc / l is exactly the attention output of this row restricted to
the keys seen so far. When the next block arrives with scores s_j, the maximum may grow to
m' = max(m, max_j s_j). Everything accumulated so far was measured against the old m, so l and acc are
first multiplied by the correction exp(m - m') (at most 1, so nothing overflows), then the new terms
exp(s_j - m') and exp(s_j - m') * v_j are added. After the last block O = acc / l: one division per row, not
per block. The row's log-sum-exp, LSE = m + log(l), is the single number per row that backward needs.

A worked example, one row, keys arriving two then one, scores (1, 2) and then (3):

    block 1:  m = 2   l = e^-1 + e^0                acc = e^-1 v1 + e^0 v2
    block 2:  m = 3   correction e^(2-3) = e^-1
              l = (e^-1 + 1) e^-1 + e^0 = e^-2 + e^-1 + 1      acc = e^-2 v1 + e^-1 v2 + v3

and acc / l = (e^-2 v1 + e^-1 v2 + v3) / (e^-2 + e^-1 + 1) is exactly softmax(1, 2, 3) . (v1, v2, v3),
although no step ever saw all three scores at once. Subtracting the running max keeps every exponent <= 0,
so nothing overflows in fp32 however large the scores are.

Why base 2
----------
GPUs evaluate 2^x in hardware (the `ex2.approx` instruction); exp(x) is computed as 2^(x * log2(e)), an extra
multiply for every score. We fold log2(e) into the softmax scale once: scores are (q . k) * scale * log2(e)
and are exponentiated with exp2. Since 2^(x log2 e) = e^x, the softmax is unchanged. The running max m and
the saved LSE live in these base-2 units (LSE is a log2-sum-exp2) and backward uses the same convention, so
nothing is ever converted back.

Causal masking, bottom-right, and how the loop is split
-------------------------------------------------------
Query row i (0 <= i < T) may see key j (0 <= j < S) when j <= i + (S - T). With T == S this is the usual
lower triangle. With T < S the queries are the *last* T positions of the sequence (a chunk of new tokens
after S - T cached ones: chunked prefill, or T = 1 decoding) and each sees the whole cache plus its own
prefix: this "bottom-right" alignment is what a KV cache needs (T > S is rejected when causal).

For a query block [m0, m0 + BLOCK_M) the key loop runs in two stages:

  1. off-diagonal blocks: key blocks whose every key is visible to every row of the query block
     (last key <= m0 + S - T). No mask is computed at all: this is most of the work and the fastest loop.
  2. diagonal blocks: the few key blocks that straddle the diagonal, with the per-element causal mask
     (and the mask for keys past S in a ragged last block).

Key blocks entirely above the diagonal are never loaded: that is where causal attention saves half the
work. Without the causal mask, stage 1 covers every full key block and stage 2 only the ragged last one.

Any length
----------
Loads and stores are masked at the ragged edges: padding query rows read zeros and are never written,
padding keys get score -inf (probability 0). T and S need not be multiples of any block size; T = 1, 17,
100 and 257 are all tested. Masking beats padding the inputs to a multiple of the block: a padded copy
of Q, K and V would cost a full extra pass over HBM, while the mask is one comparison per element, paid
only in the blocks that can be ragged (the last query block, and the masked key stage below).

Backward: recompute instead of store
------------------------------------
Gradients need the probabilities P = softmax(scale * Q K^T) of every (query, key) pair. Storing P costs
O(T * S) memory per head, the very thing forward avoided. So forward keeps only O and the per-row LSE (O(T)
extra memory), and backward recomputes each tile P_ij = exp2(s_ij - LSE_i) from Q, K and the saved LSE: one
extra matmul per tile, far cheaper than reading a T x S matrix back from HBM. With dO the gradient of O:

    dV = P^T dO      dP = dO V^T      dS = P * (dP - delta)      dQ = scale * dS K      dK = scale * dS^T Q

where delta_i = sum_j P_ij dP_ij, which equals rowsum(dO * O)_i and so needs only O and dO: a tiny
preprocess kernel computes it first. Then two kernels run:

  - dK/dV: one program per block of keys of one KV head. It keeps K, V and the dK, dV accumulators in
    registers and loops over the query blocks that can see those keys, and (for grouped-query attention)
    over every query head that shares this KV head. The sum over the group happens in registers: K and V
    are never repeated in memory and no atomic adds are needed.
  - dQ: one program per query block, looping over key blocks exactly like forward.

Both mirror forward's causal split into unmasked and diagonal blocks.

Grouped-query attention (GQA)
-----------------------------
Query head h reads KV head h // (H / K) through index arithmetic, so Phi-4's 40 query heads share 10 KV
heads without copying K and V four times.

Supported shapes and dtypes
---------------------------
q (B, H, T, D); k and v (B, K, S, D) with H a multiple of K; D in 16, 32, 64, 128; any B, T, S >= 1 (causal
needs T <= S); any strides (the model's (B, T, H, D) tensors transposed to (B, H, T, D) are fine). dtypes
fp32, fp16, bf16: matmuls accumulate in fp32, the softmax statistics (m, l, LSE, delta) are fp32, P and dS
are rounded to the input dtype only as matmul operands (as FA-2 does), and every output is in the input
dtype. fp32 inputs use exact fp32 dots, not TF32, so fp32 results match a float32 reference closely.

Simplified on purpose: no dropout, no attention bias or ALiBi, no sliding window, no packed variable-length
batches, and block sizes come from simple rules (`_launch_config`) instead of autotuning.

Run it
------
    python -m pytest tests/test_flash_attention.py -q   # CPU: Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
    python flash_attention.py --bench                   # CUDA GPU: TFLOP/s vs torch SDPA, and a bf16 check at Phi-4 shapes
    python flash_attention.py --compile-for 90 --dump out/ptx   # any machine: the kernels compiled for an H100, their PTX
    python flash_attention.py --help

`import flash_attention` works also where Triton is not installed (CPU-only or macOS builds of PyTorch):
`HAS_TRITON` says whether the kernel can run, and calling it without Triton raises a clear RuntimeError.
The file sits beside model.py rather than in a `kernels/` package because transformers imports a package of
that name (Hugging Face's kernel hub), and a folder of ours with the same name would shadow it.

Dims legend used in the shape comments: B batch, H query heads, K key/value heads, T queries, S keys,
D head dim; BLOCK_M / BLOCK_N are the query / key tile sizes inside the kernels.
"""
import functools
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import types

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only or macOS builds of PyTorch ship without Triton
    HAS_TRITON = False
    # Stand-ins so that the kernel definitions below still parse: `@triton.jit` leaves each kernel as a plain
    # Python function that is never called, and the `tl.constexpr` annotations resolve to a placeholder.
    # `flash_attention` checks HAS_TRITON first and raises a clear error instead.
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = types.SimpleNamespace(constexpr=None)

# Triton decides between compiling for the GPU and interpreting with numpy when a kernel is *decorated*,
# from this environment variable; tests/conftest.py sets it before anything imports this module.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2_E = math.log2(math.e)  # 1.4426...: exp(x) == exp2(x * LOG2_E)
# D is a tile dimension inside the kernels: tl.arange needs a power of two and tl.dot needs every dimension
# >= 16. Above 128 the fp32 (BLOCK_M, D) accumulators crowd the registers at useful tile sizes (Phi-4: 128).
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------------------
# Tile helpers shared by all kernels
# ------------------------------------------------------------------------------------------------------------
# `@triton.jit` functions called from a kernel are inlined into it when it is compiled, so these helpers cost
# nothing at run time; they exist so that the bounds and masking rules are written (and checked) only once.

@triton.jit
def _load_tile(ptr, offs_rows, offs_d, stride_row, stride_d, n_rows, CHECK_BOUNDS: tl.constexpr):
    """Load the (rows, D) tile at rows offs_rows of a (n_rows, D) matrix; rows >= n_rows read as zeros.

    A tile of pointers is a column of row offsets plus a row of column offsets, broadcast to one address per
    element; multiplying by the strides (in elements) is what lets any memory layout through. With
    CHECK_BOUNDS=False the caller guarantees every row exists, and the load carries no mask at all.
    """
    ptrs = ptr + offs_rows[:, None] * stride_row + offs_d[None, :] * stride_d  # (rows, D)
    if CHECK_BOUNDS:
        # Padding rows of a ragged last block become zeros: a zero query or key gives score 0 and a zero
        # value or output gradient adds nothing; the callers mask scores or skip stores where that matters.
        tile = tl.load(ptrs, mask=offs_rows[:, None] < n_rows, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _mask_scores(scores, offs_m, offs_n, S, causal_offset, CAUSAL: tl.constexpr):
    """Set to -inf the (BLOCK_M, BLOCK_N) scores of keys that query row i must not see; exp2(-inf) = 0.

    A key is visible if it exists (j < S) and, for causal attention, is not in row i's future under
    bottom-right alignment (j <= i + S - T, with causal_offset = S - T). Forward and dQ share this rule.
    """
    visible = offs_n[None, :] < S  # (1, BLOCK_N), broadcasts over the rows
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_offset)  # (BLOCK_M, BLOCK_N)
    return tl.where(visible, scores, float("-inf"))


# ------------------------------------------------------------------------------------------------------------
# Forward kernel
# ------------------------------------------------------------------------------------------------------------

@triton.jit
def _fwd_inner(
    acc, row_max, row_sum,  # online-softmax state of this query block: (BLOCK_M, D), (BLOCK_M,), (BLOCK_M,)
    q,  # (BLOCK_M, D) the query block, loaded once by the caller
    k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,  # K and V of this (batch, KV head)
    offs_m, offs_d, n_lo, n_hi, S, causal_offset, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold key blocks [n_lo, n_hi) into the running softmax state; MASKED selects the diagonal stage.

    MASKED, CAUSAL and the tile sizes are tl.constexpr: Triton compiles one specialised copy of this loop per
    combination, so the unmasked stage contains no mask code at all rather than a branch that is never taken.
    """
    for n_start in range(n_lo, n_hi, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) absolute key positions of this block
        # Only the diagonal stage can hold the ragged last key block, so only it pays for bounds checks.
        k = _load_tile(k_ptr, offs_n, offs_d, stride_kn, stride_kd, S, CHECK_BOUNDS=MASKED)  # (BLOCK_N, D)
        # Scores in base-2 units: qk_scale = scale * log2(e), so exp2 of these is exp of the true scores.
        # tl.trans only changes how the tile is read (K^T is (D, BLOCK_N)); no data is moved in memory.
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            scores = _mask_scores(scores, offs_m, offs_n, S, causal_offset, CAUSAL)
        # The online-softmax step. The new running max includes this block. Every row has seen key 0 in its
        # first block (T <= S when causal), so new_max is finite and no -inf - -inf = NaN can appear.
        # BEGIN SOLUTION flash_forward: new max; probs = exp2(scores - max); rescale row_sum, acc by exp2(old - new max); acc += probs @ V
        new_max = tl.maximum(row_max, tl.max(scores, 1))  # (BLOCK_M,)
        probs = tl.exp2(scores - new_max[:, None])  # (BLOCK_M, BLOCK_N), unnormalised, each in [0, 1]
        # What was accumulated against the old max is rescaled to the new one; exp2(-inf) = 0 on the first block.
        correction = tl.exp2(row_max - new_max)  # (BLOCK_M,), <= 1
        row_sum = row_sum * correction + tl.sum(probs, 1)
        acc = acc * correction[:, None]
        # V is loaded only now, after the softmax arithmetic, so its load overlaps with that work.
        v = _load_tile(v_ptr, offs_n, offs_d, stride_vn, stride_vd, S, CHECK_BOUNDS=MASKED)  # (BLOCK_N, D)
        # P is rounded to the input dtype so the tensor cores can multiply it; the sum stays in fp32: passing
        # acc= makes the matmul add into the accumulator instead of producing a new tile to add afterwards.
        acc = tl.dot(probs.to(v.dtype), v, acc=acc, input_precision=DOT_PRECISION)  # (BLOCK_M, D)
        row_max = new_max
        # END SOLUTION flash_forward
    return acc, row_max, row_sum


@triton.jit
def _key_stages(m_start, causal_offset, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Where a query block's key loop switches from unmasked blocks to masked ones, and where it ends.

    Keys [0, n_full) need no mask; keys [n_full, n_end) need the causal (or ragged-tail) mask; keys from
    n_end on are never loaded. Shared by the forward and the dQ kernel, which walk keys the same way.
    """
    if CAUSAL:
        # Stage 1 ends at the last key block that even the block's first row (m_start) sees entirely:
        # keys < m_start + causal_offset + 1, rounded down to whole blocks. All operands are >= 0 here.
        # The first row is the one that sees the fewest keys, so what it sees, every row of the block sees.
        # n_full <= S always (m_start <= T - 1, so m_start + S - T + 1 <= S): the unmasked stage, which
        # loads K and V without bounds checks, can never read past the last key.
        n_full = ((m_start + causal_offset + 1) // BLOCK_N) * BLOCK_N
        # Stage 2 ends past the last key the block's last row can see; later key blocks are never loaded.
        # This bound is why causal attention costs about half of full attention: the loop simply stops.
        # It is not rounded up to a whole block: keys past it are masked like keys past S, and the min
        # with S keeps the ragged last query block from reaching past the end of K and V.
        n_end = tl.minimum(m_start + BLOCK_M + causal_offset, S)
    else:
        # No causal mask: every whole key block is unmasked, only the ragged tail past S needs a mask.
        n_full = (S // BLOCK_N) * BLOCK_N
        n_end = S
    return n_full, n_end


@triton.jit
def _query_block_program(q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
                         group_size, BLOCK_M: tl.constexpr):
    """Which query block this program of the (cdiv(T, BLOCK_M), H, B) grid owns, and where its Q, K, V are.

    Returns m_start (first query row), batch and head (int64, to offset this head's other tensors), and
    q_ptr, k_ptr, v_ptr moved to this (batch, head) and its KV head. Forward and dQ map programs alike.
    The query-block axis comes first because program_id(0) varies fastest when the GPU schedules programs:
    neighbouring programs then work on the same (batch, head) and read the same K and V, which stay in L2.
    """
    m_start = tl.program_id(0) * BLOCK_M
    head = tl.program_id(1)
    # GQA: consecutive groups of `group_size` query heads share one KV head, so query head h reads KV head
    # h // group_size (Phi-4: heads 0..3 read KV head 0, heads 4..7 KV head 1, and so on).
    kv_head = (head // group_size).to(tl.int64)
    # Offsets in int64: batch * batch_stride overflows int32 for large batches of long sequences.
    batch = tl.program_id(2).to(tl.int64)
    head = head.to(tl.int64)
    # Real strides, so batch > 1 and transposed views (the model's (B, T, H, D) layout) work unchanged.
    q_ptr += batch * stride_qb + head * stride_qh
    k_ptr += batch * stride_kb + kv_head * stride_kh
    v_ptr += batch * stride_vb + kv_head * stride_vh
    return m_start, batch, head, q_ptr, k_ptr, v_ptr


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_lb, stride_lh,
    T, S, group_size, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, query head). Grid: (cdiv(T, BLOCK_M), H, B).

    Each stride_* argument is one tensor's stride (in elements) along (batch, head, sequence, head dim).
    T, S and group_size are ordinary runtime integers, so a new sequence length does not trigger a new
    compilation; only the tl.constexpr arguments are baked into the compiled kernel.
    """
    # Which tile this program owns: the grid's three axes are (query block, query head, batch).
    m_start, batch, head, q_ptr, k_ptr, v_ptr = _query_block_program(
        q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, group_size, BLOCK_M)
    # The outputs of this (batch, head): O in its own layout, LSE as (B, H, T).
    out_ptr += batch * stride_ob + head * stride_oh
    lse_ptr += batch * stride_lb + head * stride_lh

    offs_m = m_start + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows of this program
    offs_d = tl.arange(0, HEAD_DIM)  # (D,)
    # Rows past T (the ragged last query block) load zeros; they are computed but never stored. They cannot
    # produce NaN either: their scores are all 0 and, being "later" than every real row, they see every key.
    q = _load_tile(q_ptr, offs_m, offs_d, stride_qt, stride_qd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)

    # The online-softmax state starts empty: max -inf, sum 0, accumulator 0. All three stay fp32.
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Bottom-right causal alignment: row i sees keys j <= i + causal_offset.
    # Worked example, T = S = 100, BLOCK_M = 32, BLOCK_N = 16, the query block of rows 32..63:
    # stage 1 runs keys 0..31 with no mask (row 32 sees keys 0..32), stage 2 runs keys 32..63 with the
    # mask, and keys 64..99 (the future of every row here) are never touched.
    causal_offset = S - T
    n_full, n_end = _key_stages(m_start, causal_offset, S, BLOCK_M, BLOCK_N, CAUSAL)
    acc, row_max, row_sum = _fwd_inner(
        acc, row_max, row_sum, q, k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, 0, n_full, S, causal_offset, qk_scale,
        BLOCK_N=BLOCK_N, MASKED=False, CAUSAL=CAUSAL, DOT_PRECISION=DOT_PRECISION)
    acc, row_max, row_sum = _fwd_inner(
        acc, row_max, row_sum, q, k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, n_full, n_end, S, causal_offset, qk_scale,
        BLOCK_N=BLOCK_N, MASKED=True, CAUSAL=CAUSAL, DOT_PRECISION=DOT_PRECISION)

    # acc / l is the attention output (the invariant, now over all keys). LSE = m + log2(l), in base 2:
    # since m is a max of base-2 scores and l a sum of exp2, LSE is log2 of the row's softmax denominator.
    # row_sum >= 1 for every row (its own max contributes exp2(0) = 1), so the division is always safe.
    out = acc / row_sum[:, None]  # (BLOCK_M, D)
    lse = row_max + tl.log2(row_sum)  # (BLOCK_M,)
    # Only real rows are written: the output is cast back to the input dtype, LSE stays fp32 for backward.
    row_ok = offs_m < T
    tl.store(out_ptr + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + offs_m, lse, mask=row_ok)


# ------------------------------------------------------------------------------------------------------------
# Backward kernels: delta = rowsum(dO * O), then dK/dV, then dQ
# ------------------------------------------------------------------------------------------------------------
# Why two gradient kernels rather than one? dQ is a sum over keys and dK, dV are sums over queries. A single
# loop nest can keep only one side's sum in registers; the other would be spread over many programs and need
# atomic adds to HBM (slow, and the order of float additions becomes nondeterministic). FA-2 instead runs the
# loop twice, once keyed by key blocks (dK, dV) and once by query blocks (dQ), recomputing the scores in each:
# two extra matmuls per tile buy deterministic results with no atomics.

@triton.jit
def _bwd_delta_kernel(
    out_ptr, dout_ptr, delta_ptr,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_lb, stride_lh,
    T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = sum_d dO_id * O_id for BLOCK_M rows of one (batch, head); equals sum_j P_ij dP_ij.

    Why they are equal: dP_ij = dO_i . v_j, so sum_j P_ij dP_ij = dO_i . (sum_j P_ij v_j) = dO_i . O_i.
    Computing it from O costs D multiplies per row instead of S. It is a kernel of its own, run before the
    other two, because the dK/dV kernel needs delta of every query row: computed inside it, each of the
    cdiv(S, BLOCK_N) key-block programs would redo the same sums.
    """
    # The grid is (query block, head, batch), like forward; delta is stored with the same layout as LSE.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    out_ptr += batch * stride_ob + head * stride_oh
    dout_ptr += batch * stride_gb + head * stride_gh
    offs_d = tl.arange(0, HEAD_DIM)  # (D,)
    out = _load_tile(out_ptr, offs_m, offs_d, stride_ot, stride_od, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
    dout = _load_tile(dout_ptr, offs_m, offs_d, stride_gt, stride_gd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
    # Multiply in fp32: this is a D-long dot product per row and bf16 products would lose digits.
    delta = tl.sum(out.to(tl.float32) * dout.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(delta_ptr + batch * stride_lb + head * stride_lh + offs_m, delta, mask=offs_m < T)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv,  # (BLOCK_N, D) fp32 accumulators of this key block
    k, v,  # (BLOCK_N, D) this key block, held in registers across all query blocks and heads
    q_ptr, dout_ptr, lse_ptr, delta_ptr, stride_qt, stride_qd, stride_gt, stride_gd,  # one query head
    offs_n, offs_d, m_lo, m_hi, T, causal_offset, qk_scale,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add the contributions of query blocks [m_lo, m_hi) of one query head to dK and dV of one key block.

    Works on transposed tiles (keys along rows, queries along columns) so that the results land directly
    in the (BLOCK_N, D) shape of dK and dV without transposing the big accumulators.
    """
    for m_start in range(m_lo, m_hi, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows of this block
        # Each query block is streamed in once per (key block, head): q, dO, LSE and delta of its rows.
        row_ok = offs_m < T
        # The query side is always bounds-checked: the last query block of either stage may be ragged.
        # Padding rows load q = 0, dO = 0 and LSE = +inf, so their P is exp2(-inf) = 0 and they add nothing.
        q = _load_tile(q_ptr, offs_m, offs_d, stride_qt, stride_qd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
        dout = _load_tile(dout_ptr, offs_m, offs_d, stride_gt, stride_gd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
        lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=float("inf"))  # (BLOCK_M,), base 2
        delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
        # Recompute the probabilities from the saved LSE: P^T_ji = exp2(s_ij - LSE_i). No running max is
        # needed any more: LSE is the exact normaliser, so this is already the final softmax.
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        if MASKED:
            # Causal diagonal: key j is in the future of query i when j > i + S - T.
            visible = offs_n[:, None] <= offs_m[None, :] + causal_offset  # (BLOCK_N, BLOCK_M)
            scores_t = tl.where(visible, scores_t, float("-inf"))
        probs_t = tl.exp2(scores_t - lse[None, :])  # (BLOCK_N, BLOCK_M)
        # dV += P^T dO: each key's value gradient is the probability-weighted sum of the output gradients.
        dv = tl.dot(probs_t.to(dout.dtype), dout, acc=dv, input_precision=DOT_PRECISION)  # (BLOCK_N, D)
        # dP^T = V dO^T, then the softmax backward dS = P * (dP - delta), still transposed. This is the
        # softmax Jacobian applied row by row: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik), and delta is that sum.
        dprobs_t = tl.dot(v, tl.trans(dout), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        dscores_t = probs_t * (dprobs_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
        # dK += dS^T Q (the softmax scale is applied once, after all loops).
        dk = tl.dot(dscores_t.to(q.dtype), q, acc=dk, input_precision=DOT_PRECISION)  # (BLOCK_N, D)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_lb, stride_lh,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    T, S, group_size, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program = BLOCK_N keys of one (batch, KV head). Grid: (cdiv(S, BLOCK_N), K, B).

    Strides as in _fwd_kernel; the stride_g* are dO's and stride_l* are shared by LSE and delta.
    """
    # The grid runs over KV heads, not query heads: each program owns its dK, dV rows outright.
    n_start = tl.program_id(0) * BLOCK_N
    kv_head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key positions of this program
    offs_d = tl.arange(0, HEAD_DIM)  # (D,)
    key_ok = offs_n[:, None] < S  # (BLOCK_N, 1) padding keys load zeros and are never stored

    # K and V of this block are loaded once and reused for every query block of every head in the group.
    k = _load_tile(k_ptr + batch * stride_kb + kv_head * stride_kh, offs_n, offs_d, stride_kn, stride_kd, S,
                   CHECK_BOUNDS=True)  # (BLOCK_N, D)
    v = _load_tile(v_ptr + batch * stride_vb + kv_head * stride_vh, offs_n, offs_d, stride_vn, stride_vd, S,
                   CHECK_BOUNDS=True)  # (BLOCK_N, D)
    # fp32 accumulators, whatever the input dtype: many small contributions are summed into them.
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    causal_offset = S - T
    if CAUSAL:
        # Which query rows can see which of these keys? Row i sees key j when i >= j - causal_offset.
        # Rows before m_lo see none of them (skipped); from m_full on, every row sees every key of the
        # block (no mask); in between lie the diagonal blocks that need the mask. Operands of // are >= 0.
        # Example, T = S = 100, BLOCK_N = 32, BLOCK_M = 16, the program for keys 32..63: query rows 0..31
        # are skipped (m_lo = 32), rows 32..63 run masked (m_full = 64), rows 64..99 run unmasked.
        m_lo = (tl.maximum(n_start - causal_offset, 0) // BLOCK_M) * BLOCK_M
        m_full = ((tl.maximum(n_start + BLOCK_N - 1 - causal_offset, 0) + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        m_full = tl.minimum(m_full, T)
    else:
        m_lo = 0
        m_full = 0

    # GQA: this KV head served query heads kv_head * group_size ... + group_size - 1 in forward, so its
    # gradient is the sum of theirs. Looping over them here keeps the sum in registers: no atomics.
    for g in range(0, group_size):
        # Query head h uses KV head h // group_size, so KV head kv_head serves these query heads.
        head = kv_head * group_size + g
        q_head_ptr = q_ptr + batch * stride_qb + head * stride_qh
        dout_head_ptr = dout_ptr + batch * stride_gb + head * stride_gh
        lse_head_ptr = lse_ptr + batch * stride_lb + head * stride_lh
        delta_head_ptr = delta_ptr + batch * stride_lb + head * stride_lh
        # First the query blocks [m_lo, m_full) that straddle the diagonal of these keys: masked.
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_head_ptr, dout_head_ptr, lse_head_ptr, delta_head_ptr,
            stride_qt, stride_qd, stride_gt, stride_gd, offs_n, offs_d, m_lo, m_full, T, causal_offset, qk_scale,
            BLOCK_M=BLOCK_M, MASKED=True, DOT_PRECISION=DOT_PRECISION)
        # Then every query block at or after m_full, which sees all of these keys: no mask.
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, q_head_ptr, dout_head_ptr, lse_head_ptr, delta_head_ptr,
            stride_qt, stride_qd, stride_gt, stride_gd, offs_n, offs_d, m_full, T, T, causal_offset, qk_scale,
            BLOCK_M=BLOCK_M, MASKED=False, DOT_PRECISION=DOT_PRECISION)

    # The scores were scale * q.k, so d(score)/dk = scale * q: apply the scale once here. It is `scale`,
    # not qk_scale: the recomputed P is the true softmax (exp2 of base-2 scores equals exp of natural ones),
    # so dS = P * (dP - delta) is already the gradient with respect to the natural-unit scores and log2(e)
    # never enters the gradients.
    dk = dk * scale
    # Round to the input dtype only now, after every contribution was summed in fp32; padding keys
    # (rows past S) are not written.
    tl.store(dk_ptr + batch * stride_dkb + kv_head * stride_dkh
             + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk.to(dk_ptr.dtype.element_ty), mask=key_ok)
    tl.store(dv_ptr + batch * stride_dvb + kv_head * stride_dvh
             + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(dv_ptr.dtype.element_ty), mask=key_ok)


@triton.jit
def _bwd_dq_inner(
    dq,  # (BLOCK_M, D) fp32 accumulator
    q, dout, lse, delta,  # (BLOCK_M, D), (BLOCK_M, D), (BLOCK_M,), (BLOCK_M,) this query block
    k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,
    offs_m, offs_d, n_lo, n_hi, S, causal_offset, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add the contributions of key blocks [n_lo, n_hi) to dQ of one query block (same stages as forward)."""
    for n_start in range(n_lo, n_hi, BLOCK_N):
        # K and V stream through this loop; the query block's own tiles stay put in registers.
        offs_n = n_start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        k = _load_tile(k_ptr, offs_n, offs_d, stride_kn, stride_kd, S, CHECK_BOUNDS=MASKED)  # (BLOCK_N, D)
        v = _load_tile(v_ptr, offs_n, offs_d, stride_vn, stride_vd, S, CHECK_BOUNDS=MASKED)  # (BLOCK_N, D)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            scores = _mask_scores(scores, offs_m, offs_n, S, causal_offset, CAUSAL)
        # Same recomputation as in the dK/dV kernel, untransposed this time: P, then dP = dO V^T and dS.
        probs = tl.exp2(scores - lse[:, None])  # (BLOCK_M, BLOCK_N)
        dprobs = tl.dot(dout, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        dscores = probs * (dprobs - delta[:, None])  # (BLOCK_M, BLOCK_N)
        # dQ += dS K; like P in forward, dS is rounded to the input dtype only as a matmul operand.
        dq = tl.dot(dscores.to(k.dtype), k, acc=dq, input_precision=DOT_PRECISION)  # (BLOCK_M, D)
    return dq


@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    T, S, group_size, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, query head). Grid: (cdiv(T, BLOCK_M), H, B).

    Strides as in _bwd_dkdv_kernel. Each program owns its dQ rows, so no two programs write the same place.
    """
    # Same program-to-tile mapping as forward, including the GQA head lookup and int64 offsets.
    m_start, batch, head, q_ptr, k_ptr, v_ptr = _query_block_program(
        q_ptr, k_ptr, v_ptr, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh, group_size, BLOCK_M)
    # The rest belongs to this query head; LSE and delta share one (B, H, T) layout.
    dout_ptr += batch * stride_gb + head * stride_gh
    lse_ptr += batch * stride_lb + head * stride_lh
    delta_ptr += batch * stride_lb + head * stride_lh
    offs_m = m_start + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM)  # (D,)
    row_ok = offs_m < T
    # Everything about this query block is loaded once and stays in registers for the whole key loop.
    q = _load_tile(q_ptr, offs_m, offs_d, stride_qt, stride_qd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
    dout = _load_tile(dout_ptr, offs_m, offs_d, stride_gt, stride_gd, T, CHECK_BOUNDS=True)  # (BLOCK_M, D)
    # Padding rows get LSE = +inf so their recomputed probabilities are exactly 0.
    lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=float("inf"))  # (BLOCK_M,), base 2
    delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
    # The fp32 accumulator for dQ = scale * sum over key blocks of dS K.
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # The same two-stage key loop as forward (see _fwd_kernel for the bounds and a worked example).
    causal_offset = S - T
    n_full, n_end = _key_stages(m_start, causal_offset, S, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _bwd_dq_inner(
        dq, q, dout, lse, delta, k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, 0, n_full, S, causal_offset, qk_scale,
        BLOCK_N=BLOCK_N, MASKED=False, CAUSAL=CAUSAL, DOT_PRECISION=DOT_PRECISION)
    dq = _bwd_dq_inner(
        dq, q, dout, lse, delta, k_ptr, v_ptr, stride_kn, stride_kd, stride_vn, stride_vd,
        offs_m, offs_d, n_full, n_end, S, causal_offset, qk_scale,
        BLOCK_N=BLOCK_N, MASKED=True, CAUSAL=CAUSAL, DOT_PRECISION=DOT_PRECISION)

    dq = dq * scale  # d(score)/dq = scale * k
    tl.store(dq_ptr + batch * stride_dqb + head * stride_dqh
             + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd, dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


# ------------------------------------------------------------------------------------------------------------
# Launch configuration: tile sizes by simple rules
# ------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _max_shared_memory(device_index: int) -> int:
    """Bytes of shared memory one program may use on this GPU (227 KiB on H100, 163 on A100, 99 on RTX 4090)."""
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def _shared_memory(device: torch.device) -> int:
    """What _launch_config needs to know of the GPU: its shared memory per program (0 under the interpreter,
    whose tiles do not depend on it)."""
    if INTERPRET:
        return 0
    return _max_shared_memory(device.index if device.index is not None else torch.cuda.current_device())


def _launch_config(kernel: str, head_dim: int, dtype: torch.dtype, shared_memory: int = 0) -> dict:
    """Tile sizes and launch knobs for kernel "fwd", "delta", "dkdv" or "dq" (BLOCK_M = queries, BLOCK_N = keys), on a
    GPU whose programs may use `shared_memory` bytes of shared memory each.

    The kernels are correct for any power-of-two tiles >= 16; these rules only trade speed. The GPU choices
    were checked by compiling for sm_90 and sm_80 (few or no spilled registers; `--compile-for 80,90` shows
    their shared memory within limits); they are sensible defaults, not the result of timing many configurations.
    """
    if INTERPRET:
        # Under the interpreter each tile operation is a numpy call, so small tiles keep CPU tests quick,
        # and unequal BLOCK_M / BLOCK_N make the tests exercise diagonals that span several key blocks.
        return {"fwd": dict(BLOCK_M=32, BLOCK_N=16), "delta": dict(BLOCK_M=16), "dkdv": dict(BLOCK_M=16, BLOCK_N=32),
                "dq": dict(BLOCK_M=32, BLOCK_N=16)}[kernel]
    if kernel == "delta":
        return dict(BLOCK_M=64)  # a memory-bound row reduction: the tile size barely matters
    if dtype == torch.float32:
        # Exact fp32 dots run on CUDA cores, not tensor cores, and fp32 tiles take twice the shared memory:
        # fp32 is the precise path for checking, not the fast one, so small tiles that fit any GPU.
        return dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
    # fp16 / bf16 on tensor cores. Each kernel keeps a big fp32 accumulator in registers over the long tile
    # (queries in fwd and dQ, keys in dK/dV) and streams the other operand through the short tile, which is
    # software-pipelined over num_stages shared-memory buffers (loads of the next tiles overlap the math).
    # 8 warps from D = 64 up split those accumulators over more threads so the registers do not spill.
    warps = 8 if head_dim >= 64 else 4
    # GPUs with less shared memory per program (consumer cards) get fewer buffers and a shorter dQ tile.
    roomy = shared_memory >= 160 * 1024
    if kernel == "fwd":
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=warps, num_stages=3 if roomy else 2)
    if kernel == "dkdv":
        return dict(BLOCK_M=32, BLOCK_N=128, num_warps=warps, num_stages=3 if roomy else 2)
    return dict(BLOCK_M=128, BLOCK_N=64 if roomy else 32, num_warps=warps, num_stages=2)


# Compiler options of every launch: multiply-adds fused into FMAs, one rounding instead of two (faster, and no
# less accurate). Said explicitly because Triton's default changes: 3.9 warns that 3.10 will not fuse.
COMPILER_OPTIONS = dict(enable_fp_fusion=True)


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact IEEE dots (TF32 would cost ~3 decimal digits); 16-bit inputs ignore this knob."""
    return "ieee" if dtype == torch.float32 else "tf32"


# ------------------------------------------------------------------------------------------------------------
# Python side: checks, launches, autograd
# ------------------------------------------------------------------------------------------------------------

def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise ValueError naming the problem when the shapes, dtypes or devices cannot work together."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"flash_attention expects 4-D q (B, H, T, D) and k, v (B, K, S, D); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, K, S, D); got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, T, D = q.shape
    Bk, K, S, Dk = k.shape
    if Bk != B:
        raise ValueError(f"q has batch {B} but k and v have batch {Bk}")
    if Dk != D:
        raise ValueError(f"head dim differs: q has D={D} but k and v have D={Dk}")
    if K == 0 or H % K != 0:
        raise ValueError(f"the number of query heads ({H}) must be a multiple of the number of KV heads ({K}) "
                         f"for grouped-query attention")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim D={D} is not supported; use one of {SUPPORTED_HEAD_DIMS}")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype among float32, float16, bfloat16; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if B == 0 or T == 0 or S == 0:
        raise ValueError(f"B, T and S must be at least 1; got B={B}, T={T}, S={S}")
    # With T > S the first T - S query rows would see no key at all under bottom-right alignment: their
    # softmax would be 0 / 0. No caller needs that, so it is refused rather than given a made-up answer.
    if causal and T > S:
        raise ValueError(f"causal attention aligns the T queries with the last T of the S keys, so it needs "
                         f"T <= S; got T={T}, S={S}")


def _check_runnable(q: torch.Tensor) -> None:
    """Raise RuntimeError when this machine cannot run the Triton kernels on q's device."""
    if not HAS_TRITON:
        raise RuntimeError("flash_attention needs Triton, which is not installed (it ships with CUDA "
                           "builds of PyTorch on Linux); use the model's eager attention instead")
    # Compiled Triton kernels read GPU memory; only the interpreter (numpy) can work on CPU tensors.
    if not INTERPRET and not q.is_cuda:
        raise RuntimeError("flash_attention runs on CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                           "before importing kernels (slow, meant for tests)")


def _forward(q, k, v, causal: bool, scale: float):
    """Launch the forward kernel; returns out (B, H, T, D) in q's dtype and lse (B, H, T) fp32, base 2."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    # Fresh contiguous outputs whatever the input layout; the kernel writes every element, so no zeroing.
    out = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)  # (B, H, T, D) contiguous
    # The O(T) memory that replaces the O(T * S) probabilities: one fp32 number per query row and head.
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)  # (B, H, T)
    cfg = _launch_config("fwd", D, q.dtype, _shared_memory(q.device))
    # One program per (query block, query head, batch). Heads and batch get their own grid axes (up to
    # 65535 each) so no division is needed in the kernel to recover them.
    grid = (triton.cdiv(T, cfg["BLOCK_M"]), H, B)
    # Tensors are passed as tensors (Triton takes their data pointers and dtypes); strides are unpacked.
    # log2(e) is folded into the scale here, once, so the kernel pays a single multiply per score for both
    # the softmax scale and the change to base 2 (see "Why base 2" above).
    _fwd_kernel[grid](
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), lse.stride(0), lse.stride(1),
        T, S, H // K, scale * LOG2_E,
        HEAD_DIM=D, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype), **cfg, **COMPILER_OPTIONS)
    return out, lse


def _backward(dout, q, k, v, out, lse, causal: bool, scale: float):
    """Launch delta, dK/dV and dQ kernels; returns dq, dk, dv in the input dtype."""
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    # 1. delta = rowsum(dO * O), one fp32 number per query row, laid out like lse. dout may be any layout
    #    (autograd sometimes hands over expanded or transposed gradients): its strides travel with it.
    delta = torch.empty_like(lse)  # (B, H, T)
    cfg = _launch_config("delta", D, q.dtype, _shared_memory(q.device))
    _bwd_delta_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), H, B)](
        out, dout, delta, *out.stride(), *dout.stride(), delta.stride(0), delta.stride(1),
        T, HEAD_DIM=D, **cfg, **COMPILER_OPTIONS)
    # Gradients are allocated in the input dtype: nothing here assumes fp16.
    dq = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)  # (B, H, T, D)
    dk = torch.empty((B, K, S, D), dtype=k.dtype, device=k.device)  # (B, K, S, D)
    dv = torch.empty((B, K, S, D), dtype=v.dtype, device=v.device)  # (B, K, S, D)
    # Both gradient kernels read the same six tensors and take the same sizes and options; only the tensors
    # they write (and their strides) differ.
    inputs = (q, k, v, dout, lse, delta)
    input_strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), lse.stride(0), lse.stride(1))
    sizes = (T, S, H // K, scale * LOG2_E, scale)
    options = dict(HEAD_DIM=D, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype))
    # 2. dK and dV: one program per key block per KV head, looping over the query heads of its group.
    cfg = _launch_config("dkdv", D, q.dtype, _shared_memory(q.device))
    _bwd_dkdv_kernel[(triton.cdiv(S, cfg["BLOCK_N"]), K, B)](
        *inputs, dk, dv, *input_strides, *dk.stride(), *dv.stride(), *sizes, **options, **cfg, **COMPILER_OPTIONS)
    # 3. dQ: one program per query block per query head. It runs after dK/dV only by launch order; the two
    #    kernels share inputs but write different tensors, so they do not depend on each other.
    cfg = _launch_config("dq", D, q.dtype, _shared_memory(q.device))
    _bwd_dq_kernel[(triton.cdiv(T, cfg["BLOCK_M"]), H, B)](
        *inputs, dq, *input_strides, *dq.stride(), *sizes, **options, **cfg, **COMPILER_OPTIONS)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    """Autograd glue: forward saves q, k, v, out and the O(T) LSE; backward recomputes the rest."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        # causal and scale are plain Python values, not tensors: causal picks a compiled variant of each
        # kernel (CAUSAL is tl.constexpr), and neither can receive a gradient.
        out, lse = _forward(q, k, v, causal, scale)
        # q, k, v and out are saved by reference (autograd keeps them alive anyway); only lse is extra memory.
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None  # no gradients for `causal` and `scale`


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v with the Triton FlashAttention-2 kernel; differentiable.

    q (B, H, T, D); k, v (B, K, S, D) with H a multiple of K (grouped-query attention: query head h uses KV
    head h // (H // K)). causal=True masks with bottom-right alignment: query i sees keys j <= i + S - T, so
    a chunk of T new queries attends to S - T cached keys plus its own causal prefix (needs T <= S).
    scale defaults to 1 / sqrt(D). Returns (B, H, T, D) in q's dtype. Raises ValueError for shapes that do
    not fit together, RuntimeError where Triton cannot run.

    >>> q = torch.randn(2, 40, 100, 128, device="cuda", dtype=torch.bfloat16)          # doctest: +SKIP
    >>> k = v = torch.randn(2, 10, 100, 128, device="cuda", dtype=torch.bfloat16)      # doctest: +SKIP
    >>> flash_attention(q, k, v).shape                                                  # doctest: +SKIP
    torch.Size([2, 40, 100, 128])
    """
    # Shape mistakes are reported before availability, so they surface on any machine.
    _check_inputs(q, k, v, causal)
    _check_runnable(q)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    # Plain bool and float: a 0-d tensor would reach the kernels as a pointer, a numpy scalar as another type,
    # while a Python float is an ordinary runtime argument, so a new scale never triggers a recompilation.
    return _FlashAttention.apply(q, k, v, bool(causal), float(scale))


# ------------------------------------------------------------------------------------------------------------
# Compiling without a GPU: python flash_attention.py --compile-for 80,90
# ------------------------------------------------------------------------------------------------------------

# Shared memory one program may use, by compute capability: what _launch_config asks of a GPU, for GPUs that
# are not here (A100, RTX 3090, RTX 4090, H100/H200).
GPU_SHARED_MEMORY = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # pointer element types


def compile_for(arch: int, head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, causal: bool = True) -> dict:
    """The four kernels compiled for an NVIDIA GPU of compute capability `arch` (90: H100/H200, 80: A100) with
    the launch configuration such a GPU gets, on any machine: Triton's front end and LLVM run on the CPU and
    the ptxas that ships with Triton assembles the binary. -> {"fwd", "delta", "dkdv", "dq": compiled kernel};
    each one's .asm holds every stage ("ttir", "ttgir", "llir", "ptx", "cubin") and .metadata.shared the
    bytes of shared memory one program uses.

    They are compiled as a launch on contiguous inputs whose lengths are multiples of 16 (the benchmark's)
    would compile them: Triton specialises on argument values, turning an integer equal to 1 (each tensor's last stride)
    into a constant and marking pointers and integers divisible by 16 as such. Both matter: they make the
    loads wide and aligned, which is what lets the compiler pipeline them through shared memory (without
    them the forward kernel uses 48 KiB of it on sm_90 instead of 128).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = {"fwd": _fwd_kernel, "delta": _bwd_delta_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}
    compiled = {}
    for name, kernel in kernels.items():
        cfg = _launch_config(name, head_dim, dtype, GPU_SHARED_MEMORY[arch])
        options = {**{knob: cfg[knob] for knob in ("num_warps", "num_stages") if knob in cfg}, **COMPILER_OPTIONS}
        values = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=_dot_precision(dtype), **cfg)
        constexprs = {arg: values[arg] for arg in kernel.arg_names if arg in values}  # the delta kernel has no CAUSAL
        # stride_qd, stride_kd, ...: the head-dim stride of each tensor, 1 when it is contiguous.
        constexprs.update({arg: 1 for arg in kernel.arg_names if arg.startswith("stride_") and arg.endswith("d")})
        signature, divisible_by_16 = {}, {}
        for i, arg in enumerate(kernel.arg_names):  # the types _forward and _backward pass
            if arg in constexprs:
                signature[arg] = "constexpr"
                continue
            if arg.endswith("_ptr"):  # lse and delta are fp32 whatever the inputs' dtype
                signature[arg] = "*fp32" if arg in ("lse_ptr", "delta_ptr") else "*" + TRITON_TYPES[dtype]
            elif arg in ("qk_scale", "scale"):
                signature[arg] = "fp32"
            else:  # strides, T, S, group_size
                signature[arg] = "i32"
            if arg.endswith("_ptr") or arg.startswith("stride_") or arg in ("T", "S"):  # not group_size, not scales
                divisible_by_16[(i,)] = [["tt.divisibility", 16]]
        source = ASTSource(kernel, signature, {(kernel.arg_names.index(arg),): v for arg, v in constexprs.items()},
                           divisible_by_16)
        compiled[name] = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled


def registers_and_stack(cubin: bytes) -> tuple[int, int] | None:
    """(registers per thread, stack bytes per thread) of a compiled kernel, read by the cuobjdump that ships
    with Triton; None where it is missing. A stack in a Triton kernel holds spilled registers: 255 registers
    is the most one thread may have, and what does not fit goes to (slow) local memory."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return (int(found.group(1)), int(found.group(2))) if found else None


def run_compile_check(args) -> bool:
    """Compile for each --compile-for architecture and print a table; False if a kernel needs more shared
    memory than its GPU has (its launch would fail there). --dump DIR writes every stage's text."""
    all_ok = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    print(f"triton {triton.__version__}, {args.dtype}, head dim {args.head_dim}, causal")
    print(f"{'GPU':<8} {'kernel':<6} {'tiles (M x N)':<14} {'warps':>5} {'stages':>6} {'shared KiB':>10} "
          f"{'of':>4} {'registers':>9} {'stack B':>7} {'PTX lines':>9}")
    for arch in args.compile_for:
        start = time.perf_counter()
        kernels = compile_for(arch, args.head_dim, dtype)
        seconds = time.perf_counter() - start
        for name, kernel in kernels.items():
            cfg, meta = _launch_config(name, args.head_dim, dtype, GPU_SHARED_MEMORY[arch]), kernel.metadata
            ok = meta.shared <= GPU_SHARED_MEMORY[arch]
            all_ok &= ok
            tiles = f"{cfg['BLOCK_M']} x {cfg.get('BLOCK_N', '-')}"
            registers, stack = registers_and_stack(kernel.asm["cubin"]) or ("-", "-")
            print(f"sm_{arch:<5} {name:<6} {tiles:<14} {meta.num_warps:>5} {meta.num_stages:>6} "
                  f"{meta.shared / 1024:>10.1f} {GPU_SHARED_MEMORY[arch] // 1024:>4} {registers:>9} {stack:>7} "
                  f"{kernel.asm['ptx'].count(chr(10)):>9,}{'' if ok else '  TOO MUCH'}")
            if args.dump:
                for stage in ("ttir", "ttgir", "llir", "ptx"):
                    with open(os.path.join(args.dump, f"sm{arch}_{name}.{stage}"), "w") as f:
                        f.write(kernel.asm[stage])
        print(f"sm_{arch}: compiled in {seconds:.1f} s")
    if args.dump:
        print(f"each kernel's Triton IR, GPU IR, LLVM IR and PTX: {args.dump}/")
    return all_ok


# ------------------------------------------------------------------------------------------------------------
# Benchmark: python flash_attention.py --bench
# ------------------------------------------------------------------------------------------------------------

def attention_flops(batch: int, n_head: int, T: int, S: int, head_dim: int, causal: bool, backward: bool) -> float:
    """FLOPs counted the standard way (FlashAttention papers): 2 matmuls of 2*T*S*D flops each per head.

    Causal attention counts half (the masked half is not work). Backward is 2.5x forward (5 matmuls instead
    of 2), so forward + backward is 3.5x forward.
    """
    # Q K^T is T*S dot products of length D (2 flops per multiply-add), and P V the same again.
    flops = 4.0 * batch * n_head * T * S * head_dim
    if causal:
        flops /= 2
    return flops * 3.5 if backward else flops


def _sdpa_providers():
    """Every torch SDPA backend as a callable (q, k, v, causal) -> out, each tried with enable_gqa=True.

    A backend that rejects enable_gqa is retried on K, V repeated to H heads (the repeat is outside the
    timed region); the label says which variant ran.
    """
    import warnings

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def make(backend, gqa):
        def run(q, k, v, causal):
            # A backend that cannot take a shape warns at length before raising; the raise is enough.
            with sdpa_kernel(backend), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return run

    # The three fused SDPA kernels; the "math" backend is plain eager attention and not worth racing.
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return {name: (make(backend, True), make(backend, False)) for name, backend in backends.items()}


def _random_inputs(B: int, H: int, K: int, T: int, S: int, D: int, device: str = "cuda"):
    """Seeded bf16 q (B, H, T, D), k, v (B, K, S, D) and an output gradient dout (B, H, T, D).

    The same seed for every shape, so a figure can be reproduced by rerunning one row of a table.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = [(B, H, T, D), (B, K, S, D), (B, K, S, D), (B, H, T, D)]
    return [torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen) for shape in shapes]


def _time_ms(fn, backward: bool, inputs, dout) -> float:
    """Median milliseconds of fn(*inputs) (forward under no_grad) or of forward + backward.

    do_bench runs fn until warm, then repeatedly for about 100 ms with CUDA events around each call and
    clears the L2 cache in between; the median resists the odd slow outlier better than the mean.
    """
    from triton.testing import do_bench

    if not backward:
        # Inference-style forward: no autograd graph is recorded, for our kernel and SDPA alike.
        with torch.no_grad():
            return do_bench(lambda: fn(*inputs), warmup=25, rep=100, return_mode="median")
    # grad_to_none resets .grad between calls so each backward writes fresh gradients instead of adding.
    return do_bench(lambda: fn(*inputs).backward(dout), warmup=25, rep=100,
                    grad_to_none=list(inputs[:3]), return_mode="median")


def _measure(name, providers, q, k, v, dout, causal, backward, flops):
    """TFLOP/s of one provider at one shape and a mark ("*" = ran on repeated K, V), or None if it can't run."""
    H, K = q.shape[1], k.shape[1]
    leaves = lambda *xs: [x.detach().requires_grad_() for x in xs]  # noqa: E731  fresh autograd leaves
    if name == "triton":
        # Our own kernel must run: an error here is a bug, so it propagates.
        return flops / _time_ms(flash_attention, backward, leaves(q, k, v) + [causal], dout) / 1e9, ""
    with_gqa, without_gqa = providers[name]
    try:
        ms, mark = _time_ms(with_gqa, backward, leaves(q, k, v) + [causal], dout), ""
    except RuntimeError:
        try:
            # This backend rejects enable_gqa: give it K, V repeated to H heads, (B, K, T, D) -> (B, H, T, D),
            # materialised before timing so the copy is not counted against it.
            repeated = [x.repeat_interleave(H // K, dim=1) for x in (k, v)]  # 2 x (B, H, T, D)
            ms, mark = _time_ms(without_gqa, backward, leaves(q, *repeated) + [causal], dout), "*"
        except RuntimeError as err:  # this backend cannot run this shape at all (dtype, length, GPU...)
            print(f"  ({name} skipped at T={q.shape[2]}: {str(err).splitlines()[0][:90]})")
            return None, ""
    # flops / (ms * 1e-3) / 1e12 == flops / ms / 1e9.
    return flops / ms / 1e9, mark


def run_throughput_bench(args) -> None:
    """Print TFLOP/s tables of this kernel vs each torch SDPA backend, forward and forward + backward."""
    H, K, D = args.n_head, args.n_kv_head, args.head_dim
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    causal_modes = {"both": [True, False], "yes": [True], "no": [False]}[args.causal]
    providers = _sdpa_providers()
    names = ["triton"] + [f"sdpa-{name}" for name in providers]
    print(f"\nthroughput: B*T = {args.tokens} tokens, H/K = {H}/{K}, D = {D}, bf16, median of "
          f"triton.testing.do_bench; TFLOP/s (FLOPs: 4*B*H*T*S*D fwd, /2 causal, x3.5 fwd+bwd)")
    print("SDPA gets enable_gqa=True; a value marked * is a backend that rejected it and ran on K, V "
          "repeated to H heads")
    for backward in (False, True):
        print(f"\n{'forward + backward' if backward else 'forward'}")
        print(f"{'causal':>6} {'T':>6} {'B':>4} " + " ".join(f"{n:>15}" for n in names) + f" {'ours/best':>10}")
        for causal in causal_modes:
            for T in seq_lens:
                # A fixed token budget per step (like a training batch): long sequences get a small batch.
                B = max(1, args.tokens // T)
                q, k, v, dout = _random_inputs(B, H, K, T, T, D)  # self-attention: S = T
                flops = attention_flops(B, H, T, T, D, causal, backward)
                results = {}
                for name in names:
                    results[name] = _measure(name.removeprefix("sdpa-"), providers, q, k, v, dout, causal,
                                             backward, flops)
                # The ratio that matters: ours against the fastest SDPA backend that could run.
                best_sdpa = max((tflops for name, (tflops, _) in results.items()
                                 if name != "triton" and tflops is not None), default=None)
                cells = [f"{tflops:14.1f}{mark or ' '}" if tflops is not None else f"{'n/a':>15}"
                         for tflops, mark in results.values()]
                ratio = f"{results['triton'][0] / best_sdpa:10.2f}" if best_sdpa else f"{'n/a':>10}"
                print(f"{str(causal):>6} {T:>6} {B:>4} " + " ".join(cells) + " " + ratio, flush=True)
                del q, k, v, dout
                torch.cuda.empty_cache()


def run_correctness_check(args) -> bool:
    """bf16 kernel vs a float32 reference at Phi-4 head shapes; prints max errors, returns True if all pass.

    The reference is the model's own readable attention, `model.naive_attention`, on float32 copies of the
    inputs. The yardstick is torch's fused attention (`model.sdpa_attention`, the model's "sdpa" path) run in
    bf16, which rounds its probabilities to bf16 just as ours does: our error should be no worse than about that.
    """
    # Imported here, not at the top: `import flash_attention` must not pull in the whole model (model.py itself
    # imports this module lazily), and only this GPU-only check needs the model's attention functions.
    from model import naive_attention, sdpa_attention

    H, K, D = args.n_head, args.n_kv_head, args.head_dim
    print(f"\ncorrectness: bf16 kernel vs float32 reference, H/K = {H}/{K}, D = {D}")
    print(f"{'case':<30} {'tensor':>6} {'ours err':>10} {'bf16 sdpa err':>15} {'ok':>4}")
    all_ok = True
    # (batch, T, S, causal): full causal training shape, an odd non-causal length, a chunked-prefill step.
    for B, T, S, causal in [(2, 2048, 2048, True), (2, 1000, 1000, False), (2, 128, 2048, True)]:
        q, k, v, dout = _random_inputs(B, H, K, T, S, D)
        results = {}
        # All three see the same bf16-rounded inputs, so the differences measure the computation alone:
        # "ref" upcasts them to float32, "ours" and "sdpa" compute in bf16.
        for name, fn, dtype in [("ref", naive_attention, torch.float32), ("ours", flash_attention, None),
                                ("sdpa", sdpa_attention, None)]:
            inputs = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (q, k, v)]
            out = fn(*inputs, causal=causal)
            out.backward(dout.to(out.dtype))
            results[name] = [out.detach().float()] + [x.grad.float() for x in inputs]
        for i, tensor in enumerate(["out", "dq", "dk", "dv"]):
            ref = results["ref"][i]
            ours_err = (results["ours"][i] - ref).abs().max().item()
            sdpa_err = (results["sdpa"][i] - ref).abs().max().item()
            # Pass when within 2x the error of torch's bf16 attention plus 1% of the tensor's largest value
            # (bf16 keeps about 3 significant digits, so a few tenths of a percent is rounding, not a bug).
            ok = ours_err <= 2 * sdpa_err + 1e-2 * ref.abs().max().item()
            all_ok &= ok
            print(f"{f'B={B} T={T} S={S} causal={causal}':<30} {tensor:>6} {ours_err:10.2e} {sdpa_err:15.2e} "
                  f"{'yes' if ok else 'NO':>4}")
        del q, k, v, dout, results
        torch.cuda.empty_cache()
    return all_ok


if __name__ == "__main__":
    import cli  # the command line only: the kernel itself needs no CLI plumbing

    parser = cli.Parser(
        description="FlashAttention-2 in Triton. --bench compares TFLOP/s against torch SDPA backends on a "
                    "CUDA GPU and checks bf16 accuracy at Phi-4 shapes; --compile-for compiles the kernels for a "
                    "GPU that need not be here. Tests: python -m pytest tests/test_flash_attention.py")
    parser.add_argument("--bench", action="store_true", help="run the throughput tables and the bf16 check (needs a CUDA GPU)")
    parser.add_argument("--compile-for", default=None, metavar="ARCHS",
                        help="compile every kernel for these compute capabilities, comma-separated (90: H100/H200, "
                             f"80: A100; known: {', '.join(map(str, GPU_SHARED_MEMORY))}) and print their shared "
                             "memory; no GPU needed")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="inputs of --compile-for")
    parser.add_argument("--dump", default=None, metavar="DIR", help="with --compile-for: write each kernel's IRs and PTX here")
    parser.add_argument("--tokens", type=cli.at_least(1), default=16384, help="B*T per measurement; B = tokens // T")
    parser.add_argument("--seq-lens", default="512,1024,2048,4096,8192,16384", help="comma-separated T values (S = T)")
    parser.add_argument("--n-head", type=cli.at_least(1), default=40, help="query heads H (Phi-4: 40)")
    parser.add_argument("--n-kv-head", type=cli.at_least(1), default=10, help="key/value heads K (Phi-4: 10)")
    parser.add_argument("--head-dim", type=int, default=128, help="head dim D (Phi-4: 128)")
    parser.add_argument("--causal", choices=["both", "yes", "no"], default="both", help="which masks to time")
    parser.add_argument("--skip-check", action="store_true", help="skip the bf16 correctness check")
    args = parser.parse_args()
    if args.head_dim not in SUPPORTED_HEAD_DIMS:  # both --bench and --compile-for launch kernels of this head dim
        parser.error(f"--head-dim {args.head_dim} is not supported; use one of {SUPPORTED_HEAD_DIMS}")
    if args.compile_for is not None:
        try:
            args.compile_for = [int(arch) for arch in args.compile_for.split(",")]
        except ValueError:
            parser.error(f"--compile-for takes compute capabilities such as 80,90; got {args.compile_for!r}")
        unknown = [arch for arch in args.compile_for if arch not in GPU_SHARED_MEMORY]
        if unknown:
            parser.error(f"--compile-for: no shared memory size known for {unknown}; "
                         f"use {', '.join(map(str, GPU_SHARED_MEMORY))}")
        if args.dump:
            try:
                os.makedirs(args.dump, exist_ok=True)
            except OSError as error:
                parser.error(f"--dump: cannot make {args.dump} ({error.strerror})")
        if not HAS_TRITON or INTERPRET:
            print("error: --compile-for needs Triton, with TRITON_INTERPRET unset", file=sys.stderr)
            sys.exit(1)
        sys.exit(0 if run_compile_check(args) else 1)
    # Without --bench there is nothing to run from the command line: the kernel is a library function.
    if not args.bench:
        parser.print_help()
        sys.exit(0)
    if not (HAS_TRITON and torch.cuda.is_available()) or INTERPRET:
        print("--bench needs a CUDA GPU with Triton (and TRITON_INTERPRET unset); on CPU run the tests instead: "
              "python -m pytest tests/test_flash_attention.py", file=sys.stderr)
        sys.exit(1)
    # Say exactly what was measured, so figures copied into the README carry their machine and versions.
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    # Correctness first: a fast wrong kernel is not worth timing. A failed check makes the exit status 1.
    check_ok = True if args.skip_check else run_correctness_check(args)
    run_throughput_bench(args)
    sys.exit(0 if check_ok else 1)
