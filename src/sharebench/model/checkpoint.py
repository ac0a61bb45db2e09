"""Saving and loading models: the suite's safetensors checkpoints, and Hugging Face BERT and Llama checkpoints
(Llama's own reading and writing in `sharebench.model.llama`, GGUF files included).

A suite checkpoint is a folder (a finished run's folder) with `model.safetensors`, which stores every shared
tensor once, and `model.json`, which says how to rebuild the model (its shape and what it shares).
`converted_model` applies a conversion (`sharebench.model.convert`) to a checkpoint; `sharebench.train.conversion`
writes the result as a checkpoint of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_class
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model

from sharebench.errors import ConfigError
from sharebench.layers import layer_scheme_class
from sharebench.model import llama
from sharebench.model.convert import (
    CONVERSIONS,
    direct_share,
    drop_layers,
    share_heads,
    to_basis,
    to_gqa,
    to_mlkv,
    to_recursive,
)
from sharebench.model.shares import SharingSpec
from sharebench.model.transformer import LanguageModel, ModelConfig
from sharebench.paths import FILE_MODE, atomic_write_json
from sharebench.schema import RECORD_NAME, read_record, rewrite_upgraded
from sharebench.sharing import AttentionSharing, scheme_class
from sharebench.sharing.gqa import GroupedQuery, scheme_for_kv_heads
from sharebench.sharing.none import Separate

if TYPE_CHECKING:
    from sharebench.run.spec import Convert

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"


# model.json's schema. 1: no `schema_version`; the within-layer scheme as {scheme, ratio, options} (before that, its
# class's `_target_` and a top-level `ratio`) beside `sharing_name`, `layers` and `head_sources`; 2: `sharing` in
# the shape run records use (`SharingSpec`). `upgraded_spec` reads either.
CHECKPOINT_VERSION = 2


def save_pretrained(model: LanguageModel, folder: str | Path, sharing: SharingSpec) -> int:
    """Write the checkpoint, with what `sharing` says the model shares (`SharingSpec.built`; heads a conversion
    shared, from the model); returns the bytes of the weights file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{WEIGHTS_NAME}.tmp"
    save_model(model, str(temporary))
    temporary.chmod(FILE_MODE)  # safetensors writes files only their owner may read
    temporary.replace(folder / WEIGHTS_NAME)
    built = replace(sharing.built(), head_sources=getattr(model, "head_sources", None))
    spec = {"schema_version": CHECKPOINT_VERSION, "model": model.config.to_dict(), "sharing": built.to_record()}
    atomic_write_json(folder / SPEC_NAME, spec)
    return (folder / WEIGHTS_NAME).stat().st_size


def read_spec(folder: str | Path) -> dict[str, Any]:
    """A suite checkpoint's model.json, of any version, as this version writes it."""
    return upgraded_spec(json.loads((Path(folder).expanduser() / SPEC_NAME).read_text()))


def upgraded_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A model.json of any version as this version writes it: the one place older ones are read."""
    version = spec.get("schema_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ConfigError(f"{SPEC_NAME}: schema_version {version!r} is newer than this sharebench reads "
                          f"({CHECKPOINT_VERSION}); upgrade sharebench")  # fmt: skip
    if version == 2:
        return spec
    stored = spec.get("sharing") or {"scheme": Separate.name, "ratio": None, "options": {}}
    if "_target_" in stored:  # written before schemes were stored by name: the class's path and its ratio
        options = {key: value for key, value in stored.items() if not key.startswith("_")}
        stored = {"scheme": get_class(stored["_target_"]).name, "ratio": spec.get("ratio"), "options": options}
    layers = spec.get("layers") or {"name": "none", "ratio": None}
    sharing = SharingSpec(stored["scheme"], stored["ratio"], stored["options"], layers, spec.get("head_sources"))
    return {"schema_version": CHECKPOINT_VERSION, "model": spec["model"], "sharing": sharing.to_record()}


def upgrade_checkpoints(folders: Sequence[Path]) -> str:
    """Every model.json below `folders` rewritten as `upgraded_spec` reads it; says how many changed."""
    paths = sorted({path for folder in folders for path in folder.rglob(SPEC_NAME)})
    changed = rewrite_upgraded(paths, upgraded_spec)
    return f"upgrade: {changed} of {len(paths)} checkpoints ({SPEC_NAME}) rewritten in version {CHECKPOINT_VERSION}"


def scheme_factory(sharing: SharingSpec) -> Callable[..., AttentionSharing]:
    """What builds each layer's attention projections of a stored scheme."""
    return scheme_class(sharing.name).factory(sharing.ratio, sharing.options)


