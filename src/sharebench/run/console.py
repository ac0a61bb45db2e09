"""What a run prints: one line per event, Lightning's progress bar in a terminal and a compact progress line
elsewhere (a log file, a SLURM job, `make demo` piped), and nothing a user cannot act on."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from sharebench.schema import Record, named_schemes


def quiet_libraries() -> None:
    """Lightning's device lines, its advertising tip and a deprecation warning from inside it: the run's own
    lines say what matters (its folder, its model, its progress, where it ended). Its warning that a resumed
    run's dataloader "is not resumable" is wrong here: the suite's sampler starts at the checkpoint's step."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


class StepProgressBar(RichProgressBar):
    """Lightning's bar, described by step: a run bounded by steps has no last epoch to count to."""

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, module)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description="training")


class ProgressLine(L.Callback):
    """One line per validation (pretraining) or epoch (fine-tuning): where training is, its latest losses and
    metrics, and the time it has taken."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        total = f"/{trainer.max_steps:,}" if trainer.max_steps > 0 else ""
        self.line(trainer, f"step {trainer.global_step:,}{total}")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.max_steps <= 0 and trainer.is_global_zero:  # fine-tuning counts epochs
            self.line(trainer, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def line(self, trainer: L.Trainer, where: str) -> None:
        metrics = "  ".join(f"{name} {float(value):.4f}" for name, value in trainer.callback_metrics.items())
        print(f"{where}  {metrics}  {time.perf_counter() - self.started:,.0f} s", flush=True)


def progress(trainer_settings: dict[str, Any]) -> tuple[dict[str, Any], list[L.Callback]]:
    """Trainer settings and the callback that shows progress: the bar where stdout is a terminal and the bar
    is on, the progress line otherwise."""
    if trainer_settings.get("enable_progress_bar", True) and sys.stdout.isatty():
        return trainer_settings, [StepProgressBar()]
    return {**trainer_settings, "enable_progress_bar": False}, [ProgressLine()]


def start_line(record: Record) -> str:
    """How a pretraining run starts on the console: where it goes and what it trains."""
    sharing, parameters = record["sharing"], record["parameters"]
    scheme = describe_sharing(sharing)
    twin = "the iso-parameter twin of " if "iso_baseline_of" in sharing else ""
    return (
        f"run: {record['run_dir']}: {twin}{scheme}, {parameters['unique']:,} unique parameters "
        f"({parameters['total']:,} in use), {record['tokens']['train']:,} training tokens"
    )


def describe_sharing(sharing: dict[str, Any]) -> str:
    from sharebench.sharing import SCHEMES

    named = named_schemes(sharing)
    scheme = SCHEMES.get(named["sharing"])
    takes_ratio = scheme is None or scheme.ratio_range is not None  # a conversion (headwise) has one
    ratio, layers_ratio = named["ratio"], named["layers.ratio"]
    within = named["sharing"] + (f" {ratio:g}" if ratio is not None and takes_ratio else "")
    across = f", layers={named['layers']}" + (f" {layers_ratio:g}" if layers_ratio is not None else "")
    return f"sharing={within}" + (across if named["layers"] != "none" else "")


def diverged_line(record: dict[str, Any]) -> str:
    """How a diverged run ends on the console."""
    lr = (record.get("config") or {}).get("optim", {}).get("lr")
    return (
        f"diverged: {record['run_dir']}: {record['diverged']['reason']} at step {record['diverged']['step']}; "
        f"run.json says diverged (a lower optim.lr than {lr:g} may train)"
    )


def summary_line(record: dict[str, Any]) -> str:
    """How a finished pretraining run ends on the console: where it went and what it reached."""
    metrics, speed = record["metrics"], record["speed"]
    tokens_per_second = f"{speed['tokens_per_second']:,.0f} tokens/s" if speed.get("tokens_per_second") else "—"
    full = metrics.get("val_loss_full")
    loss = f"{full:.4f} over the whole validation split" if full is not None else f"{metrics['val_loss']:.4f}"
    return (
        f"done: {record['run_dir']}: validation loss {loss} after {metrics['steps']:,} steps, "
        f"{record['parameters']['unique']:,} unique parameters, {tokens_per_second}, {record['wall_time_s']:,.0f} s"
    )
