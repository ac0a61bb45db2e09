"""Cross-layer attention (Brandon et al. 2024): only every k-th layer computes keys and values; the k − 1 layers
after it attend over those (and have no key/value projections). The share ratio is r = 1 − 1/k."""

from __future__ import annotations

from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, blocks_for_sources
from sharebench.sharing.base import format_ratio


class CrossLayerAttention(LayerSharing):
    name = "cla"
    ratio_range = (0.0, 1.0)
    default_ratio = 0.5
    ratio_meaning = "1 − 1/k: each layer that computes keys and values serves k layers"

    def sharing_factor(self, n_layers: int) -> int:
        factor = 1 / (1 - self.ratio) if self.ratio < 1 else float("inf")
        if abs(factor - round(factor)) > 1e-6 or round(factor) > n_layers:
            valid = ", ".join(format_ratio(1 - 1 / k) for k in range(1, n_layers + 1))
            raise ConfigError(
                f"layers=cla: layers.ratio={self.ratio} gives k = {factor:.3g} layers per key/value layer, which "
                f"is not a whole number up to {n_layers}; valid ratios for {n_layers} layers: {valid}"
            )
        return round(factor)

    def check(self, n_layers: int) -> None:
        self.sharing_factor(n_layers)

    def kv_sources(self, n_layers: int) -> list[int]:
        factor = self.sharing_factor(n_layers)
        return [layer - layer % factor for layer in range(n_layers)]

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return blocks_for_sources(self.kv_sources(n_layers), make_block)
