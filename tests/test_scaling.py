"""Effective parameters on a scaling ladder: the power law recovered from unshared runs, each shared
configuration's multiplier with its bootstrap interval, the trend with size, and collect's table and plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from sharebench.report.collect import collect
from sharebench.report.results import find_configurations
from sharebench.report.scaling import PowerLaw, analyse, fit, ladder
from tests.conftest import current_record

TRUE = PowerLaw(floor=1.5, scale=1.0, exponent=0.3, x0=1e6)
RUNGS = {"r1": 2e5, "r2": 5e5, "r3": 1e6, "r4": 2e6, "r5": 4e6}
NOISE = (-0.002, 0.0, 0.002)  # seeds 0, 1, 2
TOKENS_PER_PARAMETER = 2


def multiplier(scheme: str, rung: float) -> float:
    """What the made-up runs make each shared parameter worth: shared_qkv more with size, mqa half at any."""
    return 2 * (rung / 2e5) ** 0.2 if scheme == "shared_qkv" else 0.5


def write(root, name: str, scheme: str, size: str, unique: float, loss: float, seed: int, rung: float) -> None:
    tokens = TOKENS_PER_PARAMETER * unique
    # mqa's ratio is not given but derived from the rung's heads (1 − 1/heads), so it differs from rung to rung
    ratio = 1 - 1 / (2 + list(RUNGS).index(size)) if scheme == "mqa" else None
    record = {
        "status": "completed", "seed": seed,
        "config": {"seed": seed, "ratio": None, "arch": {"name": "gpt"}, "size": {"name": size},
                   "data": {"name": "wikipedia"}},
        "sharing": {"name": scheme, "ratio": ratio, "layers": {"name": "none", "ratio": None}},
        "parameters": {"unique": int(unique)},
        "metrics": {"val_loss_full": loss, "val_loss": loss},
        "compute": {"tokens_seen": tokens, "training_flops": 6 * rung * tokens},
    }  # fmt: skip
    path = root / name / f"seed={seed}" / "run.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(current_record(record)))


@pytest.fixture(scope="module")
def ladder_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    for size, n in RUNGS.items():
        for seed, noise in enumerate(NOISE):
            write(root, f"none-{size}", "none", size, n, TRUE.loss(n) + noise, seed, n)
            if size in ("r1", "r2", "r3"):
                for scheme, fraction in (("shared_qkv", 0.8), ("mqa", 0.9)):
                    unique = fraction * n
                    loss = TRUE.loss(multiplier(scheme, n) * unique) + noise
                    write(root, f"{scheme}-{size}", scheme, size, unique, loss, seed, n)
    return root


def test_the_fit_recovers_a_saturating_power_law():
    xs = list(RUNGS.values())
    found = fit(xs, [TRUE.loss(x) for x in xs])
    assert found.floor == pytest.approx(1.5, abs=1e-3) and found.exponent == pytest.approx(0.3, rel=1e-3)
    assert found.inverse(TRUE.loss(7e5)) == pytest.approx(7e5, rel=1e-3)
    assert found.inverse(found.floor) == math.inf  # a loss the law never reaches


def test_the_fit_weights_each_rung_by_its_standard_error_and_says_when_the_floor_is_not_identified():
    xs = list(RUNGS.values())
    losses = [TRUE.loss(x) for x in xs]
    losses[-1] += 0.05  # one rung off the law, known only roughly
    weighted = fit(xs, losses, [0.001, 0.001, 0.001, 0.001, 1.0])
    unweighted = fit(xs, losses)
    assert abs(weighted.exponent - 0.3) < 0.01 < abs(unweighted.exponent - 0.3)
    assert not weighted.floor_at_bound
    pure = PowerLaw(floor=0.0, scale=3.0, exponent=0.1, x0=1e6)  # no floor at all: the fit pushes E to 0
    assert fit(xs, [pure.loss(x) for x in xs]).floor_at_bound


def test_each_shared_configuration_is_paired_with_its_own_rungs_unshared_model(ladder_runs):
    found = ladder(find_configurations([ladder_runs]), "val_loss_full")
    for shared in found.shared:
        paired = shared.against_rung()
        expected = [s - r for s, r in zip(shared.losses, shared.rung.losses, strict=True)]
        assert paired.paired and paired.seeds == 3
        assert paired.difference == pytest.approx(sum(expected) / 3)


def test_effective_parameters_recover_each_schemes_worth_with_an_interval(ladder_runs):
    found = ladder(find_configurations([ladder_runs]), "val_loss_full")
    result = analyse(found, replicates=100)
    assert [r.size for r in found.rungs] == list(RUNGS)
    for shared in found.shared:
        params, flops = result.worth[shared.configuration.label]
        truth = multiplier(shared.configuration.sharing, shared.rung.unique)
        assert params.multiplier == pytest.approx(truth, rel=0.05)
        assert params.low < truth < params.high
        assert params.verdict() == ("worth more" if truth > 1 else "worth less")
        # Over FLOPs: a plain model needs law⁻¹(loss)·6·2·law⁻¹(loss) FLOPs; the shared one spent 6·rung·2·unique.
        effective = truth * shared.unique
        assert flops.multiplier == pytest.approx(effective**2 / (shared.rung.unique * shared.unique), rel=0.1)
    shared_qkv, mqa = result.trend["shared_qkv"], result.trend["mqa"]
    assert shared_qkv[0] == pytest.approx(0.2, abs=0.02) and shared_qkv[1] > 0  # grows with size
    assert abs(mqa[0]) < 0.02

    from sharebench.report.collect import ladder_by_scheme

    by_scheme = ladder_by_scheme(found, result)  # one line per scheme, a column per rung it ran
    assert by_scheme.header == ["scheme", "× params at r1", "× params at r2", "× params at r3", "trend with size"]
    rows = {row[0]: row[1:] for row in by_scheme.rows}
    assert set(rows) == {"mqa", "shared_qkv"}
    assert all(cell.endswith("worth less") for cell in rows["mqa"][:3])
    assert all(cell.endswith("worth more") for cell in rows["shared_qkv"][:3])
    assert rows["shared_qkv"][3].endswith(": grows") and rows["mqa"][3].endswith(": no clear trend")


def test_a_configuration_with_one_seed_draws_the_pooled_seed_spread(tmp_path):
    # As the cpu recipe runs: 3 seeds at the two smallest rungs, one seed above them, shared ones included.
    for size, n in RUNGS.items():
        seeds = NOISE if size in ("r1", "r2") else NOISE[1:2]
        for seed, noise in enumerate(seeds):
            write(tmp_path, f"none-{size}", "none", size, n, TRUE.loss(n) + noise, seed, n)
            if size in ("r2", "r3"):
                unique = 0.8 * n
                loss = TRUE.loss(multiplier("shared_qkv", n) * unique) + noise
                write(tmp_path, f"shared_qkv-{size}", "shared_qkv", size, unique, loss, seed, n)
    found = ladder(find_configurations([tmp_path]), "val_loss_full")
    result = analyse(found, replicates=100)
    assert result.seed_spread == pytest.approx(0.002)  # the sample SD of NOISE, pooled
    (single,) = [s for s in found.shared if len(s.losses) == 1]
    params, _ = result.worth[single.configuration.label]
    assert params.low < multiplier("shared_qkv", single.rung.unique) < params.high
    assert params.high / params.low > 1.01  # not the zero-width interval of a loss never redrawn


def test_without_a_configuration_of_several_seeds_a_single_seed_gets_no_interval(tmp_path):
    for size, n in RUNGS.items():
        write(tmp_path, f"none-{size}", "none", size, n, TRUE.loss(n), 0, n)
    write(tmp_path, "mqa-r2", "mqa", "r2", 0.9 * RUNGS["r2"], TRUE.loss(0.45 * RUNGS["r2"]), 0, RUNGS["r2"])
    result = analyse(ladder(find_configurations([tmp_path]), "val_loss_full"), replicates=100)
    ((params, flops),) = result.worth.values()
    assert result.seed_spread is None
    assert params.multiplier == pytest.approx(0.5, rel=0.05)
    assert params.verdict().startswith("no interval") and flops.verdict().startswith("no interval")


def test_a_scheme_keeps_one_colour_and_marker_at_every_rung(ladder_runs):
    from sharebench.report.plots import Styles
    from sharebench.report.scaling import scheme_of

    found = ladder(find_configurations([ladder_runs]), "val_loss_full")
    style = Styles([s.configuration for s in found.shared], key=scheme_of)
    by_scheme: dict[str, set] = {}
    for shared in found.shared:
        by_scheme.setdefault(scheme_of(shared.configuration), set()).add(style(shared.configuration))
    assert {scheme: len(styles) for scheme, styles in by_scheme.items()} == {"mqa": 1, "shared_qkv": 1}
    assert by_scheme["mqa"] != by_scheme["shared_qkv"]


@pytest.mark.slow
def test_collect_writes_the_ladders_table_and_plots(ladder_runs, tmp_path):
    report = collect([ladder_runs], tmp_path)
    assert "Effective parameters (scaling):" in report
    assert "Trend with size, shared_qkv: log-log slope" in report and ": grows." in report
    with (tmp_path / "scaling.csv").open() as table:
        mqa = [row for row in csv.DictReader(table) if row["scheme"] == "mqa"]
    assert len(mqa) == 3 and {row["worth in parameters"] for row in mqa} == {"worth less"}
    assert all(row["Δ vs its rung's unshared (95 % CI)"].startswith("+") and float(row["p"]) < 0.05 for row in mqa)
    assert "each weighted by its standard error" in report and "lies inside its range" in report
    for plot in ("scaling_params.png", "scaling_multiplier.png"):
        assert (tmp_path / plot).stat().st_size > 0
    # one main table per rung: each compares with the unshared model of its own size
    assert {p.name for p in tmp_path.glob("table-gpt-r*.csv")} == {f"table-gpt-{r}.csv" for r in RUNGS}
