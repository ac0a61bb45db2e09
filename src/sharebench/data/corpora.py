"""Pretraining data: text through `datasets`, a tokenizer, and packed token blocks cached on disk.

A source is a local file or folder (parquet, json, csv or text; a folder's files name their split, as in the
hub's layout), a URL of a text file, or a hub dataset name with its config (`hub_config`; a local clone of a hub
dataset, a folder with a dataset card, loads the same way). Documents are read in order up to a character cap,
tokenised once, joined with a separator token into one stream per split, and cached as a .npy file keyed by a
hash of everything that produced it, so a second run does not tokenise again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, Sampler

from sharebench.data.tokenizer import (
    SPECIAL_TOKENS,
    CharTokenizer,
    SubwordTokenizer,
    load_run_tokenizer,
    train_wordpiece,
    vocab_file_path,
    wordpiece_pipeline,
)
from sharebench.errors import WITHOUT_THE_HUB_OR_EMBEDDED, ConfigError
from sharebench.paths import atomic_write_bytes, atomic_write_json, resolve_path

if TYPE_CHECKING:
    from sharebench.run.spec import Data, Masking

# Part of every cache key: a change to how text becomes tokens (here: WordPiece pieces numbered in order, not in
# hash order) must not reuse tokens or vocabularies cached before it.
TOKENIZATION = 2
LOCAL_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}


# ---- reading documents ------------------------------------------------------------------------------------


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """A long step before training (reading and tokenizing a corpus): one line when it starts, one when it ends."""
    print(f"data: {what} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"data: done in {time.perf_counter() - started:,.0f} s", flush=True)


def is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).exists()


def from_hub(data: Data) -> bool:
    """Read through `datasets.load_dataset(source, hub_config)`: a hub dataset, or a local clone of one."""
    return not is_local(data.source) or data.hub_config is not None


def local_source(source: str) -> Path:
    path = resolve_path(source)
    if not path.exists():
        raise ConfigError(
            f"data.source: {path} does not exist; set data.source to a local file or folder "
            f"({', '.join(sorted(LOCAL_FORMATS))}) or a hub dataset name, or point SHAREBENCH_DATA at a data mirror"
        )
    return path


def local_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in LOCAL_FORMATS)
    if not files:
        raise ConfigError(f"data.source: {path} holds no data files; valid kinds: {', '.join(sorted(LOCAL_FORMATS))}")
    return files


def source_identity(data: Data) -> dict[str, Any]:
    """What the cached tokens depend on: the files (path, size, modification time) or the hub name."""
    if from_hub(data):
        return {"hub": data.source, "config": data.hub_config}
    files = local_files(local_source(data.source))
    return {"files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}


def _open_split(data: Data, split: str) -> Any:
    import datasets

    if from_hub(data):
        return datasets.load_dataset(data.source, data.hub_config, split=split, streaming=True)
    if is_local(data.source):
        path = local_source(data.source)
        files = local_files(path)
        builder = LOCAL_FORMATS[files[0].suffix]
        if path.is_file():
            data_files = {split: str(path)}
        else:
            data_files = {split: [str(f) for f in files if f.name.startswith(split) or f.parent.name == split]}
            if not data_files[split]:
                found = sorted({f.name.split("-")[0].split(".")[0] for f in files})
                raise ConfigError(f"data: split {split!r} not found in {path}; splits there: {', '.join(found)}")
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=data_files, split=split, streaming=True, **kwargs)
    return datasets.load_dataset("text", data_files={split: data.source}, split=split, streaming=True,
                                 sample_by="document")  # fmt: skip


def _stream_split(data: Data, split: str) -> Iterator[str]:
    """A split's documents in order: its rows, or with `rows=wikitext_line` its lines joined into articles."""
    rows = _stream_rows(data, split)
    return wikitext_articles(rows) if data.rows == "wikitext_line" else rows


# An article of WikiText starts at its title, a heading of level one (" = Title = "); " = = Section = = " does not.
WIKITEXT_TITLE = re.compile(r" = [^=].* = ")


