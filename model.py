"""The Phi-4 transformer, from scratch, in one file.

Phi-4 (Abdin et al. 2024, arXiv:2412.08905, section 3) is a 14B decoder-only transformer that "closely
follows phi-3-medium". Every block is

    x = x + Attention(RMSNorm(x))      grouped-query attention, RoPE on queries and keys, causal
    x = x + MLP(RMSNorm(x))            SwiGLU: down(silu(gate(x)) * up(x))

followed by a final RMSNorm and an untied output projection (the "LM head") onto 100,352 tokens.
No biases, no dropout. The exact numbers of the released model are the `14b` preset below
(40 layers, d_model 5120, 40 query heads sharing 10 key/value heads, head dim 128, FFN 17920).

What lives here, top to bottom:
  1. ModelConfig and PRESETS   the shape of the network, validated, with sizes from `toy` to `14b`
  2. RoPE                      rotary position tables (rotate-half layout), rebuilt when the context grows
  3. Attention                 naive (readable), SDPA (fast), blockwise (fast CPU training, blockwise_attention.py)
                                and Triton (ours, flash_attention.py) implementations
  4. KVCache                   preallocated key/value memory for token-by-token generation
  5. Phi4                      the model: forward, chunked cross-entropy, init, parameter and FLOP counts;
                               Phi4.from_pretrained / save_pretrained name the Hugging Face format in hf.py

Simplifications, on purpose: one attention mask kind in training (causal, full context: Phi-4 dropped
phi-3-medium's sliding window); generation adds one more, per-row positions with a key mask, so rows of
different lengths decode together (sample.py's batched engine); Hugging Face checkpoints live in hf.py,
so the model itself stays small. The devices' peak FLOP/s for MFU are in parallel.py.

Tensor dimension legend used in every shape comment:
    B batch, T query length, S key length (T plus cached tokens), C d_model,
    H query heads, K key/value heads, G = H // K query heads per KV head, D head dim, V vocab

Run `python model.py` to print the parameter and FLOP accounting of every preset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from blockwise_attention import blockwise_attention

# ----------------------------------------------------------------------------------------------------
# 1. Configuration


ATTN_IMPLS = ("naive", "sdpa", "blockwise", "triton")


@dataclass
class ModelConfig:
    """Everything that decides the shape of the network (and nothing about how it is trained)."""

    vocab_size: int = 100352  # rows of the embedding and of the LM head
    n_layer: int = 40  # transformer blocks
    d_model: int = 5120  # width of the residual stream (C)
    n_head: int = 40  # query heads (H)
    n_kv_head: int = 10  # key/value heads (K); H must be a multiple of K
    ffn_dim: int = 17920  # hidden width of the SwiGLU MLP
    max_seq_len: int = 4096  # longest sequence the RoPE tables cover
    rope_theta: float = 10000.0  # RoPE base; Phi-4 raises it to 250K when it extends the context
    norm_eps: float = 1e-5  # RMSNorm epsilon (config.json: rms_norm_eps)
    init_std: float = 0.02  # standard deviation of the normal init of every weight matrix
    attn_impl: str = "sdpa"  # "naive" | "sdpa" | "blockwise" | "triton"

    def __post_init__(self):
        # Fail at construction with a message that names the field, rather than with a reshape error
        # three files away. Each check is a way people have actually misconfigured such models.
        positive = ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "ffn_dim", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"ModelConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"ModelConfig.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head dim d_model/n_head = {self.head_dim} must be even for RoPE; change n_head")
        if self.rope_theta <= 1.0:
            raise ValueError(f"ModelConfig.rope_theta must be > 1, got {self.rope_theta}")
        if not (0 < self.norm_eps < 1):
            raise ValueError(f"ModelConfig.norm_eps must be in (0, 1), got {self.norm_eps}")
        if self.init_std <= 0:
            raise ValueError(f"ModelConfig.init_std must be > 0, got {self.init_std}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"ModelConfig.attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        # Ignore keys a newer/older version may have added, so old checkpoints stay loadable.
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# Named sizes. `toy` trains on two CPU cores in minutes (its vocabulary is the BPE we train on the
# synthetic world: 1,029 ids including Phi-4's 96 special tokens, padded to 1,088 rows; the preset's
# 1,024 is a placeholder that train.py replaces). `small` and `1b` use the real Phi-4
# tokenizer and fit one GPU. `14b` is the released Phi-4 shape exactly (report section 3, config.json) at its 4K
# pretraining context; midtraining raises max_seq_len to 16K and rope_theta to 250K.
# The toy's RoPE base is scaled to its context the way Phi-4's is to its own: the slowest channel pair turns
# by theta^(-(D-2)/D) per position, so at base 10K Phi-4's (D = 128) turns 0.47 rad over its 4K context and
# 1.89 rad over 16K; the toy's (D = 32) at base 800 turns 0.49 rad over 256 tokens and 1.94 over 1,024. At
# 10K the toy's would turn 0.18 rad over 1,024 tokens, and the ablation that keeps the base through
# midtraining would lose nothing (LAB.md, "The RoPE base at Phi-4's proportions").
PRESETS: dict[str, ModelConfig] = {
    "toy": ModelConfig(
        vocab_size=1024, n_layer=4, d_model=128, n_head=4, n_kv_head=2, ffn_dim=384, max_seq_len=256, rope_theta=800.0
    ),
    "small": ModelConfig(
        vocab_size=100352, n_layer=12, d_model=768, n_head=12, n_kv_head=4, ffn_dim=2048, max_seq_len=4096
    ),
    "1b": ModelConfig(
        vocab_size=100352, n_layer=16, d_model=2048, n_head=16, n_kv_head=4, ffn_dim=7168, max_seq_len=4096
    ),
    "14b": ModelConfig(
        vocab_size=100352, n_layer=40, d_model=5120, n_head=40, n_kv_head=10, ffn_dim=17920, max_seq_len=4096
    ),
}


# Midtraining multiplies the pretraining context by this (report section 3: 4K -> 16K).
CONTEXT_EXTENSION = 4


def get_config(size: str, **overrides) -> ModelConfig:
    """Look up a preset by name (the `--size` flag) and apply field overrides."""
    if size not in PRESETS:
        raise ValueError(f"unknown --size {size!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[size], **overrides)


# ----------------------------------------------------------------------------------------------------
# 2. Rotary position embedding (RoPE)
#
# RoPE encodes position m by rotating pairs of channels of q and k by the angle m * theta^(-2i/D).
# The dot product q_m . k_n then depends only on m - n. Phi-4 (like Llama and the HF phi3 code) pairs
# channel i with channel i + D/2 ("rotate half"), not neighbours 2i and 2i+1 ("interleaved"): the two
# layouts are the same maths on a permuted head, but weights trained in one are wrong in the other.


def rope_tables(max_seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (max_seq_len, head_dim), in float32.

    Computed in float32 even for bf16 models: at position 16K the angle has ~5 significant digits and
    bf16 keeps ~3, which would blur nearby positions together.
    """
    # BEGIN SOLUTION rope: angle m * theta^(-2i/D) per position m and pair i, repeated twice along D; return cos, sin
    # One frequency per channel pair: theta^(-2i/D) for i in [0, D/2).
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)  # (max_seq_len, D/2)
    # Rotate-half layout: channel i and channel i + D/2 share an angle, so repeat the table twice.
    angles = torch.cat([angles, angles], dim=-1)  # (max_seq_len, D)
    return angles.cos(), angles.sin()
    # END SOLUTION rope


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, D) by the angles of its positions; cos and sin are (T, D)."""
    # BEGIN SOLUTION rope: x * cos + cat([-x2, x1]) * sin, x1 and x2 the halves of the last dim; float32, then x's dtype
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    # A 2-D rotation of each pair (x1, x2): (x1 cos - x2 sin, x2 cos + x1 sin), written as one
    # elementwise expression with the "rotated half" [-x2, x1].
    rotated = torch.cat([-x2, x1], dim=-1)
    # Do the arithmetic in float32 and cast back, so bf16 models get the same angles as fp32 ones.
    out = x.float() * cos + rotated.float() * sin
    return out.to(x.dtype)
    # END SOLUTION rope


# ----------------------------------------------------------------------------------------------------
# 3. Attention


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v, written out so it can be read. q (B, H, T, D); k, v (B, K, S, D).

    Grouped-query attention without copying: the H query heads are viewed as K groups of G heads,
    and each group is matched against its one key/value head by broadcasting.
    When T < S (new tokens attending to a cache), query t sits at absolute position S - T + t, so the
    causal mask is aligned to the bottom-right corner of the (T, S) score matrix.
    `mask` (B, T, S), True where row b's query t may see key s, replaces that causal mask: batched
    generation keeps rows of different lengths in one cache, and only the row knows where it ends.
    """
    # BEGIN SOLUTION gqa_attention: q as (B, K, G, T, D); float32 scores * scale; -inf where masked (causal: bottom-right); softmax; @ v
    B, H, T, D = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    q = q.view(B, K, G, T, D)  # (B, K, G, T, D): heads of one group are neighbours (HF's layout)
    k = k.unsqueeze(2)  # (B, K, 1, S, D): broadcast over the G heads of the group
    v = v.unsqueeze(2)  # (B, K, 1, S, D)
    # Scores in float32: softmax of bf16 scores loses the small probabilities. Pitfall: under torch.autocast
    # (train.py --bf16-autocast) the matmul runs in bf16 whatever its inputs, and the softmax follows in
    # bf16. On a CPU at 256 tokens that is faster than the fused kernel, and the toy pretrained with it
    # solved fewer problems in 2 of 3 seeds (LAB.md, "Attention in bf16"), so the recipe trains with
    # blockwise_attention.py, whose softmax stays fp32 under autocast.
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    attn_scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, K, G, T, S)
    if mask is not None:
        # One (T, S) mask per row, shared by every head: (B, T, S) -> (B, 1, 1, T, S).
        attn_scores = attn_scores.masked_fill(~mask[:, None, None], float("-inf"))
    elif causal:
        # Key s is visible to query t iff s <= t + (S - T).
        visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        attn_scores = attn_scores.masked_fill(~visible, float("-inf"))
    attn_probs = attn_scores.softmax(dim=-1)
    out = attn_probs @ v.float()  # (B, K, G, T, D)
    return out.to(q.dtype).reshape(B, H, T, D)  # (B, H, T, D)
    # END SOLUTION gqa_attention


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same function through torch's fused scaled_dot_product_attention (flash / memory-efficient)."""
    T, S = q.shape[2], k.shape[2]
    is_causal = False
    if mask is not None:
        mask = mask[:, None]  # (B, T, S) -> (B, 1, T, S): the same mask for every head of a row
    elif causal and T == S:
        is_causal = True  # the common training case: a square, top-left == bottom-right mask
    elif causal and T > 1:
        # SDPA's is_causal aligns the mask top-left, which is wrong for a chunk after a cache,
        # so pass the bottom-right mask explicitly. (T == 1 needs no mask: it sees every key.)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Our hand-written FlashAttention-2 kernel (flash_attention.py); bottom-right causal too."""
    if mask is not None:
        # The kernel computes its causal mask from indices and reads no mask tensor: say what to change.
        raise ValueError("attn_impl 'triton' takes no per-row mask (batched generation of rows of different "
                         "lengths); generate with attn_impl 'sdpa' or 'naive'")
    from flash_attention import flash_attention  # imported lazily so the model works without triton

    return flash_attention(q, k, v, causal=causal)


