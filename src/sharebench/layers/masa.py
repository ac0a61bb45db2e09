"""MASA, "Share Your Attention" (Zhussip et al., AAAI 2026, arXiv 2508.04581): every layer's W_Q, W_K, W_V and W_O
is a learned linear combination of a dictionary of S matrix atoms of its role, shared by all layers,
W_l = Σ_s c_{l,s} A_s. A layer stores 4·S coefficients; the model stores 4·S atoms for 4·L matrices, so the
ratio is 1 − S/L. Biases and norms stay per layer. A layer's matrices are mixed from the atoms once per forward
pass, then applied as usual, so the FLOPs per token are those of separate projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing
from sharebench.sharing.base import AttentionSharing, format_ratio, whole_count

ROLES = ("q", "k", "v")
INIT_STD = 0.02  # the model's initialisation of a plain weight (model._init_weights), kept by the mixed matrices


class Atoms(nn.Module):
    """S matrix atoms (S, D_out, D_in) of one role."""

    def __init__(self, count: int, rows: int, columns: int, component: str) -> None:
        super().__init__()
        self.component = component
        self.weight = nn.Parameter(torch.randn(count, rows, columns) * INIT_STD)

    def mixed(self, coefficients: torch.Tensor) -> torch.Tensor:
        return torch.einsum("s,src->rc", coefficients, self.weight)


def new_coefficients(*shape: int) -> nn.Parameter:
    """Coefficients ~ N(0, 1/S): a mixed matrix starts with the spread of one atom."""
    return nn.Parameter(torch.randn(*shape) / math.sqrt(shape[-1]))


class AtomQKV(AttentionSharing):
    """A layer's query/key/value projection mixed from the shared atoms of each role."""

    def __init__(self, atoms: nn.ModuleDict, n_heads: int, bias: bool) -> None:
        dim = atoms["q"].weight.size(2)
        super().__init__(dim, n_heads, bias)
        self.atoms = atoms  # the same modules in every layer: stored once
        self.coefficients = new_coefficients(len(ROLES), atoms["q"].weight.size(0))
        self.bias = nn.Parameter(torch.zeros(len(ROLES) * dim)) if bias else None

    def weight(self) -> torch.Tensor:
        return torch.cat([self.atoms[role].mixed(c) for role, c in zip(ROLES, self.coefficients, strict=True)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        projected = F.linear(x, self.weight(), self.bias).view(batch, tokens, 3, self.n_heads, self.head_dim)
        q, k, v = projected.permute(2, 0, 3, 1, 4)
        return q, k, v

    def macs(self) -> int:
        return len(ROLES) * self.dim * self.dim

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        biases = self.bias.chunk(len(ROLES)) if self.bias is not None else (None,) * len(ROLES)
        return dict(zip(ROLES, zip(self.weight().chunk(len(ROLES)), biases, strict=True), strict=True))


class AtomOut(nn.Module):
    """A layer's output projection mixed from the shared output atoms."""

    component = "attention_out"

    def __init__(self, atoms: Atoms, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.atoms = atoms
        self.coefficients = new_coefficients(atoms.weight.size(0))
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self.atoms.mixed(self.coefficients)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, self.weight, self.bias)

    def macs(self) -> int:
        return self.atoms.weight.size(1) * self.atoms.weight.size(2)


class MatrixAtoms(LayerSharing):
    name = "masa"
    ratio_range = (0.0, 1.0)
    default_ratio = 0.5
    ratio_meaning = "1 − S/L with S atoms per projection role shared by the L layers"
    composes_with = ("none",)
    composes_why = "builds every layer's attention projections itself from separate Q/K/V"

    def atoms(self, n_layers: int) -> int:
        count = n_layers * (1 - self.ratio)
        if not whole_count(count) or round(count) < 1:
            valid = ", ".join(format_ratio(1 - s / n_layers) for s in range(1, n_layers + 1))
            raise ConfigError(f"layers=masa: layers.ratio={self.ratio} gives S = {count:.3g} atoms, not a whole number "
                              f"from 1 to {n_layers}; valid ratios for {n_layers} layers: {valid}")  # fmt: skip
        return round(count)

    def check(self, n_layers: int) -> None:
        self.atoms(n_layers)

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        blocks = [make_block() for _ in range(n_layers)]
        count, attention = self.atoms(n_layers), blocks[0].attn
        dim, n_heads, bias = attention.qkv.dim, attention.qkv.n_heads, attention.qkv.proj.bias is not None
        qkv_atoms = nn.ModuleDict({role: Atoms(count, dim, dim, "attention_qkv") for role in ROLES})
        out_atoms = Atoms(count, dim, dim, "attention_out")
        for block in blocks:
            block.attn.qkv = AtomQKV(qkv_atoms, n_heads, bias)
            block.attn.out = AtomOut(out_atoms, block.attn.out.bias)
        return blocks
