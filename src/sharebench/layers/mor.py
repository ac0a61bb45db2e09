"""Mixture-of-Recursions (Bae et al. 2025, code `raymin0223/mixture_of_recursions`): a prelude of unique layers, one
recursion block of unique layers applied up to N_r times, a coda of unique layers ("Middle-Cycle" sharing), and
a small router that decides per token how many of the N_r recursions it takes.

- **Expert-choice** (`router: expert`): before each recursion r ≥ 2 a linear router scores the tokens that took
  recursion r − 1; in training the top `capacity[r]` share of each sequence's tokens goes on (hierarchical
  filtering), and a binary cross-entropy on the router's logits, with the chosen tokens as targets, teaches the
  router to make that choice alone. Top-k over a sequence looks at later tokens, so in evaluation and decoding a
  token goes on where its router's sigmoid exceeds ½, as the paper's auxiliary-loss variant does.
- **Token-choice** (`router: token`): one router with N_r outputs assigns each token its number of recursions
  (the argmax of a softmax) before the first; a Switch-style balancing loss, N_r · Σᵢ fᵢ·Pᵢ, keeps the depths used.

A chosen token's state moves by the recursion's update times the router's weight g (sigmoid of its score;
token-choice: the softmax weight of its depth, at its last recursion): h ← h + g·(f(h) − h), the paper's
H^{r+1} = g·f(H^r) + H^r with f the block's residual branch (the official code adds g times the block's whole
output). The first recursion takes every token: token-choice gives every token at least one, and the KV-sharing
variant reuses its keys and values.

KV policy (`kv`): `recursion` (recursion-wise caching) attends, at each recursion, over the tokens that took it,
and caches only theirs; `shared` (recursive KV sharing) reuses the first recursion's keys and values of every
token at the later ones, which cache nothing. Decoder-only, as in the paper: a token's depth is decided from what
precedes it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, cycle

ROUTERS = ("expert", "token")
KV_POLICIES = ("recursion", "shared")


class MixtureOfRecursions(LayerSharing):
    name = "mor"
    decoder_only = True
    decoder_why = "routes each token by what precedes it"

    def __init__(
        self,
        ratio: float | None = None,
        recursions: int = 3,
        router: str = "expert",
        kv: str = "recursion",
        capacity: list[float] | None = None,
        router_loss: float = 0.01,
        prelude: int = 1,
        coda: int = 1,
    ) -> None:
        """`capacity`: the share of each sequence's tokens that recursions 2 … N_r take (expert-choice);
        None: (N_r − r + 1)/N_r, i.e. 2/3 and 1/3 for three recursions. `router_loss`: the weight of the
        router's auxiliary loss (expert-choice: its cross-entropy; token-choice: its balancing loss)."""
        super().__init__(ratio)
        if not isinstance(recursions, int) or recursions < 2:
            raise ConfigError(f"layers=mor: layers.recursions={recursions} must be 2 or more")
        if router not in ROUTERS:
            raise ConfigError(f"layers=mor: unknown layers.router={router!r}; valid choices: {', '.join(ROUTERS)}")
        if kv not in KV_POLICIES:
            raise ConfigError(f"layers=mor: unknown layers.kv={kv!r}; valid choices: {', '.join(KV_POLICIES)}")
        if not router_loss > 0:
            raise ConfigError(f"layers=mor: layers.router_loss={router_loss} must be above 0: a router trained "
                              f"without its auxiliary loss is not the paper's")  # fmt: skip
        if min(prelude, coda) < 0:
            raise ConfigError(f"layers=mor: prelude={prelude} and coda={coda} must be 0 or more layers")
        linear = [(recursions - r) / recursions for r in range(1, recursions)]
        capacity = linear if capacity is None else list(capacity)
        if router == "token" and capacity != linear:
            raise ConfigError("layers=mor: layers.capacity schedules expert-choice routing; token-choice routing "
                              "picks each token's depth itself: leave it null")  # fmt: skip
        if (
            len(capacity) != recursions - 1
            or not all(0 < c <= 1 for c in capacity)
            or capacity != sorted(capacity, reverse=True)
        ):
            raise ConfigError(f"layers=mor: layers.capacity={capacity} must give recursions 2 … {recursions} each a "
                              f"share of the tokens in (0, 1], not increasing ({recursions - 1} values)")  # fmt: skip
        self.recursions, self.router, self.kv, self.capacity = recursions, router, kv, capacity
        self.router_loss, self.prelude, self.coda = router_loss, prelude, coda

    def core(self, n_layers: int) -> int:
        """The recursion block's layers: the layers between prelude and coda, over N_r recursions."""
        looped = n_layers - self.prelude - self.coda
        if looped < self.recursions or looped % self.recursions:
            valid = [r for r in range(2, looped + 1) if looped % r == 0]
            raise ConfigError(f"layers=mor: {self.recursions} recursions cannot split the {looped} layers between a "
                              f"prelude of {self.prelude} and a coda of {self.coda} (of {n_layers}); valid "
                              f"layers.recursions: {', '.join(map(str, valid)) or 'none: too few layers'}")  # fmt: skip
        return looped // self.recursions

    def check(self, n_layers: int) -> None:
        self.core(n_layers)

    def recursion_starts(self, n_layers: int) -> list[int]:
        """The first layer of each recursion."""
        return [self.prelude + r * self.core(n_layers) for r in range(self.recursions)]

    def build(self, n_layers: int, make_block: BlockFactory) -> list[nn.Module]:
        core = self.core(n_layers)
        prelude, block, coda = ([make_block() for _ in range(count)] for count in (self.prelude, core, self.coda))
        return [*prelude, *(block[s] for s in cycle(core * self.recursions, core)), *coda]

    def kv_sources(self, n_layers: int) -> list[int]:
        """Recursive KV sharing: each later recursion's layer attends over the first recursion's keys and values."""
        core, first = self.core(n_layers), self.prelude
        if self.kv == "recursion":
            return list(range(n_layers))
        last = first + core * self.recursions
        return [first + (layer - first) % core if first <= layer < last else layer for layer in range(n_layers)]

    def token_shares(self, n_layers: int) -> list[float]:
        """The share of the tokens each layer computes: the capacity of its recursion (token-choice, balanced:
        the same, since a token assigned depth i takes recursions 1 … i)."""
        return shares_by_layer(n_layers, self.recursion_starts(n_layers), self.core(n_layers), [1.0, *self.capacity])

    def router_module(self, dim: int, n_layers: int) -> DepthRouter:
        return DepthRouter(self, dim, n_layers)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "recursions": self.recursions, "router": self.router, "kv": self.kv,
                "capacity": self.capacity, "router_loss": self.router_loss, "prelude": self.prelude,
                "coda": self.coda}  # fmt: skip


