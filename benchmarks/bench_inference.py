"""Inference benchmark (`make bench`): decoding speed against Hugging Face, and KV-cache bytes against the formula.

- Greedy decoding with a KV cache, `arch=gpt` at nanoGPT's Tiny Shakespeare shape (6 layers, D = 384, 6 heads,
  context 256, 65 characters, fp32) against Hugging Face `GPT2LMHeadModel.generate` of the same shape, from a
  one-token prompt to the full context, at batch 1 and batch 8. The two take turns in one process, cycle after
  cycle; a ratio is the median over cycles of the ratio of the two timings taken within a cycle. Target: ≥ 1×.
- KV-cache bytes per token of context (batch 1, fp32) per scheme, measured from the cache the model fills,
  against 2 (keys, values) × 4 bytes × key/value heads × head size × layers that compute keys and values.
Exits 1 when a target is missed.

python benchmarks/bench_inference.py [--cycles 7] [--out results/bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from sharebench.model.inference import kv_cache_bytes
from sharebench.paths import PROJECT_ROOT
from sharebench.run.build import build_model
from sharebench.run.composing import compose
from sharebench.run.cpu import cpu_features, tune_cpu_process
from sharebench.run.environment import cpu_model, write_benchmark
from sharebench.run.validation import validate

SHAPE = {"n_layers": 6, "dim": 384, "n_heads": 6, "ffn_dim": 1536}  # size=nanogpt_char
CONTEXT, VOCAB = 256, 65
BATCHES = (1, 8)
TARGET = 1.0
# overrides, key/value heads, layers computing keys and values
KV_SCHEMES = {
    "none": ([], 6, 6),
    "gqa ratio=0.5": (["sharing=gqa", "ratio=0.5"], 3, 6),
    "mqa": (["sharing=mqa"], 1, 6),
    "symmetric": (["sharing=symmetric"], 6, 6),
    "mhe_add": (["sharing=mhe_add"], 6, 6),
    "layers=cla (k = 2)": (["layers=cla", "layers.ratio=0.5"], 6, 3),
    "layers=cycle": (["layers=cycle", "layers.ratio=0.5"], 6, 6),
}


def suite_model(*overrides: str) -> torch.nn.Module:
    shape = [f"size.{key}={value}" for key, value in SHAPE.items()]
    cfg = compose(["arch=gpt", "arch.dropout=0", "arch.attention_dropout=0", f"data.seq_len={CONTEXT}", *shape,
                   *overrides])  # fmt: skip
    return build_model(validate(cfg, data=False), VOCAB).eval()


def hugging_face_model() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=SHAPE["dim"], n_layer=SHAPE["n_layers"],
                        n_head=SHAPE["n_heads"], n_inner=SHAPE["ffn_dim"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def decode_seconds(model: torch.nn.Module, batch: int, hugging_face: bool) -> float:
    prompt = torch.ones(batch, 1, dtype=torch.long)
    start = time.perf_counter()
    with torch.no_grad():
        if hugging_face:
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=CONTEXT - 1,
                                 min_new_tokens=CONTEXT - 1, do_sample=False, pad_token_id=0)  # fmt: skip
        else:
            out = model.generate(prompt, CONTEXT - 1, temperature=0)
    seconds = time.perf_counter() - start
    assert out.shape == (batch, CONTEXT), out.shape
    return seconds


def decoding(cycles: int) -> dict[str, dict]:
    """Each batch's decoding speeds and their ratio, in fp32 (`batch_<n>`) and, where the CPU computes bf16, with
    both models in bf16 (`bf16_batch_<n>`)."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16) if cpu_features() else (torch.float32,):
        prefix = "bf16_" if dtype == torch.bfloat16 else ""
        suite, hugging_face = suite_model().to(dtype), hugging_face_model().to(dtype)
        results |= {f"{prefix}{batch}": row for batch, row in decoding_at(suite, hugging_face, cycles).items()}
    return results


