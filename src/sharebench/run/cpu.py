"""Process-wide settings that make CPU training fast, which every training entry point applies, and the precision
the hardware at hand trains fastest in (`trainer.precision=auto`)."""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

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


# The CPU features that compute bf16 matrix multiplies natively (oneDNN uses them under torch.autocast): Intel's
# AMX tiles (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4 and later).
BF16_FEATURES = ("amx_bf16", "avx512_bf16")
# Measured on an AMD EPYC with AVX2 only, one thread: a 2048³ matmul 7.9× slower in bf16, the leaderboard's GPT 13×.
NO_BF16 = f"the CPU has neither {' nor '.join(BF16_FEATURES)}"
BF16_EMULATED = (f"{NO_BF16}, so bf16 is emulated, several times slower than 32-true (trainer.precision=auto chooses "
                 f"32-true here)")  # fmt: skip


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The CPU's bf16 matrix features, as Linux names them in /proc/cpuinfo (none found elsewhere)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    present = set(flags.split(":", 1)[1].split())
    return tuple(feature for feature in BF16_FEATURES if feature in present)


def precision_here(precision: str | int, device: str) -> tuple[str | int, str]:
    """The precision a run trains in on `device` ("cpu", "cuda", ...), and why: `auto` is bf16-mixed where the
    hardware computes bf16 natively (a CPU with AMX or AVX512-BF16, a GPU with bf16), 32-true elsewhere; any other
    value is used as given, bf16 on a CPU without either feature noted as emulated."""
    if precision != "auto":
        if device == "cpu" and str(precision).startswith("bf16") and not cpu_features():
            return precision, f"set by trainer.precision; {BF16_EMULATED}"
        return precision, "set by trainer.precision"
    if device == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"auto: {torch.cuda.get_device_name()} computes bf16"
        return "32-true", f"auto: {torch.cuda.get_device_name()} has no bf16"
    if device == "cpu":
        if features := cpu_features():
            return "bf16-mixed", f"auto: the CPU has {' and '.join(features)}"
        return "32-true", f"auto: {NO_BF16}"
    return "32-true", f"auto: bf16 is not used on {device}"


def matmul_dtype(precision: str | int) -> torch.dtype:
    """The dtype of the matrix multiplies under a Lightning precision: what an MFU is measured against."""
    name = str(precision)
    if name.startswith("bf16"):
        return torch.bfloat16
    if name.startswith("16"):
        return torch.float16
    return torch.float64 if name.startswith("64") else torch.float32
