"""What a run records of where it ran: the machine (CPU, its bf16 features, the GPU), the package versions, the git
commit and a fingerprint of the code that trains, and the machine's measured matmul peak (the MFU's denominator)."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from sharebench.paths import PACKAGE_DIR, PROJECT_ROOT, atomic_write_bytes, atomic_write_json
from sharebench.run.cpu import cpu_features

PACKAGES = (
    "sharebench",
    "torch",
    "lightning",
    "hydra-core",
    "datasets",
    "tokenizers",
    "safetensors",
    "numpy",
)


@functools.cache  # the code a process runs is the code it loaded: one look per process, not one per run
def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"commit": commit or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


# Where a run starts: train.py's entry and the sweeper that launches (and searches the learning rate of) a sweep,
# and the scheme packages, whose modules a config names by `_target_` rather than an import.
TRAINING_ENTRIES = ("sharebench.main", "hydra_plugins.sharebench_sweeper",
                    *(f"sharebench.{package}.{module.stem}" for package in ("sharing", "layers")
                      for module in (PACKAGE_DIR / package).glob("*.py")))  # fmt: skip


def training_files() -> list[Path]:
    """The suite's source files a run can execute: the modules reachable by import from TRAINING_ENTRIES (a static
    walk of every import statement, those inside functions too) and the packages above them; not the report side
    (collect, plots, the site), which reads records."""
    roots = {"sharebench": PACKAGE_DIR, "hydra_plugins": PACKAGE_DIR.parent / "hydra_plugins"}

    def source(module: str) -> Path | None:
        first, *rest = module.split(".")
        path = roots[first].joinpath(*rest) if first in roots else None
        if path is not None and path.is_dir():  # a package; a namespace package (hydra_plugins) has no file
            return path / "__init__.py" if (path / "__init__.py").is_file() else None
        return path.with_suffix(".py") if path is not None and path.with_suffix(".py").is_file() else None

    found: dict[str, Path] = {}
    pending = list(TRAINING_ENTRIES)
    while pending:
        module = pending.pop()
        path = source(module)
        if module in found or path is None:
            continue
        found[module] = path
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        pending += [module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)]  # its packages
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                pending += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return sorted(set(found.values()))


@functools.cache  # the code a process runs is the code it loaded
def training_code() -> dict[str, Any]:
    """A fingerprint of the code that trains: SHA-256 over the `training_files`, each named by its path below the
    package's parent folder. Two runs with equal fingerprints were trained by the same code, whatever the rest of
    the suite (tables, plots) was at the time, and wherever the suite was installed."""
    digest = hashlib.sha256()
    files = training_files()
    for path in files:
        digest.update(path.relative_to(PACKAGE_DIR.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"training_sha256": digest.hexdigest(), "training_files": len(files)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cpu_bf16": list(cpu_features()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
    return info


@functools.cache  # once per process: the runs of a sweep in one process share the machine it measures
def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.5,
                        windows: int = 5) -> float:  # fmt: skip
    """The machine's achievable matmul FLOP/s on square matrices (the MFU denominator): the fastest of `windows`
    equal windows over `seconds`, so that a moment in which other work on a shared machine slows the matmuls is
    not taken for the peak (one window of 0.5 s once measured less than the training before it had reached: an
    MFU above 100 %)."""
    size = 2048 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    fastest = 0.0
    for _ in range(windows):
        iterations, start = 0, time.perf_counter()
        while True:
            a @ b
            iterations += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed > seconds / windows:
                break
        fastest = max(fastest, 2 * size**3 * iterations / elapsed)
    return fastest


def write_benchmark(folder: Path, name: str, figures: dict[str, Any], report: str) -> None:
    """A benchmark's result (`make bench`): `<name>.md`, the report it printed, and `<name>.json`, its figures with
    the machine, the package versions and the date."""
    atomic_write_json(folder / f"{name}.json", {**figures, "hardware": hardware(), "packages": package_versions(),
                                                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    atomic_write_bytes(folder / f"{name}.md", report.encode())
    print(report)
