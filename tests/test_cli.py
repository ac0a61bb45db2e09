"""The commands a user types: train.py runs and sweeps, `sharebench params` and `sharebench compare`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sharebench.errors import ConfigError


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
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
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
def test_single_run_with_seed_zero_and_rerun_does_nothing(project_root, nano_overrides, tmp_path, cache_dir):
    args = [
        *[o for o in nano_overrides if not o.startswith("output_root")],
        f"output_root={tmp_path}",
        "seed=0",
    ]
    first = train(project_root, "sharing=partial_qk", "ratio=0.9", *args, env_cache=cache_dir)
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
        "git",
        "packages",
    ):
        assert record[key], key
    assert record["hardware"]["cpu_count"] >= 1
    done = [line for line in first.stdout.splitlines() if line.startswith("done: ")]
    assert done == [
        f"done: {record['run_dir']}: validation loss {record['metrics']['val_loss']:.4f} after 3 steps, "
        f"{record['parameters']['unique']:,} unique parameters, "
        f"{record['speed']['tokens_per_second']:,.0f} tokens/s, {record['wall_time_s']:,.0f} s"
    ]
    again = train(project_root, "sharing=partial_qk", "ratio=0.9", *args, env_cache=cache_dir)
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
    from sharebench.tasks import run_task

    run_task(nano_cfg("sharing=none"), tmp_path / "a")
    run_task(nano_cfg("sharing=shared_qkv"), tmp_path / "b")
    table = compare([str(tmp_path)])
    assert "| sharing=none | 0 | completed |" in table and "| sharing=shared_qkv | 0 | completed |" in table
    assert "size" not in table and "output_root" not in table  # only what tells the runs apart


def test_params_needs_no_data(monkeypatch, tmp_path):
    from sharebench.cli import params

    monkeypatch.setenv("SHAREBENCH_DATA", str(tmp_path / "absent"))
    counts = params(["arch=bert", "size=bert-base", "sharing=shared_qkv"])
    assert counts["vocab_size"] == 8192 and counts["unique"] < counts["total"]  # the suite's WordPiece default
    with pytest.raises(ConfigError, match="char vocabulary is read off the data"):
        params(["arch=gpt", "data=tinyshakespeare"])


def test_a_run_prints_one_line_per_event(nano_cfg, tmp_path, capfd):
    from sharebench.tasks import run_task

    run_task(nano_cfg("trainer.max_steps=4", "trainer.val_check_interval=2", "sharing=gqa"), tmp_path)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"run: {tmp_path.resolve()}: sharing=gqa 0.5, ") and "unique parameters" in lines[0]
    assert [line.split()[1] for line in lines if line.startswith("step ")] == ["2/4", "4/4"]  # not a terminal
    assert lines[-1].startswith(f"done: {tmp_path.resolve()}: validation loss ")
    for noise in ("GPU available", "Tip:", "USDT", "LeafSpec", "Total FLOPs"):
        assert noise not in out + err
