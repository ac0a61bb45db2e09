"""What a model costs in memory to train: its weights, their gradients, the optimizer's state and the
activations of one training step, each in bytes, so that sharing's savings show (the process's peak RSS holds
libraries, data and heap, gigabytes around differences of megabytes)."""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence what C++ code writes to the process's stderr (torch's profiler announces every start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct tensors given (a tensor shared by several modules counts once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        seen.setdefault(id(tensor), tensor.numel() * tensor.element_size())
    return sum(seen.values())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The optimizer's actual state (AdamW: two moments per parameter and a step count)."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def activation_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """The peak of live bytes allocated during one forward and backward pass of `batch`, beyond the weights and
    their gradients: measured on a copy of the model in training mode (the model and the RNG stay untouched)."""
    device = next(model.parameters()).device
    replica = copy.deepcopy(model).train()  # deepcopy keeps shared tensors shared
    for parameter in replica.parameters():  # gradients exist before the step, as after the first one
        parameter.grad = torch.zeros_like(parameter)
    batch = {name: value.to(device) for name, value in batch.items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return peak_allocated_bytes(lambda: replica(**batch).loss.backward(), device)


def peak_allocated_bytes(step: Callable[[], Any], device: torch.device) -> int:
    """The most bytes allocated at once while `step` runs, beyond what was allocated before: measured by CUDA's
    allocator statistics on a GPU and by torch's profiler's allocation events on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def process_peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def training_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]
) -> dict[str, int]:
    """The run record's `memory`: what one training step holds, part by part, and their sum."""
    parameters = list(model.parameters())
    parts = {
        "weights_bytes": tensor_bytes(parameters),
        "gradients_bytes": tensor_bytes(p for p in parameters if p.requires_grad),
        "optimizer_bytes": optimizer_bytes(optimizer),
        "activations_bytes": activation_bytes(model, batch),
    }
    return {**parts, "training_bytes": sum(parts.values())}
