"""The commands a user types: train.py runs and sweeps, `sharebench params` and `sharebench compare`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sharebench.errors import ConfigError
from tests.conftest import run_in_process


def train(project_root, *args: str, env_cache) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(project_root / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=project_root,
        env={**__import__("os").environ, "SHAREBENCH_CACHE": str(env_cache)},
    )


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_sweep_lands_each_run_in_its_own_folder(project_root, nano_overrides, tmp_path, cache_dir, launcher):
    result = train(
        project_root,
        "-m",
        "sharing=none,partial_qk",
        "ratio=0.5,0.9",
        "seed=0,1",
        f"hydra/launcher={launcher}",
        *[o for o in nano_overrides if not o.startswith("output_root")],
        f"output_root={tmp_path}",
        env_cache=cache_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted(tmp_path.rglob("run.json"))
    # none takes no ratio: it trains once per seed; partial_qk once per ratio and seed.
    assert len(records) == 6
    runs = [(path.parent, json.loads(path.read_text())) for path in records]
    assert len({folder for folder, _ in runs}) == 6
    assert sorted((r["sharing"]["name"], r["sharing"]["ratio"], r["seed"]) for _, r in runs) == [
        ("none", 0.0, 0),
        ("none", 0.0, 1),
        ("partial_qk", 0.5, 0),
        ("partial_qk", 0.5, 1),
        ("partial_qk", 0.9, 0),
        ("partial_qk", 0.9, 1),
    ]
    for folder, record in runs:
        assert record["status"] == "completed"
        assert folder.name == f"seed={record['seed']}"
        assert len(folder.parent.name) <= 200  # long override lists end in a hash
    assert result.stdout.count("takes no ratio") == 2


@pytest.mark.slow
def test_single_run_with_seed_zero_and_rerun_does_nothing(project_root, nano_overrides, tmp_path):
    args = [
        *[o for o in nano_overrides if not o.startswith("output_root")],
        f"output_root={tmp_path}",
        "seed=0",
    ]
    first = run_in_process(["train.py", "sharing=partial_qk", "ratio=0.9", *args], project_root)
    assert first.returncode == 0, first.stderr[-3000:]
    (record_path,) = tmp_path.rglob("run.json")
    record = json.loads(record_path.read_text())
    assert record["seed"] == 0 and record["config"]["seed"] == 0
    assert record_path.parent.name == "seed=0"
    assert record_path.parent.parent.name.startswith("size=nano,sharing=partial_qk,ratio=0.9,")
    for key in (
        "parameters",
        "flops_per_token",
        "speed",
        "memory",
        "checkpoint",
        "metrics",
        "compute",
        "git",
        "packages",
    ):
        assert record[key], key
    assert record["hardware"]["cpu_count"] >= 1
    done = [line for line in first.stdout.splitlines() if line.startswith("done: ")]
    assert done == [
        f"done: {tmp_path / record['run_dir']}: validation loss {record['metrics']['val_loss_full']:.4f} over the "
        f"whole validation split after 3 steps, "
        f"{record['parameters']['unique']:,} unique parameters, "
        f"{record['speed']['tokens_per_second']:,.0f} tokens/s, {record['wall_time_s']:,.0f} s"
    ]
    again = run_in_process(["train.py", "sharing=partial_qk", "ratio=0.9", *args], project_root)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert json.loads(record_path.read_text())["started_at"] == record["started_at"]


@pytest.mark.slow
def test_params_command_prints_json(project_root):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sharebench",
            "params",
            "arch=gpt",
            "size=nanogpt_char",
            "data=tinyshakespeare",
            "sharing=partial_qk",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project_root,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["vocab_size"] == 65 and counts["sharing"] == "partial_qk"
    assert counts["unique"] == sum(counts["by_component"].values())
    assert counts["total"] > counts["unique"]


def test_compare_lists_runs(nano_cfg, tmp_path):
    from sharebench.cli import compare
    from sharebench.train.tasks import run_task

    run_task(nano_cfg("sharing=none"), tmp_path / "a")
    run_task(nano_cfg("sharing=shared_qkv"), tmp_path / "b")
    table = compare([str(tmp_path)])
    assert "| sharing=none | 0 | completed |" in table and "| sharing=shared_qkv | 0 | completed |" in table
    assert "size" not in table and "output_root" not in table  # only what tells the runs apart
    row = next(line for line in table.splitlines() if line.startswith("| sharing=none "))
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert f"| {record['metrics']['val_loss_full']:.4f} |" in row  # the whole split beside the curve's sample


def test_params_needs_no_data(monkeypatch, tmp_path):
    from sharebench.cli import params

    monkeypatch.setenv("SHAREBENCH_DATA", str(tmp_path / "absent"))
    counts = params(["arch=bert", "size=bert-base", "sharing=shared_qkv"])
    assert counts["vocab_size"] == 8192 and counts["unique"] < counts["total"]  # the suite's WordPiece default
    with pytest.raises(ConfigError, match="char vocabulary is read off the data"):
        params(["arch=gpt", "data=tinyshakespeare"])


def test_a_run_prints_one_line_per_event(nano_cfg, tmp_path, capfd):
    from sharebench.train.tasks import run_task

    run_task(nano_cfg("trainer.max_steps=4", "trainer.val_check_interval=2", "sharing=gqa"), tmp_path)
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if not line.startswith("data: ")]  # a cold cache prepares data first
    assert lines[0].startswith(f"run: {tmp_path.resolve()}: sharing=gqa 0.5, ") and "unique parameters" in lines[0]
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["2/4", "4/4"]  # not a terminal
    assert lines[-1].startswith(f"done: {tmp_path.resolve()}: validation loss ")
    for noise in ("GPU available", "Tip:", "USDT", "LeafSpec", "Total FLOPs"):
        assert noise not in out + err


# The multi-node SLURM command of docs/running.md, and what submitit is asked for.
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
         "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=1440", "trainer.num_nodes=2",
         "trainer.devices=4", "trainer.strategy=ddp", "sharing=partial_qk", "ratio=0.9"]  # fmt: skip


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm"])
def test_the_documented_slurm_command_composes_into_its_submitit_parameters(launcher):
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate

    validate(compose([f"hydra/launcher={launcher}", *SLURM[1:]]), data=False)
    cfg = compose([f"hydra/launcher={launcher}", *SLURM[1:]], with_hydra=True)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (2, 4, "ddp")
    submitit = cfg.hydra.launcher
    assert submitit._target_.endswith("SlurmLauncher")
    assert (submitit.nodes, submitit.tasks_per_node, submitit.gpus_per_node, submitit.timeout_min) == (2, 4, 4, 1440)
    assert submitit.nodes * submitit.tasks_per_node == cfg.trainer.num_nodes * cfg.trainer.devices  # one per GPU


def test_a_launchers_settings_print_without_submitting(tmp_path):
    result = run_in_process(["train.py", *SLURM, "--cfg", "hydra", "--package", "hydra.launcher"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nodes: 2" in result.stdout and "tasks_per_node: 4" in result.stdout and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_printed_run_folder_is_taken_back_as_typed_relative_to_the_working_folder(project_root, nano_overrides,
                                                                                    tmp_path):  # fmt: skip
    from tests.conftest import FIXTURE_DATA

    def command(*args: str) -> subprocess.CompletedProcess:
        return run_in_process(args, tmp_path)

    kept = [o for o in nano_overrides if not o.startswith("output_root")]
    pretrained = command("train.py", "sharing=partial_qk", "ratio=0.5", *kept)
    assert pretrained.returncode == 0, pretrained.stderr[-3000:]
    (folder,) = [line.split(": ")[1] for line in pretrained.stdout.splitlines() if line.startswith("done: ")]
    assert "=" in folder and "," in folder
    relative = os.path.relpath(folder, tmp_path)  # relative paths are read from the working folder
    glue = command("train.py", "task=glue", f"pretrained={relative}", "glue.tasks=[rte]",
                   f"glue.source={FIXTURE_DATA / 'glue'}", "glue.recipe.epochs=1", "glue.predict_test=false",
                   "trainer.enable_progress_bar=false")  # fmt: skip
    assert glue.returncode == 0, glue.stderr[-3000:]
    (glue_folder,) = [line.split(": ")[1] for line in glue.stdout.splitlines() if line.startswith("done: ")]
    assert (Path(glue_folder) / "glue_summary.md").read_text().count("| std |") == 1
    infer = command("sharebench", "infer", folder)  # as printed
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert json.loads(infer.stdout)["weights_bytes"] > 0


def test_a_sweep_cannot_be_printed(capsys):
    from tests.conftest import train_in_process

    with pytest.raises(SystemExit) as stop:
        train_in_process(["-m", "sharing=none,partial_qk", "--cfg", "job"])
    assert stop.value.code == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "-m starts a sweep" in line


def test_a_run_folders_equals_and_commas_are_quoted_for_hydra(tmp_path):
    from sharebench.main import quote_paths

    folder = tmp_path / "sharing=partial_qk,ratio=0.9" / "seed=0"
    folder.mkdir(parents=True)
    comma_only = tmp_path / "a,b"
    comma_only.mkdir()
    assert quote_paths([f"pretrained={folder}", f"pretrained={comma_only}", "sharing=none,partial_qk",
                        "pretrained=x,y", "pretrained='q=1'"]) == [
        f"pretrained='{folder}'", f"pretrained='{comma_only}'", "sharing=none,partial_qk", "pretrained=x,y",
        "pretrained='q=1'"]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [(["hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'; valid choices: basic, joblib, slurm"),
     (["hydra/launcher=slurm", "hydra.launcher.nodez=2"], "Key 'nodez' not in 'SlurmQueueConf'"),
     (["-m", "sharing=none,gqa", "hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'")],
)  # fmt: skip
def test_hydras_own_mistakes_are_one_line_and_exit_2(overrides, expected, capsys):
    from tests.conftest import train_in_process

    with pytest.raises(SystemExit) as stop:
        train_in_process(overrides)
    line = capsys.readouterr().err
    assert stop.value.code == 2 and line.count("\n") == 1 and expected in line, line


def test_help_lists_every_command(capsys):
    from sharebench.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    choices = re.search(r"\{([a-z,]+)\}", listed).group(1).split(",")  # argparse's list of the commands
    assert choices == ["train", "params", "compare", "collect", "power", "site", "board", "upgrade", "convert",
                       "generate", "infer", "export", "data"]  # fmt: skip
    for command in choices:  # each with its help line
        assert re.search(rf"^\s+{command}\s+\S", listed, re.MULTILINE), command
