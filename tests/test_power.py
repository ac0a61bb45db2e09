"""The pilot's power analysis (`sharebench power`): twins against the unshared model per budget, the seeds a
target needs after a family's correction, and how far masked models get below the unigram plateau."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from sharebench.report.power import power_report, seeds_for
from tests.conftest import current_record


def write_run(root: Path, steps: int, twin: bool, seed: int, loss: float) -> None:
    config = {"seed": seed, "arch": {"name": "bert"}, "trainer": {"max_steps": steps}, "iso_baseline": twin}
    sharing = {"name": "none", "ratio": None, "layers": {"name": "none", "ratio": None}}
    if twin:
        sharing = {**sharing, "iso_baseline_of": {**sharing, "layers": {"name": "all", "ratio": None}}}
    history = [{"step": 0, "val_loss": 6.3}, {"step": steps // 4, "val_loss": 6.15}, {"step": steps, "val_loss": loss}]
    record = {"status": "completed", "seed": seed, "config": config, "sharing": sharing, "unigram_val_loss": 6.2,
              "metrics": {"test_loss_full": loss, "val_history": history, "steps": steps},
              "wall_time_s": steps / (20 if twin else 10)}  # fmt: skip
    folder = root / f"steps={steps},twin={twin}" / f"seed={seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(current_record(record)))


def test_seeds_for_a_target_follow_the_detectable_effect_after_correction():
    spread, family = 0.01, 45
    needed = seeds_for(spread, family, 0.02)

    def effect(n: int) -> float:
        t = stats.t(n - 1)
        return (t.ppf(1 - 0.05 / 2 / family) + t.ppf(0.8)) * spread / math.sqrt(n)

    assert effect(needed) <= 0.02 < effect(needed - 1)
    assert seeds_for(spread, 1, 0.02) < needed  # a family asks for more seeds
    assert seeds_for(1.0, family, 0.001) is None  # beyond any budget


def test_the_report_pairs_each_twin_with_the_unshared_model_of_its_budget(tmp_path):
    for steps, gap in ((400, 0.0), (3000, 0.3)):  # parameters matter only at the longer budget
        for seed, noise in enumerate((0.01, -0.01, 0.02, 0.0, -0.02)):
            write_run(tmp_path, steps, False, seed, 5.6 + noise)
            write_run(tmp_path, steps, True, seed, 5.6 + gap + noise * 0.9)
    report = power_report([tmp_path], family=45, target=0.02)
    twins = [line.split(" | ") for line in report.splitlines() if line.count(" | ") == 9 and line.startswith("| arch")]
    rows = {row[0].strip("| ").removeprefix("arch.name=bert,"): row for row in twins}
    assert set(rows) == {"trainer.max_steps=400", "trainer.max_steps=3000"}
    long, short = rows["trainer.max_steps=3000"], rows["trainer.max_steps=400"]
    assert long[3] == "+0.3000" and float(long[4]) < 0.001 and long[5] == "5"
    # A run takes 225 s on average (150 s the twin, 300 s unshared); a configuration at the target's seeds
    # runs them and the search's other rates on 2 seeds each.
    assert long[8] == "225" and float(long[9].rstrip(" |")) == round((int(long[7]) + 4) * 225 / 3600, 2)
    assert short[3] == "+0.0000" and float(short[4]) > 0.05
    assert "| arch.name=bert,trainer.max_steps=400 | " in report and "left the plateau after" in report
    # Every masked run's curve lay 0.05 below the unigram loss at a quarter of training: not yet off the plateau
    # (0.1); its last point, 0.3 to 0.6 below it, is where it left.
    assert report.count("| 100% |") == 20 and "never" not in report
    assert power_report([tmp_path], family=45, target=0.02, plateau=0.04).count("| 25% |") == 20
