"""A learning rate per configuration, chosen the same way for every one (`lr_grid.factors`, `+sweep=lr_grid`).

In a sweep, each configuration first trains its first `lr_grid.seeds` seeds at each rate of its grid (its `optim.lr`
times each factor); the rate with the lowest mean `lr_grid.metric` over them wins, and a rate at which any of them
diverged or stayed within `lr_grid.plateau` nats of the unigram loss is never chosen. A winner at the grid's edge
extends the grid by one more rate beyond it, up to `lr_grid.extend` times; a winner still at the edge is flagged
as such. The remaining seeds then train at the chosen rate. The sweeper (src/hydra_plugins) drives the search and
`sharebench collect` reads the same choice back from the run records, both with `choose`. GLUE fine-tuning's grid
(glue.lrs) is BERT's protocol instead: every rate for every pretrained model, the best on the validation set
(`best_mean`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sharebench.run.spec import RunSpec

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
    """One configuration's search: its runs' overrides (seed and rate aside), its seeds in the order given, and
    for each rate tried the metric of each searching seed (None: the run failed or another process holds it).
    The first `searching` seeds train at every rate; the rate with the lowest mean over them wins, where a rate at
    which any of them diverged or stayed on the unigram plateau (`metric_of`: infinite) is never chosen."""

    run: list[str]
    seeds: list[str | None]
    base: float
    factors: Sequence[float]
    extend: int
    metric: str
    searching: int = 1
    plateau: float | None = None
    results: dict[float, dict[str | None, float | None]] = field(default_factory=dict)
    pending: list[float] = field(init=False)  # rates still to try: the grid, then its extensions

    def __post_init__(self) -> None:
        self.pending = grid(self.base, self.factors)

    @property
    def searching_seeds(self) -> list[str | None]:
        return self.seeds[: self.searching]

    def overrides(self, seed: str | None, rate: float) -> list[str]:
        return [*self.run, *([f"{SEED_KEY}={seed}"] if seed is not None else []), f"{LR_KEY}={rate!r}"]

    def next_runs(self) -> list[tuple[float, str | None, list[str]]]:
        """The runs still to train: each pending rate on each searching seed that has not run it."""
        return [(rate, seed, self.overrides(seed, rate)) for rate in self.pending for seed in self.searching_seeds
                if seed not in self.results.get(rate, {})]  # fmt: skip

    def value_of(self, returned: Any) -> float | None:
        return metric_of(returned, self.metric, self.plateau)

    def record(self, rate: float, seed: str | None, value: float | None) -> None:
        self.results.setdefault(rate, {})[seed] = value
        if rate in self.pending and set(self.results[rate]) >= set(self.searching_seeds):
            self.pending.remove(rate)
        if self.pending or not self.complete:
            return
        choice = choose(self.measured)
        if choice.at_edge and len(self.results) - len(grid(self.base, self.factors)) < self.extend:
            self.pending.append(beyond(list(self.results), choice.rate))

    @property
    def measured(self) -> dict[float, float]:
        """Each rate's mean metric over the searching seeds (infinite where one was not eligible)."""
        return {rate: mean_of(values) for rate, values in self.results.items() if None not in values.values()}

    @property
    def complete(self) -> bool:
        """Every rate tried has its metric on every searching seed (none failed or was left to another process)."""
        return len(self.measured) == len(self.results)

    @property
    def chosen(self) -> float | None:
        """The winning rate, once the grid is done; None where no rate was eligible."""
        if self.pending or not self.complete:
            return None
        choice = choose(self.measured)
        return choice.rate if math.isfinite(self.measured[choice.rate]) else None

    def remaining_runs(self) -> list[list[str]]:
        """The other seeds' runs at the chosen rate, once the grid is done."""
        rate = self.chosen
        return [] if rate is None else [self.overrides(seed, rate) for seed in self.seeds[self.searching :]]

    def describe(self) -> str:
        name = " ".join(self.run) or "default"
        if not self.complete:
            return f"lr_grid: {name}: no choice, a run of its grid failed or another process holds it"
        choice = choose(self.measured)
        over = f" (mean of {len(self.searching_seeds)} seeds)" if len(self.searching_seeds) > 1 else ""
        tried = ", ".join(f"{rate:g}: {value:.4f}" for rate, value in sorted(self.measured.items()))
        if self.chosen is None:
            return f"lr_grid: {name}: {self.metric}{over} {tried} → no eligible rate (each diverged or stayed on the " \
                   f"unigram plateau)"  # fmt: skip
        edge = " (at the grid's edge)" if choice.at_edge else ""
        return f"lr_grid: {name}: {self.metric}{over} {tried} → {choice.rate:g}{edge}"


def mean_of(values: Mapping[Any, float]) -> float:
    """The mean of the seeds' metrics; infinite where any is (a seed not eligible makes the rate not eligible)."""
    return math.inf if any(math.isinf(v) for v in values.values()) else statistics.fmean(values.values())


def searches(runs: Sequence[tuple[list[str], RunSpec]]) -> list[Search]:
    """The searches of a sweep's runs (their overrides and run specs) that set `lr_grid.factors`: one per
    configuration, its seeds in the order the sweep gives them."""
    found: dict[tuple[str, ...], Search] = {}
    for run, spec in runs:
        key = tuple(without(run, SEED_KEY, LR_KEY))
        if key not in found:
            grid = spec.lr_grid
            found[key] = Search(list(key), [], spec.optim.lr, list(grid.factors), grid.extend, grid.metric,
                                grid.seeds, grid.plateau)  # fmt: skip
        found[key].seeds.append(seed_of(run))
    return list(found.values())


def metric_of(returned: Any, metric: str, plateau: float | None = None) -> float | None:
    """A run's metric from what the run returned (its record): infinite for a run that is not eligible, one that
    diverged (its record says so, or its loss is not finite) or, with `plateau`, one whose loss is not that far
    below its unigram loss (it stayed on the plateau of a model that learnt no context); None for a run that did
    not complete."""
    if isinstance(returned, dict) and returned.get("status") == "diverged":
        return math.inf
    value = (returned.get("metrics") or {}).get(metric) if isinstance(returned, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if not math.isfinite(value):
        return math.inf
    unigram = returned.get("unigram_val_loss")
    if plateau is not None and isinstance(unigram, (int, float)) and value > unigram - plateau:
        return math.inf
    return float(value)
