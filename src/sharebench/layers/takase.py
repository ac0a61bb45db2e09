"""Sharing whole blocks across layers in the orders of Takase & Kiyono 2021: sequence, cycle and cycle_rev."""

from __future__ import annotations

from sharebench.layers.base import AssignedSets, cycle, sequence


class Sequence(AssignedSets):
    name = "sequence"

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return sequence(n_layers, sets)


class Cycle(AssignedSets):
    name = "cycle"

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return cycle(n_layers, sets)


class CycleRev(AssignedSets):
    """Cycle for the first M·(L/M − 1) layers, then the M sets once more in reverse: 1,2,3,3,2,1."""

    name = "cycle_rev"

    def assignment(self, n_layers: int, sets: int) -> list[int]:
        return cycle(n_layers - sets, sets) + list(reversed(range(sets)))
