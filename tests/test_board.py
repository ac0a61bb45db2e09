"""`sharebench board add`: a configuration joins a small committed board; only its own runs and its twin's run,
the board's records stay as they were, and joining is refused where the result would not be comparable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sharebench.board import add
from sharebench.errors import ConfigError
from sharebench.paths import PROJECT_ROOT
from sharebench.report.collect import collect
from sharebench.run.environment import training_code, training_files
from tests.conftest import FIXTURE_DATA, run_in_process
from tests.test_sweeps import FAST

SEEDS = "seed=0,1"
CONFIGURATION = ["arch=gpt", "data=wikipedia", "layers=none"]


def settings(cache_dir: Path) -> list[str]:
    """The tiny board's settings beside its recipe, which a configuration joining it gives too."""
    return [*(o for o in FAST if not o.startswith("seed=")), f"data_root={FIXTURE_DATA}", f"cache_dir={cache_dir}"]


def sweep(output_root: Path, cache_dir: Path, *overrides: str) -> None:
    result = run_in_process(["train.py", "-m", "experiment=leaderboard", "hydra.sweeper.grids=[{}]",
                             *settings(cache_dir), *CONFIGURATION, "iso_compute=false", SEEDS,
                             f"output_root={output_root}", *overrides], PROJECT_ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def records(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("run.json")}


@pytest.fixture(scope="module")
def made(tmp_path_factory, cache_dir) -> Path:
    """A board of the unshared GPT and gqa beside its iso-parameter twin, 2 seeds each."""
    folder = tmp_path_factory.mktemp("made")
    sweep(folder / "runs", cache_dir, "sharing=none,gqa", "iso_baseline=false")
    sweep(folder / "runs", cache_dir, "sharing=gqa", "iso_baseline=true")
    collect([folder / "runs"], folder / "board")
    return folder / "board"


@pytest.fixture
def board(made, tmp_path) -> Path:
    """A copy of the board for a test to change: the board holds its records' copies, not the runs' folders."""
    return Path(shutil.copytree(made, tmp_path / "board"))


def test_the_training_code_is_what_a_run_imports_and_the_schemes():
    names = {p.relative_to(PROJECT_ROOT / "src").as_posix() for p in training_files()}
    assert {"sharebench/train/pretrain.py", "sharebench/model/transformer.py", "sharebench/sharing/mhe.py",
            "sharebench/layers/takase.py", "sharebench/data/corpora.py",
            "hydra_plugins/sharebench_sweeper/__init__.py"} <= names  # fmt: skip
    assert not names & {
        "sharebench/report/collect.py",
        "sharebench/report/plots.py",
        "sharebench/board.py",
        "sharebench/cli.py",
    }
    assert len(training_code()["training_sha256"]) == 64


@pytest.mark.slow
def test_a_configuration_joins_the_board_running_only_itself_and_its_twin(board, tmp_path, cache_dir):
    before = records(board / "runs")
    assert len(before) == 6
    said = add(board, [*CONFIGURATION, "sharing=mqa", *settings(cache_dir)], tmp_path / "added")
    assert said == f"{board} collected again with the runs in {(tmp_path / 'added').resolve()}"
    added = [json.loads(text) for text in records(tmp_path / "added").values()]
    assert sorted((r["sharing"]["name"], r["config"]["iso_baseline"], r["seed"]) for r in added) == [
        ("mqa", False, 0), ("mqa", False, 1), ("none", True, 0), ("none", True, 1)]  # fmt: skip
    after = records(board / "runs")
    assert {name: text for name, text in after.items() if name in before} == before  # nothing else re-ran
    assert len(after) == 10
    table = (board / "table.md").read_text()
    assert "| sharing=mqa,iso_baseline=false |" in table and "| sharing=mqa,iso_baseline=true |" in table

    again = add(board, [*CONFIGURATION, "sharing=gqa", *settings(cache_dir)], tmp_path / "again")
    assert again.splitlines() == ["on the board already: iso_baseline=false", "on the board already: iso_baseline=true",
                                  "nothing to run: the board holds this configuration and its twins"]  # fmt: skip
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_joining_is_refused_where_it_would_not_compare_and_other_code_is_marked(board, tmp_path, cache_dir):
    given = [*CONFIGURATION, "sharing=symmetric", *settings(cache_dir)]
    other = r"^board add: the recipe composes another configuration than the board's sharing=none"
    with pytest.raises(ConfigError, match=other + ": trainer.max_steps=8 here, 4 on the board"):
        add(board, [*given, "trainer.max_steps=8"], tmp_path / "added", dry_run=True)
    with pytest.raises(ConfigError, match="board add chooses the twins and where runs go itself"):
        add(board, [*given, "iso_baseline=true"], tmp_path / "added", dry_run=True)

    one = next((board / "runs").rglob("run.json"))
    record = json.loads(one.read_text())
    record["code"]["training_sha256"] = "0" * 64  # as if another version of the suite had trained it
    one.write_text(json.dumps(record))
    code = r"the training code here may not be the board's \(records trained with other training code \(fingerprint\)"
    with pytest.raises(ConfigError, match=code + r" than this\); --accept-code"):
        add(board, given, tmp_path / "added", dry_run=True)
    planned = add(board, given, tmp_path / "added", accept_code=True, dry_run=True).splitlines()
    assert planned[-1] == "dry run: nothing run" and planned[0].endswith("+experiment.added_with_other_code=true")
    assert "hydra.sweeper.grids=[{iso_baseline:false},{iso_baseline:true}]" in planned[0]

    record["config"]["experiment"]["added_with_other_code"] = True  # what such a joined run records
    one.write_text(json.dumps(record))
    table = collect([board / "runs"], None)
    assert "‡" in table and "‡ joined by `sharebench board add --accept-code`: trained by other code" in table
