"""Grouped-query attention (Ainslie et al. 2023) and multi-query attention (Shazeer 2019).

G key/value heads, each serving H/G query heads; the share ratio is r = 1 − G/H.
"""

from __future__ import annotations

import torch
from torch import nn

from sharebench.errors import ConfigError
from sharebench.sharing.base import AttentionSharing, format_ratio, linear_weight, whole_count


def valid_ratios(n_heads: int) -> list[float]:
    return [1 - groups / n_heads for groups in range(n_heads, 0, -1) if n_heads % groups == 0]


def kv_heads_for(ratio: float, n_heads: int) -> int:
    groups = n_heads * (1 - ratio)
    if not whole_count(groups) or round(groups) < 1 or n_heads % round(groups):
        choices = ", ".join(format_ratio(r) for r in valid_ratios(n_heads))
        raise ConfigError(
            f"sharing=gqa: ratio={ratio} gives {groups:.3g} key/value heads, which does not divide "
            f"{n_heads} heads; valid ratios for {n_heads} heads: {choices}"
        )
    return round(groups)


class GroupedQuery(AttentionSharing):
    name = "gqa"
    ratio_range = (0.0, 1.0)
    default_ratio = 0.5
    ratio_meaning = "1 − G/H, the share of key/value heads removed; G must divide H"

    def __init__(self, dim: int, n_heads: int, bias: bool, ratio: float | None = None):
        super().__init__(dim, n_heads, bias)
        self.n_kv_heads = kv_heads_for(self.resolve_ratio(ratio, dim, n_heads), n_heads)
        self.proj = nn.Linear(dim, dim + 2 * self.n_kv_heads * self.head_dim, bias=bias)

    @classmethod
    def resolve_ratio(cls, ratio: float | None, dim: int, n_heads: int) -> float | None:
        resolved = super().resolve_ratio(ratio, dim, n_heads)
        if resolved is None:  # multi-query: a single key/value head
            return 1 - 1 / n_heads
        kv_heads_for(resolved, n_heads)
        return resolved

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.proj(x).split([self.dim, kv_width, kv_width], dim=-1)
        q = q.view(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        kv_width = self.n_kv_heads * self.head_dim
        sizes = [self.dim, kv_width, kv_width]
        biases = self.proj.bias.split(sizes) if self.proj.bias is not None else (None, None, None)
        return dict(zip("qkv", zip(linear_weight(self.proj).split(sizes), biases, strict=True), strict=True))

    def used_numel(self) -> int:
        per_row = self.dim + (1 if self.proj.bias is not None else 0)
        kv_rows = 2 * self.n_kv_heads * self.head_dim
        return super().used_numel() + (self.n_heads // self.n_kv_heads - 1) * kv_rows * per_row


class MultiQuery(GroupedQuery):
    name = "mqa"
    ratio_range = None
    default_ratio = None


def scheme_for_kv_heads(kv_heads: int, n_heads: int) -> tuple[type[AttentionSharing], float | None]:
    """The scheme that stores G = `kv_heads` key/value heads for H = `n_heads` query heads (a Llama checkpoint's),
    with its ratio: separate Q/K/V at G = H, MQA at G = 1, else GQA at 1 − G/H."""
    from sharebench.sharing.none import Separate

    if kv_heads == n_heads:
        return Separate, None
    if kv_heads == 1:
        return MultiQuery, None
    return GroupedQuery, 1 - kv_heads / n_heads
