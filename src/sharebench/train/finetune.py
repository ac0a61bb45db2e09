"""GLUE fine-tuning of a pretrained model (a run of the suite or a Hugging Face BERT folder), sharing intact.

One run record per task and seed in <run>/glue/<task>/seed=<seed>/, a summary over tasks and seeds in
<run>/glue_summary.json and .md, and test-set predictions in the GLUE submission format in
<run>/glue_submission/seed=<seed>/.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sharebench.data import glue
from sharebench.data.tokenizer import load_pretrained_tokenizer
from sharebench.errors import ConfigError, RunInterrupted
from sharebench.model.checkpoint import checkpoint_sharing, load_pretrained, loaded_sharing
from sharebench.model.transformer import LanguageModel
from sharebench.paths import atomic_write_bytes, atomic_write_json, machine_free, resolve_path
from sharebench.run.console import progress
from sharebench.run.cpu import tune_cpu_process
from sharebench.run.machine import precision_used
from sharebench.run.record import RunRecord, run_once
from sharebench.run.resume import StopOnSignal
from sharebench.run.spec import GlueRecipe, RunSpec, run_selecting_keys
from sharebench.schema import RECORD_NAME, SUMMARY_NAME, named_schemes, read_record, record_roots
from sharebench.train.optim import adamw_with_schedule, fused_adamw_allowed
from sharebench.tuning import best_mean


class SequenceClassifier(nn.Module):
    """The encoder's [CLS] pooler, dropout and a linear head: class logits, or one score for regression. It holds
    the encoder's transformer and pooler, not its masked-LM head, which fine-tuning does not train (DDP refuses a
    parameter no loss reaches)."""

    def __init__(self, encoder: LanguageModel, num_labels: int, dropout: float) -> None:
        super().__init__()
        if encoder.pooler is None:
            raise ConfigError("GLUE fine-tuning needs an encoder with a [CLS] pooler (arch=bert)")
        self.transformer = encoder.transformer
        self.pooler = encoder.pooler
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.dim, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.transformer(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(self.pooler(hidden)))


# ---- training -----------------------------------------------------------------------------------------------


class GlueModule(L.LightningModule):
    """Fine-tunes on one task; after every epoch scores the validation split(s) and keeps the weights the
    recipe selects (the last epoch's, or the best epoch's by validation score)."""

    def __init__(self, classifier: SequenceClassifier, task: glue.Task, recipe: GlueRecipe, total_steps: int,
                 validation: dict[str, list[dict[str, torch.Tensor]]]) -> None:  # fmt: skip
        super().__init__()
        self.classifier = classifier
        self.task = task
        self.recipe = recipe
        self.total_steps = total_steps
        self.validation = validation
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, dict[str, torch.Tensor]] | None = None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels)
        return F.cross_entropy(logits, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        labels = batch.pop("labels")
        loss = self.loss(self.classifier(**batch), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        metrics = evaluate(self.classifier, self.task, self.validation, self.recipe.batch_size)
        score = glue.main_score(self.task.name, metrics)
        self.history.append({"epoch": self.current_epoch, "score": score, **metrics})
        self.log_dict({f"val/{k}": v for k, v in metrics.items()})
        if self.recipe.select == "best" and (self.best is None or score > self.best[0]):
            self.best = (score, copy.deepcopy(self.classifier.state_dict()))

    def configure_optimizers(self) -> dict[str, Any]:
        warmup = int(self.recipe.warmup_ratio * self.total_steps)
        return adamw_with_schedule(
            self.classifier, self.recipe.lr, self.recipe.weight_decay, warmup, self.total_steps, "linear", 0.0,
            fused_adamw_allowed(self.trainer),
        )  # fmt: skip


@torch.no_grad()
def predict(classifier: SequenceClassifier, examples: list[dict[str, torch.Tensor]], batch_size: int) -> list[float]:
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = glue.pad_batch(examples[start : start + batch_size])
        batch.pop("labels")
        logits = classifier(**{k: v.to(device) for k, v in batch.items()})
        outputs.extend(logits.squeeze(-1).tolist() if logits.size(-1) == 1 else logits.argmax(-1).tolist())
    classifier.train(was_training)
    return outputs


def evaluate(classifier: SequenceClassifier, task: glue.Task, validation: dict[str, list], batch_size: int) -> dict:
    metrics: dict[str, float] = {}
    for split, examples in validation.items():
        result = glue.compute_metrics(
            task.name, predict(classifier, examples, batch_size), [e["labels"] for e in examples]
        )
        suffix = split.removeprefix("validation")  # mnli: _matched / _mismatched
        metrics.update({f"{k}{suffix}": v for k, v in result.items()})
    return metrics


def grid_folder(lr: float | None) -> str:
    """The part of a run's folder that names its rate of glue.lrs ('' without a grid)."""
    return f"lr={lr:g}/" if lr is not None else ""


