"""Sharing applied to a trained model without retraining: the conversions, on a model in memory.

- `headwise` (DirectShare, Cao et al. 2024): a head reuses the query, key and value rows and the output columns
  of the most similar head of another layer. Every head's parameters become their own small modules, and a head
  that reuses another holds that head's modules, so a shared head exists once as a tensor. Heads are scored by
  the cosine similarity of their concatenated, flattened query and key weights; a head may only reuse one of an
  earlier layer, a head that lends its weights keeps its own, so at most half of the heads can be shared
  (ratio ≤ 0.5). PostShare trains towards it with `similarity_penalty`.
- `gqa`: key/value heads mean-pooled per group of H/G query heads (Ainslie et al. 2023), or a grouped model's
  G₀ key/value heads per group of G₀/G (a Llama's 3 heads into 1 is MQA).
- `recursive_lora`: the layers of each cycle set averaged into one shared block, and each layer's difference
  to it kept as a LoRA initialised by truncated SVD (Bae et al. 2024).

`sharebench convert <checkpoint> <out> --to headwise --ratio 0.3` (`checkpoint.convert_checkpoint`) writes the
result as a checkpoint that pretraining can continue from (`pretrained=<folder>`, "uptraining") and GLUE can
fine-tune; `task=sts_zero_shot` scores it without training (`sharebench.zero_shot`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.recursive_lora import LoRALinear, RecursiveLoRA
from sharebench.model import LanguageModel
from sharebench.sharing.base import AttentionSharing, checked_ratio
from sharebench.sharing.gqa import GroupedQuery
from sharebench.sharing.none import Separate

CONVERSIONS = ("headwise", "gqa", "recursive_lora")

HeadId = tuple[int, int]  # (layer, head)


class HeadwiseRatio:
    ratio_range = (0.0, 0.5)
    default_ratio = 0.3
    fixed_ratio = None
    ratio_meaning = "the fraction of all L·H heads that reuse another head's weights"


class HeadQKV(nn.Module):
    component = "attention_qkv"

    def __init__(self, dim: int, head_dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, head_dim, dim))  # query, key, value rows of one head
        self.bias = nn.Parameter(torch.zeros(3, head_dim)) if bias else None


class HeadOut(nn.Module):
    component = "attention_out"

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, head_dim))  # the head's columns of the output projection


class HeadwiseQKV(AttentionSharing):
    """Query/key/value projection assembled from per-head modules, some of them another layer's."""

    def __init__(self, heads: list[HeadQKV], dim: int) -> None:
        super().__init__(dim, len(heads), heads[0].bias is not None)
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        weight = torch.stack([h.weight for h in self.heads], dim=1).reshape(3 * self.dim, self.dim)
        bias = None
        if self.heads[0].bias is not None:
            bias = torch.stack([h.bias for h in self.heads], dim=1).reshape(3 * self.dim)
        q, k, v = F.linear(x, weight, bias).view(batch, tokens, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def macs(self) -> int:
        return 3 * self.dim * self.dim

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        weights = torch.stack([h.weight for h in self.heads], dim=1)  # (3, H, d, D)
        biases = torch.stack([h.bias for h in self.heads], dim=1) if self.heads[0].bias is not None else None
        return {
            role: (weights[i].reshape(self.dim, self.dim), biases[i].flatten() if biases is not None else None)
            for i, role in enumerate("qkv")
        }


class HeadwiseOut(nn.Module):
    component = "attention_out"

    def __init__(self, heads: list[HeadOut], bias: nn.Parameter | None) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.bias = bias

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, torch.cat([h.weight for h in self.heads], dim=1), self.bias)

    def macs(self) -> int:
        dim = self.heads[0].weight.size(0)
        return dim * dim


