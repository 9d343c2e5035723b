"""model.py against oracles: exact Phi-4 parameter count, attention implementations against each other,
GQA against MHA with repeated heads, causality, the KV cache against full recompute, RoPE against a
direct rotation, chunked cross-entropy against the plain one, and reproducible meta-device init."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import model as model_module
from conftest import TINY_MODEL, triton_kernel_skip_reason
from model import PRESETS, KVCache, ModelConfig, Phi4, apply_rope, chunked_cross_entropy, get_config, rope_tables


# The shared tiny model (conftest.py) with a 97-token vocabulary and Phi-4's init std of 0.02.
MODEL_TEST = dict(vocab_size=97, init_std=0.02)


def tiny_config(**overrides) -> ModelConfig:
    """The shared tiny model's shape, for tests that build (or fail to build) a config themselves."""
    return ModelConfig(**{**TINY_MODEL, **MODEL_TEST, **overrides})


def test_14b_preset_on_the_meta_device_has_exactly_phi4s_parameter_count():
    with torch.device("meta"):
        model = Phi4(PRESETS["14b"])
    assert model.num_params() == 14_659_507_200
    # The per-part breakdown of the release: two 513,802,240 embeddings and 40 equal blocks.
    assert model.embed.weight.numel() == 513_802_240 == model.lm_head.weight.numel()
    assert sum(p.numel() for p in model.blocks[0].parameters()) == 340_797_440


def test_14b_preset_has_the_released_shape():
    c = PRESETS["14b"]
    assert (c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.ffn_dim, c.vocab_size) == (
        40, 5120, 40, 10, 128, 17920, 100352,
    )


