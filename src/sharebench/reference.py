"""The model's loss computed the plain way, from the same parameters: each role's projection materialised as a
full matrix (`role_weights`), attention as an explicit softmax, logits at every position. It is slow and exists
so tests can show that the fast path (fused and shared projections, fused attention, masked-LM logits only at
the masked positions) computes the same loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sharebench.model import ACTIVATIONS, IGNORE_INDEX, LanguageModel, explicit_attention


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)


@torch.no_grad()
def reference_loss(
    model: LanguageModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of `model` (in eval mode: no dropout) on one batch, by the plain path."""
    cfg = model.config
    head_dim = cfg.dim // cfg.n_heads
    activation = ACTIVATIONS[cfg.activation]
    x = model.transformer.embeddings(input_ids, token_type_ids)
    kv = None
    for block in model.transformer.blocks:
        h = block.attn_norm(x) if block.pre_norm else x
        roles = block.attn.qkv.role_weights()
        q = heads(F.linear(h, *roles["q"]), head_dim)
        if "k" in roles:
            kv = heads(F.linear(h, *roles["k"]), head_dim), heads(F.linear(h, *roles["v"]), head_dim)
        mask = attention_mask[:, None, None, :].bool() if attention_mask is not None else None
        y = explicit_attention(q, *kv, mask, cfg.causal).transpose(1, 2).flatten(2)
        attended = block.attn.out(y)
        if block.pre_norm:
            x = x + attended
            x = x + block.ffn.down(activation(block.ffn.up(block.ffn_norm(x))))
        else:
            x = block.attn_norm(x + attended)
            x = block.ffn_norm(x + block.ffn.down(activation(block.ffn.up(x))))
    if model.transformer.final_norm is not None:
        x = model.transformer.final_norm(x)
    logits = model.head(x)  # the vocabulary's width, unpadded
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
