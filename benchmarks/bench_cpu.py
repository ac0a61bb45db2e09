"""CPU speed and memory benchmark (`make bench`): every figure measured side by side in one run.

- Throughput of `arch=bert size=tinybert sharing=none` (vocabulary 30,522, sequence 128, batch 32, fp32) against
  Hugging Face `BertForMaskedLM` of the same shape, both in the same plain PyTorch training loop: Hugging Face
  with `torch.optim.AdamW` as a plain loop has it (and once more with flushed denormals and fused AdamW), the
  suite with the optimizer it trains with. Also its model FLOPs utilisation against the fp32 matrix-multiply
  peak this run measures.
- `shared_qkv` and `partial_qk ratio=0.9` against `none`: the speed-up their FLOP savings predict and the one
  measured.
- Memory: peak RSS per configuration, AdamW state and checkpoint bytes against unique parameters.
- The suite's own Lightning pretraining of the same model on Wikipedia: tokens/s and the share of step time
  spent waiting for data.

Each configuration trains in its own process (a clean peak RSS, no shared caches), in alternating rounds so that
drift of the machine affects all alike; each configuration's fastest round counts (noise only slows a run).
Exits 1 when a CPU target is missed.

python benchmarks/bench_cpu.py [--rounds 3] [--steps 8] [--out results/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from sharebench.model import LanguageModel, ModelConfig
from sharebench.paths import PROJECT_ROOT, atomic_write_bytes, atomic_write_json
from sharebench.record import hardware, measure_matmul_peak, package_versions

SHAPE = {"vocab_size": 30522, "n_layers": 4, "dim": 312, "n_heads": 12, "ffn_dim": 1200}  # size=tinybert
SEQ_LEN, BATCH, MASKED = 128, 32, 0.15
SCHEMES = {"none": None, "shared_qkv": 1.0, "partial_qk": 0.9}
LR = 1e-4
TARGETS = {"vs_hugging_face": 4.0, "mfu": 0.60, "checkpoint_overhead": 0.02, "data_wait_fraction": 0.05}


def suite_model(scheme: str, ratio: float | None) -> LanguageModel:
    from sharebench.sharing import scheme_class

    cfg = ModelConfig(**SHAPE, max_positions=512, dropout=0.1, attention_dropout=0.1)
    return LanguageModel(cfg, partial(scheme_class(scheme), ratio=ratio), scheme)


def hugging_face_model() -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["dim"], num_hidden_layers=SHAPE["n_layers"],
                        num_attention_heads=SHAPE["n_heads"], intermediate_size=SHAPE["ffn_dim"])  # fmt: skip
    return BertForMaskedLM(config)


def batches(count: int) -> list[dict[str, torch.Tensor]]:
    """Random tokens with 15 % of positions predicted (labels elsewhere -100), as masked-LM batches."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for _ in range(count):
        ids = torch.randint(1000, SHAPE["vocab_size"], (BATCH, SEQ_LEN), generator=generator)
        labels = ids.clone()
        labels[torch.rand(ids.shape, generator=generator) >= MASKED] = -100
        made.append({"input_ids": ids, "labels": labels})
    return made


def train_steps(
    kind: str, scheme: str, ratio: float | None, steps: int, warmup: int, flush_denormal: bool, fused_adamw: bool
) -> dict:
    """One configuration in a plain training loop (in this process); seconds per step and memory facts."""
    torch.manual_seed(0)
    torch.set_flush_denormal(flush_denormal)
    if kind == "hugging_face":
        model = hugging_face_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=fused_adamw)
    else:
        from sharebench.pretrain import adamw_with_schedule

        model = suite_model(scheme, ratio)  # with the optimizer the suite trains it with
        optimizer = adamw_with_schedule(model, LR, 0.01, 0, warmup + steps, "constant", 1.0)["optimizer"]
    model.train()
    data = batches(4)
    times = []
    for step in range(warmup + steps):
        batch = data[step % len(data)]
        start = time.perf_counter()
        loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    result = {
        "seconds_per_step": statistics.median(times),
        "tokens_per_second": BATCH * SEQ_LEN / statistics.median(times),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "optimizer_state_bytes": sum(
            t.numel() * t.element_size()
            for s in optimizer.state.values()
            for t in s.values()
            if torch.is_tensor(t) and t.dim() > 0
        ),  # fmt: skip
        "loss": loss.item(),
    }
    if kind == "suite":
        from sharebench.checkpoint import save_pretrained, scheme_target
        from sharebench.sharing import scheme_class

        counts = model.parameter_counts()
        with tempfile.TemporaryDirectory() as folder:
            result["checkpoint_bytes"] = save_pretrained(model, folder, scheme_target(scheme_class(scheme)), ratio)
        result.update(unique_parameters=counts.unique, flops_per_token=model.flops_per_token(SEQ_LEN, MASKED))
    return result


