"""Plots of a collection of runs (matplotlib, no display needed): loss curves with confidence bands per
configuration (as Yang et al.'s Fig. 2), the main metric against the share ratio, and against unique parameters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sharebench.results import main_metric, mean_ci  # noqa: E402

if TYPE_CHECKING:
    from sharebench.results import Configuration

CURVES = ("train_loss", "val_loss")


def curve_bands(configuration: Configuration, key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and CI half-width of one curve over the seeds that recorded every step."""
    per_step: dict[int, list[float]] = {}
    for record in configuration.records:
        for entry in record.get("metrics", {}).get("val_history", []):
            if key in entry:
                per_step.setdefault(int(entry["step"]), []).append(float(entry[key]))
    steps = sorted(per_step)
    stats = [mean_ci(per_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [h or 0.0 for _, h in stats]


def plot_curves(configurations: Sequence[Configuration], path: Path) -> bool:
    keys = [k for k in CURVES if any(curve_bands(c, k)[0] for c in configurations)]
    if not keys:
        return False
    figure, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        for configuration in configurations:
            steps, mean, half = curve_bands(configuration, key)
            if not steps:
                continue
            line = axis.plot(steps, mean, label=f"{configuration.label} (n={len(configuration.records)})")[0]
            low = [m - h for m, h in zip(mean, half, strict=True)]
            high = [m + h for m, h in zip(mean, half, strict=True)]
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        axis.set_xlabel("iteration")
        axis.set_ylabel(key.replace("_", " "))
        axis.set_title(f"{key.replace('_', ' ')}: mean and 95 % CI over seeds")
        finals = [m for c in configurations for m in curve_bands(c, key)[1][-1:]]
        if finals:  # the start of the curves (loss ≈ ln V) would squash the differences that matter
            axis.set_ylim(min(finals) - 0.15, max(finals) + 0.6)
        finish_axis(axis)
    return save(figure, path)


def finish_axis(axis: plt.Axes) -> None:
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def save(figure: plt.Figure, path: Path) -> bool:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_against(configurations: Sequence[Configuration], x: str, path: Path) -> bool:
    """The main metric (mean and 95 % CI) against the share ratio (x="ratio") or unique parameters."""
    main = main_metric(configurations)
    if main is None:
        return False
    metric = main[0]
    by_scheme: dict[str, list[tuple[float, float, float]]] = {}
    for configuration in configurations:
        value = configuration.ratio if x == "ratio" else configuration.unique_parameters()
        mean, half = mean_ci(configuration.metric_values(metric))
        if value is None or mean is None:
            continue
        scheme = f"{configuration.sharing} (iso twin)" if configuration.iso_baseline else configuration.sharing
        by_scheme.setdefault(scheme, []).append((float(value), mean, half or 0.0))
    if not by_scheme:
        return False
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for scheme, points in sorted(by_scheme.items()):
        points.sort()
        axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                      marker="o", capsize=3, label=scheme)  # fmt: skip
    axis.set_xlabel("share ratio" if x == "ratio" else "unique parameters")
    axis.set_ylabel(f"{metric.replace('_', ' ')} ({main[1]} is better)")
    finish_axis(axis)
    return save(figure, path)


PARETO_AXES = {  # x of a Pareto view: its label, where a run's record holds it, and the unit it is drawn in
    "params": ("unique parameters", ("parameters", "unique"), 1),
    "training": ("training memory: weights, gradients, AdamW state, activations (MiB)", ("memory", "training_bytes"),
                 2**20),
    "inference": ("inference peak memory (MiB)", ("inference", "peak_bytes"), 2**20),
    "speed": ("training tokens/s (as measured during the run)", ("speed", "tokens_per_second"), 1),
}  # fmt: skip


def plot_pareto(configurations: Sequence[Configuration], x: str, path: Path) -> bool:
    """The main metric against one of PARETO_AXES (unique parameters, training or inference memory, training
    speed), every shared configuration a labelled point, and the unshared models (separate Q/K/V, and the
    iso-parameter twins: smaller FFNs) joined by a line: a point beyond the line beats simply using a smaller
    model."""
    main = main_metric(configurations)
    if main is None:
        return False
    label, path_in_record, unit = PARETO_AXES[x]
    shared, unshared = [], []
    for configuration in configurations:
        mean, half = mean_ci(configuration.metric_values(main[0]))
        value = configuration.mean_of(*path_in_record)
        if mean is None or value is None:
            continue
        value = value / unit
        (unshared if configuration.unshared else shared).append((value, mean, half or 0.0, configuration))
    if not shared or not unshared:
        return False
    figure, axis = plt.subplots(figsize=(7, 5))
    unshared.sort(key=lambda point: point[0])
    axis.errorbar([p[0] for p in unshared], [p[1] for p in unshared], yerr=[p[2] for p in unshared], marker="s",
                  color="grey", capsize=3, label="unshared: none and the iso-parameter twins")  # fmt: skip
    names = []
    for value, mean, half, configuration in shared:
        axis.errorbar([value], [mean], yerr=[half], marker="o", capsize=3, linestyle="none")
        ratio = f" {configuration.ratio:g}" if configuration.ratio not in (None, 0, 1) else ""
        names.append(configuration.sharing.removeprefix("none+") + ratio)
    axis.set_xlabel(label)
    axis.set_ylabel(f"{main[0].replace('_', ' ')} ({main[1]} is better)")
    finish_axis(axis)
    figure.tight_layout()  # the labels are placed in the final layout's display units
    for (value, mean, _, _), name, lift in zip(shared, names, label_lifts(axis, shared, names), strict=True):
        axis.annotate(name, (value, mean), textcoords="offset points", xytext=(4, 4 + lift), fontsize=LABEL_SIZE)
    return save(figure, path)


LABEL_SIZE = 7  # points


def label_lifts(axis: plt.Axes, points: Sequence[tuple[float, ...]], names: Sequence[str]) -> list[float]:
    """How many points to raise each point's label so that no two overlap: schemes of nearly the same size and
    loss (symmetric and pairwise) would otherwise print over each other. Boxes are estimated in display units."""
    to_points = 72 / axis.figure.dpi
    height = LABEL_SIZE + 1
    placed: list[tuple[float, float, float]] = []  # each label's left, bottom and width
    lifts = []
    for point, name in zip(points, names, strict=True):
        x, y = axis.transData.transform(point[:2]) * to_points
        width, lift = 0.6 * LABEL_SIZE * len(name), 0.0
        while any(abs(y + lift - other_y) < height and x < other_x + other_width and other_x < x + width
                  for other_x, other_y, other_width in placed):  # fmt: skip
            lift += height
        placed.append((x, y + lift, width))
        lifts.append(lift)
    return lifts


def plot_all(configurations: Sequence[Configuration], out: Path, suffix: str = "") -> list[Path]:
    """Writes curves.png, metric_vs_ratio.png, metric_vs_params.png and, where there are shared and unshared
    models, pareto_<axis>.png for each of PARETO_AXES the runs have data for, their names ending in
    `suffix` (one set per architecture)."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    if plot_curves(configurations, out / f"curves{suffix}.png"):
        made.append(out / f"curves{suffix}.png")
    for x, name in (("ratio", "metric_vs_ratio"), ("params", "metric_vs_params")):
        if plot_against(configurations, x, out / f"{name}{suffix}.png"):
            made.append(out / f"{name}{suffix}.png")
    for x in PARETO_AXES:
        if plot_pareto(configurations, x, out / f"pareto_{x}{suffix}.png"):
            made.append(out / f"pareto_{x}{suffix}.png")
    return made