def finetune_task(spec: RunSpec, pretrained: Path, task_name: str, seed: int, root: Path,
                  lr: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Fine-tune one task with one seed (at `lr`, a rate of glue.lrs); its record goes to
    <root>/glue/<task>/[lr=<lr>/]seed=<seed>/run.json (also when it fails), its test predictions to
    <root>/glue_submission/[lr=<lr>/]seed=<seed>/."""
    run_dir = root / "glue" / task_name / f"{grid_folder(lr)}seed={seed}"
    task, recipe = glue.task(task_name), spec.glue.recipe_for(task_name, lr)
    check_same_recipe(run_dir, recipe)  # the GLUE settings beside the task's own recipe may change (more tasks)

    def finetune(record: RunRecord) -> None:
        record.update(task=task_name, seed=seed, pretrained=str(pretrained), recipe=recipe.to_dict())
        L.seed_everything(seed, workers=True, verbose=False)
        tune_cpu_process()
        encoder = load_pretrained(pretrained).train()
        classifier = SequenceClassifier(encoder, task.num_labels, recipe.dropout)
        tokenizer = load_pretrained_tokenizer(pretrained, recipe.max_length, encoder.config.vocab_size)
        regression = task.num_labels == 1
        train = glue.encode(tokenizer, glue.load_split(spec.glue.source, task_name, "train"), regression)
        if recipe.max_train_examples is not None:
            train = train[: recipe.max_train_examples]
        validation = {
            split: glue.encode(tokenizer, glue.load_split(spec.glue.source, task_name, split), regression)
            for split in task.validation_splits
        }
        validation = {split: examples[: recipe.max_eval_examples] for split, examples in validation.items()}
        loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True, collate_fn=glue.pad_batch)
        total_steps = len(loader) * recipe.epochs
        module = GlueModule(classifier, task, recipe, total_steps, validation)
        settings, shown = progress(spec.trainer.to_dict())
        stop = StopOnSignal()
        record.update(precision=precision_used(spec.trainer))
        settings["precision"] = record.data["precision"]["used"]
        trainer = L.Trainer(
            **{**settings, "max_steps": -1, "val_check_interval": None, "max_epochs": recipe.epochs,
               "enable_checkpointing": False},
            logger=False, default_root_dir=str(run_dir), callbacks=[stop, *shown],
        )  # fmt: skip
        started = time.perf_counter()
        with stop.interrupts():
            trainer.fit(module, loader)
        seconds = time.perf_counter() - started
        if module.best is not None:
            classifier.load_state_dict(module.best[1])
        metrics = evaluate(classifier, task, validation, recipe.batch_size)
        score = glue.main_score(task_name, metrics)
        majority = glue.majority_score(task_name, {s: [e["labels"] for e in v] for s, v in validation.items()})
        counts = encoder.parameter_counts(lm_head=False)
        head = sum(p.numel() for p in classifier.classifier.parameters())
        record.update(
            metrics={
                **metrics,
                "score": score,
                "majority_score": majority,
                "at_majority": glue.at_majority(score, majority),
                "epochs": module.history,
            },
            parameters={"unique": counts.unique + head, "total": counts.total + head, "encoder": counts.to_dict()},
            sharing=loaded_sharing(pretrained, checkpoint_sharing(pretrained, encoder)),
            speed={"train_examples_per_second": len(train) * recipe.epochs / seconds},
            examples={"train": len(train), **{s: len(v) for s, v in validation.items()}},
        )
        if spec.glue.predict_test:
            write_predictions(spec, classifier, tokenizer, task, recipe, root / "glue_submission" /
                              f"{grid_folder(lr)}seed={seed}")  # fmt: skip

    return run_once(spec.to_dict(), run_dir, finetune, run_selecting_keys())[0]


def check_same_recipe(run_dir: Path, recipe: GlueRecipe) -> None:
    """A task's folder holds its run under one recipe: refused under another, as `record.check_same_config`
    refuses a changed configuration."""
    if (run_dir / RECORD_NAME).exists():
        stored = read_record(run_dir).get("recipe")
        if stored is not None and stored != (current := recipe.to_dict()):
            changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
            raise ConfigError(f"{run_dir} holds a run of another GLUE recipe ({', '.join(changed)} differ); move "
                              f"that folder away to keep it, or set output_root elsewhere")  # fmt: skip


def write_predictions(spec: RunSpec, classifier: SequenceClassifier, tokenizer: Any, task: glue.Task,
                      recipe: GlueRecipe, folder: Path) -> None:  # fmt: skip
    """Test-set predictions as GLUE submission files; the MNLI model also predicts the diagnostic set (AX.tsv)."""
    targets = [(task, split) for split in task.test_splits]
    if task.name == "mnli":
        targets.append((glue.task("ax"), "test"))
    for target, split in targets:
        data = glue.load_split(spec.glue.source, target.name, split)
        predictions = predict(classifier, glue.encode(tokenizer, data, task.num_labels == 1), recipe.batch_size)
        rows = glue.submission_rows(target.name, data["idx"], predictions)
        atomic_write_bytes(folder / target.submission[split], ("\n".join(rows) + "\n").encode())


def run_glue(spec: RunSpec, pretrained: str | Path, run_dir: Path) -> dict[str, Any]:
    """Every task × seed (× rate of glue.lrs); returns (and writes) the summary: per task the median and spread
    over seeds of each metric at the task's chosen rate, the GLUE score over the tasks run, and the model's unique
    parameters."""
    glue.check(spec.glue)
    pretrained = resolve_path(str(pretrained))
    tasks = [t for t in spec.glue.tasks if t != "ax"]
    rates = [float(lr) for lr in spec.glue.lrs] if spec.glue.lrs is not None else [None]
    summary: dict[str, Any] = {"pretrained": str(pretrained), "tasks": {}, "failed": []}
    for name in tasks:
        by_rate: dict[float | None, list[dict[str, Any]]] = {}
        for lr in rates:
            for seed in spec.glue.seeds:
                try:
                    record = finetune_task(spec, pretrained, name, seed, run_dir, lr)
                except (ConfigError, RunInterrupted):  # bad input, or a stop: not one task's failure
                    raise
                except Exception as error:
                    summary["failed"].append({"task": name, "seed": seed, "lr": lr,
                                              "error": f"{type(error).__name__}: {error}"})  # fmt: skip
                else:
                    by_rate.setdefault(lr, []).append(record)
        if by_rate:
            scores = {rate: [r["metrics"]["score"] for r in runs] for rate, runs in by_rate.items()}
            lr = best_mean(scores)
            summary["tasks"][name] = (
                summarise(name, by_rate[lr])
                | {"lr": lr}
                | ({"lrs": {rate: statistics.fmean(s) for rate, s in scores.items()}} if lr is not None else {})
            )
            summary["unique_parameters"] = by_rate[lr][0]["parameters"]["encoder"]["unique"]
            summary["sharing"] = named_schemes(by_rate[lr][0]["sharing"])["sharing"]
    scores = [t["score"]["median"] for t in summary["tasks"].values()]
    summary["glue_score"] = sum(scores) / len(scores) if scores else None
    atomic_write_json(run_dir / SUMMARY_NAME, machine_free(summary, record_roots(spec.to_dict(), run_dir)))
    atomic_write_bytes(run_dir / "glue_summary.md", summary_table(summary).encode())
    print(summary_table(summary))
    print(f"done: {run_dir}: glue_summary.md there, each task's runs in {run_dir / 'glue'}")
    return summary


def summarise(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [*glue.task(name).metrics, "score"]
    return {
        key: {
            "median": statistics.median(r["metrics"][key] for r in results),
            "min": min(r["metrics"][key] for r in results),
            "max": max(r["metrics"][key] for r in results),
            "stdev": statistics.stdev(r["metrics"][key] for r in results) if len(results) > 1 else 0.0,
        }
        for key in keys
    } | {
        "seeds": [r["seed"] for r in results],
        "majority_score": results[0]["metrics"].get("majority_score"),  # runs recorded before it: None
        "at_majority": sum(bool(r["metrics"].get("at_majority")) for r in results),
    }


def rate_cell(result: dict[str, Any]) -> str:
    """The task's rate, and where glue.lrs gave a grid, each rate's mean score."""
    if "lrs" not in result:
        return "recipe"
    tried = ", ".join(f"{lr:g}: {score:.4f}" for lr, score in result["lrs"].items())
    return f"{result['lr']:g} ({tried})"


def summary_table(summary: dict[str, Any]) -> str:
    lines = ["| task | metric | median | min | max | std | seeds | lr | majority class | runs at it |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, result in summary["tasks"].items():
        majority = result["majority_score"]
        for metric in glue.task(name).metrics:
            m = result[metric]
            lines.append(f"| {name} | {metric} | {m['median']:.4f} | {m['min']:.4f} | {m['max']:.4f} "
                         f"| {m['stdev']:.4f} | {len(result['seeds'])} | {rate_cell(result)} "
                         f"| {'—' if majority is None else f'{majority:.4f}'} | {result['at_majority']} |")  # fmt: skip
    for failure in summary["failed"]:
        lines.append(f"| {failure['task']} | failed (seed {failure['seed']}, lr {failure['lr']}) | {failure['error']}"
                     " | | | | | | | |")  # fmt: skip
    score = summary["glue_score"]
    lines.append(f"\nGLUE score over {len(summary['tasks'])} tasks: {score:.4f}" if score is not None else "")
    lines.append(f"unique parameters (encoder): {summary.get('unique_parameters', 0):,}")
    return "\n".join(lines) + "\n"
