"""Basis Sharing (Wang et al., ICLR 2025, github.com/TUDa-HWAI/Basis_Sharing): the layers form groups of n
consecutive layers, and the weight matrices of one role in a group share one basis. A layer's W_l (d_out × d_in,
as torch stores it) is C_l·B: the group's basis B (k × d_in) and the layer's own coefficients C_l (d_out × k),
so a group stores k·d_in + n·k·d_out parameters for n·d_in·d_out. The rank follows the compression ratio r as the
paper's code computes it, k = ⌊(1 − r)·n·d_in·d_out / (d_in + n·d_out)⌋. The roles of `shared` share a basis across
the group (the paper's Llama setting: the query, key, value, up and gate projections); every other projection (the
output and down projections) is compressed alone, as a group of one. Biases and norms stay per layer.

A model trains in this form from scratch (`layers=basis`), or a trained model is converted by the truncated SVD of
each group's stacked matrices (`sharebench convert … --to basis`, `convert.to_basis`). The paper whitens each
group's matrices by calibration activations before the SVD (SVD-LLM's); the conversion here is the plain SVD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing

ROLES = ("q", "k", "v", "o", "up", "gate", "down")
PAPER_SHARED = ("q", "k", "v", "up", "gate")
INIT_STD = 0.02  # the model's initialisation of a plain weight (model._init_weights), kept by C·B


def rank_for(ratio: float, layers: int, d_in: int, d_out: int) -> int:
    """Basis Sharing's number of basis vectors for `layers` matrices of d_out × d_in at compression ratio `ratio`
    (its `compute_num_basis`), at least one."""
    return max(1, math.floor((1 - ratio) * layers * d_in * d_out / (d_in + layers * d_out)))


def init_scale(rank: int) -> float:
    """The spread of a basis's and a coefficient's entries at which their product C·B has INIT_STD's."""
    return math.sqrt(INIT_STD / math.sqrt(rank))


class Basis(nn.Module):
    """k basis vectors over a role's input (k × d_in), shared by the layers of a group."""

    def __init__(self, rank: int, d_in: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(rank, d_in) * init_scale(rank))


class BasisLinear(nn.Module):
    """A linear layer whose output rows come in parts (a fused query/key/value projection's roles), each part the
    product of its coefficients (own) and its basis (possibly shared)."""

    def __init__(self, bases: Sequence[Basis], rows: Sequence[int], bias: nn.Parameter | None) -> None:
        super().__init__()
        self.bases = nn.ModuleList(bases)  # a shared basis is the same module in every layer of its group
        self.coefficients = nn.ParameterList(
            nn.Parameter(torch.randn(count, basis.weight.size(0)) * init_scale(basis.weight.size(0)))
            for basis, count in zip(bases, rows, strict=True)
        )
        self.bias = bias
        self.in_features, self.out_features = bases[0].weight.size(1), sum(rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(F.linear(x, basis.weight), c) for basis, c in zip(self.bases, self.coefficients, strict=True)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return y + self.bias if self.bias is not None else y

    def merged_weight(self) -> torch.Tensor:
        return torch.cat([c @ basis.weight for basis, c in zip(self.bases, self.coefficients, strict=True)])

    @property
    def weight(self) -> torch.Tensor:
        return self.merged_weight()

    def macs(self) -> int:
        return sum(c.size(1) * (self.in_features + c.size(0)) for c in self.coefficients)


def role_modules(block: nn.Module) -> dict[str, tuple[str, int]]:
    """Each role's linear layer in a block (its path) and the index of the role's rows in it (0 where the layer is
    the role's alone): the query, key and value rows of the fused projection, the output, up, gate and down."""
    paths = {"o": ("attn", "out"), "up": ("ffn", "up"), "gate": ("ffn", "gate"), "down": ("ffn", "down")}
    roles = {role: ("attn.qkv.proj", index) for index, role in enumerate("qkv")}
    return roles | {
        role: (".".join(path), 0)
        for role, path in paths.items()
        if getattr(getattr(block, path[0]), path[1]) is not None
    }  # a plain FFN has no gate


def role_rows(block: nn.Module, path: str) -> list[int]:
    """The rows of each role in the linear layer at `path`: the query, key and value widths of the fused one."""
    if path == "attn.qkv.proj":
        return [weight.size(0) for weight, _ in block.attn.qkv.role_weights().values()]
    return [block.get_submodule(path).out_features]


class BasisSharing(LayerSharing):
    name = "basis"
    ratio_range = (0.0, 1.0)
    default_ratio = 0.2
    ratio_meaning = "the share of each projection's parameters removed, rank ⌊(1 − r)·n·d_in·d_out / (d_in + n·d_out)⌋"
    composes_with = ("none", "gqa", "mqa")
    composes_why = "compresses plain query/key/value projections"

    def __init__(self, ratio: float | None = None, group: int = 2, shared: Sequence[str] = PAPER_SHARED) -> None:
        super().__init__(ratio)
        if group < 1:
            raise ConfigError(f"layers=basis: group={group} must be a whole number of layers of at least 1")
        if unknown := sorted(set(shared) - set(ROLES)):
            raise ConfigError(f"layers=basis: shared names unknown roles {unknown}; valid: {', '.join(ROLES)}")
        self.group, self.shared = group, tuple(shared)

    def check(self, n_layers: int) -> None:
        if self.group > n_layers:
            raise ConfigError(f"layers=basis: group={self.group} is more than the model's {n_layers} layers; "
                              f"choose a group from 1 to {n_layers}")  # fmt: skip

    def groups(self, n_layers: int) -> list[list[int]]:
        """Consecutive groups of `group` layers, the last one shorter where `group` does not divide L."""
        return [list(range(start, min(start + self.group, n_layers))) for start in range(0, n_layers, self.group)]

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        blocks = [make_block() for _ in range(n_layers)]
        located = role_modules(blocks[0])  # read once: the loop below replaces the layers it names
        for path in dict.fromkeys(path for path, _ in located.values()):
            roles = [role for role, (at, _) in located.items() if at == path]
            rows = role_rows(blocks[0], path)
            d_in = blocks[0].get_submodule(path).in_features
            for members in self.groups(n_layers):
                shared = {role: Basis(rank_for(self.ratio, len(members), d_in, count), d_in)
                          for role, count in zip(roles, rows, strict=True) if role in self.shared}  # fmt: skip
                for layer in members:
                    own = [shared[role] if role in shared else Basis(rank_for(self.ratio, 1, d_in, count), d_in)
                           for role, count in zip(roles, rows, strict=True)]  # fmt: skip
                    blocks[layer].set_submodule(path, BasisLinear(own, rows, blocks[layer].get_submodule(path).bias))
        return blocks

    def describe(self) -> dict:
        return {**super().describe(), "group": self.group, "shared": list(self.shared)}