def loaded_sharing(folder: str | Path, built: SharingSpec, conversion: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """What a run records as the sharing of a model loaded from `folder`, which shares what `built` says (as
    `pretrained_model` gives it): converted (`conversion`, the run's `convert`), the converted model with its
    conversion; else the sharing its pretraining run recorded (iso-parameter baselines keep the configuration they
    match), or for other checkpoints what the checkpoint stores."""
    if conversion:
        return replace(built, pretrained=str(folder), conversion=dict(conversion)).to_record()
    recorded = read_record(folder).get("sharing") if (Path(folder) / RECORD_NAME).is_file() else None
    if recorded:
        return {**recorded, "pretrained": str(folder)}
    return replace(built, pretrained=str(folder)).to_record()


def checkpoint_sharing(folder: str | Path, model: LanguageModel) -> SharingSpec:
    """What `model`, loaded from `folder`, shares: what a suite checkpoint stores; for a Hugging Face checkpoint,
    separate Q/K/V or a Llama's grouped key/value heads."""
    if (Path(folder).expanduser() / SPEC_NAME).is_file():
        return SharingSpec.from_record(read_spec(folder)["sharing"])
    qkv = model.transformer.blocks[0].attn.qkv
    scheme, ratio = scheme_for_kv_heads(getattr(qkv, "n_kv_heads", qkv.n_heads), qkv.n_heads)
    return SharingSpec(scheme.name, ratio, layers=model.layers.describe())


def checkpoint_objective(path: str | Path) -> str:
    """Whether a checkpoint (as `load_pretrained` takes it) is a masked LM ("mlm") or a causal one ("causal"),
    read from its configuration alone."""
    folder = Path(path).expanduser()
    if folder.suffix == ".gguf":
        return "causal"
    if (folder / SPEC_NAME).is_file():
        return read_spec(folder)["model"]["objective"]
    return "causal" if json.loads((folder / "config.json").read_text()).get("model_type") == "llama" else "mlm"


def load_pretrained(path: str | Path) -> LanguageModel:
    """The model of a finished run (or any suite checkpoint folder), of a Hugging Face checkpoint folder (BERT:
    `BertModel` or `BertForMaskedLM`; Llama: `LlamaForCausalLM`), or of a Llama GGUF file, in eval mode."""
    folder = Path(path).expanduser()
    if folder.suffix == ".gguf" and folder.is_file():
        model = llama.load_gguf(folder)
    elif (folder / SPEC_NAME).is_file():
        model = _load_suite(folder)
    elif (folder / "config.json").is_file():
        model = _load_hugging_face(folder)
    else:
        raise ConfigError(
            f"pretrained: {folder} is neither a sharebench checkpoint ({SPEC_NAME} + {WEIGHTS_NAME}), "
            f"a Hugging Face BERT or Llama folder (config.json + model.safetensors or pytorch_model.bin), "
            f"nor a Llama .gguf file"
        )
    return model.eval()


def _load_suite(folder: Path) -> LanguageModel:
    spec = read_spec(folder)
    sharing = SharingSpec.from_record(spec["sharing"])
    layers = dict(sharing.layers)
    layer_scheme = layer_scheme_class(layers.pop("name"))(**layers)
    model = LanguageModel(ModelConfig(**spec["model"]), scheme_factory(sharing), sharing.name, layer_scheme)
    if sharing.head_sources:
        share_heads(model, {(a, b): (c, d) for a, b, c, d in sharing.head_sources})
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS_NAME), strict=False)
    except SafetensorError as error:  # an empty or truncated file
        raise ConfigError(f"pretrained: {folder / WEIGHTS_NAME} is damaged ({error})") from error
    except RuntimeError as error:
        raise ConfigError(f"pretrained: {folder / WEIGHTS_NAME} does not match {SPEC_NAME}: {error}") from error
    if missing or unexpected:
        raise ConfigError(
            f"pretrained: {folder / WEIGHTS_NAME} does not match {SPEC_NAME}; "
            f"missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]}"
        )
    return model


HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}

# Hugging Face BERT parameter names (without the "bert." prefix) → this suite's, per layer where {i} appears.
HF_NAMES = {
    "embeddings.word_embeddings": "transformer.embeddings.tokens",
    "embeddings.position_embeddings": "transformer.embeddings.positions",
    "embeddings.token_type_embeddings": "transformer.embeddings.token_types",
    "embeddings.LayerNorm": "transformer.embeddings.norm",
    "encoder.layer.{i}.attention.output.dense": "transformer.blocks.{i}.attn.out",
    "encoder.layer.{i}.attention.output.LayerNorm": "transformer.blocks.{i}.attn_norm",
    "encoder.layer.{i}.intermediate.dense": "transformer.blocks.{i}.ffn.up",
    "encoder.layer.{i}.output.dense": "transformer.blocks.{i}.ffn.down",
    "encoder.layer.{i}.output.LayerNorm": "transformer.blocks.{i}.ffn_norm",
    "pooler.dense": "pooler.dense",
    "cls.predictions.transform.dense": "head.transform.0",
    "cls.predictions.transform.LayerNorm": "head.transform.2",
    "cls.predictions.decoder": "head.decoder",
}


