"""Sharing applied to a trained model without retraining: the conversions, on a model in memory.

- `headwise` (DirectShare, Cao et al. 2024): a head reuses the query, key and value rows and the output columns
  of the most similar head of another layer. With grouped key/value heads (a Llama's), a head is a key/value
  head with the query heads it serves. Every head's parameters become their own small modules, and a head
  that reuses another holds that head's modules, so a shared head exists once as a tensor. Heads are scored by
  the cosine similarity of their concatenated, flattened query and key weights; a head may only reuse one of an
  earlier layer, a head that lends its weights keeps its own, so at most half of the heads can be shared
  (ratio ≤ 0.5). PostShare trains towards it with `similarity_penalty`.
- `gqa`: key/value heads mean-pooled per group of H/G query heads (Ainslie et al. 2023), or a grouped model's
  G₀ key/value heads per group of G₀/G (a Llama's 3 heads into 1 is MQA).
- `recursive_lora`: the layers of each cycle set averaged into one shared block, and each layer's difference
  to it kept as a LoRA initialised by truncated SVD (Bae et al. 2024).
- `mlkv`: Multi-Layer Key-Value sharing (Zuhri et al. 2024) made from a checkpoint: L·(1 − r) contiguous groups of
  layers, each attending over one set of key/value heads, the mean of the group's (MLKV uptrains from such a
  mean-pooled model as GQA does); the first layer of a group computes them, the others project queries only
  (`layers=kv_sources` with the groups' map).
- `basis`: Basis Sharing (Wang et al. 2025): groups of consecutive layers share one basis per projection role,
  each layer keeping its coefficients, from the truncated SVD of the group's stacked matrices (`layers.basis`).
- `drop_layers`: the naive baseline of fewer stored parameters, round(r·L) whole layers removed: the deepest
  ones below the last layer, which Gromov et al. (2024) found the most redundant in Llama-family models.

`sharebench convert <checkpoint> <out> --to headwise --ratio 0.3` (`sharebench.train.conversion`) writes the
result as a checkpoint that pretraining can continue from (`pretrained=<folder>`, "uptraining") and GLUE can
fine-tune; `task=sts_zero_shot` scores it without training (`sharebench.train.zero_shot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.basis import BasisSharing, role_modules
from sharebench.layers.kv_sources import KVSources
from sharebench.layers.recursive_lora import LoRALinear, RecursiveLoRA
from sharebench.model.transformer import LanguageModel
from sharebench.sharing.base import AttentionSharing, checked_ratio
from sharebench.sharing.gqa import GroupedQuery
from sharebench.sharing.none import Separate

# The conversions: `gqa` replaces the within-layer scheme; `headwise` shares single heads over it; the others change
# the layers and keep the checkpoint's within-layer scheme.
CONVERSIONS = ("headwise", "gqa", "recursive_lora", "mlkv", "basis", "drop_layers")

HeadId = tuple[int, int]  # (layer, head)


class HeadwiseRatio:
    ratio_range = (0.0, 0.5)
    default_ratio = 0.3
    fixed_ratio = None
    ratio_meaning = (
        "the fraction of all L·G heads (key/value heads with their query heads) that reuse another's weights"
    )


class HeadQKV(nn.Module):
    """The projection rows of one head: its query rows, then its key and value rows. With grouped key/value heads
    the unit is a key/value head with the m = H/G query heads it serves (m = 1 for separate Q/K/V)."""

    component = "attention_qkv"

    def __init__(self, dim: int, head_dim: int, bias: bool, queries: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(queries + 2, head_dim, dim))
        self.bias = nn.Parameter(torch.zeros(queries + 2, head_dim)) if bias else None


class HeadOut(nn.Module):
    component = "attention_out"

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, width))  # the head's (its query heads') output columns


class HeadwiseQKV(AttentionSharing):
    """Query/key/value projection assembled from per-head modules (`HeadQKV`), some of them another layer's."""

    def __init__(self, heads: list[HeadQKV], dim: int) -> None:
        self.queries = heads[0].weight.size(0) - 2  # query heads per key/value head
        super().__init__(dim, len(heads) * self.queries, heads[0].bias is not None)
        self.heads = nn.ModuleList(heads)
        self.n_kv_heads = len(heads)

    def projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (H·d + 2·G·d) × D weight, rows q, k, v as GroupedQuery orders them, and its bias."""

        def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack(tensors)  # (G, m + 2, d, ...)
            return torch.cat([stacked[:, : self.queries].flatten(0, 2), stacked[:, -2].flatten(0, 1),
                              stacked[:, -1].flatten(0, 1)])  # fmt: skip

        bias = rows([h.bias for h in self.heads]) if self.heads[0].bias is not None else None
        return rows([h.weight for h in self.heads]), bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = F.linear(x, *self.projection()).split([self.dim, kv_width, kv_width], dim=-1)
        q = q.view(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def macs(self) -> int:
        return (self.dim + 2 * self.n_kv_heads * self.head_dim) * self.dim

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        weight, bias = self.projection()
        sizes = [self.dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim]
        biases = bias.split(sizes) if bias is not None else (None, None, None)
        return dict(zip("qkv", zip(weight.split(sizes), biases, strict=True), strict=True))


class HeadwiseOut(nn.Module):
    component = "attention_out"

    def __init__(self, heads: list[HeadOut], bias: nn.Parameter | None) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.bias = bias

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, torch.cat([h.weight for h in self.heads], dim=1), self.bias)

    def macs(self) -> int:
        return sum(h.weight.numel() for h in self.heads)


def _require_plain_layers(model: nn.Module, conversion: str) -> None:
    """A conversion that reads each layer's own query/key/value rows: separate or grouped Q/K/V, no layer shared."""
    blocks = list(model.transformer.blocks)
    if len({id(b) for b in blocks}) != len(blocks) or not all(type(b.attn.qkv) in (Separate, GroupedQuery)
                                                               for b in blocks):  # fmt: skip
        raise ConfigError(f"convert --to {conversion} needs a model with separate or grouped Q/K/V (sharing=none or "
                          f"gqa) and no cross-layer sharing; this one has sharing={model.sharing_name}, "
                          f"layers={model.layers.name}")  # fmt: skip


