"""From a folder of runs to comparison tables and plots: `sharebench collect <folder>`.

The runs are grouped into configurations (`sharebench.report.results`). Each configuration gives one row: how many seeds
completed and how many did not (failed, interrupted, still running), the mean and 95 % confidence interval
(Student's t over seeds) of every metric, unique parameters and their ratio to the same model without sharing, and
tokens/s. A row's label names only what varies in the table (`sharing=shared_qkv`, `ratio=0.9`). GLUE fine-tuning
runs give a second table: one row per pretrained configuration, a column per task and the GLUE score. Runs that did
not complete are listed with their status and error, never dropped.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sharebench.errors import ConfigError
from sharebench.paths import atomic_write_bytes, atomic_write_json
from sharebench.report.results import (
    COMPARED_TOO,
    STAGING,
    Configuration,
    LrSearch,
    by_arch,
    by_model,
    find_configurations,
    iso_baseline,
    iso_compute_twin,
    label_value,
    main_metric,
    precision_twin,
    pretraining,
    reference,
    shares_data_order,
    tuned_rate,
)
from sharebench.report.scaling import Ladder, PowerLaw, Shared, Worth, analyse, ladder, scheme_of
from sharebench.report.scaling import Result as LadderResult
from sharebench.report.stats import Comparison, compare, mean_ci, minimal_detectable_effect, verdicts
from sharebench.schema import RECORD_NAME, record_leaves


def comparison_cells(comparison: Comparison | None) -> list[str]:
    """Δ ± 95 % CI and the test that gave the interval."""
    return [_difference_cell(comparison), comparison.test_name() if comparison else "—"]


def _difference_cell(comparison: Comparison | None) -> str:
    if comparison is None:
        return "—"
    if comparison.half_width is None:
        return f"{comparison.difference:+.4f}"
    return f"{comparison.difference:+.4f} ± {comparison.half_width:.4f}"


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean_ci_cell(values: Sequence[float], spec: str = ".4f") -> str:
    mean, half = mean_ci(values)
    if mean is None:
        return "—"
    return f"{mean:{spec}} ± {half:{spec}}" if half is not None else f"{mean:{spec}}"


def scheme_cell(configuration: Configuration) -> str:
    return f"none (iso twin of {configuration.sharing})" if configuration.iso_baseline else configuration.sharing


def _mebibytes(size: float | None) -> float | None:
    return size / 2**20 if size is not None else None


def compared(configuration: Configuration, other: Configuration, metric: str) -> Comparison | None:
    return compare(configuration.metric_by_seed(metric), other.metric_by_seed(metric),
                   shares_data_order(configuration, other))  # fmt: skip


class Verdicts:
    """A table's comparisons of its main metric, judged together: each gets a placeholder cell that `judge` fills
    with its verdict once all are known. Holm's correction runs over each family of the table: all its comparisons,
    or where some configurations ran at lower power (fewer seeds, `seeds_cell`), the comparisons of the
    full-power configurations as one family and those of the lower-power ones as another."""

    FULL, LOWER = "full-power", "lower-power"

    def __init__(self) -> None:
        self.comparisons: list[Comparison | None] = []
        self.cells: list[tuple[list[str], int]] = []
        self.families: list[str] = []

    def add(self, comparison: Comparison | None, row: list[str], lower_power: bool = False) -> list[str]:
        """The comparison's cells (Δ ± 95 % CI, the test, and the verdict to come) appended to `row`."""
        row += [*comparison_cells(comparison), ""]
        self.comparisons.append(comparison)
        self.cells.append((row, len(row) - 1))
        self.families.append(self.LOWER if lower_power else self.FULL)
        return row

    def members(self, family: str) -> list[int]:
        return [i for i, name in enumerate(self.families) if name == family]

    def size(self, family: str) -> int:
        """The tests Holm's correction runs over in `family`: its comparisons with a p-value."""
        return sum(self.comparisons[i] is not None and self.comparisons[i].p_value is not None
                   for i in self.members(family))  # fmt: skip

    @property
    def split(self) -> bool:
        return self.LOWER in self.families and self.FULL in self.families

    def judge(self, lower_is_better: bool, margin: float | None) -> None:
        for family in dict.fromkeys(self.families):
            members, tested = self.members(family), self.size(family)
            comparisons = [self.comparisons[i] for i in members]
            said = verdicts(comparisons, lower_is_better, margin)
            for i, verdict, comparison in zip(members, said, comparisons, strict=True):
                row, column = self.cells[i]
                effect = comparison.minimal_detectable_effect(tested) if comparison is not None else None
                row[column] = verdict + (f" (MDE {effect:.4f})" if effect is not None else "")

    def notes(self, metric: str, margin: float | None) -> list[str]:
        if self.split:
            family = (f"Holm's correction within each of the table's two families: the {self.size(self.FULL)} tested "
                      f"comparisons of the full-power configurations, and the {self.size(self.LOWER)} of those run "
                      "at lower power (†; a comparison with one is in theirs)")  # fmt: skip
            strictest = f"5 %/{self.size(self.FULL)} or 5 %/{self.size(self.LOWER)}, its family's"
        else:
            tested = self.size(self.families[0] if self.families else self.FULL)
            family = f"Holm's correction over the table's family of {tested} tested comparisons"
            strictest = f"5 %/{tested}"
        notes = [
            f"Verdicts on {metric}: `better`/`worse` where the two-sided t-test rejects no difference at 5 % after "
            f"{family} (every Δ column's with a test); "
            + (f"`equivalent within ±{margin:g}` where the 90 % CI of the difference lies inside ±{margin:g} (two "
               f"one-sided tests, not corrected: by the intersection-union principle the claim that all the "
               f"equivalences the table states hold is tested at 5 %, while one of them picked alone is held to "
               f"less); " if margin is not None else "no equivalence margin set (the recipe's "
               "`experiment.margin`, or `collect --margin`), so nothing is called equivalent; ")
            + "else `inconclusive`. Test `paired, n seeds`: the difference is taken seed by seed (the seed fixes "
            "the data order and the evaluation batches); `Welch`: unpaired. (MDE x): the comparison's minimal "
            f"detectable effect after the correction, 80 % power at Holm's strictest step ({strictest}): a true "
            "difference below it could not have been called better or worse."
        ]  # fmt: skip
        for name in dict.fromkeys(self.families):
            comparisons = [self.comparisons[i] for i in self.members(name)]
            before = minimal_detectable_effect(comparisons)
            after = minimal_detectable_effect(comparisons, self.size(name))
            if before and after:
                which = f" of the {name} configurations" if self.split else ""
                notes.append(
                    f"Minimal detectable effect{which} at these seeds (80 % power, 5 % two-sided), median over "
                    f"comparisons: {after[0]:.4f} after Holm's correction ({after[1]:.4f} to {after[2]:.4f}); "
                    f"{before[0]:.4f} before it ({before[1]:.4f} to {before[2]:.4f})."
                )
        return notes


