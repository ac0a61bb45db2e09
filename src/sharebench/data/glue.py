"""GLUE: the nine tasks and ax, read from the hub, a local copy in the hub's layout, or the classic TSV layout;
the official metrics; test-set predictions in the submission format; and examples encoded and padded into batches.

Every loader yields the same shape: per split, `text_a`, `text_b` (None for single-sentence tasks), `label`
(the hub's label ids; -1 where the split has no labels, a float for STS-B) and `idx`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sharebench.errors import WITHOUT_THE_HUB, ConfigError
from sharebench.paths import resolve_path

if TYPE_CHECKING:
    from sharebench.run.spec import Glue


@dataclass(frozen=True)
class Task:
    name: str
    hub_columns: tuple[str, ...]  # text columns in the hub's layout
    labels: tuple[str, ...]  # label names by id; () for regression
    metrics: tuple[str, ...]
    tsv_folder: str
    tsv_files: dict[str, str]  # split -> file in the classic layout
    tsv_columns: tuple[str | int, ...]  # text columns (names, or positions for CoLA's headerless files)
    tsv_label: str | int | None
    submission: dict[str, str]  # test split -> submission file name

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def validation_splits(self) -> list[str]:
        return [s for s in self.tsv_files if s.startswith("validation")]

    @property
    def test_splits(self) -> list[str]:
        return list(self.submission)


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {
    "cola": Task("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",), "CoLA",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, (3,), 1, {"test": "CoLA.tsv"}),
    "sst2": Task("sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "SST-2",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, ("sentence",), "label",
                 {"test": "SST-2.tsv"}),
    "mrpc": Task("mrpc", _PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "MRPC",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, ("#1 String", "#2 String"),
                 "Quality", {"test": "MRPC.tsv"}),
    "stsb": Task("stsb", _PAIR, (), ("pearson", "spearman"), "STS-B",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, _PAIR, "score",
                 {"test": "STS-B.tsv"}),
    "qqp": Task("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"), "QQP",
                {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, ("question1", "question2"),
                "is_duplicate", {"test": "QQP.tsv"}),
    "mnli": Task("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 ("accuracy_matched", "accuracy_mismatched"), "MNLI",
                 {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                  "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                  "test_mismatched": "test_mismatched.tsv"}, _PAIR, "gold_label",
                 {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}),
    "qnli": Task("qnli", ("question", "sentence"), _NLI2, ("accuracy",), "QNLI",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, ("question", "sentence"),
                 "label", {"test": "QNLI.tsv"}),
    "rte": Task("rte", _PAIR, _NLI2, ("accuracy",), "RTE",
                {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, _PAIR, "label",
                {"test": "RTE.tsv"}),
    "wnli": Task("wnli", _PAIR, ("not_entailment", "entailment"), ("accuracy",), "WNLI",
                 {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, _PAIR, "label",
                 {"test": "WNLI.tsv"}),
    "ax": Task("ax", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), (), "diagnostic",
               {"test": "diagnostic.tsv"}, _PAIR, None, {"test": "AX.tsv"}),
}  # fmt: skip
HUB_NAME = "nyu-mll/glue"


def task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown GLUE task {name!r}; valid choices: {', '.join(TASKS)}")
    return TASKS[name]


# ---- loading ------------------------------------------------------------------------------------------------


def layout(source: str) -> str:
    """'hub', 'parquet' (a local copy in the hub's layout) or 'tsv' (the classic download_glue_data.py layout)."""
    if not source.startswith(("/", ".", "~")) and not Path(source).exists():
        return "hub"
    path = resolve_path(source)
    if not path.is_dir():
        raise ConfigError(
            f"glue.source: {path} does not exist; give a folder in the hub's layout (cola/train-*.parquet), "
            f"the classic TSV layout (CoLA/train.tsv) or the hub name {HUB_NAME}"
        )
    if any(path.glob("*/*.parquet")):  # a local clone of the hub's dataset, its card naming the configs, loads as one
        card = path / "README.md"
        return "hub" if card.is_file() and "configs:" in card.read_text() else "parquet"
    if any(path.glob("*/*.tsv")):
        return "tsv"
    raise ConfigError(f"glue.source: {path} holds neither */*.parquet (hub layout) nor */*.tsv (classic layout)")


def load_split(source: str, name: str, split: str) -> dict[str, list]:
    spec = task(name)
    kind = layout(source)
    if kind == "tsv":
        return _load_tsv(resolve_path(source) / spec.tsv_folder, spec, split)
    import datasets

    try:
        if kind == "hub":
            rows = datasets.load_dataset(source, name, split=split)
        else:
            folder = resolve_path(source) / name
            files = sorted(folder.glob(f"{split}-*.parquet"))
            if not files:
                raise ConfigError(f"glue: {name} has no {split} split in {folder}; {_present(folder, '*.parquet')}")
            rows = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    except ConfigError:
        raise
    except Exception as error:
        advice = f"; {WITHOUT_THE_HUB}" if kind == "hub" else ""
        raise ConfigError(f"glue: cannot read {name}/{split} from {source}: {str(error).splitlines()[0]}{advice}"
                          ) from error  # fmt: skip
    missing = [c for c in (*spec.hub_columns, "label", "idx") if c not in rows.column_names]
    if missing:
        raise ConfigError(f"glue: {name}/{split} lacks columns {missing}; it has {rows.column_names}")
    return {
        "text_a": rows[spec.hub_columns[0]],
        "text_b": rows[spec.hub_columns[1]] if len(spec.hub_columns) > 1 else None,
        "label": rows["label"],
        "idx": rows["idx"],
    }


def _present(folder: Path, pattern: str) -> str:
    found = sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []
    return f"files there: {', '.join(found)}" if found else f"{folder} holds no {pattern} files"


def _load_tsv(folder: Path, spec: Task, split: str) -> dict[str, list]:
    if split not in spec.tsv_files:
        raise ConfigError(f"glue: {spec.name} has no {split} split; valid: {', '.join(spec.tsv_files)}")
    path = folder / spec.tsv_files[split]
    if not path.is_file():
        raise ConfigError(f"glue: {path} not found; {_present(folder, '*.tsv')}")
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    headerless = isinstance(spec.tsv_columns[0], int) and not split.startswith("test")
    header = {} if headerless else {name: i for i, name in enumerate(rows.pop(0))}
    columns = spec.tsv_columns
    if spec.name == "cola" and split == "test":
        columns = ("sentence",)

    def column(key: str | int) -> int:
        if isinstance(key, int):
            return key
        if key not in header:
            raise ConfigError(f"glue: {path} has no column {key!r}; its header: {', '.join(header)}")
        return header[key]

    try:
        text_a = [row[column(columns[0])] for row in rows]
        text_b = [row[column(columns[1])] for row in rows] if len(columns) > 1 else None
        labelled = spec.tsv_label is not None and not split.startswith("test")
        labels = [_label(spec, row[column(spec.tsv_label)]) for row in rows] if labelled else [-1] * len(rows)
        indices = [int(row[header["index"]]) if "index" in header else i for i, row in enumerate(rows)]
    except IndexError as error:
        raise ConfigError(f"glue: {path} has a row with too few columns (corrupt TSV?)") from error
    if spec.name == "qqp" and "id" in header:
        indices = [int(row[header["id"]]) for row in rows]
    return {"text_a": text_a, "text_b": text_b, "label": labels, "idx": indices}


def _label(spec: Task, value: str) -> int | float:
    if not spec.labels:
        return float(value)
    if value in spec.labels:
        return spec.labels.index(value)
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"glue: {spec.name} label {value!r} is not one of {', '.join(spec.labels)}") from error


