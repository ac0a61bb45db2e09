"""What `python train.py task=...` runs: pretraining, GLUE fine-tuning, both in one pipeline, the zero-shot STS-B
check of a (converted) checkpoint, or a (converted) checkpoint's loss on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sharebench.run.console import quiet_libraries
from sharebench.run.machine import check_trainer_here
from sharebench.run.validation import validate


def run_task(config: DictConfig, run_dir: Path) -> dict[str, Any]:
    spec = validate(config)
    check_trainer_here(spec)
    quiet_libraries()
    from sharebench.train.evaluate import run_evaluate
    from sharebench.train.finetune import run_glue
    from sharebench.train.pretrain import run
    from sharebench.train.zero_shot import run_sts_zero_shot

    if spec.task == "sts_zero_shot":
        return run_sts_zero_shot(spec, run_dir)
    if spec.task == "evaluate":
        return run_evaluate(spec, run_dir)
    if spec.task == "glue":
        return run_glue(spec, spec.pretrained, run_dir)
    record = run(spec, run_dir)
    if spec.task == "pretrain_glue" and record["status"] == "completed":  # a diverged model is not fine-tuned
        return run_glue(spec, run_dir, run_dir)
    return record
