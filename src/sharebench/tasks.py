"""What `python train.py task=...` runs: pretraining, GLUE fine-tuning, or both in one pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sharebench.config import validate


def run_task(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    validate(cfg)
    from sharebench.finetune import run_glue
    from sharebench.pretrain import run

    if cfg.task == "glue":
        return run_glue(cfg, cfg.pretrained, run_dir)
    record = run(cfg, run_dir)
    if cfg.task == "pretrain_glue":
        return run_glue(cfg, run_dir, run_dir)
    return record
