"""What serving a trained model costs: its weights as loaded, the KV cache a decoder keeps per token of context,
how fast it decodes (or an encoder encodes), and the memory that takes. Measured on the model in eval mode."""

from __future__ import annotations

import time
from typing import Any

import torch

from sharebench.model.memory import peak_allocated_bytes, tensor_bytes
from sharebench.model.transformer import LanguageModel

DECODE_BATCHES = (1, 8)
ENCODE_BATCH = 32


def kv_cache_bytes(model: LanguageModel, tokens: int) -> list[int]:
    """Bytes each layer adds to the KV cache for `tokens` tokens of context at batch 1; a layer that reuses an
    earlier layer's keys and values (cross-layer attention), or that no token reached, adds none. A layer that a
    router lets tokens skip caches the keys and values of the tokens it computed (and a mask, not counted)."""
    cache = model.new_cache()
    with torch.no_grad():
        model.transformer(torch.zeros(1, tokens, dtype=torch.long, device=_device(model)), cache=cache)
    seen: set[int] = set()
    per_layer = []
    for keys_values in cache:
        keys_values = keys_values[:2] if keys_values is not None else ()
        added = [t for t in keys_values if id(t) not in seen]
        seen.update(id(t) for t in keys_values)
        per_layer.append(tensor_bytes(added))
    return per_layer


def decode_tokens_per_second(model: LanguageModel, batch: int, new_tokens: int) -> float:
    """Greedy decoding with the KV cache from a one-token prompt: generated tokens per second (after a warm-up)."""
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=_device(model))
    model.generate(prompt, 4, temperature=0)
    start = time.perf_counter()
    model.generate(prompt, new_tokens, temperature=0)
    _synchronize(model)
    return batch * new_tokens / (time.perf_counter() - start)


def encode_tokens_per_second(model: LanguageModel, batch: int, seq_len: int, repeats: int = 3) -> float:
    """Encoding throughput (final hidden states of full sequences), tokens per second, after a warm-up."""
    input_ids = torch.zeros(batch, seq_len, dtype=torch.long, device=_device(model))
    with torch.no_grad():
        model.encode(input_ids)
        start = time.perf_counter()
        for _ in range(repeats):
            model.encode(input_ids)
        _synchronize(model)
    return repeats * batch * seq_len / (time.perf_counter() - start)


def inference_costs(model: LanguageModel, seq_len: int) -> dict[str, Any]:
    """The run record's `inference`: `weights_bytes` (each shared tensor once), for decoders
    `kv_cache_bytes_per_token` (all layers, batch 1; by layer in `kv_cache_bytes_per_token_by_layer`) and
    `tokens_per_second` of cached greedy decoding at batch 1 and 8 over `seq_len` tokens, for encoders
    `tokens_per_second` of encoding at batch 32 (no KV cache: null); `peak_bytes`, the weights plus the most
    memory allocated while decoding `seq_len` tokens at batch 1 (encoders: encoding one batch)."""
    model = model.eval()
    weights = tensor_bytes(model.parameters())
    tokens = min(seq_len, model.config.max_positions)
    if not model.config.causal:
        with torch.no_grad():
            batch = torch.zeros(ENCODE_BATCH, tokens, dtype=torch.long, device=_device(model))
            step = peak_allocated_bytes(lambda: model.encode(batch), _device(model))
        return {
            "weights_bytes": weights,
            "kv_cache_bytes_per_token": None,
            "tokens_per_second": {f"batch_{ENCODE_BATCH}": encode_tokens_per_second(model, ENCODE_BATCH, tokens)},
            "peak_bytes": weights + step,
        }
    by_layer = [size // tokens for size in kv_cache_bytes(model, tokens)]
    prompt = torch.zeros(1, 1, dtype=torch.long, device=_device(model))
    decoding = peak_allocated_bytes(lambda: model.generate(prompt, tokens - 1, temperature=0), _device(model))
    return {
        "weights_bytes": weights,
        "kv_cache_bytes_per_token": sum(by_layer),
        "kv_cache_bytes_per_token_by_layer": by_layer,
        "tokens_per_second": {
            f"batch_{batch}": decode_tokens_per_second(model, batch, tokens - 1) for batch in DECODE_BATCHES
        },
        "peak_bytes": weights + decoding,
    }


def _device(model: LanguageModel) -> torch.device:
    return next(model.parameters()).device


def _synchronize(model: LanguageModel) -> None:
    if _device(model).type == "cuda":
        torch.cuda.synchronize()
