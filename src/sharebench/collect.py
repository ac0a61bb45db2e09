"""From a folder of runs to comparison tables and plots: `sharebench collect <folder>`.

A configuration is identified by what its runs computed, not by the strings typed or the folders they sit in:
the within-layer and cross-layer schemes with the ratios they used, and every resolved config value except the
seed and where the run lives (so `ratio=1` and `ratio=1.0` are one configuration). Each configuration gives one
row: how many seeds completed and how many did not (failed, interrupted, still running), the mean and 95 %
confidence interval (Student's t over seeds) of every metric, unique parameters and their ratio to the same model
without sharing, and tokens/s. A row's label names only what varies in the table (`sharing=shared_qkv`,
`ratio=0.9`). GLUE fine-tuning runs give a second table: one row per pretrained configuration, a column per task
and the GLUE score. Runs that did not complete are listed with their status and error, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharebench.errors import ConfigError
from sharebench.paths import atomic_write_bytes, atomic_write_json, folder_name
from sharebench.record import RECORD_NAME

# Run-level metrics that are not a quality measure of the model.
NOT_METRICS = {"steps", "epochs"}
# The metric that plots and iso-parameter pairs use: a loss (lower is better), a GLUE score or a correlation.
MAIN_METRICS = (("val_loss", "lower"), ("score", "higher"), ("spearman", "higher"))
# Metrics that get a Δ column beside the main metric's where the runs have them.
COMPARED_TOO = ("train_loss", "val_rise")
# Config keys that say where a run lives or how it prints, or that the scheme keys stand for (the record's
# effective scheme names and ratios replace them: a ratio left to its default is recorded as the value used).
NOT_COMPARED = {"seed", "output_root", "data_root", "cache_dir", "trainer.enable_progress_bar",
                "trainer.enable_model_summary", "ratio", "sharing._target_", "sharing._partial_", "layers._target_",
                "layers.ratio"}  # fmt: skip
NOT_COMPARED_PREFIXES = ("experiment.",)  # the recipe's notes: its title, the paper's claims
LABEL_FIRST = ("sharing", "ratio", "layers", "layers.ratio", "iso_baseline")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def normalized(value: Any) -> Any:
    """A config value in a form where equal values compare equal (1 and 1.0, a list and a tuple)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(normalized(v) for v in value)
    return str(value)


def scheme_of(record: dict[str, Any]) -> dict[str, Any]:
    """The schemes a run used, or for an iso-parameter baseline the schemes of the configuration it matches."""
    sharing = record.get("sharing") or configured_sharing(record.get("config"))
    scheme = sharing.get("iso_baseline_of") or sharing
    layers = scheme.get("layers") or {}
    return {"sharing": scheme.get("name"), "ratio": scheme.get("ratio"), "layers": layers.get("name", "none"),
            "layers.ratio": layers.get("ratio")}  # fmt: skip


def configured_sharing(config: dict[str, Any] | None) -> dict[str, Any]:
    """The sharing a run's config asks for: for a run that failed before it recorded the sharing it used."""
    from omegaconf import OmegaConf

    from sharebench.config import run_sharing, validate

    try:
        cfg = OmegaConf.create(config)
        return run_sharing(cfg, validate(cfg))
    except Exception:  # a config that does not validate (the reason the run failed) names no scheme
        return {}


