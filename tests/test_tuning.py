"""The learning-rate search (lr_grid): the choice, the grid's extension past a winning edge, the sweep that runs
it, and collect reading the same choice back from the records."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from sharebench.paths import PROJECT_ROOT
from sharebench.report.collect import collect
from sharebench.report.results import find_configurations
from sharebench.tuning import Search, beyond, choose, grid, metric_of
from tests.conftest import run_in_process


def test_grid_is_the_base_rate_times_each_factor_rounded_as_folder_names_show_it():
    assert grid(1e-3, [0.5, 1, 2]) == [0.0005, 0.001, 0.002]
    assert grid(6e-4, [2, 0.5, 1]) == [0.0003, 0.0006, 0.0012]
    assert grid(1 / 3 * 1e-3, [1]) == [0.0003333]


def test_the_lowest_metric_wins_and_a_winner_at_either_end_is_at_the_edge():
    assert choose({0.001: 3.0, 0.002: 2.9, 0.004: 3.1}).at_edge is False
    assert choose({0.001: 3.0, 0.002: 2.9, 0.004: 2.8}) == choose({0.004: 2.8, 0.001: 3.0, 0.002: 2.9})
    assert choose({0.001: 2.0, 0.002: 2.9}).rate == 0.001 and choose({0.001: 2.0, 0.002: 2.9}).at_edge
    assert choose({0.001: math.inf, 0.002: 5.0}).rate == 0.002  # a diverged run loses


def test_the_grid_extends_one_step_beyond_the_edge_that_wins():
    assert beyond([0.0005, 0.001, 0.002], 0.002) == 0.004
    assert beyond([0.0005, 0.001, 0.002], 0.0005) == 0.00025


def search(extend: int = 2) -> Search:
    return Search(["sharing=none"], ["0", "1", "2"], 1e-3, [0.5, 1, 2], extend, "val_loss_full")


def run_grid(found: Search, loss) -> list[float]:
    """Feed a search the metric `loss(rate)` (or `loss(rate, seed)`) until it has no run left to try; the rates in
    the order tried, once per searching seed."""
    tried = []
    while runs := found.next_runs():
        for rate, seed, overrides in runs:
            assert overrides == ["sharing=none", f"seed={seed}", f"optim.lr={rate!r}"]
            found.record(rate, seed, loss(rate) if loss.__code__.co_argcount == 1 else loss(rate, seed))
            tried.append(rate)
    return tried


def test_a_search_tries_its_grid_on_the_first_seed_then_runs_the_others_at_the_choice():
    found = search()
    assert run_grid(found, lambda rate: abs(math.log(rate / 0.001))) == [0.0005, 0.001, 0.002]
    assert found.remaining_runs() == [["sharing=none", f"seed={s}", "optim.lr=0.001"] for s in ("1", "2")]
    assert "→ 0.001" in found.describe() and "edge" not in found.describe()


def test_a_winning_edge_extends_the_grid_at_most_extend_times_and_stays_flagged():
    found = search(extend=2)
    assert run_grid(found, lambda rate: -rate) == [0.0005, 0.001, 0.002, 0.004, 0.008]
    assert found.remaining_runs()[0][-1] == "optim.lr=0.008"
    assert "→ 0.008 (at the grid's edge)" in found.describe()
    stops = search(extend=2)
    assert run_grid(stops, lambda rate: abs(math.log(rate / 0.004))) == [0.0005, 0.001, 0.002, 0.004, 0.008]
    assert "→ 0.004" in stops.describe() and "edge" not in stops.describe()  # 0.008 showed 0.004 is a minimum


def test_a_search_with_a_run_that_did_not_complete_chooses_nothing():
    found = search()
    run_grid(found, lambda rate: None if rate == 0.002 else 1.0)
    assert found.remaining_runs() == []
    assert "no choice" in found.describe()


def test_two_searching_seeds_choose_by_their_mean_and_a_rate_one_of_them_diverged_at_is_never_chosen():
    found = Search(["sharing=none"], ["0", "1", "2"], 1e-3, [0.5, 1, 2], 0, "val_loss_full", searching=2)
    # Seed 0 alone would choose 0.002; seed 1 diverges there, and the means favour 0.001.
    losses = {("0", 0.0005): 3.3, ("1", 0.0005): 3.3, ("0", 0.001): 3.1, ("1", 0.001): 3.0, ("0", 0.002): 2.9,
              ("1", 0.002): math.inf}  # fmt: skip
    assert run_grid(found, lambda rate, seed: losses[seed, rate]) == [0.0005] * 2 + [0.001] * 2 + [0.002] * 2
    assert found.remaining_runs() == [["sharing=none", "seed=2", "optim.lr=0.001"]]
    assert "val_loss_full (mean of 2 seeds) 0.0005: 3.3000, 0.001: 3.0500, 0.002: inf → 0.001" in found.describe()


def test_a_search_where_no_rate_is_eligible_chooses_none():
    found = Search(["sharing=none"], ["0", "1"], 1e-3, [0.5, 1, 2], 0, "val_loss_full")
    run_grid(found, lambda rate: math.inf)
    assert found.remaining_runs() == [] and "no eligible rate" in found.describe()


def test_a_run_left_on_the_unigram_plateau_is_not_eligible():
    on_plateau = {"status": "completed", "metrics": {"val_loss_full": 6.15}, "unigram_val_loss": 6.20}
    assert metric_of(on_plateau, "val_loss_full", plateau=0.1) == math.inf
    assert metric_of(on_plateau, "val_loss_full", plateau=0.01) == 6.15
    assert metric_of(on_plateau, "val_loss_full") == 6.15  # no plateau rule: searches made before it


def test_the_metric_comes_from_the_returned_record_and_a_diverged_run_is_infinitely_bad():
    assert metric_of({"metrics": {"val_loss_full": 2.5}}, "val_loss_full") == 2.5
    assert metric_of({"metrics": {"val_loss_full": float("nan")}}, "val_loss_full") == math.inf
    assert metric_of(None, "val_loss_full") is None  # a run another process holds returns nothing
    assert metric_of({"metrics": {}}, "val_loss_full") is None


def train(*args: str) -> subprocess.CompletedProcess:
    return run_in_process(["train.py", *args], PROJECT_ROOT)


def test_a_search_needs_a_sweep(tmp_path, capsys):
    from tests.conftest import train_in_process

    with pytest.raises(SystemExit) as stopped:
        train_in_process(["lr_grid=factor2", f"output_root={tmp_path}"])
    assert stopped.value.code == 2 and not any(tmp_path.iterdir())
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: lr_grid.factors=[0.5, 1.0, 2.0] searches a learning rate over the runs of a sweep: add -m"
    ]


@pytest.mark.slow
def test_a_sweep_searches_each_configurations_rate_and_collect_reads_the_choice_back(nano_overrides, tmp_path):
    # Seeds 0 and 1 search (factor2's lr_grid.seeds), seed 2 trains at their choice; nano runs of 3 steps stay on
    # the unigram plateau, so the plateau rule is off here (tests/test_tuning.py checks it).
    command = ["-m", *nano_overrides, "sharing=none,shared_qkv", "seed=0,1,2", "lr_grid=factor2", "lr_grid.extend=1",
               "lr_grid.plateau=null"]  # fmt: skip
    result = train(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("run.json")]
    for scheme in ("none", "shared_qkv"):
        mine = [r for r in records if r["sharing"]["name"] == scheme]
        by_rate: dict[float, list[float]] = {}
        for r in mine:
            if r["seed"] in (0, 1):
                by_rate.setdefault(r["config"]["optim"]["lr"], []).append(r["metrics"]["val_loss_full"])
        assert 3 <= len(by_rate) <= 4 and all(len(losses) == 2 for losses in by_rate.values())  # + one past an edge
        best = min(by_rate, key=lambda rate: sum(by_rate[rate]))
        assert [r["config"]["optim"]["lr"] for r in mine if r["seed"] == 2] == [best]
        assert f"→ {best:g}" in result.stdout and "(mean of 2 seeds)" in result.stdout
    again = train(*command)  # completed runs are skipped: the same choices, nothing trained twice
    assert again.returncode == 0 and len(list(tmp_path.rglob("run.json"))) == len(records)
    assert [line for line in again.stdout.splitlines() if line.startswith("lr_grid:")] == [
        line for line in result.stdout.splitlines() if line.startswith("lr_grid:")
    ]
    configurations = find_configurations([tmp_path])
    assert len(configurations) == 2
    for configuration in configurations:
        assert len(configuration.records) == 3 and {r["seed"] for r in configuration.records} == {0, 1, 2}
        search = configuration.lr_search
        assert search and len(configuration.grid_runs) == 2 * (len(search.results) - 1)
        assert all(set(seeds) == {0, 1} for seeds in search.by_seed.values())
    out = tmp_path / "results"
    text = collect([tmp_path], out, plots=False)
    assert "Learning rates:" in text and "| learning rate |" in text
    assert len(list((out / "runs").rglob("lr_grid/lr=*/seed=*/run.json"))) == sum(len(c.grid_runs)
                                                                                   for c in configurations)  # fmt: skip
    assert " / " in (out / "lr_search.csv").read_text()  # each searching seed's metric beside the mean
    assert collect([out], plots=False) == text  # the copied records give the same tables
