"""From a folder of runs to comparison tables and plots: `sharebench collect <folder>`.

The runs are grouped into configurations (`sharebench.results`). Each configuration gives one row: how many seeds
completed and how many did not (failed, interrupted, still running), the mean and 95 % confidence interval
(Student's t over seeds) of every metric, unique parameters and their ratio to the same model without sharing, and
tokens/s. A row's label names only what varies in the table (`sharing=shared_qkv`, `ratio=0.9`). GLUE fine-tuning
runs give a second table: one row per pretrained configuration, a column per task and the GLUE score. Runs that did
not complete are listed with their status and error, never dropped.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharebench.paths import atomic_write_bytes, atomic_write_json
from sharebench.record import RECORD_NAME
from sharebench.results import (
    COMPARED_TOO,
    STAGING,
    Configuration,
    by_arch,
    difference_ci,
    find_configurations,
    iso_baseline,
    main_metric,
    mean_ci,
    pretraining,
    reference,
    unshared_unique_parameters,
)


def _difference_cell(values: Sequence[float], reference_values: Sequence[float]) -> str:
    difference, half = difference_ci(values, reference_values)
    if difference is None:
        return "—"
    return f"{difference:+.4f} ± {half:.4f}" if half is not None else f"{difference:+.4f}"


def verdict(values: Sequence[float], reference_values: Sequence[float], order: str) -> str:
    """Whether a configuration's main metric is better or worse than the reference's at 95 % (Welch), or neither."""
    difference, half = difference_ci(values, reference_values)
    if difference is None or half is None:
        return "—"
    if abs(difference) <= half:
        return "no difference"
    return "better" if (difference < 0) == (order == "lower") else "worse"


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


def table_rows(configurations: Sequence[Configuration], iso: bool = False) -> tuple[list[str], list[list[str]]]:
    """The main table: one row per configuration that is not a GLUE fine-tuning run. Its shared configurations
    are paired with their iso-parameter twins where `iso` asks or where twins (`iso_baseline=true`) were run."""
    configurations = pretraining(configurations)
    iso = iso or any(c.iso_baseline and c.records for c in configurations)
    metrics: dict[str, None] = {}
    for configuration in configurations:
        metrics.update(dict.fromkeys(configuration.metrics()))
    header = ["configuration", "sharing", "ratio", "layers ratio", "seeds", "not completed", "unique params",
              "vs unshared", "checkpoint MiB", "tokens/s", "training MiB", "KV bytes/token", "inference tokens/s",
              "wall s/run",
              *metrics]  # fmt: skip
    main = main_metric(configurations)
    base = reference(configurations) if main else None
    compared = [main[0]] + [m for m in COMPARED_TOO if m in metrics and m != main[0]] if base else []
    header += [f"Δ {metric} vs {base.label}" for metric in compared]
    if iso and main:
        header += ["iso-param twin", f"twin {main[0]}", f"Δ {main[0]} vs twin", "verdict vs twin"]
        header += ["verdict vs unshared"] if base else []
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
            _format(_mebibytes(configuration.mean_of("checkpoint", "bytes")), ",.2f"),
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
            values = configuration.metric_values(main[0])
            if twin:
                twin_values = twin.metric_values(main[0])
                closest = "" if twin.iso_baseline else "closest unshared: "  # not a twin run for this configuration
                row += [
                    f"{closest}{twin.label} ({twin.unique_parameters():,})",
                    _mean_ci_cell(twin_values),
                    _difference_cell(values, twin_values),
                    verdict(values, twin_values, main[1]),
                ]
            else:
                row += ["—"] * 4
            if base:
                row.append(
                    "reference" if configuration is base else verdict(values, base.metric_values(main[0]), main[1])
                )
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
    """The tables the runs give: `table` (pretraining and zero-shot runs; `table-<arch>` per architecture where
    runs of several sit together) and `glue` (GLUE runs), where there are."""
    groups = by_arch(pretraining(configurations))
    made: dict[str, Table | None] = {
        "table" if len(groups) == 1 else f"table-{arch}": table_rows(group, iso) for arch, group in groups.items()
    }
    made["glue"] = glue_table_rows(configurations)
    return {name: table for name, table in made.items() if table}


def report(configurations: Sequence[Configuration], made: dict[str, Table]) -> str:
    parts = []
    for name, table in made.items():
        if name.startswith("table-"):
            parts += [f"Architecture {name.removeprefix('table-')}:", ""]
        if name.startswith("table"):
            parts += [markdown(*table), ""]
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

            groups = by_arch(pretraining(configurations))
            for arch, group in groups.items():
                plot_all(group, out, "" if len(groups) == 1 else f"-{arch}")
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
