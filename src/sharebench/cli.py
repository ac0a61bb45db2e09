"""The `sharebench` command: parameter accounting without training, run comparisons and sweep tables.

sharebench params arch=bert size=bert-base sharing=shared_qkv
sharebench compare outputs/runs/*/seed=0
sharebench collect outputs/runs --out results/my_sweep
sharebench convert <checkpoint> <out> --to headwise --ratio 0.3
sharebench generate outputs/runs/<run>/seed=0 --prompt "ROMEO:" --tokens 200
sharebench infer outputs/runs/<run>/seed=0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from sharebench.errors import ConfigError, RatioNotTaken, RunInterrupted

SWEEP_BASELINES_ENV = "SHAREBENCH_SWEEP_BASELINES"

# Hydra's command-line flags that take a value; everything else not starting with '-' is an override.
HYDRA_VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Bad input ends with one line naming the problem and exit status 2 (SHAREBENCH_DEBUG=1: the traceback)."""
    try:
        yield
    except ConfigError as error:
        if os.environ.get("SHAREBENCH_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """A run stopped by SIGTERM or SIGINT ends with one line and the signal's exit status (a sweep stops with
    it; run the same command again to resume it and start the runs that remain)."""
    try:
        yield
    except RunInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save yet
        print("interrupted: SIGINT before training started; the same command starts again", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


def task_overrides(argv: Sequence[str]) -> list[str]:
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in HYDRA_VALUE_FLAGS
        elif not arg.startswith(("hydra.", "hydra/", "+hydra")):
            overrides.append(arg)
    return overrides


def run_key(overrides: Sequence[str]) -> str:
    return ",".join(sorted(overrides))


def preflight(argv: Sequence[str]) -> None:
    """Validate every run a command line describes (each combination of a sweep) before any starts.

    In a sweep such as `sharing=none,partial_qk ratio=0.5,0.9`, a scheme that takes no ratio meets ratios it
    cannot use: its runs differ only in a ratio it ignores, so the first trains (without a ratio) and the
    others are skipped. Which run stands for which is handed to the jobs in SWEEP_BASELINES_ENV."""
    from sharebench.config import check_overrides, compose, validate

    if any(arg in ("--help", "-h", "--hydra-help") for arg in argv):
        return
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    baselines: dict[str, str] = {}
    first_of_group: dict[str, str] = {}
    with exit_on_config_error():
        given = task_overrides(argv)
        for overrides in check_overrides(add_sweeper_params(given) if multirun else given):
            try:
                validate(compose(overrides))
            except RatioNotTaken:
                if not multirun:
                    raise
                without_ratio = [o for o in overrides if not o.startswith("ratio=")]
                validate(compose(without_ratio))
                representative = first_of_group.setdefault(run_key(without_ratio), run_key(overrides))
                baselines[run_key(overrides)] = representative
    os.environ[SWEEP_BASELINES_ENV] = json.dumps(baselines)


def sweep_baseline(job_overrides: Sequence[str]) -> str | None:
    """For a sweep job whose scheme takes no ratio: the key of the job that trains that baseline."""
    return json.loads(os.environ.get(SWEEP_BASELINES_ENV, "{}")).get(run_key(job_overrides))


def params(overrides: Sequence[str]) -> dict:
    """Parameter accounting and FLOPs of a configuration, built on the meta device (no memory, no data)."""
    import torch

    from sharebench.config import build_model, check_overrides, compose, predicted_fraction, validate
    from sharebench.data import tokenizer_vocab_size

    runs = check_overrides(overrides)
    if len(runs) != 1:
        raise ConfigError("params takes one configuration, not a sweep (no comma-separated values)")
    cfg = compose(runs[0])
    validate(cfg)
    vocab_size = tokenizer_vocab_size(cfg.data, cfg.arch.objective)
    with torch.device("meta"):
        model = build_model(cfg, vocab_size)
    return {
        **model.parameter_counts().to_dict(),
        "flops_per_token": model.flops_per_token(cfg.data.seq_len, predicted_fraction(cfg)),
        "vocab_size": vocab_size,
        "sharing": model.sharing_name,
    }


def compare(run_dirs: Sequence[str]) -> str:
    """A Markdown table of the runs found under the given folders: unique parameters, validation loss and speed."""
    from sharebench.record import RECORD_NAME, read_record

    records = sorted({(p.parent, Path(folder)) for folder in run_dirs for p in Path(folder).rglob(RECORD_NAME)})
    if not records:
        raise ConfigError(f"compare: no {RECORD_NAME} found under {', '.join(map(str, run_dirs))}")
    lines = [
        "| run | status | sharing | ratio | unique params | val loss | val ppl | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run_dir, folder in records:
        try:
            record = read_record(run_dir)
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"compare: {run_dir} has no readable run.json ({error})") from error
        metrics, speed = record.get("metrics", {}), record.get("speed", {})
        sharing = record.get("sharing", {})

        def cell(value: object, spec: str = "") -> str:
            return "—" if value is None else format(value, spec)

        name = run_dir.relative_to(folder) if run_dir != folder else run_dir
        lines.append(
            f"| {name} | {record['status']} | {sharing.get('name')} | {cell(sharing.get('ratio'), 'g')} "
            f"| {cell(record.get('parameters', {}).get('unique'), ',')} | {cell(metrics.get('val_loss'), '.4f')} "
            f"| {cell(metrics.get('val_ppl'), '.2f')} | {cell(speed.get('tokens_per_second'), ',.0f')} |"
        )
    return "\n".join(lines)


def generate(run: Path, prompt: str, tokens: int, temperature: float, top_k: int, seed: int) -> str:
    """The prompt and what the run's decoder writes after it."""
    import torch

    from sharebench.checkpoint import load_pretrained
    from sharebench.tokenizer import load_run_tokenizer

    if tokens < 1 or temperature < 0 or top_k < 1:
        raise ConfigError(f"generate: --tokens and --top-k must be ≥ 1, --temperature ≥ 0; got {tokens}, {top_k}, "
                          f"{temperature}")  # fmt: skip
    model = load_pretrained(run)
    if not model.config.causal:
        raise ConfigError(f"generate: {run} holds an encoder (arch=bert); only decoders (arch=gpt) write text")
    tokenizer = load_run_tokenizer(run)
    try:
        (ids,) = tokenizer.encode_batch([prompt])
    except KeyError as error:
        raise ConfigError(f"generate: the prompt has a character the model never saw: {error}") from None
    if not ids:
        raise ConfigError("generate: the prompt is empty once tokenised; give --prompt some text")
    generator = torch.Generator().manual_seed(seed)
    written = model.generate(torch.tensor([ids]), tokens, temperature, top_k, generator=generator)
    return tokenizer.decode(written[0].tolist())


