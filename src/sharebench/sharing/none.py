"""Standard multi-head attention (Vaswani et al. 2017): separate W_Q, W_K, W_V, fused into one matmul."""

from sharebench.sharing.columns import ColumnSharing


class Separate(ColumnSharing):
    name = "none"
    fixed_ratio = 0.0
