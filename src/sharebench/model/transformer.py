"""The sharebench transformer: a BERT-style encoder, a GPT-style decoder and a Llama-style decoder in one file.

Read top to bottom: configuration, embeddings, attention (whose query/key/value projection is the pluggable
sharing scheme from `sharebench.sharing`), feed-forward, block, the stack, the heads, and finally the
accounting that every run records (unique parameters by component, FLOPs per token, MFU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sharebench.layers import LayerSharing, Unshared
from sharebench.layers.kv_sources import later_span
from sharebench.sharing import AttentionSharing
from sharebench.sharing.base import linear_weight

SharingFactory = Callable[..., AttentionSharing]
COMPONENTS = ("embeddings", "attention_qkv", "attention_out", "ffn", "norms", "heads", "routers")
IGNORE_INDEX = -100
PREDICTED_ROWS = 64  # masked LM: the head runs on a multiple of this many rows (see LanguageModel.forward)


@dataclass
class ModelConfig:
    vocab_size: int
    n_layers: int
    dim: int
    n_heads: int
    ffn_dim: int
    max_positions: int
    objective: str = "mlm"  # "mlm": bidirectional encoder + masked-LM head; "causal": decoder + next-token head
    norm_position: str = "post"  # "post" as in BERT, "pre" as in GPT-2/nanoGPT
    norm: str = "layer"  # "layer": LayerNorm; "rms": RMSNorm (Llama)
    positions: str = "learned"  # "learned": an embedding per position; "rotary": RoPE on queries and keys (Llama)
    rope_theta: float = 10000.0  # the base of the rotary frequencies
    ffn: str = "mlp"  # "mlp": down(act(up(x))); "gated": down(act(gate(x)) · up(x)), SwiGLU with act=silu (Llama)
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    bias: bool = True
    qkv_bias: bool = True
    type_vocab_size: int = 2  # 0: no token-type embeddings
    layer_norm_eps: float = 1e-12
    tie_embeddings: bool = True
    pooler: bool = True

    @classmethod
    def from_settings(cls, vocab_size: int, *settings: Mapping[str, Any]) -> ModelConfig:
        """The shape the given settings describe (a run's `arch`, `size`, ...; later ones win), from the keys that
        are fields here."""
        given = {key: value for mapping in settings for key, value in mapping.items()}
        return cls(vocab_size=vocab_size, **{f.name: given[f.name] for f in fields(cls) if f.name in given})

    @property
    def causal(self) -> bool:
        return self.objective == "causal"

    def to_dict(self) -> dict:
        return asdict(self)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # the exact erf form, as in BERT
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def norm_layer(cfg: ModelConfig) -> nn.Module:
    return (
        nn.RMSNorm(cfg.dim, eps=cfg.layer_norm_eps)
        if cfg.norm == "rms"
        else nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
    )


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE, Su et al. 2021) as Llama applies them: each head's dimensions split in
    halves, rotated in pairs (i, i + d/2) by position × θ^(−2i/d). No parameters. The cosines and sines are kept
    in a table that grows by doubling: computed at every call, they were a dozen small operators per layer and
    per decoded token, more than the rest of a Llama layer's decoding step."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.register_buffer("inverse_frequencies", theta ** -(torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)  # fmt: skip
        self.table: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (its kind, cosines, sines)

    def forward(self, x: torch.Tensor, start: int, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`x` (batch, heads, tokens, d) at positions start, start + 1, ..., or at `positions` (batch, tokens)
        where a router picked the tokens."""
        if positions is None:
            end = start + x.size(2)
            cos, sin = (f[start:end] for f in self.cosines_and_sines(end, x))
        else:
            cos, sin = (f[positions][:, None] for f in self.cosines_and_sines(int(positions.max()) + 1, x))
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    def cosines_and_sines(self, length: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The table for positions 0 … at least `length` − 1, in `x`'s dtype on its device (one made in inference
        mode serves inference only, so that is part of its kind)."""
        kind = (x.device, x.dtype, torch.is_inference_mode_enabled())
        if self.table is None or self.table[0] != kind or self.table[1].size(0) < length:
            positions = torch.arange(1 << (length - 1).bit_length(), device=x.device, dtype=torch.float32)
            angles = torch.outer(positions, self.inverse_frequencies.to(x.device))
            cos, sin = (torch.cat([f(angles), f(angles)], dim=-1).to(x.dtype) for f in (torch.cos, torch.sin))
            self.table = (kind, cos, sin)
        return self.table[1], self.table[2]


class Dropout(nn.Module):
    """Inverted dropout. Torch's CPU random numbers come one at a time from a Mersenne Twister and took a large
    share of a small model's step, so on CPU the mask comes from 16-bit slices of 64-bit numbers of NumPy's SFC64
    generator (about four times faster), seeded at each call from torch's generator, so that torch's seed and
    saved random state still govern it. The drop probability is p rounded to a multiple of 1/65536. Elsewhere it
    is torch's fused dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    @property
    def active(self) -> bool:
        return self.training and self.p > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return self.zero_dropped(x).mul_(1 / (1 - self.p))

    def zero_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with the dropped elements zeroed and the kept ones not yet rescaled by 1/(1 - p): a caller whose
        next step is linear rescales its smaller output instead (CPU only)."""
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        draws = torch.from_numpy(np.random.SFC64(seed).random_raw(-(-x.numel() // 4)).view(np.int16))
        dropped = draws[: x.numel()] < round(self.p * 65536) - 32768
        return torch.where(dropped.view(x.shape), 0.0, x)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout: Dropout | None = None,
) -> torch.Tensor:
    """softmax(QKᵀ/√d + masks)·V written out, keys and values repeated to the query heads they serve. `mask` is
    boolean (True: attend), broadcast to (batch, heads, queries, keys)."""
    if k.size(1) != q.size(1):
        repeats = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    scores = (q * (1 / math.sqrt(q.size(-1)))) @ k.transpose(-1, -2)  # scaling q: fewer elements than scores
    if causal:
        tokens = q.size(2)
        scores = scores.masked_fill(
            ~torch.ones(tokens, tokens, dtype=torch.bool, device=q.device).tril(), float("-inf")
        )
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    if dropout is None or not dropout.active:
        return weights @ v
    return (dropout.zero_dropped(weights) @ v).mul_(1 / (1 - dropout.p))


class Embeddings(nn.Module):
    component = "embeddings"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positions = nn.Embedding(cfg.max_positions, cfg.dim) if cfg.positions == "learned" else None
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.dim) if cfg.type_vocab_size else None
        # Post-LN models (BERT) normalise the embeddings; pre-LN models normalise at the start of each block.
        self.norm = norm_layer(cfg) if cfg.norm_position == "post" else None
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, start: int = 0
    ) -> torch.Tensor:
        """`start`: the position of the first token (the tokens before it are in a KV cache)."""
        x = self.tokens(input_ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(start, start + input_ids.size(1), device=input_ids.device))
        if self.token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_types(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


class QueryProjection(nn.Module):
    """The query projection of a layer that reuses an earlier layer's keys and values (cross-layer attention)."""

    component = "attention_qkv"

    def __init__(self, dim: int, n_heads: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return self.proj(x).view(batch, tokens, self.n_heads, dim // self.n_heads).transpose(1, 2)

    def role_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        return {"q": (linear_weight(self.proj), self.proj.bias)}


KeysValues = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    """Multi-head attention. Its query/key/value projection is the sharing scheme; with `reuse_kv` the layer
    only projects queries and attends over the keys and values it is handed (cross-layer attention)."""

    component = "attention_out"

    def __init__(self, cfg: ModelConfig, sharing: SharingFactory, reuse_kv: bool = False) -> None:
        super().__init__()
        if reuse_kv:
            self.qkv = QueryProjection(cfg.dim, cfg.n_heads, cfg.qkv_bias)
        else:
            self.qkv = sharing(dim=cfg.dim, n_heads=cfg.n_heads, bias=cfg.qkv_bias)
        self.reuse_kv = reuse_kv
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.causal = cfg.causal
        self.attention_dropout = Dropout(cfg.attention_dropout)
        self.rotary = Rotary(cfg.dim // cfg.n_heads, cfg.rope_theta) if cfg.positions == "rotary" else None
        if self.rotary is not None and not reuse_kv:
            self.qkv.before_rotation()

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        kv: KeysValues | None = None,
        rows: torch.Tensor | None = None,
        past: KeysValues | None = None,
        start: int = 0,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KeysValues]:
        """`rows` (batch, M): compute outputs only at these positions, attending over all of them. `past`: the
        keys and values of the tokens before `x` (a KV cache), which starts at position `start`; the ones
        returned cover those tokens too. `kv`: another layer's keys and values to attend over (cross-layer
        attention, or a later recursion that shares the first's). `positions` (batch, tokens): where the tokens
        of `x` sit when a router picked them. Rotary positions turn queries and keys after the scheme projects
        them (a layer that reuses keys gets them turned)."""
        batch, _, dim = x.shape
        if kv is not None:  # `kv` already covers the cached tokens
            q, (k, v) = (self.qkv(x) if self.reuse_kv else self.qkv(x)[0]), kv
            if self.rotary is not None:
                q = self.rotary(q, start, positions)
        else:
            q, k, v = self.qkv(x)
            if self.rotary is not None:
                q, k = self.rotary(q, start, positions), self.rotary(k, start, positions)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if rows is not None:
            q = q.gather(2, rows[:, None, :, None].expand(-1, q.size(1), -1, q.size(3)))
        causal = self.causal and key_mask is None
        if causal and k.size(2) > q.size(2):  # queries after cached keys: the causal mask aligns to the end
            causal = False
            if q.size(2) > 1:
                key_mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=x.device).tril(
                    k.size(2) - q.size(2)
                )
        dropout = self.attention_dropout
        if dropout.active and x.device.type == "cpu":  # fused CPU attention has no dropout
            y = explicit_attention(q, k, v, key_mask, causal, dropout)
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=key_mask,
                dropout_p=dropout.p if self.training else 0.0,
                is_causal=causal,
                enable_gqa=k.size(1) != q.size(1),
            )
        return self.out(y.transpose(1, 2).reshape(batch, q.size(2), dim)), (k, v)


class FeedForward(nn.Module):
    component = "ffn"

    def __init__(self, cfg: ModelConfig, ffn_dim: int | None = None) -> None:
        super().__init__()
        width = ffn_dim or cfg.ffn_dim
        self.gate = nn.Linear(cfg.dim, width, bias=cfg.bias) if cfg.ffn == "gated" else None
        self.up = nn.Linear(cfg.dim, width, bias=cfg.bias)
        self.down = nn.Linear(width, cfg.dim, bias=cfg.bias)
        self.activation = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(self.activation(self.gate(x)) * self.up(x))
        return self.down(self.activation(self.up(x)))


class Block(nn.Module):
    """One layer. Cross-layer schemes (`sharebench.layers`) may hand several layers the same block, or the same
    `attn` or `ffn` module."""

    def __init__(
        self, cfg: ModelConfig, sharing: SharingFactory, reuse_kv: bool = False, ffn_dim: int | None = None
    ) -> None:
        super().__init__()
        self.attn = Attention(cfg, sharing, reuse_kv)
        self.attn_norm = norm_layer(cfg)
        self.ffn = FeedForward(cfg, ffn_dim)
        self.ffn_norm = norm_layer(cfg)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.norm_position == "pre"

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        kv: KeysValues | None = None,
        rows: torch.Tensor | None = None,
        past: KeysValues | None = None,
        start: int = 0,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KeysValues]:
        """`rows` (batch, M): outputs only at these positions (keys and values still come from all)."""
        residual = x if rows is None else x.gather(1, rows[..., None].expand(-1, -1, x.size(-1)))
        if self.pre_norm:
            attended, kv = self.attn(self.attn_norm(x), key_mask, kv, rows, past, start, positions)
            x = residual + self.dropout(attended)
            return x + self.dropout(self.ffn(self.ffn_norm(x))), kv
        attended, kv = self.attn(x, key_mask, kv, rows, past, start, positions)
        x = self.attn_norm(residual + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x))), kv