def test_the_14b_kv_cache_allocates_204800_bytes_per_token_in_bf16():
    # Counted from the tensors KVCache allocates (on the meta device: shapes only, no memory).
    cache = KVCache(PRESETS["14b"], batch_size=1, max_len=1, device="meta", dtype=torch.bfloat16)
    assert (cache.k.numel() + cache.v.numel()) * cache.k.element_size() == 204_800


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_head=5), "d_model"),
        (dict(n_kv_head=4), "n_head"),
        (dict(attn_impl="flash"), "attn_impl"),
        (dict(n_layer=0), "n_layer"),
        (dict(rope_theta=0.5), "rope_theta"),
        (dict(d_model=42), "head dim d_model/n_head = 7 must be even"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(init_std=0.0), "init_std"),
    ],
)
def test_bad_config_fails_at_construction_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_unknown_size_name_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="--size"):
        get_config("15b")


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "flash_forward")
@pytest.mark.parametrize("other", ["sdpa", "triton"])
def test_naive_attention_gives_the_logits_of_sdpa_and_of_the_triton_kernel_on_the_same_weights(other, tiny_model):
    if other == "triton" and (reason := triton_kernel_skip_reason()):
        pytest.skip(reason)
    # head_dim 16: the smallest the kernel takes. GQA (4 query heads on 2 KV heads), odd length 29.
    model = tiny_model(d_model=64, n_head=4, n_kv_head=2, attn_impl="naive", **MODEL_TEST)
    idx = torch.randint(0, 97, (2, 29), generator=torch.Generator().manual_seed(1))
    naive = model(idx)
    model.config.attn_impl = other  # the blocks share this config object: the same weights, another attention
    assert model.blocks[0].attn.config.attn_impl == other
    torch.testing.assert_close(model(idx), naive, atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention")
def test_gqa_equals_mha_with_each_kv_head_repeated(tiny_model):
    gqa = tiny_model(attn_impl="naive", **MODEL_TEST)
    mha = Phi4(tiny_config(n_kv_head=6, attn_impl="naive")).eval()
    state = gqa.state_dict()
    group = 6 // 2
    D = gqa.config.head_dim
    for name, tensor in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            # (K*D, C) -> (K, D, C) -> repeat each KV head for the G query heads of its group.
            heads = tensor.view(2, D, -1)  # (K, D, C)
            state[name] = heads.repeat_interleave(group, dim=0).reshape(6 * D, -1)  # (H*D, C)
    mha.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 21))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_changing_future_tokens_never_changes_earlier_logits(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl, **MODEL_TEST)
    idx = torch.randint(0, 97, (2, 30))
    changed = idx.clone()
    changed[:, 17:] = torch.randint(0, 97, (2, 13))
    torch.testing.assert_close(model(idx)[:, :17], model(changed)[:, :17], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(model(idx)[:, 17:], model(changed)[:, 17:])


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention", "kv_cache")
@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
def test_kv_cache_prefill_then_decode_matches_full_recompute(attn_impl, tiny_model):
    model = tiny_model(attn_impl=attn_impl, **MODEL_TEST)
    idx = torch.randint(0, 97, (2, 25))
    full = model(idx)  # (B, T, V) without a cache
    cache = KVCache(model.config, batch_size=2, max_len=25)
    pieces = [model(idx[:, :10], cache=cache)]  # prefill 10 tokens
    pieces.append(model(idx[:, 10:14], cache=cache))  # a chunk of 4 (bottom-right causal alignment)
    for t in range(14, 25):  # then one token at a time
        pieces.append(model(idx[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 25


@pytest.mark.exercise("rope")
def test_rope_is_the_rotate_half_rotation_of_channel_pairs_i_and_i_plus_half():
    D, theta = 8, 10000.0
    cos, sin = rope_tables(5, D, theta)
    x = torch.randn(1, 1, 5, D)
    out = apply_rope(x, cos, sin)
    for m in range(5):
        for i in range(D // 2):
            angle = m * theta ** (-2 * i / D)
            a, b = x[0, 0, m, i].item(), x[0, 0, m, i + D // 2].item()
            assert out[0, 0, m, i].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)
            assert out[0, 0, m, i + D // 2].item() == pytest.approx(b * math.cos(angle) + a * math.sin(angle), abs=1e-5)


@pytest.mark.exercise("rope")
def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(40, 16, 10000.0)
    q, k = torch.randn(16), torch.randn(16)
    qs = apply_rope(q.expand(1, 1, 40, 16), cos, sin)[0, 0]  # (40, D)
    ks = apply_rope(k.expand(1, 1, 40, 16), cos, sin)[0, 0]
    assert (qs[7] @ ks[3]).item() == pytest.approx((qs[30] @ ks[26]).item(), rel=1e-4)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "context_extension")
def test_set_rope_rebuilds_tables_for_a_new_length_and_base(tiny_model):
    model = tiny_model(**MODEL_TEST)
    model.set_rope(max_seq_len=256, rope_theta=250_000.0)
    cos, sin = rope_tables(256, model.config.head_dim, 250_000.0)
    assert model.config.max_seq_len == 256 and model.config.rope_theta == 250_000.0
    torch.testing.assert_close(model.rope_cos, cos)
    torch.testing.assert_close(model.rope_sin, sin)
    assert model.blocks[0].attn.config.rope_theta == 250_000.0
    model(torch.zeros(1, 200, dtype=torch.long))  # positions past the old 64 now work


@pytest.mark.exercise("rope")
def test_positions_beyond_the_rope_table_raise_a_clear_error(tiny_model):
    model = tiny_model(**MODEL_TEST)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
@pytest.mark.parametrize("loss_chunk, recomputed", [(7, 10), (66, 0), (4096, 0)])
def test_chunked_cross_entropy_matches_plain_cross_entropy_and_its_gradient(tiny_model, monkeypatch, loss_chunk, recomputed):
    # 66 tokens in chunks of 7 (uneven on purpose): each of the 10 chunks recomputes its logits in backward;
    # in one chunk nothing is recomputed (it would save no memory).
    calls = []
    monkeypatch.setattr(model_module, "checkpoint", lambda fn, *args, **kwargs: calls.append(1) or checkpoint(fn, *args, **kwargs))
    model = tiny_model(**MODEL_TEST)
    idx = torch.randint(0, 97, (2, 33))
    targets = torch.randint(0, 97, (2, 33))
    targets[0, :5] = -100  # ignored positions must not count
    loss = model(idx, targets, loss_chunk=loss_chunk)
    assert len(calls) == recomputed
    loss.backward()
    chunked_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    reference = F.cross_entropy(model(idx).view(-1, 97), targets.view(-1), ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_grad, model.lm_head.weight.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_meta_construction_then_init_weights_is_reproducible(tiny_model):
    with torch.device("meta"):
        a = Phi4(tiny_config())
    a.to_empty(device="cpu")
    a.init_weights(torch.Generator().manual_seed(3))
    b = tiny_model(seed=3, **MODEL_TEST)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=name)
    idx = torch.randint(0, 97, (1, 9))
    torch.testing.assert_close(a(idx), b(idx))


@pytest.mark.exercise("rope")
def test_init_gives_std_0_02_weights_and_unit_norm_gains(tiny_model):
    model = tiny_model(d_model=96, n_head=6, ffn_dim=192, **MODEL_TEST)
    assert model.blocks[0].mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.blocks[1].attn_norm.weight == 1)


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "gqa_attention")
def test_flops_per_token_matches_the_matmuls_counted_in_a_forward_pass(tiny_model):
    """The oracle is torch's FLOP counter on a real forward (naive attention: the full T x T products,
    as the PaLM convention counts them), times 3 for forward + backward. It sees only matmuls, so the
    RMSNorm gains (in N, but not matmuls) are the whole difference."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(attn_impl="naive", **MODEL_TEST)
    T = 64
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, T, dtype=torch.long))
    norm_params = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    assert 3 * counter.get_total_flops() / T == model.flops_per_token(T) - 6 * norm_params


@pytest.mark.exercise("rmsnorm_swiglu")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_and_swiglu_equal_their_float64_formulas(dtype):
    from model import MLP, RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    norm.weight.data = torch.randn(16)
    x = (torch.randn(3, 5, 16) * 4).to(dtype)
    x64 = x.double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    got = norm(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-5)

    mlp = MLP(ModelConfig(**TINY_MODEL))
    y = torch.randn(2, 4, TINY_MODEL["d_model"])
    gate, up, down = (m.weight.double() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    g = y.double() @ gate.T
    expected = (g * torch.sigmoid(g) * (y.double() @ up.T)) @ down.T  # silu(g) = g * sigmoid(g)
    torch.testing.assert_close(mlp(y).double(), expected, rtol=1e-5, atol=1e-6)


def _attention_float64(q, k, v, visible):
    """Per-head loops in float64: query head h reads key/value head h // (H / K); visible (B, T, S)."""
    B, H, T, D = q.shape
    G = H // k.shape[1]
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            scores = q[b, h].double() @ k[b, h // G].double().T / math.sqrt(D)  # (T, S)
            scores = scores.masked_fill(~visible[b], float("-inf"))
            out[b, h] = scores.softmax(-1) @ v[b, h // G].double()
    return out


@pytest.mark.exercise("gqa_attention")
def test_naive_attention_equals_per_head_float64_loops_for_gqa_causal_chunks_and_row_masks():
    from model import naive_attention

    torch.manual_seed(0)
    B, H, K, D = 2, 6, 2, 8
    for T, S in [(7, 7), (3, 9), (1, 5)]:  # a square training block, a chunk after 6 cached keys, one decode step
        q, k, v = torch.randn(B, H, T, D), torch.randn(B, K, S, D), torch.randn(B, K, S, D)
        # Bottom-right causal: query t sits at position S - T + t and sees keys 0 .. S - T + t.
        causal = torch.ones(T, S, dtype=torch.bool).tril(S - T).expand(B, T, S)
        torch.testing.assert_close(naive_attention(q, k, v, causal=True).double(), _attention_float64(q, k, v, causal), rtol=1e-5, atol=1e-6)
        everything = torch.ones(B, T, S, dtype=torch.bool)
        torch.testing.assert_close(naive_attention(q, k, v, causal=False).double(), _attention_float64(q, k, v, everything), rtol=1e-5, atol=1e-6)
    # A per-row mask replaces the causal one: row 0 may not see its first two keys, row 1 sees only keys 0-2.
    q, k, v = torch.randn(B, H, 4, D), torch.randn(B, K, 6, D), torch.randn(B, K, 6, D)
    mask = torch.ones(B, 4, 6, dtype=torch.bool)
    mask[0, :, :2] = False
    mask[1, :, 3:] = False
    torch.testing.assert_close(naive_attention(q, k, v, mask=mask).double(), _attention_float64(q, k, v, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("kv_cache")
def test_the_kv_cache_returns_every_key_stored_so_far_per_layer_and_refuses_to_overflow():
    config = ModelConfig(**TINY_MODEL)
    K, D = config.n_kv_head, config.head_dim
    cache = KVCache(config, batch_size=2, max_len=6)
    torch.manual_seed(0)
    first = [(torch.randn(2, K, 4, D), torch.randn(2, K, 4, D)) for _ in range(config.n_layer)]
    for layer, (k, v) in enumerate(first):
        got_k, got_v = cache.update(layer, k, v)
        assert torch.equal(got_k, k) and torch.equal(got_v, v)
    cache.advance(4)
    second = [(torch.randn(2, K, 2, D), torch.randn(2, K, 2, D)) for _ in range(config.n_layer)]
    for layer, (k, v) in enumerate(second):
        got_k, got_v = cache.update(layer, k, v)
        # Each layer returns its own keys: the first 4 tokens, then these 2.
        assert torch.equal(got_k, torch.cat([first[layer][0], k], dim=2))
        assert torch.equal(got_v, torch.cat([first[layer][1], v], dim=2))
    cache.advance(2)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(0, torch.randn(2, K, 1, D), torch.randn(2, K, 1, D))
    with pytest.raises(ValueError, match="KV cache of 65 tokens exceeds the model's max_seq_len 64"):
        KVCache(config, batch_size=1, max_len=config.max_seq_len + 1)


@pytest.mark.exercise("rope")
def test_per_row_positions_without_a_cache_and_an_unknown_loss_reduction_are_refused(tiny_model):
    model = tiny_model()
    with pytest.raises(ValueError, match="per-row positions need a KV cache"):
        model.hidden_states(torch.tensor([[1, 2]]), positions=torch.tensor([[0, 1]]))
    hidden, weight, targets = torch.randn(2, 3, 8), torch.randn(5, 8), torch.tensor([[1, 2, 3], [4, 0, 1]])
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'max'"):
        chunked_cross_entropy(hidden, weight, targets, reduction="max")
