"""Hydra's basic sweeper, checking a whole sweep before its first run starts (`hydra/sweeper: sharebench`).

Besides `hydra.sweeper.params` (one grid: every combination of its values), a recipe may give `grids`, a list of
grids whose runs are joined: a comparison of chosen configurations rather than of every combination (the
leaderboard's within-layer schemes with `layers=none` and cross-layer schemes with `sharing=none`). `params`
then holds the axes common to every grid (seeds), and the command line wins over both. `dry_run=true` prints the
runs, validated, and launches none: `python train.py -m experiment=leaderboard hydra.sweeper.dry_run=true`.

Hydra discovers sweepers in the `hydra_plugins` package only; the checks themselves live in `sharebench.config`.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


class SharebenchSweeper(BasicSweeper):
    """Composes every run of the sweep with Hydra's config loader and validates it before any is launched; runs
    that differ only in a ratio their scheme takes none of are launched once, without the ratio."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None,
                 grids: list[dict[str, Any]] | None = None, dry_run: bool = False) -> None:  # fmt: skip
        super().__init__(max_batch_size, params)
        self.grids = grids or [{}]
        self.dry_run = dry_run

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        from sharebench.config import sweep_runs
        from sharebench.errors import exit_on_config_error

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        runs: list[list[str]] = []
        for grid in self.grids:
            axes = parser.parse_overrides([f"{key}={value}" for key, value in grid.items()])
            runs += BasicSweeper.split_arguments(axes + list(overrides), None)[0]
        with exit_on_config_error():
            checked = sweep_runs(runs, self.compose_run)
        if self.dry_run:
            print(*(" ".join(run) for run in checked), f"{len(checked)} runs, none launched (dry_run)", sep="\n")
            return []
        return list(BasicSweeper.split_overrides_to_chunks(checked, max_batch_size))

    def compose_run(self, run: list[str]) -> Any:
        return self.hydra_context.config_loader.load_sweep_config(self.config, run)
