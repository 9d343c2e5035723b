"""Hugging Face checkpoints and tokenizer files, checked against oracles that do not share our code.

- Loading: a tiny Phi-4-style checkpoint (GQA with 4 query and 2 KV heads, three shards) is written by this
  file's own safetensors writer, and its logits are compared with a reference forward computed straight
  from the raw HF tensors (fused qkv_proj and gate_up_proj, HF's repeat-kv GQA, rotate-half RoPE).
- Saving: save -> load is bitwise in float32 and bfloat16; the written shards parse with this file's own
  reader into the fused HF layout; config.json carries the phi3 keys and Phi-4's special ids.
- transformers' Phi3ForCausalLM on the same tiny random weights gives the same logits in both directions
  (skipped when transformers is not installed).
- Tokenizer.from_hf on an HF-format tokenizer (tokenizer.json, or vocab.json + merges.txt) built here from
  the cl100k ranks gives Tokenizer.phi4's ids; the `tokenizers` library reads the same file to the same ids.
- Bad folders give one clear line each, from the loader and from `python sample.py --hf DIR`.
"""

import json
import math
import os
import re
import struct
import subprocess
import sys

import pytest
import tiktoken.load
import torch
import torch.nn.functional as F

import data
import hf
import tokenization
from model import ModelConfig, Phi4
from sample import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# vocab V, layers L, width C, query heads H, KV heads K, FFN width F, context; head dim D = C / H = 8.
V, L, C, H, K, FFN, CONTEXT, THETA = 101, 2, 32, 4, 2, 48, 64, 250000.0
D = C // H


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=V, n_layer=L, d_model=C, n_head=H, n_kv_head=K, ffn_dim=FFN, max_seq_len=CONTEXT)
    return ModelConfig(**{**fields, "rope_theta": THETA, **overrides})


