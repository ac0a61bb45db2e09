"""A run folder's lock: the run side holds it while a run trains (`record.run_once`), and anyone may ask whether a
live process holds it (the report side tells a run in progress from a record a dead process left saying running)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from filelock import FileLock, Timeout

from sharebench.errors import RunInUse


class RunLock:
    """One process per run folder: a second start of the same run, while the first is alive, is refused. The lock
    is filelock's on <run>/.lock; <run>/.lock.owner names the process holding it."""

    def __init__(self, run_dir: Path) -> None:
        self.lock = FileLock(run_dir / ".lock", timeout=0)
        self.owner = run_dir / ".lock.owner"

    def __enter__(self) -> RunLock:
        self.owner.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            owner = (self.owner.read_text().strip() if self.owner.exists() else "") or "another process"
            raise RunInUse(f"{self.owner.parent} is in use by {owner}; wait for it to end or stop it") from None
        self.owner.write_text(f"process {os.getpid()}")
        return self

    def __exit__(self, *exception: object) -> None:
        self.lock.release()

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether a live process holds the run's lock (a dead one's lock is free: the kernel releases it)."""
        path = run_dir / ".lock"
        if not path.exists():
            return False
        with path.open("rb") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return False
