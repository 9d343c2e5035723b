"""Hugging Face interop: the released Phi-4 folder in, our models out, as plain functions. A room.

The released Phi-4 (microsoft/phi-4) is a folder: config.json (model_type "phi3", the transformers class
Phi3ForCausalLM), the tokenizer files, and the weights as safetensors shards listed in
model.safetensors.index.json. This file reads and writes that layout, so `model.py` stays about the
network and nothing else:

    load_phi4(dir) / save_phi4(model, dir)   weights + config.json (Phi4.from_pretrained / save_pretrained
                                             call these)
    load_tokenizer(dir)                      tokenizer.json (or vocab.json + merges.txt) -> data.Tokenizer
    load(dir, device)                        both at once, in the dtype that suits the device
    read/write_safetensors                   the weight file format, by hand (about sixty lines)
    config_from_hf / hf_config               config.json <-> ModelConfig, refusing what we do not implement

It is also the way to share a model safely: safetensors is bytes plus a JSON header, so opening one runs
no code, unlike a pickle. `python sample.py --hf DIR` chats with a folder; measure loading with
`python scripts/measure_hf_load.py 1b`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys

import numpy as np
import torch

import files
import parallel
from checkpoint import check_finite
from model import ModelConfig, Phi4
from tokenization import CL100K_N_RANKS, PHI4_SPECIAL_NAMES, Tokenizer

#
# The released Phi-4 (microsoft/phi-4) is a folder: config.json (model_type "phi3", the transformers
# class Phi3ForCausalLM), the tokenizer files, and the weights as safetensors shards listed in
# model.safetensors.index.json. Its tensors hold the same numbers as our parameters under other names,
# and two of them are fused (the release's config.json and weight index): `qkv_proj` stacks the rows of q, k and v, and
# `gate_up_proj` stacks gate then up. One table, `hf_layout`, says which of our parameters make up each
# HF tensor; loading reads through it one way and saving the other, so the two cannot disagree.
#
# safetensors is a deliberately dull format, which is why we read and write it ourselves:
#     8 bytes      N, the length of the header, a little-endian unsigned 64-bit integer
#     N bytes      JSON {name: {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...}
#                  plus an optional "__metadata__" entry of strings
#     the rest     every tensor's raw bytes, row-major, little-endian, begin/end counted from here
# Reading it takes a memory map viewed as a numpy array and thirty lines, so the runtime needs no
# `safetensors` package and the reader sees that a checkpoint is nothing but named byte ranges. The
# memory map reads a page from disk only when a tensor touches it, and each tensor is copied once,
# straight into its parameter on the target device and in the target dtype. bfloat16 has no numpy
# dtype, so bytes are handed to torch as uint8 and reinterpreted there (Tensor.view(dtype)).
#
# Measure load time and peak host memory: python scripts/measure_hf_load.py 1b

# safetensors dtype names of the floating-point tensors a language model checkpoint holds.
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# Shards of at most 2 GiB when we save: small enough for any filesystem and to resume a broken
# download cheaply, large enough that the 14B model is 15 files (transformers' default is 50 GB).
MAX_SHARD_BYTES = 2 * 1024**3


def hf_layout(n_layer: int) -> dict[str, list[str]]:
    """HF tensor name -> our parameter names whose rows, stacked in this order, make that tensor.

    The row counts come from our parameters' shapes, so the GQA split is automatic: q_proj has H*D
    rows and k_proj, v_proj K*D rows each (Phi-4: 5120 + 1280 + 1280 = 7680), not thirds of qkv_proj.
    """
    layout = {"model.embed_tokens.weight": ["embed.weight"]}
    for i in range(n_layer):
        hf, ours = f"model.layers.{i}.", f"blocks.{i}."
        layout[hf + "input_layernorm.weight"] = [ours + "attn_norm.weight"]
        layout[hf + "self_attn.qkv_proj.weight"] = [ours + f"attn.{p}_proj.weight" for p in "qkv"]
        layout[hf + "self_attn.o_proj.weight"] = [ours + "attn.o_proj.weight"]
        # HF calls the pre-MLP norm "post_attention_layernorm": it follows the attention residual.
        layout[hf + "post_attention_layernorm.weight"] = [ours + "mlp_norm.weight"]
        layout[hf + "mlp.gate_up_proj.weight"] = [ours + "mlp.gate_proj.weight", ours + "mlp.up_proj.weight"]
        layout[hf + "mlp.down_proj.weight"] = [ours + "mlp.down_proj.weight"]
    layout["model.norm.weight"] = ["norm.weight"]
    layout["lm_head.weight"] = ["lm_head.weight"]
    return layout


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """-> ({name: {"dtype", "shape", "data_offsets"}}, byte offset where the data starts).

    Everything that can be wrong with a file is found here, before any weight is read: a truncated
    file is caught by comparing the offsets with its size, not by a crash halfway through a 30 GB load.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        # Only the header is read here; for a 5 GB shard that is a few kilobytes.
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is truncated: {size} bytes, too short for the 8-byte header length")
        header_len = int.from_bytes(prefix, "little")
        if 8 + header_len > size:
            raise ValueError(f"{path} is truncated or not safetensors: a {header_len}-byte header in {size} bytes")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as error:  # bad UTF-8 or bad JSON both derive from ValueError
            raise ValueError(f"{path} is not safetensors: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not safetensors: its header is not a JSON object")
    header.pop("__metadata__", None)  # free-form strings (transformers writes {"format": "pt"}): not a tensor
    data_start, data_size = 8 + header_len, size - 8 - header_len
    # Three checks per tensor, each naming the file and the tensor: a dtype we can represent, a byte
    # span that fits its shape exactly, and a span that lies inside the file.
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            n_values = math.prod(shape)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: the header entry of {name} is not dtype + shape + data_offsets") from None
        if dtype not in SAFETENSORS_DTYPES:
            supported = ", ".join(SAFETENSORS_DTYPES)
            raise ValueError(f"{path}: tensor {name} is {dtype}; only {supported} weights are supported")
        if end - begin != n_values * SAFETENSORS_DTYPES[dtype].itemsize:
            raise ValueError(f"{path}: tensor {name} spans {end - begin} bytes, not those of {dtype} {shape}")
        if end > data_size:
            raise ValueError(f"{path} is truncated: tensor {name} ends at byte {data_start + end}, the file has {size}")
    return header, data_start


