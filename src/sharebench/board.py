"""`sharebench board add <board> <overrides…>`: one configuration joins a committed board (a results folder that
`collect --out` wrote) without re-running the board. It runs what the configuration needs under the board's recipe,
read from its records: its learning-rate search and seeds, its iso-parameter twin and, where it runs layers more
often than it stores them, its iso-compute twin, each unless the board already holds an identical one. Then it
collects the board's records with the new ones into the board again.

Joining is refused, in one line and before anything runs, where the result would not be comparable: a recipe that
now composes another configuration than the board's reference was run with (a changed budget, data or model), or
training code that differs from the code the board's records were trained with (`environment.training_code`; for
records older than that fingerprint, their git commit's files). `--accept-code` joins anyway and the table marks
the configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sharebench.data.corpora import tokenizer_vocab_size
from sharebench.errors import ConfigError
from sharebench.paths import PROJECT_ROOT, machine_free
from sharebench.report.collect import collect
from sharebench.report.results import (
    ADDED_WITH_OTHER_CODE,
    ISO_COMPUTE_TOLERANCE,
    Configuration,
    description,
    find_configurations,
    label_value,
    pretraining,
    reference,
)
from sharebench.run.build import build_model
from sharebench.run.composing import compose
from sharebench.run.environment import training_code, training_files
from sharebench.run.record import declared_keys
from sharebench.run.spec import RunSpec
from sharebench.run.sweep import check_overrides
from sharebench.run.validation import validate
from sharebench.schema import record_roots, stated_keys, under

# Where the runs go, which `board add` decides itself (as it does the twins: a spec that names one is refused).
DECIDED = ("output_root", "hydra.sweeper.grids")


def recipe_of(configurations: Sequence[Configuration]) -> list[str]:
    """The board's recipe as overrides (`experiment=… scale=…`), read from its records: one for all of them."""
    recipes = {(((r.get("config") or {}).get("experiment") or {}).get("name"),
                ((r.get("config") or {}).get("scale") or {}).get("name"))
               for c in configurations for r in c.records}  # fmt: skip
    if len(recipes) != 1 or None in next(iter(recipes)):
        named = ", ".join(sorted(f"experiment={e} scale={s}" for e, s in recipes)) or "none"
        raise ConfigError(f"board add: a board's records come from one recipe and scale; these come from {named}")
    experiment, scale = next(iter(recipes))
    return [f"experiment={experiment}", f"scale={scale}"]


def planned_record(spec: RunSpec, runs: Path) -> dict[str, Any]:
    """What a run of `spec` would record of its configuration: enough for `results.description`."""
    config = spec.to_dict()
    return {"config": machine_free(config, record_roots(config, runs / "planned")), "config_keys": declared_keys(),
            "sharing": spec.shares.to_record()}  # fmt: skip


def flops_per_token(spec: RunSpec) -> int:
    with torch.device("meta"):
        model = build_model(spec, tokenizer_vocab_size(spec.data, spec.arch.objective))
    return model.flops_per_token(spec.data.seq_len, spec.predicted_fraction)


