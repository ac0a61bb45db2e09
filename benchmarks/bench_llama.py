"""Llama benchmark (`make bench`): `arch=llama` at SmolLM2-135M's shape against transformers' `LlamaForCausalLM`.

- The two models are the same weights: a `LlamaForCausalLM` built from SmolLM2-135M's config with random weights
  (no download), and the suite's model read from it (`sharebench.model.llama.from_state`): 30 layers, D = 576, 9 query
  and 3 key/value heads, SwiGLU 1,536, vocabulary 49,152, tied embeddings.
- Training: forward, backward and fused AdamW on random tokens, batch 4 × 256, fp32. Tokens/s, and the MFU of
  each against the fp32 matrix-multiply peak measured in the same cycle (the same FLOPs per token: the same model).
- Decoding: greedy with a KV cache, from a 16-token prompt by 64 tokens, at batch 1 and batch 8, fp32: the
  suite's `generate` against transformers' `generate`.
- One process, the suite's CPU process settings for both (flushed denormals, freed memory kept): the comparison
  is of the models and their loops, not of the process. The two take turns, cycle after cycle, the order
  alternating; a ratio is the median over cycles of the two timings taken within a cycle. Target: ≥ 1× in each.
Exits 1 when a target is missed.

python benchmarks/bench_llama.py [--cycles 8] [--out results/bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from sharebench.model.llama import from_state
from sharebench.model.transformer import LanguageModel
from sharebench.paths import PROJECT_ROOT
from sharebench.run.cpu import cpu_features, tune_cpu_process
from sharebench.run.environment import cpu_model, measure_matmul_peak, write_benchmark

SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
}  # fmt: skip
BATCH, SEQ_LEN = 4, 256
PROMPT, NEW_TOKENS, DECODE_BATCHES = 16, 64, (1, 8)
LR = 1e-4
TARGET = 1.0


def models(shape: dict = SMOLLM2_135M) -> tuple[LanguageModel, torch.nn.Module]:
    """The suite's model and transformers', holding equal weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hugging_face = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation="sdpa"))
    state = {name: tensor.detach().clone() for name, tensor in hugging_face.state_dict().items()}
    return from_state(hugging_face.config.to_dict(), state, "SmolLM2-135M's shape"), hugging_face


class Trainee:
    """A model with its fused AdamW, taking timed training steps on random tokens: each predicts the next token
    at every position but the last (transformers shifts the labels it is given; the suite is given them
    shifted)."""

    def __init__(self, model: torch.nn.Module, shifts_labels: bool) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
        generator = torch.Generator().manual_seed(0)
        self.batches = []
        for _ in range(2):
            ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ_LEN), generator=generator)
            labels = ids if shifts_labels else torch.cat([ids[:, 1:], torch.full((BATCH, 1), -100)], dim=1)
            self.batches.append((ids, labels))
        self.steps = 0

    def step(self) -> float:
        ids, labels = self.batches[self.steps % len(self.batches)]
        start = time.perf_counter()
        self.loss = self.model(input_ids=ids, labels=labels).loss
        self.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return time.perf_counter() - start


def decode_seconds(model: torch.nn.Module, batch: int, hugging_face: bool) -> float:
    return decode(model, batch, hugging_face)[0]


def decode(model: torch.nn.Module, batch: int, hugging_face: bool) -> tuple[float, torch.Tensor]:
    """Seconds to continue a random prompt greedily, and the tokens."""
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    with torch.no_grad():
        if hugging_face:
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)  # fmt: skip
        else:
            out = model.generate(prompt, NEW_TOKENS, temperature=0)
    seconds = time.perf_counter() - start
    assert out.shape == (batch, PROMPT + NEW_TOKENS), out.shape
    return seconds, out


def in_turns(timers: dict[str, Callable[[], float]], cycles: int) -> list[dict[str, float]]:
    """Each cycle's figure of every timer (seconds, or the matmul peak's FLOP/s), after one warm-up cycle, the
    order alternating."""
    for timer in timers.values():
        timer()
    names, timings = list(timers), []
    for cycle in range(cycles):
        order = names if cycle % 2 == 0 else names[::-1]
        timings.append({name: timers[name]() for name in order})
        print(f"cycle {cycle + 1}/{cycles}: " + ", ".join(f"{name} {timings[-1][name]:.4g}" for name in names),
              flush=True)  # fmt: skip
    return timings


def median_and_quartiles(values: list[float]) -> dict:
    return {"median": statistics.median(values), "quartiles": statistics.quantiles(values, n=4)[::2]}


