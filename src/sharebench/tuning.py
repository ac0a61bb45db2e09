"""A learning rate per configuration, chosen the same way for every one (`lr_grid.factors`, `+sweep=lr_grid`).

In a sweep, each configuration first trains on its first seed at each rate of its grid (its `optim.lr` times
each factor); the rate with the lowest `lr_grid.metric` wins. A winner at the grid's edge extends the grid by one
more rate beyond it, up to `lr_grid.extend` times; a winner still at the edge is flagged as such. The remaining
seeds then train at the chosen rate. The sweeper (src/hydra_plugins) drives the search and `sharebench collect`
reads the same choice back from the run records, both with `choose`. GLUE fine-tuning's grid (glue.lrs) is
BERT's protocol instead: every rate for every pretrained model, the best on the validation set (`best_mean`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sharebench.spec import RunSpec

LR_KEY = "optim.lr"
SEED_KEY = "seed"


def rounded(rate: float) -> float:
    """A rate as a run's folder name shows it: four significant digits."""
    return float(f"{rate:.4g}")


def grid(base: float, factors: Sequence[float]) -> list[float]:
    return sorted({rounded(base * float(f)) for f in factors})


@dataclass(frozen=True)
class Choice:
    rate: float
    at_edge: bool  # the lowest or the highest rate tried: a better rate may lie beyond the grid


def choose(results: Mapping[float, float]) -> Choice:
    """The rate with the lowest metric among those tried."""
    rate = min(results, key=lambda r: (results[r], r))
    return Choice(rate, at_edge=len(results) > 1 and rate in (min(results), max(results)))


def best_mean(scores_by_rate: Mapping[Any, Sequence[float]]) -> Any:
    """The rate whose scores (higher is better: a GLUE task's validation score over fine-tuning seeds) have the
    best mean, the lowest rate among equals: how GLUE fine-tuning chooses among glue.lrs."""
    return max(scores_by_rate, key=lambda rate: (statistics.fmean(scores_by_rate[rate]), -(rate or 0)))


def beyond(rates: Sequence[float], edge: float) -> float:
    """The next rate past `edge`, one step of the grid's spacing further out."""
    ordered = sorted(rates)
    if edge == ordered[-1]:
        return rounded(edge * edge / ordered[-2])
    return rounded(edge * edge / ordered[1])


def without(run: Sequence[str], *keys: str) -> list[str]:
    return [o for o in run if o.split("=", 1)[0].lstrip("+~") not in keys]


def seed_of(run: Sequence[str]) -> str | None:
    return next((o.split("=", 1)[1] for o in run if o.split("=", 1)[0].lstrip("+~") == SEED_KEY), None)


@dataclass
class Search:
    """One configuration's search: its runs' overrides (seed and rate aside), its seeds in the order given, the
    rates tried so far with their metric (None: the run failed or another process holds it)."""

    run: list[str]
    seeds: list[str | None]
    base: float
    factors: Sequence[float]
    extend: int
    metric: str
    results: dict[float, float | None] = field(default_factory=dict)
    pending: list[float] = field(init=False)  # rates still to try on the first seed: the grid, then its extensions

    def __post_init__(self) -> None:
        self.pending = grid(self.base, self.factors)

    def overrides(self, seed: str | None, rate: float) -> list[str]:
        return [*self.run, *([f"{SEED_KEY}={seed}"] if seed is not None else []), f"{LR_KEY}={rate!r}"]

    def next_runs(self) -> list[tuple[float, list[str]]]:
        """The grid's rates still to train on the first seed, with their runs."""
        return [(rate, self.overrides(self.seeds[0], rate)) for rate in self.pending]

    def record(self, rate: float, value: float | None) -> None:
        self.pending.remove(rate)
        self.results[rate] = value
        if self.pending or not self.complete:
            return
        choice = choose(self.measured)
        if choice.at_edge and len(self.results) - len(grid(self.base, self.factors)) < self.extend:
            self.pending.append(beyond(list(self.results), choice.rate))

    @property
    def measured(self) -> dict[float, float]:
        return {rate: value for rate, value in self.results.items() if value is not None}

    @property
    def complete(self) -> bool:
        """Every rate tried has its metric (none failed or was left to another process)."""
        return len(self.measured) == len(self.results)

    def remaining_runs(self) -> list[list[str]]:
        """The other seeds' runs at the chosen rate, once the grid is done."""
        if self.pending or not self.complete:
            return []
        rate = choose(self.measured).rate
        return [self.overrides(seed, rate) for seed in self.seeds[1:]]

    def describe(self) -> str:
        name = " ".join(self.run) or "default"
        if not self.complete:
            return f"lr_grid: {name}: no choice, a run of its grid failed or another process holds it"
        choice = choose(self.measured)
        tried = ", ".join(f"{rate:g}: {value:.4f}" for rate, value in sorted(self.measured.items()))
        edge = " (at the grid's edge)" if choice.at_edge else ""
        return f"lr_grid: {name}: {self.metric} {tried} → {choice.rate:g}{edge}"


def searches(runs: Sequence[tuple[list[str], RunSpec]]) -> list[Search]:
    """The searches of a sweep's runs (their overrides and run specs) that set `lr_grid.factors`: one per
    configuration, its seeds in the order the sweep gives them."""
    found: dict[tuple[str, ...], Search] = {}
    for run, spec in runs:
        key = tuple(without(run, SEED_KEY, LR_KEY))
        if key not in found:
            grid = spec.lr_grid
            found[key] = Search(list(key), [], spec.optim.lr, list(grid.factors), grid.extend, grid.metric)
        found[key].seeds.append(seed_of(run))
    return list(found.values())


def metric_of(returned: Any, metric: str) -> float | None:
    """A run's metric from what the run returned (its record): infinite for a run that diverged (its record
    says so, or its loss is not finite), None for one that did not complete."""
    if isinstance(returned, dict) and returned.get("status") == "diverged":
        return math.inf
    value = (returned.get("metrics") or {}).get(metric) if isinstance(returned, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) else math.inf
