"""A composed config checked, once, into the run spec the run reads (`validate`), before any data is read or
model built: one `ConfigError` naming the problem and the valid choices. Group choices that do not exist (an
unknown scheme or size) are caught even earlier, from the command line (`sweep.check_overrides`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sharebench.data import glue
from sharebench.data.corpora import check_source
from sharebench.errors import ConfigError
from sharebench.layers import Unshared
from sharebench.model.convert import HeadwiseRatio
from sharebench.model.shares import SharingSpec
from sharebench.paths import resolve_path
from sharebench.run.build import layer_sharing, sharing_class
from sharebench.run.machine import check_fsdp_on_a_gpu
from sharebench.run.spec import TOKENIZER_KINDS, RunSpec
from sharebench.sharing.base import checked_ratio
from sharebench.sharing.none import Separate


def validate(config: DictConfig | Mapping[str, Any], data: bool = True) -> RunSpec:
    """Check a composed config (the one place a run is checked, before any data is read) into the run spec the
    run reads, with what its model shares resolved (`RunSpec.shares`; None for tasks whose model, and so its
    sharing, comes from `pretrained`). `data=False` leaves out the data's files, for what needs none
    (`sharebench params`)."""
    if isinstance(config, DictConfig):  # a sweeper's composed run also holds Hydra's own settings, not the run's
        config = {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node := config[key]) else node
                  for key in config if key != "hydra"}  # fmt: skip
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
        from sharebench.model.checkpoint import checkpoint_objective

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
    if layers.needs_decoder(size.n_layers) and spec.arch.objective != "causal":
        raise ConfigError(f"layers={layers.name} {layers.decoder_why}, which needs a decoder; arch={spec.arch.name} "
                          f"is an encoder: use arch=gpt or arch=llama")  # fmt: skip
    if layers.composes_with is not None and scheme.name not in layers.composes_with:
        raise ConfigError(f"layers={layers.name} {layers.composes_why}; it does not compose with "
                          f"sharing={scheme.name}: use sharing={' or '.join(layers.composes_with)}")  # fmt: skip
    ratio = scheme.resolve_ratio(spec.ratio, size.dim, size.n_heads)
    options = {key: value for key, value in spec.sharing.items() if not key.startswith("_")}
    shares = SharingSpec(scheme.name, ratio, options, layers.describe())
    if spec.iso_baseline:
        shares = SharingSpec(Separate.name, None, layers=Unshared().describe(), iso_baseline_of=shares)
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


def check_pretrained(pretrained: str | None) -> None:
    from sharebench.model.checkpoint import SPEC_NAME

    path = resolve_path(pretrained) if pretrained else None
    gguf = path is not None and path.suffix == ".gguf" and path.is_file()
    if path is None or not (gguf or (path / SPEC_NAME).is_file() or (path / "config.json").is_file()):
        raise ConfigError(
            f"pretrained={pretrained}: this task needs pretrained=<a finished run's folder, a Hugging Face BERT or "
            f"Llama folder, or a Llama .gguf file>; {path} is none of these"
        )
