"""One wide FFN shared by all layers (Pires et al. 2023): every layer keeps its attention, and the single FFN is
widened so that the model keeps about the parameter count of one FFN per layer."""

from __future__ import annotations

from torch import nn

from sharebench.layers.base import BlockFactory, LayerSharing


def wide_ffn_dim(n_layers: int, dim: int, ffn_dim: int, bias: bool) -> int:
    """F' with D·F'·2 (+ F' + D biases) closest to L times one FFN's parameters."""
    per_unit = 2 * dim + (1 if bias else 0)
    fixed = dim if bias else 0
    return round((n_layers * (per_unit * ffn_dim + fixed) - fixed) / per_unit)


class WideSharedFFN(LayerSharing):
    name = "ffn_wide"

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        first = make_block()
        up = first.ffn.up
        wide = make_block(ffn_dim=wide_ffn_dim(n_layers, up.in_features, up.out_features, up.bias is not None))
        blocks = [first, *(make_block() for _ in range(n_layers - 1))]
        for block in blocks:
            block.ffn = wide.ffn
        return blocks
