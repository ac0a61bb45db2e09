"""Project paths and atomic file writes (a temporary file in the same folder, then a rename)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
# The source checkout in a development install (its git commit goes into run records); in a pip install, where
# the package sits in site-packages, the folder above it, where git finds no commit.
PROJECT_ROOT = PACKAGE_DIR.parents[1]
# Configs, recipes (conf/experiment) and sweeps (conf/sweep) ship inside the package; the repository's top-level
# conf/, experiments/ and sweeps/ link here.
CONFIG_DIR = PACKAGE_DIR / "conf"
CORPUS_DIR = PACKAGE_DIR / "corpus"


def resolve_path(path: str | os.PathLike) -> Path:
    """A user path: `~` expanded, relative paths taken from the working folder, as Hydra takes run folders."""
    return Path(path).expanduser().resolve()


MAX_FOLDER_NAME = 200  # file systems refuse names over 255 bytes


def folder_name(name: str) -> str:
    """`name` as one folder level: '/' would nest folders, and a name too long for the file system keeps its
    start and ends in a hash of the whole."""
    name = name.replace("/", "_")
    if len(name.encode()) <= MAX_FOLDER_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_FOLDER_NAME - 16].decode(errors="ignore") + "...+" + digest


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# The mode a plain open() gives a new file: records, weights and caches are as shared as the user's other files.
FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, FILE_MODE)  # mkstemp creates files only their owner may read
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, content: Any) -> None:
    atomic_write_bytes(path, (json.dumps(content, indent=2, default=str) + "\n").encode())


# Where a record names a file of the machine it ran on, it names it the same way on every machine: installed
# packages and the suite's own source (tracebacks, a pretrained model shipped as a package) by these names.
INSTALLED = (
    (re.compile(r"""[^\s'"(),=:]*/(?:site|dist)-packages/"""), "<site-packages>/"),
    (re.compile(r"""[^\s'"(),=:]*/src/sharebench/"""), "<sharebench>/"),
    (re.compile(r"""[^\s'"(),=:/]*_(?:site|dist)-packages_"""), "<site-packages>_"),  # a path in a folder name
)
DATA_ROOT_NAME = "${data_root}"  # as the config names the data mirror


# The keys that tell configurations apart first, in the order a run's folder name and a table's labels show them
# (a label's `arch` is the record's arch.name).
NAMING_ORDER = ("experiment", "task", "arch", "size", "sharing", "ratio", "layers", "layers.ratio", "pretrained")


def naming_rank(key: str) -> int:
    """Where `key` stands in NAMING_ORDER; every other key after those, as len(NAMING_ORDER)."""
    return NAMING_ORDER.index(key) if key in NAMING_ORDER else len(NAMING_ORDER)


def machine_free(tree: Any, roots: Sequence[tuple[str | os.PathLike, str]]) -> Any:
    """`tree` (a run record) with every path below one of `roots` (an absolute folder, and the name that stands
    for it: '' for the folder paths are taken relative to) named by that name, and installed files as INSTALLED
    names them. Two machines that ran the same thing write the same record."""
    ordered = sorted(((str(root).rstrip("/"), name) for root, name in roots if str(root) not in ("", "/")),
                     key=lambda item: -len(item[0]))  # fmt: skip
    renames = []  # a path below the root, then the root itself; neither inside a longer path
    for root, name in ordered:
        start = r"(?<![\w.~/-])" + re.escape(root)
        renames.append((re.compile(start + "/"), f"{name}/" if name else ""))
        renames.append((re.compile(start + r"""(?=[\s'"),;:]|$)"""), name or "."))

    def rename(text: str) -> str:
        for pattern, name in (*renames, *INSTALLED):
            text = pattern.sub(lambda _, name=name: name, text)
        return text

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return rename(value)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item) for item in value]
        return value

    return walk(tree)
