"""Plots of a collection of runs (matplotlib, no display needed): loss curves with confidence bands per
configuration (as Yang et al.'s Fig. 2), the main metric against the share ratio and against unique parameters,
and Pareto views of the main metric against parameters and memory.

Every scheme keeps one colour and marker across all plots of a collection, and the unshared baseline is always
black, an iso-parameter twin its scheme's colour with a hollow marker and a dashed line, an iso-compute twin a
half-filled marker and a dotted line (`ROLES`); a panel holds at most MAX_LEGEND entries or labelled points (more
are drawn as small multiples by family, within a layer and across layers, each with the baseline); a point's label
is attached to it, and a Pareto panel spreads its points (`zoom`). Speeds are not plotted: timings taken during a sweep
measure the machine's load as much as the model (`make bench` times models side by side on an idle machine).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from sharebench.report.results import main_metric, mean_ci  # noqa: E402
from sharebench.report.scaling import scheme_of  # noqa: E402

if TYPE_CHECKING:
    from sharebench.report.results import Configuration
    from sharebench.report.scaling import Ladder
    from sharebench.report.scaling import Result as LadderResult

CURVES = ("train_loss", "val_loss")
MAX_LEGEND = 10
BASELINE = ("black", "s")
# tab20 without its greys (the baseline is black), its 9 strong hues before their 9 light ones so that schemes
# side by side differ in hue: 18 colours, paired with markers so that no two schemes of a collection look alike.
COLOURS = [matplotlib.colormaps["tab20"](i) for start in (0, 1) for i in range(start, 20, 2) if i not in (14, 15)]
MARKERS = ("o", "^", "D", "v", "P", "X", "<", ">", "*")
FAMILIES = ("within a layer", "across layers")  # the panels of a crowded plot, in this order
Point = tuple[float, float, float, Any]  # a plotted configuration: x, mean, CI half-width, the configuration
# adjustText's label placement stops after this many steps rather than after its default second, which would
# place labels by the machine's speed and load: the same records give the same plot.
ADJUST_ITERATIONS = 300
# How a configuration is drawn by its role (`role`): the shared model filled, with a solid line; its iso-parameter
# twin hollow and dashed; its iso-compute twin (the same model trained to the shared model's FLOPs) half-filled and
# dotted. Each: the legend's suffix, the line style, the marker's fill.
ROLES = (
    ("", "-", {}),
    (" (iso twins)", "--", {"markerfacecolor": "white"}),
    (" (iso-compute twins)", ":", {"fillstyle": "left", "markerfacecoloralt": "white"}),
)
# A plot against x needs this many distinct x values (more than 1 % apart) to say anything about the trend.
MIN_X_VALUES = 3


def distinct_values(values: Sequence[float]) -> int:
    """How many values differ from the next smaller one by more than 1 %."""
    ordered = sorted(values)
    return sum(1 for i, v in enumerate(ordered) if i == 0 or v > ordered[i - 1] * 1.01)


def scheme_name(configuration: Configuration) -> str:
    return "none" if configuration.sharing == "none" and not configuration.iso_baseline else configuration.sharing


def family(scheme: str) -> str:
    """The panel family of a scheme: any cross-layer sharing (`none+cycle`, `partial_qk+cla`) puts it across layers."""
    return FAMILIES[1] if "+" in scheme else FAMILIES[0]


def scheme_label(scheme: str) -> str:
    """How a plot names a scheme: a cross-layer scheme alone by its own name (`cycle`, not `none+cycle`)."""
    return scheme.removeprefix("none+")


def scheme_at_ratio(configuration: Configuration) -> tuple[str, str]:
    """A scheme at its ratios: partial_qk at 0.5 and at 0.9 are drawn apart, a model and its twins alike."""
    ratios = f"{configuration.ratio}/{configuration.layers_ratio}"
    return scheme_name(configuration), "" if scheme_name(configuration) == "none" else ratios


class Styles:
    """One (colour, marker) per scheme in a collection, assigned in sorted order; the unshared model (`none`) is
    the baseline's black. A scheme is what `key` names: by default a scheme at its ratios."""

    def __init__(
        self, configurations: Sequence[Configuration], key: Callable[[Configuration], Any] = scheme_at_ratio
    ) -> None:
        self.key = key
        keys = sorted({key(c) for c in configurations if scheme_name(c) != "none"})
        self.styles = {name: (COLOURS[i % len(COLOURS)], MARKERS[(i + i // len(COLOURS)) % len(MARKERS)])
                       for i, name in enumerate(keys)}  # fmt: skip

    def __call__(self, configuration: Configuration) -> tuple[object, str]:
        return BASELINE if scheme_name(configuration) == "none" else self.styles[self.key(configuration)]


def panels(configurations: Sequence[Configuration]) -> list[list[Configuration]]:
    """Small multiples, each with the unshared baseline, where the shared configurations (each with its iso
    twins) exceed MAX_LEGEND entries: a family (`family`) per set of panels, its schemes in order, split into
    panels of about equal size."""
    baseline = [c for c in configurations if scheme_name(c) == "none"]
    by_scheme: dict[str, list[Configuration]] = {}
    for configuration in sorted(configurations, key=scheme_name):
        if scheme_name(configuration) != "none":
            by_scheme.setdefault(scheme_name(configuration), []).append(configuration)
    room = max(MAX_LEGEND - len(baseline), 1)
    if sum(map(len, by_scheme.values())) <= room:
        return [baseline + [c for members in by_scheme.values() for c in members]]
    groups: list[list[Configuration]] = []
    for name in FAMILIES:
        schemes = [members for scheme, members in by_scheme.items() if family(scheme) == name]
        start = 0
        for end in even_cuts([len(members) for members in schemes], room):
            groups.append([c for members in schemes[start:end] for c in members])
            start = end
    return [baseline + group for group in groups]


def even_cuts(sizes: Sequence[int], room: int) -> tuple[int, ...]:
    """Where to cut a row of items of these sizes, in order, into the fewest runs holding at most `room` each
    (an item larger than that alone), as even as can be (the least sum of squared run sizes): each run's end."""

    @functools.cache
    def best(start: int, runs: int) -> tuple[int, tuple[int, ...]] | None:  # (sum of squares, ends)
        if start == len(sizes) or runs == 0:
            return (0, ()) if start == len(sizes) and runs == 0 else None
        options = []
        for end in range(start + 1, len(sizes) + 1):
            size = sum(sizes[start:end])
            if size > room and end > start + 1:
                break
            if (rest := best(end, runs - 1)) is not None:
                options.append((size**2 + rest[0], (end, *rest[1])))
        return min(options, default=None)

    return next(found[1] for runs in range(len(sizes) + 1) if (found := best(0, runs)) is not None)


def curve_bands(configuration: Configuration, key: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and CI half-width of one curve over the seeds that recorded every step. A run that validated
    twice at one step (PostShare: before and after sharing its heads) counts there with its last value."""
    per_step: dict[int, list[float]] = {}
    for record in configuration.records:
        history = record.get("metrics", {}).get("val_history", [])
        for step, value in {int(entry["step"]): float(entry[key]) for entry in history if key in entry}.items():
            per_step.setdefault(step, []).append(value)
    steps = sorted(per_step)
    stats = [mean_ci(per_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [h or 0.0 for _, h in stats]


def role(configuration: Configuration) -> int:
    """Which of ROLES a configuration plays: 0 a shared (or the unshared) model, 1 an iso-parameter twin, 2 an
    iso-compute twin."""
    return 2 if configuration.iso_compute else int(configuration.iso_baseline)


def plot_curves(configurations: Sequence[Configuration], path: Path, style: Styles) -> bool:
    keys = [k for k in CURVES if any(curve_bands(c, k)[0] for c in configurations)]
    if not keys:
        return False
    groups = panels(configurations)
    figure, axes = plt.subplots(len(groups), len(keys), figsize=(8 * len(keys), 4 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups, strict=True):
        for axis, key in zip(row, keys, strict=True):
            for configuration in group:
                steps, mean, half = curve_bands(configuration, key)
                if not steps:
                    continue
                colour, _ = style(configuration)
                axis.plot(steps, mean, color=colour, linestyle=ROLES[role(configuration)][1],
                          label=f"{short_label(configuration)} (n={len(configuration.records)})")  # fmt: skip
                low = [m - h for m, h in zip(mean, half, strict=True)]
                high = [m + h for m, h in zip(mean, half, strict=True)]
                axis.fill_between(steps, low, high, color=colour, alpha=0.15)
            axis.set_xlabel("iteration")
            axis.set_ylabel(key.replace("_", " "))
            title = f"{key.replace('_', ' ')}: mean and 95 % CI over seeds"
            axis.set_title(f"{family(scheme_name(group[-1]))}: {title}" if len(groups) > 1 else title, fontsize=10)
            finals = [m for c in configurations for m in curve_bands(c, key)[1][-1:]]
            if finals:  # the start of the curves (loss ≈ ln V) would squash the differences that matter
                axis.set_ylim(min(finals) - 0.1, max(finals) + 0.4)
            finish_axis(axis)
    return save(figure, path)


def legend_order(scheme: str, kind: int) -> tuple[bool, int, str, int]:
    """The baseline first, then the schemes within a layer, then across layers, each before its twins (`role`)."""
    return scheme != "none", FAMILIES.index(family(scheme)), scheme, kind


def finish_axis(axis: plt.Axes) -> None:
    """A grid, and the legend beside the panel, where it hides no data; a long label wrapped at its commas, so
    the legend leaves the panel its width."""
    axis.grid(alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        axis.legend(handles, [wrapped(label) for label in labels], fontsize=7, loc="upper left",
                    bbox_to_anchor=(1.01, 1), borderaxespad=0)  # fmt: skip


LEGEND_WIDTH = 50  # characters of a legend line


def wrapped(label: str) -> str:
    """`label` (key=value pairs joined by commas) on lines of at most LEGEND_WIDTH characters, broken after a
    comma; a single pair longer than that keeps its line."""
    lines = [""]
    for part in label.split(","):
        joined = f"{lines[-1]},{part}" if lines[-1] else part
        if len(joined) <= LEGEND_WIDTH or not lines[-1]:
            lines[-1] = joined
        else:
            lines[-1] += ","
            lines.append(part)
    return "\n".join(lines)


def short_label(configuration: Configuration) -> str:
    """The label without the architecture, which a plot (one per architecture) names in its file."""
    rest = configuration.label.partition(",")[2]
    return rest if configuration.label.startswith("arch=") and rest else configuration.label


def save(figure: plt.Figure, path: Path) -> bool:
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")  # a legend beside a panel, however long, is kept whole
    plt.close(figure)
    return True


def plot_against(configurations: Sequence[Configuration], x: str, path: Path, style: Styles) -> bool:
    """The main metric (mean and 95 % CI) against the share ratio (x="ratio") or unique parameters, a line per
    scheme; not drawn when the configurations have fewer than MIN_X_VALUES distinct x values."""
    main = main_metric(configurations)
    if main is None:
        return False

    def x_of(configuration: Configuration) -> float | None:
        return configuration.ratio if x == "ratio" else configuration.unique_parameters()

    if x == "ratio":  # a scheme run at one ratio (or taking none) has no line to draw against it
        ratios: dict[str, set] = {}
        for configuration in configurations:
            ratios.setdefault(scheme_name(configuration), set()).add(configuration.ratio)
        configurations = [c for c in configurations if scheme_name(c) == "none" or len(ratios[scheme_name(c)]) > 1]
    if distinct_values([x_of(c) for c in configurations if c.records and x_of(c) is not None]) < MIN_X_VALUES:
        return False
    groups = panels(configurations)
    figure, axes = plt.subplots(len(groups), 1, figsize=(9, 4 * len(groups)), squeeze=False)
    for axis, group in zip(axes[:, 0], groups, strict=True):
        lines: dict[tuple[str, int], list[tuple[float, float, float, Configuration]]] = {}
        for configuration in group:
            value, (mean, half) = x_of(configuration), mean_ci(configuration.metric_values(main[0]))
            if value is not None and mean is not None:
                key = (scheme_name(configuration), role(configuration))
                lines.setdefault(key, []).append((float(value), mean, half or 0.0, configuration))
        for (scheme, kind), points in sorted(lines.items(), key=lambda line: legend_order(*line[0])):
            points.sort(key=lambda p: p[0])
            colour, marker = style(points[0][3])
            suffix, linestyle, fill = ROLES[kind]
            axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], color=colour,
                          marker=marker, linestyle=linestyle, capsize=3, label=scheme_label(scheme) + suffix,
                          **fill)  # fmt: skip
        if len(groups) > 1:
            axis.set_title(family(scheme_name(group[-1])), fontsize=10)
        axis.set_xlabel("share ratio" if x == "ratio" else "unique parameters")
        values = [p[0] for points in lines.values() for p in points]
        if x != "ratio" and max(values) > 10 * min(values):  # sizes an order of magnitude or more apart
            axis.set_xscale("log")
            plain_log_ticks(axis.xaxis)
        elif x != "ratio":
            axis.xaxis.set_major_locator(MaxNLocator(6))
            axis.xaxis.set_major_formatter(FuncFormatter(plain_number))
        axis.set_ylabel(f"{main[0].replace('_', ' ')} ({main[1]} is better)")
        finish_axis(axis)
    return save(figure, path)


PARETO_AXES = {  # x of a Pareto view: its label, where a run's record holds it, and the unit it is drawn in
    "params": ("unique parameters", ("parameters", "unique"), 1),
    "training": ("training memory: weights, gradients, AdamW state, activations (MiB)", ("memory", "training_bytes"),
                 2**20),
    "inference": ("inference peak memory (MiB)", ("inference", "peak_bytes"), 2**20),
}  # fmt: skip


def plot_pareto(configurations: Sequence[Configuration], x: str, path: Path, style: Styles) -> bool:
    """The main metric against one of PARETO_AXES (unique parameters, training or inference memory), every
    shared configuration a labelled point in its scheme's style, and the unshared models (separate Q/K/V, and the
    iso-parameter twins: smaller FFNs) joined by a black line: a point below the line beats simply using a smaller
    model. An iso-compute twin trained past the recipe's budget: it is a half-filled point of its scheme, off the
    line. More than MAX_LEGEND labelled points are drawn as small multiples (`panels`), each panel with the line
    and zoomed to its own points (`zoom`)."""
    from adjustText import adjust_text

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
        on_line = configuration.unshared and not configuration.iso_compute
        (unshared if on_line else shared).append((value / unit, mean, half or 0.0, configuration))
    if not shared or not unshared or distinct_values([p[0] for p in shared + unshared]) < MIN_X_VALUES:
        return False
    unshared.sort(key=lambda point: point[0])
    point = {id(p[3]): p for p in shared}
    groups = [[point[id(c)] for c in group] for group in panels([p[3] for p in shared])]
    figure, axes = plt.subplots(len(groups), 1, figsize=(10, 6 * len(groups)), squeeze=False)
    labelled = []
    for axis, group in zip(axes[:, 0], groups, strict=True):
        axis.errorbar([p[0] for p in unshared], [p[1] for p in unshared], yerr=[p[2] for p in unshared], marker="s",
                      color=BASELINE[0], capsize=3, label="unshared: none and the iso-parameter twins")  # fmt: skip
        left, right = -math.inf, math.inf
        if len(groups) > 1:
            axis.set_title(family(group[0][3].sharing), fontsize=10)
            low, high = zoom(axis, group + [p for p in unshared if scheme_name(p[3]) == "none"], unshared)
            left, right = low + 0.01 * (high - low), high - 0.01 * (high - low)  # a marker there shows whole
        texts, placed = [], []
        for value, mean, half, configuration in group:
            colour, marker = style(configuration)
            ratio = f" {configuration.ratio:.3g}" if configuration.ratio not in (None, 0, 1) else ""
            twin = " (iso-compute twin)" if configuration.iso_compute else ""
            name = scheme_label(configuration.sharing) + ratio + twin
            if value > right:  # beyond the panel: drawn at its edge, pointing the way, with its value
                value, marker, name = right, ">", f"{name} at {plain_number(value)} →"
            elif value < left:
                value, marker, name = left, "<", f"← {name} at {plain_number(value)}"
            axis.errorbar([value], [mean], yerr=[half], marker=marker, color=colour, capsize=3, linestyle="none",
                          **ROLES[role(configuration)][2])  # fmt: skip
            texts.append(axis.text(value, mean, name, fontsize=7))
            placed.append((value, mean))
        if unit == 1:  # counts
            axis.xaxis.set_major_formatter(FuncFormatter(plain_number))
        axis.set_xlabel(label)
        axis.set_ylabel(f"{main[0].replace('_', ' ')} ({main[1]} is better)")
        finish_axis(axis)
        labelled.append((axis, texts, placed))
    figure.tight_layout()
    for axis, texts, placed in labelled:  # once the layout is final, or the labels move again
        adjust_text(texts, ax=axis, x=[p[0] for p in placed], y=[p[1] for p in placed],
                    iter_lim=ADJUST_ITERATIONS, arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5})  # fmt: skip
    return save(figure, path)


def zoom(axis: plt.Axes, shown: Sequence[Point], line: Sequence[Point]) -> tuple[float, float]:
    """Limits that spread the `shown` points and the part of the `line` between them, leaving out of x the few
    points that `bulk` leaves out (the caller draws them at the edge); returns the x limits."""
    low, high = bulk([p[0] for p in shown])
    margin = 0.05 * (high - low or high)
    inside = [*shown, *(p for p in line if low - margin <= p[0] <= high + margin)]
    bottom, top = min(p[1] - p[2] for p in inside), max(p[1] + p[2] for p in inside)
    axis.set_xlim(low - margin, high + margin)
    axis.set_ylim(bottom - 0.05 * (top - bottom or 1), top + 0.05 * (top - bottom or 1))
    return low - margin, high + margin


def bulk(values: Sequence[float]) -> tuple[float, float]:
    """The range of the values, but for one or two at either end that lie beyond a gap wider than twice the span
    of the others (at least three): one far point (`ffn_wide`'s training memory, twice the others') would squeeze
    the rest into a corner."""
    ordered = sorted(values)
    for left_out in (1, 2):
        for start in range(left_out + 1):
            rest = ordered[start : len(ordered) - left_out + start]
            if len(rest) < 3:
                continue
            beyond = ordered[:start] + ordered[start + len(rest) :]
            if min(max(rest[0] - value, value - rest[-1]) for value in beyond) > 2 * (rest[-1] - rest[0]):
                return rest[0], rest[-1]
    return ordered[0], ordered[-1]


def plot_all(configurations: Sequence[Configuration], out: Path, suffix: str = "") -> list[Path]:
    """Writes curves.png, metric_vs_ratio.png, metric_vs_params.png and, where there are shared and unshared
    models, pareto_<axis>.png for each of PARETO_AXES the runs have data for, their names ending in `suffix`
    (one set per architecture). A plot the runs cannot fill is not written, and an old copy of it is removed."""
    out.mkdir(parents=True, exist_ok=True)
    style = Styles(configurations)
    plots = {
        "curves": lambda path: plot_curves(configurations, path, style),
        "metric_vs_ratio": lambda path: plot_against(configurations, "ratio", path, style),
        "metric_vs_params": lambda path: plot_against(configurations, "params", path, style),
        **{f"pareto_{x}": (lambda path, x=x: plot_pareto(configurations, x, path, style)) for x in PARETO_AXES},
    }
    made = []
    for name, plot in plots.items():
        path = out / f"{name}{suffix}.png"
        if plot(path):
            made.append(path)
        else:
            path.unlink(missing_ok=True)
    return made


def plot_ladder(found: Ladder, result: LadderResult, out: Path, suffix: str = "") -> list[Path]:
    """scaling_params.png: the loss against unique parameters (log), the unshared rungs with the fitted law and
    its bootstrap band, every shared configuration in its scheme's style; scaling_multiplier.png: each scheme's
    effective-parameter multiplier (95 % interval) against the size of its rung, 1 marking parity."""
    import numpy as np
    from matplotlib.ticker import NullLocator

    out.mkdir(parents=True, exist_ok=True)
    style = Styles([s.configuration for s in found.shared], key=scheme_of)  # mqa alike at every rung
    law = result.laws[0]
    figure, axis = plt.subplots(figsize=(10, 6))
    xs = np.geomspace(min(r.unique for r in found.rungs + found.shared) / 1.3, max(r.unique for r in found.rungs) * 1.3)
    band = np.array([[draw.laws[0].loss(x) for x in xs] for draw in result.draws])
    if len(band):
        axis.fill_between(
            xs, *np.quantile(band, [0.025, 0.975], axis=0), color="0.85", label="fit: 95 % bootstrap band"
        )
    axis.plot(xs, [law.loss(x) for x in xs], color=BASELINE[0],
              label=f"fit: {law.floor:.3f} + {law.scale:.3f}·(N/{law.x0:,.0f})^−{law.exponent:.3f}")  # fmt: skip
    for i, rung in enumerate(found.rungs):
        axis.scatter([rung.unique] * len(rung.losses), rung.losses, color=BASELINE[0], marker=BASELINE[1], s=14,
                     label=None if i else "unshared runs (the rungs)")  # fmt: skip
    drawn = set()
    for shared in found.shared:
        colour, marker = style(shared.configuration)
        name = scheme_of(shared.configuration)
        axis.scatter([shared.unique] * len(shared.losses), shared.losses, color=colour, marker=marker, s=22,
                     label=None if name in drawn else name)  # fmt: skip
        drawn.add(name)
    axis.set_xscale("log")
    axis.set_xlabel("unique parameters")
    axis.set_ylabel(f"{found.metric.replace('_', ' ')} (lower is better)")
    plain_log_ticks(axis.xaxis)
    finish_axis(axis)
    made = [out / f"scaling_params{suffix}.png"]
    save(figure, made[0])

    figure, axis = plt.subplots(figsize=(10, 6))
    by_scheme = found.by_scheme()
    for offset, (name, members) in enumerate(by_scheme.items()):
        worth = [result.worth[s.configuration.label][0] for s in members]
        shift = 1 + 0.015 * (offset - len(by_scheme) / 2)  # side by side at each rung, so intervals do not overlap
        colour, marker = style(members[0].configuration)
        axis.errorbar([s.rung.unique * shift for s in members], [w.multiplier for w in worth],
                      yerr=[[w.multiplier - w.low for w in worth], [w.high - w.multiplier for w in worth]],
                      color=colour, marker=marker, capsize=3, label=name)  # fmt: skip
    axis.axhline(1, color=BASELINE[0], linewidth=1, label="parity: worth as many unshared parameters")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("size of the rung (unique parameters of its unshared model)")
    axis.set_ylabel("effective parameters / unique parameters (95 % CI)")
    rungs = sorted({s.rung for s in found.shared}, key=lambda r: r.unique)
    axis.set_xticks([r.unique for r in rungs], [f"{r.size}\n{r.unique:,.0f}" for r in rungs])
    axis.xaxis.set_minor_locator(NullLocator())
    plain_log_ticks(axis.yaxis, subs=(1.0, 1.1, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
    finish_axis(axis)
    made.append(out / f"scaling_multiplier{suffix}.png")
    save(figure, made[1])
    return made


def plain_number(value: float, _position: object = None) -> str:
    """A tick label in plain numbers: 200,000 and 0.5 rather than 2×10⁵ and 5×10⁻¹."""
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


def plain_log_ticks(axis: matplotlib.axis.Axis, subs: Sequence[float] = (1.0, 2.0, 5.0)) -> None:
    """A log axis labelled in plain numbers at `subs` of each decade (200,000 and 0.5 rather than 2×10⁵ and
    5×10⁻¹), other ticks unlabelled."""
    from matplotlib.ticker import LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())