def description(record: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's configuration (see the module's docstring); a GLUE run adds its task."""
    config = {
        key: value
        for key, value in flatten(record.get("config") or {}).items()
        if key not in NOT_COMPARED and not key.startswith(NOT_COMPARED_PREFIXES)
    }
    described = {**scheme_of(record), **config}
    if "task" in record:
        described["glue_task"] = record["task"]
    return {key: normalized(value) for key, value in described.items()}


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

    @property
    def first(self) -> dict[str, Any]:
        return (self.records or self.failed)[0]

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
    def unshared(self) -> bool:
        """Separate Q/K/V and no cross-layer sharing: a model an iso-parameter pairing may take as a twin."""
        return self.sharing == "none" or self.iso_baseline

    def metric_values(self, metric: str) -> list[float]:
        values = [run_metrics(r).get(metric) for r in self.records]
        return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            for key, value in run_metrics(record).items():
                if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    names.setdefault(key)
        return list(names)

    def unique_parameters(self) -> int | None:
        return (self.first.get("parameters") or {}).get("unique")

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

    def inference_speed(self) -> list[float]:
        """Inference tokens/s per run: cached decoding at batch 1 for decoders, encoding at batch 32 for encoders."""
        speeds = [self.values_of("inference", "tokens_per_second", key) for key in ("batch_1", "batch_32")]
        return speeds[0] or speeds[1]


def t_critical(degrees_of_freedom: int, confidence: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The mean and the half-width of its confidence interval (Student's t; None with fewer than 2 values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, t_critical(len(values) - 1, confidence) * math.sqrt(variance / len(values))


def difference_ci(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
                  ) -> tuple[float | None, float | None]:  # fmt: skip
    """The difference of two means and the half-width of its confidence interval (Welch's t; None with fewer
    than 2 values on either side)."""
    if not values or not reference:
        return None, None
    (mean, _), (reference_mean, _) = mean_ci(values), mean_ci(reference)
    difference = mean - reference_mean
    if len(values) < 2 or len(reference) < 2:
        return difference, None
    variances = [sum((v - m) ** 2 for v in vs) / (len(vs) - 1) / len(vs)
                 for vs, m in ((values, mean), (reference, reference_mean))]  # fmt: skip
    error = math.sqrt(sum(variances))
    if error == 0:
        return difference, 0.0
    freedom = error**4 / sum(v**2 / (len(vs) - 1) for v, vs in zip(variances, (values, reference), strict=True))
    return difference, t_critical(freedom, confidence) * error


def find_configurations(folders: Sequence[str | Path]) -> list[Configuration]:
    found: dict[str, Configuration] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ConfigError(f"collect: {folder} is not a folder of runs")
        for path in sorted(folder.rglob(RECORD_NAME)):
            if any(part.startswith(STAGING) for part in path.relative_to(folder).parts):
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                record = {"status": "failed", "error": f"unreadable {RECORD_NAME}: {error}"}
            record["_path"] = str(path)
            described = description(record)
            key = json.dumps(described, sort_keys=True)
            configuration = found.setdefault(key, Configuration(described))
            (configuration.records if record.get("status") == "completed" else configuration.failed).append(record)
    if not found:
        raise ConfigError(f"collect: no {RECORD_NAME} under {', '.join(map(str, folders))}")
    configurations = list(found.values())
    assign_labels(configurations)
    return sorted(configurations, key=lambda c: (c.glue_task or "", c.sharing, c.ratio if c.ratio is not None else -1,
                                                 c.layers_ratio or 0, c.iso_baseline, c.label))  # fmt: skip


def assign_labels(configurations: Sequence[Configuration]) -> None:
    """Label each configuration by the values that tell it apart from the others (the GLUE task aside): keys in
    LABEL_FIRST order, then by name, each only where the keys before it leave configurations undistinguished (in
    a sweep over schemes, `sharing=shared_qkv` rather than also its ratio; `sharing=none` without a ratio even
    when other schemes' ratios vary)."""
    absent = object()
    bases = [{k: v for k, v in c.description.items() if k != "glue_task"} for c in configurations]
    keys = sorted({k for base in bases for k in base}, key=lambda k: (k not in LABEL_FIRST, LABEL_FIRST.index(k)
                                                                      if k in LABEL_FIRST else 0, k))  # fmt: skip
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
            f"{key}={label_value(base[key])}"
            for i, (key, varying) in enumerate(chosen)
            if key in base and group(base, chosen[:i]) in varying
        ]
        configuration.label = folder_name(",".join(parts) or f"sharing={label_value(base['sharing'])}")


