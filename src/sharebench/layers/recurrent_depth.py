"""Recurrent depth as Huginn applies it (Geiping et al. 2025): a prelude of unique layers, a core of `core` unique
blocks looped in cycle order over the layers between, and a coda of unique layers: prelude + core + coda blocks
stored for L layers.

Huginn also feeds the prelude's output into every loop of the core through an adapter, starts the core from a
random state and draws the number of loops per step in training; this scheme is the sharing pattern alone, at a
fixed number of loops in training (the layers the core fills); at inference the core may loop more or fewer times
(`relooped`, `sharebench generate --loops`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, cycle


class RecurrentDepth(LayerSharing):
    name = "recurrent_depth"

    def __init__(self, ratio: float | None = None, prelude: int = 1, core: int = 1, coda: int = 1) -> None:
        super().__init__(ratio)
        if min(prelude, coda) < 0 or core < 1:
            raise ConfigError(f"layers=recurrent_depth: prelude={prelude} and coda={coda} must be 0 or more layers, "
                              f"core={core} 1 or more blocks")  # fmt: skip
        self.prelude, self.core, self.coda = prelude, core, coda

    def check(self, n_layers: int) -> None:
        looped = n_layers - self.prelude - self.coda
        if looped < self.core or looped % self.core:
            valid = ", ".join(str(r) for r in range(1, looped + 1) if looped % r == 0) or "none: too few layers"
            raise ConfigError(f"layers=recurrent_depth: a core of {self.core} blocks cannot loop over the {looped} "
                              f"layers between a prelude of {self.prelude} and a coda of {self.coda} (of {n_layers}); "
                              f"valid layers.core: {valid}")  # fmt: skip

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        self.check(n_layers)
        prelude, core, coda = ([make_block() for _ in range(count)] for count in (self.prelude, self.core, self.coda))
        return [*prelude, *(core[s] for s in cycle(n_layers - self.prelude - self.coda, self.core)), *coda]

    def relooped(self, blocks: list[nn.Module], loops: int) -> list[nn.Module]:
        if not isinstance(loops, int) or loops < 1:
            raise ConfigError(f"layers=recurrent_depth: the core loops 1 or more times; got {loops}")
        prelude, core = blocks[: self.prelude], blocks[self.prelude : self.prelude + self.core]
        coda = blocks[len(blocks) - self.coda :] if self.coda else []
        return [*prelude, *(core * loops), *coda]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prelude": self.prelude, "core": self.core, "coda": self.coda}
