"""The exceptions a user sees as one line: bad input, raised before any data is read or model built; a run
stopped by a signal at a step boundary; a fault of the machine mid-run; a run that diverged; and the handlers that
print them so, each with its exit status (docs/errors.md)."""

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

# What a user is told wherever a hub dataset or file could not be read.
WITHOUT_THE_HUB = (
    "without a network, point SHAREBENCH_DATA at a local mirror (`sharebench data download <names> --to DIR` "
    "writes one where there is a network)"
)
# The same for pretraining data, which also ships with the package.
WITHOUT_THE_HUB_OR_EMBEDDED = (
    f"{WITHOUT_THE_HUB} or train on the corpus shipped with the package (data=wikipedia_excerpt, data=tinyshakespeare)"
)


class ConfigError(ValueError):
    """A configuration, data or checkpoint problem, with a message naming the valid choices."""

    exit_code = 2


class RatioNotTaken(ConfigError):
    """A ratio given to a scheme that takes none: an error for one run; in a sweep, the baseline runs once."""


class RunInUse(ConfigError):
    """The run's folder is held by a live process."""


class RunInterrupted(Exception):
    """SIGTERM (preemption, a SLURM time limit) or SIGINT (Ctrl-C) stopped the run at a step boundary, after a
    checkpoint where the run saves them (pretraining)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.exit_code = 128 + signum  # what a shell reports for a process killed by that signal
        name = signal.Signals(signum).name
        then = f"checkpoint saved in {checkpoint}; the same command resumes" if checkpoint else (
            "the same command runs it again")  # fmt: skip
        super().__init__(f"{name} at step {step}: {then}")


class RunFault(Exception):
    """A fault of the machine, not of the input or the suite, that stopped a run (a full disk, a folder that
    became unwritable, an I/O error reading data, memory exhausted), after its record says failed: the same
    command resumes from the last checkpoint once the cause is gone (sharebench.run.resume.fault_of builds it)."""

    exit_code = 3


class RunDiverged(Exception):
    """A non-finite training loss, or a validation loss past warm-up above `diverged_above` times the unigram
    loss: the run ends, its record says diverged (a result, not an error: a learning-rate search excludes the
    rate), and it is not run again."""

    exit_code = 4

    def __init__(self, step: int, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{reason} at step {step}")


@contextlib.contextmanager
def exit_in_one_line(kind: type[ConfigError | RunFault], prefix: str) -> Iterator[None]:
    """An error of `kind` ends with one line, `<prefix>: <error>`, and its exit status (SHAREBENCH_DEBUG=1: the
    traceback instead)."""
    try:
        yield
    except kind as error:
        if os.environ.get("SHAREBENCH_DEBUG"):
            raise
        print(f"{prefix}: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def exit_on_config_error() -> contextlib.AbstractContextManager[None]:
    """Bad input ends with one line naming the problem and exit status 2."""
    return exit_in_one_line(ConfigError, "error")


@contextlib.contextmanager
def skip_runs_in_use() -> Iterator[None]:
    """In a sweep, a run another process holds (a second sweep over the same runs) is left to it, with one line."""
    try:
        yield
    except RunInUse as error:
        print(f"skipped: {error}")


def exit_on_fault() -> contextlib.AbstractContextManager[None]:
    """A fault of the machine ends with one line saying what to do and exit status 3 (a sweep stops with it: the
    next runs would meet the same full disk or memory; the same command resumes it). The run's record keeps the
    traceback."""
    return exit_in_one_line(RunFault, "fault")


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """A run stopped by SIGTERM or SIGINT ends with one line and the signal's exit status (a sweep stops with
    it; run the same command again to resume it and start the runs that remain)."""
    try:
        yield
    except RunInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save yet
        print("interrupted: SIGINT before training started; the same command starts again", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
