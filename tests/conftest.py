"""Shared pytest setup: CPU-only, hermetic runs.

Triton kernels run under Triton's interpreter when no GPU is present. The interpreter is chosen when a
kernel is *decorated*, so the variable must be set before anything imports `kernels`: this file is
imported by pytest before any test module.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The offline copy of the cl100k_base ranks that Phi-4's tokenizer builds on (never committed here).
CL100K_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cl100k_base.tiktoken")


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
    """Path to the cl100k_base rank file, or skip the test when it is absent."""
    path = os.path.abspath(CL100K_PATH)
    if not os.path.exists(path):
        pytest.skip("cl100k_base.tiktoken not present (expected at ../shared/data/)")
    return path


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory):
    """A small copy of the toy world (tokenizer, shards, eval split), built once per test session."""
    import data

    out = tmp_path_factory.mktemp("toy_data")
    data.build_toy_dataset(str(out), n_problems=1500, n_eval=60, seed=11)
    return str(out)