def unshared_unique_parameters(record: dict[str, Any]) -> int | None:
    """Unique parameters of the same model with separate Q/K/V and no cross-layer sharing (meta device)."""
    config, vocab_size = record.get("config"), record.get("vocab_size")
    if not config or not vocab_size or "size" not in config:
        return None
    import torch
    from omegaconf import OmegaConf

    from sharebench.config import model_config
    from sharebench.model import LanguageModel
    from sharebench.sharing.none import Separate

    cfg = OmegaConf.create(config)
    with torch.device("meta"):
        model = LanguageModel(model_config(cfg, vocab_size), Separate)
    return model.parameter_counts().unique


def main_metric(configurations: Sequence[Configuration]) -> tuple[str, str] | None:
    available = {m for c in configurations for m in c.metrics()}
    return next(((m, order) for m, order in MAIN_METRICS if m in available), None)


def reference(configurations: Sequence[Configuration]) -> Configuration | None:
    """What the Δ columns compare with: the unshared configuration (sharing=none, no cross-layer sharing), else
    the lowest share ratio of the table's scheme (yang24's ratio 0), else the first row."""
    candidates = [c for c in configurations if c.records and not c.iso_baseline]
    unshared = [c for c in candidates if c.sharing == "none"]
    if unshared:
        return unshared[0]
    return min(candidates, key=lambda c: c.ratio if c.ratio is not None else math.inf, default=None)


def _difference_cell(values: Sequence[float], reference_values: Sequence[float]) -> str:
    difference, half = difference_ci(values, reference_values)
    if difference is None:
        return "—"
    return f"{difference:+.4f} ± {half:.4f}" if half is not None else f"{difference:+.4f}"


def iso_baseline(configuration: Configuration, configurations: Sequence[Configuration]) -> Configuration | None:
    """A shared configuration's iso-parameter twin: its own iso baseline (`iso_baseline=true`) if it was run,
    else the unshared configuration (separate Q/K/V, no cross-layer sharing) with the closest unique count."""
    unique = configuration.unique_parameters()
    if configuration.unshared or unique is None:
        return None
    twin = {**configuration.description, "iso_baseline": True}
    own = [c for c in configurations if c.description == twin and c.records]
    if own:
        return own[0]
    candidates = [c for c in configurations if c.unshared and c.records and c.unique_parameters()]
    return min(candidates, key=lambda c: abs(c.unique_parameters() - unique)) if candidates else None


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean_ci_cell(values: Sequence[float], spec: str = ".4f") -> str:
    mean, half = mean_ci(values)
    if mean is None:
        return "—"
    return f"{mean:{spec}} ± {half:{spec}}" if half is not None else f"{mean:{spec}}"


def scheme_cell(configuration: Configuration) -> str:
    return f"none (iso twin of {configuration.sharing})" if configuration.iso_baseline else configuration.sharing


def pretraining(configurations: Sequence[Configuration]) -> list[Configuration]:
    return [c for c in configurations if c.glue_task is None]


def _mebibytes(size: float | None) -> float | None:
    return size / 2**20 if size is not None else None


