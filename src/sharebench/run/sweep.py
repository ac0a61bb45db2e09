"""The command line: its group choices checked before Hydra composes, and a sweep expanded into its runs, every run
validated before the first starts."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import sharebench.run.naming  # noqa: F401  (registers sb.run_name, which a run's folder name resolves)
from sharebench.errors import ConfigError, RatioNotTaken
from sharebench.run.composing import GROUPS, composed, from_choices, group_choices
from sharebench.run.spec import RunSpec
from sharebench.run.validation import validate

ComposeRun = Callable[[list[str]], DictConfig]  # Hydra's config loader, one run's overrides to its config


def check_choice(group: str, value: str) -> None:
    """A ConfigError naming the valid choices where `value` is not an option of the config group."""
    choices = group_choices(group)
    if group == "sharing" and value in group_choices("layers") and value not in choices:
        raise ConfigError(
            f"{value} shares across layers: choose it with layers={value} (and its ratio with layers.ratio); it "
            f"composes with a within-layer sharing=<{', '.join(choices)}>"
        )
    if value not in choices:
        raise ConfigError(f"unknown {group} {value!r}; valid choices: {', '.join(choices)}")


def check_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Reject unknown group choices on the command line, and expand sweeps (`a=1,2`) into one override list
    per run (every combination), so that every run of a sweep is validated before the first starts. A key given
    twice keeps its last value, where it stands first."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:
        raise ConfigError(f"cannot parse the overrides: {error}".splitlines()[0]) from error
    per_override: dict[str, list[str]] = {}
    for override in parsed:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        if values is None:
            values = [override.get_value_element_as_str()] if not override.is_delete() else [""]
        if override.key_or_group in GROUPS:
            for value in values:
                check_choice(override.key_or_group, value)
        prefix = override.get_key_element()
        if override.is_delete():
            per_override[prefix] = [override.input_line]
        else:
            per_override[prefix] = [f"{prefix}={value}" for value in values]
    return [list(combination) for combination in itertools.product(*per_override.values())]


def grid_runs(params: Mapping[str, Any], grid: Mapping[str, Any], arguments: Sequence[str]) -> list[list[str]]:
    """One grid of a sweep expanded into its runs: the sweep's common axes, the grid's, then the command line, which
    wins. A grid's setting of its group option's own key (`layers.recursions: 2` beside `layers: mor`) is left out of
    a run where the command line chose another option of that group, which may not have that key."""
    runs = check_overrides([*(f"{k}={v}" for k, v in {**params, **grid}.items()), *arguments])
    given = {o.split("=", 1)[0].lstrip("+~") for o in arguments}
    options = {k: set(str(v).split(",")) for k, v in grid.items() if "." not in k}

    def another_options_key(override: str, run: list[str]) -> bool:
        key = override.split("=", 1)[0]
        group, dot, _ = key.partition(".")
        if not dot or key in given or key not in grid or group not in options:
            return False
        chosen = next((o.split("=", 1)[1] for o in run if o.startswith(f"{group}=")), None)
        return chosen not in options[group]

    return [[o for o in run if not another_options_key(o, run)] for run in runs]


def sweep_runs(runs: Sequence[Sequence[str]], compose_run: ComposeRun) -> list[tuple[list[str], RunSpec]]:
    """The runs of a sweep to launch with their run specs, every one validated before the first starts
    (`compose_run` is Hydra's config loader). A scheme that takes no ratio meets the ratios of a sweep such as
    `sharing=none,partial_qk ratio=0.5,0.9`: its runs differ only in a ratio it ignores, so they are one run,
    launched without the ratio. A run given twice (several grids of a recipe naming it) is launched once."""
    launched: dict[tuple[str, ...], tuple[list[str], RunSpec]] = {}
    seen, skipped = set(), []
    spec_of = specs_composed_once_per_configuration(compose_run)
    for given in runs:
        if (key := tuple(sorted(given))) in seen:
            continue
        seen.add(key)
        run = list(given)
        try:
            spec = spec_of(run)
        except RatioNotTaken as error:
            run = [o for o in run if o.split("=", 1)[0].lstrip("+~") != "ratio"]
            spec = spec_of(run)
            if tuple(sorted(run)) in launched:
                reason = str(error).split(" (")[0]
                skipped.append(f"skipped: {reason}: {' '.join(given)} is the same run without the ratio")
        launched.setdefault(tuple(sorted(run)), (run, spec))
    print(*skipped, sep="\n", end="\n" if skipped else "")
    return list(launched.values())


def specs_composed_once_per_configuration(compose_run: ComposeRun) -> Callable[[list[str]], RunSpec]:
    """`validate(composed(compose_run, run))`, where runs that differ only in values (a seed, a rate, an
    iso_baseline) are composed once: Hydra sets a command line's values on the config it composed from the group
    choices, so another run's config is a copy of the first one's with its values set (`from_choices`).
    Composing is most of a sweep's check (a third of a second a run), and the leaderboard runs each configuration
    at several rates and up to 14 seeds."""

    @functools.cache
    def composed_choices(choices: tuple[str, ...]) -> DictConfig:
        config = composed(compose_run, list(choices))
        # Without Hydra's own settings, which each run's copy would copy and validate never reads; in struct mode,
        # as Hydra composes it, so that a value for a key the config lacks is Hydra's error.
        run_settings = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        OmegaConf.set_struct(run_settings, OmegaConf.is_struct(config))
        return run_settings

    def spec_of(run: list[str]) -> RunSpec:
        config = from_choices(run, composed_choices)
        return validate(composed(compose_run, run) if config is None else config)

    return spec_of
