"""ALBERT (Lan et al. 2020): `all` runs one block in every layer. `attn` and `ffn` share only the attention or
only the FFN, over M unique sets of consecutive layers (M = 1 as in ALBERT's ablations); the parts not shared and
the layer norms stay per layer. Whole blocks over M > 1 sets are Takase & Kiyono's `sequence`."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from sharebench.layers.base import AssignedSets, BlockFactory, LayerSharing, sequence


class AllLayers(LayerSharing):
    name = "all"

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return [make_block()] * n_layers


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
