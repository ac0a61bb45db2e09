"""The model's loss computed the plain way, from the same parameters: each role's projection materialised as a
full matrix (`role_weights`), attention as an explicit softmax, logits at every position. It is slow and exists
so tests can show that the fast path (fused and shared projections, fused attention, masked-LM logits only at
the masked positions, the tokens a router picks gathered) computes the same loss. Where a router lets tokens skip
a recursion (Mixture-of-Recursions), every token goes through it here, attending over the tokens that took it,
and only those that took it keep the result."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sharebench.model.transformer import ACTIVATIONS, IGNORE_INDEX, LanguageModel, explicit_attention


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.view(batch, tokens, width // head_dim, head_dim).transpose(1, 2)


def rotated(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary positions written as complex numbers: dimensions i and i + d/2 of each head are one number,
    multiplied by exp(i · position · θ^(−2i/d))."""
    half = x.size(-1) // 2
    frequencies = theta ** -(torch.arange(half, dtype=torch.float32) / half)  # in float32, as Llama's
    angles = torch.arange(x.size(2), dtype=torch.float32)[:, None] * frequencies
    turned = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([turned.real, turned.imag], dim=-1)


def feed_forward(block: torch.nn.Module, x: torch.Tensor, activation) -> torch.Tensor:
    ffn = block.ffn  # its projections called, not their weights read: a cross-layer scheme may adapt them
    if ffn.gate is not None:
        return ffn.down(activation(ffn.gate(x)) * ffn.up(x))
    return ffn.down(activation(ffn.up(x)))


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
    x = model.transformer.embeddings(input_ids, token_type_ids)
    computed: dict[int, tuple] = {}  # each layer's keys and values, its own or those of the layer its map names
    sources = model.layers.kv_sources(cfg.n_layers)
    span = model.transformer.later_span
    router, taken, kept, keys = model.transformer.router, None, None, None
    if router is not None:
        router.begin()
    padding = attention_mask[:, None, None, :].bool() if attention_mask is not None else None
    layer = 0
    while layer < cfg.n_layers:
        if span is not None and layer == span[0]:  # LCKV: the span in passes, readers seeing earlier tokens only
            x, layer = later_layers_in_passes(model, x, computed, padding), span[1]
            continue
        mask = padding
        if router is not None and (recursion := router.recursion_at(layer)) is not None:
            taken, weight = router.route(recursion, x, taken)
            before, kept, keys = x, (weight, layer + router.core), taken[:, None, None, :] if recursion else None
        if keys is not None and sources[layer] == layer:  # the keys of the tokens that took this recursion
            mask = keys if mask is None else mask & keys
        x, computed[layer] = plain_layer(model, layer, x, computed.get(sources[layer]), mask)
        if kept is not None and layer + 1 == kept[1]:  # the end of a recursion: its tokens move, the rest stay
            x = torch.where(taken[..., None], before + kept[0][..., None] * (x - before), before)
            kept = keys = None
        layer += 1
    if model.transformer.final_norm is not None:
        x = model.transformer.final_norm(x)
    logits = model.head(x)  # the vocabulary's width, unpadded
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def later_layers_in_passes(
    model: LanguageModel, x: torch.Tensor, computed: dict[int, tuple], padding: torch.Tensor | None
) -> torch.Tensor:
    """The layers of `later_span` as LCKV's passes compute them: each reader of a later layer attends over the
    keys and values that layer computed in the pass before (zero values in the first), tokens strictly before
    it only; a token with none attends to nothing (zero)."""
    sources = model.layers.kv_sources(model.config.n_layers)
    low, high = model.transformer.later_span
    forward_passes, backward_passes = model.layers.kv_passes()
    tokens = x.size(1)
    earlier = torch.ones(tokens, tokens, dtype=torch.bool).tril(-1)
    before: dict[int, tuple] = {}
    for _ in range(min(forward_passes + backward_passes, tokens)):
        h, this_pass = x, dict(computed)
        for layer in range(low, high):
            source = sources[layer]
            if source > layer:
                zeros = heads(torch.zeros_like(h), model.config.dim // model.config.n_heads)
                keys = before.get(source) or (zeros, zeros)
                mask = earlier if padding is None else earlier & padding
                h, _ = plain_layer(model, layer, h, keys, mask, causal=False)
            else:
                h, this_pass[layer] = plain_layer(model, layer, h, this_pass.get(source), padding)
        before = {layer: kv for layer, kv in this_pass.items() if sources[layer] == layer}
    computed.update(this_pass)
    return h


def plain_layer(
    model: LanguageModel,
    layer: int,
    x: torch.Tensor,
    read: tuple | None,
    mask: torch.Tensor | None,
    causal: bool | None = None,
) -> tuple[torch.Tensor, tuple]:
    """One layer: its own keys and values, or those it reads (`read`); a query with no key to see gets zero."""
    cfg = model.config
    block = model.transformer.blocks[layer]
    head_dim = cfg.dim // cfg.n_heads
    h = block.attn_norm(x) if block.pre_norm else x
    roles = block.attn.qkv.role_weights()
    q = heads(F.linear(h, *roles["q"]), head_dim)
    if read is None:
        kv = heads(F.linear(h, *roles["k"]), head_dim), heads(F.linear(h, *roles["v"]), head_dim)
        if cfg.positions == "rotary":
            kv = rotated(kv[0], cfg.rope_theta), kv[1]
    else:
        kv = read
    if cfg.positions == "rotary":
        q = rotated(q, cfg.rope_theta)
    y = explicit_attention(q, *kv, mask, cfg.causal if causal is None else causal).nan_to_num(0.0)
    attended = block.attn.out(y.transpose(1, 2).flatten(2))
    activation = ACTIVATIONS[cfg.activation]
    if block.pre_norm:
        x = x + attended
        return x + feed_forward(block, block.ffn_norm(x), activation), kv
    x = block.attn_norm(x + attended)
    return block.ffn_norm(x + feed_forward(block, x, activation)), kv
