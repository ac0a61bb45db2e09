"""`sharebench site`: committed results (folders `sharebench collect --out` wrote) as web pages that open from disk,
with no server and no network. Per results folder, a board per architecture (and size or healing budget, as
`collect` groups them): a ranked, sortable, filterable table of at most ten columns beside interactive Pareto plots
(Plotly, its JavaScript written once per site); the folder's README rendered; and a page per configuration with its
command, runs and loss curves. Every figure comes from the copied run records through collect's own tables."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plotly.colors import qualitative

from sharebench.errors import ConfigError
from sharebench.report.collect import Table, ladders_of, table_rows
from sharebench.report.plots import curve_bands, scheme_name
from sharebench.report.results import (
    Configuration,
    by_model,
    find_configurations,
    main_metric,
    pretraining,
    reference,
)
from sharebench.report.scaling import Ladder
from sharebench.report.scaling import Result as LadderResult
from sharebench.report.stats import mean_ci

STATIC = Path(__file__).with_name("static")
# The x axes of a board's Pareto views: a title, how a configuration gives its value, and whether the axis is log.
PARETO_VIEWS = {
    "unique parameters": (lambda c: c.unique_parameters(), True),
    "KV-cache bytes per token": (lambda c: c.mean_of("inference", "kv_cache_bytes_per_token"), False),
    "training FLOPs": (lambda c: c.compute("training_flops"), True),
}
# A leaderboard plots about 20 schemes, which Plotly's default 10 colours would repeat.
COLOURS = qualitative.Dark24
VERDICT_COLUMNS = {"verdict vs twin": "vs twin", "verdict vs iso-compute twin": "vs iso-compute twin"}


@dataclass
class Row:
    """A board's row: the configuration, its cells as collect's table states them, and what sorts them."""

    configuration: Configuration
    page: str
    cells: dict[str, str]
    metric: float | None
    verdicts: list[tuple[str, str]]  # (against what, collect's verdict)


@dataclass
class Board:
    key: str
    metric: str
    lower_is_better: bool
    reference: str | None
    rows: list[Row]
    notes: list[str]
    plots: list[str]  # Plotly's HTML for each view with values


def slug(label: str) -> str:
    """A file name for a configuration's label (`arch=gpt,sharing=gqa` → `arch-gpt_sharing-gqa`)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label.replace("=", "-")).strip("_") or "unnamed"


def verdict_class(verdict: str) -> str:
    """The badge colour of a verdict cell: its first word (`better`, `worse`, `equivalent`, `inconclusive` ...)."""
    word = verdict.split()[0].strip("*†") if verdict.strip() else ""
    return word if word in ("better", "worse", "equivalent", "inconclusive", "reference") else "other"


def scheme(sharing: str, ratio: str, layers_ratio: str) -> str:
    """collect's sharing cell with the ratio of its scheme: the within-layer one's (`gqa 0.5`), else the cross-layer
    one's where it has one (`none+recursive_lora 0.5`)."""
    shown = layers_ratio if sharing.startswith("none") else ratio
    return sharing if shown in ("—", "") else f"{sharing} {shown}"


def cell(table: Table, row: list[str], column: str) -> str:
    return row[table.header.index(column)] if column in table.header else "—"


def board(key: str, group: list[Configuration]) -> Board | None:
    """A group's board, None where its runs share no main metric (GLUE-only or empty groups)."""
    main = main_metric(group)
    if main is None:
        return None
    metric, order = main
    table = table_rows(group)
    base = reference(group)
    rows = []
    for configuration, values in zip(group, table.rows, strict=True):
        verdicts = []
        if base is not None:
            verdicts.append(("vs unshared", cell(table, values, f"verdict vs {base.label}")))
        verdicts += [(name, cell(table, values, column)) for column, name in VERDICT_COLUMNS.items()]
        mean, _ = mean_ci(configuration.metric_values(metric))
        rows.append(Row(
            configuration, f"config/{slug(configuration.label)}.html",
            {
                "scheme": cell(table, values, "sharing") if configuration.iso_baseline  # a twin: no ratio of its own
                else scheme(*(cell(table, values, column) for column in ("sharing", "ratio", "layers ratio"))),
                "unique params": cell(table, values, "unique params"),
                "vs unshared": cell(table, values, "vs unshared"),
                "KV bytes/token": cell(table, values, "KV bytes/token"),
                "training FLOPs": cell(table, values, "training FLOPs"),
                metric: cell(table, values, metric),
                "Δ vs reference": cell(table, values, f"Δ {metric} vs {base.label}") if base else "—",
                "Δ vs twin": cell(table, values, f"Δ {metric} vs twin"),
            },
            mean,
            [(name, verdict) for name, verdict in verdicts if verdict not in ("—", "")],
        ))  # fmt: skip
    rows.sort(key=lambda r: (r.metric is None, (r.metric or 0.0) * (1 if order == "lower" else -1)))
    plots = [pareto(group, metric, title, *view) for title, view in PARETO_VIEWS.items()]
    return Board(key, metric, order == "lower", base.label if base else None, rows, table.notes,
                 [plot for plot in plots if plot])  # fmt: skip


