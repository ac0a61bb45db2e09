"""Pretraining with Lightning: masked LM for encoders, causal LM for decoders, and the run that records it."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger, WandbLogger
from torch.utils.data import DataLoader

from sharebench.data.corpora import PretrainData
from sharebench.errors import ConfigError, RunDiverged
from sharebench.model.checkpoint import (
    load_pretrained,
    loaded_sharing,
    pretrained_model,
    save_pretrained,
)
from sharebench.model.convert import HeadId, select_shared_heads, share_heads, similarity_penalty
from sharebench.model.fsdp import fsdp_wrap_policy
from sharebench.model.inference import inference_costs
from sharebench.model.memory import training_memory
from sharebench.model.shares import SharingSpec
from sharebench.model.transformer import IGNORE_INDEX, LanguageModel, perplexity
from sharebench.paths import resolve_path
from sharebench.run.build import build_model, model_config, training_steps, unique_parameters
from sharebench.run.console import diverged_line, progress, start_line, summary_line
from sharebench.run.cpu import matmul_dtype, tune_cpu_process
from sharebench.run.environment import measure_matmul_peak
from sharebench.run.machine import precision_used
from sharebench.run.record import RunRecord, run_once
from sharebench.run.resume import (
    CHECKPOINT_FOLDER,
    PREVIOUS,
    ResumeCheckpoints,
    StopOnSignal,
    continue_metrics,
    resume_point,
)
from sharebench.run.spec import Optim, RunSpec, run_selecting_keys
from sharebench.schema import Record
from sharebench.train.optim import adamw_with_schedule, fused_adamw_allowed


class PretrainModule(L.LightningModule):
    """Masked- or causal-LM training of a `LanguageModel`; serves its own data so each process gets its share."""

    def __init__(
        self,
        model: LanguageModel,
        optim: Optim,
        max_steps: int,
        data: PretrainData,
        seed: int,
        eval_train_loss: bool = False,
        head_pairs: dict[HeadId, HeadId] | None = None,
        training_flops_per_batch: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.max_steps = max_steps
        self.data = data
        self.seed = seed
        self.eval_train_loss = eval_train_loss
        self.head_pairs = head_pairs
        self.training_flops_per_batch = training_flops_per_batch
        self.validation_history: list[dict[str, float]] = []
        self._eval_losses: dict[int, list[torch.Tensor]] = {}

    @property
    def flops_per_batch(self) -> int:
        """What Lightning's ThroughputMonitor reads for FLOP/s and MFU: a batch's forward and backward in training,
        its forward (a third, by the FLOP convention of `LanguageModel.flops_per_token`) in validation."""
        return self.training_flops_per_batch if self.trainer.training else self.training_flops_per_batch // 3

    def train_dataloader(self) -> DataLoader:
        return self.data.loader("train", self.seed, self.global_rank, self.trainer.world_size)

    def val_dataloader(self) -> list[DataLoader]:
        # With eval_train_loss, the same number of training batches is evaluated too (as nanoGPT's estimate_loss).
        loaders = [self.data.loader("validation", self.seed)]
        if self.eval_train_loss:
            loaders.append(self.data.loader("train", self.seed, estimate=True))
        return loaders

    def on_train_start(self) -> None:
        # A resumed run continues its epoch where the checkpoint left it (Lightning restores the step count).
        sampler = self.trainer.train_dataloader.sampler
        batches_done = self.global_step * self.trainer.accumulate_grad_batches
        sampler.skip_batches = batches_done % sampler.batches_per_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sharebench"] = {"validation_history": self.validation_history, "rng": _rng_states()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sharebench", {})
        self.validation_history = state.get("validation_history", [])
        if "rng" in state:
            _set_rng_states(state["rng"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train/loss", loss, prog_bar=True)
        if self.head_pairs is not None:  # PostShare: pull the heads to be shared towards each other
            penalty = similarity_penalty(self.model, self.head_pairs)
            self.log("train/head_distance", penalty)
            loss = 0.5 * loss + 0.5 * penalty
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_losses.setdefault(dataloader_idx, []).append(self.model(**batch).loss.detach())

    def on_validation_epoch_end(self) -> None:
        entry: dict[str, float] = {"step": self.global_step}
        for index, name in enumerate(("val_loss", "train_loss")[: len(self._eval_losses)]):
            loss = torch.stack(self._eval_losses[index]).mean()
            if self.trainer.world_size > 1:
                loss = self.all_gather(loss).mean()
            entry[name] = loss.item()
        self._eval_losses.clear()
        val_loss = entry["val_loss"]
        self.log_dict({"val/loss": val_loss, "val/ppl": perplexity(val_loss)}, prog_bar=True, sync_dist=False)
        if "train_loss" in entry:
            self.log("train/eval_loss", entry["train_loss"], sync_dist=False)
        self.validation_history.append(entry)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.optim
        return adamw_with_schedule(
            self.model, optim.lr, optim.weight_decay, optim.warmup_steps, self.max_steps, optim.schedule,
            optim.min_lr_ratio, fused_adamw_allowed(self.trainer), betas=tuple(optim.betas), eps=optim.eps,
        )  # fmt: skip


def _rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]  # loadable weights-only
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Throughput(L.Callback):
    """Training tokens per second over the steps after the first `skip` (compilation, caches), and the share
    of that time spent waiting for data. Time spent in validation is excluded."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.steps = 0
        self.tokens = 0
        self.compute_s = 0.0
        self.wait_s = 0.0
        self._batch_start = 0.0
        self._last_end: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        if self._last_end is not None and self.steps >= self.skip:
            self.wait_s += self._batch_start - self._last_end

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._last_end = time.perf_counter()
        if self.steps >= self.skip:
            self.compute_s += self._last_end - self._batch_start
            self.tokens += tokens_in(batch)
        self.steps += 1

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last_end = None

    def summary(self) -> dict[str, float | None]:
        total = self.compute_s + self.wait_s
        return {
            "tokens_per_second": self.tokens / total if total else None,
            "data_wait_fraction": self.wait_s / total if total else None,
            "measured_steps": max(0, self.steps - self.skip),
        }


