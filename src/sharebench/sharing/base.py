"""The contract every within-layer sharing scheme fulfils.

A scheme maps hidden states (batch, tokens, D) to queries (batch, H, tokens, d) and keys and values
(batch, G, tokens, d), where G is the number of key/value heads (G = H except for grouped-query schemes).
Everything after that (scores, softmax, output projection) is common and lives in `sharebench.model.transformer`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from sharebench.errors import ConfigError, RatioNotTaken


def format_ratio(value: float) -> str:
    return f"{value:.4g}"


def whole_count(count: float) -> bool:
    """Whether a count a ratio gives (heads, layers, atoms: n·(1 − r)) is a whole number: to within what a ratio
    written to four decimals leaves (8/9 as 0.8889 still names 1 of 9 heads)."""
    return abs(count - round(count)) <= 1e-3


class AttentionSharing(nn.Module):
    """Base class of the query/key/value projections.

    Subclasses set `ratio_range` to the closed interval of valid share ratios, or leave it None when the
    scheme takes no ratio, and `default_ratio` to the ratio used when the user gives none. A scheme that
    takes no ratio may still stand for a fixed one (`symmetric` is `partial_qk` at 1): `fixed_ratio`.
    """

    name: ClassVar[str] = ""
    component: ClassVar[str] = "attention_qkv"
    ratio_range: ClassVar[tuple[float, float] | None] = None
    default_ratio: ClassVar[float | None] = None
    ratio_meaning: ClassVar[str] = ""
    fixed_ratio: ClassVar[float | None] = None

    def __init__(self, dim: int, n_heads: int, bias: bool) -> None:
        super().__init__()
        self.dim = dim
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.n_kv_heads = n_heads

    @classmethod
    def factory(cls, ratio: float | None, options: Mapping[str, Any]) -> Callable[..., AttentionSharing]:
        """What builds each layer's projections of this scheme as a checkpoint stores it (its name, ratio and
        options): a scheme that takes no ratio is given none (the ratio stored is its fixed one)."""
        return functools.partial(cls, ratio=ratio if cls.ratio_range is not None else None, **options)

    @classmethod
    def resolve_ratio(cls, ratio: float | None, dim: int, n_heads: int) -> float | None:
        """The ratio the scheme will use, or a ConfigError naming the valid choices."""
        if cls.ratio_range is None and ratio is not None:
            raise RatioNotTaken(
                f"sharing={cls.name} takes no ratio (got ratio={ratio}); "
                f"leave ratio unset (ratio=null) or choose a scheme that takes one: {ratio_schemes()}"
            )
        return checked_ratio(f"sharing={cls.name}", "ratio", ratio, cls)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def before_rotation(self) -> None:
        """The model rotates the queries and keys this projection computes (rotary positions): what a scheme
        may do to their products alone (scores), it must now do to them. Nothing to change by default."""

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """The plain projection each role computes, materialised from how the scheme stores it: for "q" a
        (H·d × D) weight and its bias, for "k" and "v" (G·d × D) ones. The reference path of the model
        (`sharebench.model.reference`) computes with these, so tests can check the fast path against them."""
        raise NotImplementedError

    def used_numel(self) -> int:
        """Parameters counted once per use: a block that serves several roles or heads counts once for each."""
        return sum(p.numel() for p in self.parameters())


class RatioSpec(Protocol):
    ratio_range: tuple[float, float] | None
    default_ratio: float | None
    fixed_ratio: float | None
    ratio_meaning: str


def checked_ratio(scheme: str, key: str, ratio: float | None, spec: RatioSpec) -> float | None:
    """`ratio`, or the scheme's default, if it lies in the scheme's range; a ConfigError naming the range if not.
    A scheme without a range stands for its fixed ratio (or none)."""
    if spec.ratio_range is None:
        return spec.fixed_ratio
    if ratio is None:
        ratio = spec.default_ratio
    low, high = spec.ratio_range
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not low <= ratio <= high:
        raise ConfigError(
            f"{scheme}: {key}={ratio} is out of range; valid: "
            f"{format_ratio(low)} <= {key} <= {format_ratio(high)} ({spec.ratio_meaning})"
        )
    return float(ratio)


def linear_weight(linear: nn.Linear) -> torch.Tensor:
    """A linear layer's weight as it computes with it (with its LoRA update where it has one)."""
    return linear.merged_weight() if hasattr(linear, "merged_weight") else linear.weight


def ratio_schemes() -> str:
    from sharebench.sharing import SCHEMES

    return ", ".join(name for name, scheme in sorted(SCHEMES.items()) if scheme.ratio_range is not None)
