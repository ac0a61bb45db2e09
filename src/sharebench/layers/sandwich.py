"""Sandwich-style sharing (Reid et al. 2021, Subformer): the first and last layers are unique, every layer
between them uses one shared block."""

from __future__ import annotations

from torch import nn

from sharebench.layers.base import BlockFactory, LayerSharing


class Sandwich(LayerSharing):
    name = "sandwich"

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        if n_layers <= 2:
            return [make_block() for _ in range(n_layers)]
        middle = make_block()
        return [make_block(), *[middle] * (n_layers - 2), make_block()]
