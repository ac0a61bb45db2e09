"""What `python train.py task=...` runs: pretraining, GLUE fine-tuning, both in one pipeline, or the zero-shot
STS-B check of a (converted) checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sharebench.config import validate
from sharebench.console import quiet_libraries
from sharebench.limits import check_trainer_here


def run_task(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    check_trainer_here(cfg)
    sharing = validate(cfg)
    quiet_libraries()
    from sharebench.finetune import run_glue
    from sharebench.pretrain import run
    from sharebench.zero_shot import run_sts_zero_shot

    if cfg.task == "sts_zero_shot":
        return run_sts_zero_shot(cfg, run_dir)
    if cfg.task == "glue":
        return run_glue(cfg, cfg.pretrained, run_dir)
    record = run(cfg, run_dir, sharing)
    if cfg.task == "pretrain_glue":
        return run_glue(cfg, run_dir, run_dir)
    return record