def read_safetensors(path: str, header: dict, data_start: int):
    """Yield (name, tensor) for each tensor of one file, as CPU tensors backed by a memory map.

    Once the next tensor is asked for, the previous one's pages are handed back to the OS; it stays
    correct (a read faults the bytes in from the file again) but is meant to be copied, not kept.
    """
    # The format is little-endian and so is every machine torch ships for; a view would silently
    # scramble the bytes on a big-endian host, so refuse instead.
    if sys.byteorder != "little":
        raise ValueError("reading safetensors needs a little-endian machine")
    # ACCESS_COPY (a private, copy-on-write map) gives numpy a writable buffer, which torch.from_numpy
    # wants, while guaranteeing that nothing is ever written back to the file.
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    file_bytes = np.frombuffer(mapped, dtype=np.uint8)  # (file size,) a view of the map, not a copy
    for name, info in header.items():
        begin, end = data_start + info["data_offsets"][0], data_start + info["data_offsets"][1]
        # Slicing a memory map is free: no byte is read until the copy into the model touches it.
        raw = torch.from_numpy(file_bytes[begin:end])  # (n_bytes,) uint8
        # Reinterpret the bytes (2 per bf16 value, 4 per fp32), then give them their shape.
        values = raw.view(SAFETENSORS_DTYPES[info["dtype"]])  # (n_bytes / itemsize,)
        yield name, values.reshape(info["shape"])  # e.g. (rows, cols)
        # The caller has copied the tensor. The pages it pulled in still count as this process's
        # memory until unmapped; hand them back now (a later touch would re-read the file), so a load
        # holds the weights plus one tensor of the file, not the weights plus a whole shard.
        if hasattr(mapped, "madvise"):  # Linux and macOS; elsewhere the pages go when the map does
            page_start = begin - begin % mmap.PAGESIZE  # madvise wants a page-aligned start
            mapped.madvise(mmap.MADV_DONTNEED, page_start, end - page_start)