def infer(run: Path, seq_len: int | None) -> dict:
    """Inference costs of a run's or a checkpoint's model (sharebench.inference.inference_costs)."""
    from sharebench.checkpoint import load_pretrained
    from sharebench.inference import inference_costs
    from sharebench.record import RECORD_NAME

    model = load_pretrained(run)
    if seq_len is None and (run / RECORD_NAME).is_file():
        seq_len = json.loads((run / RECORD_NAME).read_text())["config"]["data"]["seq_len"]
    return inference_costs(model, seq_len or min(model.config.max_positions, 128))


def add_sweeper_params(overrides: list[str]) -> list[str]:
    """The overrides plus the grid of `hydra.sweeper.params` that the composed config (an experiment or a
    sweep file) defines; the command line wins over it, as in Hydra's basic sweeper."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from sharebench.config import check_overrides
    from sharebench.paths import CONFIG_DIR

    first = check_overrides(overrides)[0]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=first, return_hydra_config=True)
    except Exception:  # validation composes again and names the problem
        return overrides
    grid = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(grid, resolve=False) if grid is not None else {}
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return overrides + [f"{key}={value}" for key, value in params.items() if key.lstrip("+~") not in given]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sharebench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    params_parser = commands.add_parser("params", help="parameter accounting of a configuration, as JSON")
    params_parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    compare_parser = commands.add_parser("compare", help="a Markdown table comparing finished runs")
    compare_parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders holding runs")
    collect_parser = commands.add_parser(
        "collect", help="tables (Markdown, CSV, LaTeX) and plots of a folder of runs: mean and 95 %% CI over seeds"
    )
    collect_parser.add_argument("folders", nargs="+", type=Path, help="folders holding runs (searched recursively)")
    collect_parser.add_argument("--out", type=Path, help="write table.md/.csv/.tex, plots and run records here")
    collect_parser.add_argument("--format", choices=("md", "csv", "latex"), default="md", help="what to print")
    collect_parser.add_argument(
        "--iso", action="store_true", help="pair each shared configuration with the closest-sized unshared one"
    )
    collect_parser.add_argument("--no-plots", action="store_true", help="with --out: tables and records only")
    convert_parser = commands.add_parser(
        "convert", help="apply sharing to a trained model (suite or Hugging Face BERT) and save it as a checkpoint"
    )
    convert_parser.add_argument("source", type=Path, help="a finished run's folder or a Hugging Face BERT folder")
    convert_parser.add_argument("out", type=Path, help="the folder the converted checkpoint is written to")
    convert_parser.add_argument("--to", required=True, help="headwise (DirectShare) | gqa | recursive_lora")
    convert_parser.add_argument("--ratio", type=float, required=True, help="the share ratio of the new sharing")
    convert_parser.add_argument("--rank", type=int, default=8, help="recursive_lora: the rank of each LoRA")
    generate_parser = commands.add_parser("generate", help="print text a trained decoder writes after a prompt")
    generate_parser.add_argument("run", type=Path, help="a finished run's folder (arch=gpt)")
    generate_parser.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    generate_parser.add_argument("--tokens", type=int, default=200, help="how many tokens to write")
    generate_parser.add_argument("--temperature", type=float, default=0.8, help="0: always the likeliest token")
    generate_parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens")
    generate_parser.add_argument("--seed", type=int, default=0)
    infer_parser = commands.add_parser(
        "infer", help="inference costs of a run or checkpoint: weights, KV cache per token, tokens/s, peak memory"
    )
    infer_parser.add_argument("run", type=Path, help="a finished run's folder or a converted checkpoint")
    infer_parser.add_argument("--seq-len", type=int, help="context length (default: the run's data.seq_len)")
    args = parser.parse_args(argv)
    with exit_on_config_error():
        if args.command == "generate":
            print(generate(args.run, args.prompt, args.tokens, args.temperature, args.top_k, args.seed))
            return
        if args.command == "infer":
            print(json.dumps(infer(args.run, args.seq_len), indent=2))
            return
        if args.command == "convert":
            from sharebench.convert import convert

            model = convert(args.source, args.out, args.to, args.ratio, args.rank)
            print(json.dumps({"out": str(args.out), **model.parameter_counts().to_dict()}, indent=2))
            return
        if args.command == "params":
            print(json.dumps(params(args.overrides), indent=2))
        elif args.command == "compare":
            print(compare([str(r) for r in args.runs]))
        else:
            from sharebench import collect

            report = collect.collect(args.folders, args.out, args.iso, plots=not args.no_plots)
            if args.format == "md":
                print(report, end="")
            else:
                header, rows = collect.table_rows(collect.find_configurations(args.folders), args.iso)
                print(collect.csv_text(header, rows) if args.format == "csv" else collect.latex(header, rows), end="")