class StopOnDivergence(L.Callback):
    """Ends a run that diverged (`RunDiverged`, recorded as diverged): at the first non-finite training loss, or
    at a validation past warm-up whose loss is non-finite or above `above` times the unigram loss (null: the
    non-finite check alone)."""

    def __init__(self, unigram_loss: float, above: float | None, warmup_steps: int) -> None:
        self.unigram_loss = unigram_loss
        self.above = above
        self.warmup_steps = warmup_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise RunDiverged(trainer.global_step, f"the training loss is {float(loss)}")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking or not module.validation_history:
            return
        loss = module.validation_history[-1]["val_loss"]
        if not math.isfinite(loss):
            raise RunDiverged(trainer.global_step, f"the validation loss is {loss}")
        limit = None if self.above is None else self.above * self.unigram_loss
        if limit is not None and trainer.global_step > self.warmup_steps and loss > limit:
            raise RunDiverged(
                trainer.global_step,
                f"the validation loss {loss:.4f} is above diverged_above={self.above:g} × the unigram loss "
                f"{self.unigram_loss:.4f} past warm-up",
            )


def sequences_in(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].size(0)


def tokens_in(batch: dict[str, torch.Tensor]) -> int:
    return batch["input_ids"].numel()


def full_split_loss(model: LanguageModel, loader: DataLoader) -> float:
    """The loss over every predicted token of the split: the run's figure of merit, free of the sampling noise of
    the few batches the curves are evaluated on."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            predicted = int((batch["labels"] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * predicted
            count += predicted
    return total / count


def check_resumable(checkpoint: Path, module: L.LightningModule) -> None:
    """A checkpoint left in the run's folder must fit the model the config builds."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    expected = module.state_dict()
    for name in sorted(set(stored) | set(expected)):
        if name not in stored or name not in expected or stored[name].shape != expected[name].shape:
            found = tuple(stored[name].shape) if name in stored else "absent"
            wanted = tuple(expected[name].shape) if name in expected else "absent"
            raise ConfigError(
                f"checkpoint {checkpoint} does not fit this config: {name} is {found} there, {wanted} here "
                f"(another size or sharing?); move the folder away to start afresh"
            )


