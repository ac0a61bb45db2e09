"""Sharing applied to a trained model without retraining, and the zero-shot check of what it costs.

Each conversion takes a suite checkpoint or a Hugging Face BERT folder and writes a normal suite checkpoint
with the new sharing (and the tokenizer files), which pretraining can continue from (`pretrained=<folder>`,
"uptraining") and GLUE can fine-tune:

- `headwise` (DirectShare, Cao et al. 2024): the most similar heads across layers share their weights.
- `gqa`: key/value heads mean-pooled per group of H/G query heads (Ainslie et al. 2023).
- `recursive_lora`: the layers of each cycle set averaged into one shared block, and each layer's difference
  to it kept as a LoRA initialised by truncated SVD (Bae et al. 2024).

sharebench convert <checkpoint> <out> --to headwise --ratio 0.3
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sharebench.checkpoint import checkpoint_sharing, load_pretrained, save_pretrained, scheme_target
from sharebench.errors import ConfigError
from sharebench.layers.headwise import direct_share
from sharebench.layers.recursive_lora import LoRALinear, RecursiveLoRA
from sharebench.model import LanguageModel
from sharebench.paths import resolve_path
from sharebench.sharing.gqa import GroupedQuery
from sharebench.tokenizer import TOKENIZER_FILES

CONVERSIONS = ("headwise", "gqa", "recursive_lora")


def _require_separate(model: LanguageModel, conversion: str) -> None:
    if model.sharing_name != "none" or model.layers.name != "none":
        raise ConfigError(
            f"convert --to {conversion} needs a model with separate Q/K/V and no cross-layer sharing; "
            f"this one has sharing={model.sharing_name}, layers={model.layers.name}"
        )


def to_gqa(model: LanguageModel, ratio: float) -> LanguageModel:
    """The same model with G = H·(1 − r) key/value heads, each the mean of its group's heads."""
    _require_separate(model, "gqa")
    cfg = model.config
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(cfg, partial(GroupedQuery, ratio=ratio), GroupedQuery.name)
    state = model.state_dict()
    groups = converted.transformer.blocks[0].attn.qkv.n_kv_heads
    per_group, head_dim = cfg.n_heads // groups, cfg.dim // cfg.n_heads
    for layer in range(cfg.n_layers):
        for leaf in ("weight", "bias"):
            name = f"transformer.blocks.{layer}.attn.qkv.proj.{leaf}"
            if name not in state:
                continue
            q, k, v = state[name].split(cfg.dim)
            pooled = [t.reshape(groups, per_group, head_dim, *t.shape[1:]).mean(1).flatten(0, 1) for t in (k, v)]
            state[name] = torch.cat([q, *pooled])
    converted.load_state_dict(state)
    return converted


def to_recursive(model: LanguageModel, ratio: float, rank: int, sharing: dict[str, Any], ratio_of_sharing: Any):
    """The model as a relaxed recursive transformer with M = L·(1 − r) cycle sets and rank-`rank` LoRAs; at full
    rank (min of a weight's dimensions) it computes what the original does."""
    if model.layers.name != "none":
        raise ConfigError(f"convert --to recursive_lora needs a model without cross-layer sharing, not {model.layers}")
    layers = RecursiveLoRA(ratio, rank)
    layers.check(model.config.n_layers)
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(
            model.config, instantiate(sharing, ratio=ratio_of_sharing), model.sharing_name, layers
        )
    converted.load_state_dict(model.state_dict(), strict=False)  # embeddings, heads, final norm
    sets = layers.layer_sets(model.config.n_layers)
    with torch.no_grad():
        for unique_set in set(sets):
            members = [i for i, s in enumerate(sets) if s == unique_set]
            for path, relaxed in converted.transformer.blocks[members[0]].named_modules():
                if isinstance(relaxed, LoRALinear):
                    originals = [model.transformer.blocks[i].get_submodule(path).weight for i in members]
                    relaxed.weight.copy_(torch.stack(originals).mean(0))
        for original, relaxed_block in zip(model.transformer.blocks, converted.transformer.blocks, strict=True):
            _copy_layer(original, relaxed_block)
    return converted