class Transformer(nn.Module):
    """Embeddings and the stack of blocks: maps token ids to final hidden states (batch, tokens, D)."""

    def __init__(self, cfg: ModelConfig, sharing: SharingFactory, layers: LayerSharing) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        # A block shared by several layers appears several times in this list (stored once).
        self.blocks = nn.ModuleList(layers.build(cfg.n_layers, partial(Block, cfg, sharing)))
        self.kv_sources = layers.kv_sources(cfg.n_layers)  # the layer whose keys and values each layer uses
        self.router = layers.router_module(cfg.dim, cfg.n_layers)  # Mixture-of-Recursions: who takes each recursion
        # LCKV: the layers computed in passes, since some read a later layer's keys and values, and how many passes.
        self.later_span, self.kv_passes = later_span(self.kv_sources), layers.kv_passes()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.dim // cfg.n_heads
        self.final_norm = norm_layer(cfg) if cfg.norm_position == "pre" else None
        self.causal = cfg.causal

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        cache: list[KeysValues | None] | None = None,
    ) -> torch.Tensor:
        """`rows` (batch, M): the last layer computes its outputs only at these positions (batch, M, D).
        `cache` (decoding): each layer's keys and values of the tokens before `input_ids`, extended in place
        (a layer that reuses an earlier layer's holds the same tensors, stored once)."""
        # The longest cache holds every token before (a routed recursion's holds those that took it).
        start = max((kv[0].size(2) for kv in cache if kv is not None), default=0) if cache else 0
        x = self.embeddings(input_ids, token_type_ids, start)
        # A boolean (batch, 1, 1, keys) mask: padded keys are never attended to; None when nothing is padded.
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask[:, None, None, :].bool()
            if self.causal:
                tokens = input_ids.size(1)
                key_mask = key_mask & torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
        computed: list[KeysValues | None] = []  # each layer's keys and values, its own or those of its source
        if self.router is not None:
            self.router.begin()
        taken = None  # the tokens that took the last recursion (Mixture-of-Recursions)
        layer = 0
        while layer < len(self.blocks):
            recursion = self.router.recursion_at(layer) if self.router is not None else None
            if recursion is not None:
                x, taken = self.recursion(recursion, layer, x, taken, key_mask, attention_mask, cache, computed, start)
                layer += self.router.core
                continue
            if self.later_span is not None and layer == self.later_span[0]:
                x = self.passes(x, key_mask, attention_mask, cache, computed, start)
                layer = self.later_span[1]
                continue
            past = cache[layer] if cache is not None else None
            source = computed[self.kv_sources[layer]] if self.kv_sources[layer] != layer else None
            last_rows = rows if layer == len(self.blocks) - 1 else None
            x, kv = self.blocks[layer](x, key_mask, source, last_rows, past, start)
            computed.append(kv)
            if cache is not None:
                cache[layer] = kv
            layer += 1
        return self.final_norm(x) if self.final_norm is not None else x

    def recursion(
        self,
        recursion: int,
        first: int,
        x: torch.Tensor,
        taken: torch.Tensor | None,
        key_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: list[KeysValues | None] | None,
        computed: list[KeysValues | None],
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One recursion of a Mixture-of-Recursions model, from layer `first`: the router picks its tokens among
        those that took the one before, their states go through the recursion block (gathered, in order, at their
        positions), and each moves by the block's update times its router weight. The first recursion takes
        every token. A later one attends over the tokens that took it (recursion-wise caching: its cache holds
        theirs, with a mask of which entries are real) or over the first recursion's keys and values of every
        token (recursive KV sharing). Returns the new states and the tokens that took this recursion."""
        chosen, weight = self.router.route(recursion, x, taken)
        layers = range(first, first + self.router.core)
        if recursion == 0:  # every token: the layers as usual
            h = x
            for layer in layers:
                h, kv = self.blocks[layer](h, key_mask, None, None, cache[layer] if cache else None, start)
                computed.append(kv)
                if cache is not None:
                    cache[layer] = kv
            return x + weight[..., None] * (h - x), chosen
        rows, real = predicted_rows(chosen)
        if rows.size(1) == 0:  # no token goes on
            computed.extend([None] * len(layers))
            return x, chosen
        index = rows[..., None].expand(-1, -1, x.size(-1))
        picked = h = x.gather(1, index)
        positions = rows + start
        if attention_mask is not None:  # padded tokens are never attended to
            real = real & attention_mask.gather(1, rows).bool()
        tokens = rows.size(1)
        causal = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()
        itself = torch.eye(tokens, dtype=torch.bool, device=x.device)
        among = causal & (real[:, None, None, :] | itself)  # the real tokens before (a padding row: itself)
        for layer in layers:
            source = self.kv_sources[layer]
            if source != layer:  # the first recursion's keys and values, every token's: causal by position
                keys = computed[source][0].size(2)
                mask = torch.arange(keys, device=x.device) <= positions[:, None, :, None]
                if attention_mask is not None:
                    mask = mask & real_keys(attention_mask, keys)[:, None, None, :]
                h, kv = self.blocks[layer](h, mask, computed[source], None, None, start, positions)
                if cache is not None:
                    cache[layer] = kv  # the source's tensors, stored once
            else:
                past = cache[layer] if cache else None
                mask = among
                if past is not None:
                    mask = torch.cat([past[2][:, None, None, :].expand(-1, 1, tokens, -1), among], dim=-1)
                h, kv = self.blocks[layer](h, mask, None, None, past[:2] if past else None, start, positions)
                if cache is not None:
                    cache[layer] = (*kv, real if past is None else torch.cat([past[2], real], dim=1))
            computed.append(kv)
        moved = picked + weight.gather(1, rows)[..., None] * (h - picked)
        return x.scatter(1, index, torch.where(real[..., None], moved, picked)), chosen

    def passes(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: list[KeysValues | None] | None,
        computed: list[KeysValues | None],
        start: int,
    ) -> torch.Tensor:
        """The layers of `later_span`, where some read a later layer's keys and values (LCKV): run in passes,
        each reader attending over the earlier tokens' keys and values of the pass before (zeros in the first, the
        cache's for the tokens before), the last `backward_passes` with gradients. n passes make the first n
        tokens exact, so a shorter input takes as many passes as it has tokens (decoding: one)."""
        low, high = self.later_span
        forward_passes, backward_passes = self.kv_passes
        tokens = x.size(1)
        total = min(forward_passes + backward_passes, tokens)
        earlier: dict[int, KeysValues] = {}  # each layer read, its keys and values of the pass before
        for number in range(total):
            with torch.set_grad_enabled(torch.is_grad_enabled() and number >= total - backward_passes):
                h, this_pass = x, dict(enumerate(computed))
                for layer in range(low, high):
                    source = self.kv_sources[layer]
                    past = cache[layer] if cache is not None else None
                    if source > layer:
                        keys, mask = self.earlier_tokens(earlier.get(source), cache[source] if cache else None, h,
                                                         attention_mask, start)  # fmt: skip
                        h, kv = self.blocks[layer](h, mask, keys, None, None, start)
                        kv = None  # a reader keeps no keys and values of its own
                    elif source < layer:
                        h, kv = self.blocks[layer](h, key_mask, this_pass[source], None, None, start)
                    else:
                        h, kv = self.blocks[layer](h, key_mask, None, None, past, start)
                    this_pass[layer] = kv
                earlier = {layer: kv for layer, kv in this_pass.items() if kv is not None}
        for layer in range(low, high):  # the last pass's keys and values are the model's
            computed.append(this_pass[layer])
            if cache is not None and this_pass[layer] is not None:
                cache[layer] = this_pass[layer]
        return h

    def earlier_tokens(
        self,
        read: KeysValues | None,
        past: KeysValues | None,
        h: torch.Tensor,
        attention_mask: torch.Tensor | None,
        start: int,
    ) -> tuple[KeysValues, torch.Tensor]:
        """What a layer that reads a later layer attends over: that layer's keys and values from the pass before
        (`read`, covering the cached tokens too), or in the first pass the cached ones and zeros, each token
        seeing the tokens before it only; plus a zero key and value in front, which a token with none before it
        attends to alone (its attention is then zero, as in LCKV's code)."""
        batch, tokens = h.shape[:2]
        if read is None:  # zero values: their attention is zero, whatever their number of heads
            zeros = h.new_zeros(batch, *(past[0].shape[1:2] if past else (self.n_heads,)), tokens, self.head_dim)
            read = (zeros, zeros) if past is None else (torch.cat([past[0], zeros], 2), torch.cat([past[1], zeros], 2))
        keys, values = read
        null = keys.new_zeros(*keys.shape[:2], 1, keys.size(3))
        total = keys.size(2)
        visible = torch.arange(total, device=h.device) < torch.arange(start, start + tokens, device=h.device)[:, None]
        if attention_mask is not None:
            visible = visible & real_keys(attention_mask, total)[:, None]
        visible = visible.expand(batch, tokens, total)
        alone = ~visible.any(-1, keepdim=True)
        mask = torch.cat([alone, visible], dim=-1)[:, None]
        return (torch.cat([null, keys], dim=2), torch.cat([null, values], dim=2)), mask

    def router_loss(self) -> torch.Tensor | None:
        """The routers' auxiliary loss of the last forward pass (in training), or None."""
        return self.router.loss if self.router is not None else None


class LMHead(nn.Module):
    """Token predictions. Masked LM (BERT): dense + activation + LayerNorm, then the decoder with its own bias.
    Causal LM (GPT): the decoder alone. The decoder is tied to the token embeddings unless asked otherwise."""

    component = "heads"

    def __init__(self, cfg: ModelConfig, token_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = None
        if cfg.objective == "mlm":
            self.transform = nn.Sequential(
                nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
            )
        self.decoder = nn.Linear(cfg.dim, cfg.vocab_size, bias=cfg.objective == "mlm")
        if cfg.tie_embeddings:
            self.decoder.weight = token_embeddings.weight
        # Training computes logits over the vocabulary padded to a multiple of 64 columns: on CPU a 30,522-column
        # output made the decoder's forward matmul a third slower than a 30,528-column one (GPUs, too, want such
        # widths). The parameters keep the vocabulary's size.
        self.padding = -cfg.vocab_size % 64

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transformed(hidden))

    def padded_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits with `padding` more columns, all -inf: a softmax or cross-entropy over them is the one over the
        vocabulary, as are its gradients."""
        hidden = self.transformed(hidden)
        if not self.padding:
            return self.decoder(hidden)
        weight = F.pad(self.decoder.weight, (0, 0, 0, self.padding))
        bias = self.decoder.bias if self.decoder.bias is not None else weight.new_zeros(self.decoder.out_features)
        return F.linear(hidden, weight, torch.cat([bias, bias.new_full((self.padding,), float("-inf"))]))

    def transformed(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) if self.transform is not None else hidden


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(hidden state of the first token)), the input of sentence-level task heads."""

    component = "heads"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class LMOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor


class ParameterCounts(NamedTuple):
    total: int  # a shared tensor counted once per use
    unique: int  # a shared tensor counted once, as stored
    by_component: dict[str, int]  # unique parameters; sums to `unique`

    def to_dict(self) -> dict:
        return {"total": self.total, "unique": self.unique, "by_component": dict(self.by_component)}


class LanguageModel(nn.Module):
    def __init__(
        self, cfg: ModelConfig, sharing: SharingFactory, sharing_name: str = "", layers: LayerSharing | None = None
    ) -> None:
        super().__init__()
        self.config = cfg
        self.sharing_name = sharing_name
        self.layers = layers or Unshared()
        self.transformer = Transformer(cfg, sharing, self.layers)
        self.head = LMHead(cfg, self.transformer.embeddings.tokens)
        self.pooler = Pooler(cfg) if cfg.pooler else None
        self.apply(_init_weights)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (batch, tokens, D)."""
        return self.transformer(input_ids, attention_mask, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> LMOutput:
        """Masked LM: logits only at positions whose label is not -100 (flattened), and the last layer computes
        only those positions. Causal LM: logits at every position. In training the loss includes the routers'
        auxiliary loss (Mixture-of-Recursions); in evaluation it is the language-modelling loss alone."""
        if self.config.objective == "mlm" and labels is not None:
            predicted = labels != IGNORE_INDEX
            rows, real = predicted_rows(predicted)
            hidden = self.transformer(input_ids, attention_mask, token_type_ids, rows)[real]
            # How many tokens a batch predicts varies from step to step; padded to a multiple of PREDICTED_ROWS,
            # the head's tensors come in a few sizes that the allocator reuses, where a new size each step
            # fragments the heap by megabytes per step (bert-mini's process grew to 2.4 GB in 300 steps).
            padding = -hidden.size(0) % PREDICTED_ROWS
            targets = F.pad(labels[predicted], (0, padding), value=IGNORE_INDEX)
            logits = self.head.padded_logits(F.pad(hidden, (0, 0, 0, padding)))
            loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
            return LMOutput(loss, logits[: hidden.size(0), : self.config.vocab_size])
        logits = self.head.padded_logits(self.encode(input_ids, attention_mask, token_type_ids))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
            if self.training and (router_loss := self.transformer.router_loss()) is not None:
                loss = loss + router_loss
        return LMOutput(loss, logits[..., : self.config.vocab_size])

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue each sequence of `input_ids` (batch, tokens) by `new_tokens` tokens, sampled at `temperature`
        from the `top_k` likeliest (temperature 0: the likeliest). With `use_cache`, each step runs only the new
        token through the model, attending over the cached keys and values; without, over the whole prefix.
        Past `max_positions` tokens the context keeps the latest ones (the cache starts again from them)."""
        if not self.config.causal:
            raise ValueError("generate needs a decoder (arch=gpt); an encoder predicts masked tokens only")
        tokens, cache = input_ids, None
        for _ in range(new_tokens):
            context = tokens[:, -self.config.max_positions :]
            if use_cache and cache is not None and tokens.size(1) <= self.config.max_positions:
                hidden = self.transformer(tokens[:, -1:], cache=cache)
            else:
                cache = self.new_cache() if use_cache else None
                hidden = self.transformer(context, cache=cache)
            logits = self.head(hidden[:, -1]).float()
            tokens = torch.cat([tokens, next_tokens(logits, temperature, top_k, generator)], dim=1)
        return tokens

    def loop_core(self, loops: int) -> None:
        """Recurrent depth at inference: the looped core runs `loops` times (the model has as many layers more
        or fewer); in place, the parameters unchanged."""
        blocks = self.layers.relooped(list(self.transformer.blocks), loops)
        self.transformer.blocks = nn.ModuleList(blocks)
        self.transformer.kv_sources = list(range(len(blocks)))
        self.config = replace(self.config, n_layers=len(blocks))

    def new_cache(self) -> list[KeysValues | None]:
        """An empty KV cache: one entry per layer, filled by `transformer(..., cache=)`."""
        return [None] * len(self.transformer.blocks)

    # ---- accounting -------------------------------------------------------------------------------------

    def parameter_counts(self, lm_head: bool = True) -> ParameterCounts:
        """Exact counts from how parameters are stored: `unique` counts each tensor once, `total` once per use
        (a module reused by several layers, a tied decoder, a projection block serving several roles).
        `lm_head=False` leaves out the LM head, which fine-tuning does not use."""
        unique: dict[int, tuple[int, str]] = {}
        total = 0

        def visit(module: nn.Module, component: str) -> None:
            nonlocal total
            norm = isinstance(module, (nn.LayerNorm, nn.RMSNorm))
            component = "norms" if norm else getattr(module, "component", component)
            if isinstance(module, AttentionSharing):
                total += module.used_numel()
                for p in module.parameters():
                    unique.setdefault(id(p), (p.numel(), component))
                return
            for p in module.parameters(recurse=False):
                total += p.numel()
                unique.setdefault(id(p), (p.numel(), component))
            for child in every_child(module):  # every occurrence, also of a module reused elsewhere
                if lm_head or child is not self.head:
                    visit(child, component)

        visit(self, "heads")
        by_component = dict.fromkeys(COMPONENTS, 0)
        for numel, component in unique.values():
            by_component[component] += numel
        return ParameterCounts(total, sum(by_component.values()), by_component)

    def flops_per_token(
        self, seq_len: int, predicted_fraction: float = 1.0, token_shares: list[float] | None = None
    ) -> int:
        """Training FLOPs (forward + backward = 3 × forward) per input token, nanoGPT's convention:
        2 FLOPs per multiply-accumulate of every matmul a token goes through, plus attention's QKᵀ and AV.
        A projection shared by several roles is computed once and counted once. The LM head runs on
        `predicted_fraction` of the tokens (the masked share for MLM); for MLM so does the last layer, apart
        from its query/key/value projection. A layer that a router lets tokens skip computes its share of the
        tokens (`token_shares`, by layer; the scheme's plan where not given), attending over the share of the
        context its keys and values come from; a layer computed in several passes (LCKV) counts each."""

        def linear_macs(module: nn.Module) -> int:
            if hasattr(module, "macs"):  # projections assembled from parts (LoRA, shared heads)
                return module.macs()
            if isinstance(module, nn.Linear):
                return module.in_features * module.out_features
            return sum(linear_macs(child) for child in every_child(module))

        cfg = self.config
        layer_attention_macs = 2 * seq_len * cfg.dim
        shares = token_shares or self.layers.token_shares(cfg.n_layers)
        passes = self.layers.training_passes(cfg.n_layers)
        blocks = self.transformer.blocks
        layer_macs = [
            passes[layer] * shares[layer] * (linear_macs(block) + shares[source] * layer_attention_macs)
            for layer, (block, source) in enumerate(zip(blocks, self.transformer.kv_sources, strict=True))
        ]
        forward_macs = (
            linear_macs(self.transformer)
            - sum(linear_macs(block) for block in blocks)
            + sum(layer_macs)
            + predicted_fraction * linear_macs(self.head)
        )
        if cfg.objective == "mlm":
            last = self.transformer.blocks[-1]
            last_rows_only = linear_macs(last) - linear_macs(last.attn.qkv) + layer_attention_macs
            forward_macs -= (1 - predicted_fraction) * last_rows_only
        return int(round(3 * 2 * forward_macs))

    def estimate_mfu(
        self, tokens_per_second: float, peak_flops: float, seq_len: int, predicted_fraction: float
    ) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak FLOP/s."""
        return self.flops_per_token(seq_len, predicted_fraction) * tokens_per_second / peak_flops


def next_tokens(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """(batch, 1) token ids drawn from the logits (batch, vocab), or their argmax at temperature 0."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        threshold = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def real_keys(attention_mask: torch.Tensor, keys: int) -> torch.Tensor:
    """(batch, keys): which of `keys` keys are real, given the padding mask of the last ones (the new tokens);
    the cached tokens before them are real."""
    return F.pad(attention_mask.bool(), (keys - attention_mask.size(1), 0), value=True)


def predicted_rows(predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions each sequence predicts, in order, padded to the longest list: (batch, M) indices and which
    of them are real. Taking the real ones row by row gives the order of `hidden[predicted]`."""
    tokens = predicted.size(1)
    counts = predicted.sum(1)
    unpredicted_last = torch.arange(tokens, device=predicted.device) + tokens * (~predicted)
    rows = unpredicted_last.argsort(dim=1)[:, : int(counts.max())]
    return rows, torch.arange(rows.size(1), device=rows.device) < counts[:, None]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def every_child(module: nn.Module) -> list[nn.Module]:
    """The modules directly under `module`, one at each name: a module held under several names (a block reused
    by several layers) once per name, which `children()` would give once."""
    return [child for name, child in module.named_modules(remove_duplicate=False) if name and "." not in name]
