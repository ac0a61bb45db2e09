"""Query/key/value projections whose leading columns come from one shared projection.

One fused weight holds, row by row: the shared block, then the columns each role owns. One matrix multiply
computes all of them, so the shared block is computed once however many roles use it. With `split="head"`
the first s = round(r·d) columns of every head are shared; with `split="matrix"` the first round(r·D) columns
of the whole D-wide projection are.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sharebench.errors import ConfigError
from sharebench.sharing.base import AttentionSharing, linear_weight

ROLES = ("q", "k", "v")
SPLITS = ("head", "matrix")


class ColumnSharing(AttentionSharing):
    shared_roles: ClassVar[tuple[str, ...]] = ()
    # Roles whose shared columns are rescaled by a learnable vector initialised to 1.
    scaled_roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, n_heads: int, bias: bool, ratio: float | None = None, split: str = "head"):
        super().__init__(dim, n_heads, bias)
        if split not in SPLITS:
            raise ConfigError(f"sharing={self.name}: split={split!r} is unknown; valid: {', '.join(SPLITS)}")
        ratio = self.resolve_ratio(ratio, dim, n_heads)
        self.groups = n_heads if split == "head" else 1
        group_width = dim // self.groups
        self.shared_width = round(ratio * group_width)
        own_width = group_width - self.shared_width
        self.role_widths = {r: (own_width if r in self.shared_roles else group_width) for r in ROLES}
        rows = self.groups * (self.shared_width + sum(self.role_widths.values()))
        self.proj = nn.Linear(dim, rows, bias=bias)
        self.scales = nn.ParameterDict(
            {r: nn.Parameter(torch.ones(self.groups * self.shared_width)) for r in self.scaled_roles}
        )
        self.scales_folded = True  # the keys' scale moved onto the queries (lead_scales)

    def before_rotation(self) -> None:
        self.scales_folded = False  # a rotation mixes a head's dimensions: (s ⊙ k) rotated is not s ⊙ (k rotated)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        sizes = [self.groups * self.shared_width] + [self.groups * self.role_widths[r] for r in ROLES]
        shared, *owned = self.proj(x).split(sizes, dim=-1)
        scales = self.lead_scales()
        outputs = []
        for role, own in zip(ROLES, owned, strict=True):
            if role in self.shared_roles and self.shared_width:
                lead = shared * scales[role] if scales[role] is not None else shared
                if own.size(-1):
                    parts = [lead.view(batch, tokens, self.groups, -1), own.view(batch, tokens, self.groups, -1)]
                    own = torch.cat(parts, dim=-1)
                else:
                    own = lead  # fully shared: no copy
            outputs.append(own.reshape(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2))
        return outputs[0], outputs[1], outputs[2]

    def lead_scales(self) -> dict[str, torch.Tensor | None]:
        """What each role's shared columns are multiplied by. Attention scores see queries and keys only through
        their products, so where both are scaled the keys' scale moves onto the queries: the same model, one
        elementwise multiply of the activations fewer (`role_weights` keeps the scales apart). Not where the
        model rotates queries and keys (`before_rotation`)."""
        scales = {role: self.scales[role] if role in self.scales else None for role in ROLES}
        if scales["q"] is not None and scales["k"] is not None and self.scales_folded:
            scales["q"], scales["k"] = scales["q"] * scales["k"], None
        return scales

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        sizes = [self.groups * self.shared_width] + [self.groups * self.role_widths[r] for r in ROLES]
        weights = linear_weight(self.proj).split(sizes)
        biases = self.proj.bias.split(sizes) if self.proj.bias is not None else [None] * len(sizes)
        roles = {}
        for role, weight, bias in zip(ROLES, weights[1:], biases[1:], strict=True):
            if role in self.shared_roles and self.shared_width:
                scale = self.scales[role] if role in self.scales else torch.ones_like(weights[0][:, 0])
                lead_weight, lead_bias = weights[0] * scale[:, None], biases[0] * scale if bias is not None else None
                per_group = [
                    lead_weight.view(self.groups, self.shared_width, -1),
                    weight.view(self.groups, -1, self.dim),
                ]
                weight = torch.cat(per_group, dim=1).reshape(self.dim, self.dim)
                if bias is not None:
                    bias = torch.cat([lead_bias.view(self.groups, -1), bias.view(self.groups, -1)], 1).flatten()
            roles[role] = (weight, bias)
        return roles

    def used_numel(self) -> int:
        shared_rows = self.groups * self.shared_width
        per_row = self.dim + (1 if self.proj.bias is not None else 0)
        extra_uses = max(len(self.shared_roles) - 1, 0)
        return super().used_numel() + extra_uses * shared_rows * per_row