def _require_separate(model: nn.Module, conversion: str) -> None:
    blocks = list(model.transformer.blocks)
    if len({id(b) for b in blocks}) != len(blocks) or not all(isinstance(b.attn.qkv, Separate) for b in blocks):
        raise ConfigError(
            f"convert --to {conversion} needs a model with separate Q/K/V (sharing=none) and no cross-layer "
            f"sharing; this one has sharing={model.sharing_name}, layers={model.layers.name}"
        )


def head_weights(model: nn.Module, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query, key and value rows (d × D each) of one head of a model with separate Q/K/V."""
    proj = model.transformer.blocks[layer].attn.qkv.proj.weight
    dim, head_dim = proj.size(1), proj.size(1) // model.config.n_heads
    rows = [proj[role * dim + head * head_dim : role * dim + (head + 1) * head_dim] for role in range(3)]
    return rows[0], rows[1], rows[2]


def select_shared_heads(model: nn.Module, ratio: float) -> dict[HeadId, HeadId]:
    """DirectShare's choice: which heads reuse which, for the top int(r·L·H) heads by best-match similarity."""
    ratio = checked_ratio("headwise", "ratio", ratio, HeadwiseRatio)
    _require_separate(model, "headwise")
    n_layers, n_heads = model.config.n_layers, model.config.n_heads
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    with torch.no_grad():
        vectors = torch.stack([torch.cat([w.flatten() for w in head_weights(model, *h)[:2]]) for h in heads])
        vectors = F.normalize(vectors.float(), dim=1)
        similarity = (vectors @ vectors.T).tolist()
    pairs = sorted(
        ((similarity[a][b], a, b) for a in range(len(heads)) for b in range(len(heads)) if heads[b][0] < heads[a][0]),
        reverse=True,
    )
    wanted, sources, lenders = int(ratio * len(heads)), {}, set()
    for _, receiver, lender in pairs:
        if len(sources) == wanted:
            break
        if receiver in sources or receiver in lenders or lender in sources:
            continue
        sources[receiver] = lender
        lenders.add(lender)
    return {heads[r]: heads[s] for r, s in sources.items()}


def share_heads(model: nn.Module, sources: dict[HeadId, HeadId]) -> nn.Module:
    """Rebuild the attention of a model with separate Q/K/V from per-head modules, each head in `sources`
    holding its source head's modules (its own weights are dropped). Returns the model, changed in place."""
    _require_separate(model, "headwise")
    cfg = model.config
    head_dim = cfg.dim // cfg.n_heads
    qkv_heads: dict[HeadId, HeadQKV] = {}
    out_heads: dict[HeadId, HeadOut] = {}
    for layer, block in enumerate(model.transformer.blocks):
        proj, out = block.attn.qkv.proj, block.attn.out
        for head in range(cfg.n_heads):
            qkv = HeadQKV(cfg.dim, head_dim, proj.bias is not None).to(proj.weight.device)
            columns = HeadOut(cfg.dim, head_dim).to(proj.weight.device)
            with torch.no_grad():
                qkv.weight.copy_(torch.stack(head_weights(model, layer, head)))
                if proj.bias is not None:
                    qkv.bias.copy_(proj.bias.view(3, cfg.n_heads, head_dim)[:, head])
                columns.weight.copy_(out.weight[:, head * head_dim : (head + 1) * head_dim])
            qkv_heads[layer, head], out_heads[layer, head] = qkv, columns
    for receiver, source in sources.items():
        qkv_heads[receiver], out_heads[receiver] = qkv_heads[source], out_heads[source]
    for layer, block in enumerate(model.transformer.blocks):
        block.attn.qkv = HeadwiseQKV([qkv_heads[layer, h] for h in range(cfg.n_heads)], cfg.dim)
        block.attn.out = HeadwiseOut([out_heads[layer, h] for h in range(cfg.n_heads)], block.attn.out.bias)
    model.head_sources = sorted([*receiver, *source] for receiver, source in sources.items())
    model.sharing_name = "headwise"
    return model


def direct_share(model: nn.Module, ratio: float) -> nn.Module:
    """DirectShare at `ratio`: select the most similar heads and share them; ratio 0 changes nothing but the
    parameter layout."""
    return share_heads(model, select_shared_heads(model, ratio))


def similarity_penalty(model: nn.Module, sources: dict[HeadId, HeadId]) -> torch.Tensor:
    """PostShare's regulariser: Σ over the selected pairs of ‖q_i − q_j‖₂ + ‖k_i − k_j‖₂ + ‖v_i − v_j‖₂."""
    terms = [
        torch.linalg.vector_norm(mine - theirs)
        for receiver, source in sources.items()
        for mine, theirs in zip(head_weights(model, *receiver), head_weights(model, *source), strict=True)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def to_gqa(model: LanguageModel, ratio: float) -> LanguageModel:
    """The same model with G = H·(1 − r) key/value heads, each the mean of the heads it replaces: of a model with
    separate Q/K/V, its groups of H/G heads; of a grouped one with G₀ heads (a Llama's), its groups of G₀/G."""
    blocks = list(model.transformer.blocks)
    if len({id(b) for b in blocks}) != len(blocks) or not all(type(b.attn.qkv) in (Separate, GroupedQuery)
                                                               for b in blocks):  # fmt: skip
        raise ConfigError(f"convert --to gqa needs a model with separate or grouped Q/K/V (sharing=none or gqa) and "
                          f"no cross-layer sharing; this one has sharing={model.sharing_name}, "
                          f"layers={model.layers.name}")  # fmt: skip
    cfg = model.config
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(cfg, partial(GroupedQuery, ratio=ratio), GroupedQuery.name)
    state = model.state_dict()
    groups, head_dim = converted.transformer.blocks[0].attn.qkv.n_kv_heads, cfg.dim // cfg.n_heads
    for layer, block in enumerate(blocks):
        roles = block.attn.qkv.role_weights()
        heads = roles["k"][0].size(0) // head_dim
        if heads % groups:
            raise ConfigError(f"convert --to gqa: {groups} key/value heads cannot pool this model's {heads}; choose "
                              f"a ratio whose G divides {heads}")  # fmt: skip
        for index, leaf in enumerate(("weight", "bias")):
            name = f"transformer.blocks.{layer}.attn.qkv.proj.{leaf}"
            if name not in state:
                continue
            q, k, v = (roles[role][index].detach() for role in "qkv")
            pooled = [t.reshape(groups, heads // groups, head_dim, *t.shape[1:]).mean(1).flatten(0, 1) for t in (k, v)]
            state[name] = torch.cat([q, *pooled])
    converted.load_state_dict(state)
    return converted


def to_recursive(model: LanguageModel, ratio: float, rank: int, sharing: Callable[..., AttentionSharing]
                 ) -> LanguageModel:  # fmt: skip
    """The model as a relaxed recursive transformer with M = L·(1 − r) cycle sets and rank-`rank` LoRAs; at full
    rank (min of a weight's dimensions) it computes what the original does."""
    if model.layers.name != "none":
        raise ConfigError(f"convert --to recursive_lora needs a model without cross-layer sharing, not {model.layers}")
    layers = RecursiveLoRA(ratio, rank)
    layers.check(model.config.n_layers)
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(model.config, sharing, model.sharing_name, layers)
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
        for leaf, parameter in module.named_parameters(recurse=False):
            if isinstance(module, LoRALinear) and leaf in ("weight", "lora_a", "lora_b"):
                continue
            parameter.copy_(getattr(source, leaf))
        if isinstance(module, LoRALinear):
            u, s, vh = torch.linalg.svd(source.weight - module.weight, full_matrices=False)
            rank = min(module.lora_a.size(0), s.numel())
            module.lora_a.zero_()
            module.lora_b.zero_()
            module.lora_a[:rank] = vh[:rank]
            module.lora_b[:, :rank] = u[:, :rank] * s[:rank]
