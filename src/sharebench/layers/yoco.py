"""You Only Cache Once (Sun et al. 2024): the lower half of the layers (the self-decoder) keep their own keys and
values; the first layer of the upper half (the cross-decoder) computes one global set of keys and values from the
self-decoder's output, and every later layer attends over it. The KV cache holds L/2 + 1 layers' worth.

YOCO's self-decoder uses efficient attention (sliding windows or gated retention) whose cache does not grow with
the context; here it is the model's own attention, so only the cross-decoder's saving is measured."""

from __future__ import annotations

from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, blocks_for_sources


class YouOnlyCacheOnce(LayerSharing):
    name = "yoco"

    def check(self, n_layers: int) -> None:
        if n_layers < 2:
            raise ConfigError(f"layers=yoco splits the layers into a self- and a cross-decoder: {n_layers} layer is "
                              f"too few; use 2 or more")  # fmt: skip

    def kv_sources(self, n_layers: int) -> list[int]:
        self.check(n_layers)
        cross = n_layers // 2  # the first cross-decoder layer: the global keys and values
        return [cross if layer > cross else layer for layer in range(n_layers)]

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return blocks_for_sources(self.kv_sources(n_layers), make_block)
