"""A run's lifecycle (SPEC §4): one process per run folder, a completed run not repeated, and its record
(`sharebench.schema`) written atomically however the run ends, by pretraining, GLUE fine-tuning, zero-shot scoring
and conversion alike."""

from __future__ import annotations

import contextlib
import functools
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from sharebench.errors import ConfigError, RunDiverged, RunInterrupted
from sharebench.model.memory import process_peak_rss_bytes
from sharebench.paths import atomic_write_json, machine_free
from sharebench.run.environment import git_commit, hardware, package_versions, training_code
from sharebench.schema import (
    RECORD_NAME,
    SCHEMA_VERSION,
    STALE,
    ConfigKeys,
    Record,
    config_leaves,
    read_record,
    record_leaves,
    record_roots,
)


class RunRecord:
    """Collects a run's facts and writes them to <run>/run.json; `write` is safe to call at any point."""

    def __init__(self, config: Mapping[str, Any], run_dir: Path, earlier_seconds: float = 0.0) -> None:
        self.path = Path(run_dir) / RECORD_NAME
        self.started = time.time()
        self.earlier_seconds = earlier_seconds  # a resumed run's wall time counts its earlier starts
        self.unwritten: OSError | None = None  # why the last write failed, where one did (a full disk)
        self.roots = record_roots(config, run_dir)
        self.data: Record = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "run_dir": str(Path(run_dir).resolve()),
            "seed": config.get("seed"),
            "config": dict(config),
            "config_keys": declared_keys(),
            "git": dict(git_commit()),
            "code": dict(training_code()),
            "packages": package_versions(),
            "hardware": hardware(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
        }

    def update(self, **facts: Any) -> None:
        unknown = facts.keys() - Record.__annotations__.keys()
        if unknown:  # a new field belongs in the schema (and docs/run-record.md) first
            raise TypeError(f"the run record has no field {', '.join(sorted(unknown))}")
        self.data.update(facts)

    def finish(self, error: BaseException | None = None) -> None:
        """Writes the record as the run ended. Where the write fails (a full disk) after the run itself failed,
        that failure goes on (the next start marks the record interrupted); after a run that went well, the
        write's error is raised."""
        if error is None:
            self.data["status"] = "completed"
        elif isinstance(error, RunDiverged):
            self.data["status"] = "diverged"
            self.data["diverged"] = {"step": error.step, "reason": error.reason}
            self.data["error"] = f"diverged: {error}"
        else:
            self.data["status"] = "interrupted" if isinstance(error, (KeyboardInterrupt, RunInterrupted)) else "failed"
            self.data["error"] = f"{type(error).__name__}: {error}"
            self.data["traceback"] = "".join(traceback.format_exception(error))
        self.data["wall_time_s"] = round(self.earlier_seconds + time.time() - self.started, 3)
        # The whole process (libraries, data, heap): kept apart from what the model itself needs (`memory`).
        self.data.setdefault("memory", {})["process_peak_rss_bytes"] = process_peak_rss_bytes()
        if torch.cuda.is_available():
            self.data["memory"]["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        try:
            self.write()
        except OSError:
            if error is None:
                raise

    def __enter__(self) -> RunRecord:
        self.write()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: Any) -> bool:
        self.finish(error)
        return isinstance(error, RunDiverged)  # a result, recorded; any other error goes on after it is recorded

    def write(self) -> None:
        if rank_zero_only.rank == 0:  # under DDP every process runs the same code; one writes
            try:
                atomic_write_json(self.path, machine_free(self.data, self.roots))
            except OSError as error:
                self.unwritten = error
                raise
            self.unwritten = None

    def says(self) -> str:
        """What the run's run.json says now, for a fault's line."""
        if self.unwritten is not None:
            return "its run.json could not be written; the next start marks it interrupted"
        return f"run.json says {self.data['status']}"