def random_model(seed=0, dtype=torch.float32, **overrides) -> Phi4:
    """A Phi4 with weights of std 0.1 and norm gains around 1, so every tensor matters to the logits."""
    model = Phi4(tiny_config(**overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            param.copy_(1 + noise if name.endswith("norm.weight") else noise)
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------------
# The oracle side: HF tensors, safetensors files and a forward pass written without model.py


def random_hf_tensors(seed=0) -> dict[str, torch.Tensor]:
    """The tensors of a tiny phi3 checkpoint under HF's names, with HF's fused shapes."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, mean=0.0):
        return mean + 0.1 * torch.randn(shape, generator=generator)

    tensors = {"model.embed_tokens.weight": randn(V, C)}
    for i in range(L):
        layer = f"model.layers.{i}."
        tensors[layer + "input_layernorm.weight"] = randn(C, mean=1.0)
        tensors[layer + "self_attn.qkv_proj.weight"] = randn((H + 2 * K) * D, C)  # q 0:32, k 32:48, v 48:64
        tensors[layer + "self_attn.o_proj.weight"] = randn(C, H * D)
        tensors[layer + "post_attention_layernorm.weight"] = randn(C, mean=1.0)
        tensors[layer + "mlp.gate_up_proj.weight"] = randn(2 * FFN, C)  # gate 0:48, up 48:96
        tensors[layer + "mlp.down_proj.weight"] = randn(C, FFN)
    tensors["model.norm.weight"] = randn(C, mean=1.0)
    tensors["lm_head.weight"] = randn(V, C)
    return tensors


def write_safetensors_by_hand(path: str, tensors: dict[str, torch.Tensor]):
    """The format from its description: u64 header length, JSON header, raw bytes. No padding, on
    purpose: the header length is then rarely a multiple of 8, so the reader must cope with that."""
    header, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        if tensor.dtype == torch.bfloat16:
            raw, dtype = tensor.contiguous().view(torch.int16).numpy().tobytes(), "BF16"
        else:
            raw, dtype = tensor.contiguous().numpy().tobytes(), "F32"
        header[name] = {"dtype": dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header_bytes = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(chunks))


def read_safetensors_by_hand(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = (8 + header_len + offset for offset in info["data_offsets"])
        raw = bytearray(blob[begin:end])
        if info["dtype"] == "BF16":
            tensor = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
        else:
            tensor = torch.frombuffer(raw, dtype=torch.float32)
        tensors[name] = tensor.reshape(info["shape"])
    return tensors


def phi3_config_json(**overrides) -> dict:
    """config.json as the Phi-4 release writes it (transformers 4 style), with the tiny shape."""
    config = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": V, "hidden_size": C,
        "intermediate_size": FFN, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": K,
        "max_position_embeddings": CONTEXT, "rope_theta": THETA, "rope_scaling": None, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "sliding_window": None, "hidden_act": "silu", "torch_dtype": "float32",
    }
    return {**config, **overrides}


def write_hf_folder(folder, tensors: dict[str, torch.Tensor], n_shards=3, **config_overrides) -> str:
    """An HF folder: config.json, n_shards shard files and model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(phi3_config_json(**config_overrides), f)
    names = list(tensors)
    weight_map = {}
    for i in range(n_shards):
        file = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[i * len(names) // n_shards : (i + 1) * len(names) // n_shards]
        write_safetensors_by_hand(os.path.join(folder, file), {name: tensors[name] for name in part})
        weight_map.update({name: file for name in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return str(folder)


def reference_logits(tensors: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Phi-3's forward written from the HF tensors directly (float64, no model.py)."""
    w = {name: t.double() for name, t in tensors.items()}
    B, T = idx.shape

    def rms_norm(x, gain):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * gain

    inv_freq = THETA ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq).repeat(1, 2)  # (T, D)

    def rope(x):  # rotate half: channel i pairs with channel i + D/2
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        return x * angles.cos() + torch.cat([-x2, x1], dim=-1) * angles.sin()

    x = w["model.embed_tokens.weight"][idx]  # (B, T, C)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(L):
        layer = f"model.layers.{i}."
        h = rms_norm(x, w[layer + "input_layernorm.weight"])
        q, k, v = (h @ w[layer + "self_attn.qkv_proj.weight"].T).split([H * D, K * D, K * D], dim=-1)
        q = rope(q.view(B, T, H, D).transpose(1, 2))  # (B, H, T, D)
        k = rope(k.view(B, T, K, D).transpose(1, 2))  # (B, K, T, D)
        v = v.view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        # HF's repeat_kv: KV head j serves query heads j*G .. j*G + G - 1.
        k, v = k.repeat_interleave(H // K, dim=1), v.repeat_interleave(H // K, dim=1)  # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~causal, float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)
        x = x + attn @ w[layer + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[layer + "post_attention_layernorm.weight"])
        gate, up = (h @ w[layer + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ w[layer + "mlp.down_proj.weight"].T
    return rms_norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T  # (B, T, V)


# ----------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_a_sharded_gqa_checkpoint_written_by_hand_gives_the_reference_logits(tmp_path):
    tensors = random_hf_tensors()
    model = Phi4.from_pretrained(write_hf_folder(tmp_path, tensors, n_shards=3))
    idx = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx)
    torch.testing.assert_close(logits.double(), reference_logits(tensors, idx), atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("rope")
def test_the_fused_qkv_is_split_at_the_gqa_widths_not_in_thirds(tmp_path):
    tensors = random_hf_tensors()
    attn = Phi4.from_pretrained(write_hf_folder(tmp_path, tensors)).blocks[1].attn
    qkv = tensors["model.layers.1.self_attn.qkv_proj.weight"]  # 64 rows: q 32, k 16, v 16
    assert torch.equal(attn.q_proj.weight, qkv[: H * D])
    assert torch.equal(attn.k_proj.weight, qkv[H * D : (H + K) * D])
    assert torch.equal(attn.v_proj.weight, qkv[(H + K) * D :])


@pytest.mark.exercise("rope")
def test_the_fused_gate_up_is_split_gate_first(tmp_path):
    tensors = random_hf_tensors()
    mlp = Phi4.from_pretrained(write_hf_folder(tmp_path, tensors)).blocks[0].mlp
    gate_up = tensors["model.layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(mlp.gate_proj.weight, gate_up[:FFN])
    assert torch.equal(mlp.up_proj.weight, gate_up[FFN:])


@pytest.mark.exercise("rope")
@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16"])  # the command lines pass the name
def test_loading_converts_to_the_requested_dtype(tmp_path, dtype):
    tensors = random_hf_tensors()
    model = Phi4.from_pretrained(write_hf_folder(tmp_path, tensors), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"].to(torch.bfloat16))
    assert model.rope_cos.dtype == torch.float32  # the RoPE tables stay float32 whatever the weights


@pytest.mark.exercise("rope")
def test_a_bfloat16_checkpoint_loads_in_bfloat16_by_default(tmp_path):
    tensors = {name: t.to(torch.bfloat16) for name, t in random_hf_tensors().items()}
    model = Phi4.from_pretrained(write_hf_folder(tmp_path, tensors, torch_dtype="bfloat16"))
    assert model.embed.weight.dtype == torch.bfloat16
    assert torch.equal(model.embed.weight, tensors["model.embed_tokens.weight"])


def test_missing_unexpected_and_misshaped_tensors_are_listed_in_one_error(tmp_path):
    tensors = random_hf_tensors()
    del tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(D // 2)
    tensors["model.layers.1.self_attn.o_proj.weight"] = torch.zeros(C, C + 1)
    with pytest.raises(ValueError) as error:
        Phi4.from_pretrained(write_hf_folder(tmp_path, tensors))
    message = str(error.value)
    assert "missing: model.norm.weight" in message
    assert "unexpected: model.layers.0.self_attn.rotary_emb.inv_freq" in message
    assert "wrong shape: model.layers.1.self_attn.o_proj.weight [32, 33] (expected [32, 32])" in message
    assert "\n" not in message


def test_a_tensor_stored_in_two_shards_is_refused_naming_it(tmp_path):
    tensors = random_hf_tensors()
    folder = write_hf_folder(tmp_path, tensors)
    first = os.path.join(folder, "model-00001-of-00003.safetensors")
    header, _ = hf.read_safetensors_header(first)
    write_safetensors_by_hand(first, {**{name: tensors[name] for name in header}, "model.norm.weight": tensors["model.norm.weight"]})
    with pytest.raises(ValueError, match=re.escape("unexpected: model.norm.weight (again in model-0000")):
        Phi4.from_pretrained(folder)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"tie_word_embeddings": True}, "tie_word_embeddings"),
        ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.0] * 4}}, "rope_scaling"),
        ({"sliding_window": 16}, "sliding_window 16"),
        ({"attention_bias": True}, "biases"),
        ({"partial_rotary_factor": 0.75}, "partial_rotary_factor"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"head_dim": 4}, "head_dim 4 != hidden_size / num_attention_heads"),
    ],
)
def test_phi3_variants_we_do_not_implement_are_refused_by_name(tmp_path, overrides, named):
    folder = write_hf_folder(tmp_path, random_hf_tensors(), **overrides)
    with pytest.raises(ValueError, match=named):
        Phi4.from_pretrained(folder)


@pytest.mark.exercise("rope")
def test_a_transformers_5_style_config_with_rope_parameters_is_read(tmp_path):
    config = {"rope_parameters": {"rope_theta": 12345.0, "rope_type": "default", "partial_rotary_factor": 1.0}}
    folder = write_hf_folder(tmp_path, random_hf_tensors(), rope_theta=None, dtype="float32", **config)
    assert Phi4.from_pretrained(folder).config.rope_theta == 12345.0


# ----------------------------------------------------------------------------------------------------
# Saving


@pytest.mark.exercise("rope")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_then_load_round_trips_every_tensor_bitwise(tmp_path, dtype):
    model = random_model(dtype=dtype)
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1  # really sharded
    loaded = Phi4.from_pretrained(tmp_path)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert actual[name].dtype == dtype and torch.equal(actual[name], expected[name]), name
    assert loaded.config == model.config


@pytest.mark.exercise("rope")
def test_saved_shards_hold_the_fused_hf_layout_for_an_independent_reader(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for file in set(weight_map.values()):
        tensors.update(read_safetensors_by_hand(str(tmp_path / file)))
    assert set(tensors) == set(random_hf_tensors())  # exactly HF's names, nothing else
    assert all(weight_map[name] in os.listdir(tmp_path) for name in tensors)
    attn, mlp = model.blocks[1].attn, model.blocks[1].mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    assert torch.equal(tensors["model.layers.1.self_attn.qkv_proj.weight"], qkv)
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    assert torch.equal(tensors["model.layers.1.mlp.gate_up_proj.weight"], gate_up)
    assert torch.equal(tensors["model.layers.1.post_attention_layernorm.weight"], model.blocks[1].mlp_norm.weight)


@pytest.mark.exercise("rope")
def test_saved_config_has_the_phi3_keys_and_phi4s_special_ids(tmp_path):
    model = random_model(vocab_size=100352, n_layer=1, d_model=8, n_head=2, n_kv_head=1, ffn_dim=16).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert config["architectures"] == ["Phi3ForCausalLM"] and config["model_type"] == "phi3"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (100257, 100265, 100349)
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["rope_theta"]) == (2, 1, THETA)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # small: one file, no index


@pytest.mark.exercise("rope")
def test_saving_fewer_shards_into_an_old_folder_removes_the_stale_ones(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path, max_shard_bytes=20_000)
    model.save_pretrained(tmp_path)  # now one file: the old shards and index must not win over it
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


# ----------------------------------------------------------------------------------------------------
# Bad folders: one clear line each, from the loader and from the CLI


def make_bad_folder(kind: str, folder) -> str:
    if kind == "no config.json":
        os.makedirs(folder, exist_ok=True)
    elif kind == "not phi3":
        write_hf_folder(folder, random_hf_tensors(), model_type="llama")
    else:
        files = write_hf_folder(folder, random_hf_tensors(), n_shards=3)
        shard = os.path.join(files, "model-00002-of-00003.safetensors")
        if kind == "missing shard":
            os.remove(shard)
        else:  # truncated: the download stopped 100 bytes early
            os.truncate(shard, os.path.getsize(shard) - 100)
    return str(folder)


BAD_FOLDERS = {
    "no config.json": "has no config.json",
    "not phi3": "model_type is 'llama'",
    "missing shard": "missing: model-00002-of-00003.safetensors",
    "truncated": "model-00002-of-00003.safetensors is truncated",
}


@pytest.mark.parametrize("kind", BAD_FOLDERS)
def test_a_bad_folder_gives_one_clear_line(tmp_path, kind):
    with pytest.raises(ValueError, match=BAD_FOLDERS[kind]) as error:
        Phi4.from_pretrained(make_bad_folder(kind, tmp_path / "bad"))
    assert "\n" not in str(error.value)


def safetensors_bytes(header, n_bytes: int = 0) -> bytes:
    """The safetensors layout: the header's length in 8 little-endian bytes, the header as JSON, n_bytes of data."""
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(n_bytes)


F32_PAIR = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}  # two float32 values: 8 bytes

# (what is wrong, the file's bytes, the error)
BAD_SAFETENSORS = [
    ("shorter than its header length", b"\x10\x00", "is truncated: 2 bytes, too short for the 8-byte header length"),
    ("a header longer than the file", safetensors_bytes(F32_PAIR, 8)[:40], "is truncated or not safetensors"),
    ("a header that is a list", safetensors_bytes([1, 2]), "its header is not a JSON object"),
    ("a dtype we cannot hold", safetensors_bytes({"w": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]}}, 2),
     "tensor w is I8; only F64, F32, F16, BF16 weights are supported"),
    ("a tensor whose bytes do not fit its shape",
     safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4),
     "tensor w spans 4 bytes, not those of F32 [2]"),
]


