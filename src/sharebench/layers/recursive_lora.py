"""Relaxed recursive transformers (Bae et al. 2024): cycle sharing of M blocks over L layers, plus a rank-R LoRA
per layer on every shared weight matrix. Vectors (biases, layer norms, scales) stay per layer: they are a tiny
share of the parameters, and with them a model converted from a checkpoint at full rank is the original model.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.layers.base import AssignedSets, BlockFactory, cycle


class LoRALinear(nn.Linear):
    """A linear layer whose weight is another layer's (shared) plus its own low-rank update B·A."""

    def __init__(self, shared: nn.Linear, rank: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = shared.in_features, shared.out_features
        self.weight = shared.weight
        self.bias = nn.Parameter(shared.bias.detach().clone()) if shared.bias is not None else None
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank))  # starts as the shared weight itself
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b)

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.lora_b @ self.lora_a

    def macs(self) -> int:
        return self.in_features * self.out_features + self.lora_a.numel() + self.lora_b.numel()


def relaxed(module: nn.Module, rank: int) -> nn.Module:
    """A copy of `module` for one layer: its linear weights shared (with a LoRA each), every other parameter own."""
    if isinstance(module, nn.Linear):
        return LoRALinear(module, rank)
    clone = copy.deepcopy(module)  # every parameter its own; then each linear layer the original's, with a LoRA
    for name, child in module.named_modules(remove_duplicate=False):
        if name and isinstance(child, nn.Linear):
            clone.set_submodule(name, LoRALinear(child, rank))
    return clone


class RecursiveLoRA(AssignedSets):
    name = "recursive_lora"
    ratio_meaning = "1 − M/L with M unique layers (cycle order); M must divide L"

    def __init__(self, ratio: float | None = None, rank: int = 8) -> None:
        super().__init__(ratio)
        self.rank = rank

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return cycle(n_layers, sets)

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        sets = self.layer_sets(n_layers)
        shared = [make_block() for _ in range(max(sets) + 1)]
        return [relaxed(shared[s], self.rank) for s in sets]

    def describe(self) -> dict:
        return {**super().describe(), "rank": self.rank}
