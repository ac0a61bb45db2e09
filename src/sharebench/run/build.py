"""From a validated run spec to what it trains: the model (its shape, its within-layer and cross-layer schemes,
an iso-parameter twin's smaller shape) and the steps its budget gives."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from hydra.utils import get_class, instantiate

from sharebench.errors import ConfigError
from sharebench.layers import LayerSharing
from sharebench.model.transformer import LanguageModel, ModelConfig
from sharebench.run.machine import trains_on
from sharebench.run.spec import RunSpec, Trainer
from sharebench.sharing import AttentionSharing
from sharebench.sharing.none import Separate


def sharing_class(spec: RunSpec) -> type[AttentionSharing]:
    return get_class(spec.sharing["_target_"])


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
