"""Multiple head embeddings (Xue & Aletras 2023, arXiv 2310.07911).

One single-head projection per role, W ∈ R^{D×d}, serves every head; head i adds (MHE-ADD) or multiplies
(MHE-MUL) its own embedding e_i ∈ R^d. Over single-head attention this costs exactly 3·H·d parameters.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sharebench.sharing.base import AttentionSharing


class HeadEmbeddings(AttentionSharing):
    combine: ClassVar[str] = "add"

    def __init__(self, dim: int, n_heads: int, bias: bool, ratio: float | None = None):
        super().__init__(dim, n_heads, bias)
        self.resolve_ratio(ratio, dim, n_heads)
        self.proj = nn.Linear(dim, 3 * self.head_dim, bias=bias)
        # Multiplicative embeddings start near 1 and additive ones near 0, so every head starts close to the
        # shared projection and the small noise breaks the symmetry between heads.
        start = 1.0 if self.combine == "mul" else 0.0
        self.head_embeddings = nn.Parameter(start + 0.02 * torch.randn(3, n_heads, self.head_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        single = self.proj(x).view(batch, tokens, 3, 1, self.head_dim)
        heads = single + self.head_embeddings if self.combine == "add" else single * self.head_embeddings
        q, k, v = heads.permute(2, 0, 3, 1, 4)
        return q, k, v

    def used_numel(self) -> int:
        projection = sum(p.numel() for p in self.proj.parameters())
        return self.n_heads * projection + self.head_embeddings.numel()


class HeadEmbeddingsAdd(HeadEmbeddings):
    name = "mhe_add"
    combine = "add"


class HeadEmbeddingsMul(HeadEmbeddings):
    name = "mhe_mul"
    combine = "mul"
