"""A run's folder name: its overrides, those the defaults make anyway left out, so the same configuration is one
folder (`${sb.run_name:...}` in conf/config.yaml's hydra.run.dir and hydra.sweep.subdir)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sharebench.paths import folder_name, machine_free, naming_rank
from sharebench.run.composing import (
    GROUPS,
    compose,
    composed_files,
    from_choices,
    overridden_defaults,
    primary_defaults,
)
from sharebench.run.spec import NAMED, role_of


def defaults_in_effect(choices: Mapping[str, str]) -> dict[str, str]:
    """Each group's choice where the command line does not make it: conf/config.yaml's defaults, as the options
    chosen (`choices`: a recipe, a sweep file) override them."""
    defaults = dict(primary_defaults())
    for group, choice in choices.items():
        defaults |= overridden_defaults(group, choice)
    return defaults


def run_name(task_overrides: Sequence[str], _root_: DictConfig | None = None) -> str:
    """A run's folder name: its overrides, the ones that tell runs apart first ('/' would nest folders);
    no overrides means the defaults. What the defaults make anyway names nothing, so the same configuration is one
    folder: a group's choice (`python train.py` and `python train.py sharing=none`; a recipe's `scale=cpu` given or
    not), and a value equal to the literal the defaults hold for it (`iso_baseline=false`). A value whose default
    is an interpolation is named even where they agree, since the interpolation may read other overrides. A name
    too long for the file system keeps its start and ends in a hash of the whole (the run's .hydra/overrides.yaml
    and run.json keep every override). `_root_`: the composed config, as OmegaConf passes it to the resolver."""

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    def canonical(override: str) -> str:  # a sweep writes the booleans it expands as True/False
        name, equals, value = override.partition("=")
        if equals and value in ("True", "False"):
            return f"{name}={value.lower()}"
        return machine_free(override, [(Path.home(), "~")])  # a path names the same folder on every machine

    # A key given twice counts once, with its last value, as a sweep (which merges them) would name it.
    given = {key(o): canonical(o) for o in task_overrides}
    choices = {name: override.partition("=")[2] for name, override in given.items() if "=" in override}
    defaults = defaults_in_effect(choices)
    values = [name for name, override in given.items()
              if name not in GROUPS and role_of(name) in NAMED and override[0] not in "+~"]  # fmt: skip
    at_default = set()
    if values:
        chosen = tuple(override for name, override in given.items() if name not in values)
        unset = composed_unresolved(chosen)
        final = _root_ if _root_ is not None else compose(list(given.values()))
        at_default = {name for name in values if literal_default(unset, name) == (OmegaConf.select(final, name),)}

    def named(name: str, override: str) -> bool:  # a group's own choice, or a value that changes the result
        if name in GROUPS:
            return defaults.get(name) != choices.get(name)
        return role_of(name) in NAMED and name not in at_default  # where it lives, how it reports and the seed are not

    kept = sorted((o for name, o in given.items() if named(name, o)), key=lambda o: (naming_rank(key(o)), key(o), o))
    return folder_name(",".join(kept) or "default")


def literal_default(config: DictConfig, key: str) -> tuple[Any, ...]:
    """The value `key` holds in `config` as a one-element tuple where it is a literal; an empty one where it is an
    interpolation, a container or absent."""
    node = OmegaConf.select(config, key, default=None, throw_on_missing=False)
    parent, _, leaf = key.rpartition(".")
    holder = OmegaConf.select(config, parent) if parent else config
    if node is None and (not isinstance(holder, DictConfig) or leaf not in holder):
        return ()
    if isinstance(node, DictConfig | ListConfig) or OmegaConf.is_interpolation(holder, leaf):
        return ()
    return (node,)


def composed_unresolved(overrides: tuple[str, ...]) -> DictConfig:
    """The config of these overrides, interpolations unresolved: inside a running Hydra app through its own
    search path (plugins' config folders included), else from the config files as `compose` composes them. Runs
    that differ only in values (an output folder, a seed) share their group choices' composition (`from_choices`)."""
    from hydra.core.global_hydra import GlobalHydra

    compose_choices = composed_in_app if GlobalHydra.instance().is_initialized() else composed_files
    config = from_choices(overrides, compose_choices)
    return config if config is not None else compose_choices(overrides)


@functools.lru_cache(maxsize=256)
def composed_in_app(overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose as hydra_compose

    return hydra_compose(config_name="config", overrides=list(overrides))


OmegaConf.register_new_resolver("sb.run_name", run_name, replace=True)
