"""The run record (SPEC §4, docs/run-record.md): one JSON file per run, written atomically, also when the run
fails, by pretraining, GLUE fine-tuning, zero-shot scoring and conversion alike. `Record` is its schema."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from sharebench.cpu import cpu_features
from sharebench.errors import ConfigError, RunDiverged, RunInterrupted
from sharebench.memory import process_peak_rss_bytes
from sharebench.paths import (
    DATA_ROOT_NAME,
    PACKAGE_DIR,
    PROJECT_ROOT,
    atomic_write_bytes,
    atomic_write_json,
    machine_free,
    resolve_path,
)

RECORD_NAME = "run.json"
SUMMARY_NAME = "glue_summary.json"  # a GLUE run's summary of its tasks, beside the pretraining run's record
# The record's schema. 1: records without the field, which name the files of the machine they ran on (and the
# oldest have no `compute`); 2: records name files relative to their output root; 3: records state the role of
# their config's keys (`config_keys`); 4: a pretraining run from a checkpoint records as `unshared_parameters` the
# checkpoint's shape without sharing (version 3 recorded the config's own size there, so `upgrade` drops it).
# `upgrade` reads any version.
SCHEMA_VERSION = 4
# The roles of config keys (spec.Role) that tell what a run computes: a folder holds one configuration of them.
IDENTITY_ROLES = ("result", "scheme", "replicate")


class ConfigKeys(TypedDict):
    """What a run's suite declared about its config's keys (sharebench.spec.key_declarations): the keys and
    groups whose role is not "result", with their role; those that fix a seed's batches and their order; those
    that choose what the model shares."""

    roles: dict[str, str]
    data_order: list[str]
    sharing: list[str]


class Record(TypedDict, total=False):
    """A run.json. Every run: status … wall_time_s, sharing, parameters, memory. Pretraining adds metrics,
    vocab_size … inference (and postshare); a GLUE task run task, pretrained, recipe, metrics, examples, speed;
    a zero-shot run pretrained, metrics and examples; a conversion checkpoint. docs/run-record.md says more."""

    schema_version: int
    status: Literal["running", "completed", "failed", "interrupted", "diverged"]
    run_dir: str
    seed: int | None
    config: dict[str, Any]
    config_keys: ConfigKeys
    git: dict[str, Any]
    code: dict[str, Any]  # the training code's fingerprint (training_code)
    packages: dict[str, str | None]
    hardware: dict[str, Any]
    started_at: str
    wall_time_s: float
    error: str
    traceback: str
    diverged: dict[str, Any]  # the step and the reason: a non-finite loss, or one above `diverged_above`
    sharing: dict[str, Any]  # sharebench.spec.SharingSpec.to_record()
    parameters: dict[str, Any]
    unshared_parameters: int  # unique parameters of the same shape with separate Q/K/V, no cross-layer sharing
    metrics: dict[str, Any]
    memory: dict[str, int | None]
    precision: dict[str, Any]  # what trainer.precision asked for, what was used, and why
    vocab_size: int
    data: dict[str, Any]  # the corpus's name and a fingerprint of its tokens (text and tokenizer), as read anywhere
    tokenizer: dict[str, Any]
    flops_per_token: int
    tokens: dict[str, int]
    compute: dict[str, int]
    unigram_val_loss: float
    speed: dict[str, Any]
    checkpoint: dict[str, Any]
    inference: dict[str, Any] | None
    postshare: dict[str, Any]
    task: str
    pretrained: str
    recipe: dict[str, Any]
    examples: dict[str, int]


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
TRAINING_ENTRIES = ("sharebench.train", "hydra_plugins.sharebench_sweeper",
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


def write_benchmark(folder: Path, name: str, figures: dict[str, Any], report: str) -> None:
    """A benchmark's result (`make bench`): `<name>.md`, the report it printed, and `<name>.json`, its figures with
    the machine, the package versions and the date."""
    atomic_write_json(folder / f"{name}.json", {**figures, "hardware": hardware(), "packages": package_versions(),
                                                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})  # fmt: skip
    atomic_write_bytes(folder / f"{name}.md", report.encode())
    print(report)


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


class RunRecord:
    """Collects a run's facts and writes them to <run>/run.json; `write` is safe to call at any point."""

    def __init__(self, config: Mapping[str, Any], run_dir: Path, earlier_seconds: float = 0.0) -> None:
        self.path = Path(run_dir) / RECORD_NAME
        self.started = time.time()
        self.earlier_seconds = earlier_seconds  # a resumed run's wall time counts its earlier starts
        self.unwritten: OSError | None = None  # why the last write failed, where one did (a full disk)
        self.roots = record_roots(config, run_dir)
        self.data: Record = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "run_dir": str(Path(run_dir).resolve()),
            "seed": config.get("seed"),
            "config": dict(config),
            "config_keys": declared_keys(),
            "git": dict(git_commit()),
            "code": dict(training_code()),
            "packages": package_versions(),
            "hardware": hardware(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
        }

    def update(self, **facts: Any) -> None:
        unknown = facts.keys() - Record.__annotations__.keys()
        if unknown:  # a new field belongs in the schema (and docs/run-record.md) first
            raise TypeError(f"the run record has no field {', '.join(sorted(unknown))}")
        self.data.update(facts)

    def finish(self, error: BaseException | None = None) -> None:
        """Writes the record as the run ended. Where the write fails (a full disk) after the run itself failed,
        that failure goes on (the next start marks the record interrupted); after a run that went well, the
        write's error is raised."""
        if error is None:
            self.data["status"] = "completed"
        elif isinstance(error, RunDiverged):
            self.data["status"] = "diverged"
            self.data["diverged"] = {"step": error.step, "reason": error.reason}
            self.data["error"] = f"diverged: {error}"
        else:
            self.data["status"] = "interrupted" if isinstance(error, (KeyboardInterrupt, RunInterrupted)) else "failed"
            self.data["error"] = f"{type(error).__name__}: {error}"
            self.data["traceback"] = "".join(traceback.format_exception(error))
        self.data["wall_time_s"] = round(self.earlier_seconds + time.time() - self.started, 3)
        # The whole process (libraries, data, heap): kept apart from what the model itself needs (`memory`).
        self.data.setdefault("memory", {})["process_peak_rss_bytes"] = process_peak_rss_bytes()
        if torch.cuda.is_available():
            self.data["memory"]["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        try:
            self.write()
        except OSError:
            if error is None:
                raise

    def __enter__(self) -> RunRecord:
        self.write()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: Any) -> bool:
        self.finish(error)
        return isinstance(error, RunDiverged)  # a result, recorded; any other error goes on after it is recorded

    def write(self) -> None:
        if rank_zero_only.rank == 0:  # under DDP every process runs the same code; one writes
            try:
                atomic_write_json(self.path, machine_free(self.data, self.roots))
            except OSError as error:
                self.unwritten = error
                raise
            self.unwritten = None

    def says(self) -> str:
        """What the run's run.json says now, for a fault's line."""
        if self.unwritten is not None:
            return "its run.json could not be written; the next start marks it interrupted"
        return f"run.json says {self.data['status']}"