def wikitext_articles(lines: Iterable[str]) -> Iterator[str]:
    """WikiText's rows (`Salesforce/wikitext`), each a line of an article with its newline, or empty, joined into
    the articles they come from."""
    article: list[str] = []
    has_text = False  # whether the article so far holds more than empty rows
    for line in lines:
        if has_text and WIKITEXT_TITLE.fullmatch(line.rstrip("\n")):
            yield "".join(article)
            article, has_text = [], False
        article.append(line)
        has_text = has_text or bool(line.strip())
    if has_text:
        yield "".join(article)


def _stream_rows(data: Data, split: str) -> Iterator[str]:
    try:
        for row in _open_split(data, split):
            if data.text_column not in row:
                raise ConfigError(
                    f"data.text_column={data.text_column!r} is not a column of {data.source}; columns: {', '.join(row)}"
                )
            yield row[data.text_column]
    except ConfigError:
        raise
    except Exception as error:  # a truncated parquet file, a malformed json line, an unreachable hub, ...
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        advice = f"; {WITHOUT_THE_HUB_OR_EMBEDDED}" if not is_local(data.source) else ""
        raise ConfigError(f"data: cannot read {data.source} ({split}): {message}{advice}") from error


def check_source(data: Data) -> None:
    """The cheap checks of a data configuration: local files exist, the vocabulary file too."""
    if not from_hub(data):
        local_files(local_source(data.source))
    if data.tokenizer.kind == "vocab_file":
        vocab_file_path(data.tokenizer)


SPLITS = ("train", "validation", "test")


def read_documents(data: Data) -> dict[str, list[str]]:
    """Train, validation and test documents. With a `test_split` (WikiText's), each split is read from its own,
    the validation and test splits each up to `max_validation_chars`. Otherwise the held-out text is the
    validation split, or without one the last `validation_fraction`: of the characters for a single-document
    source (Tiny Shakespeare, as nanoGPT), else of the documents, of which no more are read than the two caps
    together (a hub corpus of one split is streamed, not read whole). `max_validation_chars` caps the held-out
    text, which validation and test then share (`held_out_as_validation_and_test`)."""
    if data.test_split is not None:
        assert data.validation_split is not None  # the spec asks for one beside a test split
        return {
            "train": _cap(_stream_split(data, data.train_split), data.max_train_chars),
            "validation": _cap(_stream_split(data, data.validation_split), data.max_validation_chars),
            "test": _cap(_stream_split(data, data.test_split), data.max_validation_chars),
        }
    if data.validation_split is not None:
        train = _cap(_stream_split(data, data.train_split), data.max_train_chars)
        held_out = _cap(_stream_split(data, data.validation_split), data.max_validation_chars)
        return {"train": train, **held_out_as_validation_and_test(held_out, data.test_fraction)}
    assert data.validation_fraction is not None  # the spec asks for one where there is no validation split
    caps = (data.max_train_chars, data.max_validation_chars)
    documents = _cap(_stream_split(data, data.train_split), None if None in caps else sum(caps))
    if len(documents) == 1:
        text = documents[0]
        cut = int(len(text) * (1 - data.validation_fraction))
        train, validation = [text[:cut]], [text[cut:]]
    else:
        cut = int(len(documents) * (1 - data.validation_fraction))
        train, validation = documents[:cut], documents[cut:]
    held_out = _cap(validation, data.max_validation_chars)
    return {"train": _cap(train, data.max_train_chars), **held_out_as_validation_and_test(held_out, data.test_fraction)}


def held_out_as_validation_and_test(documents: list[str], test_fraction: float) -> dict[str, list[str]]:
    """The held-out text split in two, disjoint by document: `test_fraction` of the documents, spread evenly
    through them (at 0.5, every second one), are the test split; a single document (Tiny Shakespeare's held-out
    tenth) is cut by characters, its end the test split. Selection (learning-rate searches, the curves) reads
    validation; tables and verdicts read test."""
    if len(documents) == 1:
        text = documents[0]
        cut = int(len(text) * (1 - test_fraction))
        return {"validation": [text[:cut]], "test": [text[cut:]]}
    in_test = [int((i + 1) * test_fraction) > int(i * test_fraction) for i in range(len(documents))]
    return {
        "validation": [text for text, test in zip(documents, in_test, strict=True) if not test],
        "test": [text for text, test in zip(documents, in_test, strict=True) if test],
    }


