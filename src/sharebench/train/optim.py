"""The optimizer and its learning-rate schedule, shared by pretraining and GLUE fine-tuning."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch


def learning_rate_factor(step: int, warmup_steps: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup, then linear or cosine decay to `min_ratio` of the peak at `max_steps` (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * decay


def adamw_with_schedule(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    max_steps: int,
    schedule: str,
    min_lr_ratio: float,
    fused: bool = True,
    **adamw: Any,
) -> dict[str, Any]:
    """AdamW (no decay on biases, norms and other vectors) with a per-step warmup-then-decay schedule, as
    Lightning's `configure_optimizers` returns it. Fused (one kernel for all tensors, several times faster than
    the per-tensor loop on CPU and GPU), or else the multi-tensor implementation."""
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=lr,
        **({"fused": True} if fused else {"foreach": True}),
        **adamw,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, warmup_steps, max_steps, schedule, min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fused_adamw_allowed(trainer: L.Trainer) -> bool:
    """Lightning refuses to clip the gradients of a fused optimizer under mixed precision (it takes the optimizer
    to unscale them itself), so there the multi-tensor AdamW runs instead."""
    return not (trainer.gradient_clip_val and trainer.precision in ("16-mixed", "bf16-mixed"))