def kv_heads(model: nn.Module) -> int:
    """G, the key/value heads of each layer (H for separate Q/K/V)."""
    return getattr(model.transformer.blocks[0].attn.qkv, "n_kv_heads", model.config.n_heads)


def head_weights(model: nn.Module, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query rows (m·d × D), key rows and value rows (d × D each) of one key/value head and the m query heads
    it serves."""
    roles = model.transformer.blocks[layer].attn.qkv.role_weights()
    width = model.config.dim // model.config.n_heads
    queries = model.config.n_heads // kv_heads(model)
    q, k, v = (roles[role][0] for role in "qkv")
    return (q[head * queries * width : (head + 1) * queries * width], k[head * width : (head + 1) * width],
            v[head * width : (head + 1) * width])  # fmt: skip


def select_shared_heads(model: nn.Module, ratio: float) -> dict[HeadId, HeadId]:
    """DirectShare's choice: which heads reuse which, for the top int(r·L·G) heads by best-match similarity."""
    ratio = checked_ratio("headwise", "ratio", ratio, HeadwiseRatio)
    _require_plain_layers(model, "headwise")
    heads = [(layer, head) for layer in range(model.config.n_layers) for head in range(kv_heads(model))]
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
    """Rebuild the attention of a model with separate or grouped Q/K/V from per-head modules, each head in
    `sources` holding its source head's modules (its own weights are dropped). Returns the model, changed in
    place."""
    _require_plain_layers(model, "headwise")
    cfg = model.config
    width, groups = cfg.dim // cfg.n_heads, kv_heads(model)
    queries = cfg.n_heads // groups
    qkv_heads: dict[HeadId, HeadQKV] = {}
    out_heads: dict[HeadId, HeadOut] = {}
    for layer, block in enumerate(model.transformer.blocks):
        roles, out = block.attn.qkv.role_weights(), block.attn.out
        device = out.weight.device
        for head in range(groups):
            qkv = HeadQKV(cfg.dim, width, roles["q"][1] is not None, queries).to(device)
            columns = HeadOut(cfg.dim, queries * width).to(device)
            with torch.no_grad():
                qkv.weight.copy_(torch.cat(head_weights(model, layer, head)).view(queries + 2, width, cfg.dim))
                if qkv.bias is not None:
                    q, k, v = (roles[role][1] for role in "qkv")
                    qkv.bias.copy_(torch.cat([q.view(groups, queries * width)[head], k.view(groups, width)[head],
                                              v.view(groups, width)[head]]).view(queries + 2, width))  # fmt: skip
                columns.weight.copy_(out.weight[:, head * queries * width : (head + 1) * queries * width])
            qkv_heads[layer, head], out_heads[layer, head] = qkv, columns
    for receiver, source in sources.items():
        qkv_heads[receiver], out_heads[receiver] = qkv_heads[source], out_heads[source]
    for layer, block in enumerate(model.transformer.blocks):
        block.attn.qkv = HeadwiseQKV([qkv_heads[layer, h] for h in range(groups)], cfg.dim)
        block.attn.out = HeadwiseOut([out_heads[layer, h] for h in range(groups)], block.attn.out.bias)
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


def mlkv_sources(n_layers: int, ratio: float) -> list[int]:
    """The layer each layer takes its keys and values from: round(L·(1 − r)) contiguous groups as even as they
    can be, each led by its first layer."""
    groups = round(n_layers * (1 - ratio))
    if not 1 <= groups <= n_layers:
        raise ConfigError(f"convert --to mlkv: ratio={ratio} leaves {groups} of {n_layers} layers with keys and "
                          f"values; choose a ratio in [0, {(n_layers - 1) / n_layers:.3g}]")  # fmt: skip
    starts = [round(group * n_layers / groups) for group in range(groups)]
    return [max(start for start in starts if start <= layer) for layer in range(n_layers)]


def to_mlkv(model: LanguageModel, ratio: float, sharing: Callable[..., AttentionSharing]) -> LanguageModel:
    """The model with its layers in L·(1 − r) groups (`mlkv_sources`), each attending over the mean of its
    layers' key/value projections; ratio 0 computes what the original does."""
    _require_plain_layers(model, "mlkv")
    sources = mlkv_sources(model.config.n_layers, ratio)
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(model.config, sharing, model.sharing_name, KVSources(sources=sources))
    state = model.state_dict()
    roles = [block.attn.qkv.role_weights() for block in model.transformer.blocks]
    for layer, source in enumerate(sources):
        members = [other for other, its in enumerate(sources) if its == source]
        for index, leaf in enumerate(("weight", "bias")):
            name = f"transformer.blocks.{layer}.attn.qkv.proj.{leaf}"
            if name not in state:
                continue
            query = roles[layer]["q"][index].detach()
            pooled = [torch.stack([roles[m][role][index].detach() for m in members]).mean(0) for role in "kv"]
            state[name] = torch.cat([query, *pooled]) if layer == source else query
    converted.load_state_dict(state)
    return converted


def to_gqa(model: LanguageModel, ratio: float) -> LanguageModel:
    """The same model with G = H·(1 − r) key/value heads, each the mean of the heads it replaces: of a model with
    separate Q/K/V, its groups of H/G heads; of a grouped one with G₀ heads (a Llama's), its groups of G₀/G."""
    _require_plain_layers(model, "gqa")
    blocks = list(model.transformer.blocks)
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


def to_basis(model: LanguageModel, ratio: float, group: int, sharing: Callable[..., AttentionSharing]
             ) -> LanguageModel:  # fmt: skip
    """The model with Basis Sharing at compression ratio `ratio` over groups of `group` layers: each group's
    matrices of a shared role stacked (n·d_out × d_in) and replaced by their truncated SVD, U_k as the layers'
    coefficients and Σ_k·V_kᵀ as the group's basis; every other role's matrix by its own truncated SVD."""
    _require_plain_layers(model, "basis")
    layers = BasisSharing(ratio, group=group)
    layers.check(model.config.n_layers)
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(model.config, sharing, model.sharing_name, layers)
    converted.load_state_dict(model.state_dict(), strict=False)  # all but the projections' weights
    originals, targets = list(model.transformer.blocks), list(converted.transformer.blocks)
    with torch.no_grad():
        for role, (path, part) in role_modules(originals[0]).items():
            for members in layers.groups(model.config.n_layers):
                for together in [members] if role in layers.shared else [[layer] for layer in members]:
                    weights = [_role_weight(originals[layer], path, part) for layer in together]
                    u, s, vh = torch.linalg.svd(torch.cat(weights).double(), full_matrices=False)
                    rank = targets[together[0]].get_submodule(path).bases[part].weight.size(0)
                    targets[together[0]].get_submodule(path).bases[part].weight.copy_(s[:rank, None] * vh[:rank])
                    rows = weights[0].size(0)
                    for index, layer in enumerate(together):
                        coefficients = u[index * rows : (index + 1) * rows, :rank]
                        targets[layer].get_submodule(path).coefficients[part].copy_(coefficients)
    return converted


def _role_weight(block: nn.Module, path: str, part: int) -> torch.Tensor:
    """One role's weight in a block: a part of the fused query/key/value projection, or a whole linear layer's."""
    if path == "attn.qkv.proj":
        return list(block.attn.qkv.role_weights().values())[part][0].detach()
    return block.get_submodule(path).weight.detach()


def drop_layers(model: LanguageModel, ratio: float, sharing: Callable[..., AttentionSharing]) -> LanguageModel:
    """The model without round(r·L) layers, the deepest ones below its last layer (which stays)."""
    n_layers = model.config.n_layers
    dropped = round(ratio * n_layers)
    if model.layers.name != "none":
        raise ConfigError(f"convert --to drop_layers needs a model without cross-layer sharing, not {model.layers}")
    if not 0 < dropped < n_layers:
        raise ConfigError(f"convert --to drop_layers: ratio={ratio} removes {dropped} of {n_layers} layers; choose a "
                          f"ratio that removes at least one and keeps one: [{0.5 / n_layers:.3g}, "
                          f"{(n_layers - 1.5) / n_layers:.3g}]")  # fmt: skip
    kept = [*range(n_layers - 1 - dropped), n_layers - 1]
    with torch.device(next(model.parameters()).device):
        converted = LanguageModel(replace(model.config, n_layers=len(kept)), sharing, model.sharing_name)
    state = {name: tensor for name, tensor in model.state_dict().items() if not name.startswith("transformer.blocks.")}
    for new, old in enumerate(kept):
        prefix = f"transformer.blocks.{old}."
        state |= {f"transformer.blocks.{new}.{name.removeprefix(prefix)}": tensor
                  for name, tensor in model.state_dict().items() if name.startswith(prefix)}  # fmt: skip
    converted.load_state_dict(state)
    return converted
