"""What lets a run stop and go on: checkpoints written atomically after every validation and when SIGTERM or
SIGINT arrives, the newest readable one found again at restart, a metrics.csv continued without a gap or a
repeated step, one process per run folder, what a stopped run left behind cleared at the next start, and the
faults of the machine that stop a run told apart from the suite's own errors (docs/errors.md)."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sharebench.errors import RunFault, RunInterrupted

CHECKPOINT_FOLDER = "checkpoints"
# The newest checkpoint and the one before it, in case the newest is damaged (a full disk, a kill mid-write).
NEWEST, PREVIOUS = "last.ckpt", "previous.ckpt"
# The signals this suite takes itself: Lightning stops at a step boundary on SIGTERM already (SIGTERMException),
# but lets SIGINT end a run mid-step as a failure (exit status 1).
STOP_SIGNALS = (signal.SIGINT,)


class StopOnSignal(L.Callback):
    """Ends the run with RunInterrupted at the first step boundary after SIGTERM or SIGINT, once Lightning has
    logged that step (and validated, where the step ends at a validation). SIGTERM is Lightning's to take: it
    raises SIGTERMException there, which `interrupts` turns into RunInterrupted (a SystemExit let through would
    exit with status 0). SIGINT, which Lightning would let end the run mid-step as a failure, this callback takes
    itself and stops at the same boundary."""

    checkpoint: Path | None = None  # what the run can resume from, where a subclass saves one

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped_at: int | None = None  # the step at whose end the run stops
        self._handlers: dict[int, Any] = {}

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take_signals()  # the curve's first validation, before training: Lightning's handler would drop them

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take_signals()

    def _take_signals(self) -> None:
        """Installed after Lightning's own SIGTERM handler."""
        for signum in STOP_SIGNALS:
            if signum not in self._handlers:
                self._handlers[signum] = signal.signal(signum, self._receive)

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._handlers.items():
            if signal.getsignal(signum) == self._receive:  # Lightning has put back its predecessors' already
                signal.signal(signum, handler)
        self._handlers.clear()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # Every process stops at the same step, whichever of them received the signal.
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.stopping(trainer)
            self.stopped_at = trainer.global_step

    def stopping(self, trainer: L.Trainer) -> None:
        """What to do at the step the run stops at, before Lightning logs it."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self._stop_if_asked(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.stopped_at is None:
            self.received, self.stopped_at = signal.SIGTERM, trainer.global_step
            if trainer.training:  # at a step's end; a validation cut short resumes from the checkpoint before it
                self.stopping(trainer)

    @contextlib.contextmanager
    def interrupts(self) -> Iterator[None]:
        """Lightning's SIGTERMException, raised by the Trainer calls inside, as the run's RunInterrupted."""
        try:
            yield
        except SIGTERMException:
            saved = self.checkpoint if self.checkpoint is not None and self.checkpoint.exists() else None
            raise RunInterrupted(signal.SIGTERM, self.stopped_at or 0, saved) from None

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        if self.stopped_at is not None:
            for logger in trainer.loggers:  # the step's metrics, which Lightning logged after `stopping`
                logger.save()
            raise RunInterrupted(self.received or signal.SIGTERM, self.stopped_at, self.checkpoint)


class ResumeCheckpoints(StopOnSignal):
    """Writes <run>/checkpoints/last.ckpt after every validation of training, and at the step a signal stops the
    run at. A checkpoint is written to a temporary file, synced and renamed, and the one it replaces is kept as
    previous.ckpt."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.folder = run_dir / CHECKPOINT_FOLDER
        self.checkpoint = self.folder / NEWEST

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer)

    def stopping(self, trainer: L.Trainer) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:  # the metrics up to this step are on disk before the checkpoint is
            logger.save()
        temporary = self.folder / f"{NEWEST}.tmp"
        try:
            trainer.save_checkpoint(temporary, weights_only=False)  # the optimizer too: a resumable checkpoint
            if trainer.is_global_zero:
                with temporary.open("rb") as file:
                    os.fsync(file.fileno())
                newest = self.folder / NEWEST
                if newest.exists():
                    os.replace(newest, self.folder / PREVIOUS)
                os.replace(temporary, newest)
        except BaseException:  # a full disk, a folder made unwritable: the checkpoints before it stay whole
            temporary.unlink(missing_ok=True)
            raise
        trainer.strategy.barrier("resume-checkpoint")


