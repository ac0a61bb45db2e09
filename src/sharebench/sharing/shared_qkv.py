"""One projection for queries, keys and values (Kowsher et al. 2024, arXiv 2412.00359).

S = X W_S + b_S; Q = S ⊙ δ_Q, K = S ⊙ δ_K, V = S ⊙ δ_V with learnable δ initialised to 1 (the paper's diagonal
matrices). The suite's generalisation: only the first round(r·d) columns of each head come from W_S (and are
rescaled by δ); the rest are separate per role, so r = 0 is `none` and r = 1 (the default) is the paper's scheme.
"""

from sharebench.sharing.columns import ColumnSharing


class SharedQKV(ColumnSharing):
    name = "shared_qkv"
    ratio_range = (0.0, 1.0)
    default_ratio = 1.0
    ratio_meaning = "share of each head's query/key/value columns taken from the one shared projection"
    shared_roles = ("q", "k", "v")
    scaled_roles = ("q", "k", "v")