def decoding_at(suite: torch.nn.Module, hugging_face: torch.nn.Module, cycles: int) -> dict[str, dict]:
    results = {}
    for batch in BATCHES:
        decode_seconds(suite, batch, False), decode_seconds(hugging_face, batch, True)  # warm-up
        ratios, suite_speeds, hf_speeds = [], [], []
        for cycle in range(cycles):
            pair = [("suite", False), ("hf", True)] if cycle % 2 == 0 else [("hf", True), ("suite", False)]
            seconds = {name: decode_seconds(suite if name == "suite" else hugging_face, batch, hf) for name, hf in pair}
            tokens = batch * (CONTEXT - 1)
            suite_speeds.append(tokens / seconds["suite"])
            hf_speeds.append(tokens / seconds["hf"])
            ratios.append(seconds["hf"] / seconds["suite"])
            print(f"batch {batch}, cycle {cycle + 1}/{cycles}: suite {suite_speeds[-1]:,.0f} tokens/s, "
                  f"Hugging Face {hf_speeds[-1]:,.0f}", flush=True)  # fmt: skip
        results[f"batch_{batch}"] = {
            "suite_tokens_per_second": statistics.median(suite_speeds),
            "hugging_face_tokens_per_second": statistics.median(hf_speeds),
            "ratio_median": statistics.median(ratios),
            "ratio_quartiles": statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else ratios * 2,
        }
    return results


def kv_cache() -> dict[str, dict]:
    head_size = SHAPE["dim"] // SHAPE["n_heads"]
    rows = {}
    for name, (overrides, kv_heads, kv_layers) in KV_SCHEMES.items():
        measured = sum(kv_cache_bytes(suite_model(*overrides), tokens=16)) // 16
        rows[name] = {"measured": measured, "formula": 2 * 4 * kv_heads * head_size * kv_layers}
    return rows


def render(decode: dict, kv: dict, met: bool) -> str:
    lines = [
        "# Inference benchmark (CPU)",
        "",
        f"`arch=gpt`, {SHAPE['n_layers']} layers, D = {SHAPE['dim']}, {SHAPE['n_heads']} heads, context {CONTEXT}, "
        f"{VOCAB} tokens; greedy decoding with a KV cache from a one-token prompt to the full context, both models "
        f"in the same precision. CPU: {cpu_model()} ({' and '.join(cpu_features()) or 'no bf16 matmul feature'}). "
        f"Written by `benchmarks/bench_inference.py` (`make bench`).",
        "",
        "| precision | batch | suite tokens/s | Hugging Face GPT-2 tokens/s | suite / HF (median, quartiles) "
        "| target |",
        "|---|---|---|---|---|---|",
    ]
    for batch, row in decode.items():
        low, high = row["ratio_quartiles"]
        precision, _, size = batch.rpartition("batch_")
        lines.append(f"| {precision.rstrip('_') or 'fp32'} | {size} | {row['suite_tokens_per_second']:,.0f} "
                     f"| {row['hugging_face_tokens_per_second']:,.0f} | {row['ratio_median']:.2f}× "
                     f"({low:.2f}–{high:.2f}) | ≥ {TARGET:g}× |")  # fmt: skip
    lines += ["", "| scheme | KV-cache bytes per token (measured) | formula | equal |", "|---|---|---|---|"]
    for name, row in kv.items():
        equal = "yes" if row["measured"] == row["formula"] else "**no**"
        lines.append(f"| {name} | {row['measured']:,} | {row['formula']:,} | {equal} |")
    lines += ["", f"All targets met: {'yes' if met else 'no'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "bench")
    args = parser.parse_args()
    tune_cpu_process()
    torch.manual_seed(0)
    decode, kv = decoding(args.cycles), kv_cache()
    met = all(row["ratio_median"] >= TARGET for row in decode.values()) and all(
        row["measured"] == row["formula"] for row in kv.values()
    )
    write_benchmark(args.out, "inference", {"decoding": decode, "kv_cache_bytes_per_token": kv, "met": met},
                    render(decode, kv, met))  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
