"""Reliability: a killed run resumes to the same result, reruns are bit-identical, sweeps skip finished runs,
a failing run of a sweep is recorded while the others complete, and DDP matches one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharebench import load_pretrained
from sharebench.collect import collect

RESUME_STEPS = 120


def command(project_root: Path, overrides: list[str], output_root: Path, *extra: str) -> list[str]:
    kept = [o for o in overrides if not o.startswith(("output_root", "trainer.max_steps", "trainer.val_check"))]
    return [
        sys.executable, str(project_root / "train.py"), *kept, f"trainer.max_steps={RESUME_STEPS}",
        "trainer.val_check_interval=20", "trainer.deterministic=true", "data.batch_size=16",
        f"output_root={output_root}", *extra,
    ]  # fmt: skip


def record_of(output_root: Path) -> dict:
    (path,) = output_root.rglob("run.json")
    return json.loads(path.read_text())


def test_killed_run_resumes_to_the_same_result(project_root, nano_overrides, tmp_path):
    reference = subprocess.run(
        command(project_root, nano_overrides, tmp_path / "whole"), capture_output=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    args = command(project_root, nano_overrides, interrupted)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(interrupted.rglob("last.ckpt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(interrupted.rglob("last.ckpt")), "no checkpoint was written before the kill"
    assert record_of(interrupted)["status"] == "running"  # killed for real, mid-run

    resumed = subprocess.run(args, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = record_of(tmp_path / "whole"), record_of(interrupted)
    assert again["status"] == "completed" and again["metrics"]["steps"] == RESUME_STEPS
    assert again["metrics"]["val_loss"] == whole["metrics"]["val_loss"]  # identical on CPU, deterministic mode
    assert again["metrics"]["val_history"] == whole["metrics"]["val_history"]


def test_same_seed_gives_bit_identical_loss_curves(nano_cfg, tmp_path):
    from sharebench.pretrain import run

    def curve(folder: Path, seed: int) -> list[str]:
        run(nano_cfg(f"seed={seed}", "trainer.max_steps=12", "trainer.log_every_n_steps=1",
                     "trainer.deterministic=true"), folder)  # fmt: skip
        return (folder / "logs" / "metrics.csv").read_text().splitlines()

    first, second = curve(tmp_path / "a", 0), curve(tmp_path / "b", 0)
    assert len(first) > 12 and first == second
    assert curve(tmp_path / "c", 1) != first


def test_rerun_sweep_skips_completed_runs_and_records_failures(project_root, nano_overrides, tmp_path):
    kept = [o for o in nano_overrides if not o.startswith(("output_root", "data.max_validation_chars"))]
    # max_validation_chars=20 leaves the validation split shorter than one block: that run fails after it started.
    args = [sys.executable, str(project_root / "train.py"), "-m", "sharing=none,symmetric",
            "data.max_validation_chars=20,null", *kept, f"output_root={tmp_path}"]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode != 0  # a sweep with a failed run says so
    records = {p.parent: json.loads(p.read_text()) for p in tmp_path.rglob("run.json")}
    statuses = sorted(r["status"] for r in records.values())
    assert statuses == ["completed", "completed", "failed", "failed"]
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert all("fewer than one block" in r["error"] for r in failed)
    report = collect([tmp_path])  # the table of a sweep lists its failed runs
    assert "still running): 2" in report and report.count("fewer than one block") == 2

    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.stdout.count("already completed") == 2
    for folder, record in records.items():
        if record["status"] == "completed":
            assert json.loads((folder / "run.json").read_text())["started_at"] == record["started_at"]


@pytest.mark.skipif(os.cpu_count() is None, reason="needs processes")
def test_ddp_on_two_cpu_processes_matches_one_process(project_root, nano_overrides, tmp_path):
    common = [
        "arch=gpt", "arch.dropout=0", "arch.attention_dropout=0", "data.batch_size=8", "trainer.max_steps=6",
        "trainer.val_check_interval=6", "trainer.accelerator=cpu",
    ]  # fmt: skip
    kept = [o for o in nano_overrides if not o.startswith(("output_root", "data.batch_size", "trainer.max_steps",
                                                             "trainer.val_check"))]  # fmt: skip
    losses = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tmp_path / f"devices{devices}"
        result = subprocess.run(
            [sys.executable, str(project_root / "train.py"), *kept, *common, f"trainer.devices={devices}",
             f"trainer.strategy={strategy}", f"output_root={out}"],
            capture_output=True, text=True, timeout=600, cwd=project_root,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        record = record_of(out)
        assert record["status"] == "completed" and record["speed"]["world_size"] == devices
        losses[devices] = record["metrics"]["val_loss"]
        model = load_pretrained(Path(record["run_dir"]))
        assert model.head.decoder.weight is model.transformer.embeddings.tokens.weight  # still one tensor
        assert model.parameter_counts().unique == record["parameters"]["unique"]
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)