def embedded(figure: Any) -> str:
    """A Plotly figure as a <div> and its script, sized to its cell of the page (the site loads plotly.min.js)."""
    figure.update_layout(template="plotly_white", colorway=COLOURS, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return figure.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                          config={"responsive": True, "displaylogo": False})  # fmt: skip


def pareto(configurations: Sequence[Configuration], metric: str, title: str, value: Any, log: bool) -> str | None:
    """The main metric against one x of PARETO_VIEWS, a trace per scheme, the unshared models joined by a line;
    hovering a point shows its configuration. None where fewer than two configurations have the x."""
    import plotly.graph_objects as go

    points = []
    for configuration in configurations:
        x = value(configuration)
        mean, half = mean_ci(configuration.metric_values(metric))
        if x is not None and mean is not None:
            points.append((configuration, float(x), mean, half or 0.0))
    if len({x for _, x, _, _ in points}) < 2:
        return None
    figure = go.Figure()
    unshared = sorted((p for p in points if p[0].unshared and not p[0].iso_compute), key=lambda p: p[1])
    traces: dict[str, list[tuple[Configuration, float, float, float]]] = {}
    for point in points:
        if point not in unshared:
            traces.setdefault(scheme_name(point[0]), []).append(point)
    for name, members in [("unshared (and iso-parameter twins)", unshared), *sorted(traces.items())]:
        figure.add_trace(go.Scatter(
            x=[p[1] for p in members], y=[p[2] for p in members], name=name,
            mode="lines+markers" if members is unshared else "markers",
            line={"color": "black"} if members is unshared else None,
            error_y={"type": "data", "array": [p[3] for p in members], "thickness": 1},
            text=[p[0].label for p in members],
            hovertemplate=f"%{{text}}<br>{title}: %{{x:,}}<br>{metric}: %{{y:.4f}}<extra></extra>",
        ))  # fmt: skip
    figure.update_layout(
        title=f"{metric} against {title}", xaxis_title=title, yaxis_title=metric,
        height=460, legend={"font": {"size": 11}},
    )  # fmt: skip
    figure.update_xaxes(type="log" if log else "linear")
    return embedded(figure)


def multipliers(found: Ladder, result: LadderResult) -> str:
    """Each scheme's multiplier over unique parameters (its effective parameters on the unshared runs' fitted law
    over its own) at each rung it ran, with its 95 % interval; 1 is worth exactly its parameters."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, members in found.by_scheme().items():
        points = [(s.rung.unique, result.worth[s.configuration.label][0], s.configuration.label) for s in members]
        points = [(x, worth, label) for x, worth, label in points if worth is not None]
        figure.add_trace(go.Scatter(
            x=[x for x, _, _ in points], y=[w.multiplier for _, w, _ in points], name=name,
            mode="lines+markers", text=[label for _, _, label in points],
            error_y={"type": "data", "symmetric": False, "thickness": 1,
                     "array": [0 if math.isnan(w.high) else w.high - w.multiplier for _, w, _ in points],
                     "arrayminus": [0 if math.isnan(w.low) else w.multiplier - w.low for _, w, _ in points]},
            hovertemplate="%{text}<br>rung: %{x:,} unique parameters<br>× params: %{y:.3g}<extra></extra>",
        ))  # fmt: skip
    figure.add_hline(y=1, line={"color": "black", "dash": "dot"})
    figure.update_layout(title=f"× parameters by scheme and rung ({found.metric} on the unshared law)",
                         xaxis_title="unique parameters of the rung", yaxis_title="× params", height=480,
                         )  # fmt: skip
    figure.update_xaxes(type="log")
    figure.update_yaxes(type="log")
    return embedded(figure)


def curves(configuration: Configuration) -> str | None:
    """The validation loss over steps of each seed, and their mean, as a Plotly figure."""
    import plotly.graph_objects as go

    steps, means, _ = curve_bands(configuration, "val_loss")
    if len(steps) < 2:
        return None
    figure = go.Figure()
    for record in configuration.records:
        history = record.get("metrics", {}).get("val_history", [])
        figure.add_trace(go.Scatter(
            x=[e["step"] for e in history if "val_loss" in e], y=[e["val_loss"] for e in history if "val_loss" in e],
            name=f"seed {record.get('seed')}", mode="lines", line={"width": 1},
        ))  # fmt: skip
    figure.add_trace(go.Scatter(x=steps, y=means, name="mean", mode="lines", line={"color": "black", "width": 2}))
    figure.update_layout(title="validation loss", xaxis_title="step", yaxis_title="val_loss", height=400)
    return embedded(figure)


def command(configuration: Configuration) -> str:
    """The sweep command that runs this configuration's seeds under its recipe."""
    config = configuration.first.get("config") or {}
    recipe = [f"experiment={config['experiment']['name']}"] if (config.get("experiment") or {}).get("name") else []
    scale = [f"scale={config['scale']['name']}"] if (config.get("scale") or {}).get("name") else []
    seeds = ",".join(str(r.get("seed")) for r in configuration.records + configuration.failed)
    overrides = configuration.label.split(",") if "=" in configuration.label else []
    return " ".join(["python train.py -m", *recipe, *scale, *overrides, f"seed={seeds}"])


