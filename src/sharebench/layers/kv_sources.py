"""Cross-layer KV sharing by a map: `sources[i]` is the layer whose keys and values layer i attends over, itself or
another layer that computes its own. One map expresses the cross-layer KV methods: CLA (Brandon et al. 2024;
`layers=cla` is the map [0, 0, 2, 2, …]), YOCO's cross-decoder (Sun et al. 2024; `yoco`), MLKV's groups of layers
sharing one set of key/value heads (Zuhri et al. 2024, [0, 0, 0, 3, 3, 3]) and LCKV (Wu & Tu 2024; `lckv`), whose
layers attend over a later layer's keys and values, [0, 6, 6, 6, 6, 6, 6, 7]. A layer that reads another's keys
and values has no key/value projection and no cache of its own.

A layer that reads a later layer attends over that layer's keys and values of the earlier tokens only (a token's
own are not computed yet when it reaches the layer). Training computes them as LCKV's code does, in passes over
the layers between the first such reader and the last layer read: `forward_passes` passes without gradients, each
reading the keys and values of the pass before (zeros in the first), then `backward_passes` with them. After
n passes the first n tokens are exact, so a sequence of at most `forward_passes + backward_passes` tokens (and so
decoding, a token at a time over the cache) computes exactly what a token-by-token model computes. It needs a
decoder."""

from __future__ import annotations

from typing import Any

from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, blocks_for_sources


class KVSources(LayerSharing):
    name = "kv_sources"
    decoder_why = "has layers that read a later layer's keys and values of the earlier tokens (LCKV)"

    def __init__(
        self,
        ratio: float | None = None,
        sources: list[int] | None = None,
        forward_passes: int = 7,
        backward_passes: int = 2,
    ) -> None:
        """`sources`: one entry per layer; None: pairs of layers, [0, 0, 2, 2, …] (CLA's map with k = 2).
        `forward_passes` and `backward_passes`: LCKV's m and b, for a map that reads later layers."""
        super().__init__(ratio)
        if sources is not None and (
            not sources or not all(isinstance(source, int) and not isinstance(source, bool) for source in sources)
        ):
            raise ConfigError(f"layers={self.name}: layers.sources must list, for every layer, the layer whose keys "
                              f"and values it uses (e.g. [0,0,2,2]), or be null (pairs); got {sources}")  # fmt: skip
        if not (isinstance(forward_passes, int) and forward_passes >= 0) or not (
            isinstance(backward_passes, int) and backward_passes >= 1
        ):
            raise ConfigError(f"layers={self.name}: layers.forward_passes={forward_passes} must be 0 or more and "
                              f"layers.backward_passes={backward_passes} 1 or more")  # fmt: skip
        self.sources = None if sources is None else list(sources)
        self.forward_passes, self.backward_passes = forward_passes, backward_passes

    def map(self, n_layers: int) -> list[int]:
        return self.sources if self.sources is not None else [layer - layer % 2 for layer in range(n_layers)]

    def check(self, n_layers: int) -> None:
        sources = self.map(n_layers)
        if len(sources) != n_layers:
            raise ConfigError(f"layers={self.name}: layers.sources={sources} names {len(sources)} layers; the model "
                              f"has {n_layers}")  # fmt: skip
        for layer, source in enumerate(sources):
            if not 0 <= source < n_layers:
                raise ConfigError(f"layers={self.name}: layer {layer} takes keys and values from layer {source}; "
                                  f"the layers are 0 … {n_layers - 1}")  # fmt: skip
            if sources[source] != source:
                raise ConfigError(f"layers={self.name}: layer {layer} takes keys and values from layer {source}, "
                                  f"which computes none of its own (it reads layer {sources[source]}); name "
                                  f"{sources[source]}")  # fmt: skip

    def needs_decoder(self, n_layers: int) -> bool:
        return later_span(self.map(n_layers)) is not None

    def kv_sources(self, n_layers: int) -> list[int]:
        self.check(n_layers)
        return self.map(n_layers)

    def kv_passes(self) -> tuple[int, int]:
        return self.forward_passes, self.backward_passes

    def training_passes(self, n_layers: int) -> list[float]:
        """The layers between the first that reads a later layer and the last layer read run `forward_passes`
        forward passes and `backward_passes` training passes (a forward pass is a third of a training pass)."""
        span = later_span(self.kv_sources(n_layers))
        passes = [1.0] * n_layers
        if span is not None:
            passes[span[0] : span[1]] = [self.forward_passes / 3 + self.backward_passes] * (span[1] - span[0])
        return passes

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return blocks_for_sources(self.kv_sources(n_layers), make_block)

    def describe(self) -> dict[str, Any]:
        """The map, with the passes where it reads a later layer (they matter only then)."""
        passes = {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes}
        reads_later = self.sources is not None and later_span(self.sources) is not None
        return {**super().describe(), "sources": self.sources, **(passes if reads_later else {})}


def later_span(sources: list[int]) -> tuple[int, int] | None:
    """The layers computed in passes: from the first that reads a later layer to the last layer read (inclusive,
    as a range's end), or None where no layer reads a later one."""
    readers = [layer for layer, source in enumerate(sources) if source > layer]
    if not readers:
        return None
    return readers[0], 1 + max(sources[layer] for layer in readers)


class LayerCondensedKV(KVSources):
    """LCKV (Wu & Tu 2024; code `whyNLP/LCKV`): the layers between `warmup` bottom and `warmup` top layers attend
    over the keys and values of the last of them, which alone computes its own; the warm-up layers keep their own.
    With 8 layers and one warm-up layer at each end: [0, 6, 6, 6, 6, 6, 6, 7], the paper's configuration."""

    name = "lckv"
    decoder_only = True

    def __init__(
        self, ratio: float | None = None, warmup: int = 1, forward_passes: int = 7, backward_passes: int = 2
    ) -> None:
        super().__init__(ratio, None, forward_passes, backward_passes)
        if not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"layers=lckv: layers.warmup={warmup} must be 0 or more layers at each end")
        self.warmup = warmup

    def map(self, n_layers: int) -> list[int]:
        top = n_layers - 1 - self.warmup
        if top < self.warmup + 1:
            raise ConfigError(f"layers=lckv: {n_layers} layers leave no layer between {self.warmup} warm-up layers "
                              f"at each end to condense; use 0 … {max(0, (n_layers - 2) // 2)} warm-up layers or "
                              f"more layers")  # fmt: skip
        return [top if self.warmup <= layer < top else layer for layer in range(n_layers)]

    def describe(self) -> dict[str, Any]:
        return {**LayerSharing.describe(self), "warmup": self.warmup, "forward_passes": self.forward_passes,
                "backward_passes": self.backward_passes}  # fmt: skip
