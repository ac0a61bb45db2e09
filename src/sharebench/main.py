"""Pretrain or fine-tune one configuration, or a sweep with -m: `sharebench train …` and the repository's
`python train.py …` both run `main`.

sharebench train sharing=partial_qk ratio=0.9
sharebench train -m sharing=none,partial_qk ratio=0.5,0.9
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from sharebench.errors import (
    ConfigError,
    RunDiverged,
    exit_on_config_error,
    exit_on_fault,
    exit_on_interrupt,
    skip_runs_in_use,
)


def quote_paths(argv: Sequence[str]) -> list[str]:
    """The command line with path values quoted for Hydra where they need it (one holding '=', or naming a file
    or folder that exists), so a run folder is passed back as typed. A comma in any other value still separates
    the values of a sweep."""
    from sharebench.run.spec import PATH_KEYS  # a run folder the suite printed holds the '=' and ',' of Hydra's syntax

    def quoted(arg: str) -> str:
        key, equals, value = arg.partition("=")
        if not equals or key.lstrip("+~") not in PATH_KEYS or value[:1] in ("'", '"'):
            return arg
        if "=" in value or ("," in value and Path(value).expanduser().exists()):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'")  # Hydra's escapes in a quoted value
            return f"{key}='{escaped}'"
        return arg

    return [quoted(arg) for arg in argv]


class CheckRun(Callback):
    """Checks a single run's config, as Hydra composed it, before Hydra makes its folder (conf/config.yaml
    registers it): the whole run spec, and the machine it is to train on. A sweep's runs are checked by its
    sweeper (conf/hydra/sweeper) before the first starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from sharebench.run.machine import check_trainer_here
        from sharebench.run.validation import validate

        with exit_on_config_error():
            check_trainer_here(spec := validate(config))
            if (factors := spec.lr_grid.factors) is not None:
                raise ConfigError(
                    f"lr_grid.factors={list(factors)} searches a learning rate over the runs of a sweep: add -m"
                )


@hydra.main(config_path="conf", config_name="config", version_base=None)
def run(config: DictConfig) -> dict[str, Any] | None:
    from sharebench.train.tasks import run_task  # Lightning loads only once the command line has been checked

    hydra_config = HydraConfig.get()
    # A sweep's runs were validated by its sweeper before the first started (conf/hydra/sweeper); in a sweep,
    # a failing run is recorded as failed, the other runs go on, and the sweep exits non-zero; a run another
    # process holds is left to it; a run that diverged is a result the sweep goes on from. A fault of the
    # machine stops a single run and a sweep alike.
    single = hydra_config.mode == RunMode.RUN
    failures = exit_on_config_error() if single else skip_runs_in_use()
    with exit_on_interrupt(), exit_on_fault(), failures:
        record = run_task(config, Path(hydra_config.runtime.output_dir))  # a sweep's learning-rate search reads it
        if single and record.get("status") == "diverged":
            sys.exit(RunDiverged.exit_code)  # its line is printed
        return record
    return None


def main() -> None:
    """Hands the command line (`sys.argv`) to Hydra. What Hydra cannot compose (an unknown group choice, a key
    of no group, a malformed override) ends in one line, as does what `CheckRun` or the sweeper refuses."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from sharebench.run.composing import GROUPS, innermost, one_line
    from sharebench.run.sweep import check_choice

    argv = sys.argv[1:] = quote_paths(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it cannot compose instead of printing it in many lines
    with exit_on_config_error():
        printing = {"--cfg", "-c", "--info", "-i"} & set(argv)
        if printing and {"-m", "--multirun"} & set(argv):
            raise ConfigError(
                f"{'/'.join(sorted(printing))} prints one run's settings and -m starts a sweep: give one of them "
                f"(a launcher's settings: --cfg hydra --package hydra.launcher, without -m)"
            )
        GlobalHydra.instance().clear()  # a process may run more than one command (tests, notebooks)
        try:
            run()
        except MissingConfigException as error:
            group, _, value = (error.missing_cfg_file or "").rpartition("/")
            if group in GROUPS:
                check_choice(group, value)
            raise ConfigError(one_line(error)) from error
        except (HydraException, OmegaConfBaseException) as error:
            cause = innermost(error)
            said = "" if cause is error else f"{str(error).splitlines()[0].rstrip('.')}: "
            raise ConfigError(said + one_line(cause)) from error
