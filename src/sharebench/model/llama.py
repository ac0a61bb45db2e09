"""Llama checkpoints in Hugging Face's formats, read into `arch=llama` and written back.

Read: a `LlamaForCausalLM` folder (config.json with safetensors weights, one file or shards) or a GGUF file, which
transformers' GGUF reader dequantises (it needs the `gguf` package: `pip install 'sharebench[llama]'`). Grouped
key/value heads become `sharing=gqa` (or `mqa` for one head). Written: an unshared (or grouped-K/V) Llama as a
native `LlamaForCausalLM` folder. One table of names (`HF_NAMES`) serves both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from sharebench.data.tokenizer import require_gguf
from sharebench.errors import ConfigError
from sharebench.layers import Unshared
from sharebench.model.transformer import LanguageModel, ModelConfig
from sharebench.sharing.gqa import GroupedQuery, MultiQuery, scheme_for_kv_heads
from sharebench.sharing.none import Separate

# Hugging Face LlamaForCausalLM parameter names → this suite's, per layer where {i} appears. The query, key and
# value projections are one tensor here (`attn.qkv.proj`, rows q, k, v) and three there.
HF_NAMES = {
    "model.embed_tokens.weight": "transformer.embeddings.tokens.weight",
    "model.norm.weight": "transformer.final_norm.weight",
    "lm_head.weight": "head.decoder.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "transformer.blocks.{i}.attn.out.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "transformer.blocks.{i}.ffn.gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "transformer.blocks.{i}.ffn.up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "transformer.blocks.{i}.ffn.down.weight",
    "model.layers.{i}.input_layernorm.weight": "transformer.blocks.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "transformer.blocks.{i}.ffn_norm.weight",
}
QKV = "model.layers.{i}.self_attn.{role}_proj.weight"
SUITE_QKV = "transformer.blocks.{i}.attn.qkv.proj.weight"


def rope(hf: Mapping[str, Any]) -> tuple[str, float]:
    """The rotary kind and base of a Llama config, as transformers 5 (`rope_parameters`) or 4 (`rope_theta`,
    `rope_scaling`) writes them."""
    parameters = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    return kind, float(parameters.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config(hf: Mapping[str, Any], source: str) -> tuple[ModelConfig, int]:
    """The suite's shape of a Hugging Face Llama config, and its number of key/value heads; a ConfigError naming
    the option where the config asks for something `arch=llama` does not compute."""
    kind, theta = rope(hf)
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    unsupported = {
        f"rope scaling {kind!r}": kind != "default",
        f"activation {hf.get('hidden_act')!r}": hf.get("hidden_act", "silu") != "silu",
        "attention biases": hf.get("attention_bias", False),
        "MLP biases": hf.get("mlp_bias", False),
        f"head_dim {hf.get('head_dim')} ≠ hidden_size / heads": hf.get("head_dim") not in (None, dim // heads),
    }
    refused = [option for option, present in unsupported.items() if present]
    if refused:
        raise ConfigError(f"pretrained: {source} uses {', '.join(refused)}, which arch=llama does not implement "
                          "(it computes rotary positions without scaling, SwiGLU and no biases)")  # fmt: skip
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"], n_layers=hf["num_hidden_layers"], dim=dim, n_heads=heads,
        ffn_dim=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 2048), objective="causal",
        norm_position="pre", norm="rms", positions="rotary", rope_theta=theta, ffn="gated", activation="silu",
        dropout=0.0, attention_dropout=hf.get("attention_dropout", 0.0), bias=False, qkv_bias=False,
        type_vocab_size=0, layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False), pooler=False,
    )  # fmt: skip
    return cfg, hf.get("num_key_value_heads") or heads


def from_state(hf: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> LanguageModel:
    """The `arch=llama` model of a Hugging Face Llama config and its weights (by Hugging Face's names)."""
    cfg, kv_heads = model_config(hf, source)
    scheme, ratio = scheme_for_kv_heads(kv_heads, cfg.n_heads)
    model = LanguageModel(cfg, scheme if ratio is None else partial(scheme, ratio=ratio), scheme.name, Unshared())
    converted, used = {}, set()
    for layer in range(cfg.n_layers):
        names = [QKV.format(i=layer, role=role) for role in "qkv"]
        if all(name in state for name in names):
            converted[SUITE_QKV.format(i=layer)] = torch.cat([state[name] for name in names])
            used.update(names)
    for hf_name, suite_name in HF_NAMES.items():
        for layer in range(cfg.n_layers) if "{i}" in hf_name else [None]:
            if hf_name.format(i=layer) in state:
                converted[suite_name.format(i=layer)] = state[hf_name.format(i=layer)]
                used.add(hf_name.format(i=layer))
    if cfg.tie_embeddings:  # one tensor, stored once as the embeddings
        converted["head.decoder.weight"] = converted.get("transformer.embeddings.tokens.weight")
    missing, _ = model.load_state_dict(converted, strict=False)
    unused = sorted(name for name in set(state) - used if not name.endswith("rotary_emb.inv_freq"))  # old buffers
    if missing or unused:
        raise ConfigError(f"pretrained: {source} does not map onto arch=llama; missing {sorted(missing)[:5]}, "
                          f"not understood {unused[:5]}")  # fmt: skip
    return model


def load_gguf(path: Path) -> LanguageModel:
    """A Llama GGUF file's model, dequantised to fp32 by transformers' GGUF reader (quantisation error stays in
    the weights)."""
    require_gguf(path)
    from transformers import AutoConfig, LlamaForCausalLM

    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError) as error:  # transformers' words for an architecture its GGUF reader lacks
        raise ConfigError(f"pretrained: {path} cannot be read as a Llama GGUF ({error})") from error
    if config.model_type != "llama":
        raise ConfigError(f"pretrained: {path} holds a {config.model_type!r} model; GGUF files load for Llama only")
    hf = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return from_state(config.to_dict(), hf.state_dict(), str(path))


def native(model: LanguageModel) -> bool:
    """Whether transformers' own LlamaForCausalLM computes what this model computes."""
    cfg = model.config
    llama_shape = (cfg.causal, cfg.norm_position, cfg.norm, cfg.positions, cfg.ffn, cfg.activation, cfg.bias,
                   cfg.qkv_bias) == (True, "pre", "rms", "rotary", "gated", "silu", False, False)  # fmt: skip
    grouped = model.sharing_name in (Separate.name, GroupedQuery.name, MultiQuery.name)
    return llama_shape and grouped and model.layers.name == Unshared.name


def to_hf(model: LanguageModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The LlamaForCausalLM config.json and weights (by Hugging Face's names) of a model that `native` accepts."""
    cfg = model.config
    ours = model.state_dict()
    state = {}
    for hf_name, suite_name in HF_NAMES.items():
        for layer in range(cfg.n_layers) if "{i}" in hf_name else [None]:
            if (tensor := ours.get(suite_name.format(i=layer))) is not None:
                state[hf_name.format(i=layer)] = tensor
    if cfg.tie_embeddings:  # transformers ties the head to the embeddings itself
        state.pop("lm_head.weight", None)
    for layer, block in enumerate(model.transformer.blocks):
        roles = block.attn.qkv.role_weights()
        state |= {QKV.format(i=layer, role=role): roles[role][0].detach() for role in "qkv"}
    kv_heads = state[QKV.format(i=0, role="k")].shape[0] // (cfg.dim // cfg.n_heads)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": kv_heads, "head_dim": cfg.dim // cfg.n_heads,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_positions, "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
    }  # fmt: skip
    return config, {name: tensor.contiguous() for name, tensor in state.items()}
