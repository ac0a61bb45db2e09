"""Pretrain one configuration, or a sweep with -m:

python train.py sharing=partial_qk ratio=0.9
python train.py -m sharing=none,partial_qk ratio=0.5,0.9
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sharebench.cli import check_command_line, exit_on_config_error, exit_on_interrupt, skip_runs_in_use


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from sharebench.tasks import run_task  # Lightning loads only once the command line has been checked

    hydra_cfg = HydraConfig.get()
    # A sweep's runs were validated by its sweeper before the first started (conf/hydra/sweeper); in a sweep,
    # a failing run is recorded as failed, the other runs go on, and the sweep exits non-zero; a run another
    # process holds is left to it.
    failures = exit_on_config_error() if hydra_cfg.mode == RunMode.RUN else skip_runs_in_use()
    with exit_on_interrupt(), failures:
        run_task(cfg, Path(hydra_cfg.runtime.output_dir))


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