ATTENTION = {"naive": naive_attention, "sdpa": sdpa_attention, "blockwise": blockwise_attention, "triton": triton_attention}


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE. Phi-4: 40 query heads share 10 key/value heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        C, D = config.d_model, config.head_dim
        # Separate projections read best; the HF checkpoint fuses them (qkv_proj), and the loader
        # splits it at the GQA widths: q is H*D rows, k and v K*D rows each.
        self.q_proj = nn.Linear(C, self.n_head * D, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(self, x, cos, sin, cache: "KVCache | None" = None, layer: int = 0,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). positions (B, T) and mask (B, T, S): see Phi4.hidden_states."""
        B, T, _ = x.shape
        H, K, D = self.n_head, self.n_kv_head, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        # Position goes into q and k only; v carries content, not position.
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # Append this step's keys/values and attend to everything cached so far.
            k, v = cache.update(layer, k, v, positions)  # (B, K, S, D) with S = cached + T
        if mask is None:
            out = ATTENTION[self.config.attn_impl](q, k, v, causal=True)  # (B, H, T, D)
        else:
            # Per-row lengths: only the first S columns hold keys any row may see; the mask picks each row's.
            S = mask.shape[-1]
            k, v = k[:, :, :S], v[:, :, :S]  # (B, K, S, D)
            out = ATTENTION[self.config.attn_impl](q, k, v, causal=True, mask=mask)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        return self.o_proj(out)


# ----------------------------------------------------------------------------------------------------
# 4. KV cache
#
# Generating token t+1 needs the keys and values of tokens 0..t. Recomputing them every step makes
# generation quadratic; caching them makes each new token cost one forward over one position.
# The memory is preallocated once (like gpt-fast) so decoding never reallocates or copies.


class KVCache:
    """Keys and values of every layer: 2 x (n_layer, B, K, max_len, D). Phi-4 bf16: 200 KiB per token."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        if max_len > config.max_seq_len:
            raise ValueError(
                f"KV cache of {max_len} tokens exceeds the model's max_seq_len {config.max_seq_len}; "
                "shorten the prompt or --max-new-tokens"
            )
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, K, max_len, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, K, max_len, D)
        self.length = 0  # tokens already stored (the same for every layer once a forward finishes)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) after the cached tokens; return all keys/values (B, K, S, D).

        With `positions` (B, T), row b's token t goes to column positions[b, t] instead: rows hold
        sequences of different lengths (sample.py's batched engine). Every column is returned then, and
        the caller's mask says which ones each row may see; `length` is not used (the caller keeps count).
        """
        if positions is not None:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1), broadcast against (B, T)
            # Advanced indices [rows, :, positions] select (B, T, K, D), so the new keys go in that order.
            self.k[layer, rows, :, positions] = k.transpose(1, 2)  # (B, K, T, D) -> (B, T, K, D)
            self.v[layer, rows, :, positions] = v.transpose(1, 2)  # (B, K, T, D) -> (B, T, K, D)
            return self.k[layer], self.v[layer]  # (B, K, max_len, D) each
        # BEGIN SOLUTION kv_cache: write k, v at columns length .. length + T (refuse past max_len); return columns 0 .. end
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > {self.max_len}; allocate a longer cache")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        # END SOLUTION kv_cache

    def advance(self, n_tokens: int):
        """Called once per forward (after the last layer) to commit the new tokens."""
        self.length += n_tokens

    def expand(self, n: int):
        """Give every row n copies of itself, so n continuations of one prefix share its prefill.

        Rows b*n .. b*n+n-1 of the expanded cache hold row b. Each copy is real memory, not a view:
        the continuations write different tokens after the shared prefix.
        """
        self.k = self.k.repeat_interleave(n, dim=1)  # (L, B, K, max_len, D) -> (L, B * n, K, max_len, D)
        self.v = self.v.repeat_interleave(n, dim=1)  # (L, B, K, max_len, D) -> (L, B * n, K, max_len, D)

    def load_rows(self, rows: torch.Tensor, other: "KVCache"):
        """Copy every row of `other` (a cache of len(rows) rows) into `rows` of this one, from column 0.

        The batched engine prefills new prompts in a small cache of their own, then moves them into the
        rows that finished sequences left free; columns past `other`'s end keep stale keys, which the
        engine's mask hides.
        """
        width = other.max_len
        self.k[:, rows, :, :width] = other.k  # (L, len(rows), K, width, D)
        self.v[:, rows, :, :width] = other.v  # (L, len(rows), K, width, D)

    def keep_rows(self, rows: torch.Tensor):
        """Keep only `rows` (in that order): finished sequences stop costing memory and compute."""
        self.k = self.k[:, rows]  # (L, B, K, max_len, D) -> (L, len(rows), K, max_len, D)
        self.v = self.v[:, rows]  # (L, B, K, max_len, D) -> (L, len(rows), K, max_len, D)


# ----------------------------------------------------------------------------------------------------
# 5. The model


class RMSNorm(nn.Module):
    """x / rms(x) * weight: LayerNorm without the mean and the bias (cheaper, works as well)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: the mean of squares of bf16 activations loses precision.
        # BEGIN SOLUTION rmsnorm_swiglu: in float32: x * rsqrt(mean of x^2 over the last dim + eps) * weight, back to x's dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)
        # END SOLUTION rmsnorm_swiglu


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). The gate decides, per hidden unit, how much of `up` passes."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BEGIN SOLUTION rmsnorm_swiglu: down_proj(silu(gate_proj(x)) * up_proj(x))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # END SOLUTION rmsnorm_swiglu