def differences(planned: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The result keys in which a planned run differs from the board's reference, besides what chooses the
    sharing and a searched learning rate: where it would not be comparable. Keys only one of them has (a version
    of the suite that added or dropped one) are not compared, as a run's folder is not."""
    chooses = stated_keys(base)["sharing"]
    mine, theirs = description(planned), description(base)
    return [
        f"{key}={label_value(mine[key])} here, {label_value(theirs[key])} on the board"
        for key in sorted(mine.keys() & theirs.keys())
        if mine[key] != theirs[key] and not under(chooses, key)
    ]


def code_differences(configurations: Sequence[Configuration]) -> list[str]:
    """Why the code here may not be the code that trained the board's records: one line per kind of record.
    Records state the training code's fingerprint; older ones only their git commit, compared file by file."""
    mine = training_code()["training_sha256"]
    found = []
    fingerprints = {(r.get("code") or {}).get("training_sha256") for c in configurations for r in c.records}
    if any(f is not None and f != mine for f in fingerprints):
        found.append("records trained with other training code (fingerprint) than this")
    commits = {(r.get("git") or {}).get("commit") for c in configurations for r in c.records
               if not (r.get("code") or {}).get("training_sha256")}  # fmt: skip
    if not commits:
        return found
    files = [str(p.relative_to(PROJECT_ROOT)) for p in training_files() if p.is_relative_to(PROJECT_ROOT)]
    for commit in sorted(c or "none" for c in commits):
        changed = subprocess.run(["git", "diff", "--name-only", commit, "--", *files], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        if changed.returncode != 0:
            found.append(f"records of commit {commit[:10]}, which git here cannot compare")
        elif changed.stdout.strip():
            names = changed.stdout.split()
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            found.append(f"records of commit {commit[:10]}, since which {', '.join(names[:3])}{more} changed")
    return found


def add(board: str | Path, overrides: Sequence[str], runs: str | Path, accept_code: bool = False,
        dry_run: bool = False) -> str:  # fmt: skip
    """Runs what `overrides` (one configuration of the board's recipe) needs into `runs`, then collects the board
    with it; returns what was planned and done. `dry_run`: the plan and the command, nothing run or written."""
    board, runs = Path(board), Path(runs).resolve()
    if not (board / "runs").is_dir():
        raise ConfigError(f"board add: {board} has no runs/ folder; give a board `sharebench collect --out` wrote")
    if given := [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in DECIDED]:
        raise ConfigError(f"board add: {' '.join(given)}: board add chooses the twins and where runs go itself; "
                          f"give the configuration only (and `seed=` to change its seeds)")  # fmt: skip
    configurations = pretraining(find_configurations([board / "runs"]))
    recipe = recipe_of(configurations)
    swept = check_overrides([*recipe, *overrides])
    if len(swept) != 1:
        raise ConfigError("board add: give one configuration (no comma-separated values but `seed=`)")
    run = [o for o in swept[0] if not o.startswith("seed=")]
    shared = validate(compose(run), data=False)
    if shared.iso_baseline or shared.iso_compute:
        named = " ".join(o for o in run if o.lstrip("+~").startswith("iso_"))
        raise ConfigError(f"board add: {named}: board add chooses the twins and where runs go itself; give the "
                          f"shared configuration only")  # fmt: skip
    arch = [c for c in configurations if c.arch == shared.arch.name]
    base = reference(arch)
    if base is None:
        archs = ", ".join(sorted({str(c.arch) for c in configurations}))
        raise ConfigError(f"board add: {board} has no unshared arch={shared.arch.name} model to compare with; "
                          f"choose an architecture it has: {archs}")  # fmt: skip
    if different := differences(planned_record(shared, runs), base.first):
        more = f" and {len(different) - 3} more" if len(different) > 3 else ""
        raise ConfigError(f"board add: the recipe composes another configuration than the board's "
                          f"{base.label}: {'; '.join(different[:3])}{more}")  # fmt: skip
    code = code_differences(configurations)
    if code and not accept_code:
        raise ConfigError(f"board add: the training code here may not be the board's ({'; '.join(code)}); "
                          f"--accept-code adds the configuration anyway, marked in its table")  # fmt: skip

    planned = {("iso_baseline=false",): shared}  # each run the configuration needs, with its spec
    if shared.shares.name != "none" or shared.shares.layers["name"] != "none":
        twin = planned[("iso_baseline=true",)] = validate(compose([*run, "iso_baseline=true"]), data=False)
        if flops_per_token(shared) > flops_per_token(twin) * (1 + ISO_COMPUTE_TOLERANCE):
            twin_overrides = ("iso_baseline=true", "iso_compute=true")
            planned[twin_overrides] = validate(compose([*run, *twin_overrides]), data=False)
    on_board = {json.dumps(c.description, sort_keys=True, default=str) for c in configurations}
    needed, lines = [], []
    for twin_overrides, spec in planned.items():
        if json.dumps(description(planned_record(spec, runs)), sort_keys=True, default=str) in on_board:
            lines.append(f"on the board already: {' '.join(twin_overrides)}")
        else:
            needed.append(twin_overrides)
    if not needed:
        return "\n".join([*lines, "nothing to run: the board holds this configuration and its twins"])
    seeds = next((o for o in swept[0] if o.startswith("seed=")),
                 f"seed={','.join(str(r.get('seed')) for r in base.records)}")  # fmt: skip
    grids = "[" + ",".join("{" + ",".join(o.replace("=", ":") for o in twin) + "}" for twin in needed) + "]"
    marked = [f"+experiment.{ADDED_WITH_OTHER_CODE}=true"] if code else []
    command = [sys.executable, "-m", "sharebench", "train", "-m", *run, seeds, f"output_root={runs}",
               f"hydra.sweeper.grids={grids}", "trainer.enable_progress_bar=false", *marked]  # fmt: skip
    lines.append("runs: sharebench " + " ".join(command[3:]))
    if dry_run:
        return "\n".join([*lines, "dry run: nothing run"])
    print("\n".join(lines), flush=True)
    ran = subprocess.run(command)
    if ran.returncode != 0:
        raise ConfigError(f"board add: the runs stopped (exit {ran.returncode}); the same command resumes them, "
                          f"and the board is left as it was")  # fmt: skip
    collect([board / "runs", runs], board)
    return f"{board} collected again with the runs in {runs}"
