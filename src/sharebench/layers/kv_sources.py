"""Cross-layer KV sharing by a map: `sources[i]` is the layer whose keys and values layer i attends over, itself
or an earlier layer that computes its own. One map expresses the cross-layer KV methods that read earlier layers:
CLA (Brandon et al. 2024; `layers=cla` is the map [0, 0, 2, 2, …]), YOCO's cross-decoder (Sun et al. 2024; `yoco`)
and MLKV's groups of layers sharing one set of key/value heads (Zuhri et al. 2024, [0, 0, 0, 3, 3, 3]). A layer
that reads another's keys and values has no key/value projection and no cache of its own.

LCKV (Wu & Tu 2024) pairs every layer with the top layer's keys and values, a later layer; training it needs the
paper's iterative computation, which the suite does not implement, so a map that reads a later layer is refused."""

from __future__ import annotations

from typing import Any

from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, blocks_for_sources


class KVSources(LayerSharing):
    name = "kv_sources"

    def __init__(self, ratio: float | None = None, sources: list[int] | None = None) -> None:
        """`sources`: one entry per layer; None: pairs of layers, [0, 0, 2, 2, …] (CLA's map with k = 2)."""
        super().__init__(ratio)
        if sources is not None and (
            not sources or not all(isinstance(source, int) and not isinstance(source, bool) for source in sources)
        ):
            raise ConfigError(f"layers=kv_sources: layers.sources must list, for every layer, the layer whose keys "
                              f"and values it uses (e.g. [0,0,2,2]), or be null (pairs); got {sources}")  # fmt: skip
        self.sources = None if sources is None else list(sources)

    def map(self, n_layers: int) -> list[int]:
        return self.sources if self.sources is not None else [layer - layer % 2 for layer in range(n_layers)]

    def check(self, n_layers: int) -> None:
        sources = self.map(n_layers)
        if len(sources) != n_layers:
            raise ConfigError(f"layers=kv_sources: layers.sources={self.sources} names {len(self.sources)} layers; "
                              f"the model has {n_layers}")  # fmt: skip
        for layer, source in enumerate(sources):
            if source > layer or source < 0:
                raise ConfigError(
                    f"layers=kv_sources: layer {layer} takes keys and values from layer {source}; a layer reads "
                    f"itself or an earlier layer (0 … {layer}): reading a later one (LCKV) needs an iterative "
                    f"training the suite does not implement"
                )
            if sources[source] != source:
                raise ConfigError(f"layers=kv_sources: layer {layer} takes keys and values from layer {source}, "
                                  f"which computes none of its own (it reads layer {sources[source]}); name "
                                  f"{sources[source]}")  # fmt: skip

    def kv_sources(self, n_layers: int) -> list[int]:
        self.check(n_layers)
        return self.map(n_layers)

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return blocks_for_sources(self.kv_sources(n_layers), make_block)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sources": self.sources}