def start_line(record: Record) -> str:
    """How a pretraining run starts on the console: where it goes and what it trains."""
    sharing, parameters = record["sharing"], record["parameters"]
    scheme = describe_sharing(sharing.get("iso_baseline_of") or sharing)
    twin = "the iso-parameter twin of " if "iso_baseline_of" in sharing else ""
    return (
        f"run: {record['run_dir']}: {twin}{scheme}, {parameters['unique']:,} unique parameters "
        f"({parameters['total']:,} in use), {record['tokens']['train']:,} training tokens"
    )


def describe_sharing(sharing: dict[str, Any]) -> str:
    from sharebench.sharing import SCHEMES

    scheme = SCHEMES.get(sharing["name"])
    takes_ratio = scheme is None or scheme.ratio_range is not None  # a conversion (headwise) has one
    within = sharing["name"] + (f" {sharing['ratio']:g}" if sharing.get("ratio") is not None and takes_ratio else "")
    layers = sharing.get("layers") or {"name": "none"}
    across = f", layers={layers['name']}" + (f" {layers['ratio']:g}" if layers.get("ratio") is not None else "")
    return f"sharing={within}" + (across if layers["name"] != "none" else "")


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


def read_record(run_dir: str | Path) -> dict[str, Any]:
    return upgrade(json.loads((Path(run_dir) / RECORD_NAME).read_text()))


def upgrade_records(folders: Sequence[Path]) -> str:
    """Every run record below `folders` rewritten as `upgrade` reads it; says how many changed."""
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise ConfigError(f"upgrade: {', '.join(missing)} is not a folder of runs")
    for path in {path for folder in folders for path in folder.rglob(SUMMARY_NAME)}:  # named as its record was
        beside = json.loads((path.parent / RECORD_NAME).read_text()) if (path.parent / RECORD_NAME).is_file() else {}
        roots = first_version_roots(beside) if "schema_version" not in beside else []  # version 1 named the machine
        if (free := machine_free(stored := json.loads(path.read_text()), roots)) != stored:
            atomic_write_json(path, free)
    paths = sorted({path for folder in folders for path in folder.rglob(RECORD_NAME)})
    changed = 0
    for path in paths:
        stored = json.loads(path.read_text())
        if (upgraded := upgrade(stored)) != stored:
            atomic_write_json(path, upgraded)
            changed += 1
    return f"upgrade: {changed} of {len(paths)} run records rewritten in schema version {SCHEMA_VERSION}"


