"""`sharebench collect` on records written by real (nano) runs: every run's within-layer and cross-layer scheme
named with their ratios, configurations identified by resolved values, labels that name only what varies, the
iso-parameter twin of each shared configuration, and the committed layout runs/<label>/seed=<n>/run.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sharebench.paths import PROJECT_ROOT
from sharebench.report.collect import collect, table_rows
from sharebench.report.results import find_configurations
from sharebench.run.composing import compose
from sharebench.train.tasks import run_task
from tests.conftest import current_record, nano_settings

RUNS = {  # folder name (as a sweep would type it) → overrides
    "none": ["sharing=none"],
    "cycle": ["layers=cycle", "layers.ratio=0.5"],
    "partial_cycle": ["sharing=partial_qk", "ratio=0.5", "layers=cycle", "layers.ratio=0.5"],
    "partial": ["sharing=partial_qk", "ratio=0.5"],
    "partial_iso": ["sharing=partial_qk", "ratio=0.5", "iso_baseline=true"],
    "symmetric_typed_as_1": ["sharing=partial_qk", "ratio=1"],
    "symmetric_typed_as_1.0": ["sharing=partial_qk", "ratio=1.0", "seed=1"],
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus, cache_dir):
    root = tmp_path_factory.mktemp("sweep")
    for name, overrides in RUNS.items():
        cfg = compose([*nano_settings(corpus, cache_dir, root), "measure=true", *overrides])
        run_task(cfg, root / "experiment=x" / name / "seed=0")
    return root


def rows_by_label(root, iso=True):
    header, rows, _ = table_rows(find_configurations([root]), iso=iso)
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_cross_layer_and_combined_schemes_are_named_with_their_ratios(sweep):
    rows = rows_by_label(sweep)
    assert set(rows) == {
        "sharing=none,layers=none",
        "sharing=none,layers=cycle",
        "sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=false",
        "sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=true",
        "sharing=partial_qk,ratio=0.5,layers=cycle",
        "sharing=partial_qk,ratio=1",
    }
    cycle = rows["sharing=none,layers=cycle"]
    assert (cycle["sharing"], cycle["layers ratio"]) == ("none+cycle", "0.5")
    combined = rows["sharing=partial_qk,ratio=0.5,layers=cycle"]
    assert (combined["sharing"], combined["ratio"], combined["layers ratio"]) == ("partial_qk+cycle", "0.5", "0.5")
    assert rows["sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=true"]["sharing"] == (
        "none (iso twin of partial_qk)"
    )
    assert rows["sharing=partial_qk,ratio=1"]["seeds"] == "2"  # ratio=1 and ratio=1.0 are one configuration
    reference = "Δ test_loss_full vs sharing=none,layers=none"
    assert rows["sharing=none,layers=none"][reference] == "reference"
    assert rows["sharing=none,layers=cycle"][reference][0] in "+-"
    rise = rows["sharing=none,layers=cycle"]["val_rise"]  # read off the validation curve: ≥ 0 by definition
    assert float(rise.split(" ")[0]) >= 0


def test_training_memory_shows_what_sharing_saves(sweep):
    configurations = {c.label: c for c in find_configurations([sweep])}
    memory = {label: c.mean_of("memory", "training_bytes") for label, c in configurations.items()}
    checkpoint = {label: c.mean_of("checkpoint", "bytes") for label, c in configurations.items()}
    assert checkpoint["sharing=none,layers=cycle"] < checkpoint["sharing=none,layers=none"]
    assert memory["sharing=none,layers=cycle"] < memory["sharing=none,layers=none"]  # half the blocks' weights
    assert memory["sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=false"] < memory["sharing=none,layers=none"]
    for label, row in rows_by_label(sweep).items():
        assert row["training MiB"] == f"{memory[label] / 2**20:,.1f}"
        assert row["checkpoint MiB"] == f"{checkpoint[label] / 2**20:,.2f}"
        assert row["KV bytes/token"] == "—"  # encoders keep no KV cache


def test_runs_with_twins_are_paired_without_asking(sweep):
    row = rows_by_label(sweep, iso=False)["sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=false"]
    assert row["iso-param twin"].startswith("sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=true (")
    assert row["Δ test_loss_full vs twin"][0] in "+-"


def test_iso_twins_are_unshared_models_only(sweep):
    rows = rows_by_label(sweep)
    unshared = {"sharing=none,layers=none", "sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=true"}
    for label, row in rows.items():
        twin = row["iso-param twin"].split(" (")[0]
        own = label.replace("iso_baseline=false", "iso_baseline=true")
        # a configuration's own twin, else the truly unshared model, named as the closest, never another's twin
        expected = (
            "—" if label in unshared else own if own in unshared else "closest unshared: sharing=none,layers=none"
        )
        assert twin == expected, (label, twin)
    partial = rows["sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=false"]
    assert partial["iso-param twin"].startswith("sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=true (")


def test_a_label_names_only_what_varies(sweep, tmp_path):
    only_ratios = tmp_path / "ratios"
    for name in ("partial", "symmetric_typed_as_1", "symmetric_typed_as_1.0"):
        for record in (sweep / "experiment=x" / name).rglob("run.json"):
            target = only_ratios / name / record.relative_to(sweep / "experiment=x" / name)
            target.parent.mkdir(parents=True)
            target.write_text(record.read_text())
    assert sorted(rows_by_label(only_ratios)) == ["ratio=0.5", "ratio=1"]


def test_collect_writes_records_by_label_and_can_rebuild_from_them(sweep, tmp_path):
    out = tmp_path / "results"
    first = collect([sweep], out, iso=True, plots=False)
    records = sorted(p.relative_to(out).as_posix() for p in out.rglob("run.json"))
    assert len(records) == len(RUNS)
    assert "runs/sharing=none,layers=cycle/seed=0/run.json" in records
    assert "runs/sharing=partial_qk,ratio=1/seed=1/run.json" in records
    assert not any("+" in r or "runs/runs" in r for r in records)
    assert all((out / r).with_name("metrics.csv").is_file() for r in records)
    again = collect([out], out, iso=True, plots=False)  # from the committed copies alone, into the same folder
    assert again.split("Run time")[0] == first.split("Run time")[0]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("run.json")) == records
    assert json.loads((out / records[0]).read_text())["status"] == "completed"


@pytest.mark.slow
def test_the_same_records_give_the_same_plots(sweep, tmp_path):
    collect([sweep], tmp_path / "first", iso=True)
    collect([sweep], tmp_path / "again", iso=True)
    plots = sorted(path.name for path in (tmp_path / "first").glob("*.png"))
    assert "pareto_params.png" in plots  # labels placed by adjustText, for a fixed number of steps
    assert all((tmp_path / "first" / name).read_bytes() == (tmp_path / "again" / name).read_bytes() for name in plots)


def test_runs_of_two_architectures_get_a_table_each(tmp_path, corpus, cache_dir):
    """The leaderboard's encoder and decoder runs sit in one folder; each architecture's table compares with its
    own unshared model and its own twins, and has its own plots."""
    for arch in ("bert", "gpt"):
        for name, overrides in (("none", ["sharing=none"]), ("mqa", ["sharing=mqa"]),
                                ("mqa_iso", ["sharing=mqa", "iso_baseline=true"])):  # fmt: skip
            cfg = compose([*nano_settings(corpus, cache_dir, tmp_path), f"arch={arch}", *overrides])
            run_task(cfg, tmp_path / "runs" / arch / name / "seed=0")
    report = collect([tmp_path / "runs"], tmp_path / "out", iso=True)
    assert "Architecture bert:" in report and "Architecture gpt:" in report
    references = set()
    for arch in ("bert", "gpt"):
        header, *rows = csv.reader((tmp_path / "out" / f"table-{arch}.csv").read_text().splitlines())
        assert len(rows) == 3 and sum("reference" in row for row in rows) == 1
        assert all(row[0].startswith(f"arch={arch},sharing=") for row in rows)  # labelled as a user types it
        references.add(next(column for column in header if column.startswith("Δ test_loss_full vs")))
        assert sum("none (iso twin of mqa)" in row for row in rows) == 1
        assert (tmp_path / "out" / f"curves-{arch}.png").stat().st_size > 0
        # mqa and its twin have nearly the same parameters: too few distinct x values for the views against size
        assert not (tmp_path / "out" / f"metric_vs_params-{arch}.png").exists()
    assert len(references) == 2  # each table against its own unshared model
    assert not (tmp_path / "out" / "table.csv").exists()
    assert not list((tmp_path / "out").glob("curves.png"))  # one set of plots per architecture, none mixed


def test_one_seed_gives_no_verdict(sweep):
    row = rows_by_label(sweep)["sharing=partial_qk,ratio=0.5,layers=none,iso_baseline=false"]
    assert row["verdict vs twin"] == row["verdict vs sharing=none,layers=none"] == "—"
    assert row["test"] == "—"


def test_the_same_run_in_two_folders_counts_once(nano_cfg, tmp_path, capsys):
    import shutil

    from sharebench.report.results import find_configurations
    from sharebench.train.tasks import run_task

    for seed in (0, 1):
        run_task(nano_cfg(f"seed={seed}"), tmp_path / "runs" / f"seed={seed}")
    shutil.copytree(tmp_path / "runs" / "seed=0", tmp_path / "copy" / "seed=0")
    (configuration,) = find_configurations([tmp_path / "runs", tmp_path / "copy"])
    assert sorted(r["seed"] for r in configuration.records) == [0, 1]
    assert "repeats the run of" in capsys.readouterr().err


def test_without_a_twin_of_its_own_the_closest_truly_unshared_model_is_named_as_such(nano_cfg, tmp_path):
    from sharebench.report.results import find_configurations, iso_baseline
    from sharebench.train.tasks import run_task

    runs = {"none": [], "cycle": ["layers=cycle", "layers.ratio=0.5"],
            "twin_of_gqa": ["sharing=gqa", "ratio=0.5", "iso_baseline=true"]}  # fmt: skip
    for name, overrides in runs.items():
        run_task(nano_cfg(*overrides), tmp_path / name)
    configurations = find_configurations([tmp_path])
    cycle = next(c for c in configurations if c.description.get("layers") == "cycle")
    twin = iso_baseline(cycle, configurations)
    assert twin.sharing == "none" and not twin.iso_baseline  # never another configuration's twin
    header, rows, _ = table_rows(configurations, iso=True)
    row = next(r for r in rows if "cycle" in r[0])
    assert row[header.index("iso-param twin")].startswith("closest unshared: ")


def test_a_config_key_added_later_at_one_value_does_not_split_a_configuration(tmp_path):
    import json

    def record(folder: str, seed: int, config: dict) -> None:
        path = tmp_path / folder / f"seed={seed}" / "run.json"
        path.parent.mkdir(parents=True)
        run = {"status": "completed", "seed": seed, "sharing": {"name": "none"}, "config": {"seed": seed, **config}}
        path.write_text(json.dumps(current_record({**run, "metrics": {"val_loss": 2.0 + seed}})))

    record("old", 0, {"lr": 1})
    record("new", 1, {"lr": 1, "iso_compute": False})  # a run made after the suite added iso_compute
    (configuration,) = find_configurations([tmp_path])
    assert len(configuration.records) == 2
    # Where the new key tells runs apart, it still does; a run without it, whose value is unknown, stays apart.
    record("other", 2, {"lr": 1, "iso_compute": True})
    assert len(find_configurations([tmp_path])) == 3


def test_a_configuration_with_fewer_seeds_than_the_others_is_marked_as_lower_power(tmp_path):
    def record(scheme: str, seed: int, loss: float) -> None:
        path = tmp_path / scheme / f"seed={seed}" / "run.json"
        path.parent.mkdir(parents=True)
        config = {"seed": seed, "sharing": scheme, "arch": {"name": "gpt"}}
        sharing = {"name": scheme, "ratio": None, "layers": {"name": "none", "ratio": None}}
        path.write_text(json.dumps(current_record({"status": "completed", "seed": seed, "config": config,
                                                   "sharing": sharing, "metrics": {"val_loss": loss}})))  # fmt: skip

    for seed in range(4):
        record("none", seed, 3.0 + seed / 100)
        record("mqa", seed, 3.1 + seed / 100 + (seed % 2) / 1000)
    for seed in range(2):
        record("gqa", seed, 3.3 + seed / 1000)
    table = table_rows(find_configurations([tmp_path]))
    seeds = {row[0]: row[table.header.index("seeds")] for row in table.rows}
    assert seeds == {"sharing=none": "4", "sharing=mqa": "4", "sharing=gqa": "2†"}
    notes = " ".join(table.notes)
    assert "† fewer seeds than the table's most (4): lower power" in notes
    # Holm's correction runs within each family: here one comparison each, so neither is corrected at all
    assert ("Holm's correction within each of the table's two families: the 1 tested comparisons of the full-power "
            "configurations, and the 1 of those run at lower power") in notes  # fmt: skip
    assert "Minimal detectable effect of the full-power configurations" in notes
    assert "Minimal detectable effect of the lower-power configurations" in notes
    verdict = {row[0]: row[table.header.index("verdict vs sharing=none")] for row in table.rows}
    assert verdict["sharing=mqa"].startswith("worse") and verdict["sharing=gqa"].startswith("worse")


def test_conversions_of_a_checkpoint_are_judged_against_it_at_each_healing_budget(tmp_path):
    """A table per budget (scored as converted, healed N steps), each conversion against the unconverted model
    at the same budget, PostShare counted as a conversion."""
    from sharebench.report.collect import tables
    from sharebench.run.spec import key_declarations

    def record(name: str, seed: int, loss: float, config: dict, steps: int | None = None) -> None:
        path = tmp_path / f"{name},steps={steps}" / f"seed={seed}" / "run.json"
        path.parent.mkdir(parents=True)
        config = {
            "seed": seed,
            "pretrained": "<site-packages>/model.gguf",
            "arch": {"name": "llama"},
            "task": "pretrain" if steps else "evaluate",
            "trainer": {"max_steps": steps or 1000},
            "convert": {"to": None},
            "postshare_ratio": None,
            **config,
        }
        sharing = {"name": "gqa", "ratio": 0.667, "options": {}, "layers": {"name": "none", "ratio": None}}
        if config["postshare_ratio"] is not None:
            sharing["conversion"] = {"to": "postshare", "ratio": config["postshare_ratio"]}
        run = {
            "status": "completed",
            "seed": seed,
            "config": config,
            "metrics": {"test_loss_full": loss},
            "sharing": sharing,
            "config_keys": key_declarations(),
        }
        path.write_text(json.dumps(current_record(run | ({"compute": {"tokens_seen": 16 * steps}} if steps else {}))))

    for steps in (None, 16):
        for seed in range(3):
            record("base", seed, 3.0 + seed / 100 - (steps or 0) / 100, {}, steps)
            record("drop", seed, 3.5 + seed / 99 - (steps or 0) / 50, {"convert": {"to": "drop_layers"}}, steps)
    for seed in range(3):
        record("postshare", seed, 3.2 + seed / 98, {"postshare_ratio": 0.3}, 16)
    made = tables(find_configurations([tmp_path]), {})
    assert {"table-llama-before_healing", "table-llama-healed_16_steps"} <= set(made)
    for name, rows in (("before_healing", 2), ("healed_16_steps", 3)):
        table = made[f"table-llama-{name}"]
        verdicts = table.header.index(next(h for h in table.header if h.startswith("verdict vs")))
        assert len(table.rows) == rows and sum(row[verdicts] == "reference" for row in table.rows) == 1
        reference = next(row for row in table.rows if row[verdicts] == "reference")
        assert "drop_layers" not in reference[0] and "postshare_ratio=0.3" not in reference[0]
        assert all(row[verdicts].startswith("worse") for row in table.rows if row is not reference)
    healed = made["table-llama-healed_16_steps"]  # PostShare is named so, not by the checkpoint's grouped heads
    assert sorted(row[healed.header.index("sharing")] for row in healed.rows) == ["gqa", "gqa", "postshare"]


COMMITTED = sorted(p.parent.name for p in (PROJECT_ROOT / "results").glob("*/runs") if (p.parent / "table.md").exists())


@pytest.mark.slow
@pytest.mark.parametrize("result", COMMITTED)
def test_every_committed_table_rebuilds_from_its_records(result, tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)  # as its README rebuilds it: sharebench collect results/<name> --out …
    folder = Path("results") / result
    collect([folder], tmp_path, plots=False)
    for table in folder.glob("*.csv"):
        assert (tmp_path / table.name).read_text() == table.read_text(), table.name
    assert (tmp_path / "table.md").read_text() == (folder / "table.md").read_text()
    assert (tmp_path / "setting.md").read_text() == (folder / "setting.md").read_text()


def test_plots_of_configurations_told_apart_by_their_architecture_alone(tmp_path, corpus, cache_dir):
    from sharebench.report.plots import plot_all

    for arch in ("bert", "gpt"):
        cfg = compose([*nano_settings(corpus, cache_dir, tmp_path), f"arch={arch}"])
        run_task(cfg, tmp_path / "runs" / arch / "seed=0")
    configurations = find_configurations([tmp_path / "runs"])
    assert sorted(c.label for c in configurations) == ["arch=bert", "arch=gpt"]
    assert [p.name for p in plot_all(configurations[:1], tmp_path / "out")] == ["curves.png"]


def test_the_setting_lists_only_what_records_hold(tmp_path):
    from sharebench.report.collect import setting

    def record(name: str, **fields) -> None:
        path = tmp_path / name / "seed=0" / "run.json"
        path.parent.mkdir(parents=True)
        config = {"seed": 0, "task": name, "arch": {"name": "bert"}, "size": {"name": "s"}, "data": {"name": "d"}}
        path.write_text(json.dumps(current_record({"status": "completed", "seed": 0, "config": config, **fields})))

    record("pretrain", vocab_size=2048, metrics={"steps": 800})
    record("glue", metrics={"score": 0.7})  # a fine-tuning run: no vocabulary or training steps of its own
    text = setting(find_configurations([tmp_path]))
    assert "- vocabulary size: 2048\n" in text and "- training steps: 800\n" in text
    assert "- tokens in the splits (train, validation): not recorded\n" in text and "null" not in text


def test_the_setting_counts_the_runs_of_each_machine_where_they_differ(tmp_path):
    from sharebench.report.collect import setting

    for seed, cpu in enumerate(("Intel Xeon", "AMD EPYC", "AMD EPYC")):
        path = tmp_path / "run" / f"seed={seed}" / "run.json"
        path.parent.mkdir(parents=True)
        config = {"seed": seed, "task": "pretrain", "arch": {"name": "gpt"}}
        path.write_text(json.dumps(current_record({"status": "completed", "seed": seed, "config": config,
                                                   "hardware": {"cpu": cpu}, "vocab_size": 65})))  # fmt: skip
    text = setting(find_configurations([tmp_path]))
    assert "- hardware: cpu Intel Xeon (1 run); cpu AMD EPYC (2 runs)\n" in text
    assert "- vocabulary size: 65\n" in text  # one value: no count


# What trains: the report side (sharebench.report) imports none of it.
RUN_AND_MODEL = ("main", "board", "train", "run", "model", "data", "sharing", "layers")


def test_reporting_reads_records_only():
    """Results flow one way: collect, its tables, plots and the site read run records, never the config, the spec
    or the model that produced them (a record collected on another machine, or by a later version, reads the
    same). Held on the package graph, imports inside functions included (those for type checking aside), and on
    what importing the report side loads."""
    from tests.test_imports import imports

    graph = imports(type_checking=False)
    report = [module for module in graph if module.startswith("sharebench.report")]
    assert len(report) >= 8  # the package and its modules
    reached, pending = set(), list(report)
    while pending:
        for target in graph[pending.pop()] - reached:
            reached.add(target)
            pending.append(target)
    forbidden = {m for m in reached if m.split(".")[1] in RUN_AND_MODEL}
    assert not forbidden, f"the report side imports {sorted(forbidden)}"
    script = "import sys, sharebench.report.collect, sharebench.report.site; print(*sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "sharebench.report.collect" in loaded and "sharebench.schema" in loaded
    assert not {m for m in loaded if m.startswith("sharebench.") and m.split(".")[1] in RUN_AND_MODEL}
    assert "torch" not in loaded  # reading results needs no deep-learning stack


def test_small_multiples_keep_families_apart_and_panels_even():
    """The leaderboard's 8 within-layer schemes (partial_qk at two ratios) and 10 cross-layer ones, each with its
    twin: panels of at most 10 legend entries with the baseline, a family per panel, as even as the schemes allow."""
    from types import SimpleNamespace

    from sharebench.report.plots import MAX_LEGEND, even_cuts, family, panels, scheme_name

    within = ["gqa", "mhe_add", "mhe_mul", "mqa", "pairwise", "partial_qk", "shared_qkv", "symmetric"]
    across = [f"none+{s}" for s in ("all", "attn", "cla", "cycle", "cycle_rev", "ffn", "ffn_wide", "recursive_lora",
                                    "sandwich", "sequence")]  # fmt: skip
    configurations = [SimpleNamespace(sharing="none", iso_baseline=False)] + [
        SimpleNamespace(sharing=scheme, iso_baseline=twin)
        for scheme in within + across
        for twin in (False, True)
        for _ in range(2 if scheme == "partial_qk" else 1)
    ]
    groups = panels(configurations)
    sizes = [len(group) for group in groups]
    assert all(size <= MAX_LEGEND for size in sizes) and sum(sizes) == len(configurations) + len(groups) - 1
    assert all(scheme_name(group[0]) == "none" for group in groups)
    assert all(len({family(scheme_name(c)) for c in group[1:]}) == 1 for group in groups)
    assert sizes == [5, 7, 9, 7, 7, 9]  # 18 within-layer entries in three panels, 20 cross-layer ones in three
    assert even_cuts([2] * 10, 9) == (3, 6, 10) and even_cuts([12, 1], 9) == (1, 2) and even_cuts([], 9) == ()
    assert panels(configurations[:7]) == [configurations[:7]]  # what fits in one panel stays in one


def test_a_pareto_panel_spreads_its_own_points_and_the_line_between_them():
    import matplotlib.pyplot as plt

    from sharebench.report.plots import zoom

    figure, axis = plt.subplots()
    shown = [(700_000, 2.0, 0.05, None), (800_000, 2.1, 0.02, None)]
    line = [(200_000, 2.5, 0.1, None), (699_000, 1.9, 0.01, None), (750_000, 2.05, 0.0, None)]
    zoom(axis, shown, line)
    (left, right), (bottom, top) = axis.get_xlim(), axis.get_ylim()
    assert 690_000 <= left < 699_000 and 800_000 < right <= 810_000  # the far end of the line is outside
    assert 1.85 < bottom < 1.89 and 2.12 < top < 2.2  # the line's point beside the panel's first one is inside
    plt.close(figure)


def test_an_iso_compute_twin_is_drawn_apart_from_the_unshared_line(monkeypatch, tmp_path):
    """takase21's twin trained to the stacks' FLOPs, past the recipe's budget: off the line of unshared models at
    that budget, a half-filled point of its scheme; a dotted curve."""
    from sharebench.report import plots

    figures = []
    monkeypatch.setattr(plots, "save", lambda figure, path: figures.append(figure) or True)
    configurations = find_configurations([PROJECT_ROOT / "results" / "takase21" / "runs"])
    twin = next(c for c in configurations if c.iso_compute)
    style = plots.Styles(configurations)
    assert plots.plot_pareto(configurations, "training", tmp_path / "pareto.png", style)
    assert plots.plot_curves(configurations, tmp_path / "curves.png", style)
    lines = figures[0].axes[0].get_lines()
    (unshared,) = [line for line in lines if line.get_marker() == plots.BASELINE[1]]
    assert len(unshared.get_xdata()) == 1  # the vanilla model alone
    (half_filled,) = [line for line in lines if line.get_fillstyle() == "left"]
    assert half_filled.get_xdata()[0] == twin.mean_of("memory", "training_bytes") / 2**20
    assert [line.get_linestyle() for line in figures[1].axes[0].get_lines()].count(":") == 1


def test_a_far_point_is_left_out_of_the_range_that_spreads_the_others():
    from sharebench.report.plots import bulk

    assert bulk([136.1, 300.6, 139.0, 143.2, 57.0]) == (136.1, 143.2)  # ffn_wide's memory, a twin's at 57 MiB
    assert bulk([1.0, 2.0, 3.0, 10.0, 11.0, 12.0]) == (1.0, 12.0)  # two clusters: no bulk
    assert bulk([1.0, 1.1, 1.2, 5.0, 6.0, 7.0, 9.0]) == (1.0, 9.0)  # three far points are a cluster of their own
    assert bulk([5.0]) == (5.0, 5.0)
    assert bulk([1.0, 2.0, 3.0, 4.0]) == (1.0, 4.0)


def test_a_long_legend_label_is_wrapped_at_its_commas():
    from sharebench.report.plots import LEGEND_WIDTH, wrapped

    label = "layers=none,arch.norm_position=post,data.tokenizer.vocab_size=2048,optim.lr=0.001,size.dim=128 (n=5)"
    lines = wrapped(label).splitlines()
    assert len(lines) == 3 and all(len(line) <= LEGEND_WIDTH for line in lines)
    assert "".join(lines) == label and all(line.endswith(",") for line in lines[:-1])
    assert wrapped("sharing=none (n=3)") == "sharing=none (n=3)"
