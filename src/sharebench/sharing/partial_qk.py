"""Partially shared query-key (Yang et al. 2024): W_Q^h = [W_S^h, W_Q'^h], W_K^h = [W_S^h, W_K'^h]."""

from sharebench.sharing.columns import ColumnSharing


class PartialQK(ColumnSharing):
    name = "partial_qk"
    ratio_range = (0.0, 1.0)
    default_ratio = 0.9
    ratio_meaning = "share of the query/key columns; 0 is `none`, 1 is `symmetric`"
    shared_roles = ("q", "k")