def record_roots(config: Mapping[str, Any], run_dir: Path) -> list[tuple[str | Path, str]]:
    """The folders a record names by a name any machine reads the same way, not by their path here: the output
    root (paths below it are relative to it), the data mirror (`${data_root}`), the cache (`${cache_dir}`), the
    suite's files and home."""
    output_root, data_root, cache_dir = config.get("output_root"), config.get("data_root"), config.get("cache_dir")
    roots: list[tuple[str | Path, str]] = [
        (resolve_path(output_root) if output_root else Path(run_dir).resolve().parent, ""),
        (PACKAGE_DIR, "<sharebench>"),
        (Path.home(), "~"),
    ]
    if cache_dir:
        roots.append((resolve_path(cache_dir), "${cache_dir}"))
    if data_root:  # as typed (a relative path in the config's values) and as resolved
        roots += [(resolve_path(data_root), DATA_ROOT_NAME), (str(data_root), DATA_ROOT_NAME)]
    return roots


def upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record of any schema version as this version writes it: the one place older records are read."""
    version = record.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(
            f"{RECORD_NAME}: schema_version {version!r} is newer than this sharebench reads ({SCHEMA_VERSION}); "
            f"upgrade sharebench"
        )
    if version == 1:
        record = machine_free(record, first_version_roots(record))
        if "compute" not in record and (compute := derived_compute(record)):
            record["compute"] = compute
    if version < 3 and "config" in record:  # what versions 1 and 2 declared about keys, this version declares
        record = {**record, "config_keys": declared_keys()}
    if version < 4 and (record.get("config") or {}).get("pretrained"):  # the config's size, not the checkpoint's
        record = {key: value for key, value in record.items() if key != "unshared_parameters"}
    return {"schema_version": SCHEMA_VERSION} | {key: value for key, value in record.items() if key != "schema_version"}


def first_version_roots(record: dict[str, Any]) -> list[tuple[str | Path, str]]:
    """The folders of the machine a version-1 record ran on, as the record itself tells them: its output root
    (a relative one found in its absolute run_dir) and its data mirror."""
    config, run_dir = record.get("config") or {}, str(record.get("run_dir") or "")
    output_root, data_root = str(config.get("output_root") or ""), config.get("data_root")
    if output_root and not output_root.startswith("/"):
        relative = "/" + output_root.strip("./").rstrip("/") + "/"
        output_root = run_dir[: run_dir.index(relative) + len(relative) - 1] if relative in run_dir else ""
    roots: list[tuple[str | Path, str]] = [(output_root or str(Path(run_dir).parent), "")] if run_dir else []
    return roots + ([(str(data_root), DATA_ROOT_NAME)] if data_root else [])


def derived_compute(record: dict[str, Any]) -> dict[str, int] | None:
    """What a pretraining run recorded before `compute` spent, from its steps, batch, sequence length and FLOPs
    per token; None where it lacks one of them."""
    config, steps = record.get("config") or {}, (record.get("metrics") or {}).get("steps")
    data, flops = config.get("data") or {}, record.get("flops_per_token")
    if steps is None or flops is None or "batch_size" not in data:
        return None
    accumulated = (config.get("trainer") or {}).get("accumulate_grad_batches") or 1
    tokens = steps * accumulated * data["batch_size"] * data["seq_len"]
    return {"tokens_seen": tokens, "training_flops": tokens * flops}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def normalized(value: Any) -> Any:
    """A config value in a form where equal values compare equal (1 and 1.0, a list and a tuple)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(normalized(v) for v in value)
    return str(value)


@functools.cache  # the same for every record this process writes or upgrades; records only read it
def declared_keys() -> ConfigKeys:
    """What this version of the suite declares about its config keys (sharebench.spec), as a record states it."""
    from sharebench.spec import key_declarations  # the run's side: readers of a record take what it states

    return key_declarations()  # type: ignore[return-value]


def stated_keys(record: Mapping[str, Any]) -> ConfigKeys:
    """What a record states about its config's keys (none, for a record without a config)."""
    return record.get("config_keys") or {"roles": {}, "data_order": [], "sharing": []}


def under(keys: Sequence[str], key: str) -> bool:
    """Whether `key` is one of `keys` or lies in a group among them."""
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def role_in(roles: Mapping[str, str], key: str) -> str:
    """A config key's role as `roles` (a record's `config_keys.roles`) states it: its own, or its innermost group's;
    "result" where neither is stated."""
    parts = key.split(".")
    stated = (roles.get(".".join(parts[:end])) for end in range(len(parts), 0, -1))
    return next((role for role in stated if role is not None), "result")


