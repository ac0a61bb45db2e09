"""What depends on the machine a run trains on: where Lightning trains, the precision it trains in there, and
the checks only that machine can make (an accelerator it lacks, FSDP without a GPU, attention larger than its
memory). They run where the run trains, never where a sweep is expanded (a cluster's login node has no GPU)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import torch

from sharebench.errors import ConfigError
from sharebench.run.cpu import BF16_EMULATED, precision_here
from sharebench.run.spec import RunSpec, Trainer


def trains_on(trainer: Trainer) -> str:
    """Where Lightning will train: "cuda" (asked for, or `auto` on a machine with a GPU), "cpu", "mps" or "tpu"."""
    if trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if trainer.accelerator == "auto" else trainer.accelerator


def precision_used(trainer: Trainer) -> dict[str, Any]:
    """The record's `precision`: what `trainer.precision` asks for, the precision the run trains in where it
    trains (`auto` follows the hardware: sharebench.run.cpu.precision_here), and why."""
    used, why = precision_here(trainer.precision, trains_on(trainer))
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # called where Lightning trains, loaded there

    if why.endswith(BF16_EMULATED) and rank_zero_only.rank == 0:
        print(f"warning: trainer.precision={trainer.precision}: {BF16_EMULATED}", file=sys.stderr, flush=True)
    return {"configured": trainer.precision, "used": used, "why": why}


def check_fsdp_on_a_gpu(spec: RunSpec) -> None:
    if str(spec.trainer.strategy).startswith("fsdp") and trains_on(spec.trainer) != "cuda":
        raise ConfigError(
            f"trainer.strategy={spec.trainer.strategy} needs a GPU: Lightning runs FSDP on CUDA only; on CPU use "
            f"trainer.strategy=ddp (the suite's FSDP wrap policy itself is tested on CPU with torch's FSDP)"
        )


def check_trainer_here(spec: RunSpec) -> None:
    """What Lightning would refuse in many lines once the data is read: an accelerator this machine lacks, more
    GPUs than it has, FSDP without a GPU, attention scores larger than its memory. Checked where the run trains
    (`tasks.run_task`, and a single run before Hydra makes its folder), never where a sweep is expanded and
    submitted from (a cluster's login node has no GPU)."""
    check_fsdp_on_a_gpu(spec)
    check_attention_fits_in_memory(spec)
    accelerator, devices = spec.trainer.accelerator, spec.trainer.devices
    present = {
        "gpu": torch.cuda.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "tpu": importlib.util.find_spec("torch_xla") is not None,
    }
    if not present.get(accelerator, True):
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has none; use trainer.accelerator=auto "
                          f"(what is here) or cpu")  # fmt: skip
    gpus = torch.cuda.device_count()
    if trains_on(spec.trainer) == "cuda" and isinstance(devices, int) and devices > max(gpus, 1):
        raise ConfigError(f"trainer.devices={devices}: this machine has {gpus} GPU(s); use trainer.devices={gpus} "
                          f"or auto (every GPU)")  # fmt: skip


def check_attention_fits_in_memory(spec: RunSpec) -> None:
    """On CPU with attention dropout the model computes attention explicitly (torch's fused CPU attention has no
    dropout), so one layer's scores (batch × heads × seq_len² floats) must fit in memory: a seq_len of 100,000
    would otherwise fail minutes later, allocating a terabyte."""
    if trains_on(spec.trainer) != "cpu" or not spec.arch.attention_dropout:
        return
    data = spec.data
    scores = data.batch_size * spec.size.n_heads * data.seq_len**2 * 4
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if scores > memory:
        raise ConfigError(
            f"data.seq_len={data.seq_len} with data.batch_size={data.batch_size} and {spec.size.n_heads} heads "
            f"needs {scores / 2**30:,.0f} GiB for one layer's attention scores; this machine has "
            f"{memory / 2**30:,.0f} GiB: lower data.seq_len or data.batch_size"
        )
