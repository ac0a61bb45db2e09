"""The fault catalogue (docs/errors.md, "Faults mid-run"): each fault of the machine is injected into a nano run,
in this process where it can be. It must end in one line naming the fault and what to do, with the stated exit
status; leave no temporary file; leave run.json true (failed, interrupted or diverged); and the same command must
then resume from the last good checkpoint to the result of a run never stopped."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from sharebench.train.pretrain import PretrainModule
from tests.conftest import nano_settings, train_in_process

STEPS, EVERY = 12, 4  # checkpoints at steps 4, 8 and 12
FAULT = 3  # exit statuses (docs/errors.md)
DIVERGED = 4


def overrides(corpus: Path, cache_dir: Path, output_root: Path) -> list[str]:
    kept = [o for o in nano_settings(corpus, cache_dir, output_root) if not o.startswith("trainer.")]
    return [*kept, f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={EVERY}", "trainer.limit_val_batches=2",
            "trainer.log_every_n_steps=1", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false"]  # fmt: skip


def start(argv: list[str]) -> int:
    """`python train.py <argv>` in this process; its exit status."""
    try:
        train_in_process(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def run_dir(output_root: Path) -> Path:
    (record,) = output_root.rglob("run.json")
    return record.parent


def record_of(output_root: Path) -> dict:
    return json.loads((run_dir(output_root) / "run.json").read_text())


def curve(output_root: Path) -> list[str]:
    return (run_dir(output_root) / "logs" / "metrics.csv").read_text().splitlines()


def leftovers(output_root: Path) -> list[str]:
    return [p.name for p in output_root.rglob("*.tmp")]


@pytest.fixture(scope="module")
def whole(corpus, cache_dir, tmp_path_factory) -> Path:
    """The reference run, never stopped."""
    output_root = tmp_path_factory.mktemp("whole")
    assert start(overrides(corpus, cache_dir, output_root)) == 0
    return output_root


@pytest.fixture
def argv(corpus, cache_dir, tmp_path) -> list[str]:
    return overrides(corpus, cache_dir, tmp_path / "outputs")


def nth_call(count: int, action: Callable[..., None], original: Callable) -> Callable:
    """`original`, except that its `count`-th call and every later one runs `action(*args)` first."""
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls >= count:
            action(*args, **kwargs)
        return original(*args, **kwargs)

    return wrapped


def at_step(step: int, action: Callable[[], None]) -> Callable:
    """A training step that runs `action` first at global step `step`."""
    original = PretrainModule.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step:
            action()
        return original(self, batch, batch_idx)

    return training_step


def disk_full(trainer, path, *args, **kwargs) -> None:
    Path(path).write_bytes(b"\0" * 1000)  # what a full disk leaves of the file being written
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def no_memory() -> None:
    torch.empty(2**50, dtype=torch.uint8)  # a real allocation that fails: 1 PiB


def io_error(dataset, item) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO), "corpus/train-00000-of-00001.parquet")


def inject(monkeypatch: pytest.MonkeyPatch, fault: str, output_root: Path) -> None:
    """Makes the next start meet `fault`."""
    from sharebench import paths
    from sharebench.data.corpora import BlockDataset

    if fault == "disk full at a checkpoint write":  # the second checkpoint (step 8)
        monkeypatch.setattr(L.Trainer, "save_checkpoint", nth_call(2, disk_full, L.Trainer.save_checkpoint))
    elif fault in ("disk full at the record write", "output folder made unwritable"):
        error = errno.ENOSPC if fault.startswith("disk") else errno.EACCES
        original = paths.atomic_write_bytes

        def write(path: Path, content: bytes) -> None:
            if fault.startswith("disk") and b'"completed"' in content or write.failing:  # type: ignore[attr-defined]
                write.failing = True  # type: ignore[attr-defined]  # the disk stays full until the user acts
                raise OSError(error, os.strerror(error), str(path))
            original(path, content)

        write.failing = False  # type: ignore[attr-defined]
        monkeypatch.setattr(paths, "atomic_write_bytes", write)
        if fault == "output folder made unwritable":  # at the second checkpoint the folder is read-only

            def unwritable(trainer, path, *args, **kwargs) -> None:
                write.failing = True  # type: ignore[attr-defined]
                raise OSError(error, os.strerror(error), str(path))

            monkeypatch.setattr(L.Trainer, "save_checkpoint", nth_call(2, unwritable, L.Trainer.save_checkpoint))
    elif fault in ("a data loader that raises", "a corrupted last.ckpt"):  # after the checkpoints at 4 and 8
        monkeypatch.setattr(
            BlockDataset, "__getitem__", nth_call(4 * 9 + 2 * 4 * 4, io_error, BlockDataset.__getitem__)
        )
    elif fault == "out of memory":
        monkeypatch.setattr(PretrainModule, "training_step", at_step(10, no_memory))
    else:
        raise AssertionError(fault)


# The fault, the line's pattern, what run.json says after it, the step the next start resumes from.
CATALOGUE = {
    "disk full at a checkpoint write": (
        r"no space left on device \(.*/checkpoints/last\.ckpt\.tmp\): the run stopped \(run\.json says failed\)\. "
        r"Free space on that disk, then run the same command: it resumes from step 4", "failed", 4),
    "disk full at the record write": (
        r"no space left on device \(.*/run\.json\): the run stopped \(its run\.json could not be written; the next "
        r"start marks it interrupted\)\. Free space on that disk, then run the same command: it resumes from step 12",
        "running", 12),
    "output folder made unwritable": (
        r"permission denied \(.*/last\.ckpt\.tmp\): the run stopped \(its run\.json could not be written; the next "
        r"start marks it interrupted\)\. Make that folder writable again, then run the same command: it resumes "
        r"from step 4", "running", 4),
    "a data loader that raises": (
        r"I/O error \(corpus/train-00000-of-00001\.parquet\): Input/output error: the run stopped \(run\.json says "
        r"failed\)\. Check that disk or network file system, then run the same command: it resumes from step 8",
        "failed", 8),
    "out of memory": (
        r"out of memory \(.*DefaultCPUAllocator: can't allocate memory.*\): the run stopped \(run\.json says "
        r"failed\)\. Free memory \(another process may hold it\), then run the same command: it resumes from "
        r"step 8", "failed", 8),
    "a corrupted last.ckpt": (r"I/O error .* it resumes from step 8", "failed", 4),
}  # fmt: skip


@pytest.mark.parametrize("fault", CATALOGUE)
def test_a_fault_ends_in_one_line_and_the_same_command_resumes(fault, argv, whole, tmp_path, monkeypatch, capsys):
    pattern, status, resumed_from = CATALOGUE[fault]
    output_root = tmp_path / "outputs"
    with monkeypatch.context() as patched:
        inject(patched, fault, output_root)
        assert start(argv) == FAULT
    stderr = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch("fault: " + pattern, stderr[-1]), stderr[-1]
    assert not leftovers(output_root)
    record = record_of(output_root)
    assert record["status"] == status
    if status == "failed":
        assert record["error"].startswith(("OSError", "RuntimeError")) and "Traceback" in record["traceback"]

    if fault == "a corrupted last.ckpt":
        newest = run_dir(output_root) / "checkpoints" / "last.ckpt"
        newest.write_bytes(newest.read_bytes()[:1000])
    assert start(argv) == 0
    said = capsys.readouterr().out
    if status == "running":
        assert "said running, but no process held the run: marked interrupted" in said
    if fault == "a corrupted last.ckpt":
        assert f"resuming from {newest.with_name('previous.ckpt')} (step {resumed_from})" in said
    again = record_of(output_root)
    assert again["status"] == "completed" and again["metrics"]["steps"] == STEPS
    assert again["metrics"]["val_history"] == record_of(whole)["metrics"]["val_history"]
    assert again["metrics"]["val_loss_full"] == record_of(whole)["metrics"]["val_loss_full"]
    assert curve(output_root) == curve(whole)
    assert not leftovers(output_root)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_at_a_step_and_the_same_command_resumes(signum, argv, whole, tmp_path, monkeypatch,
                                                                        capsys):  # fmt: skip
    """In this process, so the fast tier covers resuming (test_reliability sends the signal from outside)."""
    output_root = tmp_path / "outputs"
    with monkeypatch.context() as patched:
        patched.setattr(PretrainModule, "training_step", at_step(6, lambda: os.kill(os.getpid(), signum)))
        assert start(argv) == 128 + signum
    said = capsys.readouterr()
    folder = run_dir(output_root)
    checkpoint = folder / "checkpoints" / "last.ckpt"
    assert f"checkpoint saved in {checkpoint}; the same command resumes" in said.err + said.out
    stopped = record_of(output_root)
    assert stopped["status"] == "interrupted" and not leftovers(output_root)
    began = time.perf_counter()
    assert start(argv) == 0
    second = time.perf_counter() - began
    again = record_of(output_root)
    assert again["status"] == "completed" and again["metrics"]["steps"] == STEPS
    # The whole run's time: its first start's, then the second's (less the setup before its run began).
    assert stopped["wall_time_s"] < again["wall_time_s"] < stopped["wall_time_s"] + second
    assert again["metrics"]["val_history"] == record_of(whole)["metrics"]["val_history"]
    assert again["metrics"]["val_loss_full"] == record_of(whole)["metrics"]["val_loss_full"]
    assert curve(output_root) == curve(whole)


def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(argv, whole, tmp_path, monkeypatch, capsys):
    """In this process, so the fast tier covers the fallback: stopped at step 10 (checkpoints at 8, then at the
    stop), the newest checkpoint cut short as a full disk leaves it, the run resumes from step 8 to the result
    of a run never stopped."""
    output_root = tmp_path / "outputs"
    with monkeypatch.context() as patched:
        patched.setattr(PretrainModule, "training_step", at_step(10, lambda: os.kill(os.getpid(), signal.SIGTERM)))
        assert start(argv) == 128 + signal.SIGTERM
    newest = run_dir(output_root) / "checkpoints" / "last.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert start(argv) == 0
    said = capsys.readouterr().out
    previous = newest.with_name("previous.ckpt")
    assert f"{newest} is damaged (empty or truncated); kept as last.ckpt.damaged" in said
    assert f"resuming from {previous} (step 8); the newer checkpoint was damaged" in said
    again = record_of(output_root)
    assert again["metrics"]["val_history"] == record_of(whole)["metrics"]["val_history"]
    assert curve(output_root) == curve(whole)


def test_a_sweep_searches_its_rate_and_started_again_skips_every_run(argv, tmp_path, capsys):
    """In this process, so the fast tier covers the sweeper: a rate searched on seed 0 over two rates, seed 1 at
    the choice; the same command again runs nothing."""
    sweep = [
        "-m",
        *argv,
        "seed=0,1",
        "lr_grid=factor2",
        "lr_grid.factors=[0.5,2.0]",
        "lr_grid.seeds=1",
        "lr_grid.extend=0",
        "lr_grid.plateau=null",
    ]  # twelve steps leave the unigram loss by less than its margin
    assert start(sweep) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("run.json")]
    rates = sorted((r["seed"], r["config"]["optim"]["lr"]) for r in records)
    assert [seed for seed, _ in rates] == [0, 0, 1] and all(r["status"] == "completed" for r in records)
    searched = {
        lr: r["metrics"]["val_loss_full"] for r in records if r["seed"] == 0 for lr in [r["config"]["optim"]["lr"]]
    }
    assert rates[-1][1] == min(searched, key=searched.get)  # seed 1 at the rate with seed 0's lowest loss
    capsys.readouterr()
    assert start(sweep) == 0
    assert capsys.readouterr().out.count("already completed") == 3


def test_a_bug_keeps_its_traceback_and_is_recorded_as_failed(argv, tmp_path, monkeypatch):
    """Not every error is a fault: one the suite does not expect is raised as it is, and recorded."""

    def bug() -> None:
        raise ValueError("a bug in a training step")

    monkeypatch.setattr(PretrainModule, "training_step", at_step(2, bug))
    with pytest.raises(ValueError, match="a bug in a training step"):
        start(argv)
    record = record_of(tmp_path / "outputs")
    assert record["status"] == "failed" and record["error"] == "ValueError: a bug in a training step"
    assert 'raise ValueError("a bug in a training step")' in record["traceback"]


def test_a_non_finite_loss_ends_the_run_as_diverged(argv, tmp_path, monkeypatch, capsys):
    def nan_loss(self, batch, batch_idx):
        return self.model(**batch).loss * (float("nan") if self.global_step == 6 else 1.0)

    monkeypatch.setattr(PretrainModule, "training_step", nan_loss)
    assert start(argv) == DIVERGED
    folder = run_dir(tmp_path / "outputs")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"diverged: {folder}: the training loss is nan at step 7; run.json says diverged (a lower optim.lr than "
        f"0.0005 may train)"
    )
    record = record_of(tmp_path / "outputs")
    assert record["status"] == "diverged" and record["diverged"] == {"step": 7, "reason": "the training loss is nan"}
    assert not leftovers(tmp_path / "outputs")
    # A diverged run is a result: the same command does not train it again.
    assert start(argv) == DIVERGED
    assert f"{folder} already diverged; nothing to do" in capsys.readouterr().out


def test_a_loss_above_the_stated_multiple_of_the_unigram_loss_past_warm_up_is_diverged(argv, tmp_path, capsys):
    assert start([*argv, "diverged_above=0.5"]) == DIVERGED
    record = record_of(tmp_path / "outputs")
    unigram = record["unigram_val_loss"]
    assert record["status"] == "diverged" and record["diverged"]["step"] == EVERY  # the first validation past warm-up
    assert re.fullmatch(rf"the validation loss \d\.\d{{4}} is above diverged_above=0\.5 × the unigram loss "
                        rf"{unigram:.4f} past warm-up", record["diverged"]["reason"])  # fmt: skip


def test_a_learning_rate_search_never_chooses_a_rate_that_diverged():
    import math

    from sharebench.tuning import Search, metric_of

    assert metric_of({"status": "diverged", "metrics": {}}, "val_loss_full") == math.inf
    search = Search(["sharing=none"], ["0", "1"], 1e-3, [0.5, 1, 2], extend=0, metric="val_loss_full")
    for rate, value in ((5e-4, 3.1), (1e-3, 3.0), (2e-3, metric_of({"status": "diverged"}, "val_loss_full"))):
        search.record(rate, "0", value)
    assert search.remaining_runs() == [["sharing=none", "seed=1", "optim.lr=0.001"]]


def test_a_record_left_running_by_a_dead_process_is_listed_apart_and_marked_at_the_next_start(
    argv, whole, tmp_path, monkeypatch, capsys
):
    """A run killed outright (SIGKILL, a lost node) leaves run.json saying running and its lock free:
    `collect` and `compare` list it as interrupted, and the next start marks it so, then resumes it."""
    from sharebench.cli import compare
    from sharebench.report.collect import collect

    output_root = tmp_path / "outputs"
    with monkeypatch.context() as patched:
        patched.setattr(PretrainModule, "training_step", at_step(6, no_memory))
        assert start(argv) == FAULT
    folder = run_dir(output_root)
    record = record_of(output_root)
    (folder / "run.json").write_text(json.dumps(record | {"status": "running"}))  # as SIGKILL leaves it
    (folder / ".lock.owner").write_text("process 4194304")  # no such process
    assert "| interrupted |" in compare([str(output_root)])
    assert "interrupted: the process running it ended without recording how" in collect([output_root])

    assert start(argv) == 0
    assert f"{folder / 'run.json'} said running, but no process held the run: marked interrupted" in (
        capsys.readouterr().out
    )
    assert record_of(output_root)["metrics"]["val_history"] == record_of(whole)["metrics"]["val_history"]


# Kills its own process (SIGKILL) in the middle of writing the checkpoint at step 8: the file half written.
KILLER = """
import os, runpy, signal, sys
from pathlib import Path
import lightning as L
save, calls = L.Trainer.save_checkpoint, []
def torn(trainer, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:
        Path(path).write_bytes(b"\\0" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
    return save(trainer, path, *args, **kwargs)
L.Trainer.save_checkpoint = torn
del sys.argv[0]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_a_torn_file_that_the_next_start_removes(
    project_root, argv, whole, tmp_path
):
    output_root = tmp_path / "outputs"
    command = [sys.executable, "-c", KILLER, str(project_root / "train.py"), *argv]
    # The reference ran in this process, on this worker's share of the cores: a loss summed over another number of
    # threads differs in its last bit.
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=threads)
    assert killed.returncode == -signal.SIGKILL
    folder = run_dir(output_root)
    assert leftovers(output_root) == ["last.ckpt.tmp"] and record_of(output_root)["status"] == "running"

    resumed = subprocess.run([sys.executable, *command[3:]], capture_output=True, text=True, timeout=600, env=threads)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"removed {folder / 'checkpoints' / 'last.ckpt.tmp'}, left half written" in resumed.stdout
    assert "said running, but no process held the run: marked interrupted" in resumed.stdout
    assert not leftovers(output_root)
    assert record_of(output_root)["metrics"]["val_history"] == record_of(whole)["metrics"]["val_history"]
    assert curve(output_root) == curve(whole)


def test_docs_list_every_fault_of_the_catalogue(project_root):
    errors = (project_root / "docs" / "errors.md").read_text()
    for fault in [*CATALOGUE, "diverged", "SIGKILL during a checkpoint write", "a lock held by a dead process"]:
        assert fault in errors, fault


def test_a_fault_stops_a_sweep_in_one_line(argv, tmp_path, monkeypatch, capsys):
    """The next runs of a sweep would meet the same disk or memory: the sweep stops at the fault, and the same
    command resumes it."""
    monkeypatch.setattr(PretrainModule, "training_step", at_step(10, no_memory))
    assert start(["-m", *argv, "seed=0,1"]) == FAULT
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("fault: out of memory (")
    assert [p.parent.name for p in (tmp_path / "outputs").rglob("run.json")] == ["seed=0"]  # seed=1 never started
