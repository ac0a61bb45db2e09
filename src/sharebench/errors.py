"""The exceptions a user sees as one line: bad input, raised before any data is read or model built, and a
run stopped by a signal after saving its checkpoint."""

import signal
from pathlib import Path


class ConfigError(ValueError):
    """A configuration, data or checkpoint problem, with a message naming the valid choices."""


class RatioNotTaken(ConfigError):
    """A ratio given to a scheme that takes none: an error for one run; in a sweep, the baseline runs once."""


class RunInUse(ConfigError):
    """The run's folder is held by a live process."""


class RunInterrupted(Exception):
    """SIGTERM (preemption, a SLURM time limit) or SIGINT (Ctrl-C) stopped the run after a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.exit_code = 128 + signum  # what a shell reports for a process killed by that signal
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved in {checkpoint}; the same command resumes")