def table_rows(configurations: Sequence[Configuration], iso: bool = False) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per configuration that is not a GLUE fine-tuning run."""
    configurations = pretraining(configurations)
    metrics: dict[str, None] = {}
    for configuration in configurations:
        metrics.update(dict.fromkeys(configuration.metrics()))
    header = ["configuration", "sharing", "ratio", "layers ratio", "seeds", "not completed", "unique params",
              "vs unshared", "tokens/s", "training MiB", "KV bytes/token", "inference tokens/s", "wall s/run",
              *metrics]  # fmt: skip
    main = main_metric(configurations)
    base = reference(configurations) if main else None
    compared = [main[0]] + [m for m in COMPARED_TOO if m in metrics and m != main[0]] if base else []
    header += [f"Δ {metric} vs {base.label}" for metric in compared]
    if iso and main:
        header += ["iso-param twin", f"twin {main[0]}", f"Δ {main[0]} vs twin"]
    rows = []
    for configuration in configurations:
        unique = configuration.unique_parameters()
        unshared = unshared_unique_parameters(configuration.first)
        row = [
            configuration.label,
            scheme_cell(configuration),
            _format(configuration.ratio, "g"),
            _format(configuration.layers_ratio, ".4g"),
            str(len(configuration.records)),
            str(len(configuration.failed)),
            _format(unique, ","),
            _format(unique / unshared if unique and unshared else None, ".4f"),
            _format(configuration.mean_of("speed", "tokens_per_second"), ",.0f"),
            _format(_mebibytes(configuration.mean_of("memory", "training_bytes")), ",.1f"),
            _format(configuration.mean_of("inference", "kv_cache_bytes_per_token"), ",.0f"),
            _mean_ci_cell(configuration.inference_speed(), ",.0f"),
            _format(configuration.mean_of("wall_time_s"), ",.0f"),
            *(_mean_ci_cell(configuration.metric_values(m)) for m in metrics),
        ]
        row += [
            "reference" if configuration is base else _difference_cell(configuration.metric_values(m),
                                                                        base.metric_values(m))
            for m in compared
        ]  # fmt: skip
        if iso and main:
            twin = iso_baseline(configuration, configurations)
            row += [
                f"{twin.label} ({twin.unique_parameters():,})" if twin else "—",
                _mean_ci_cell(twin.metric_values(main[0])) if twin else "—",
                _difference_cell(configuration.metric_values(main[0]), twin.metric_values(main[0])) if twin else "—",
            ]
        rows.append(row)
    return header, rows


def pretraining_seed(record: dict[str, Any]) -> Any:
    return (record.get("config") or {}).get("seed", record.get("seed"))


def glue_scores(per_task: dict[str, Configuration], tasks: Sequence[str]) -> list[float]:
    """One GLUE score per pretraining seed that has every task: the mean over tasks of the task's score (averaged
    over fine-tuning seeds)."""
    scores: dict[Any, dict[str, list[float]]] = {}
    for task, configuration in per_task.items():
        for record in configuration.records:
            score = record.get("metrics", {}).get("score")
            if isinstance(score, (int, float)):
                scores.setdefault(pretraining_seed(record), {}).setdefault(task, []).append(float(score))
    return [sum(sum(v) / len(v) for v in by_task.values()) / len(tasks)
            for by_task in scores.values() if len(by_task) == len(tasks)]  # fmt: skip


def glue_table_rows(configurations: Sequence[Configuration]) -> tuple[list[str], list[list[str]]] | None:
    """One row per pretrained configuration: each task's score (its official metric, or the mean of two) and
    the GLUE score, with 95 % CIs over pretraining seeds, and its difference to the reference configuration."""
    glue_runs = [c for c in configurations if c.glue_task is not None]
    if not glue_runs:
        return None
    tasks = list(dict.fromkeys(c.glue_task for c in glue_runs))
    by_label: dict[str, dict[str, Configuration]] = {}
    for configuration in glue_runs:
        by_label.setdefault(configuration.label, {})[configuration.glue_task] = configuration
    scores = {label: glue_scores(per_task, tasks) for label, per_task in by_label.items()}
    base = reference([next(iter(per_task.values())) for per_task in by_label.values()])
    header = ["configuration", "sharing", "unique params (encoder)", "pretraining seeds", *tasks, "GLUE score"]
    header += [f"Δ GLUE vs {base.label}"] if base else []
    rows = []
    for label, per_task in by_label.items():
        first = next(iter(per_task.values()))
        encoder = (first.first.get("parameters") or {}).get("encoder") or {}
        rows.append([
            label, scheme_cell(first), _format(encoder.get("unique"), ","), str(len(scores[label])),
            *(_mean_ci_cell(per_task[t].metric_values("score")) if t in per_task else "—" for t in tasks),
            _mean_ci_cell(scores[label]),
            *([_difference_cell(scores[label], scores[base.label])] if base else []),
        ])  # fmt: skip
    return header, rows


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


def run_time(configurations: Sequence[Configuration]) -> str:
    """The runs' own wall times added up (process start and sweep overhead aside)."""
    seconds = [r["wall_time_s"] for c in configurations for r in c.records + c.failed if "wall_time_s" in r]
    runs = sum(len(c.records) + len(c.failed) for c in configurations)
    return f"Run time: {runs} runs, their wall times adding up to {sum(seconds) / 60:.1f} min."