def write_safetensors(path: str, tensors: dict[str, torch.Tensor]):
    """Write CPU tensors as one safetensors file, atomically (readers never see half a file)."""
    header: dict = {"__metadata__": {"format": "pt"}}  # transformers refuses files without "format"
    # Tensors are laid out back to back in the order given; each header entry records its byte span.
    offset = 0
    for name, tensor in tensors.items():
        n_bytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad the header with spaces (the format allows it) so the data starts 8-byte aligned and a
    # memory-mapped float64 or float32 tensor is aligned in memory too.
    header_bytes += b" " * (-len(header_bytes) % 8)

    def write(f):
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for tensor in tensors.values():
            # Reinterpret as bytes (no copy for a contiguous tensor): the same trick as reading, reversed.
            flat = tensor.contiguous().reshape(-1)  # (numel,) row-major, the order the format wants
            f.write(flat.view(torch.uint8).numpy())  # (numel * itemsize,) bytes

    files.atomic_write(path, write, binary=True)




def config_from_hf(hf_dir: str) -> tuple[ModelConfig, torch.dtype | None]:
    """config.json of a phi3-type folder -> (ModelConfig, the dtype the weights are stored in or None).

    Phi3ForCausalLM covers more than Phi-4: Phi-3-mini-128k scales RoPE ("longrope"), phi-3-medium
    uses a sliding window, Phi-4-mini ties its embeddings and rotates only part of each head. Each is
    a different network, so instead of loading it and producing fluent nonsense, we refuse it by name.
    """
    # Every failure is a ValueError of one line that names the file, so the CLI can print it as is.
    if not os.path.isdir(hf_dir):
        raise ValueError(f"{hf_dir} is not a folder; pass a Hugging Face model folder (config.json + *.safetensors)")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"{hf_dir} has no config.json; pass a Hugging Face model folder (config.json + *.safetensors)")
    try:
        with open(path) as f:
            hf = json.load(f)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if hf.get("model_type") != "phi3":
        raise ValueError(
            f"{path}: model_type is {hf.get('model_type')!r}; only 'phi3' (Phi-3/Phi-4) checkpoints are supported"
        )
    # transformers 5 writes the RoPE settings as one "rope_parameters" dict; the Phi-4 release (and
    # transformers 4) writes "rope_theta" and "rope_scaling" at the top level. Accept both.
    rope = hf.get("rope_parameters") or {}
    max_seq_len = hf.get("max_position_embeddings")
    # Collect every reason first, so one error lists them all instead of one per attempt.
    unsupported = []
    if hf.get("tie_word_embeddings", False):
        unsupported.append("tie_word_embeddings true (our lm_head is a separate matrix, as in Phi-4)")
    if hf.get("rope_scaling") is not None or rope.get("rope_type", "default") != "default":
        unsupported.append("rope_scaling (longrope/su of the 128K Phi-3 models); only plain RoPE is implemented")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        unsupported.append("partial_rotary_factor < 1 (RoPE on part of each head)")
    window = hf.get("sliding_window")
    if window is not None and max_seq_len is not None and window < max_seq_len:
        unsupported.append(
            f"sliding_window {window} < max_position_embeddings {max_seq_len} (Phi-4 attends to its whole context)"
        )
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        unsupported.append("biases (attention_bias/mlp_bias)")
    if hf.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act {hf['hidden_act']!r} (the MLP is SwiGLU with silu)")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * hf.get("num_attention_heads", 0) != hf.get("hidden_size"):
        unsupported.append(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    if unsupported:
        raise ValueError(f"{path} asks for what this implementation does not do: {'; '.join(unsupported)}")
    # The name mapping, HF -> ours. max_position_embeddings becomes the length of our RoPE tables:
    # the released Phi-4 says 16384, its context after midtraining (report section 3).
    try:
        config = ModelConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_head=hf["num_attention_heads"],
            # Absent or null means one KV head per query head (plain multi-head attention).
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),  # 10000: HF's default
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as error:
        raise ValueError(f"{path} lacks the key {error}") from None
    except ValueError as error:  # ModelConfig's own checks, e.g. heads that do not divide the width
        raise ValueError(f"{path}: {error}") from None
    # transformers 4 calls the stored dtype "torch_dtype", transformers 5 "dtype".
    dtype = getattr(torch, str(hf.get("torch_dtype") or hf.get("dtype")), None)
    return config, dtype if dtype in DTYPE_NAMES else None


