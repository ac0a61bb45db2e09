"""Symmetric attention with a pairwise coefficient (Courtois et al. 2024).

Q = X W_QK and K = Q ⊙ c with a learnable c ∈ R^d per head (initialised to 1), so scores are X W diag(c) Wᵀ Xᵀ.
"""

from sharebench.sharing.columns import ColumnSharing


class Pairwise(ColumnSharing):
    name = "pairwise"
    fixed_ratio = 1.0
    shared_roles = ("q", "k")
    scaled_roles = ("k",)
