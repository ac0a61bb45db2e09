"""From a folder of runs to comparison tables and plots: `sharebench collect <folder>`.

A configuration is a run's path below the folder with its `seed=<n>` levels removed, so the seeds of one
configuration (and the GLUE tasks of one pretraining run, each its own configuration) are found by their folders.
Each configuration gives one row: how many seeds completed and how many did not (failed, interrupted, still
running), the mean and 95 % confidence interval (Student's t over seeds) of every metric, unique parameters and
their ratio to the same model without sharing, peak memory and tokens/s. Runs that did not complete are listed
with their status and error, never dropped.
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
from sharebench.paths import atomic_write_bytes, atomic_write_json
from sharebench.record import RECORD_NAME

SEED_LEVEL = re.compile(r"^seed=\d+$")
# Run-level metrics that are not a quality measure of the model.
NOT_METRICS = {"steps", "epochs"}
# The metric that plots and iso-parameter pairs use: a loss (lower is better), a GLUE score or a correlation.
MAIN_METRICS = (("val_loss", "lower"), ("score", "higher"), ("spearman", "higher"))


@dataclass
class Configuration:
    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first(self) -> dict[str, Any]:
        return (self.records or self.failed)[0]

    @property
    def sharing(self) -> str:
        sharing = self.first.get("sharing") or {}
        name = sharing.get("name", "—")
        layers = self.first.get("layers") or {}
        return f"{name}+{layers['name']}" if layers.get("name") not in (None, "none") else name

    @property
    def ratio(self) -> float | None:
        return (self.first.get("sharing") or {}).get("ratio")

    def metric_values(self, metric: str) -> list[float]:
        values = [r.get("metrics", {}).get(metric) for r in self.records]
        return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for record in self.records:
            for key, value in record.get("metrics", {}).items():
                if key not in NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    names.setdefault(key)
        return list(names)

    def unique_parameters(self) -> int | None:
        return (self.first.get("parameters") or {}).get("unique")

    def mean_of(self, *path: str) -> float | None:
        values = []
        for record in self.records:
            value: Any = record
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                values.append(float(value))
        return sum(values) / len(values) if values else None


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


def configuration_name(record_path: Path, root: Path) -> str:
    parts = [p for p in record_path.parent.relative_to(root).parts if not SEED_LEVEL.match(p)]
    return "/".join(parts) or root.name


def find_configurations(folders: Sequence[str | Path]) -> list[Configuration]:
    found: dict[str, Configuration] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ConfigError(f"collect: {folder} is not a folder of runs")
        for path in sorted(folder.rglob(RECORD_NAME)):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                record = {"status": "failed", "error": f"unreadable {RECORD_NAME}: {error}"}
            record["_path"] = str(path)
            name = configuration_name(path, folder)
            configuration = found.setdefault(name, Configuration(name))
            (configuration.records if record.get("status") == "completed" else configuration.failed).append(record)
    if not found:
        raise ConfigError(f"collect: no {RECORD_NAME} under {', '.join(map(str, folders))}")
    return sorted(found.values(), key=lambda c: (c.sharing, c.ratio if c.ratio is not None else -1, c.name))


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


def iso_baseline(configuration: Configuration, configurations: Sequence[Configuration]) -> Configuration | None:
    """The unshared configuration (sharing=none, no cross-layer sharing) with the closest unique parameter count."""
    unique = configuration.unique_parameters()
    candidates = [
        c
        for c in configurations
        if c is not configuration and c.sharing == "none" and c.records and c.unique_parameters()
    ]
    if unique is None or configuration.sharing == "none" or not candidates:
        return None
    return min(candidates, key=lambda c: abs(c.unique_parameters() - unique))


def _format(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _mean_ci_cell(values: Sequence[float]) -> str:
    mean, half = mean_ci(values)
    if mean is None:
        return "—"
    return f"{mean:.4f} ± {half:.4f}" if half is not None else f"{mean:.4f}"


def table_rows(configurations: Sequence[Configuration], iso: bool = False) -> tuple[list[str], list[list[str]]]:
    metrics: dict[str, None] = {}
    for configuration in configurations:
        metrics.update(dict.fromkeys(configuration.metrics()))
    header = ["configuration", "sharing", "ratio", "seeds", "not completed", "unique params", "vs unshared",
              "peak RSS MiB", "tokens/s", *metrics]  # fmt: skip
    main = main_metric(configurations)
    if iso and main:
        header += ["iso-param baseline", f"baseline {main[0]}"]
    rows = []
    for configuration in configurations:
        unique = configuration.unique_parameters()
        unshared = unshared_unique_parameters(configuration.first)
        rss = configuration.mean_of("peak_memory", "rss_bytes")
        row = [
            configuration.name,
            configuration.sharing,
            _format(configuration.ratio, "g"),
            str(len(configuration.records)),
            str(len(configuration.failed)),
            _format(unique, ","),
            _format(unique / unshared if unique and unshared else None, ".4f"),
            _format(rss / 2**20 if rss else None, ",.0f"),
            _format(configuration.mean_of("speed", "tokens_per_second"), ",.0f"),
            *(_mean_ci_cell(configuration.metric_values(m)) for m in metrics),
        ]
        if iso and main:
            baseline = iso_baseline(configuration, configurations)
            row += [
                f"{baseline.name} ({baseline.unique_parameters():,})" if baseline else "—",
                _mean_ci_cell(baseline.metric_values(main[0])) if baseline else "—",
            ]
        rows.append(row)
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

    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(header) - 3) + "}", r"\toprule"]
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


def report(configurations: Sequence[Configuration], iso: bool = False) -> str:
    header, rows = table_rows(configurations, iso)
    parts = [markdown(header, rows), "", "Metrics: mean ± half-width of the 95 % confidence interval over seeds."]
    title, claims = paper_claims(configurations)
    if claims:
        parts += ["", f"The paper ({title}) reports:", *(f"- {claim}" for claim in claims)]
    failed = failed_runs(configurations)
    parts += ["", f"Runs not completed (failed, interrupted or still running): {len(failed)}", *failed]
    return "\n".join(parts) + "\n"


def collect(folders: Sequence[str | Path], out: str | Path | None = None, iso: bool = False, plots: bool = True) -> str:
    """The Markdown report of the runs under `folders`; with `out`, also table.{md,csv,tex}, the plots and a copy
    of every run record (runs/<configuration>/seed=<n>/run.json) in that folder."""
    configurations = find_configurations(folders)
    text = report(configurations, iso)
    if out is not None:
        out = Path(out)
        header, rows = table_rows(configurations, iso)
        atomic_write_bytes(out / "table.md", text.encode())
        atomic_write_bytes(out / "table.csv", csv_text(header, rows).encode())
        atomic_write_bytes(out / "table.tex", latex(header, rows).encode())
        copy_records(configurations, folders, out / "runs")
        if plots:
            from sharebench.plots import plot_all

            plot_all(configurations, out)
    return text


def copy_records(configurations: Sequence[Configuration], folders: Sequence[str | Path], target: Path) -> None:
    for configuration in configurations:
        for record in configuration.records + configuration.failed:
            source = Path(record["_path"])
            root = next(Path(f) for f in folders if source.is_relative_to(Path(f)))
            destination = target / source.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            clean = {k: v for k, v in record.items() if k != "_path"}
            atomic_write_json(destination, clean)
            metrics_csv = source.parent / "logs" / "metrics.csv"
            if metrics_csv.is_file():
                shutil.copyfile(metrics_csv, destination.parent / "metrics.csv")
