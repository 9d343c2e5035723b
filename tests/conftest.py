"""Shared pytest setup: CPU-only, hermetic runs.

Triton kernels run under Triton's interpreter when no GPU is present. The interpreter is chosen when a
kernel is *decorated*, so the variable must be set before anything imports `flash_attention`: this file is
imported by pytest before any test module.
"""
import hashlib
import os
import tempfile

import pytest
import torch

from grade_assignment import exercise_ids

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def triton_kernel_skip_reason() -> str | None:
    """Why flash_attention.py's kernels cannot run here, or None: they run on a GPU, or on the CPU under
    Triton's interpreter. Triton < 3.9's interpreter calls int() on 1-element arrays for loop bounds,
    which newer NumPy refuses, so there the CPU tests cannot run."""
    import numpy as np
    import flash_attention

    if not flash_attention.HAS_TRITON:
        return "needs triton (pip install triton; on CPU the tests run it under TRITON_INTERPRET=1)"
    if not flash_attention.INTERPRET:
        return None if torch.cuda.is_available() else "needs a CUDA GPU, or TRITON_INTERPRET=1 for Triton's interpreter"
    import triton
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9):
        try:
            int(np.zeros(1, dtype=np.int32))
        except TypeError:
            return (f"Triton {triton.__version__}'s interpreter cannot run the kernels with NumPy {np.__version__}; "
                    "CPU tests need triton>=3.9 (or an older NumPy)")
    return None

# Where tiktoken itself caches the cl100k_base rank file after its first download: the sha1 of the URL,
# under $TIKTOKEN_CACHE_DIR (or $DATA_GYM_CACHE_DIR, or <tmp>/data-gym-cache). Never downloaded here.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def find_cl100k() -> str | None:
    """$CL100K_PATH if set, else tiktoken's own cached copy, else None."""
    if os.environ.get("CL100K_PATH"):
        return os.environ["CL100K_PATH"]
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    cached = os.path.join(cache, hashlib.sha1(CL100K_URL.encode()).hexdigest())
    return cached if os.path.exists(cached) else None


def pytest_addoption(parser):
    parser.addoption("--exercise", action="append", default=[], metavar="ID",
                     help="run only the tests that grade exercise ID (repeatable; 'any' for every graded test); "
                          "see EXERCISES.md")


def pytest_collection_modifyitems(config, items):
    """Keep only the tests of --exercise; skip `gpu` tests cleanly on machines without CUDA, whatever -m says."""
    wanted = set(config.getoption("exercise"))
    if wanted:
        keep = [item for item in items if exercise_ids(item) & wanted or ("any" in wanted and exercise_ids(item))]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cl100k_path():
    """Path to the cl100k_base rank file Phi-4's tokenizer builds on, or skip saying how to provide it."""
    path = find_cl100k()
    if path is None or not os.path.exists(path):
        pytest.skip("Phi-4 tokenizer tests need cl100k_base.tiktoken: set CL100K_PATH=/path/to/cl100k_base.tiktoken "
                    "(or let tiktoken cache it once with internet: python -c \"import tiktoken; tiktoken.get_encoding('cl100k_base')\")")
    return path


# A tiny Phi-4: GQA (6 query heads on 2 KV heads), 2 blocks, a 61-token vocabulary. The large init
# (std 0.2) separates the logits, so greedy choices are stable and comparisons are not ties.
TINY_MODEL = dict(vocab_size=61, n_layer=2, d_model=48, n_head=6, n_kv_head=2, ffn_dim=96, max_seq_len=64, init_std=0.2)


@pytest.fixture(scope="session")
def tiny_model():
    """The one tiny-model factory of the tests: tiny_model(seed=0, **config_overrides) -> Phi4 in eval mode."""
    from model import ModelConfig, Phi4

    def make(seed: int = 0, **overrides) -> "Phi4":
        model = Phi4(ModelConfig(**{**TINY_MODEL, **overrides}))
        model.init_weights(torch.Generator().manual_seed(seed))
        return model.eval()

    return make


@pytest.fixture(scope="session")
def byte_tokenizer():
    """A tokenizer of the 256 single bytes and Phi-4's special tokens: no merges, so no BPE training needed
    (tests of code that only needs ids use it, so they do not depend on the `bpe` exercise)."""
    import data

    return data.Tokenizer("bytes", {bytes([i]): i for i in range(256)})


@pytest.fixture(scope="session")
def toy_run(toy_data_dir):
    """The one toy-run builder: toy_run(out, **overrides) -> TrainConfig of a seconds-long run on the
    session's toy data (sequences of 64 tokens, batches of 4, no periodic eval, one save at the end;
    pretraining without recall rows)."""
    from train import TrainConfig

    def make(out, **overrides) -> "TrainConfig":
        fields = dict(data=toy_data_dir, out=str(out), steps=2, batch_size=4, seq_len=64, warmup_steps=1,
                      eval_every=0, eval_batches=1, save_every=1000, seed=3, device="cpu")
        if overrides.get("stage", "pretrain") == "pretrain":
            fields["long_fraction"] = 0.0  # the toy data's recall rows are 256 tokens long: no room in 64
        return TrainConfig(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, toy_data_dir):
    """tiny_checkpoint(folder, seed=0, **overrides) -> Tokenizer: a tiny model saved as train.py saves
    one, sized to the toy tokenizer, with that tokenizer beside it."""
    import math

    import checkpoint
    import data

    def make(folder, seed: int = 0, **overrides):
        tokenizer = data.Tokenizer.load(os.path.join(toy_data_dir, "tokenizer.json"))
        fields = dict(vocab_size=64 * math.ceil(tokenizer.vocab_size / 64), **overrides)
        model = tiny_model(seed, **fields)
        checkpoint.save_checkpoint(str(folder), model, None, 0, None, None)
        checkpoint.save_tokenizer(os.path.join(toy_data_dir, "tokenizer.json"), str(folder))
        return tokenizer

    return make


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory):
    """A small copy of the toy world (tokenizer, both mixtures, recall rows, all splits), built once per test session."""
    import data

    out = tmp_path_factory.mktemp("toy_data")
    data.build_toy_dataset(str(out), n_stories=1500, n_test=60, n_dev=40, n_sft=300, n_rl=200, n_recall=100, seed=11)
    return str(out)
