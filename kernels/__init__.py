"""Hand-written GPU kernels for the Phi-4 reference implementation.

Today there is one: a FlashAttention-2 kernel in Triton (forward and backward, causal, grouped-query
attention, any sequence length). `model.py` selects it with `attn_impl="triton"`; read
`kernels/flash_attention.py` top to bottom for how it works and how to test and benchmark it.

`import kernels` always works, also where Triton is not installed (CPU-only or macOS builds of PyTorch):
`HAS_TRITON` tells callers whether the kernel can run, and calling it without Triton raises a clear
RuntimeError instead of failing at import time.
"""
from .flash_attention import HAS_TRITON, flash_attention

__all__ = ["HAS_TRITON", "flash_attention"]