def in_subprocess(name: str, **settings: object) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(settings)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def hugging_face_flops_per_token() -> int:
    """The same count as `LanguageModel.flops_per_token`, for a model that computes logits at every position."""
    d, f, layers, vocab = SHAPE["dim"], SHAPE["ffn_dim"], SHAPE["n_layers"], SHAPE["vocab_size"]
    macs = layers * (4 * d * d + 2 * d * f) + 2 * layers * SEQ_LEN * d + d * d + d * vocab
    return 6 * macs


def suite_pretraining(steps: int) -> dict:
    """The suite's Lightning pretraining of the same model on Wikipedia (bert-base-uncased vocabulary)."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = ["size=tinybert", "data.tokenizer.kind=vocab_file", "data.max_train_chars=3000000",
                     f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=2",
                     "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                     f"output_root={folder}", "hydra.run.dir=" + folder + "/run"]  # fmt: skip
        result = subprocess.run([sys.executable, "train.py", *overrides], capture_output=True, text=True,
                                cwd=PROJECT_ROOT, timeout=1800)  # fmt: skip
        record_path = Path(folder) / "run" / "run.json"
        if result.returncode != 0 or not record_path.is_file():
            raise RuntimeError(f"the suite's pretraining run failed:\n{result.stderr[-3000:]}")
        record = json.loads(record_path.read_text())
    return {**record["speed"], "checkpoint_bytes": record["checkpoint"]["bytes"],
            "unique_parameters": record["parameters"]["unique"],
            "peak_rss_bytes": record["peak_memory"]["rss_bytes"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_steps(**json.loads(args.worker))))
        return 0

    reference = {"kind": "hugging_face", "scheme": "none", "ratio": None}
    configurations = {
        "hugging_face": {**reference, "flush_denormal": False, "fused_adamw": False},
        # The two generic speed-ups the suite also uses, given to Hugging Face: what remains is the model's own.
        "hugging_face+flush_denormal+fused_adamw": {**reference, "flush_denormal": True, "fused_adamw": True},
        **{scheme: {"kind": "suite", "scheme": scheme, "ratio": ratio, "flush_denormal": True, "fused_adamw": True}
           for scheme, ratio in SCHEMES.items()},
    }  # fmt: skip
    rounds: dict[str, list[dict]] = {name: [] for name in configurations}
    for round_index in range(args.rounds):
        for name, settings in configurations.items():
            rounds[name].append(in_subprocess(name, steps=args.steps, warmup=2, **settings))
            print(f"round {round_index + 1}: {name}: {rounds[name][-1]['tokens_per_second']:,.0f} tokens/s", flush=True)
    measured = {
        name: min(runs, key=lambda r: r["seconds_per_step"]) | {"rounds": [r["tokens_per_second"] for r in runs]}
        for name, runs in rounds.items()
    }
    peak = max(measure_matmul_peak(torch.device("cpu"), seconds=2.0) for _ in range(3))
    pretraining = suite_pretraining(steps=20)

    none = measured["none"]
    figures = {
        "peak_matmul_flops": peak,
        "vs_hugging_face": none["tokens_per_second"] / measured["hugging_face"]["tokens_per_second"],
        "vs_hugging_face_with_flush_denormal_and_fused_adamw": none["tokens_per_second"]
        / measured["hugging_face+flush_denormal+fused_adamw"]["tokens_per_second"],
        "mfu": none["flops_per_token"] * none["tokens_per_second"] / peak,
        "hugging_face_mfu": hugging_face_flops_per_token() * measured["hugging_face"]["tokens_per_second"] / peak,
        "schemes": {},
        "data_wait_fraction": pretraining["data_wait_fraction"],
        "suite_pretraining": pretraining,
    }
    for scheme in SCHEMES:
        result = measured[scheme]
        saved_flops = 1 - result["flops_per_token"] / none["flops_per_token"]
        figures["schemes"][scheme] = {
            "predicted_speedup": none["flops_per_token"] / result["flops_per_token"],
            # Removing FLOPs that ran at the full matmul peak from a step that runs at `mfu` of it saves
            # mfu × their share of the step's time: this is the most the removal can give.
            "speedup_if_removed_flops_ran_at_peak": 1 / (1 - figures["mfu"] * saved_flops),
            "measured_speedup": result["tokens_per_second"] / none["tokens_per_second"],
            "unique_parameters": result["unique_parameters"],
            "optimizer_state_over_unique_bytes": result["optimizer_state_bytes"] / (8 * result["unique_parameters"]),
            "checkpoint_overhead": result["checkpoint_bytes"] / (4 * result["unique_parameters"]) - 1,
            "peak_rss_bytes": result["peak_rss_bytes"],
        }
    checks = {
        "tokens/s ≥ 4× Hugging Face BertForMaskedLM": figures["vs_hugging_face"] >= TARGETS["vs_hugging_face"],
        "MFU ≥ 60 % of the measured fp32 matmul peak": figures["mfu"] >= TARGETS["mfu"],
        "data wait < 5 % of step time": figures["data_wait_fraction"] < TARGETS["data_wait_fraction"],
    }
    for scheme, facts in figures["schemes"].items():
        checks[f"checkpoint of {scheme} within 2 % of unique parameter bytes"] = (
            abs(facts["checkpoint_overhead"]) <= TARGETS["checkpoint_overhead"]
        )
        # Two fp32 moments per unique parameter that trains (MLM pretraining leaves the pooler unused).
        checks[f"AdamW state of {scheme} follows unique parameters"] = (
            0.98 <= facts["optimizer_state_over_unique_bytes"] <= 1
        )
        if scheme != "none":
            checks[f"{scheme} speed-up ≥ its FLOP saving"] = facts["measured_speedup"] >= facts["predicted_speedup"]
    report = render(figures, measured, checks)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    facts = {"command": "make bench", "hardware": hardware(), "packages": package_versions(),
             "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(),
             "figures": figures, "configurations": measured, "checks": checks, "targets": TARGETS}  # fmt: skip
    atomic_write_json(args.out / "cpu.json", facts)
    atomic_write_bytes(args.out / "cpu.md", report.encode())
    return 0 if all(checks.values()) else 1


def render(figures: dict, measured: dict, checks: dict) -> str:
    lines = [
        f"CPU benchmark: tinybert shape (4/312/12/1200), vocabulary {SHAPE['vocab_size']:,}, sequence {SEQ_LEN}, "
        f"batch {BATCH}, fp32, {torch.get_num_threads()} threads; fp32 matmul peak measured: "
        f"{figures['peak_matmul_flops'] / 1e9:.1f} GFLOP/s",
        "",
        "| configuration | tokens/s | s/step | peak RSS MiB |",
        "|---|---|---|---|",
    ]
    for name, result in measured.items():
        lines.append(f"| {name} | {result['tokens_per_second']:,.0f} | {result['seconds_per_step']:.3f} "
                     f"| {result['peak_rss_bytes'] / 2**20:,.0f} |")  # fmt: skip
    lines += [
        "",
        f"- suite (none) vs Hugging Face BertForMaskedLM, plain loop: {figures['vs_hugging_face']:.2f}× "
        "(vs Hugging Face with flush-denormal and fused AdamW too: "
        f"{figures['vs_hugging_face_with_flush_denormal_and_fused_adamw']:.2f}×)",
        f"- MFU: suite {figures['mfu']:.1%}, Hugging Face {figures['hugging_face_mfu']:.1%}",
        f"- suite's Lightning pretraining on Wikipedia: {figures['suite_pretraining']['tokens_per_second']:,.0f} "
        f"tokens/s, MFU {figures['suite_pretraining']['mfu']:.1%}, waiting for data "
        f"{figures['data_wait_fraction']:.2%} of step time",
        "",
        "| scheme | unique params | predicted speed-up (FLOPs) | if the removed FLOPs ran at peak "
        "| measured speed-up | checkpoint vs 4 B/param | AdamW state vs 8 B/param | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scheme, facts in figures["schemes"].items():
        lines.append(
            f"| {scheme} | {facts['unique_parameters']:,} | {facts['predicted_speedup']:.3f}× "
            f"| {facts['speedup_if_removed_flops_ran_at_peak']:.3f}× "
            f"| {facts['measured_speedup']:.3f}× | {facts['checkpoint_overhead']:+.3%} "
            f"| {facts['optimizer_state_over_unique_bytes']:.3f} | {facts['peak_rss_bytes'] / 2**20:,.0f} |"
        )
    lines += ["", *(f"- [{'x' if ok else ' '}] {check}" for check, ok in checks.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("SHAREBENCH_DATA", str(PROJECT_ROOT.parent / "shared" / "data"))
    sys.exit(main())