def _hf_state(folder: Path) -> dict[str, torch.Tensor]:
    shards = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(shards.read_text())["weight_map"].values())) if shards.is_file() else []
    if (folder / "model.safetensors").is_file() or files:
        state = {}
        for name in files or ["model.safetensors"]:
            try:
                state |= load_file(str(folder / name))
            except (SafetensorError, FileNotFoundError) as error:
                raise ConfigError(f"pretrained: {folder / name} is missing or damaged ({error})") from error
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(f"pretrained: {folder} has config.json but no model.safetensors or pytorch_model.bin")
    return {name.removeprefix("bert."): tensor for name, tensor in state.items()}


def _hf_rename(name: str) -> str | None:
    if name == "cls.predictions.bias":
        return "head.decoder.bias"
    module, _, leaf = name.rpartition(".")
    layer = re.search(r"\.layer\.(\d+)\.", module)
    pattern = module.replace(f".layer.{layer.group(1)}.", ".layer.{i}.") if layer else module
    target = HF_NAMES.get(pattern)
    if target is None:
        return None
    return target.replace("{i}", layer.group(1) if layer else "") + "." + leaf


def _load_hugging_face(folder: Path) -> LanguageModel:
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") == "llama":
        return llama.from_state(hf, _hf_state(folder), str(folder))
    if hf.get("model_type") != "bert":
        raise ConfigError(f"pretrained: {folder} holds a {hf.get('model_type')!r} model; BERT and Llama "
                          "checkpoints load")  # fmt: skip
    state = _hf_state(folder)
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        n_layers=hf["num_hidden_layers"],
        dim=hf["hidden_size"],
        n_heads=hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        max_positions=hf["max_position_embeddings"],
        activation=HF_ACTIVATIONS.get(hf.get("hidden_act", "gelu"), "gelu"),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pooler="pooler.dense.weight" in state,
    )
    model = LanguageModel(cfg, Separate, Separate.name)
    converted: dict[str, torch.Tensor] = {}
    for i in range(cfg.n_layers):
        parts = [f"encoder.layer.{i}.attention.self.{role}" for role in ("query", "key", "value")]
        for leaf in ("weight", "bias"):
            converted[f"transformer.blocks.{i}.attn.qkv.proj.{leaf}"] = torch.cat([state[f"{p}.{leaf}"] for p in parts])
    for name, tensor in state.items():
        target = _hf_rename(name)
        if target is not None:
            converted[target] = tensor
    if cfg.tie_embeddings:
        converted.pop("head.decoder.weight", None)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [m for m in missing if not m.startswith("head.")]  # BertModel has no masked-LM head
    if missing or unexpected:
        raise ConfigError(
            f"pretrained: {folder} does not map onto BERT; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model


def converted_model(source: str | Path, to: str, ratio: float, rank: int = 8, group: int = 2
                    ) -> tuple[LanguageModel, SharingSpec]:  # fmt: skip
    """The checkpoint in `source` with the new sharing, and what the converted model shares."""
    if to not in CONVERSIONS:
        raise ConfigError(f"convert: unknown conversion {to!r}; valid: {', '.join(CONVERSIONS)}")
    source = Path(source)
    model = load_pretrained(source)
    sharing = checkpoint_sharing(source, model)
    factory = scheme_factory(sharing)
    if to == "headwise":
        converted = direct_share(model, ratio)
    elif to == "gqa":
        converted, sharing = to_gqa(model, ratio), SharingSpec(GroupedQuery.name, ratio)
    elif to == "drop_layers":
        converted = drop_layers(model, ratio, factory)
    elif to == "mlkv":
        converted = to_mlkv(model, ratio, factory)
    elif to == "basis":
        converted = to_basis(model, ratio, group, factory)
    else:
        converted = to_recursive(model, ratio, rank, factory)
    return converted, replace(sharing, layers=converted.layers.describe(),
                              head_sources=getattr(converted, "head_sources", None))  # fmt: skip


def pretrained_model(source: Path, convert: Convert) -> tuple[LanguageModel, SharingSpec]:
    """The model a task reads from `source`, converted as `convert` says (or not), and what it shares."""
    if convert.to:
        return converted_model(source, convert.to, convert.ratio, convert.rank)
    model = load_pretrained(source)
    return model, checkpoint_sharing(source, model)