def margin_of(configurations: Sequence[Configuration], metric_order: str) -> float | None:
    """The recipe's equivalence margin for the main metric: `experiment.margin.loss` or `.score`."""
    for record in (r for c in configurations for r in c.records):
        margins = ((record.get("config") or {}).get("experiment") or {}).get("margin") or {}
        value = margins.get("loss" if metric_order == "lower" else "score")
        if value is not None:
            return float(value)
    return None


class Table(NamedTuple):
    header: list[str]
    rows: list[list[str]]
    notes: list[str]  # how its comparisons were judged


def table_rows(configurations: Sequence[Configuration], iso: bool = False, margin: float | None = None) -> Table:
    """The main table: one row per configuration that is not a GLUE fine-tuning run. Its shared configurations
    are paired with their iso-parameter twins where `iso` asks or where twins (`iso_baseline=true`) were run, and
    with their iso-compute twins where those were run. `margin`: the equivalence margin (default: the recipe's)."""
    configurations = pretraining(configurations)
    iso = iso or any(c.iso_baseline and c.records for c in configurations)
    metrics: dict[str, None] = {}
    for configuration in configurations:
        metrics.update(dict.fromkeys(configuration.metrics()))
    header = ["configuration", "sharing", "ratio", "layers ratio", "seeds", "not completed", "unique params",
              "vs unshared", "tokens seen", "training FLOPs", "checkpoint MiB", "training MiB", "KV bytes/token",
              "wall s/run", *metrics]  # fmt: skip
    searched = any(c.lr_search for c in configurations)
    if searched:
        header.insert(4, "learning rate")
    main = main_metric(configurations)
    base = reference(configurations) if main else None
    also = [m for m in COMPARED_TOO if m in metrics and base and m != main[0]]
    compute_twins = {c.label: iso_compute_twin(c, configurations) for c in configurations} if main else {}
    fp32_twins = {c.label: precision_twin(c, configurations) for c in configurations} if main else {}
    if base:
        header += [f"Δ {main[0]} vs {base.label}", "test", f"verdict vs {base.label}"]
        header += [f"Δ {metric} vs {base.label}" for metric in also]
    if iso and main:
        header += ["iso-param twin", f"twin {main[0]}", f"Δ {main[0]} vs twin", "test vs twin", "verdict vs twin"]
    if any(compute_twins.values()):
        header += ["iso-compute twin", f"Δ {main[0]} vs iso-compute twin", "test vs iso-compute twin",
                   "verdict vs iso-compute twin"]  # fmt: skip
    if any(fp32_twins.values()):
        header += ["fp32 twin", f"Δ {main[0]} vs fp32 twin", "test vs fp32 twin", "verdict vs fp32 twin"]
    judged = Verdicts()
    rows = []
    most_seeds = max((len(c.records) for c in configurations), default=0)

    def lower(*compared_ones: Configuration) -> bool:  # a comparison of a configuration run at lower power
        return any(len(c.records) < most_seeds for c in compared_ones)

    for configuration in configurations:
        unique = configuration.unique_parameters()
        unshared = configuration.unshared_parameters()
        row = [
            configuration.label + (f" {OTHER_CODE}" if configuration.other_code else ""),
            scheme_cell(configuration),
            _format(configuration.ratio, "g"),
            _format(configuration.layers_ratio, ".4g"),
            seeds_cell(configuration, most_seeds),
            str(len(configuration.failed)),
            _format(unique, ","),
            _format(unique / unshared if unique and unshared else None, ".4f"),
            _format(configuration.compute("tokens_seen"), ",.0f"),
            _format(configuration.compute("training_flops"), ".3e"),
            _format(_mebibytes(configuration.mean_of("checkpoint", "bytes")), ",.2f"),
            _format(_mebibytes(configuration.mean_of("memory", "training_bytes")), ",.1f"),
            _format(configuration.mean_of("inference", "kv_cache_bytes_per_token"), ",.0f"),
            _format(configuration.mean_of("wall_time_s"), ",.0f"),
            *(_mean_ci_cell(configuration.metric_values(m)) for m in metrics),
        ]
        if searched:
            row.insert(4, learning_rate_cell(configuration))
        if base:
            if configuration is base:
                row += ["reference", "—", "reference"]
            elif configuration.iso_baseline:  # a twin is there to judge its shared model by, not to be judged
                row += [*comparison_cells(compared(configuration, base, main[0])), "—"]
            else:
                judged.add(compared(configuration, base, main[0]), row, lower(configuration, base))
            row += ["reference" if configuration is base else _difference_cell(compared(configuration, base, m))
                    for m in also]  # fmt: skip
        if iso and main:
            twin = iso_baseline(configuration, configurations)
            if twin:
                closest = "" if twin.iso_baseline else "closest unshared: "  # not a twin run for this configuration
                row += [
                    f"{closest}{twin.label} ({twin.unique_parameters():,})",
                    _mean_ci_cell(twin.metric_values(main[0])),
                ]
                if twin is base:  # the same comparison as against the reference, judged there once
                    row += ["as vs the reference"] * 3
                else:
                    judged.add(compared(configuration, twin, main[0]), row, lower(configuration, twin))
            else:
                row += ["—"] * 5
        if any(compute_twins.values()):
            compute_twin = compute_twins[configuration.label]
            if compute_twin:
                row.append(f"{compute_twin.label} ({compute_twin.compute('tokens_seen'):,.0f} tokens)")
                judged.add(compared(configuration, compute_twin, main[0]), row, lower(configuration, compute_twin))
            else:
                row += ["—"] * 4
        if any(fp32_twins.values()):
            if fp32_twin := fp32_twins[configuration.label]:
                row.append(fp32_twin.label)
                judged.add(compared(configuration, fp32_twin, main[0]), row, lower(configuration, fp32_twin))
            else:
                row += ["—"] * 4
        rows.append(row)
    marks = [f"{OTHER_CODE} joined by `sharebench board add --accept-code`: trained by other code than the others."
             ] if any(c.other_code for c in configurations) else []  # fmt: skip
    marks += (
        [
            f"{LOWER_POWER} fewer seeds than the table's most ({most_seeds}): lower power; each verdict's detectable "
            "effect says how much lower."
        ]
        if lower(*configurations)
        else []
    )
    if not main:
        return Table(header, rows, marks)
    margin = margin if margin is not None else margin_of(configurations, main[1])
    judged.judge(main[1] == "lower", margin)
    return Table(header, rows, judged.notes(main[0], margin) + marks)


