"""The contract of a cross-layer scheme: from the number of layers and a block factory to the list of blocks.

The list may hold the same module several times: a shared block exists once as a tensor, and parameter
accounting (`LanguageModel.parameter_counts`) counts it once as stored and once per use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from sharebench.errors import ConfigError
from sharebench.sharing.base import checked_ratio, format_ratio, whole_count

BlockFactory = Callable[..., nn.Module]  # Block(cfg, sharing) with cfg and sharing bound; options reuse_kv, ffn_dim


class LayerSharing:
    """Base class of the cross-layer schemes. `ratio_range` as for the within-layer schemes; the ratio is
    `layers.ratio` in the config (the top-level `ratio` belongs to the within-layer scheme)."""

    name: ClassVar[str] = ""
    ratio_range: ClassVar[tuple[float, float] | None] = None
    default_ratio: ClassVar[float | None] = None
    fixed_ratio: ClassVar[float | None] = None
    ratio_meaning: ClassVar[str] = ""
    # The within-layer schemes it composes with (None: every one), and why it takes no other.
    composes_with: ClassVar[tuple[str, ...] | None] = None
    composes_why: ClassVar[str] = ""
    # Whether it needs a decoder (a causal model): an encoder (arch=bert) is refused, for the reason given.
    decoder_only: ClassVar[bool] = False
    decoder_why: ClassVar[str] = ""

    def __init__(self, ratio: float | None = None) -> None:
        if self.ratio_range is None and ratio is not None:
            raise ConfigError(f"layers={self.name} takes no ratio (got layers.ratio={ratio}); leave it unset")
        self.ratio = checked_ratio(f"layers={self.name}", "layers.ratio", ratio, self)

    def check(self, n_layers: int) -> None:
        """Raise a ConfigError naming the valid choices if the scheme cannot share `n_layers` layers."""

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        raise NotImplementedError

    def kv_sources(self, n_layers: int) -> list[int]:
        """The layer whose keys and values each layer attends over: itself, or an earlier layer that computes its
        own (cross-layer KV sharing: `cla`, `yoco`, `kv_sources`), whose projections and cache it then lacks."""
        return list(range(n_layers))

    def needs_decoder(self, n_layers: int) -> bool:
        """Whether the scheme, as configured for `n_layers`, refuses encoders (a map that reads later layers)."""
        return self.decoder_only

    def kv_passes(self) -> tuple[int, int]:
        """For a map that reads later layers: the passes without and with gradients that compute it (LCKV)."""
        return 0, 1

    def training_passes(self, n_layers: int) -> list[float]:
        """How many training passes (forward and backward) each layer runs per step: above 1 where layers are
        computed in passes (LCKV)."""
        return [1.0] * n_layers

    def token_shares(self, n_layers: int) -> list[float]:
        """The share of the tokens each layer computes (below 1 where a router lets tokens skip layers)."""
        return [1.0] * n_layers

    def router_module(self, dim: int, n_layers: int) -> nn.Module | None:
        """The module that routes tokens past layers (`sharebench.layers.mor.DepthRouter`), or None."""
        return None

    def relooped(self, blocks: list[nn.Module], loops: int) -> list[nn.Module]:
        """The built `blocks` with a looped core run `loops` times (recurrent depth, at inference)."""
        raise ConfigError(f"layers={self.name} has no looped core; the number of loops is set for "
                          f"layers=recurrent_depth")  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "ratio": self.ratio}


def blocks_for_sources(sources: list[int], make_block: BlockFactory) -> list[nn.Module]:
    """One block per layer; a layer whose keys and values come from another layer projects only its queries."""
    return [make_block(reuse_kv=source != layer) for layer, source in enumerate(sources)]


class Unshared(LayerSharing):
    """Every layer has its own block."""

    name = "none"

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        return [make_block() for _ in range(n_layers)]


def unique_sets(scheme: str, ratio: float, n_layers: int) -> int:
    """M = L·(1 − r) unique parameter sets; M must be a whole number dividing L."""
    sets = n_layers * (1 - ratio)
    if not whole_count(sets) or round(sets) < 1 or n_layers % round(sets):
        valid = ", ".join(format_ratio(1 - m / n_layers) for m in range(1, n_layers + 1) if n_layers % m == 0)
        raise ConfigError(
            f"layers={scheme}: layers.ratio={ratio} gives M = {sets:.3g} unique layers, which does not divide "
            f"{n_layers} layers; valid ratios for {n_layers} layers: {valid}"
        )
    return round(sets)


class AssignedSets(LayerSharing):
    """M = L·(1 − r) unique blocks, each used by L/M layers in the order `assignment` gives."""

    ratio_range = (0.0, 1.0)
    default_ratio = 0.5
    ratio_meaning = "1 − M/L with M unique layers; M must divide L"

    def check(self, n_layers: int) -> None:
        unique_sets(self.name, self.ratio, n_layers)

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        raise NotImplementedError

    def layer_sets(self, n_layers: int) -> list[int]:
        return self.assignment(n_layers, unique_sets(self.name, self.ratio, n_layers))

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        sets = self.layer_sets(n_layers)
        blocks = [make_block() for _ in range(max(sets) + 1)]
        return [blocks[s] for s in sets]


def sequence(n_layers: int, sets: int) -> list[int]:
    """1,1,2,2,3,3: each set serves L/M consecutive layers."""
    return [layer * sets // n_layers for layer in range(n_layers)]


def cycle(n_layers: int, sets: int) -> list[int]:
    """1,2,3,1,2,3."""
    return [layer % sets for layer in range(n_layers)]
