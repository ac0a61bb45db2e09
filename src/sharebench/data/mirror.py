"""`sharebench data download <names> --to DIR`: a local data mirror in the layout SHAREBENCH_DATA reads, written
from the Hugging Face hub where there is a network, for machines and clusters without one.

    wikipedia/{train,validation}-00000-of-00001.parquet   wikimedia/wikipedia 20231101.en, 1 % of articles held out
    wikitext2/{train,validation,test}-00000-of-00001.parquet  Salesforce/wikitext wikitext-2-raw-v1, as it is
    glue/<task>/<split>-00000-of-00001.parquet, README.md   nyu-mll/glue, every task and ax, with its dataset card
    tinyshakespeare/input.txt                              the copy shipped with the package
    bert-base-uncased/vocab.txt                            google-bert/bert-base-uncased
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sharebench.data.glue import HUB_NAME, TASKS
from sharebench.data.tokenizer import HUB_VOCAB
from sharebench.errors import WITHOUT_THE_HUB, ConfigError
from sharebench.paths import CORPUS_DIR

# Where each part of a mirror comes from: a hub dataset (or a local clone of one) and its config, or a hub file.
SOURCES: dict[str, tuple[str, str | None]] = {
    "wikipedia": ("wikimedia/wikipedia", "20231101.en"),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "glue": (HUB_NAME, None),
    "tinyshakespeare": (str(CORPUS_DIR / "tinyshakespeare.txt"), None),
    "bert-base-uncased": HUB_VOCAB,
}
MAX_TRAIN_CHARS = 100_000_000  # enough for every recipe; 1 % of as much again is held out for validation
ROWS_PER_WRITE = 1_000


def download(names: Sequence[str], to: Path, max_train_chars: int | None = None,
             sources: dict[str, tuple[str, str | None]] | None = None) -> list[str]:  # fmt: skip
    """Writes each named part of a mirror under `to` (Wikipedia up to `max_train_chars`, default MAX_TRAIN_CHARS);
    a part already there is left as it is. Returns one line per part, saying what was written."""
    max_train_chars = MAX_TRAIN_CHARS if max_train_chars is None else max_train_chars
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise ConfigError(
            f"data download: unknown {', '.join(unknown) or 'nothing named'}; valid: {', '.join(SOURCES)}"
        )
    if max_train_chars < 1:
        raise ConfigError(f"data download: --max-train-chars must be ≥ 1; got {max_train_chars}")
    sources = {**SOURCES, **(sources or {})}
    writers = {"wikipedia": _wikipedia, "wikitext2": _splits, "glue": _glue, "tinyshakespeare": _copy_file,
               "bert-base-uncased": _vocab}  # fmt: skip
    folders = {"tinyshakespeare": "tinyshakespeare/input.txt", "bert-base-uncased": "bert-base-uncased/vocab.txt"}
    lines = []
    for name in dict.fromkeys(names):
        target = to / folders.get(name, name)
        if target.exists():
            lines.append(f"{name}: {target} is there already; delete it to download it again")
            continue
        partial = target.with_name(f".{target.name}.partial")  # renamed into place once whole
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            what = writers[name](sources[name], partial, max_train_chars)
        except ConfigError:
            raise
        except Exception as error:  # offline, unreachable, a name the hub does not have, ...
            raise ConfigError(
                f"data download: cannot read {name} from {sources[name][0]} "
                f"({type(error).__name__}: {str(error).splitlines()[0]}); {WITHOUT_THE_HUB}"
            ) from None
        partial.replace(target)
        lines.append(f"{name}: {what} → {target}")
    return lines


def _wikipedia(source: tuple[str, str | None], folder: Path, max_train_chars: int) -> str:
    """Articles in the hub's order until `max_train_chars`; those with crc32(id) % 100 == 0 are held out, as in
    the suite's own mirror."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = datasets.load_dataset(*source, split="train", streaming=True)
    folder.mkdir()
    writers: dict[str, Any] = {}
    pending: dict[str, list[dict]] = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0}
    chars = 0

    def flush(split: str) -> None:
        table = pa.Table.from_pylist(pending[split])
        if split not in writers:
            writers[split] = pq.ParquetWriter(folder / f"{split}-00000-of-00001.parquet", table.schema)
        writers[split].write_table(table)
        pending[split].clear()

    for row in rows:
        split = "validation" if zlib.crc32(str(row["id"]).encode()) % 100 == 0 else "train"
        pending[split].append(row)
        counts[split] += 1
        if len(pending[split]) == ROWS_PER_WRITE:
            flush(split)
        if split == "train":
            chars += len(row["text"])
            if chars >= max_train_chars:
                break
    for split in pending:
        if pending[split]:
            flush(split)
    for writer in writers.values():
        writer.close()
    return f"{counts['train']:,} train and {counts['validation']:,} validation articles ({chars:,} train characters)"


def _splits(source: tuple[str, str | None], folder: Path, _: int) -> str:
    """Every split of a hub dataset, whole, one parquet file each."""
    import datasets

    folder.mkdir()
    splits = datasets.load_dataset(*source)
    for split, rows in splits.items():
        rows.to_parquet(folder / f"{split}-00000-of-00001.parquet")
    return ", ".join(f"{len(rows):,} {split} rows" for split, rows in splits.items())


def _glue(source: tuple[str, str | None], folder: Path, _: int) -> str:
    import datasets

    for task in TASKS:
        for split, rows in datasets.load_dataset(source[0], task).items():
            (folder / task).mkdir(parents=True, exist_ok=True)
            rows.to_parquet(folder / task / f"{split}-00000-of-00001.parquet")
    write_glue_card(folder)
    return f"{len(TASKS)} tasks"


def write_glue_card(folder: Path, about: str = f"written by `sharebench data download` from {HUB_NAME}") -> None:
    """The dataset card by which `datasets.load_dataset(<folder>, <task>)` reads the folder as it reads the hub."""
    lines = ["---", "configs:"]
    for task in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        lines += [f"- config_name: {task}", "  data_files:"]
        for file in sorted((folder / task).glob("*.parquet")):
            lines += [f"  - split: {file.name.split('-')[0]}", f"    path: {task}/{file.name}"]
    lines += ["---", f"GLUE in the layout of the hub's {HUB_NAME}: {about}.", ""]
    (folder / "README.md").write_text("\n".join(lines))


def _copy_file(source: tuple[str, str | None], target: Path, _: int) -> str:
    shutil.copyfile(source[0], target)
    return f"{target.stat().st_size:,} bytes"


def _vocab(source: tuple[str, str | None], target: Path, max_train_chars: int) -> str:
    """A file of a model's repository on the hub, or of a local clone of it."""
    repo, filename = source[0], str(source[1])
    if Path(repo).is_dir():
        return _copy_file((str(Path(repo) / filename), None), target, max_train_chars)
    from huggingface_hub import hf_hub_download

    return _copy_file((hf_hub_download(repo, filename), None), target, max_train_chars)