def machine_and_code(folder: Path) -> str:
    """setting.md's "Machine and code" section, where collect wrote one."""
    path = folder / "setting.md"
    if not path.is_file():
        return ""
    text = path.read_text()
    start = text.find("## Machine and code")
    return "" if start < 0 else text[start:].split("\n", 1)[1].split("\n## ")[0]


class Site:
    """Writes the pages of one site (`build`)."""

    def __init__(self, out: Path) -> None:
        from jinja2 import Environment, PackageLoader, select_autoescape

        self.out = out
        self.pages = Environment(loader=PackageLoader("sharebench.report.site"), autoescape=select_autoescape(),
                                 trim_blocks=True, lstrip_blocks=True)  # fmt: skip
        self.pages.filters["verdict_class"] = verdict_class

    def write(self, path: str, template: str, **values: Any) -> None:
        depth = path.count("/")
        target = self.out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.pages.get_template(template).render(root="../" * depth, **values))

    def result(self, folder: Path) -> dict[str, Any]:
        """A results folder's pages under <out>/<its name>/; what the index says of it."""
        import markdown

        name = folder.name
        configurations = find_configurations([folder / "runs"])
        boards = [b for key, group in by_model(pretraining(configurations)).items() if (b := board(key or name, group))]
        readme = folder / "README.md"
        body = markdown.markdown(readme.read_text(), extensions=["tables", "fenced_code"]) if readme.is_file() else ""
        files = sorted(path.name for path in folder.iterdir() if path.is_file())
        (self.out / name).mkdir(parents=True, exist_ok=True)
        for file in files:  # the tables, plots and notes the README names, beside its page
            shutil.copyfile(folder / file, self.out / name / file)
        footer = markdown.markdown(machine_and_code(folder))
        recipes = ((c.first.get("config") or {}).get("experiment") or {} for c in configurations)
        title = next((recipe["title"] for recipe in recipes if recipe.get("title")), name)
        values = {"name": name, "title": title, "footer": footer}
        ladders = [multipliers(*found) for found in ladders_of(configurations).values()]
        self.write(f"{name}/index.html", "board.html", boards=boards, ladders=ladders, **values)
        self.write(f"{name}/readme.html", "readme.html", body=body, files=files, **values)
        for b in boards:
            for row in b.rows:
                self.configuration(name, row, values)
        return {"name": name, "title": title, "boards": len(boards),
                "configurations": sum(len(b.rows) for b in boards),
                "runs": sum(len(c.records) for c in configurations)}  # fmt: skip

    def configuration(self, name: str, row: Row, values: dict[str, Any]) -> None:
        """Its page, and beside it a copy of each of its run records, which the page links."""
        configuration = row.configuration
        metrics = configuration.metrics()
        folder = Path(row.page).with_suffix("")
        runs = []
        for index, record in enumerate(configuration.records + configuration.failed):
            copy = folder / f"run-{index}-seed={record.get('seed')}.json"
            (self.out / name / copy).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record["_path"], self.out / name / copy)
            runs.append({"seed": record.get("seed"), "status": record.get("status"), "record": copy.name,
                         "values": [_number(record.get("metrics", {}).get(m)) for m in metrics]})  # fmt: skip
        self.write(f"{name}/{row.page}", "configuration.html", row=row, command=command(configuration),
                   slug=folder.name, metrics=metrics, runs=runs, curves=curves(configuration), **values)  # fmt: skip


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value) if value is not None else "—"


def build(folders: Sequence[str | Path], out: str | Path) -> Path:
    """The site of `folders` (each written by `sharebench collect --out`, with its runs/) in `out`; its index.html."""
    import plotly.offline

    folders = [Path(f) for f in folders]
    for folder in folders:
        if not (folder / "runs").is_dir():
            raise ConfigError(f"site: {folder} has no runs/ folder; give folders that `sharebench collect --out` "
                              f"wrote (results/<name>)")  # fmt: skip
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise ConfigError(f"site: two results folders share a name ({', '.join(names)}); each becomes a folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plotly.min.js").write_text(plotly.offline.get_plotlyjs())
    for asset in STATIC.iterdir():
        shutil.copyfile(asset, out / asset.name)
    site = Site(out)
    results = [site.result(folder) for folder in folders]
    site.write("index.html", "index.html", results=results, title="sharebench results", footer="")
    return out / "index.html"
