"""Process-wide settings that make CPU training fast; every training entry point applies them."""

from __future__ import annotations

import ctypes
import sys

import torch

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_cpu_process() -> None:
    """Flush denormals to zero, and keep freed memory for reuse.

    Small fp32 models produce denormal numbers, which make CPU matrix multiplies several times slower.

    glibc serves each allocation above 32 MiB (the logits and gradients of a large vocabulary, a tied
    embedding's gradient) with fresh memory from the kernel and returns it when freed; touching it again costs
    about 100,000 page faults per step of tinybert, a fifth of its step time. Served from the heap and kept there,
    the memory is reused from step to step. Without glibc (macOS, musl) the allocator is left as it is."""
    torch.set_flush_denormal(True)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
