"""ALBERT-style sharing (Lan et al. 2020): M unique parameter sets over the L layers, each serving L/M
consecutive layers (M = 1 is ALBERT). `all` shares whole blocks, `attn` only the attention, `ffn` only the FFN;
the parts not shared, and the layer norms of `attn`/`ffn`, stay per layer."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from sharebench.layers.base import AssignedSets, BlockFactory, sequence


class AllLayers(AssignedSets):
    name = "all"

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return sequence(n_layers, sets)


class SharedPart(AssignedSets):
    part: ClassVar[str] = ""

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return sequence(n_layers, sets)

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        blocks = [make_block() for _ in range(n_layers)]
        owners: dict[int, nn.Module] = {}
        for block, unique_set in zip(blocks, self.layer_sets(n_layers), strict=True):
            owner = owners.setdefault(unique_set, block)
            setattr(block, self.part, getattr(owner, self.part))
        return blocks


class AttentionLayers(SharedPart):
    name = "attn"
    part = "attn"


class FeedForwardLayers(SharedPart):
    name = "ffn"
    part = "ffn"