def checkpoint_step(path: Path) -> int | None:
    """The global step of a readable checkpoint; None for a damaged one (empty, truncated, not a checkpoint)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError ... for damaged files
        return None


def resumable_step(run_dir: Path) -> int | None:
    """The step the next start resumes from (`resume_point`'s, without renaming anything), None to start over."""
    paths = [run_dir / CHECKPOINT_FOLDER / name for name in (NEWEST, PREVIOUS)]
    return next((step for path in paths if path.exists() and (step := checkpoint_step(path)) is not None), None)


def resume_point(run_dir: Path) -> tuple[Path, int] | None:
    """The newest readable checkpoint of a run and its step, or None to start over; damaged ones are renamed
    *.damaged, one line saying so."""
    folder = run_dir / CHECKPOINT_FOLDER
    for name in (NEWEST, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        step = checkpoint_step(path)
        if step is not None:
            if name == PREVIOUS:
                print(f"resuming from {path} (step {step}); the newer checkpoint was damaged")
            return path, step
        os.replace(path, path.with_name(path.name + ".damaged"))
        print(f"{path} is damaged (empty or truncated); kept as {path.name}.damaged")
    if any(folder.glob("*.damaged")):
        print(f"no readable checkpoint in {folder}; the run starts over")
    return None


def continue_metrics(logger: Logger, step: int) -> None:
    """Keeps the rows of a resumed run's metrics.csv up to its checkpoint's step (Lightning's CSV logger
    deletes the file when it starts; rows logged after the checkpoint's `step` are trained again)."""
    if not isinstance(logger, CSVLogger):
        return
    path = Path(logger.log_dir) / "metrics.csv"
    rows: list[dict[str, str]] = []
    if path.exists():
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
    kept = [row for row in rows if int(row["step"]) < step]
    logger.experiment  # noqa: B018 (created here, the logger removes the old file)
    for row in kept:  # logged again, in their order, so the file has the same columns
        logger.log_metrics({key: as_logged(value) for key, value in row.items() if value and key != "step"},
                           step=int(row["step"]))  # fmt: skip
    logger.save()


def as_logged(text: str) -> int | float:
    """A metrics.csv value as it was logged: an int (the epoch) stays one."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def remove_temporary_files(run_dir: Path) -> None:
    """A checkpoint or record half written when its process was killed is removed at the next start (a write
    that fails removes its own)."""
    for leftover in [*(run_dir / CHECKPOINT_FOLDER).glob("*.tmp"), *run_dir.glob(".*.tmp")]:
        leftover.unlink()
        print(f"removed {leftover}, left half written by a run that stopped while writing it")


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
IO_ERRORS = {errno.EIO, errno.ESTALE, errno.ENXIO, errno.ETIMEDOUT, errno.ENOTCONN, errno.EREMOTEIO}


def machine_fault(error: BaseException) -> tuple[str, str] | None:
    """What went wrong and what to do, where `error` is a fault of the machine rather than a bug: a full disk, a
    folder that cannot be written, an I/O error, memory exhausted. None for anything else (which keeps its
    traceback)."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)  # torch's CPU allocator
    ):
        said = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return f"out of memory ({said})", "Free memory (another process may hold it)"
    if not isinstance(error, OSError):
        return None
    number = error.errno
    if number is None and (found := re.search(r"\[Errno (\d+)\]", str(error))):  # re-raised by a loader worker
        number = int(found.group(1))
    # A move (Lightning writes a checkpoint elsewhere first) names both files: the one written is the second.
    path = error.filename2 if number in DISK_FULL | UNWRITABLE and error.filename2 else error.filename
    where = f" ({path})" if path else ""
    reason = os.strerror(number) if number is not None else ""
    if number in DISK_FULL:
        return f"no space left on device{where}", "Free space on that disk"
    if number in UNWRITABLE:
        return f"{reason.lower()}{where}", "Make that folder writable again"
    if number in IO_ERRORS:
        return f"I/O error{where}: {reason}", "Check that disk or network file system"
    return None


def fault_of(error: BaseException, run_dir: Path, record: str) -> RunFault | None:
    """The one line of a machine fault that stopped the run in `run_dir` (`record`: what its run.json says now),
    or None where `error` is not one."""
    found = machine_fault(error)
    if found is None:
        return None
    what, todo = found
    step = resumable_step(run_dir)
    then = f"it resumes from step {step}" if step is not None else "it starts over (no checkpoint was written yet)"
    return RunFault(f"{what}: the run stopped ({record}). {todo}, then run the same command: {then}")
