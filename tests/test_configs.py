"""Every config composes, and every sharing × arch combination trains a few steps on a nano model."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from sharebench import load_pretrained
from sharebench.paths import CONFIG_DIR
from sharebench.run.composing import GROUPS, choices_and_values, compose, group_choices, hydra_composed, one_name
from sharebench.run.validation import validate
from sharebench.sharing import SCHEMES
from sharebench.train.tasks import run_task
from tests.conftest import each_once_in_the_fast_tier

SHARING = group_choices("sharing")
ARCHS = group_choices("arch")


def test_the_sharing_yamls_are_the_registered_schemes():  # and each names its class: every option composes, below
    assert sorted(SHARING) == sorted(SCHEMES)


# A recipe (experiment=) composes at each of its scales in tests/test_sweeps.py. The fast tier composes every
# option of `sharing` and `layers` in test_generate's decoding test too, so it leaves them to the full tier here.
@pytest.mark.parametrize(
    "group",
    [pytest.param(group, marks=pytest.mark.slow) if group in ("sharing", "layers") else group
     for group in GROUPS if group != "experiment"],
)  # fmt: skip
def test_every_group_option_composes(group):
    choices = group_choices(group)
    assert choices
    for choice in choices:
        overrides = [f"{group}={choice}"]
        if group == "size" and choice == "nanogpt_char":
            overrides.append("arch=gpt")
        cfg = compose(overrides)
        own = OmegaConf.load(CONFIG_DIR / group / f"{choice}.yaml")  # what the option's file sets is what composed
        assert set(own) - {"defaults", "hydra"} <= set(cfg[group]), choice
        if group == "sharing":
            assert cfg.sharing._target_.endswith(SCHEMES[choice].__name__)
        if group in ("arch", "size", "sharing"):
            validate(cfg, data=False)  # the option's own checks; the default data's are test_data's


@pytest.mark.parametrize(
    "overrides",
    [
        ["arch=gpt", "sharing=partial_qk", "ratio=0.9", "seed=3"],
        ["experiment=leaderboard", "scale=cpu", "arch=gpt", "layers=cycle", "iso_baseline=true", "optim.lr=0.002"],
        ["size=nano", "data.seq_len=32", "optim.betas=[0.9,0.95]", "trainer={max_steps: 5}", "seed=1", "seed=2"],
        ["arch=bert", "+sweep=demo", "+extra=1", "~callbacks"],  # an addition: Hydra composes them all
        ["sharing=none", "size=nano", "data=wikipedia_excerpt", "arch=gpt", "seed=2"],  # defaults chosen, unsorted
    ],
)
def test_values_set_on_the_group_choices_composition_give_hydras_config(overrides):
    config = compose(overrides)
    whole = hydra_composed(tuple(overrides), with_hydra=False)
    OmegaConf.resolve(whole)
    assert OmegaConf.to_container(config) == OmegaConf.to_container(whole)


def test_lists_hydra_composes_alike_have_one_name():
    assert one_name(("sharing=none", "size=nano", "arch=gpt", "trainer.max_steps=5")) == (
        "arch=gpt", "size=nano", "trainer.max_steps=5"
    )  # fmt: skip
    assert one_name(("arch=gpt",)) == one_name(("layers=none", "arch=gpt")) == ("arch=gpt",)
    # a recipe or a sweep file overrides other groups' defaults (leaderboard: lr_grid, also where precision extends
    # it; the demo: arch), an addition or a deletion is Hydra's to place, and a group chosen twice Hydra's to refuse
    recipes = [("lr_grid=none", "experiment=leaderboard"), ("experiment=precision", "lr_grid=none")]
    for as_given in [
        *recipes,
        ("arch=bert", "+sweep=demo"),
        ("arch=bert", "~seed"),
        ("arch=gpt", "size=nano", "arch=bert"),
    ]:
        assert one_name(as_given) == as_given
    assert compose(["experiment=precision", "lr_grid=none"]).lr_grid != compose(["experiment=precision"]).lr_grid


def test_only_plain_values_are_set_after_composing():
    assert choices_and_values(["arch=gpt", "seed=3", "data.seq_len=32", "hydra/launcher=joblib"]) == (
        ("arch=gpt", "hydra/launcher=joblib"),
        [("seed", 3), ("data.seq_len", 32)],
    )
    for addition_or_deletion in ("+extra=1", "++seed=1", "~seed", "seed=1,2", "seed=["):
        assert choices_and_values(["arch=gpt", addition_or_deletion]) is None


@pytest.mark.parametrize(("arch", "sharing"), each_once_in_the_fast_tier([(a, s) for s in SHARING for a in ARCHS]))
def test_sharing_trains_on_nano(nano_cfg, tmp_path, arch, sharing):
    cfg = nano_cfg(f"arch={arch}", f"sharing={sharing}")
    record = run_task(cfg, tmp_path)
    assert record["status"] == "completed"
    assert record["sharing"]["name"] == sharing
    assert record["metrics"]["steps"] == 3
    assert math.isfinite(record["metrics"]["val_loss"])
    assert record["parameters"]["unique"] <= record["parameters"]["total"]
    # what the model would hold without sharing, which collect's "unique / unshared" column divides by
    assert record["unshared_parameters"] >= record["parameters"]["unique"]
    assert (record["unshared_parameters"] == record["parameters"]["unique"]) == (sharing == "none")
    assert record["speed"]["tokens_per_second"] > 0
    loaded = load_pretrained(tmp_path)
    assert loaded.sharing_name == sharing
    assert loaded.parameter_counts().to_dict() == record["parameters"]
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["checkpoint"]["bytes"] == (tmp_path / "model.safetensors").stat().st_size


def test_a_sweep_and_a_single_run_of_one_configuration_share_a_folder():
    """Hydra's sweeper writes the booleans it expands as True/False (typed on their own they read true/false) and
    merges a key given twice."""
    from sharebench.run.naming import run_name

    assert run_name(["iso_baseline=True", "sharing=mqa"]) == run_name(["sharing=mqa", "iso_baseline=true"])
    assert run_name(["iso_baseline=true"]) == "iso_baseline=true"
    assert run_name(["data.batch_size=4", "sharing=mqa", "data.batch_size=16"]) == "sharing=mqa,data.batch_size=16"


def test_a_choice_the_defaults_make_anyway_names_no_folder():
    """The same configuration is one folder (issue 47, item 6): `python train.py` and `python train.py
    sharing=none`, or a recipe's sweep with and without `scale=cpu`, train into the same folder; a choice that
    differs from what a recipe makes its default (scaling searches rates: lr_grid=none does not) is named."""
    from sharebench.run.naming import run_name

    assert run_name(["sharing=none"]) == run_name([]) == run_name(["sharing=mqa", "sharing=none"]) == "default"
    board = ["experiment=leaderboard", "arch=gpt", "sharing=none", "data=wikipedia", "seed=3"]
    assert run_name([*board, "scale=cpu"]) == run_name(board) == "experiment=leaderboard,arch=gpt,data=wikipedia"
    assert run_name(["experiment=scaling", "lr_grid=factor2"]) == "experiment=scaling"
    assert run_name(["experiment=scaling", "lr_grid=none"]) == "experiment=scaling,lr_grid=none"
    # a recipe that extends another inherits its defaults (precision: the leaderboard's lr_grid=factor2)
    assert run_name(["experiment=precision", "lr_grid=none"]) == "experiment=precision,lr_grid=none"
    assert run_name(["experiment=precision", "lr_grid=factor2"]) == "experiment=precision"
    assert (
        run_name(["+sweep=share_ratio_grid", "sharing=partial_qk", "ratio=0.5"]) == "ratio=0.5,+sweep=share_ratio_grid"
    )
    assert run_name(["~logger"]) == "~logger"


def test_a_value_the_defaults_hold_anyway_names_no_folder():
    """Item 6's values: `iso_baseline=false` or `optim.lr=5e-4` (conf/config.yaml's literal, however it is typed)
    names no folder; a value the defaults reach through an interpolation stays named, since that interpolation may
    read other overrides (the leaderboard's rate comes from its budget)."""
    from sharebench.run.naming import run_name

    assert run_name(["iso_baseline=false", "optim.lr=0.0005"]) == run_name(["iso_compute=False"]) == "default"
    assert run_name(["optim.lr=1e-3", "iso_baseline=false", "sharing=mqa"]) == "sharing=mqa,optim.lr=1e-3"
    board = ["experiment=leaderboard", "arch=gpt", "data=wikipedia"]
    assert run_name([*board, "optim.lr=0.001"]) == "experiment=leaderboard,arch=gpt,data=wikipedia,optim.lr=0.001"


def test_lightnings_throughput_monitor_logs_tokens_and_flops_per_second(nano_cfg, tmp_path):
    """`callbacks=[throughput,lr_monitor]` adds Lightning's ThroughputMonitor and learning-rate monitor: tokens/s
    in the logger, and FLOP/s from the model's analytic FLOPs per batch (the run record's own figure)."""
    import csv

    record = run_task(nano_cfg("callbacks=[throughput,lr_monitor]", "callbacks.throughput.window_size=2",
                               "trainer.log_every_n_steps=1"), tmp_path)  # fmt: skip
    with (tmp_path / "logs" / "metrics.csv").open() as file:  # one process: per-device rates are the rates
        logged = list(csv.DictReader(file))
    rows = [row for row in logged if row.get("train/device/items_per_sec")]
    assert rows and all(float(row["train/device/items_per_sec"]) > 0 for row in rows)
    assert any(row["lr-AdamW/pg1"] for row in logged)  # the two callbacks chosen together both log
    row, seq_len = rows[-1], record["config"]["data"]["seq_len"]
    assert float(row["train/lengths"]) == float(row["train/samples"]) * seq_len  # tokens: sequences × length
    flops_per_token = float(row["train/device/flops_per_sec"]) / float(row["train/device/items_per_sec"])
    assert flops_per_token == pytest.approx(record["flops_per_token"])


def test_a_lightning_callback_is_added_from_its_target(nano_cfg, tmp_path):
    """`+callbacks.<name>._target_=<class>` adds a callback to pretraining's own: Lightning's learning-rate
    monitor logs the schedule beside the losses."""
    import csv

    target = "lightning.pytorch.callbacks.LearningRateMonitor"
    run_task(nano_cfg(f"+callbacks.lr._target_={target}", "trainer.log_every_n_steps=1"), tmp_path)
    with (tmp_path / "logs" / "metrics.csv").open() as file:
        rates = [row["lr-AdamW/pg1"] for row in csv.DictReader(file) if row.get("lr-AdamW/pg1")]  # per param group
    assert len(rates) == 3 and float(rates[0]) > 0