class Block(nn.Module):
    """Pre-norm residual block: normalise the input of each sub-layer, never the residual stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, layer=0, positions=None, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, positions, mask)
        x = x + self.mlp(self.mlp_norm(x))
        return x


class Phi4(nn.Module):
    """The Phi-4 decoder. `logits = model(idx)`; `loss = model(idx, targets)`.

    Build big models without allocating them:
        with torch.device("meta"):
            model = Phi4(config)          # shapes only, no memory
        model.to_empty(device="cuda")     # allocate (uninitialised)
        model.init_weights()              # one place that fills every tensor
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        # Untied: Phi-4 keeps separate input and output embeddings (tie_word_embeddings false).
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # RoPE tables are buffers (they follow .to(device)) but not state: they are a pure function of
        # the config, so they are rebuilt rather than saved (persistent=False).
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        if self.embed.weight.device.type != "meta":
            self.init_weights()

    # -- initialisation and RoPE -----------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None):
        """Fill every parameter: N(0, init_std) for matrices and embeddings, ones for norm gains.

        Phi-4 states an init std of 0.02 and nothing more; we use it everywhere (no depth-scaled
        output projections), which trains fine at these depths. Parameters are visited in a fixed
        order, so a seeded generator gives the same model on any device and any number of ranks.
        """
        from torch.distributed.tensor import DTensor, distribute_tensor  # see parallel.py, "Imports"
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                # Draw on CPU with the given generator, then copy: identical weights on CPU and GPU.
                values = torch.empty(param.shape, dtype=torch.float32)
                values.normal_(0.0, self.config.init_std, generator=generator)
                if isinstance(param, DTensor):
                    # An FSDP2 shard (parallel.py): param.shape is the full shape, so every rank drew the
                    # same full tensor; each keeps only its own rows. The weights are then identical
                    # whatever the number of ranks, and no rank ever holds more than one full tensor.
                    values = distribute_tensor(values.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
                param.copy_(values)
        self.set_rope()

    def set_rope(self, max_seq_len: int | None = None, rope_theta: float | None = None):
        """(Re)build the RoPE tables, optionally for a new context length or base (midtraining)."""
        if max_seq_len is not None or rope_theta is not None:
            # BEGIN SOLUTION context_extension: replace max_seq_len and/or rope_theta in the config; every Attention shares the new one
            self.config = replace(
                self.config,
                max_seq_len=max_seq_len or self.config.max_seq_len,
                rope_theta=rope_theta or self.config.rope_theta,
            )
            for module in self.modules():
                if isinstance(module, Attention):
                    module.config = self.config
            # END SOLUTION context_extension
        device = self.embed.weight.device
        cos, sin = rope_tables(self.config.max_seq_len, self.config.head_dim, self.config.rope_theta, device)
        self.rope_cos, self.rope_sin = cos, sin

    # -- forward --------------------------------------------------------------------------------

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) -> final normalised hidden states (B, T, C).

        `positions` (B, T), with a cache: the absolute position of every token, row by row, for rows of
        different lengths decoding together. Each token is rotated by its own position, stored in its
        row's cache column of that number, and sees exactly the keys at columns 0 .. its position of its
        own row: what it would see decoded alone. The caller keeps the positions (cache.length unused).
        """
        B, T = idx.shape
        if positions is not None:
            if cache is None:
                raise ValueError("per-row positions need a KV cache: the keys of earlier positions live there")
            end = int(positions.max()) + 1  # columns any row may read: the farthest position, plus one
        else:
            end = (cache.length if cache is not None else 0) + T
        if end > self.rope_cos.shape[0]:
            # Indexing past the table would silently wrap or crash deep inside; say what to change.
            raise ValueError(
                f"sequence of {end} positions exceeds max_seq_len {self.config.max_seq_len}; "
                "use a shorter input or a model with a longer context (--seq-len / midtraining)"
            )
        mask = None
        if positions is None:
            start = end - T
            cos = self.rope_cos[start:end]  # (T, D)
            sin = self.rope_sin[start:end]  # (T, D)
        else:
            # One table row per token, with a head axis to broadcast over: (B, T, D) -> (B, 1, T, D).
            cos = self.rope_cos[positions].unsqueeze(1)
            sin = self.rope_sin[positions].unsqueeze(1)
            # Key column s is visible to the token at position p iff s <= p: causal within its own row.
            columns = torch.arange(end, device=idx.device)  # (S,)
            mask = columns <= positions[..., None]  # (B, T, 1) against (S,) -> (B, T, S)
        x = self.embed(idx)  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer, positions, mask)
        if cache is not None and positions is None:
            cache.advance(T)
        return self.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
        loss_chunk: int = 4096,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) int64 -> logits (B, T, V); with targets (B, T) -> the cross-entropy instead.

        Targets equal to -100 are ignored (padding, prompt tokens in SFT). `reduction="sum"` returns
        the summed loss so callers can weight micro-batches by their token counts. `select`, a (B, T)
        bool mask, returns logits only where it is True -> (N, V), in row-major order: DPO needs the
        completion positions only, and at a 100K vocabulary the skipped rows are most of the memory.
        Going through forward (not hidden_states + lm_head) keeps FSDP's hooks in charge of the weights.
        """
        hidden = self.hidden_states(idx, cache)  # (B, T, C)
        if select is not None:
            return self.lm_head(hidden[select])  # (N, V)
        if targets is None:
            return self.lm_head(hidden)  # (B, T, V)
        return chunked_cross_entropy(hidden, self.lm_head.weight, targets, loss_chunk, reduction)

    # -- accounting -----------------------------------------------------------------------------

    # -- Hugging Face folders ---------------------------------------------------------------------
    # The names the Hugging Face ecosystem uses for the same two jobs. The file format itself (safetensors,
    # config.json, fused q/k/v) lives in hf.py, imported only when called: the model knows no files.

    @classmethod
    def from_pretrained(cls, hf_dir: str, device="cpu", dtype: torch.dtype | str | None = None) -> "Phi4":
        """Load a Hugging Face phi3-type folder (the released Phi-4, or what save_pretrained wrote)."""
        import hf

        return hf.load_phi4(hf_dir, device=device, dtype=dtype)

    def save_pretrained(self, hf_dir: str, **kwargs):
        """Write this model as a Hugging Face phi3 folder (config.json + safetensors shards)."""
        import hf

        hf.save_phi4(self, hf_dir, **kwargs)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count. Meta tensors have shapes, so this works without allocating the model."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, the PaLM appendix-B convention used for MFU.

        6N for the matrix multiplies (2 forward + 4 backward per parameter per token), where N leaves
        out the input embedding (a table lookup, not a matmul) but keeps the LM head; plus
        12 * n_layer * d_model * T for the attention score and value products (q.k^T and p.v, each
        2*T*D FLOPs per head forward, times 3 for forward+backward). Like PaLM we do not halve the
        attention term for the causal mask, so MFU figures compare with published ones.
        """
        T = seq_len or self.config.max_seq_len
        N = self.num_params(exclude_embedding=True)
        return 6 * N + 12 * self.config.n_layer * self.config.n_head * self.config.head_dim * T


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of lm_head(hidden) against targets without ever holding all the logits.

    At Phi-4 scale the logits are the largest tensor in the network: 16K tokens x 100,352 vocab in
    float32 is 6.6 GB per sequence, more than all the activations of a block. So we project and score
    `chunk_size` tokens at a time, and wrap each chunk in activation checkpointing: autograd keeps only
    the chunk's hidden states and recomputes its logits during backward, so at most one chunk of
    logits is alive at any moment. Log-softmax runs in float32 (bf16 log-softmax loses small probs).
    A batch that fits in one chunk is not checkpointed: its logits are alive at the end of the forward
    either way, beside every saved activation (the peak), so recomputing them would only cost time
    (the toy's 4,096-token pretraining: 1.05-1.14x on one CPU thread).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    C = hidden.shape[-1]
    flat_hidden = hidden.reshape(-1, C)  # (B*T, C)
    flat_targets = targets.reshape(-1)  # (B*T,)

    def chunk_loss(h, t):
        logits = (h @ lm_head_weight.t()).float()  # (chunk, V)
        return F.cross_entropy(logits, t, ignore_index=-100, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    several = flat_hidden.shape[0] > chunk_size
    for start in range(0, flat_hidden.shape[0], chunk_size):
        h = flat_hidden[start : start + chunk_size]
        t = flat_targets[start : start + chunk_size]
        if several and torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
        else:
            total = total + chunk_loss(h, t)
    if reduction == "sum":
        return total
    n_targets = (flat_targets != -100).sum().clamp(min=1)
    return total / n_targets



if __name__ == "__main__":
    import cli  # the command line only: the model itself needs no CLI plumbing

    parser = cli.Parser(description="Print parameter and FLOP accounting for each preset.")
    parser.add_argument("--size", default=None, help=f"one preset ({', '.join(PRESETS)}); default: all")
    args = parser.parse_args()
    sizes = [args.size] if args.size else list(PRESETS)
    for size in sizes:
        try:
            config = get_config(size)
        except ValueError as error:
            raise SystemExit(f"error: {error}")
        with torch.device("meta"):
            model = Phi4(config)
        print(
            f"{size:>6}: {model.num_params():>15,} params ({model.num_params(True):,} without embedding), "
            f"{model.flops_per_token() / 1e9:,.2f} GFLOP/token at T={config.max_seq_len}"
        )
