"""Symmetric attention (Courtois et al. 2024): Q = K = X W_QK, so the score matrix is symmetric."""

from sharebench.sharing.columns import ColumnSharing


class Symmetric(ColumnSharing):
    name = "symmetric"
    fixed_ratio = 1.0
    shared_roles = ("q", "k")
