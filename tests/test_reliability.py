"""Reliability: a killed run resumes to the same result, reruns are bit-identical, sweeps skip finished runs,
a failing run of a sweep is recorded while the others complete, and DDP matches one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharebench import load_pretrained
from sharebench.report.collect import collect
from tests.conftest import nano_settings

RESUME_STEPS = 60
# Runs train.py, sending the process itself a signal inside the training step that reaches `step` in the run
# with seed `seed`.
STOPPER = """
import os, runpy, signal, sys
from sharebench.train.pretrain import PretrainModule
step, signum, seed = (int(sys.argv.pop(1)) for _ in range(3))
del sys.argv[0]  # "-c": train.py reads its overrides from sys.argv[1:]
train_step = PretrainModule.training_step
def stopping_step(self, batch, batch_idx):
    if self.global_step == step and self.seed == seed:
        os.kill(os.getpid(), signum)
    return train_step(self, batch, batch_idx)
PretrainModule.training_step = stopping_step
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def command(project_root: Path, overrides: list[str], output_root: Path, *extra: str) -> list[str]:
    kept = [o for o in overrides if not o.startswith(("output_root", "trainer.max_steps", "trainer.val_check"))]
    return [
        str(project_root / "train.py"), *kept, f"trainer.max_steps={RESUME_STEPS}", "trainer.val_check_interval=20",
        "trainer.log_every_n_steps=1", "trainer.deterministic=true", "data.batch_size=16",
        f"output_root={output_root}", *extra,
    ]  # fmt: skip


def record_of(output_root: Path) -> dict:
    (path,) = output_root.rglob("run.json")
    return json.loads(path.read_text())


def metrics_rows(output_root: Path) -> list[str]:
    (path,) = output_root.rglob("metrics.csv")
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def whole_run(project_root, corpus, cache_dir, tmp_path_factory) -> Path:
    """The reference: the resume tests' run, never stopped."""

    output_root = tmp_path_factory.mktemp("whole")
    args = command(project_root, nano_settings(corpus, cache_dir, output_root), output_root)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return output_root


def stopped_at(args: list[str], step: int, signum: int, seed: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STOPPER, str(step), str(signum), str(seed), *args],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stopped_run_resumes_to_the_same_result(project_root, nano_overrides, tmp_path, whole_run, signum):
    """Stopped at step 30 of 60, between the validations at 20 and 40: SIGKILL loses the steps after the
    checkpoint at 20, SIGTERM and SIGINT save one at the step boundary and say so. Resumed, the run ends with
    the whole run's validation loss and its loss curve, no step missing or repeated."""
    stopped = tmp_path / "stopped"
    args = command(project_root, nano_overrides, stopped)
    first = stopped_at(args, 30, signum)
    record = record_of(stopped)
    checkpoint = next(stopped.rglob("checkpoints/last.ckpt"))
    if signum == signal.SIGKILL:
        assert first.returncode == -signal.SIGKILL and record["status"] == "running"
        assert torch.load(checkpoint, weights_only=True)["global_step"] == 20
    else:
        assert first.returncode == 128 + signum, first.stderr[-2000:]
        assert record["status"] == "interrupted"
        assert torch.load(checkpoint, weights_only=True)["global_step"] == 31  # the step it was in, finished
        assert first.stderr.strip().splitlines()[-1] == (
            f"interrupted: {signum.name} at step 31: checkpoint saved in {checkpoint}; the same command resumes"
        )

    resumed = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning: the suite's sampler does resume
    whole, again = record_of(whole_run), record_of(stopped)
    assert again["status"] == "completed" and again["metrics"]["steps"] == RESUME_STEPS
    assert again["metrics"]["val_history"] == whole["metrics"]["val_history"]  # bit-identical on CPU
    assert metrics_rows(stopped) == metrics_rows(whole_run)
    assert [p.name for p in stopped.rglob("checkpoints/*")] == ["last.ckpt"]  # done: no fallback kept


def test_a_run_with_checkpoints_until_completed_keeps_none_once_completed(nano_cfg, tmp_path):
    """Which checkpoints a run keeps is not part of its configuration: a completed run started again with another
    setting is skipped, and removes them."""
    from sharebench.train.tasks import run_task

    run_task(nano_cfg(), tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]
    written = json.loads((tmp_path / "run.json").read_text())
    assert run_task(nano_cfg("checkpoints=until_completed"), tmp_path) == written
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_a_run_without_checkpoints_stopped_starts_over(project_root, nano_overrides, tmp_path, whole_run):
    stopped = tmp_path / "stopped"
    args = command(project_root, nano_overrides, stopped, "checkpoints=none")
    first = stopped_at(args, 30, signal.SIGTERM)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-2000:]
    assert first.stderr.strip().splitlines()[-1] == "interrupted: SIGTERM at step 31: the same command runs it again"
    assert not list(stopped.rglob("checkpoints"))
    resumed = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert record_of(stopped)["metrics"]["val_history"] == record_of(whole_run)["metrics"]["val_history"]
    assert not list(stopped.rglob("checkpoints"))


@pytest.mark.slow
def test_killed_sweep_resumes_its_run_and_skips_the_completed(project_root, nano_overrides, tmp_path, whole_run):
    """A sweep of two runs killed in its second run (at step 30 of 60): started again, it skips the first and
    resumes the second to the result of a run never stopped."""
    sweep = tmp_path / "sweep"
    script, *overrides = command(project_root, nano_overrides, sweep)
    args = [script, "-m", *overrides, "seed=1,0"]
    killed = stopped_at(args, 30, signal.SIGKILL, seed=0)
    assert killed.returncode == -signal.SIGKILL
    started = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.rglob("run.json")}
    assert started == {"seed=1": "completed", "seed=0": "running"}

    again = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already completed") == 1
    (resumed,) = [json.loads(p.read_text()) for p in sweep.rglob("seed=0/run.json")]
    assert resumed["metrics"]["val_history"] == record_of(whole_run)["metrics"]["val_history"]
    (curve,) = sweep.rglob("seed=0/logs/metrics.csv")
    assert curve.read_text().splitlines() == metrics_rows(whole_run)