def check(settings: Glue) -> None:
    """The checks of the `glue` config group that need the task table or the files, before any model is loaded."""
    for name in settings.tasks:
        task(name)
        if name == "ax" and "mnli" not in settings.tasks:
            raise ConfigError("glue.tasks: ax is predicted by the MNLI model; add mnli to glue.tasks")
    layout(settings.source)


# ---- metrics ------------------------------------------------------------------------------------------------


def compute_metrics(name: str, predictions: Any, references: Any) -> dict[str, float]:
    """The official metrics of a task: class ids (floats for stsb) against references. For mnli the result is
    one accuracy; which validation set it was measured on is the caller's to name."""
    import torchmetrics.functional as M

    spec = task(name)
    preds, refs = torch.as_tensor(predictions), torch.as_tensor(references)
    if not spec.labels:
        preds, refs = preds.double(), refs.double()
        return {"pearson": M.pearson_corrcoef(preds, refs).item(), "spearman": M.spearman_corrcoef(preds, refs).item()}
    preds, refs = preds.long(), refs.long()
    accuracy = (preds == refs).double().mean().item()
    if spec.name == "cola":
        # A constant answer (or constant labels) leaves the correlation undefined: 0, as GLUE's scorer
        # (scikit-learn) has it; torchmetrics returns a non-zero value there.
        constant = len(preds.unique()) == 1 or len(refs.unique()) == 1
        return {"matthews_correlation": 0.0 if constant else M.matthews_corrcoef(preds, refs, task="binary").item()}
    if spec.name in ("mrpc", "qqp"):
        return {"f1": M.f1_score(preds, refs, task="binary").item(), "accuracy": accuracy}
    return {"accuracy": accuracy}


