"""Shared pytest setup: CPU-only, hermetic runs.

Triton kernels run under Triton's interpreter when no GPU is present. The interpreter is chosen when a
kernel is *decorated*, so the variable must be set before anything imports `kernels`: this file is
imported by pytest before any test module.
"""
import hashlib
import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

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


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests cleanly on machines without CUDA, whatever -m says."""
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


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory):
    """A small copy of the toy world (tokenizer, shards, eval split), built once per test session."""
    import data

    out = tmp_path_factory.mktemp("toy_data")
    data.build_toy_dataset(str(out), n_problems=1500, n_eval=60, seed=11)
    return str(out)