def hf_config(config: ModelConfig, dtype: torch.dtype, tokenizer: Tokenizer | None = None) -> dict:
    """The config.json of a phi3 model with our shape, keyed like the Phi-4 release.

    The bos/eos/pad ids come from the tokenizer the model was trained with. They cannot be derived from
    the model's vocabulary size: a toy BPE of 814 ids is padded to 832 rows, and ids counted back from
    832 would name rows that were never trained. Without a tokenizer, only the release's own vocabulary
    (100,352: bos 100257, eos 100265, pad 100349) has known ids; any other gets none.
    """
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    elif config.vocab_size == CL100K_N_RANKS + len(PHI4_SPECIAL_NAMES):
        special = {"bos_token_id": 100257, "eos_token_id": 100265, "pad_token_id": 100349}
    else:
        special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "max_position_embeddings": config.max_seq_len,  # our RoPE table length is the trained context
        "original_max_position_embeddings": config.max_seq_len,  # only read by longrope scaling
        "rope_theta": config.rope_theta,  # 250000 after Phi-4's midtraining
        "rope_scaling": None,  # plain RoPE, no long-context rescaling
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",  # SwiGLU's gate
        "initializer_range": config.init_std,
        "tie_word_embeddings": False,  # separate embed_tokens and lm_head, as in Phi-4
        "sliding_window": None,  # full causal attention over the whole context
        "attention_dropout": 0.0,  # no dropout anywhere, as in Phi-4
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "use_cache": True,  # transformers' generate may keep a KV cache
        **special,
        "torch_dtype": str(dtype).removeprefix("torch."),  # "bfloat16": what the shards hold
    }