def majority_score(name: str, references: dict[str, list[Any]]) -> float | None:
    """The task's score for a model that always answers the most frequent label of each validation split
    (`references`: labels by split; None for a regression task): the score of a run that learnt nothing from the
    text."""
    if not task(name).labels:
        return None
    metrics = {}
    for split, labels in references.items():
        labels = [int(label) for label in labels]
        majority = max(set(labels), key=labels.count)
        suffix = split.removeprefix("validation")  # mnli: _matched / _mismatched
        metrics |= {f"{k}{suffix}": v for k, v in compute_metrics(name, [majority] * len(labels), labels).items()}
    return main_score(name, metrics)


def at_majority(score: float, majority: float | None) -> bool:
    return majority is not None and abs(score - majority) < 1e-9


def main_score(name: str, metrics: dict[str, float]) -> float:
    """The task's GLUE score: its metric, or the mean of its two."""
    return sum(metrics[m] for m in task(name).metrics) / len(task(name).metrics)


def submission_rows(name: str, indices: list[int], predictions: list[float]) -> list[str]:
    spec = task(name)
    if not spec.labels:
        values = [f"{min(5.0, max(0.0, p)):.3f}" for p in predictions]
    elif spec.name in ("mnli", "ax", "qnli", "rte"):
        values = [spec.labels[int(p)] for p in predictions]
    else:
        values = [str(int(p)) for p in predictions]
    return ["index\tprediction", *(f"{i}\t{v}" for i, v in zip(indices, values, strict=True))]


# ---- batches ------------------------------------------------------------------------------------------------


def encode(tokenizer: Any, split: dict[str, list], regression: bool) -> list[dict[str, torch.Tensor]]:
    texts = split["text_a"] if split["text_b"] is None else list(zip(split["text_a"], split["text_b"], strict=True))
    encodings = tokenizer.encode_batch(texts)
    label_type = torch.float if regression else torch.long
    return [
        {
            "input_ids": torch.tensor(e.ids),
            "token_type_ids": torch.tensor(e.type_ids),
            "labels": torch.tensor(label, dtype=label_type),
        }
        for e, label in zip(encodings, split["label"], strict=True)
    ]


def pad_batch(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Dynamic padding: to the longest sequence of the batch."""
    length = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
    for e in examples:
        pad = length - len(e["input_ids"])
        batch["input_ids"].append(F.pad(e["input_ids"], (0, pad)))
        batch["token_type_ids"].append(F.pad(e["token_type_ids"], (0, pad)))
        batch["attention_mask"].append(F.pad(torch.ones_like(e["input_ids"]), (0, pad)))
    stacked = {k: torch.stack(v) for k, v in batch.items()}
    stacked["labels"] = torch.stack([e["labels"] for e in examples])
    return stacked