def _cap(documents: Iterable[str], max_chars: int | None) -> list[str]:
    """Non-empty documents in order until `max_chars` characters (the last one cut); reads no further."""
    capped, chars = [], 0
    for text in documents:
        if not text:
            continue
        if max_chars is not None and chars + len(text) >= max_chars:
            capped.append(text[: max_chars - chars])
            break
        capped.append(text)
        chars += len(text)
    return capped


# ---- tokenizers ---------------------------------------------------------------------------------------------


def build_tokenizer(data: Data, objective: str, documents: Callable[[], dict[str, list[str]]], cache_dir: Path) -> Any:
    """The configured tokenizer; `documents` (the splits' texts) is called only when the vocabulary must be
    learnt: a WordPiece vocabulary from the training text, a character vocabulary from all of it (a character
    seen only in validation still has a token)."""
    spec = data.tokenizer
    if spec.kind == "pretrained":
        return load_run_tokenizer(resolve_path(spec.path))
    if spec.kind == "char":
        chars = "".join(sorted(set().union(*(set("".join(texts)) for texts in documents().values()))))
        return CharTokenizer(chars, SPECIAL_TOKENS if objective == "mlm" else ())
    from tokenizers.models import WordPiece

    if spec.kind == "vocab_file":
        path = vocab_file_path(spec)
        model = WordPiece.from_file(str(path), unk_token="[UNK]")
        return SubwordTokenizer(wordpiece_pipeline(model, spec.lowercase), sum(1 for _ in path.open()))
    from tokenizers import Tokenizer  # the remaining kind: a WordPiece vocabulary learnt from the training text

    key = _hash(
        TOKENIZATION, source_identity(data), spec.vocab_size, spec.train_chars, spec.lowercase, data.max_train_chars
    )
    path = cache_dir / "tokenizers" / f"wordpiece-{key}.json"
    with file_lock(path):  # the jobs of a sweep starting together train it once
        if not path.exists():
            with stage(f"learning a {spec.vocab_size:,}-piece WordPiece vocabulary (cached in {path.parent})"):
                text = _cap(documents()["train"], spec.train_chars)
                tokenizer = train_wordpiece(text, spec.vocab_size, spec.lowercase)
            atomic_write_bytes(path, tokenizer.to_str().encode())
    return SubwordTokenizer(Tokenizer.from_file(str(path)), spec.vocab_size)