def hf_weight_files(hf_dir: str) -> tuple[list[str], dict[str, str]]:
    """-> (the safetensors files of a folder, {tensor name: file} as the shard index states it)."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError) as error:
            raise ValueError(f"{index_path} is not a shard index: {error!r}") from None
        # The index is the authority on which files make up the checkpoint; check they all exist now,
        # rather than failing on the fifth of six shards after minutes of loading.
        shard_files = list(dict.fromkeys(weight_map.values()))  # unique, in the index's order
        absent = [name for name in shard_files if not os.path.exists(os.path.join(hf_dir, name))]
        if absent:
            listed = ", ".join(absent)
            raise ValueError(f"{hf_dir}: shard(s) listed in model.safetensors.index.json are missing: {listed}")
        return [os.path.join(hf_dir, name) for name in shard_files], weight_map
    # Small models (and HF's convention for one shard) have a single file and no index.
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(single):
        return [single], {}
    raise ValueError(
        f"{hf_dir} has neither model.safetensors nor model.safetensors.index.json "
        "(only safetensors weights are read; convert pytorch_model*.bin files first)"
    )




def load_phi4(hf_dir: str, device="cpu", dtype: torch.dtype | str | None = None) -> Phi4:
    """Load a Hugging Face phi3-type folder (the released Phi-4, or what save_pretrained wrote).

    dtype None keeps the dtype the weights are stored in (bfloat16 for Phi-4); a name ("bfloat16") works
    too. Peak host memory is one copy of the weights plus one tensor of the file when device is the
    CPU, and about one tensor (the embedding: 1 GB for Phi-4) when it is a GPU.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    config, stored_dtype = config_from_hf(hf_dir)
    with torch.device("meta"):
        n_params = Phi4(config).num_params()
    itemsize = (dtype or stored_dtype or torch.float32).itemsize
    parallel.check_fits(n_params * itemsize, device, f"{hf_dir} in {dtype or stored_dtype or torch.float32}",
                        "pass --dtype bfloat16 (half of float32), or use a larger GPU")
    shard_files, weight_map = hf_weight_files(hf_dir)
    # Read every header first: names, shapes and sizes are all known before a single weight is read.
    headers = {path: read_safetensors_header(path) for path in shard_files}

    # Shapes only: the meta device builds the 14B model in milliseconds and allocates nothing.
    with torch.device("meta"):
        model = Phi4(config)
    params = dict(model.named_parameters())
    layout = hf_layout(config.n_layer)
    # Compare what the files hold with what the layout expects, by name and by shape, and collect
    # every discrepancy: a checkpoint of another architecture then shows its whole difference at once.
    missing, unexpected, misshaped, seen = [], [], [], {}
    for path, (header, _) in headers.items():
        for name, info in header.items():
            if name in seen:
                unexpected.append(f"{name} (again in {os.path.basename(path)})")
            seen[name] = path
            if name not in layout:
                unexpected.append(name)
                continue
            parts = [params[part].shape for part in layout[name]]
            # The fused tensor is its parts stacked along rows: rows add up, the other dims agree.
            expected = [sum(shape[0] for shape in parts), *parts[0][1:]]
            if list(info["shape"]) != expected:
                misshaped.append(f"{name} {info['shape']} (expected {expected})")
    missing = [name for name in layout if name not in seen]
    # An index entry pointing at the wrong shard is a broken checkpoint even if the tensor is elsewhere.
    misplaced = [name for name, file in weight_map.items() if name in seen and os.path.basename(seen[name]) != file]
    found = {
        "missing": missing,
        "unexpected": unexpected,
        "wrong shape": misshaped,
        "not in the shard the index names": misplaced,
    }
    problems = [f"{label}: {', '.join(names)}" for label, names in found.items() if names]
    if problems:
        raise ValueError(f"{hf_dir} does not match its config.json: {'; '.join(problems)}")

    # Allocate once, uninitialised, directly in the target dtype on the target device: this is the one
    # copy of the weights. Every element is overwritten below, since every parameter was found above.
    model.to(dtype or stored_dtype or torch.float32)  # on the meta device this only records the dtype
    model.to_empty(device=device)
    params = dict(model.named_parameters())  # looked up again: to_empty gave them real storage
    with torch.no_grad():
        for path, (header, data_start) in headers.items():  # shard by shard
            for name, tensor in read_safetensors(path, header, data_start):
                row = 0
                for part in layout[name]:
                    # Slicing rows of a row-major tensor is a view; copy_ converts dtype and moves
                    # device in one step, so nothing larger than one tensor is ever staged.
                    n_rows = params[part].shape[0]
                    params[part].copy_(tensor[row : row + n_rows])
                    row += n_rows
    # NaN or infinity in a weight poisons every output; refuse it here, naming the tensor.
    check_finite(model.named_parameters(), hf_dir)
    model.set_rope()  # the tables are not in the checkpoint: rebuild them from rope_theta and the context
    return model.eval()



