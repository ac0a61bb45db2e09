"""The suite's sweeper (`hydra/sweeper: sharebench`): every combination of the sweep's values, like Hydra's basic
sweeper, with the whole sweep checked before its first run starts.

Besides `hydra.sweeper.params` (one grid: every combination of its values), a recipe may give `grids`, a list of
grids whose runs are joined: a comparison of chosen configurations rather than of every combination (the
leaderboard's within-layer schemes with `layers=none` and cross-layer schemes with `sharing=none`). `params`
then holds the axes common to every grid (seeds), and the command line wins over both. `dry_run=true` prints the
runs, validated, and launches none: `python train.py -m experiment=leaderboard hydra.sweeper.dry_run=true`.
Runs whose config sets `lr_grid.factors` search their learning rate first (`sharebench.tuning`): the grid on the
first seed, then the other seeds at the chosen rate.

Hydra discovers sweepers in the `hydra_plugins` package only; the checks themselves live in `sharebench.run.sweep`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class SharebenchSweeper(Sweeper):
    """Composes every run of the sweep with Hydra's config loader and validates it before any is launched; runs
    that differ only in a ratio their scheme takes none of are launched once, without the ratio."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None,
                 grids: list[dict[str, Any]] | None = None, dry_run: bool = False) -> None:  # fmt: skip
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.grids = grids or [{}]
        self.dry_run = dry_run
        self.launched = 0
        self.failures: list[JobReturn] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        from sharebench.errors import exit_on_config_error
        from sharebench.run.sweep import grid_runs, sweep_runs
        from sharebench.tuning import searches

        with exit_on_config_error():
            runs = [run for grid in self.grids for run in grid_runs(self.params, grid, arguments)]
            checked = sweep_runs(runs, self.compose_run)
        plain = [run for run, spec in checked if spec.lr_grid.factors is None]
        tuned = searches([(run, spec) for run, spec in checked if spec.lr_grid.factors is not None])
        if self.dry_run:
            first = [run for search in tuned for *_, run in search.next_runs()]
            later = sum(len(search.seeds[search.searching :]) for search in tuned)
            print(*(" ".join(run) for run in plain + first), sep="\n")
            print(f"{len(plain) + len(first)} runs" + (f", then {later} at the chosen learning rates" if tuned else "")
                  + ", none launched (dry_run)")  # fmt: skip
            return []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = self.launch(plain)
        while batch := [(search, rate, seed, run) for search in tuned for rate, seed, run in search.next_runs()]:
            for (search, rate, seed, _), returned in zip(batch, self.launch([run for *_, run in batch]), strict=True):
                completed = returned.status == JobStatus.COMPLETED
                search.record(rate, seed, search.value_of(returned.return_value) if completed else None)
                returns.append(returned)
        for search in tuned:
            print(search.describe())
        returns += self.launch([run for search in tuned for run in search.remaining_runs()])
        if self.failures:  # as Hydra's basic sweeper does: every run went on, the sweep reports its first failure
            _ = self.failures[0].return_value
        return returns

    def launch(self, runs: list[list[str]]) -> list[JobReturn]:
        step = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else max(len(runs), 1)
        returns: list[JobReturn] = []
        for start in range(0, len(runs), step):
            batch = runs[start : start + step]
            returns += self.launcher.launch(batch, initial_job_idx=self.launched)
            self.launched += len(batch)
        self.failures += [returned for returned in returns if returned.status != JobStatus.COMPLETED]
        return returns

    def compose_run(self, run: list[str]) -> Any:
        return self.hydra_context.config_loader.load_sweep_config(self.config, run)
