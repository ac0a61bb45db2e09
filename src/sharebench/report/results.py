"""A folder of run records as configurations: what identifies a configuration, its runs' metrics, and the
metrics of its runs by seed, and which configurations compare fairly (`sharebench.report.stats` has the statistics).
`sharebench.report.collect` makes tables of them, `sharebench.report.plots` plots.

A configuration is identified by what its runs computed, not by the strings typed or the folders they sit in:
the within-layer and cross-layer schemes with the ratios they used, and every resolved config value except the
seed and where the run lives (so `ratio=1` and `ratio=1.0` are one configuration). Runs that did not complete
(failed, interrupted, still running) are kept with their configuration, never dropped.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharebench.errors import ConfigError
from sharebench.lock import RunLock
from sharebench.paths import folder_name, naming_rank
from sharebench.report.stats import mean_ci
from sharebench.schema import (
    RECORD_NAME,
    STALE,
    named_schemes,
    normalized,
    read_record,
    record_leaves,
    stated_keys,
    under,
)
from sharebench.tuning import LR_KEY, Choice, best_mean, choose, mean_of, metric_of

__all__ = ["mean_ci"]  # plots take it from here with the configurations

# Run-level metrics that are not a quality measure of the model.
NOT_METRICS = {"steps", "epochs"}
# The metric that verdicts and plots use, the first that every configuration's runs have: the loss over the whole
# test split, which no selection reads (runs before the test split: over the whole validation split, and before
# that over its sampled batches), a GLUE score or a correlation.
MAIN_METRICS = (("test_loss_full", "lower"), ("val_loss_full", "lower"), ("val_loss", "lower"), ("score", "higher"),
                ("spearman", "higher"))  # fmt: skip
# Metrics that get a Δ column beside the main metric's where the runs have them.
COMPARED_TOO = ("train_loss", "val_rise")
LABEL_NAMES = {"arch.name": "arch"}  # as a user types it

# experiment.<this> = true: a configuration `board add --accept-code` joined to a board, trained by other code.
ADDED_WITH_OTHER_CODE = "added_with_other_code"
STAGING = ".runs-"  # collect --out builds the new copy of the records beside the old one, then swaps them


def scheme_of(record: dict[str, Any]) -> dict[str, Any]:
    """The schemes a table names a run by (`schema.named_schemes`)."""
    return named_schemes(record.get("sharing") or {})  # every run records it before it can fail


def description(record: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's configuration (see the module's docstring); a GLUE run adds its task. A run of a
    learning-rate search is its configuration's whatever its rate (the search chooses among them)."""
    # Of the keys that change a result, the seed repeats a configuration, and the record's effective scheme names
    # and ratios (scheme_of) replace the keys that choose them: a ratio left to its default is recorded as used.
    searched = tuned_rate(record) is not None
    config = {key: value for key, value in record_leaves(record, kept=("result",)).items()
              if not (searched and key == LR_KEY)}  # fmt: skip
    described = {**{key: normalized(value) for key, value in scheme_of(record).items()}, **config}
    if "task" in record:
        described["glue_task"] = record["task"]
    return described


def tuned_rate(record: dict[str, Any]) -> float | None:
    """The learning rate of a run of a learning-rate search (a pretraining run with `lr_grid.factors` set, a GLUE
    run with `glue.lrs`), else None."""
    config = record.get("config") or {}
    if "task" in record:
        return float(record["recipe"]["lr"]) if (config.get("glue") or {}).get("lrs") is not None else None
    if (config.get("lr_grid") or {}).get("factors") is None:
        return None
    return float(config["optim"]["lr"])


@dataclass(frozen=True)
class LrSearch:
    """A configuration's learning-rate search as its records show it: the mean metric of the seeds that ran the grid
    at each rate tried, each seed's, and the rate chosen (`sharebench.tuning.choose`, as the sweeper chose it)."""

    metric: str
    results: dict[float, float]  # each rate's mean over the searching seeds (lr_grid.seeds)
    choice: Choice
    complete: bool  # every factor of the grid tried (a sweep still running, or stopped, has tried fewer)
    by_seed: dict[float, dict[Any, float]] = field(default_factory=dict)  # each rate's metric on each searching seed


def label_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, tuple):
        return "[" + ",".join(map(label_value, value)) + "]"
    return str(value)