def file_lock(path: Path) -> FileLock:
    """`path`.lock, held while a block runs (`with file_lock(path):`); other processes wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + ".lock"))


def tokenizer_vocab_size(data: Data, objective: str) -> int:
    """The embedding size a configuration needs, without tokenising (a trained WordPiece vocabulary is padded
    to its configured size, so the size is known before training it)."""
    spec = data.tokenizer
    if spec.kind == "vocab_file":
        return sum(1 for _ in vocab_file_path(spec).open())
    if spec.kind in ("char", "pretrained"):
        return build_tokenizer(data, objective, lambda: read_documents(data), Path()).vocab_size
    return int(spec.vocab_size)  # a learnt WordPiece vocabulary, padded to its configured size


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- token streams and blocks -----------------------------------------------------------------------------


# Documents tokenised at a time: at 1,000 Wikipedia articles the tokenizer's threads kept about 400 MB more
# memory than at 100, for the rest of the run.
TOKENIZE_CHUNK = 100


def tokenize_stream(tokenizer: Any, documents: list[str], separator: int | None) -> np.ndarray:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    pieces = []
    for start in range(0, len(documents), TOKENIZE_CHUNK):
        for ids in tokenizer.encode_batch(documents[start : start + TOKENIZE_CHUNK]):
            pieces.append(np.asarray(ids, dtype=dtype))
            if separator is not None:
                pieces.append(np.asarray([separator], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


class BlockDataset(Dataset):
    """Non-overlapping blocks of a token stream, shaped for the objective; items are (block, mask seed) pairs.

    MLM: [CLS] + seq_len − 2 tokens + [SEP], with `mlm.probability` of the inner tokens chosen for prediction
    (of those 80 % become [MASK], 10 % a random token, 10 % stay), drawn from the item's mask seed: the same
    block gets new masks every epoch in training, the same masks every time in validation, whatever the number
    of processes and however often the run was resumed. Causal: seq_len + 1 tokens, inputs and next-token labels.
    """

    def __init__(
        self,
        stream: np.ndarray,
        seq_len: int,
        objective: str,
        special_ids: dict[str, int],
        vocab_size: int,
        mlm: Masking | None = None,
    ) -> None:
        self.stream = stream
        self.objective = objective
        self.block_len = seq_len - 2 if objective == "mlm" else seq_len + 1
        self.special_ids = special_ids
        self.vocab_size = vocab_size
        self.mlm = mlm

    def __len__(self) -> int:
        return len(self.stream) // self.block_len

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, mask_seed = item
        block = torch.from_numpy(self.stream[index * self.block_len : (index + 1) * self.block_len].astype(np.int64))
        if self.objective == "causal":
            return {"input_ids": block[:-1], "labels": block[1:]}
        cls, sep = torch.tensor([self.special_ids["[CLS]"]]), torch.tensor([self.special_ids["[SEP]"]])
        generator = torch.Generator().manual_seed(mask_seed)
        input_ids, labels = mask_tokens(block, self.mlm, self.special_ids["[MASK]"], self.vocab_size, generator)
        ignore = torch.tensor([-100])
        return {"input_ids": torch.cat([cls, input_ids, sep]), "labels": torch.cat([ignore, labels, ignore])}


class BlockSampler(Sampler):
    """The order of blocks: one permutation per (seed, epoch), cut into global batches of which each of the
    `world_size` processes takes its own slice, so any number of processes trains on the same global batches.
    `skip_batches` resumes an epoch part-way. Yields (block index, mask seed)."""

    def __init__(
        self, blocks: int, batch_size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        self.blocks = blocks
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        return self.blocks // global_batch if self.shuffle else -(-self.blocks // global_batch)

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.blocks, generator=torch.Generator().manual_seed(_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.blocks)
        global_batch = self.batch_size * self.world_size
        start, self.skip_batches = self.skip_batches, 0
        for batch in range(start, self.batches_per_epoch()):
            own = order[batch * global_batch : (batch + 1) * global_batch][
                self.rank * self.batch_size : (self.rank + 1) * self.batch_size
            ]
            for index in own.tolist():
                yield index, (_seed(self.seed, self.epoch, index) if self.shuffle else index)


class EstimateSampler(BlockSampler):
    """Training blocks for estimating the training loss (nanoGPT's estimate_loss): one fixed random order that no
    training epoch uses. Lightning sets the epoch of every loader's sampler; following it would evaluate the
    batches the current epoch began with, which the model has just been trained on."""

    def __init__(self, blocks: int, batch_size: int, seed: int) -> None:
        super().__init__(blocks, batch_size, seed, shuffle=True)
        self.epoch = -1  # the permutation of an epoch that training never reaches

    def set_epoch(self, epoch: int) -> None:
        """The order stays the same whatever the training epoch."""


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def mask_tokens(
    tokens: torch.Tensor,
    mlm: Masking,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: inputs with the chosen positions corrupted, and labels (-100 where nothing is predicted)."""
    draws = torch.rand(tokens.shape + (2,), generator=generator)
    chosen = draws[..., 0] < mlm.probability
    if not chosen.any():  # every sequence predicts at least one token, so its loss is defined
        chosen[torch.randint(len(tokens), (1,), generator=generator)] = True
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    to_mask = chosen & (draws[..., 1] < mlm.mask)
    to_random = chosen & ~to_mask & (draws[..., 1] < mlm.mask + mlm.random)
    random_tokens = torch.randint(vocab_size, tokens.shape, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


class PretrainData:
    """Reads, tokenises (cached) and serves the blocks of one pretraining configuration."""

    def __init__(self, data: Data, objective: str, cache_dir: str | Path, mlm: Masking | None = None) -> None:
        self.data = data
        self.objective = objective
        self.mlm = mlm
        self.cache_dir = resolve_path(str(cache_dir))
        self.tokenizer: Any = None
        self.streams: dict[str, np.ndarray] = {}

    def prepare(self) -> None:
        """Tokenise both splits, or load them from the cache."""
        if self.streams:
            return
        key = _hash(
            TOKENIZATION,
            source_identity(self.data),
            {
                k: getattr(self.data, k)
                for k in (
                    "train_split",
                    "validation_split",
                    "validation_fraction",
                    "test_fraction",
                    "text_column",
                    "rows",
                    "test_split",
                )
            },
            self.data.max_train_chars,
            self.data.max_validation_chars,
            self.data.tokenizer.to_dict(),
            self.objective,
        )
        folder = self.cache_dir / "tokens" / f"{self.data.name}-{key}"
        documents = functools.cache(lambda: read_documents(self.data))
        self.tokenizer = build_tokenizer(self.data, self.objective, documents, self.cache_dir)
        for split in SPLITS:
            path = folder / f"{split}.npy"
            if not path.exists():
                with stage(f"tokenizing the {split} split (cached in {folder})"):
                    stream = tokenize_stream(self.tokenizer, documents()[split], self.separator_id)
                _atomic_save_npy(path, stream)
            self.streams[split] = np.load(path, mmap_mode="r")
        sizes = folder / "bytes.json"
        if not sizes.exists():
            counts = {split: sum(len(text.encode()) for text in documents()[split]) for split in SPLITS}
            atomic_write_json(sizes, counts)
        self.bytes: dict[str, int] = json.loads(sizes.read_text())
        for split, stream in self.streams.items():
            if len(stream) < self.block_len():
                raise ConfigError(
                    f"data: the {split} split has {len(stream)} tokens, fewer than one block of "
                    f"{self.block_len()}; lower data.seq_len or raise data.max_{split}_chars"
                )

    def unigram_loss(self) -> float:
        """The validation loss (nats per token) of a model that knows only how often each token occurs in the
        training split (add-one smoothed): what a model that learnt no context reaches."""
        counts = np.bincount(self.streams["train"], minlength=self.vocab_size) + 1.0
        return float(-np.log(counts / counts.sum())[self.streams["validation"]].mean())

    def fingerprint(self) -> str:
        """The content of the data as the model sees it, the same wherever it is read from: a hash of every
        split's tokens, which depend on the text and the tokenizer alone."""
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(f"{split}:{self.streams[split].dtype}:".encode())
            digest.update(memoryview(np.ascontiguousarray(self.streams[split])))
        return digest.hexdigest()[:16]

    def bits_per_byte(self, loss: float, split: str) -> float:
        """A split's loss in bits per UTF-8 byte of its text, comparable across tokenizers and corpora: the loss
        per predicted token in bits times the split's tokens per byte (a masked LM predicts a sample of the
        tokens; its figure assumes the rest cost as much)."""
        return loss / math.log(2) * len(self.streams[split]) / self.bytes[split]

    def block_len(self) -> int:
        return self.data.seq_len - 2 if self.objective == "mlm" else self.data.seq_len + 1

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_ids(self) -> dict[str, int]:
        return {t: self.tokenizer.token_id(t) for t in SPECIAL_TOKENS if self.tokenizer.token_id(t) is not None}

    @property
    def separator_id(self) -> int | None:
        return self.tokenizer.separator_id

    def dataset(self, split: str) -> BlockDataset:
        self.prepare()
        return BlockDataset(
            self.streams[split], self.data.seq_len, self.objective, self.special_ids, self.vocab_size, self.mlm
        )

    def loader(self, split: str, seed: int, rank: int = 0, world_size: int = 1, estimate: bool = False
               ) -> DataLoader:  # fmt: skip
        """Training batches shuffled per epoch; validation in order, every process seeing all of it; with
        `estimate`, training blocks in one fixed random order for estimating the training loss.
        `data.batch_size` is the global batch: each of `world_size` processes takes an equal share."""
        dataset = self.dataset(split)
        training = split == "train" and not estimate
        if training and self.data.batch_size % world_size:
            raise ConfigError(
                f"data.batch_size={self.data.batch_size} (the global batch) is not divisible by {world_size} processes"
            )
        batch_size = min(self.data.batch_size // world_size if training else self.data.batch_size, len(dataset))
        sampler = (
            EstimateSampler(len(dataset), batch_size, seed)
            if estimate
            else BlockSampler(len(dataset), batch_size, seed, training, rank if training else 0,
                              world_size if training else 1)
        )  # fmt: skip
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            generator=torch.Generator(),  # drawing worker seeds must not move the global RNG (exact resume)
        )


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(temporary, array)
    os.replace(temporary, path)