def save_phi4(model: Phi4, hf_dir: str, max_shard_bytes: int = MAX_SHARD_BYTES, tokenizer: Tokenizer | None = None):
    """Write this model as a Hugging Face phi3 folder that Phi3ForCausalLM (and its converters) load.

    The weights keep the model's dtype. Shards are filled in layer order up to max_shard_bytes each
    (one tensor larger than that gets a shard of its own); every file is written atomically.
    """
    # A model sharded with FSDP holds only slices of each tensor; gather a full state first (or save
    # from a single-device copy), since this writes whatever named_parameters() returns.
    os.makedirs(hf_dir, exist_ok=True)
    params = dict(model.named_parameters())
    layout = hf_layout(model.config.n_layer)
    # Plan the shards from sizes alone, so only one shard's fused tensors are ever materialised.
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, parts in layout.items():
        n_bytes = sum(params[part].numel() * params[part].element_size() for part in parts)
        if shards[-1] and shard_bytes + n_bytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += n_bytes
    # HF's names: one file is model.safetensors; several are model-00001-of-00003.safetensors and so on.
    if len(shards) == 1:
        shard_files = ["model.safetensors"]
    else:
        shard_files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total_bytes = {}, 0
    for file, names in zip(shard_files, shards):
        tensors = {}
        for name in names:
            # Fuse back: the rows of q, k, v (or gate, up) stacked in HF's order, on the CPU.
            fused = torch.cat([params[part].detach() for part in layout[name]], dim=0)  # (sum of rows, cols)
            tensors[name] = fused.cpu()  # safetensors holds host bytes; a GPU model is copied one tensor at a time
            total_bytes += tensors[name].numel() * tensors[name].element_size()
            weight_map[name] = file
        write_safetensors(os.path.join(hf_dir, file), tensors)
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    # The index maps every tensor to its file, so a loader opens only the shards it needs.
    if len(shard_files) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        files.write_json(index_path, index)
    # Weight files of an earlier save into this folder would be picked up by loaders (an old index
    # wins over a new model.safetensors), so remove every one that this save did not write.
    for name in os.listdir(hf_dir):
        stale_weights = name.startswith("model") and name.endswith(".safetensors") and name not in shard_files
        if stale_weights or (name == "model.safetensors.index.json" and len(shard_files) == 1):
            os.remove(os.path.join(hf_dir, name))
    # config.json last: a folder with a config but no weights is what an interrupted save must not leave.
    config = hf_config(model.config, params["embed.weight"].dtype, tokenizer)
    files.write_json(os.path.join(hf_dir, "config.json"), config)


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: printable character -> the byte it stands for.

    Printable bytes stand for themselves; the 68 others are shifted to chr(256 + n) in byte order,
    so that every token of a byte-level BPE can be stored as a JSON string (" hello" -> "Ġhello").
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in printable):
        char_to_byte[chr(256 + n)] = b
    return char_to_byte