def run_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """A run's metrics, and two read off its validation curve: `generalization_gap`, the final validation loss
    minus the final train loss (eval mode, with eval_train_loss=true), and `val_rise`, how far the final
    validation loss lies above the curve's lowest point (overfitting, as Yang et al. look for it)."""
    metrics = dict(record.get("metrics") or {})
    history = [h["val_loss"] for h in metrics.get("val_history") or [] if isinstance(h.get("val_loss"), (int, float))]
    final = metrics.get("val_loss")
    if isinstance(final, (int, float)) and history:
        metrics["val_rise"] = final - min(history)
        last = metrics["val_history"][-1]
        if isinstance(last.get("train_loss"), (int, float)):
            metrics["generalization_gap"] = final - last["train_loss"]
    return metrics


@dataclass
class Configuration:
    description: dict[str, Any]
    label: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    # A learning-rate search's runs at the rates not chosen, and the search.
    grid_runs: list[dict[str, Any]] = field(default_factory=list)
    lr_search: LrSearch | None = None
    # A GLUE task's rate of glue.lrs chosen for each pretrained model (by its pretraining seed).
    glue_rates: dict[Any, float] = field(default_factory=dict)

    @property
    def first(self) -> dict[str, Any]:
        return (self.records or self.failed)[0]

    @property
    def arch(self) -> str | None:
        return self.description.get("arch.name")

    @property
    def glue_task(self) -> str | None:
        return self.description.get("glue_task")

    @property
    def sharing(self) -> str:
        """The within-layer scheme and, where there is one, the cross-layer scheme (`partial_qk+cycle`)."""
        name, layers = self.description["sharing"] or "—", self.description["layers"]
        return name if layers in (None, "none") else f"{name}+{layers}"

    @property
    def ratio(self) -> float | None:
        return self.description["ratio"]

    @property
    def layers_ratio(self) -> float | None:
        return self.description["layers.ratio"]

    @property
    def iso_baseline(self) -> bool:
        return bool(self.description.get("iso_baseline"))

    @property
    def other_code(self) -> bool:
        """Joined to a board by `board add --accept-code`: trained by other code than the board's records."""
        return any(((r.get("config") or {}).get("experiment") or {}).get(ADDED_WITH_OTHER_CODE) for r in self.records)

    @property
    def iso_compute(self) -> bool:
        """An iso-parameter twin trained to its shared model's FLOPs, past the recipe's budget (`iso_compute=true`)."""
        return bool(self.description.get("iso_compute"))

    @property
    def budget(self) -> str | None:
        """For a model from a checkpoint (`pretrained`): `before_healing` where it is scored as it is (or as converted),
        `healed_<N>_steps` where pretraining went on for N steps; None for a model trained from scratch."""
        if not self.description.get("pretrained"):
            return None
        if self.first.get("compute"):  # it trained further
            return f"healed_{label_value(self.description.get('trainer.max_steps'))}_steps"
        return "before_healing"

    @property
    def converted(self) -> bool:
        """A checkpoint's model changed by a conversion (`convert.to`) or by PostShare (`postshare_ratio`)."""
        return bool(self.description.get("convert.to")) or self.description.get("postshare_ratio") is not None

    @property
    def unshared(self) -> bool:
        """Separate Q/K/V and no cross-layer sharing: a model an iso-parameter pairing may take as a twin."""
        return self.sharing == "none" or self.iso_baseline

    def metric_values(self, metric: str) -> list[float]:
        return list(self.metric_by_seed(metric).values())

    def metric_by_seed(self, metric: str) -> dict[tuple[Any, Any], float]:
        values = {run_seeds(r): run_metrics(r).get(metric) for r in self.records}
        return {seed: float(v) for seed, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def compute(self, key: str) -> float | None:
        """The mean over runs of `compute.<key>` (tokens_seen, training_flops)."""
        values = [compute_of(r).get(key) for r in self.records]
        return statistics.fmean(values) if values and None not in values else None

    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            for key, value in run_metrics(record).items():
                if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    names.setdefault(key)
        return list(names)

    def unique_parameters(self) -> int | None:
        return (self.first.get("parameters") or {}).get("unique")

    def unshared_parameters(self) -> int | None:
        """Unique parameters of the same model without sharing (recorded by pretraining runs)."""
        return self.first.get("unshared_parameters")

    def values_of(self, *path: str) -> list[float]:
        """The number at `path` in each completed run's record (runs without it left out)."""
        values = []
        for record in self.records:
            value: Any = record
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.append(float(value))
        return values

    def mean_of(self, *path: str) -> float | None:
        values = self.values_of(*path)
        return sum(values) / len(values) if values else None


def compute_of(record: dict[str, Any]) -> dict[str, int | None]:
    """What a pretraining run spent (None where the record cannot tell)."""
    return record.get("compute") or {"tokens_seen": None, "training_flops": None}


def run_seeds(record: dict[str, Any]) -> tuple[Any, Any]:
    """What tells a configuration's runs apart: the run's seed and its config's (a GLUE task run's fine-tuning
    seed and the seed its model was pretrained with)."""
    return record.get("seed"), (record.get("config") or {}).get("seed")


def read_records(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every run record below the folders, each with its `_path`; an unreadable one as a failed run."""
    records = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ConfigError(f"collect: {folder} is not a folder of runs")
        for path in sorted(folder.rglob(RECORD_NAME)):
            if any(part.startswith(STAGING) for part in path.relative_to(folder).parts):
                continue
            try:
                record = read_record(path.parent)
            except (OSError, json.JSONDecodeError, ConfigError) as error:
                record = {"status": "failed", "error": f"unreadable {RECORD_NAME}: {error}"}
            if record.get("status") == "running" and not RunLock.held(path.parent):
                record |= {"status": "interrupted", "error": STALE}  # listed apart from runs still running
            record["_path"] = str(path)
            records.append(record)
    return records


def without_new_keys(descriptions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Descriptions without the config keys that only some records have and that hold one value wherever they
    appear: a key a later version of the suite added (at its default) does not split one configuration in two."""
    keys = {key for described in descriptions for key in described} - {"glue_task"}  # not a config key
    partial = {key for key in keys if not all(key in described for described in descriptions)}
    silent = {key for key in partial if len({repr(d[key]) for d in descriptions if key in d}) == 1}
    return [{k: v for k, v in described.items() if k not in silent} for described in descriptions]


def find_configurations(folders: Sequence[str | Path]) -> list[Configuration]:
    found: dict[str, Configuration] = {}
    records = read_records(folders)
    for record, described in zip(records, without_new_keys([description(r) for r in records]), strict=True):
        configuration = found.setdefault(json.dumps(described, sort_keys=True), Configuration(described))
        if record.get("status") != "completed":
            configuration.failed.append(record)
        elif counted := next((r for r in configuration.records if run_key(r) == run_key(record)), None):
            print(f"collect: {record['_path']} repeats the run of {counted['_path']} (same configuration and seed); "
                  f"counted once", file=sys.stderr)  # the same run copied to a second folder, or run again  # fmt: skip
        else:
            configuration.records.append(record)
    if not found:
        raise ConfigError(f"collect: no {RECORD_NAME} under {', '.join(map(str, folders))}")
    configurations = list(found.values())
    for configuration in configurations:
        settle_learning_rate(configuration)
    assign_labels(configurations)
    return sorted(configurations, key=lambda c: (c.glue_task or "", c.sharing, c.ratio if c.ratio is not None else -1,
                                                 c.layers_ratio or 0, c.iso_baseline, c.label))  # fmt: skip


def run_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What tells a configuration's runs apart: their seeds and, in a learning-rate search, their rate."""
    return (*run_seeds(record), tuned_rate(record))


def settle_learning_rate(configuration: Configuration) -> None:
    """A searched configuration keeps the runs at its chosen rate as its runs, the others as its grid's."""
    if not configuration.records or tuned_rate(configuration.first) is None:
        return
    if configuration.glue_task is not None:
        settle_glue_rates(configuration)
        return
    grid = configuration.first["config"]["lr_grid"]
    metric, plateau = grid["metric"], grid.get("plateau")  # searches made before the plateau rule had none
    by_seed: dict[tuple[Any, Any], dict[float, float]] = {}
    diverged = [record for record in configuration.failed if record.get("status") == "diverged"]
    for record in configuration.records + diverged:  # a rate at which a seed diverged is tried, and never chosen
        value = metric_of(record, metric, plateau)
        if value is not None:
            by_seed.setdefault(run_seeds(record), {})[tuned_rate(record)] = value
    if not by_seed:
        return
    # The searching seeds ran at more than one rate (the others at the chosen one alone).
    searching = [seed for seed, rates in by_seed.items() if len(rates) > 1] or [
        max(by_seed, key=lambda s: len(by_seed[s]))
    ]
    by_rate = {rate: {seed[0]: by_seed[seed][rate] for seed in searching if rate in by_seed[seed]}
               for rate in sorted({rate for seed in searching for rate in by_seed[seed]})}  # fmt: skip
    results = {rate: mean_of(values) for rate, values in by_rate.items() if len(values) == len(searching)}
    choice = choose(results)
    configuration.lr_search = LrSearch(metric, results, choice, len(results) >= len(grid["factors"]), by_rate)
    configuration.grid_runs = [r for r in configuration.records if tuned_rate(r) != choice.rate]
    configuration.records = [r for r in configuration.records if tuned_rate(r) == choice.rate]


def settle_glue_rates(configuration: Configuration) -> None:
    """A GLUE task's runs at the rate of glue.lrs with the best mean validation score, per pretrained model (BERT's
    protocol; `sharebench.tuning.best_mean`, as the fine-tuning chose it)."""
    by_model: dict[Any, dict[float, list[float]]] = {}
    for record in configuration.records:
        scores = by_model.setdefault(run_seeds(record)[1], {}).setdefault(tuned_rate(record), [])
        scores.append(float(record["metrics"]["score"]))
    configuration.glue_rates = {model: best_mean(by_rate) for model, by_rate in by_model.items()}
    chosen = [r for r in configuration.records if tuned_rate(r) == configuration.glue_rates[run_seeds(r)[1]]]
    configuration.grid_runs = [r for r in configuration.records if r not in chosen]
    configuration.records = chosen


def assign_labels(configurations: Sequence[Configuration]) -> None:
    """Label each configuration by the values that tell it apart from the others (the GLUE task aside): keys in
    paths.NAMING_ORDER, then by name, each only where the keys before it leave configurations undistinguished (in
    a sweep over schemes, `sharing=shared_qkv` rather than also its ratio; `sharing=none` without a ratio even
    when other schemes' ratios vary)."""
    absent = object()
    bases = [{k: v for k, v in c.description.items() if k != "glue_task"} for c in configurations]
    keys = sorted({k for base in bases for k in base}, key=lambda k: (naming_rank(LABEL_NAMES.get(k, k)), k))
    chosen: list[tuple[str, set]] = []  # a key, and the groups (values of the keys before it) in which it varies

    def group(base: dict[str, Any], before: Sequence[tuple[str, set]]) -> tuple:
        return tuple(repr(base.get(k, absent)) for k, _ in before)

    for key in keys:
        values: dict[tuple, set] = {}
        for base in bases:
            values.setdefault(group(base, chosen), set()).add(repr(base.get(key, absent)))
        varying = {g for g, v in values.items() if len(v) > 1}
        if varying:
            chosen.append((key, varying))
    for configuration, base in zip(configurations, bases, strict=True):
        parts = [
            f"{LABEL_NAMES.get(key, key)}={label_value(base[key])}"
            for i, (key, varying) in enumerate(chosen)
            if key in base and group(base, chosen[:i]) in varying
        ]
        configuration.label = folder_name(",".join(parts) or f"sharing={label_value(base['sharing'])}")


def main_metric(configurations: Sequence[Configuration]) -> tuple[str, str] | None:
    measured = [set(c.metrics()) for c in configurations if c.records]
    return next(((m, order) for m, order in MAIN_METRICS if measured and all(m in ms for ms in measured)), None)


def shares_data_order(a: Configuration, b: Configuration) -> bool:
    """Whether two configurations' runs of one seed saw the same batches in the same order and were evaluated on
    the same batches: then their difference is taken seed by seed."""

    def data_keys(configuration: Configuration) -> dict[str, Any]:
        ordering = stated_keys(configuration.first)["data_order"]
        return {k: v for k, v in record_leaves(configuration.first).items() if under(ordering, k)}

    return data_keys(a) == data_keys(b)


def reference(configurations: Sequence[Configuration]) -> Configuration | None:
    """What the Δ columns compare with: a checkpoint's model not converted (conversions are judged against the
    model they were made from), else the unshared configuration (sharing=none, no cross-layer sharing), else the
    lowest share ratio of the table's scheme (yang24's ratio 0), else the first row."""
    candidates = [c for c in configurations if c.records and not c.iso_baseline]
    unconverted = [c for c in candidates if c.budget and not c.converted]  # a checkpoint as it is
    if unconverted:
        return unconverted[0]
    unshared = [c for c in candidates if c.sharing == "none"]
    if unshared:
        return unshared[0]
    return min(candidates, key=lambda c: c.ratio if c.ratio is not None else math.inf, default=None)


def iso_baseline(configuration: Configuration, configurations: Sequence[Configuration]) -> Configuration | None:
    """A shared configuration's iso-parameter twin: its own iso baseline (`iso_baseline=true`) if it was run,
    else the truly unshared configuration (`sharing=none`, no cross-layer sharing, not another configuration's
    twin) with the closest unique count, which tables name as such."""
    unique = configuration.unique_parameters()
    if configuration.unshared or unique is None:
        return None
    twin = {**configuration.description, "iso_baseline": True}
    own = [c for c in configurations if c.description == twin and c.records]
    if own:
        return own[0]
    tokens = configuration.compute("tokens_seen")
    candidates = [c for c in configurations if c.sharing == "none" and not c.iso_baseline and c.records
                  and c.unique_parameters() and c.compute("tokens_seen") == tokens]  # fmt: skip
    return min(candidates, key=lambda c: abs(c.unique_parameters() - unique)) if candidates else None


# How close an unshared model's unique parameters and training FLOPs must come to a shared model's for it to be
# that model's iso-compute twin (FLOPs are matched in whole steps).
ISO_COMPUTE_TOLERANCE = 0.02


def iso_compute_twin(configuration: Configuration, configurations: Sequence[Configuration]) -> Configuration | None:
    """An unshared configuration with (within ISO_COMPUTE_TOLERANCE) the unique parameters and the training FLOPs
    of a shared one, trained on more tokens to spend them: its twin at equal compute (`iso_compute=true`)."""
    unique, flops = configuration.unique_parameters(), configuration.compute("training_flops")
    tokens = configuration.compute("tokens_seen")
    if configuration.unshared or not unique or not flops or not tokens:
        return None

    def close(a: float | None, b: float) -> bool:
        return a is not None and abs(a - b) <= ISO_COMPUTE_TOLERANCE * b

    candidates = [
        c
        for c in configurations
        if c.unshared and c.records and close(c.unique_parameters(), unique)
        and close(c.compute("training_flops"), flops) and (c.compute("tokens_seen") or 0) > tokens
    ]  # fmt: skip
    own = [c for c in candidates if c.iso_baseline and scheme_of(c.first) == scheme_of(configuration.first)]
    return (own or candidates or [None])[0]


FP32 = "32-true"


def precision_twin(configuration: Configuration, configurations: Sequence[Configuration]) -> Configuration | None:
    """For a configuration trained in another precision (bf16-mixed), the same configuration trained in fp32: what
    the precision alone changed (its runs share the seeds' data order, so the difference is taken seed by seed)."""
    precision = configuration.description.get("trainer.precision")
    if precision in (None, FP32, normalized(32), "32"):
        return None
    wanted = {**configuration.description, "trainer.precision": FP32}
    return next((c for c in configurations if c.description == wanted and c.records), None)


def by_arch(configurations: Sequence[Configuration]) -> dict[str | None, list[Configuration]]:
    """Configurations per architecture: each compares only with its own reference and twins (the leaderboard
    runs a masked-LM encoder and a causal decoder side by side)."""
    groups: dict[str | None, list[Configuration]] = {}
    for configuration in configurations:
        groups.setdefault(configuration.arch, []).append(configuration)
    return groups


def by_model(configurations: Sequence[Configuration]) -> dict[str | None, list[Configuration]]:
    """Configurations per architecture, and per size where an architecture ran at several (a scaling ladder), and
    per healing budget where checkpoints were scored as they are and healed (`Configuration.budget`): each group
    compares with its own reference and twins."""
    groups: dict[str | None, list[Configuration]] = {}
    for arch, group in by_arch(configurations).items():
        sizes = {c.description.get("size.name") for c in group}
        budgets = {c.budget for c in group}
        for configuration in group:
            key = arch if len(sizes) == 1 else f"{arch}-{configuration.description.get('size.name')}"
            key = key if len(budgets) == 1 else f"{key}-{configuration.budget}"
            groups.setdefault(key, []).append(configuration)
    return groups


def pretraining(configurations: Sequence[Configuration]) -> list[Configuration]:
    return [c for c in configurations if c.glue_task is None]