OTHER_CODE = "‡"  # marks a configuration trained by other code than the table's others (`board add --accept-code`)
LOWER_POWER = "†"  # marks the seeds of a configuration run with fewer seeds than the table's others


def seeds_cell(configuration: Configuration, most_seeds: int) -> str:
    seeds = len(configuration.records)
    return f"{seeds}{LOWER_POWER}" if seeds < most_seeds else str(seeds)


def learning_rate_cell(configuration: Configuration) -> str:
    search = configuration.lr_search
    if search is None or not search.complete:
        return "—"
    return f"{search.choice.rate:g}" + (" (grid edge)" if search.choice.at_edge else "")


def lr_search_table(configurations: Sequence[Configuration]) -> Table | None:
    """Each searched configuration's rates with the metric of the seed that ran them, and the rate chosen."""
    searched = [c for c in configurations if c.lr_search]
    if not searched:
        return None
    rates = sorted({rate for c in searched for rate in c.lr_search.results})
    header = ["configuration", "sharing", *(f"lr {rate:g}" for rate in rates), "chosen", "at the grid's edge"]
    rows = [
        [c.label, scheme_cell(c), *(search_cell(c.lr_search, rate) for rate in rates),
         f"{c.lr_search.choice.rate:g}" if c.lr_search.complete else "search not finished",
         "yes" if c.lr_search.choice.at_edge else "no"]
        for c in searched
    ]  # fmt: skip
    metric = searched[0].lr_search.metric
    notes = [
        f"Learning-rate search (lr_grid): each configuration's {metric} on the seed that ran every rate of its grid "
        "(— not tried); the lowest wins and the other seeds ran at it. A choice at the grid's edge stayed there "
        "after the grid was extended as far as lr_grid.extend allows: a better rate may lie beyond."
    ]
    if any(len(values) > 1 for c in searched for values in c.lr_search.by_seed.values()):
        notes = [
            f"Learning-rate search (lr_grid): each configuration's mean {metric} over the seeds that ran every rate "
            "of its grid, each seed's in brackets in seed order (— not tried; inf: diverged, or within lr_grid.plateau "
            "of the unigram loss, so never chosen); the lowest mean wins and the other seeds ran at it. A choice at "
            "the grid's edge stayed there after the grid was extended as far as lr_grid.extend allows."
        ]
    return Table(header, rows, notes)


