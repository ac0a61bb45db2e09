"""Pretrain or fine-tune one configuration, or a sweep with -m: `sharebench train …` and the repository's
`python train.py …` both run `main`.

sharebench train sharing=partial_qk ratio=0.9
sharebench train -m sharing=none,partial_qk ratio=0.5,0.9
"""

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sharebench.errors import ConfigError, exit_on_config_error, exit_on_interrupt, skip_runs_in_use

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


# Overrides of Hydra's own settings (launcher, sweeper, run folders), not of the run's config.
HYDRA_KEYS = ("hydra.", "hydra/", "+hydra")


def task_overrides(argv: Sequence[str]) -> list[str]:
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in HYDRA_VALUE_FLAGS
        elif not arg.startswith(HYDRA_KEYS):
            overrides.append(arg)
    return overrides


# Keys whose values are paths: a run folder the suite printed (`sharing=partial_qk,ratio=0.9/seed=0`) holds the
# '=' and ',' of Hydra's own syntax.
PATH_KEYS = {"pretrained", "output_root", "cache_dir", "data_root", "data.source", "glue.source", "data.tokenizer.path"}


def quote_paths(argv: Sequence[str]) -> list[str]:
    """The command line with path values quoted for Hydra where they need it (one holding '=', or naming a file
    or folder that exists), so a run folder is passed back as typed. A comma in any other value still separates
    the values of a sweep."""

    def quoted(arg: str) -> str:
        key, equals, value = arg.partition("=")
        if not equals or key.lstrip("+~") not in PATH_KEYS or value[:1] in ("'", '"'):
            return arg
        if "=" in value or ("," in value and Path(value).expanduser().exists()):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")  # Hydra's escapes in a quoted value
            return f"{key}='{escaped}'"
        return arg

    return [quoted(arg) for arg in argv]


def check_command_line(argv: Sequence[str]) -> None:
    """Bad input ends in one line before Hydra creates any folder: unknown group choices (`sharing=foo`, in a sweep
    too) and, for a single run, anything `config.validate` refuses. A sweep's runs are validated by its sweeper
    (conf/hydra/sweeper) before the first starts."""
    from sharebench.config import check_overrides, check_trainer_here, compose, validate

    printing = {"--cfg", "-c", "--info", "-i"} & set(argv)
    sweep = {"-m", "--multirun"} & set(argv)
    with exit_on_config_error():
        if printing and sweep:
            raise ConfigError(
                f"{'/'.join(sorted(printing))} prints one run's settings and -m starts a sweep: give one of them "
                f"(a launcher's settings: --cfg hydra --package hydra.launcher, without -m)"
            )
        if printing or {"--help", "-h", "--hydra-help"} & set(argv):
            return
        (single, *more) = check_overrides(task_overrides(argv))
        first_run = compose(single)
        if not more and not sweep:  # a single run trains here: the machine can be asked too
            check_trainer_here(spec := validate(first_run))
            if (factors := spec.lr_grid.factors) is not None:
                raise ConfigError(
                    f"lr_grid.factors={list(factors)} searches a learning rate over the runs of a sweep: add -m"
                )
        hydra_settings = [arg for arg in argv if arg.startswith(HYDRA_KEYS)]
        if hydra_settings:  # a launcher or sweeper setting Hydra would refuse in many lines
            compose([*single, *hydra_settings], with_hydra=True)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def run(cfg: DictConfig) -> dict[str, Any] | None:
    from sharebench.tasks import run_task  # Lightning loads only once the command line has been checked

    hydra_cfg = HydraConfig.get()
    # A sweep's runs were validated by its sweeper before the first started (conf/hydra/sweeper); in a sweep,
    # a failing run is recorded as failed, the other runs go on, and the sweep exits non-zero; a run another
    # process holds is left to it.
    failures = exit_on_config_error() if hydra_cfg.mode == RunMode.RUN else skip_runs_in_use()
    with exit_on_interrupt(), failures:
        return run_task(cfg, Path(hydra_cfg.runtime.output_dir))  # a sweep's learning-rate search reads it
    return None


def main() -> None:
    """Checks the command line (`sys.argv`), then hands it to Hydra."""
    sys.argv[1:] = quote_paths(sys.argv[1:])
    check_command_line(sys.argv[1:])
    run()