@pytest.mark.parametrize("raw, message", [case[1:] for case in BAD_SAFETENSORS], ids=[case[0] for case in BAD_SAFETENSORS])
def test_a_broken_safetensors_file_is_refused_before_any_weight_is_read(tmp_path, raw, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(F32_PAIR, 8))
    assert list(hf.read_safetensors_header(str(path))[0]) == ["w"]  # the well-formed file reads
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=re.escape(message)):
        hf.read_safetensors_header(str(path))


def test_a_path_that_is_not_a_folder_is_refused_naming_what_to_pass(tmp_path):
    path = tmp_path / "phi-4.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a folder; pass a Hugging Face model folder"):
        Phi4.from_pretrained(str(path))


@pytest.mark.parametrize("kind", BAD_FOLDERS)
def test_sample_py_exits_nonzero_with_one_error_line_on_a_bad_folder(tmp_path, kind):
    folder = make_bad_folder(kind, tmp_path / "bad")
    result = subprocess.run(
        [sys.executable, "sample.py", "--hf", folder, "--prompt", "hi", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and BAD_FOLDERS[kind] in lines[0], result.stderr


# ----------------------------------------------------------------------------------------------------
# Cross-check against transformers' Phi3ForCausalLM (the implementation the checkpoints are made for)


def transformers_phi3(seed=0):
    transformers = pytest.importorskip("transformers")
    config = transformers.Phi3Config(
        vocab_size=V, hidden_size=C, intermediate_size=FFN, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=K, max_position_embeddings=CONTEXT, rope_theta=THETA, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.Phi3ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the library's init leaves norms at 1 and weights tiny: make every tensor count
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.1
            param.copy_(1 + noise if name.endswith("norm.weight") else noise)
    return model.eval()


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_transformers_checkpoint_loads_into_ours_with_equal_logits(tmp_path):
    theirs = transformers_phi3()
    theirs.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = Phi4.from_pretrained(tmp_path)
    idx = torch.randint(0, V, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("rmsnorm_swiglu", "rope")
def test_our_checkpoint_loads_into_transformers_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = random_model()
    ours.save_pretrained(tmp_path, max_shard_bytes=20_000)
    theirs = transformers.Phi3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    idx = torch.randint(0, V, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Tokenizer files


def gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest get chr(256 + n)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def write_hf_tokenizer(folder, ranks: dict[bytes, int], layout="tokenizer.json") -> str:
    """An HF byte-level BPE from tiktoken ranks, the way transformers converts tiktoken files: every way
    to split a token into two known tokens is a merge, merges ordered by the rank of their result."""
    byte_to_char = gpt2_byte_to_char()

    def text(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        cuts = [i for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        splits = [(ranks[token[:i]], ranks[token[i:]], i) for i in cuts]
        merges += [(text(token[:i]), text(token[i:])) for _, _, i in sorted(splits)]
    vocab = {text(token): rank for token, rank in ranks.items()}
    specials = {name: len(ranks) + i for i, name in enumerate(tokenization.PHI4_SPECIAL_NAMES)}
    os.makedirs(folder, exist_ok=True)
    if layout == "tokenizer.json":
        spec = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [
                {"id": i, "content": name, "special": True, "normalized": False,
                 "single_word": False, "lstrip": False, "rstrip": False}
                for name, i in specials.items()
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tokenization.CL100K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": vocab, "merges": [list(pair) for pair in merges],
            },
        }
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
    else:  # the older pair of files, special tokens in added_tokens.json or tokenizer_config.json
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
        if layout.endswith("tokenizer_config.json"):
            decoder = {str(i): {"content": name, "special": True} for name, i in specials.items()}
            with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump({"added_tokens_decoder": decoder}, f)
        else:
            with open(os.path.join(folder, "added_tokens.json"), "w", encoding="utf-8") as f:
                json.dump(specials, f)
    return str(folder)


TEXTS = [
    "Hello world! It's 2024, and Phi-4 has 14,659,507,200 parameters.",
    "  indented\n\n\tcode: def f(x):\n        return x ** 2  # squares\r\n",
    "Ünïcödé, 日本語のテキスト, emoji 🤖🧠 and a long number 1234567890",
    "assistant",
    "<|im_end|> typed by a user stays plain text",
]


@pytest.fixture(scope="module")
def cl100k_ranks(cl100k_path):
    return tiktoken.load.load_tiktoken_bpe(cl100k_path)


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json + merges.txt"])
def test_from_hf_gives_the_same_ids_as_phi4(tmp_path, cl100k_path, cl100k_ranks, layout):
    phi4 = data.Tokenizer.phi4(cl100k_path)
    ours = hf.load_tokenizer(write_hf_tokenizer(tmp_path, cl100k_ranks, layout))
    assert ours.vocab_size == phi4.vocab_size == 100352 and ours.name == "phi4"
    for text in TEXTS:
        assert ours.encode(text) == phi4.encode(text), text
    known = "<|im_start|>Hello<|im_sep|> World<|im_end|><|dummy_85|>"  # the released tokenizer's known ids
    assert ours.encode(known, allow_special=True) == [100264, 9906, 100266, 4435, 100265, 100349]
    assert (ours.bos_id, ours.im_end_id, ours.pad_id) == (100257, 100265, 100349)


def test_the_tokenizers_library_reads_the_same_file_to_the_same_ids(tmp_path, cl100k_ranks):
    tokenizers = pytest.importorskip("tokenizers")
    folder = write_hf_tokenizer(tmp_path, cl100k_ranks)
    theirs = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ours = hf.load_tokenizer(folder)
    for text in TEXTS[:4]:
        assert theirs.encode(text, add_special_tokens=False).ids == ours.encode(text), text


def small_bpe() -> data.Tokenizer:
    return data.Tokenizer.train("Mia has 3 apples. Leo buys 4 more apples. " * 20, vocab_size=400)


@pytest.mark.exercise("bpe")
def test_from_hf_reads_back_a_bpe_trained_here(tmp_path):
    trained = small_bpe()
    ours = hf.load_tokenizer(write_hf_tokenizer(tmp_path, trained.mergeable_ranks))
    text = "Mia has 7 apples; Leo buys 12 more. Ünïcödé too."
    assert ours.encode(text) == trained.encode(text) and ours.vocab_size == trained.vocab_size
    assert ours.name == "hf-bpe"  # not the full Phi-4 vocabulary: train.py sizes the embedding to it


@pytest.mark.parametrize("layout", ["vocab.json + merges.txt", "vocab.json + merges.txt + tokenizer_config.json"])
def test_the_older_pair_of_files_has_its_special_tokens_checked_in_either_file_that_may_hold_them(tmp_path, layout):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    folder = write_hf_tokenizer(tmp_path, ranks, layout)
    ours = hf.load_tokenizer(folder)
    assert ours.encode("abc") == [257]
    assert ours.special_tokens == {name: 258 + i for i, name in enumerate(tokenization.PHI4_SPECIAL_NAMES)}
    # <|im_sep|> and <|im_end|> swapped in the file: ids the Phi-4 layout does not give them.
    name = "tokenizer_config.json" if layout.endswith("tokenizer_config.json") else "added_tokens.json"
    path = os.path.join(folder, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("<|im_sep|>", "SWAP").replace("<|im_end|>", "<|im_sep|>").replace("SWAP", "<|im_end|>"))
    with pytest.raises(ValueError, match=re.escape("<|im_sep|> at 267, <|im_end|> at 268")):  # 258 + 9, 258 + 10
        hf.load_tokenizer(folder)

def edit_tokenizer_json(folder: str, edit) -> None:
    """Apply edit(spec) to the folder's tokenizer.json, as a hand edit of the file would."""
    path = os.path.join(folder, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    edit(spec)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)


@pytest.mark.exercise("bpe")
def test_special_tokens_also_listed_in_the_vocabulary_are_not_taken_for_bpe_ranks(tmp_path):
    trained = small_bpe()
    folder = write_hf_tokenizer(tmp_path, trained.mergeable_ranks)
    edit_tokenizer_json(folder, lambda spec: spec["model"]["vocab"].update(
        {token["content"]: token["id"] for token in spec["added_tokens"]}))
    ours = hf.load_tokenizer(folder)
    assert ours.special_tokens == trained.special_tokens and ours.vocab_size == trained.vocab_size


def test_from_hf_refuses_special_tokens_where_phi4_does_not_put_them(tmp_path):
    ranks = {bytes([b]): b for b in range(256)}
    folder = write_hf_tokenizer(tmp_path, ranks)

    def swap(spec):
        spec["added_tokens"][9]["content"], spec["added_tokens"][10]["content"] = "<|im_sep|>", "<|im_end|>"

    edit_tokenizer_json(folder, swap)
    with pytest.raises(ValueError, match=re.escape("<|im_sep|> at 265")):
        hf.load_tokenizer(folder)


# (what is wrong, an edit of a valid tokenizer.json with merges a + b -> ab (256), ab + c -> abc (257), the error)
BAD_TOKENIZERS = [
    ("not a BPE", lambda spec: spec["model"].update(type="WordPiece"), "model type 'WordPiece' is not a byte-level BPE"),
    ("a merge of three", lambda spec: spec["model"].update(merges=[["a", "b", "c"], ["ab", "c"]]), "is not a pair of tokens"),
    ("merges out of id order", lambda spec: spec["model"]["merges"].reverse(),  # ab (256) merged after abc (257)
     "merge 'a' + 'b' does not follow the id order"),
    ("a gap in the ids", lambda spec: spec["model"]["vocab"].update(abc=1000), "the 258 BPE ids are not exactly 0..257"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in BAD_TOKENIZERS], ids=[case[0] for case in BAD_TOKENIZERS])
def test_from_hf_refuses_a_tokenizer_that_is_not_a_tiktoken_style_bpe(tmp_path, edit, message):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257}
    folder = write_hf_tokenizer(tmp_path, ranks)
    assert hf.load_tokenizer(folder).encode("abc") == [257]  # the file as written is fine
    edit_tokenizer_json(folder, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        hf.load_tokenizer(folder)


def test_from_hf_without_tokenizer_files_says_which_files_it_needs(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        hf.load_tokenizer(str(tmp_path))


# ----------------------------------------------------------------------------------------------------
# Chatting with a folder: streaming and the CLI


@pytest.mark.exercise("rmsnorm_swiglu", "rope", "kv_cache", "sampling")
def test_streamed_tokens_are_exactly_the_generated_ones():
    model = random_model()
    idx = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(4))
    streamed = []
    out = generate(model, idx, 12, temperature=0.8, seed=5, on_token=lambda t: streamed.append(t.tolist()))
    assert torch.equal(torch.tensor(streamed).T, out[:, 5:])
    assert torch.equal(out, generate(model, idx, 12, temperature=0.8, seed=5))  # the callback changes nothing


@pytest.mark.exercise("bpe", "chat_mask", "rmsnorm_swiglu", "rope", "kv_cache")
def test_sample_py_chats_with_a_tiny_hf_folder_and_prints_the_greedy_reply(tmp_path):
    tokenizer = small_bpe()
    folder = write_hf_tokenizer(tmp_path, tokenizer.mergeable_ranks)
    model = random_model(vocab_size=tokenizer.vocab_size)
    model.save_pretrained(folder)
    result = subprocess.run(
        [sys.executable, "sample.py", "--hf", folder, "--prompt", "Mia has", "--max-new-tokens", "8",
         "--device", "cpu"],
        cwd=ROOT, capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr.decode()
    # The oracle: greedy generation in this process on the same weights and the same chat prompt.
    prompt = tokenizer.render_prompt([{"role": "user", "content": "Mia has"}])
    out = generate(model, torch.tensor([prompt]), 8, temperature=0, stop_tokens=(tokenizer.im_end_id,))
    reply = [t for t in out[0, len(prompt) :].tolist() if t != tokenizer.im_end_id]
    expected = tokenizer.encoding.decode_bytes(reply).decode("utf-8", errors="replace")
    assert result.stdout.decode("utf-8") == expected + "\n"