class DepthRouter(nn.Module):
    """The routers of a Mixture-of-Recursions model: which tokens take each recursion, and with what weight.
    `begin` starts a forward pass; `route(r, h)` gives recursion r's tokens; `loss` is the auxiliary loss the
    pass has added up (training only); `tally` counts the tokens that reached each recursion, in evaluation
    (row 0) and in training (row 1)."""

    component = "routers"

    def __init__(self, scheme: MixtureOfRecursions, dim: int, n_layers: int) -> None:
        super().__init__()
        self.kind, self.capacity, self.weight = scheme.router, scheme.capacity, scheme.router_loss
        self.recursions, self.core = scheme.recursions, scheme.core(n_layers)
        self.starts, self.n_layers = scheme.recursion_starts(n_layers), n_layers
        outputs = 1 if self.kind == "expert" else self.recursions
        routers = self.recursions - 1 if self.kind == "expert" else 1
        self.scores = nn.ModuleList(nn.Linear(dim, outputs) for _ in range(routers))
        self.register_buffer("tally", torch.zeros(2, self.recursions, dtype=torch.float64), persistent=False)
        self.loss: torch.Tensor | None = None
        self.depth: torch.Tensor | None = None
        self.depth_weight: torch.Tensor | None = None

    def recursion_at(self, layer: int) -> int | None:
        """The recursion that starts at `layer`, or None."""
        return self.starts.index(layer) if layer in self.starts else None

    def begin(self) -> None:
        self.loss, self.depth, self.depth_weight = None, None, None

    def route(self, recursion: int, h: torch.Tensor, taken: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens (batch, tokens) that take `recursion` (0-based) and each one's weight, given the state `h`
        entering it and the tokens that took the one before (`taken`; None for the first)."""
        if self.kind == "token":
            chosen, weight = self._token_choice(recursion, h)
        elif recursion == 0:
            chosen, weight = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device), h.new_ones(h.shape[:2])
        else:
            chosen, weight = self._expert_choice(recursion, h, taken)
        with torch.no_grad():
            self.tally[int(self.training), recursion] += chosen.sum()
        return chosen, weight

    def _expert_choice(self, recursion: int, h: torch.Tensor, taken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.scores[recursion - 1](h).squeeze(-1)
        if not self.training:
            return taken & (logits > 0), torch.sigmoid(logits)
        k = max(1, int(self.capacity[recursion - 1] * h.size(1)))
        top = logits.masked_fill(~taken, float("-inf")).topk(k, dim=1).indices
        chosen = torch.zeros_like(taken).scatter(1, top, True) & taken
        cross_entropy = F.binary_cross_entropy_with_logits(logits[taken], chosen[taken].to(logits.dtype))
        self._add_loss(cross_entropy)
        return chosen, torch.sigmoid(logits)

    def _token_choice(self, recursion: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if recursion == 0:
            probabilities = self.scores[0](h).softmax(-1)
            weight, depth = probabilities.max(-1)
            self.depth, self.depth_weight = depth, weight
            if self.training:  # Switch's balancing loss: N · Σ (share of tokens at depth i) · (mean probability)
                shares = F.one_hot(depth, self.recursions).to(h.dtype).mean((0, 1))
                self._add_loss(self.recursions * (shares * probabilities.mean((0, 1))).sum())
        assert self.depth is not None and self.depth_weight is not None
        chosen = self.depth >= recursion
        last = self.depth == recursion
        return chosen, torch.where(last, self.depth_weight, torch.ones_like(self.depth_weight))

    def _add_loss(self, loss: torch.Tensor) -> None:
        weighted = self.weight * loss
        self.loss = weighted if self.loss is None else self.loss + weighted

    def shares(self, training: bool) -> list[float]:
        """The share of the tokens counted so far (in training, or in evaluation) that took each recursion."""
        tally = self.tally[int(training)]
        return [float(count / tally[0]) if tally[0] else 0.0 for count in tally]

    def layer_shares(self, shares: list[float]) -> list[float]:
        """The share of the tokens each layer computed, from the share that took each recursion."""
        return shares_by_layer(self.n_layers, self.starts, self.core, shares)


def shares_by_layer(n_layers: int, starts: list[int], core: int, shares: list[float]) -> list[float]:
    """Each layer's share of the tokens: 1 outside the recursions, the recursion's share inside."""
    by_layer = [1.0] * n_layers
    for start, share in zip(starts, shares, strict=True):
        by_layer[start : start + core] = [share] * core
    return by_layer