def config_leaves(config: Mapping[str, Any], roles: Mapping[str, str], kept: Sequence[str] = IDENTITY_ROLES
                  ) -> dict[str, Any]:  # fmt: skip
    """A resolved config as dotted keys and normalized values, of the keys whose role by `roles` is `kept`: by
    default those that change a result (not where a run lives, how it reports)."""
    return {key: normalized(value) for key, value in flatten(config).items() if role_in(roles, key) in kept}


def record_leaves(record: Mapping[str, Any], kept: Sequence[str] = IDENTITY_ROLES) -> dict[str, Any]:
    """A record's config leaves of the `kept` roles, by the roles the record states."""
    return config_leaves(record.get("config") or {}, stated_keys(record)["roles"], kept)


def check_same_config(run_dir: Path, config: Mapping[str, Any], also_ignored: tuple[str, ...] = ()) -> None:
    """A run's folder holds the run of one configuration: skipping or resuming it under another (a recipe whose
    budget changed, say) would report the old run as the new one. Keys only one of the two configs has (a
    version of the suite that added or dropped one) and keys starting with `also_ignored` are not compared."""
    if not (run_dir / RECORD_NAME).exists():
        return
    stored = record_leaves(read_record(run_dir))
    current = config_leaves(machine_free(dict(config), record_roots(config, run_dir)), declared_keys()["roles"])
    differences = [
        f"{key}={stored[key]!r} there, {current[key]!r} here"
        for key in sorted(stored.keys() & current.keys())
        if stored[key] != current[key] and not key.startswith(also_ignored)
    ]
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ConfigError(
            f"{run_dir} holds a run of another configuration ({'; '.join(differences[:3])}{more}); move that "
            f"folder away to keep it, or set output_root elsewhere"
        )


def run_once(config: Mapping[str, Any], run_dir: Path, body: Callable[[RunRecord], None],
             ignores: tuple[str, ...] = ()) -> tuple[Record, bool]:  # fmt: skip
    """Every task's run lifecycle (pretraining, a GLUE task, zero-shot scoring, a conversion): one process per run
    folder (its lock), the folder's configuration (`config`, as the record stores it) checked (`check_same_config`,
    keys starting with `ignores` aside), a completed run not repeated, and the record written however `body` ends
    (completed, failed, interrupted). Returns the record and whether the run ran now."""
    from sharebench.resume import RunLock, fault_of, remove_temporary_files

    record: RunRecord | None = None
    try:
        # Looked at under the lock: two sweeps over the same runs (two lanes of a recipe) never run one twice.
        with RunLock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
            if rank_zero_only.rank == 0:
                remove_temporary_files(run_dir)
                mark_stale_record(run_dir)
            check_same_config(run_dir, config, ignores)
            if previous := finished_record(run_dir):
                return previous, False
            record = RunRecord(config, run_dir, earlier_seconds(run_dir))
            with record:
                body(record)
    except Exception as error:  # a fault of the machine becomes one line; anything else keeps its traceback
        fault = fault_of(error, run_dir, record.says() if record else "no run.json was written")
        if fault is None:
            raise
        raise fault from error
    return record.data, True


# What a run.json says when the process that ran it died without recording how it ended.
STALE = "the process running it ended without recording how (killed, or its run.json could not be written)"


def mark_stale_record(run_dir: Path) -> None:
    """A record still saying running when its run's lock is free (the caller holds it) was left by a dead
    process: it is marked interrupted before the run resumes."""
    if (run_dir / RECORD_NAME).exists() and (stale := read_record(run_dir)).get("status") == "running":
        atomic_write_json(run_dir / RECORD_NAME, stale | {"status": "interrupted", "error": STALE})
        print(f"{run_dir / RECORD_NAME} said running, but no process held the run: marked interrupted")


def earlier_seconds(run_dir: Path) -> float:
    """The wall time the run's earlier starts recorded (an interrupted or failed start writes its own, which
    includes the starts before it): a resumed run's `wall_time_s` is its whole time. A start killed before it
    could write one (SIGKILL) left none: its time is not counted."""
    if not (run_dir / RECORD_NAME).exists():
        return 0.0
    return float(read_record(run_dir).get("wall_time_s") or 0.0)


def finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The record of a run that already completed or diverged in `run_dir` (it is not run again), else None."""
    if (run_dir / RECORD_NAME).exists():
        previous = read_record(run_dir)
        if (status := previous.get("status")) in ("completed", "diverged"):
            print(f"{run_dir} already {status}; nothing to do (delete the folder to run it again)")
            return previous
    return None


@functools.cache  # once per process: the runs of a sweep in one process share the machine it measures
def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> float:
    """The machine's achievable matmul FLOP/s, measured on square matrices (the MFU denominator)."""
    size = 2048 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    iterations, start = 0, time.perf_counter()
    while True:
        a @ b
        iterations += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed > seconds:
            return 2 * size**3 * iterations / elapsed
