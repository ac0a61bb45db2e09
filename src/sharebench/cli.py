"""The `sharebench` command: training, parameter accounting, run comparisons and sweep tables, export.

sharebench train sharing=partial_qk ratio=0.9   (Hydra's command line, as `python train.py`)
sharebench params arch=bert size=bert-base sharing=shared_qkv
sharebench compare outputs/runs/*/seed=0
sharebench collect outputs/runs --out results/my_sweep
sharebench site results/leaderboard results/scaling --out site   (web pages: open site/index.html)
sharebench board add results/leaderboard arch=gpt data=wikipedia sharing=pairwise   (join the board)
sharebench convert <checkpoint> <out> --to headwise --ratio 0.3
sharebench generate outputs/runs/<run>/seed=0 --prompt "ROMEO:" --tokens 200
sharebench infer outputs/runs/<run>/seed=0
sharebench export outputs/runs/<run>/seed=0 my-model   (a Hugging Face folder)
sharebench data download wikipedia glue --to mirror   (SHAREBENCH_DATA=mirror)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sharebench.errors import ConfigError, exit_on_config_error


def params(overrides: Sequence[str]) -> dict:
    """Parameter accounting and FLOPs of a configuration, built on the meta device (no memory, no data)."""
    import torch

    from sharebench.data.corpora import tokenizer_vocab_size
    from sharebench.run.build import build_model
    from sharebench.run.composing import compose
    from sharebench.run.sweep import check_overrides
    from sharebench.run.validation import validate

    runs = check_overrides(overrides)
    if len(runs) != 1:
        raise ConfigError("params takes one configuration, not a sweep (no comma-separated values)")
    spec = validate(compose(runs[0]), data=False)
    try:
        vocab_size = tokenizer_vocab_size(spec.data, spec.arch.objective)
    except ConfigError as error:
        raise ConfigError(f"params: the {spec.data.tokenizer.kind} vocabulary is read off the data: {error}") from None
    with torch.device("meta"):
        model = build_model(spec, vocab_size)
    return {
        **model.parameter_counts().to_dict(),
        "flops_per_token": model.flops_per_token(spec.data.seq_len, spec.predicted_fraction),
        "vocab_size": vocab_size,
        "sharing": model.sharing_name,
    }


def compare(run_dirs: Sequence[str]) -> str:
    """A Markdown table of the runs found under the given folders, one row per run, each labelled by what tells
    its configuration apart from the others (as in `collect`'s tables): unique parameters, validation loss (the
    curve's sample and the whole split), the whole test split's, beside the unigram loss of its data (what a model
    that learnt no context reaches), speed."""
    from sharebench.report.results import find_configurations, pretraining

    lines = [
        "| run | seed | status | unique params | val loss | whole split | test split | unigram loss | val ppl "
        "| tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for configuration in pretraining(find_configurations(run_dirs)):
        for record in sorted(configuration.records + configuration.failed, key=lambda r: r.get("seed") or 0):
            metrics, speed = record.get("metrics") or {}, record.get("speed") or {}

            def cell(value: object, spec: str = "") -> str:
                return "—" if value is None else format(value, spec)

            lines.append(
                f"| {configuration.label} | {cell(record.get('seed'))} | {record['status']} "
                f"| {cell((record.get('parameters') or {}).get('unique'), ',')} "
                f"| {cell(metrics.get('val_loss'), '.4f')} | {cell(metrics.get('val_loss_full'), '.4f')} "
                f"| {cell(metrics.get('test_loss_full'), '.4f')} "
                f"| {cell(record.get('unigram_val_loss'), '.4f')} "
                f"| {cell(metrics.get('val_ppl'), '.2f')} "
                f"| {cell(speed.get('tokens_per_second'), ',.0f')} |"
            )
    return "\n".join(lines)


def generate(
    run: Path, prompt: str, tokens: int, temperature: float, top_k: int, seed: int, loops: int | None = None
) -> str:
    """The prompt and what the run's decoder writes after it (`loops`: a recurrent-depth core looped so often)."""
    import torch

    from sharebench.data.tokenizer import load_run_tokenizer
    from sharebench.model.checkpoint import load_pretrained

    if tokens < 1 or temperature < 0 or top_k < 1:
        raise ConfigError(f"generate: --tokens and --top-k must be ≥ 1, --temperature ≥ 0; got {tokens}, {top_k}, "
                          f"{temperature}")  # fmt: skip
    model = load_pretrained(run)
    if not model.config.causal:
        raise ConfigError(f"generate: {run} holds an encoder (arch=bert); only decoders (arch=gpt) write text")
    if loops is not None:
        model.loop_core(loops)
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


def infer(run: Path, seq_len: int | None, loops: int | None = None) -> dict:
    """Inference costs of a run's or a checkpoint's model (sharebench.model.inference.inference_costs), its
    recurrent-depth core looped `loops` times where given."""
    from sharebench.model.checkpoint import load_pretrained
    from sharebench.model.inference import inference_costs
    from sharebench.schema import RECORD_NAME, read_record

    model = load_pretrained(run)
    if loops is not None:
        model.loop_core(loops)
    if seq_len is None and (run / RECORD_NAME).is_file():  # a conversion's record has no data to take it from
        seq_len = read_record(run)["config"].get("data", {}).get("seq_len")
    return inference_costs(model, seq_len or min(model.config.max_positions, 128))


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # Hydra parses its own command line
        from sharebench.main import main as train

        sys.argv = ["sharebench train", *argv[1:]]
        train()
        return
    parser = argparse.ArgumentParser(prog="sharebench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="pretrain or fine-tune (Hydra overrides, -m for a sweep; as python train.py)")
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
        "--iso",
        action="store_true",
        help="pair each shared configuration with the closest-sized unshared one (without it: where the runs "
        "include iso_baseline=true twins, each with its own)",
    )
    collect_parser.add_argument("--no-plots", action="store_true", help="with --out: tables and records only")
    collect_parser.add_argument(
        "--margin",
        type=float,
        help="equivalence margin of the main metric: a difference whose 90 %% CI lies inside ±margin is "
        "'equivalent' (default: the recipe's experiment.margin; none: nothing is called equivalent)",
    )
    power_parser = commands.add_parser(
        "power", help="a pilot's power analysis: iso-parameter twins against the unshared model, seeds needed"
    )
    power_parser.add_argument("folders", nargs="+", type=Path, help="folders holding runs (searched recursively)")
    power_parser.add_argument("--family", type=int, default=1, help="tests the board corrects for (Holm)")
    power_parser.add_argument("--target", type=float, default=0.02, help="the minimal detectable effect wanted")
    power_parser.add_argument("--plateau", type=float, default=0.1, help="nats below the unigram loss that leave it")
    power_parser.add_argument("--rates", type=int, default=3, help="rates a board's learning-rate search tries")
    power_parser.add_argument("--search-seeds", type=int, default=2, help="seeds the search runs at each rate")
    site_parser = commands.add_parser(
        "site", help="web pages of results folders (boards, interactive plots, READMEs) that open from disk"
    )
    site_parser.add_argument("folders", nargs="+", type=Path, help="folders `collect --out` wrote (results/<name>)")
    site_parser.add_argument("--out", type=Path, required=True, help="the site's folder (index.html in it)")
    board_parser = commands.add_parser("board", help="join a committed board without re-running it")
    board_commands = board_parser.add_subparsers(dest="board_command", required=True)
    add_parser = board_commands.add_parser(
        "add", help="run one configuration (its search, seeds and twins) under a board's recipe, then collect it in"
    )
    add_parser.add_argument("board", type=Path, help="a folder `collect --out` wrote (results/leaderboard)")
    add_parser.add_argument("overrides", nargs="+", help="the configuration, as for train.py (arch=gpt sharing=…)")
    add_parser.add_argument("--runs", type=Path, help="where its runs go (default: outputs/board-add/<board>)")
    add_parser.add_argument(
        "--accept-code", action="store_true", help="join although the training code differs (the row is marked)"
    )
    add_parser.add_argument("--dry-run", action="store_true", help="print what would run; run nothing")
    add_parser.add_argument("--site", type=Path, help="then write the site of the results beside the board here")
    upgrade_parser = commands.add_parser(
        "upgrade", help="rewrite the run records and checkpoints below folders in this version's schema"
    )
    upgrade_parser.add_argument("folders", nargs="+", type=Path, help="folders holding runs (searched recursively)")
    convert_parser = commands.add_parser(
        "convert", help="apply sharing to a trained model (suite or Hugging Face BERT) and save it as a checkpoint"
    )
    convert_parser.add_argument(
        "source", type=Path, help="a finished run's folder, a Hugging Face BERT or Llama folder, or a Llama .gguf file"
    )
    convert_parser.add_argument("out", type=Path, help="the folder the converted checkpoint is written to")
    convert_parser.add_argument(
        "--to", required=True, help="headwise (DirectShare) | gqa | recursive_lora | mlkv | basis | drop_layers"
    )
    convert_parser.add_argument("--ratio", type=float, required=True, help="the share ratio of the new sharing")
    convert_parser.add_argument("--rank", type=int, default=8, help="recursive_lora: the rank of each LoRA")
    convert_parser.add_argument("--group", type=int, default=2,
                                help="basis: the consecutive layers that share a basis (within a task: 2)")  # fmt: skip
    generate_parser = commands.add_parser("generate", help="print text a trained decoder writes after a prompt")
    generate_parser.add_argument("run", type=Path, help="a finished run's folder (arch=gpt)")
    generate_parser.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    generate_parser.add_argument("--tokens", type=int, default=200, help="how many tokens to write")
    generate_parser.add_argument("--temperature", type=float, default=0.8, help="0: always the likeliest token")
    generate_parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens")
    generate_parser.add_argument("--seed", type=int, default=0)
    loops_help = "layers=recurrent_depth: loop the core this many times (default: as trained)"
    generate_parser.add_argument("--loops", type=int, help=loops_help)
    infer_parser = commands.add_parser(
        "infer", help="inference costs of a run or checkpoint: weights, KV cache per token, tokens/s, peak memory"
    )
    infer_parser.add_argument("run", type=Path, help="a finished run's folder or a converted checkpoint")
    infer_parser.add_argument("--seq-len", type=int, help="context length (default: the run's data.seq_len)")
    infer_parser.add_argument("--loops", type=int, help=loops_help)
    export_parser = commands.add_parser(
        "export", help="write a finished run's model as a Hugging Face folder that transformers loads"
    )
    export_parser.add_argument("run", type=Path, help="a finished run's folder")
    export_parser.add_argument("folder", type=Path, help="a new or empty folder")
    data_parser = commands.add_parser("data", help="data mirrors for machines without a network")
    data_commands = data_parser.add_subparsers(dest="data_command", required=True)
    download_parser = data_commands.add_parser(
        "download", help="write a local mirror from the hub, in the layout SHAREBENCH_DATA reads"
    )
    download_parser.add_argument(
        "names", nargs="+", help="wikipedia, wikitext2, glue, tinyshakespeare, bert-base-uncased"
    )
    download_parser.add_argument("--to", type=Path, required=True, help="the mirror's folder (SHAREBENCH_DATA)")
    download_parser.add_argument(
        "--max-train-chars", type=int, help="wikipedia: characters of training text, default 100 M (1 %% more held out)"
    )
    args = parser.parse_args(argv)
    with exit_on_config_error():
        if args.command == "export":
            from sharebench.model.export import export

            print(json.dumps(export(args.run, args.folder), indent=2))
            return
        if args.command == "data":
            from sharebench.data.mirror import download

            print(*download(args.names, args.to, args.max_train_chars), sep="\n")
            print(f"use it with SHAREBENCH_DATA={args.to.resolve()}")
            return
        if args.command == "generate":
            print(generate(args.run, args.prompt, args.tokens, args.temperature, args.top_k, args.seed, args.loops))
            return
        if args.command == "infer":
            print(json.dumps(infer(args.run, args.seq_len, args.loops), indent=2))
            return
        if args.command == "convert":
            from sharebench.train.conversion import convert_checkpoint

            model = convert_checkpoint(args.source, args.out, args.to, args.ratio, args.rank, args.group)
            print(json.dumps({"out": str(args.out), **model.parameter_counts().to_dict()}, indent=2))
            return
        if args.command == "power":
            from sharebench.report.power import power_report

            if args.family < 1 or args.target <= 0 or args.plateau < 0 or args.rates < 1 or args.search_seeds < 1:
                raise ConfigError(
                    f"power: --family, --rates and --search-seeds must be ≥ 1, --target > 0 and --plateau ≥ 0; got "
                    f"{args.family}, {args.rates}, {args.search_seeds}, {args.target}, {args.plateau}"
                )
            report = power_report(args.folders, args.family, args.target, args.plateau, args.rates, args.search_seeds)
            print(report, end="")
            return
        if args.command == "board":
            from sharebench.board import add

            runs = args.runs or Path("outputs") / "board-add" / args.board.resolve().name
            print(add(args.board, args.overrides, runs, args.accept_code, args.dry_run))
            if args.site and not args.dry_run:
                from sharebench.report.site import build

                beside = sorted(p.parent for p in args.board.resolve().parent.glob("*/setting.md"))
                print(f"open {build(beside, args.site)}")
            return
        if args.command == "site":
            from sharebench.report.site import build

            print(f"open {build(args.folders, args.out)}")
            return
        if args.command == "upgrade":
            from sharebench.model.checkpoint import upgrade_checkpoints
            from sharebench.run.record import declared_keys
            from sharebench.schema import upgrade_records

            print(upgrade_records(args.folders, declared_keys()))
            print(upgrade_checkpoints(args.folders))
            return
        if args.command == "params":
            print(json.dumps(params(args.overrides), indent=2))
        elif args.command == "compare":
            print(compare([str(r) for r in args.runs]))
        else:
            from sharebench.report import collect

            report = collect.collect(args.folders, args.out, args.iso, plots=not args.no_plots, margin=args.margin)
            if args.format == "md":
                print(report, end="")
            else:
                header, rows, _ = collect.table_rows(collect.find_configurations(args.folders), args.iso, args.margin)
                print(collect.csv_text(header, rows) if args.format == "csv" else collect.latex(header, rows), end="")