# The newest and previous checkpoints and the one being written hold the weights and AdamW's two moments,
# model.safetensors the weights again: (3 × 3 + 1) × 4 bytes; without checkpoints, the weights alone.
BYTES_PER_PARAMETER = {"keep": (3 * 3 + 1) * 4, "until_completed": (3 * 3 + 1) * 4, "none": 4}


def check_disk_space(run_dir: Path, unique_parameters: int, checkpoints: str) -> None:
    needed = BYTES_PER_PARAMETER[checkpoints] * unique_parameters
    free = shutil.disk_usage(run_dir if run_dir.exists() else run_dir.parent).free
    if free < needed:
        what, other = ("the weights: they need", "") if checkpoints == "none" else (
            "the checkpoints: they need", ", or checkpoints=none (a stopped run then starts over)")  # fmt: skip
        raise ConfigError(
            f"no disk space for {what} about {needed / 2**20:.1f} MiB in {run_dir}, {free / 2**20:.1f} MiB are "
            f"free; set output_root to a larger disk{other}"
        )


def run(spec: RunSpec, run_dir: str | Path) -> Record:
    """Pretrain one validated configuration (`validation.validate`'s spec) into `run_dir` and return its run record
    (also written as run.json).

    A run whose record says completed is not repeated; a run with a Lightning checkpoint resumes from it; either
    only under the configuration it was started with."""
    run_dir = Path(run_dir)

    def train(record: RunRecord) -> None:
        record.update(sharing=spec.shares.to_record())
        _train(spec, run_dir, record)

    # A pretraining run's folder also holds its GLUE runs (task=pretrain_glue): which GLUE runs a command makes
    # leaves the pretraining as it was.
    data, ran = run_once(spec.to_dict(), run_dir, train, run_selecting_keys())
    if data["status"] == "completed" and spec.checkpoints != "keep" and rank_zero_only.rank == 0:
        shutil.rmtree(run_dir / CHECKPOINT_FOLDER, ignore_errors=True)  # after the record says completed
    if ran and rank_zero_only.rank == 0:
        if data["status"] == "completed":
            print(summary_line(data))
        else:
            print(diverged_line(data), file=sys.stderr)
    return data


def initial_model(spec: RunSpec, vocab_size: int) -> tuple[LanguageModel, SharingSpec]:
    """A new model as the config says, or with `pretrained`, that checkpoint's model, converted as `convert` says
    or not, to train further ("uptraining", "healing"); and what it shares."""
    if not spec.pretrained:
        return build_model(spec, vocab_size), spec.shares.built()
    model, stored = pretrained_model(resolve_path(spec.pretrained), spec.convert)
    model.train()
    own_tokenizer = spec.data.tokenizer.kind == "pretrained"  # its ids fit the embeddings, which may be padded
    if model.config.vocab_size < vocab_size or (model.config.vocab_size != vocab_size and not own_tokenizer):
        raise ConfigError(
            f"pretrained={spec.pretrained} has {model.config.vocab_size} token embeddings but the data's tokenizer "
            f"has {vocab_size} tokens; use its tokenizer (data.tokenizer.kind=pretrained)"
        )
    if spec.data.seq_len > model.config.max_positions:
        positions = model.config.max_positions
        raise ConfigError(f"data.seq_len={spec.data.seq_len} exceeds the {positions} positions of pretrained")
    return model, stored


def make_logger(spec: RunSpec, run_dir: Path) -> Logger:
    """The configured logger writing into the run's folder; a wandb run is named after the run's folder and
    grouped by the sweep's output_root unless the config names them."""
    extra: dict[str, Any] = {"save_dir": str(run_dir)}
    if get_class(spec.logger["_target_"]) is WandbLogger:
        extra["name"] = spec.logger.get("name") or f"{run_dir.parent.name}/{run_dir.name}"
        extra["group"] = spec.logger.get("group") or str(spec.output_root)
    return instantiate(spec.logger, **extra)


