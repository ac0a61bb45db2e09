"""Pretrain or fine-tune one configuration, or a sweep with -m: `sharebench train …` and the repository's
`python train.py …` both run `main`.

sharebench train sharing=partial_qk ratio=0.9
sharebench train -m sharing=none,partial_qk ratio=0.5,0.9
"""

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sharebench.errors import exit_on_config_error, exit_on_interrupt, skip_runs_in_use

# Hydra's command-line flags that take a value; everything else not starting with '-' is an override.
HYDRA_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def task_overrides(argv: Sequence[str]) -> list[str]:
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in HYDRA_VALUE_FLAGS
        elif not arg.startswith(("hydra.", "hydra/", "+hydra")):
            overrides.append(arg)
    return overrides


def check_command_line(argv: Sequence[str]) -> None:
    """Bad input ends in one line before Hydra creates any folder: unknown group choices (`sharing=foo`, in a sweep
    too) and, for a single run, anything `config.validate` refuses. A sweep's runs are validated by its sweeper
    (conf/hydra/sweeper) before the first starts."""
    from sharebench.config import check_overrides, compose, validate

    if any(arg in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i") for arg in argv):
        return
    with exit_on_config_error():
        (single, *more) = check_overrides(task_overrides(argv))
        if not more and not any(arg in ("-m", "--multirun") for arg in argv):
            validate(compose(single))


@hydra.main(config_path="conf", config_name="config", version_base=None)
def run(cfg: DictConfig) -> None:
    from sharebench.tasks import run_task  # Lightning loads only once the command line has been checked

    hydra_cfg = HydraConfig.get()
    # A sweep's runs were validated by its sweeper before the first started (conf/hydra/sweeper); in a sweep,
    # a failing run is recorded as failed, the other runs go on, and the sweep exits non-zero; a run another
    # process holds is left to it.
    failures = exit_on_config_error() if hydra_cfg.mode == RunMode.RUN else skip_runs_in_use()
    with exit_on_interrupt(), failures:
        run_task(cfg, Path(hydra_cfg.runtime.output_dir))


def main() -> None:
    """Checks the command line (`sys.argv`), then hands it to Hydra."""
    check_command_line(sys.argv[1:])
    run()