def read_json_file(path: str):
    """A JSON file's content; an unreadable or malformed file is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def read_hf_tokenizer_files(hf_dir: str) -> tuple[str, dict[str, int], list, dict[str, int]]:
    """(source file, vocab {token: id}, merges, added tokens {content: id}) of a HF model folder.

    tokenizer.json (the fast tokenizer's single file) is preferred; older folders split the same
    content over vocab.json + merges.txt, with the added tokens in added_tokens.json and/or
    tokenizer_config.json. Merges come back as the file holds them: "a b" strings or [a, b] pairs.
    """
    tokenizer_json = os.path.join(hf_dir, "tokenizer.json")
    vocab_json, merges_txt = os.path.join(hf_dir, "vocab.json"), os.path.join(hf_dir, "merges.txt")
    if os.path.exists(tokenizer_json):
        spec = read_json_file(tokenizer_json)
        bpe = spec.get("model") or {}
        if bpe.get("type") != "BPE" or not isinstance(bpe.get("vocab"), dict):
            raise ValueError(f"{tokenizer_json}: model type {bpe.get('type')!r} is not a byte-level BPE")
        added = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
        return tokenizer_json, bpe["vocab"], bpe.get("merges") or [], added
    if os.path.exists(vocab_json) and os.path.exists(merges_txt):
        vocab = read_json_file(vocab_json)
        with open(merges_txt, encoding="utf-8") as f:
            merges = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        # Added tokens live in added_tokens.json ({content: id}) and/or tokenizer_config.json.
        added_file = os.path.join(hf_dir, "added_tokens.json")
        config_file = os.path.join(hf_dir, "tokenizer_config.json")
        added = read_json_file(added_file) if os.path.exists(added_file) else {}
        if os.path.exists(config_file):
            for token_id, token in (read_json_file(config_file).get("added_tokens_decoder") or {}).items():
                added[token["content"]] = int(token_id)
        return vocab_json, vocab, merges, added
    raise ValueError(f"{hf_dir} has no tokenizer.json (nor vocab.json + merges.txt)")


def check_merge_order(source: str, vocab: dict[str, int], merges: list) -> None:
    """Raise unless every merge joins two vocabulary tokens into one whose id never goes down.

    tiktoken has no merge list: it merges the adjacent pair whose joined bytes have the lowest rank.
    That gives the same tokens as HF's merge list exactly when the list is in id order, which is
    what makes dropping the merges and keeping only the ranks safe.
    """
    # Merges as "a b" strings (older files, merges.txt) or [a, b] pairs (tokenizers >= 0.20).
    last_id = -1
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if len(pair) != 2:
            raise ValueError(f"{source}: merge {merge!r} is not a pair of tokens")
        left, right = pair
        merged_id = vocab.get(left + right)
        if left not in vocab or right not in vocab or merged_id is None or merged_id < last_id:
            raise ValueError(
                f"{source}: merge {left!r} + {right!r} does not follow the id order (not a tiktoken-style BPE)"
            )
        last_id = merged_id


def load_tokenizer(hf_dir: str) -> Tokenizer:
    """The tokenizer of a Hugging Face model folder: tokenizer.json, or vocab.json + merges.txt.

    A downloaded Phi-4 folder then needs no other file, and the ids agree with Tokenizer.phi4.
    HF stores a byte-level BPE as text: GPT-2's byte-to-unicode table maps each of the 256 byte
    values to a printable character (printable bytes map to themselves, the others to chr(256+n)),
    so the token " hello" is written "Ġhello". Undoing that table gives tiktoken's bytes. A token's
    id is its rank: tiktoken merges the adjacent pair whose joined bytes have the lowest rank, which
    is the order of HF's merge list when that list follows the ids; we check that it does, so the
    merges themselves are not needed. Special tokens are HF's "added tokens"; they must sit where
    this class puts them (right after the ranks, in PHI4_SPECIAL_NAMES order).
    """
    char_to_byte = gpt2_byte_decoder()
    source, vocab, merges, added = read_hf_tokenizer_files(hf_dir)
    ranks: dict[bytes, int] = {}
    special_names = set(PHI4_SPECIAL_NAMES)
    for token, token_id in vocab.items():
        # Some files list the special tokens in the vocabulary too: they are not BPE ranks, and
        # their ids are checked with the added tokens below.
        if token in added or token in special_names:
            added.setdefault(token, token_id)
            continue
        try:
            ranks[bytes(char_to_byte[ch] for ch in token)] = token_id
        except KeyError:
            raise ValueError(f"{source}: token {token!r} is not in GPT-2's byte-level alphabet") from None
    n_ranks = len(ranks)
    if sorted(ranks.values()) != list(range(n_ranks)):
        raise ValueError(f"{source}: the {n_ranks} BPE ids are not exactly 0..{n_ranks - 1}")
    check_merge_order(source, vocab, merges)
    expected = {name: n_ranks + i for i, name in enumerate(PHI4_SPECIAL_NAMES)}
    wrong = [f"{content} at {token_id}" for content, token_id in added.items() if expected.get(content) != token_id]
    if wrong:
        raise ValueError(
            f"{source}: special tokens differ from Phi-4's layout (ids {n_ranks}.. in PHI4_SPECIAL_NAMES order): "
            + ", ".join(wrong)
        )
    # The pre-tokenizer split is cl100k's, the constructor's default and Phi-4's (report section 3);
    # the copy of that regex in tokenizer.json's pre_tokenizer is not read. train.py sizes the
    # embedding from the tokenizer unless it is named "phi4" (the full 100,352 vocabulary).
    return Tokenizer("phi4" if n_ranks == CL100K_N_RANKS else "hf-bpe", ranks)


def load(hf_dir: str, device, dtype_name: str | None = None) -> tuple[Phi4, Tokenizer]:
    """A Hugging Face Phi-4 folder -> (model, tokenizer). bf16 on a GPU (the release's dtype); float32
    on a CPU unless asked otherwise, since CPU bf16 matmuls are slow on most machines."""
    device = torch.device(device)
    dtype = getattr(torch, dtype_name) if dtype_name else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return load_phi4(hf_dir, device=device, dtype=dtype), load_tokenizer(hf_dir)