Table = tuple[list[str], list[list[str]]]


def tables(configurations: Sequence[Configuration], iso: bool = False) -> dict[str, Table]:
    """The tables the runs give: `table` (pretraining and zero-shot runs) and `glue` (GLUE runs), where there are."""
    made = {"table": table_rows(configurations, iso) if pretraining(configurations) else None,
            "glue": glue_table_rows(configurations)}  # fmt: skip
    return {name: table for name, table in made.items() if table}


def report(configurations: Sequence[Configuration], made: dict[str, Table]) -> str:
    parts = []
    if "table" in made:
        parts += [markdown(*made["table"]), ""]
    if "glue" in made:
        parts += ["GLUE (validation; score = the task's official metric, or the mean of its two):", "",
                  markdown(*made["glue"]), ""]  # fmt: skip
    parts += [
        "Metrics: mean ± half-width of the 95 % confidence interval over seeds; Δ: difference of means ± the"
        " half-width of its 95 % confidence interval (Welch's t).",
        run_time(configurations),
    ]
    title, claims = paper_claims(configurations)
    if claims:
        parts += ["", f"The paper ({title}) reports:", *(f"- {claim}" for claim in claims)]
    failed = failed_runs(configurations)
    parts += ["", f"Runs not completed (failed, interrupted or still running): {len(failed)}", *failed]
    return "\n".join(parts) + "\n"


STAGING = ".runs-"  # collect --out builds the new copy of the records beside the old one, then swaps them


def collect(folders: Sequence[str | Path], out: str | Path | None = None, iso: bool = False, plots: bool = True) -> str:
    """The Markdown report of the runs under `folders`; with `out`, also table.{md,csv,tex} (and glue.{csv,tex}),
    the plots and a copy of every run record: runs/<label>/seed=<n>/run.json, a GLUE run's record under
    runs/<label>/seed=<n>/glue/<task>/seed=<m>/. `out` may be one of `folders` (rebuilding from the copies)."""
    configurations = find_configurations(folders)
    made = tables(configurations, iso)
    text = report(configurations, made)
    if out is not None:
        out = Path(out)
        atomic_write_bytes(out / "table.md", text.encode())
        for name, table in made.items():
            atomic_write_bytes(out / f"{name}.csv", csv_text(*table).encode())
            atomic_write_bytes(out / f"{name}.tex", latex(*table).encode())
        replace_records(configurations, out / "runs")
        if plots:
            from sharebench.plots import plot_all

            plot_all(pretraining(configurations), out)
    return text


def record_destination(configuration: Configuration, record: dict[str, Any]) -> Path:
    folder = Path(configuration.label) / f"seed={pretraining_seed(record)}"
    if configuration.glue_task is not None:
        folder = folder / "glue" / configuration.glue_task / f"seed={record.get('seed')}"
    return folder / RECORD_NAME


def replace_records(configurations: Sequence[Configuration], target: Path) -> None:
    """Copy every record (and its loss log) under `target`, replacing what was there only once all are copied."""
    staging = target.parent / f"{STAGING}new"
    shutil.rmtree(staging, ignore_errors=True)
    for configuration in configurations:
        for record in configuration.records + configuration.failed:
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
