"""The run record's schema (SPEC §4, docs/run-record.md) and how a record of any version is read: one JSON file
per run. `Record` is its schema; `upgrade` is the one place older versions are read. Nothing here trains: the
report side (collect, the tables, the site) reads records through this module alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from sharebench.errors import ConfigError
from sharebench.paths import DATA_ROOT_NAME, PACKAGE_DIR, atomic_write_json, machine_free, resolve_path

RECORD_NAME = "run.json"


SUMMARY_NAME = "glue_summary.json"  # a GLUE run's summary of its tasks, beside the pretraining run's record


# The record's schema. 1: records without the field, which name the files of the machine they ran on (and the
# oldest have no `compute`); 2: records name files relative to their output root; 3: records state the role of
# their config's keys (`config_keys`); 4: a pretraining run from a checkpoint records as `unshared_parameters` the
# checkpoint's shape without sharing (version 3 recorded the config's own size there, so `upgrade` drops it); 5:
# `sharing` in the one shape checkpoints store too (`model.shares.SharingSpec`): a scheme's options, a layer
# scheme's own settings, and heads shared by a conversion as the conversion with the scheme the heads came from
# (version 4 named such a model `headwise` and left PostShare to the config). `upgrade` reads any version.
SCHEMA_VERSION = 5

# The conversions that share single heads over the checkpoint's scheme (DirectShare's `convert.to=headwise`,
# PostShare's `postshare_ratio`): a table names a model they made by them.
HEAD_SHARING = ("headwise", "postshare")


# The roles of config keys (spec.Role) that tell what a run computes: a folder holds one configuration of them.
IDENTITY_ROLES = ("result", "scheme", "replicate")


class ConfigKeys(TypedDict):
    """What a run's suite declared about its config's keys (sharebench.run.spec.key_declarations): the keys and
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
    sharing: dict[str, Any]  # sharebench.run.spec.SharingSpec.to_record(); read by `scheme_of`
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
    routing: dict[str, Any]  # Mixture-of-Recursions: the share of the tokens that took each recursion
    task: str
    pretrained: str
    recipe: dict[str, Any]
    examples: dict[str, int]


# What a run.json says when the process that ran it died without recording how it ended.
STALE = "the process running it ended without recording how (killed, or its run.json could not be written)"


def read_record(run_dir: str | Path) -> dict[str, Any]:
    return upgrade(json.loads((Path(run_dir) / RECORD_NAME).read_text()))


def upgrade_records(folders: Sequence[Path], declarations: ConfigKeys) -> str:
    """Every run record below `folders` rewritten as `upgrade` reads it, a record of version 1 or 2 stating
    `declarations` (this version's, `record.declared_keys`); says how many changed."""
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise ConfigError(f"upgrade: {', '.join(missing)} is not a folder of runs")
    for path in {path for folder in folders for path in folder.rglob(SUMMARY_NAME)}:  # named as its record was
        beside = json.loads((path.parent / RECORD_NAME).read_text()) if (path.parent / RECORD_NAME).is_file() else {}
        roots = first_version_roots(beside) if "schema_version" not in beside else []  # version 1 named the machine
        if (free := machine_free(stored := json.loads(path.read_text()), roots)) != stored:
            atomic_write_json(path, free)
    paths = sorted({path for folder in folders for path in folder.rglob(RECORD_NAME)})
    changed = rewrite_upgraded(paths, lambda stored: upgrade(stored, declarations))
    return f"upgrade: {changed} of {len(paths)} run records rewritten in schema version {SCHEMA_VERSION}"


def rewrite_upgraded(paths: Sequence[Path], upgraded: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Each JSON file of `paths` rewritten as `upgraded` reads it, where that changes it; how many changed (run
    records here, checkpoints' model.json in `sharebench.model.checkpoint`)."""
    changed = 0
    for path in paths:
        if (new := upgraded(stored := json.loads(path.read_text()))) != stored:
            atomic_write_json(path, new)
            changed += 1
    return changed


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


def upgrade(record: dict[str, Any], declarations: ConfigKeys | None = None) -> dict[str, Any]:
    """A record of any schema version as this version writes it: the one place older records are read. A record of
    version 1 or 2 did not state its config's keys: it takes `declarations`, which only the run side has (the spec
    declares them), so reading one without them asks for `sharebench upgrade`."""
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
        if declarations is None:
            raise ConfigError(f"a {RECORD_NAME} of schema version {version} does not state its config's keys; "
                              f"`sharebench upgrade <its results or runs folder>` rewrites it in version "
                              f"{SCHEMA_VERSION}")  # fmt: skip
        record = {**record, "config_keys": declarations}
    if version < 4 and (record.get("config") or {}).get("pretrained"):  # the config's size, not the checkpoint's
        record = {key: value for key, value in record.items() if key != "unshared_parameters"}
    if version < 5 and record.get("sharing"):
        record = {**record, "sharing": fifth_version_sharing(record)}
    return {"schema_version": SCHEMA_VERSION} | {key: value for key, value in record.items() if key != "schema_version"}


def fifth_version_sharing(record: dict[str, Any]) -> dict[str, Any]:
    """A record's `sharing` of version 4 or before in version 5's shape. A scheme's options come from the config
    that chose it (a model from a checkpoint had them unrecorded: none); a model whose heads a conversion shared
    becomes that conversion, over a scheme version 4 did not record (null); PostShare becomes a conversion."""
    config, sharing = record.get("config") or {}, record["sharing"]
    configured = {key: value for key, value in (config.get("sharing") or {}).items() if not key.startswith("_")}
    from_checkpoint = "pretrained" in sharing or "conversion" in sharing

    def shaped(sharing: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
        name, ratio = sharing["name"], sharing.get("ratio")
        if name == "headwise":
            name = ratio = None
        shape = {"name": name, "ratio": ratio, "options": options,
                 "layers": sharing.get("layers") or {"name": "none", "ratio": None}}  # fmt: skip
        if "iso_baseline_of" in sharing:
            shape["iso_baseline_of"] = shaped(sharing["iso_baseline_of"], configured)
        return shape | {key: sharing[key] for key in ("pretrained", "conversion") if key in sharing}

    upgraded = shaped(sharing, {} if from_checkpoint or "iso_baseline_of" in sharing else configured)
    if (postshare := config.get("postshare_ratio")) is not None:
        upgraded["conversion"] = {"to": "postshare", "ratio": postshare}
    return upgraded


def named_schemes(sharing: Mapping[str, Any]) -> dict[str, Any]:
    """The schemes a record's `sharing` names its model by: those it uses, those of the configuration an
    iso-parameter baseline matches, a conversion that shared single heads (`HEAD_SHARING`), or for a conversion that
    dropped layers, the share of them dropped."""
    scheme = sharing.get("iso_baseline_of") or sharing
    name, ratio, layers = scheme.get("name"), scheme.get("ratio"), scheme.get("layers") or {}
    conversion = scheme.get("conversion") or {}
    if conversion.get("to") in HEAD_SHARING:
        name, ratio = conversion["to"], conversion["ratio"]
    elif conversion.get("to") == "drop_layers":
        layers = {"name": "drop_layers", "ratio": conversion["ratio"]}
    return {"sharing": name, "ratio": ratio, "layers": layers.get("name", "none"), "layers.ratio": layers.get("ratio")}


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