def search_cell(search: LrSearch, rate: float) -> str:
    """A rate's mean metric, with each searching seed's where there are several."""
    seeds = search.by_seed.get(rate, {})
    mean = _format(search.results.get(rate), ".4f")
    if len(seeds) < 2:
        return mean
    return f"{mean} ({' / '.join(_format(seeds[seed], '.4f') for seed in sorted(seeds, key=str))})"


def ladders_of(configurations: Sequence[Configuration]) -> dict[str | None, tuple[Ladder, LadderResult]]:
    """Each architecture's scaling ladder (unshared runs at MIN_RUNGS sizes or more) with its fitted laws."""
    found = {}
    for arch, group in by_arch(pretraining(configurations)).items():
        main = main_metric(group)
        rungs = ladder(group, main[0]) if main and main[1] == "lower" else None
        result = analyse(rungs) if rungs else None
        if result:
            found[arch] = (rungs, result)
    return found


def ladder_table(found: Ladder, result: LadderResult) -> Table:
    """Every shared configuration's effective parameters (and compute) on the unshared runs' fitted laws."""
    header = ["configuration", "scheme", "rung", "unique params", "seeds", found.metric,
              "Δ vs its rung's unshared (95 % CI)", "p", "effective params", "× params (95 % CI)",
              "worth in parameters", "× FLOPs (95 % CI)", "worth in compute"]  # fmt: skip
    rows = [
        ["unshared", "none", rung.size, f"{rung.unique:,.0f}", str(len(rung.losses)), _mean_ci_cell(rung.losses),
         "—", "—", "(the fit)", "1", "—", "1", "—"]
        for rung in found.rungs
    ]  # fmt: skip
    for shared in (shared for members in found.by_scheme().values() for shared in members):
        params, flops = result.worth[shared.configuration.label]
        paired = shared.against_rung()
        rows.append([
            shared.configuration.label, scheme_of(shared.configuration), shared.rung.size, f"{shared.unique:,.0f}",
            str(len(shared.losses)), _mean_ci_cell(shared.losses), _difference_cell(paired),
            _format(paired.p_value if paired else None, ".2g"),
            _format(params.multiplier * shared.unique if params else None, ",.0f"),
            worth_cell(params), params.verdict() if params else "—", worth_cell(flops),
            flops.verdict() if flops else "—",
        ])  # fmt: skip
    law, flops_law = result.laws
    notes = [
        f"Fit over the unshared runs' mean {found.metric} at {len(found.rungs)} rungs, each weighted by its standard "
        f"error: loss = {law.floor:.4f} + {law.scale:.4f}·(N/{law.x0:,.0f})^−{law.exponent:.4f} over unique "
        f"parameters N" + (f"; over training FLOPs C: {flops_law.floor:.4f} + {flops_law.scale:.4f}·"
                           f"(C/{flops_law.x0:.3e})^−{flops_law.exponent:.4f}" if flops_law else "") + ". "
        + floor_note(law),
        "Effective params: the unshared size with the configuration's mean loss on the fit; × params: effective over "
        "unique parameters; × FLOPs: the training FLOPs an unshared model needs for that loss over those the "
        f"configuration spent. 95 % intervals: {len(result.draws)} bootstrap replicates over the seeds within each "
        "rung and each configuration; `worth more`/`worth less` where the interval excludes 1. A multiplier "
        "marked * lies outside the fitted rungs (extrapolated). Δ vs its rung's unshared: the configuration's "
        "difference from the unshared model of its own rung, paired by seed (uncorrected p).",
        "A configuration with one seed has its loss drawn with the seed-to-seed standard deviation pooled over the "
        "configurations with several: " + (f"{result.seed_spread:.4f}." if result.seed_spread is not None else
                                           "none has several, so its interval leaves seed noise out."),
    ]  # fmt: skip
    notes += [f"Trend with size, {scheme}: {trend_cell(*trend)}." for scheme, trend in result.trend.items()]
    return Table(header, rows, notes)