@contextlib.contextmanager
def finished_logger(logger: Logger) -> Iterator[None]:
    """A wandb run ends with its job, marked failed if the job fails, so the next job of a sweep starts its own."""
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None:  # the job's run, where it started one
                wandb.finish(exit_code=exit_code)


def _train(spec: RunSpec, run_dir: Path, record: RunRecord) -> None:
    tune_cpu_process()
    L.seed_everything(spec.seed, workers=True, verbose=False)
    data = PretrainData(spec.data, spec.arch.objective, spec.cache_dir, spec.arch.mlm)
    data.prepare()
    model, stored = initial_model(spec, data.vocab_size)
    if model.pooler is not None:  # BERT's pooler serves fine-tuning; pretraining has no loss through it, and DDP
        model.pooler.requires_grad_(False)  # refuses a parameter no loss reaches
    head_pairs = select_shared_heads(model, spec.postshare_ratio) if spec.postshare_ratio is not None else None
    if spec.pretrained:  # the checkpoint's sharing (or its conversion), not the config's
        conversion = spec.convert.to_dict() if spec.convert.to else None
        if spec.postshare_ratio is not None:
            conversion = {"to": "postshare", "ratio": spec.postshare_ratio}
        record.update(sharing=loaded_sharing(resolve_path(spec.pretrained), stored, conversion))
    counts = model.parameter_counts()
    fraction = spec.predicted_fraction
    flops = model.flops_per_token(spec.data.seq_len, fraction)
    record.update(
        vocab_size=data.vocab_size,
        data={"name": spec.data.name, "fingerprint": data.fingerprint()},
        tokenizer=data.tokenizer.describe(),
        parameters=counts.to_dict(),
        # The shape trained without sharing: the checkpoint's (as converted) where it comes from one.
        unshared_parameters=unique_parameters(model.config if spec.pretrained else model_config(spec, data.vocab_size)),
        flops_per_token=flops,
        tokens={split: len(stream) for split, stream in data.streams.items()},
        unigram_val_loss=data.unigram_loss(),
    )
    record.write()
    main_process = rank_zero_only.rank == 0
    if main_process:  # fine-tuning and generation tokenise with the saved tokenizer
        print(start_line(record.data), flush=True)
        data.tokenizer.save(run_dir)

    if spec.compile:
        model.compile()  # in place: parameter names, and so checkpoints, stay those of the plain model
    steps = training_steps(spec, data.vocab_size)
    module = PretrainModule(model, spec.optim, steps, data, spec.seed, spec.eval_train_loss, head_pairs,
                            flops * spec.data.batch_size * spec.data.seq_len)  # fmt: skip
    throughput = Throughput()
    resume, resumed_step = resume_point(run_dir) or (None, 0)
    logger = make_logger(spec, run_dir)
    settings, shown = progress(spec.trainer.to_dict())
    settings["max_steps"] = steps
    record.update(precision=precision_used(spec.trainer))
    settings["precision"] = record.data["precision"]["used"]
    if settings["strategy"] == "fsdp":  # units that keep each shared tensor whole (sharebench.model.fsdp)
        from lightning.pytorch.strategies import FSDPStrategy

        settings["strategy"] = FSDPStrategy(auto_wrap_policy=fsdp_wrap_policy(model))
    checkpoints = StopOnSignal() if spec.checkpoints == "none" else ResumeCheckpoints(run_dir)
    trainer = L.Trainer(
        **settings,
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[
            throughput,
            checkpoints,
            *shown,
            *map(instantiate, spec.callbacks.values()),
            StopOnDivergence(record.data["unigram_val_loss"], spec.diverged_above, spec.optim.warmup_steps),
        ],
        enable_checkpointing=False,
    )
    with finished_logger(logger), checkpoints.interrupts():
        if resume is not None:
            check_resumable(resume, module)
            continue_metrics(logger, resumed_step)
        else:  # the curve starts at the untrained model
            check_disk_space(run_dir, counts.unique, spec.checkpoints)
            trainer.validate(module, verbose=False)
        trainer.fit(module, ckpt_path=resume)
        # Read before any further validation, which clears the trainer's logged metrics.
        train_loss = trainer.callback_metrics.get("train/loss")
        if main_process:  # trained to the end, the run no longer needs a fallback
            (run_dir / CHECKPOINT_FOLDER / PREVIOUS).unlink(missing_ok=True)
        if not module.validation_history or module.validation_history[-1]["step"] != trainer.global_step:
            trainer.validate(module, verbose=False)
        if head_pairs is not None:  # PostShare: the trained pairs now share one copy of their weights
            record.update(postshare={"ratio": spec.postshare_ratio, "pairs": len(head_pairs),
                                     "val_loss_before_sharing": module.validation_history[-1]["val_loss"]})  # fmt: skip
            share_heads(model, head_pairs)
            shared = replace(SharingSpec.from_record(record.data["sharing"]), head_sources=model.head_sources)
            record.update(sharing=shared.to_record(), parameters=model.parameter_counts().to_dict())
            trainer.validate(module, verbose=False)

    speed = throughput.summary()
    device = trainer.strategy.root_device
    memory, peak = {}, None
    if spec.measure:  # after training, on a copy: the run's curves and RNG are those of a run without it
        memory = training_memory(model, trainer.optimizers[0], next(iter(data.loader("train", spec.seed))))
        peak = measure_matmul_peak(device, matmul_dtype(settings["precision"]))
    tokens_per_second = speed["tokens_per_second"]
    weights_bytes = save_pretrained(model, run_dir, stored) if main_process else None
    # The saved model as a user loads it to serve it.
    served = load_pretrained(run_dir).to(device) if main_process else None
    # The saved model's loss over every held-out token: validation is what selection reads, test what tables report.
    full = {split: full_split_loss(served, data.loader(split, spec.seed)) for split in ("validation", "test")
            } if served is not None else {}  # fmt: skip
    if (router := model.transformer.router) is not None:  # Mixture-of-Recursions: what its routers decided
        trained = router.shares(training=True)
        record.update(routing={"tokens_per_recursion": {
            "training": trained,
            "held_out": served.transformer.router.shares(training=False) if served is not None else None,
        }})  # fmt: skip
        # The FLOPs its tokens computed in training (token-choice: as routed, not as planned).
        flops = model.flops_per_token(spec.data.seq_len, fraction, router.layer_shares(trained))
        record.update(flops_per_token=flops)
    inference = inference_costs(served, spec.data.seq_len) if served is not None and spec.measure else None
    final = module.validation_history[-1]
    tokens_per_step = trainer.accumulate_grad_batches * spec.data.batch_size * spec.data.seq_len * trainer.world_size
    tokens_seen = trainer.global_step * tokens_per_step
    record.update(
        metrics={
            # The eval-mode estimate when eval_train_loss is on, else the loss of the last training step.
            "train_loss": final.get("train_loss", float(train_loss) if train_loss is not None else None),
            "val_loss": final["val_loss"],
            "val_ppl": perplexity(final["val_loss"]),
            "val_loss_full": full.get("validation"),
            "test_loss_full": full.get("test"),
            **{
                f"{name}_bpb": data.bits_per_byte(full[split], split) if full else None
                for name, split in (("val", "validation"), ("test", "test"))
            },  # fmt: skip
            "val_history": module.validation_history,
            "steps": trainer.global_step,
        },
        compute={"tokens_seen": tokens_seen, "training_flops": tokens_seen * flops},
        speed={
            **speed,
            "device": str(device),
            "world_size": trainer.world_size,
            "peak_matmul_flops": peak,
            "mfu": model.estimate_mfu(tokens_per_second, peak, spec.data.seq_len, fraction)
            if tokens_per_second and peak
            else None,
        },
        checkpoint={"path": str(run_dir / "model.safetensors"), "bytes": weights_bytes},
        memory=memory,
        inference=inference,
    )
