"""A pilot's power analysis (`sharebench power`): at a budget, do parameters matter, do masked models leave the
unigram plateau, and how many seeds would a board need?

Runs are grouped into budgets: everything a configuration sets but its sharing. Within a budget, every
iso-parameter twin (`iso_baseline=true`) is compared with the unshared model, paired by seed, on the main metric
(`results.main_metric`: the test split where the runs have one): the difference, its two-sided p-value, its
minimal detectable effect at the seeds run after the correction of a board's family of tests (80 % power at Holm's
strictest step, as the tables' verdicts), and the seeds that would bring that effect to a target. Each masked-LM
run also reports how far below its unigram loss it ends, and the share of training after which its validation curve
first lies `plateau` nats below it (the plateau a model that learnt no context sits on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats as scipy_stats

from sharebench.report.results import Configuration, find_configurations, label_value, main_metric, pretraining
from sharebench.report.stats import ALPHA, POWER, compare
from sharebench.schema import stated_keys, under

MOST_SEEDS = 100


def budget_of(configuration: Configuration) -> tuple[tuple[str, Any], ...]:
    """What a configuration sets besides its sharing (what its records say chooses it): the configurations of one
    budget differ in sharing alone."""
    sharing = stated_keys(configuration.first)["sharing"]
    return tuple(sorted(item for item in configuration.description.items() if not under(sharing, item[0])))


def seeds_for(spread: float, family: int, target: float) -> int | None:
    """The fewest seeds at which a paired difference whose seed-to-seed standard deviation is `spread` has a
    minimal detectable effect of at most `target` after a family of `family` tests; None beyond MOST_SEEDS."""
    for seeds in range(2, MOST_SEEDS + 1):
        t = scipy_stats.t(seeds - 1)
        if (t.ppf(1 - ALPHA / 2 / family) + t.ppf(POWER)) * spread / math.sqrt(seeds) <= target:
            return seeds
    return None


def plateau_exit(record: dict[str, Any], plateau: float) -> tuple[float | None, float | None]:
    """How far below its unigram loss a masked-LM run ends (its final validation loss), and the share of its
    steps after which its validation curve first lay `plateau` nats below the unigram loss (None: never)."""
    unigram = record.get("unigram_val_loss")
    metrics = record.get("metrics") or {}
    history = metrics.get("val_history") or []
    steps = metrics.get("steps") or 0
    if not isinstance(unigram, (int, float)) or not history or not steps:
        return None, None
    below = unigram - history[-1]["val_loss"]
    left = next((h["step"] for h in history if h["val_loss"] < unigram - plateau), None)
    return below, (left / steps if left is not None else None)


def mean_wall_time(records: Sequence[dict[str, Any]]) -> float | None:
    times = [r["wall_time_s"] for r in records if isinstance(r.get("wall_time_s"), (int, float))]
    return sum(times) / len(times) if times else None


def configuration_cost(mean_run: float, seeds: int, rates: int, search_seeds: int) -> float:
    """Lane-hours one configuration of a board costs at `seeds` seeds when its learning rate is searched over
    `rates` rates on `search_seeds` seeds (the chosen rate's search runs are also its first seeds), each run
    taking `mean_run` seconds."""
    return (max(seeds, search_seeds) + (rates - 1) * search_seeds) * mean_run / 3600


def power_report(folders: Sequence[str | Path], family: int, target: float, plateau: float = 0.1,
                 rates: int = 3, search_seeds: int = 2) -> str:  # fmt: skip
    configurations = pretraining(find_configurations(folders))
    main = main_metric(configurations)
    if main is None:
        return "power: no metric every configuration has"
    metric = main[0]
    lines = [
        f"# Power analysis of {', '.join(map(str, folders))}", "",
        f"Metric: {metric} (lower is better). A board's family of {family} tests; target minimal detectable effect "
        f"{target:g} (80 % power, 5 % two-sided at Holm's strictest step, 5 %/{family}). A configuration's cost: "
        f"the seeds for the target plus a learning-rate search over {rates} rates on {search_seeds} seeds (the "
        f"chosen rate's runs are its first seeds), at the mean wall time of the budget's runs (one lane).", "",
        "| budget | twin | unshared | Δ twin − unshared | p | seeds | detectable effect after correction "
        "| seeds for the target | mean run (s) | lane-hours per configuration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    budgets: dict[tuple, list[Configuration]] = {}
    for configuration in configurations:
        budgets.setdefault(budget_of(configuration), []).append(configuration)
    names = {budget: budget_name(budget, budgets) for budget in budgets}
    for budget, group in budgets.items():
        unshared = next((c for c in group if c.sharing == "none" and not c.iso_baseline and c.records), None)
        for twin in (c for c in group if c.iso_baseline and not c.iso_compute and c.records):  # the same budget
            comparison = (
                compare(twin.metric_by_seed(metric), unshared.metric_by_seed(metric), True) if unshared else None
            )
            if comparison is None or not comparison.paired or comparison.standard_error is None:
                lines.append(f"| {names[budget]} | {twin.label} | — | — | — | — | — | — | — | — |")  # no pairs
                continue
            spread = comparison.standard_error * math.sqrt(comparison.seeds)
            needed = seeds_for(spread, family, target) if spread > 0 else 2
            mean_run = mean_wall_time([*twin.records, *unshared.records])
            cost = None if needed is None or mean_run is None else configuration_cost(mean_run, needed, rates,
                                                                                        search_seeds)  # fmt: skip
            lines.append(
                f"| {names[budget]} | {twin.label} | {unshared.label} | {comparison.difference:+.4f} "
                f"| {comparison.p_value:.2g} | {comparison.seeds} | {comparison.minimal_detectable_effect(family):.4f} "
                f"| {needed if needed is not None else f'more than {MOST_SEEDS}'} "
                f"| {'—' if mean_run is None else f'{mean_run:.0f}'} | {'—' if cost is None else f'{cost:.2f}'} |"
            )
    masked = [(names[budget_of(c)], c, r) for c in configurations if c.arch == "bert" for r in c.records]
    if masked:
        lines += [
            "", f"Masked-LM runs: nats below the unigram loss at the end, and the share of training after which the "
            f"validation loss first lay {plateau:g} nats below it.", "",
            "| budget | configuration | seed | below the unigram loss | left the plateau after |",
            "|---|---|---|---|---|",
        ]  # fmt: skip
        for name, configuration, record in masked:
            below, left = plateau_exit(record, plateau)
            lines.append(
                f"| {name} | {configuration.label} | {record.get('seed')} "
                f"| {'—' if below is None else f'{below:.3f}'} | {'never' if left is None else f'{left:.0%}'} |"
            )
    return "\n".join(lines) + "\n"


def budget_name(budget: tuple, budgets: dict[tuple, list[Configuration]]) -> str:
    """A budget by its architecture and the settings that tell it apart from the other budgets of that
    architecture."""
    arch = dict(budget).get("arch.name")
    same_arch = [b for b in budgets if dict(b).get("arch.name") == arch]
    varying = {key for key, _ in budget if len({repr(dict(b).get(key)) for b in same_arch}) > 1}
    return ",".join(f"{key}={label_value(value)}" for key, value in budget if key == "arch.name" or key in varying)