def floor_note(law: PowerLaw) -> str:
    if law.floor_at_bound:
        return (f"Its floor E = {law.floor:.4f} sits at a bound of its range (0 or the lowest loss): these rungs do "
                "not identify it, and the multipliers depend on where the bound puts it.")  # fmt: skip
    return f"Its floor E = {law.floor:.4f} lies inside its range (0 to the lowest loss)."


def trend_cell(slope: float, low: float, high: float) -> str:
    direction = "grows" if low > 0 else "shrinks" if high < 0 else "no clear trend"
    return f"log-log slope {slope:+.3f} [{low:+.3f}, {high:+.3f}]: {direction}"


def ladder_by_scheme(found: Ladder, result: LadderResult) -> Table:
    """The multiplier over unique parameters of each scheme (a row) at each rung it ran (a column), with its
    verdict, and the scheme's trend with size: `ladder_table`'s figures, one line per scheme."""

    def cell(shared: Shared) -> str:
        params = result.worth[shared.configuration.label][0]
        return f"{worth_cell(params)} {params.verdict(explained=False)}" if params else "—"

    rungs = sorted({s.rung for s in found.shared}, key=lambda r: r.unique)
    header = ["scheme", *(f"× params at {rung.size}" for rung in rungs), "trend with size"]
    rows = []
    for scheme, members in found.by_scheme().items():
        at = {shared.rung.size: cell(shared) for shared in members}
        trend = trend_cell(*result.trend[scheme]) if scheme in result.trend else "—"
        rows.append([scheme, *(at.get(rung.size, "—") for rung in rungs), trend])
    return Table(header, rows, ["Each scheme's rows of the table above, side by side; * extrapolated."])


def worth_cell(worth: Worth | None) -> str:
    if worth is None:
        return "—"
    bounds = "no interval" if math.isnan(worth.low) else f"{worth.low:.3g}, {worth.high:.3g}"
    return f"{worth.multiplier:.3g} [{bounds}]" + ("*" if worth.extrapolated else "")


def pretraining_seed(record: dict[str, Any]) -> Any:
    return (record.get("config") or {}).get("seed", record.get("seed"))


def glue_scores(per_task: dict[str, Configuration], tasks: Sequence[str]) -> dict[Any, float]:
    """One GLUE score per pretraining seed that has every task: the mean over tasks of the task's score (averaged
    over fine-tuning seeds)."""
    scores: dict[Any, dict[str, list[float]]] = {}
    for task, configuration in per_task.items():
        for record in configuration.records:
            score = record.get("metrics", {}).get("score")
            if isinstance(score, (int, float)):
                scores.setdefault(pretraining_seed(record), {}).setdefault(task, []).append(float(score))
    return {seed: sum(sum(v) / len(v) for v in by_task.values()) / len(tasks)
            for seed, by_task in scores.items() if len(by_task) == len(tasks)}  # fmt: skip