@pytest.mark.slow
def test_damaged_checkpoint_falls_back_to_the_previous_one(project_root, nano_overrides, tmp_path, whole_run):
    stopped = tmp_path / "stopped"
    args = command(project_root, nano_overrides, stopped)
    stopped_at(args, 50, signal.SIGKILL)  # after the checkpoints at 20 and 40
    newest = next(stopped.rglob("checkpoints/last.ckpt"))
    newest.write_bytes(newest.read_bytes()[:1000])  # as a full disk leaves it

    resumed = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    previous = newest.with_name("previous.ckpt")
    assert f"{newest} is damaged (empty or truncated); kept as last.ckpt.damaged" in resumed.stdout
    assert f"resuming from {previous} (step 20); the newer checkpoint was damaged" in resumed.stdout
    assert record_of(stopped)["metrics"]["val_history"] == record_of(whole_run)["metrics"]["val_history"]
    assert metrics_rows(stopped) == metrics_rows(whole_run)


@pytest.mark.slow
def test_second_start_of_a_running_run_is_refused(project_root, nano_overrides, tmp_path):
    """A second start of a run that another process holds is refused; in a sweep that run is left to its holder
    and the sweep goes on, so two sweeps over the same runs share them."""
    from sharebench.lock import RunLock

    output_root = tmp_path / "busy"
    args = command(project_root, nano_overrides, output_root, "seed=0,1")
    first = subprocess.run([sys.executable, args[0], "-m", *args[1:]], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    held, other = sorted(output_root.rglob("seed=*"))
    (held / "run.json").unlink()  # not completed: a start would train it again
    in_use = f"{held} is in use by process {os.getpid()}; wait for it to end or stop it"
    with RunLock(held):
        single = subprocess.run([sys.executable, *args[:-1], "seed=0"], capture_output=True, text=True, timeout=600)
        sweep = subprocess.run([sys.executable, args[0], "-m", *args[1:]], capture_output=True, text=True, timeout=600)
    assert single.returncode == 2 and single.stderr.strip() == f"error: {in_use}"
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert f"skipped: {in_use}" in sweep.stdout and f"{other} already completed" in sweep.stdout
    assert not (held / "run.json").exists()


def test_same_seed_gives_bit_identical_loss_curves(nano_cfg, tmp_path):
    from sharebench.train.tasks import run_task

    def curve(folder: Path, seed: int) -> list[str]:
        run_task(nano_cfg(f"seed={seed}", "trainer.max_steps=12", "trainer.log_every_n_steps=1",
                     "trainer.deterministic=true"), folder)  # fmt: skip
        return (folder / "logs" / "metrics.csv").read_text().splitlines()

    first, second = curve(tmp_path / "a", 0), curve(tmp_path / "b", 0)
    assert len(first) > 12 and first == second
    assert curve(tmp_path / "c", 1) != first


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(os.cpu_count() is None, reason="needs processes")
@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_ddp_on_two_cpu_processes_matches_one_process(arch, project_root, nano_overrides, tmp_path):
    """Lightning's DDP, as docs/running.md types it. A causal LM's processes predict as many tokens each, so their
    mean loss is the whole batch's and the runs agree to float precision; a masked LM's processes mask different
    numbers of tokens, so its runs agree closely but not exactly (tests/test_distributed.py checks every scheme
    with equal counts, exactly)."""
    common = [
        f"arch={arch}", "arch.dropout=0", "arch.attention_dropout=0", "data.batch_size=8", "trainer.max_steps=6",
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
        model = load_pretrained(out / record["run_dir"])  # run_dir is relative to the output root
        assert model.head.decoder.weight is model.transformer.embeddings.tokens.weight  # still one tensor
        assert model.parameter_counts().unique == record["parameters"]["unique"]
    assert losses[2] == pytest.approx(losses[1], rel=1e-5 if arch == "gpt" else 1e-2)


def test_records_weights_and_caches_get_the_users_file_mode(nano_cfg, tmp_path):
    from sharebench.paths import FILE_MODE
    from sharebench.train.tasks import run_task

    cfg = nano_cfg(f"cache_dir={tmp_path / 'cache'}")
    run_task(cfg, tmp_path / "run")
    files = [tmp_path / "run" / name for name in ("run.json", "model.safetensors", "model.json")]
    files += list((tmp_path / "cache").rglob("*.json")) + list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) > 4
    for path in files:
        assert path.stat().st_mode & 0o777 == FILE_MODE, path


def test_a_run_records_the_tokenizer_it_used(nano_cfg, tmp_path):
    import hashlib

    from sharebench.train.tasks import run_task

    record = run_task(nano_cfg(), tmp_path / "run")
    saved = (tmp_path / "run" / "tokenizer.json").read_bytes()
    assert record["tokenizer"] == {
        "kind": "wordpiece", "vocab_size": record["vocab_size"], "sha256": hashlib.sha256(saved).hexdigest()
    }  # fmt: skip


def test_a_run_hands_back_the_signal_handlers_it_found(nano_cfg, tmp_path):
    """After training, SIGTERM ends the process as before it: neither Lightning's handler (which only logs it)
    nor the suite's is left behind."""
    from sharebench.train.tasks import run_task

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    run_task(nano_cfg(), tmp_path / "run")
    assert {signum: signal.getsignal(signum) for signum in before} == before