def training(suite: LanguageModel, hugging_face: torch.nn.Module, cycles: int) -> dict:
    """Tokens/s, MFU against the fp32 peak of the same cycle, and their ratio."""
    trainees = {"suite": Trainee(suite, False), "hugging_face": Trainee(hugging_face, True)}
    timers = {name: trainee.step for name, trainee in trainees.items()}
    measure = measure_matmul_peak.__wrapped__  # measured anew each cycle (a suite run measures once a process)
    timers["peak"] = lambda: measure(torch.device("cpu"))  # FLOP/s, not seconds
    timings = in_turns(timers, cycles)
    tokens, flops = BATCH * SEQ_LEN, suite.flops_per_token(SEQ_LEN)
    result = {"flops_per_token": flops, "peak_flops": median_and_quartiles([t["peak"] for t in timings])}
    for name, trainee in trainees.items():
        result[name] = {
            "tokens_per_second": median_and_quartiles([tokens / t[name] for t in timings]),
            "mfu": median_and_quartiles([flops * tokens / t[name] / t["peak"] for t in timings]),
            "loss": trainee.loss.item(),
        }
    result["ratio"] = median_and_quartiles([t["hugging_face"] / t["suite"] for t in timings])
    return result


def decoding(suite: LanguageModel, hugging_face: torch.nn.Module, cycles: int) -> dict:
    """Per batch: tokens/s of each and their ratio."""
    suite.eval(), hugging_face.eval()
    results = {}
    for batch in DECODE_BATCHES:
        timers = {"suite": partial(decode_seconds, suite, batch, False),
                  "hugging_face": partial(decode_seconds, hugging_face, batch, True)}  # fmt: skip
        timings = in_turns(timers, cycles)
        tokens = batch * NEW_TOKENS
        results[f"batch_{batch}"] = {
            **{f"{name}_tokens_per_second": median_and_quartiles([tokens / t[name] for t in timings])
               for name in timers},
            "ratio": median_and_quartiles([t["hugging_face"] / t["suite"] for t in timings]),
        }  # fmt: skip
    return results


def render(train: dict, decode: dict, met: bool) -> str:
    def ratio(row: dict) -> str:
        low, high = row["quartiles"]
        return f"{row['median']:.2f}× ({low:.2f}–{high:.2f})"

    suite, hf = train["suite"], train["hugging_face"]
    lines = [
        "# Llama benchmark (CPU)",
        "",
        f"`arch=llama` at SmolLM2-135M's shape (30 layers, D = 576, 9 query and 3 key/value heads, SwiGLU 1,536, "
        f"vocabulary 49,152, tied embeddings) against transformers' `LlamaForCausalLM` with the same weights, fp32, "
        f"{torch.get_num_threads()} threads. CPU: {cpu_model()} "
        f"({' and '.join(cpu_features()) or 'no bf16 matmul feature'}); fp32 matmul peak measured: "
        f"{train['peak_flops']['median'] / 1e9:.1f} GFLOP/s. Written by `benchmarks/bench_llama.py` (`make bench`).",
        "",
        f"Training, batch {BATCH} × {SEQ_LEN}, fused AdamW, {train['flops_per_token'] / 1e6:,.0f} MFLOP per token:",
        "",
        "| model | tokens/s | MFU | final loss |",
        "|---|---|---|---|",
        f"| suite | {suite['tokens_per_second']['median']:,.0f} | {suite['mfu']['median']:.1%} | {suite['loss']:.4f} |",
        f"| transformers | {hf['tokens_per_second']['median']:,.0f} | {hf['mfu']['median']:.1%} | {hf['loss']:.4f} |",
        "",
        f"- suite / transformers: {ratio(train['ratio'])}, target ≥ {TARGET:g}×",
        "",
        f"Greedy decoding with a KV cache, a {PROMPT}-token prompt continued by {NEW_TOKENS} tokens:",
        "",
        "| batch | suite tokens/s | transformers tokens/s | suite / transformers (median, quartiles) | target |",
        "|---|---|---|---|---|",
    ]
    for batch, row in decode.items():
        lines.append(f"| {batch.removeprefix('batch_')} | {row['suite_tokens_per_second']['median']:,.0f} "
                     f"| {row['hugging_face_tokens_per_second']['median']:,.0f} | {ratio(row['ratio'])} "
                     f"| ≥ {TARGET:g}× |")  # fmt: skip
    lines += ["", f"All targets met: {'yes' if met else 'no'}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "bench")
    args = parser.parse_args()
    tune_cpu_process()
    suite, hugging_face = models()
    train = training(suite, hugging_face, args.cycles)
    decode = decoding(suite, hugging_face, args.cycles)
    met = train["ratio"]["median"] >= TARGET and all(row["ratio"]["median"] >= TARGET for row in decode.values())
    write_benchmark(args.out, "llama", {"training": train, "decoding": decode, "met": met}, render(train, decode, met))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