def _copy_layer(original: nn.Module, relaxed: nn.Module) -> None:
    """The layer's own parameters copied; each LoRA set to the truncated SVD of (its weight − the shared one)."""
    for name, module in relaxed.named_modules():
        source = original.get_submodule(name)
        for leaf, parameter in module._parameters.items():
            if parameter is None or (isinstance(module, LoRALinear) and leaf in ("weight", "lora_a", "lora_b")):
                continue
            parameter.copy_(getattr(source, leaf))
        if isinstance(module, LoRALinear):
            u, s, vh = torch.linalg.svd(source.weight - module.weight, full_matrices=False)
            rank = min(module.lora_a.size(0), s.numel())
            module.lora_a.zero_()
            module.lora_b.zero_()
            module.lora_a[:rank] = vh[:rank]
            module.lora_b[:, :rank] = u[:, :rank] * s[:rank]


def converted_model(source: str | Path, to: str, ratio: float, rank: int = 8) -> tuple[LanguageModel, dict, Any]:
    """The checkpoint in `source` with the new sharing, and the within-layer scheme config and ratio it stores."""
    if to not in CONVERSIONS:
        raise ConfigError(f"convert: unknown conversion {to!r}; valid: {', '.join(CONVERSIONS)}")
    source = Path(source)
    model = load_pretrained(source)
    sharing, sharing_ratio = checkpoint_sharing(source)
    if to == "headwise":
        _require_separate(model, to)
        return direct_share(model, ratio), sharing, sharing_ratio
    if to == "gqa":
        return to_gqa(model, ratio), scheme_target(GroupedQuery), ratio
    return to_recursive(model, ratio, rank, sharing, sharing_ratio), sharing, sharing_ratio


def convert(source: str | Path, out: str | Path, to: str, ratio: float, rank: int = 8) -> LanguageModel:
    """Convert the checkpoint in `source` and write it, with its tokenizer files, to `out`."""
    source, out = Path(source), Path(out)
    converted, sharing, sharing_ratio = converted_model(source, to, ratio, rank)
    save_pretrained(converted, out, sharing, sharing_ratio)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return converted


def run_sts_zero_shot(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """task=sts_zero_shot: the pretrained model, converted as `convert` says (or not), scored on the STS-B
    validation split without training; the run record holds the parameters and the correlations."""
    from sharebench.glue import load_split
    from sharebench.record import RunRecord, completed_record
    from sharebench.tokenizer import load_pretrained_tokenizer

    if previous := completed_record(run_dir):
        return previous
    with RunRecord(cfg, run_dir) as record:
        source = resolve_path(cfg.pretrained)
        if cfg.convert.to:
            model, _, _ = converted_model(source, cfg.convert.to, cfg.convert.ratio, cfg.convert.rank)
        else:
            model = load_pretrained(source)
        tokenizer = load_pretrained_tokenizer(source, cfg.glue.recipe.max_length, model.config.vocab_size)
        split = load_split(cfg.glue.source, "stsb", "validation")
        if cfg.glue.recipe.max_eval_examples:
            split = {column: values[: cfg.glue.recipe.max_eval_examples] for column, values in split.items()}
        counts = model.parameter_counts(lm_head=False)
        record.update(
            pretrained=str(source),
            sharing={"name": model.sharing_name, "ratio": cfg.convert.ratio if cfg.convert.to else None,
                     "layers": model.layers.describe(), "conversion": OmegaConf.to_container(cfg.convert)},
            parameters=counts.to_dict(),
            examples={"validation": len(split["label"])},
            metrics=sts_zero_shot(model, tokenizer, split),
        )  # fmt: skip
    return record.data


def mean_pooled(model: LanguageModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings: final hidden states averaged over the non-padding tokens (sentence-transformers)."""
    hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def sts_zero_shot(model: LanguageModel, tokenizer: Any, split: dict[str, list], batch_size: int = 64) -> dict:
    """STS-B without training: Spearman and Pearson correlation of the cosine similarity of the two sentences'
    mean-pooled embeddings with the gold scores."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    from sharebench.finetune import pad_batch

    model.eval()
    similarities = []
    for start in range(0, len(split["label"]), batch_size):
        pooled = []
        for column in ("text_a", "text_b"):
            encodings = tokenizer.encode_batch(split[column][start : start + batch_size])
            examples = [{"input_ids": torch.tensor(e.ids), "token_type_ids": torch.tensor(e.type_ids),
                         "labels": torch.tensor(0.0)} for e in encodings]  # fmt: skip
            batch = pad_batch(examples)
            pooled.append(mean_pooled(model, batch))
        similarities.append(torch.nn.functional.cosine_similarity(*pooled))
    predicted, gold = torch.cat(similarities), torch.tensor(split["label"], dtype=torch.float)
    return {"spearman": float(spearman_corrcoef(predicted, gold)), "pearson": float(pearson_corrcoef(predicted, gold))}