def glue_table_rows(configurations: Sequence[Configuration], margin: float | None = None) -> Table | None:
    """One row per pretrained configuration: each task's score (its official metric, or the mean of two) and
    the GLUE score, with 95 % CIs over pretraining seeds, and its difference to the reference configuration with
    its verdict (paired by pretraining seed: GLUE's data and recipe are the same for every configuration)."""
    glue_runs = [c for c in configurations if c.glue_task is not None]
    if not glue_runs:
        return None
    tasks = list(dict.fromkeys(c.glue_task for c in glue_runs))
    by_label: dict[str, dict[str, Configuration]] = {}
    for configuration in glue_runs:
        by_label.setdefault(configuration.label, {})[configuration.glue_task] = configuration
    scores = {label: glue_scores(per_task, tasks) for label, per_task in by_label.items()}
    base = reference([next(iter(per_task.values())) for per_task in by_label.values()])
    searched = any(c.glue_rates for c in glue_runs)
    majorities = majority_scores(glue_runs)
    header = ["configuration", "sharing", "unique params (encoder)", "pretraining seeds", *tasks, "GLUE score"]
    header += [f"{task} lr" for task in tasks] if searched else []
    header += ["runs at the majority class"] if majorities else []
    header += [f"Δ GLUE vs {base.label}", "test", f"verdict vs {base.label}"] if base else []
    judged = Verdicts()
    rows = []
    for label, per_task in by_label.items():
        first = next(iter(per_task.values()))
        encoder = (first.first.get("parameters") or {}).get("encoder") or {}
        row = [
            label, scheme_cell(first), _format(encoder.get("unique"), ","), str(len(scores[label])),
            *(_mean_ci_cell(per_task[t].metric_values("score")) if t in per_task else "—" for t in tasks),
            _mean_ci_cell(list(scores[label].values())),
        ]  # fmt: skip
        if searched:
            row += [chosen_rates_cell(per_task[t]) if t in per_task else "—" for t in tasks]
        if majorities:
            row.append(", ".join(at_majority_cell(t, per_task[t]) for t in tasks if t in majorities and t in per_task))
        if base and label == base.label:
            row += ["reference", "—", "reference"]
        elif base:
            judged.add(compare(scores[label], scores[base.label], paired=True), row)
        rows.append(row)
    margin = margin if margin is not None else margin_of(glue_runs, "higher")
    judged.judge(False, margin)
    notes = judged.notes("the GLUE score", margin)
    if searched:
        notes.append("Learning rates (glue.lrs, BERT's protocol): each pretrained model is fine-tuned on each task at "
                     "every rate and scored at the rate with the best mean validation score; `<task> lr` counts the "
                     "models that chose each rate. The scores are of the choice, made on the validation set they are "
                     "reported on, so optimistic by that choice as in the BERT paper.")  # fmt: skip
    if majorities:
        scores = ", ".join(f"{t} {score:.4f}" for t, score in majorities.items())
        notes.append(f"Majority-class score (always the most frequent validation label): {scores}; `runs at the "
                     "majority class`: runs scored exactly there, that learnt nothing from the text.")  # fmt: skip
    return Table(header, rows, notes)


def majority_scores(glue_runs: Sequence[Configuration]) -> dict[str, float]:
    """Each classification task's majority-class score, from runs that recorded it."""
    found: dict[str, float] = {}
    for configuration in glue_runs:
        for record in configuration.records:
            score = (record.get("metrics") or {}).get("majority_score")
            if score is not None:
                found.setdefault(configuration.glue_task, score)
    return found


def at_majority_cell(task: str, configuration: Configuration) -> str:
    runs = configuration.records
    return f"{task} {sum(bool(r['metrics'].get('at_majority')) for r in runs)}/{len(runs)}"


def chosen_rates_cell(configuration: Configuration) -> str:
    counts = Counter(configuration.glue_rates.values())
    return ", ".join(f"{rate:g} ×{n}" for rate, n in sorted(counts.items())) or "—"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+(\.\d+)?$")


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table as CSV, numbers without thousands separators so spreadsheets and pandas read them as numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([[c.replace(",", "") if THOUSANDS.match(c) else c for c in row] for row in rows])
    return buffer.getvalue()


LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"}


