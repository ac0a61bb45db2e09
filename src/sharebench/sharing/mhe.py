"""Multiple head embeddings (Xue & Aletras 2023, arXiv 2310.07911).

One single-head projection per role, W ∈ R^{D×d}, serves every head; head i adds (MHE-ADD) or multiplies
(MHE-MUL) its own embedding e_i ∈ R^d. Over single-head attention this costs exactly 3·H·d parameters.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sharebench.sharing.base import AttentionSharing, linear_weight


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

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        roles = {}
        for index, role in enumerate("qkv"):
            weight = linear_weight(self.proj)[index * self.head_dim : (index + 1) * self.head_dim]
            bias = (
                self.proj.bias[index * self.head_dim : (index + 1) * self.head_dim]
                if self.proj.bias is not None
                else None
            )
            embedding = self.head_embeddings[index]  # (H, d)
            heads = weight.expand(self.n_heads, -1, -1)
            head_bias = bias.expand(self.n_heads, -1) if bias is not None else torch.zeros_like(embedding)
            if self.combine == "add":  # X·W + e_i: the embedding acts as a per-head bias
                roles[role] = (heads.reshape(self.dim, self.dim), (head_bias + embedding).flatten())
            else:  # (X·W + b) ⊙ e_i = X·(W ⊙ e_i) + b ⊙ e_i
                roles[role] = (
                    (heads * embedding[..., None]).reshape(self.dim, self.dim),
                    (head_bias * embedding).flatten(),
                )
        return roles

    def used_numel(self) -> int:
        projection = sum(p.numel() for p in self.proj.parameters())
        return self.n_heads * projection + self.head_embeddings.numel()


class HeadEmbeddingsAdd(HeadEmbeddings):
    name = "mhe_add"
    combine = "add"


class HeadEmbeddingsMul(HeadEmbeddings):
    name = "mhe_mul"
    combine = "mul"