def check_same_config(run_dir: Path, config: Mapping[str, Any], also_ignored: tuple[str, ...] = ()) -> None:
    """A run's folder holds the run of one configuration: skipping or resuming it under another (a recipe whose
    budget changed, say) would report the old run as the new one. Keys only one of the two configs has (a
    version of the suite that added or dropped one) and keys starting with `also_ignored` are not compared."""
    if not (run_dir / RECORD_NAME).exists():
        return
    stored = record_leaves(read_record(run_dir))
    current = config_leaves(machine_free(dict(config), record_roots(config, run_dir)), declared_keys()["roles"])
    differences = [
        f"{key}={stored[key]!r} there, {current[key]!r} here"
        for key in sorted(stored.keys() & current.keys())
        if stored[key] != current[key] and not key.startswith(also_ignored)
    ]
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ConfigError(
            f"{run_dir} holds a run of another configuration ({'; '.join(differences[:3])}{more}); move that "
            f"folder away to keep it, or set output_root elsewhere"
        )


def run_once(config: Mapping[str, Any], run_dir: Path, body: Callable[[RunRecord], None],
             ignores: tuple[str, ...] = ()) -> tuple[Record, bool]:  # fmt: skip
    """Every task's run lifecycle (pretraining, a GLUE task, zero-shot scoring, a conversion): one process per run
    folder (its lock), the folder's configuration (`config`, as the record stores it) checked (`check_same_config`,
    keys starting with `ignores` aside), a completed run not repeated, and the record written however `body` ends
    (completed, failed, interrupted). Returns the record and whether the run ran now."""
    from sharebench.lock import RunLock
    from sharebench.run.resume import fault_of, remove_temporary_files

    record: RunRecord | None = None
    try:
        # Looked at under the lock: two sweeps over the same runs (two lanes of a recipe) never run one twice.
        with RunLock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
            if rank_zero_only.rank == 0:
                remove_temporary_files(run_dir)
                mark_stale_record(run_dir)
            check_same_config(run_dir, config, ignores)
            if previous := finished_record(run_dir):
                return previous, False
            record = RunRecord(config, run_dir, earlier_seconds(run_dir))
            with record:
                body(record)
    except Exception as error:  # a fault of the machine becomes one line; anything else keeps its traceback
        fault = fault_of(error, run_dir, record.says() if record else "no run.json was written")
        if fault is None:
            raise
        raise fault from error
    return record.data, True


def mark_stale_record(run_dir: Path) -> None:
    """A record still saying running when its run's lock is free (the caller holds it) was left by a dead
    process: it is marked interrupted before the run resumes."""
    if (run_dir / RECORD_NAME).exists() and (stale := read_record(run_dir)).get("status") == "running":
        atomic_write_json(run_dir / RECORD_NAME, stale | {"status": "interrupted", "error": STALE})
        print(f"{run_dir / RECORD_NAME} said running, but no process held the run: marked interrupted")


def earlier_seconds(run_dir: Path) -> float:
    """The wall time the run's earlier starts recorded (an interrupted or failed start writes its own, which
    includes the starts before it): a resumed run's `wall_time_s` is its whole time. A start killed before it
    could write one (SIGKILL) left none: its time is not counted."""
    if not (run_dir / RECORD_NAME).exists():
        return 0.0
    return float(read_record(run_dir).get("wall_time_s") or 0.0)


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record of a run that already completed or diverged in `run_dir` (it is not run again), else None."""
    if (run_dir / RECORD_NAME).exists():
        previous = read_record(run_dir)
        if (status := previous.get("status")) in ("completed", "diverged"):
            print(f"{run_dir} already {status}; nothing to do (delete the folder to run it again)")
            return previous
    return None


@functools.cache  # the same for every record this process writes or upgrades
def declared_keys() -> ConfigKeys:
    """What this version of the suite declares about its config keys (sharebench.run.spec), as a record states it."""
    from sharebench.run.spec import key_declarations  # the run's side: readers of a record take what it states

    return key_declarations()  # type: ignore[return-value]