def latex(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def escape(text: str) -> str:
        text = "".join(LATEX_SPECIAL.get(c, c) for c in text)
        return text.replace("±", r"$\pm$").replace("—", "--")

    lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(header) - 2) + "}", r"\toprule"]
    lines.append(" & ".join(escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def failed_runs(configurations: Sequence[Configuration]) -> list[str]:
    return [
        f"- {record['_path']}: {record.get('status')}: {str(record.get('error', 'no error recorded')).splitlines()[0]}"
        for configuration in configurations
        for record in configuration.failed
    ]


def paper_claims(configurations: Sequence[Configuration]) -> tuple[str | None, list[str]]:
    for configuration in configurations:
        experiment = (configuration.first.get("config") or {}).get("experiment")
        if experiment:
            return experiment.get("title"), list(experiment.get("paper", []))
    return None, []


def setting(configurations: Sequence[Configuration]) -> str:
    """What the runs were, read from their records: the config values all of them share, those that vary, the
    data, and the machines and code that ran them. A README quotes this file rather than retyping it."""
    records = [r for c in configurations for r in c.records]
    if not records:
        return "# Setting\n\nNo completed runs.\n"
    leaves = [record_leaves(r, kept=("result", "scheme")) for r in records]  # the seed varies by design
    keys = sorted({k for leaf in leaves for k in leaf})
    values = {k: {label_value(leaf.get(k)) for leaf in leaves} for k in keys}
    shared = [f"`{k}={next(iter(v))}`" for k, v in values.items() if len(v) == 1]
    varying = [f"- `{k}`: {', '.join(sorted(v))}" for k, v in values.items() if len(v) > 1]

    def distinct(*path: str) -> str:
        """The values recorded at `path`, each with its count of runs where they differ (a result whose runs
        spanned sessions on different machines says which ran how many)."""
        found: Counter[str] = Counter()
        for record in records:
            value: Any = record
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:  # a GLUE run's record: no pretraining data or budget of its own
                continue
            found[label_value(value) if not isinstance(value, dict) else
                  ", ".join(f"{k} {label_value(v)}" for k, v in value.items())] += 1  # fmt: skip
        if len(found) <= 1:
            return next(iter(found), "not recorded")
        return "; ".join(f"{value} ({count} {'run' if count == 1 else 'runs'})" for value, count in found.items())

    started = sorted(r["started_at"] for r in records if "started_at" in r)
    lines = [
        "# Setting", "",
        f"Written by `sharebench collect` from the {len(records)} completed runs' records (run.json).", "",
        "## What the runs vary", "", *(varying or ["- nothing but the seed"]), "",
        f"Seeds: {', '.join(sorted({label_value(r.get('seed')) for r in records}))}.", "",
        "## What every run shares", "", ", ".join(shared), "",
        "## Data and budget", "",
        f"- tokens in the splits (train, validation): {distinct('tokens')}",
        f"- vocabulary size: {distinct('vocab_size')}",
        f"- training steps: {distinct('metrics', 'steps')}",
        "- tokens seen per run: " + "; ".join(
            f"{c.label} {c.compute('tokens_seen'):,.0f}" for c in configurations if c.compute("tokens_seen")),
        "",
        "## Machine and code", "",
        f"- hardware: {distinct('hardware')}",
        f"- packages: {distinct('packages')}",
        f"- code: {distinct('git')}",
        f"- started between {started[0]} and {started[-1]}" if started else "- start times not recorded",
        f"- {run_time(configurations)}",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_time(configurations: Sequence[Configuration]) -> str:
    """The runs' own wall times added up (process start and sweep overhead aside)."""
    every = [r for c in configurations for r in c.records + c.failed + c.grid_runs]
    seconds = [r["wall_time_s"] for r in every if "wall_time_s" in r]
    runs = len(every)
    return f"Run time: {runs} runs, their wall times adding up to {sum(seconds) / 60:.1f} min."


def tables(configurations: Sequence[Configuration], ladders: dict[str | None, tuple[Ladder, LadderResult]],
           iso: bool = False, margin: float | None = None) -> dict[str, Table]:  # fmt: skip
    """The tables the runs give: `table` (pretraining and zero-shot runs; `table-<arch>` per architecture, and
    `table-<arch>-<size>` per size of a ladder, where runs of several sit together), `scaling` (each of `ladders`,
    `ladders_of` the runs), `lr_search` and `glue` (GLUE runs), where there are."""
    groups = by_model(pretraining(configurations))
    made: dict[str, Table | None] = {
        "table" if len(groups) == 1 else f"table-{key}": table_rows(group, iso, margin) for key, group in groups.items()
    }
    for arch, found in ladders.items():
        name = "scaling" if len(ladders) == 1 else f"scaling-{arch}"
        made |= {name: ladder_table(*found), f"{name}-by_scheme": ladder_by_scheme(*found)}
    made["lr_search"] = lr_search_table(pretraining(configurations))
    made["glue"] = glue_table_rows(configurations, margin)
    return {name: table for name, table in made.items() if table}


def report(configurations: Sequence[Configuration], made: dict[str, Table]) -> str:
    parts = []
    for name, table in made.items():
        if name.startswith("table-"):
            parts += [f"Architecture {name.removeprefix('table-')}:", ""]
        if name.startswith("scaling"):
            what = "Multipliers by scheme and rung" if name.endswith("-by_scheme") else "Effective parameters"
            parts += [f"{what} ({name}):", ""]
        if name == "lr_search":
            parts += ["Learning rates:", ""]
        if name == "glue":
            parts += ["GLUE (validation; score = the task's official metric, or the mean of its two):", ""]
        parts += [markdown(table.header, table.rows), "", *table.notes, ""]
    parts += [
        "Metrics: mean ± half-width of the 95 % confidence interval over seeds; Δ: difference of means ± the"
        " half-width of its 95 % confidence interval (of the per-seed differences where paired). Training FLOPs:"
        " the training steps' analytic FLOPs (compute.training_flops; evaluation excluded).",
        run_time(configurations),
        "The setting, read from the run records: setting.md.",
    ]
    title, claims = paper_claims(configurations)
    if claims:
        parts += ["", f"The paper ({title}) reports:", *(f"- {claim}" for claim in claims)]
    failed = failed_runs(configurations)
    parts += ["", f"Runs not completed (failed, interrupted or still running): {len(failed)}", *failed]
    return "\n".join(parts) + "\n"


def collect(folders: Sequence[str | Path], out: str | Path | None = None, iso: bool = False, plots: bool = True,
            margin: float | None = None) -> str:  # fmt: skip
    """The Markdown report of the runs under `folders`; with `out`, also table.{md,csv,tex} (and glue.{csv,tex}),
    setting.md, the plots and a copy of every run record: runs/<label>/seed=<n>/run.json, a GLUE run's record
    under runs/<label>/seed=<n>/glue/<task>/seed=<m>/. `out` may be one of `folders` (rebuilding from the copies).
    `margin`: the equivalence margin of the main metric (default: the recipe's `experiment.margin`)."""
    if margin is not None and not margin > 0:
        raise ConfigError(f"collect: --margin {margin:g} must be a positive difference of the main metric")
    configurations = find_configurations(folders)
    ladders = ladders_of(configurations)
    made = tables(configurations, ladders, iso, margin)
    text = report(configurations, made)
    if out is not None:
        out = Path(out)
        atomic_write_bytes(out / "table.md", text.encode())
        atomic_write_bytes(out / "setting.md", setting(configurations).encode())
        for name, table in made.items():
            atomic_write_bytes(out / f"{name}.csv", csv_text(table.header, table.rows).encode())
            atomic_write_bytes(out / f"{name}.tex", latex(table.header, table.rows).encode())
        replace_records(configurations, out / "runs")
        if plots:
            from sharebench.report.plots import plot_all, plot_ladder

            groups = by_model(pretraining(configurations))
            for key, group in groups.items():
                plot_all(group, out, "" if len(groups) == 1 else f"-{key}")
            for arch, found in ladders.items():
                plot_ladder(*found, out, "" if len(ladders) == 1 else f"-{arch}")
    return text


def record_destination(configuration: Configuration, record: dict[str, Any]) -> Path:
    folder = Path(configuration.label)
    if record in configuration.grid_runs and configuration.glue_task is None:
        folder = folder / "lr_grid" / f"lr={tuned_rate(record):g}"
    folder = folder / f"seed={pretraining_seed(record)}"
    if configuration.glue_task is not None:
        rate = tuned_rate(record)
        folder = folder / "glue" / configuration.glue_task / ("" if rate is None else f"lr={rate:g}")
        folder = folder / f"seed={record.get('seed')}"
    return folder / RECORD_NAME


def replace_records(configurations: Sequence[Configuration], target: Path) -> None:
    """Copy every record (and its loss log) under `target`, replacing what was there only once all are copied."""
    staging = target.parent / f"{STAGING}new"
    shutil.rmtree(staging, ignore_errors=True)
    for configuration in configurations:
        for record in configuration.records + configuration.failed + configuration.grid_runs:
            source = Path(record["_path"]).parent
            destination = staging / record_destination(configuration, record)
            atomic_write_json(destination, {k: v for k, v in record.items() if k != "_path"})
            for log in (source / "logs" / "metrics.csv", source / "metrics.csv"):
                if log.is_file():
                    shutil.copyfile(log, destination.parent / "metrics.csv")
                    break
    old = target.parent / f"{STAGING}old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
