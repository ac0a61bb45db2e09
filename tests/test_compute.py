"""What a run spent and what it reached: tokens seen, training FLOPs, the loss over the whole validation split,
and the iso-compute twin that spends a shared model's FLOPs."""

from __future__ import annotations

import pytest

from sharebench.report.results import find_configurations, iso_compute_twin
from sharebench.train.tasks import run_task


def test_a_run_records_its_compute_and_its_loss_over_the_whole_validation_split(nano_cfg, tmp_path):
    whole = run_task(nano_cfg("trainer.limit_val_batches=1.0"), tmp_path / "whole")
    metrics, config = whole["metrics"], whole["config"]
    tokens = metrics["steps"] * config["data"]["batch_size"] * config["data"]["seq_len"]
    assert whole["compute"] == {"tokens_seen": tokens, "training_flops": tokens * whole["flops_per_token"]}
    # Evaluated on every batch, the curve's last point and the whole-split loss agree (the last batch is smaller
    # and weighs less in the token-weighted loss).
    assert metrics["val_loss_full"] == pytest.approx(metrics["val_loss"], rel=0.02)
    sampled = run_task(nano_cfg("trainer.limit_val_batches=1"), tmp_path / "sampled")
    assert sampled["metrics"]["val_loss_full"] == pytest.approx(metrics["val_loss_full"], rel=1e-5)
    assert sampled["metrics"]["val_loss"] != pytest.approx(metrics["val_loss_full"], rel=1e-5)


def test_an_iso_compute_twin_trains_until_it_has_spent_the_shared_models_flops(nano_cfg, tmp_path):
    cycle = [
        "layers=cycle",
        "layers.ratio=0.5",
        "size.n_layers=4",
        "trainer.max_steps=20",
        "trainer.val_check_interval=20",
    ]
    shared = run_task(nano_cfg(*cycle), tmp_path / "cycle")
    twin = run_task(nano_cfg(*cycle, "iso_baseline=true"), tmp_path / "twin")
    at_compute = run_task(nano_cfg(*cycle, "iso_baseline=true", "iso_compute=true"), tmp_path / "at_compute")
    assert twin["metrics"]["steps"] == 20 < at_compute["metrics"]["steps"]
    assert at_compute["parameters"]["unique"] == twin["parameters"]["unique"]
    spent = shared["compute"]["training_flops"]
    assert at_compute["compute"]["training_flops"] == pytest.approx(spent, rel=0.02)  # in whole steps
    configurations = {c.label: c for c in find_configurations([tmp_path])}
    cycle_configuration = next(c for c in configurations.values() if c.sharing == "none+cycle" and not c.iso_baseline)
    found = iso_compute_twin(cycle_configuration, list(configurations.values()))
    assert found is not None and found.compute("tokens_seen") == at_compute["compute"]["tokens_seen"]


def test_iso_compute_is_refused_without_an_iso_baseline(nano_cfg):
    from sharebench.errors import ConfigError
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match="iso_compute=true .* add iso_baseline=true"):
        validate(nano_cfg("layers=cycle", "layers.ratio=0.5", "iso_compute=true"))


def test_a_budget_per_unique_parameter_trains_whole_steps_to_at_least_that_many_tokens(nano_cfg, tmp_path):
    for sharing in ("none", "shared_qkv"):
        record = run_task(nano_cfg(f"sharing={sharing}", "tokens_per_parameter=0.05"), tmp_path / sharing)
        per_step = record["config"]["data"]["batch_size"] * record["config"]["data"]["seq_len"]
        budget = 0.05 * record["parameters"]["unique"]
        assert budget <= record["compute"]["tokens_seen"] < budget + per_step


def test_a_budget_is_one_rule(nano_cfg):
    from sharebench.errors import ConfigError
    from sharebench.run.build import devices
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match="iso_compute=true and tokens_per_parameter both set the training budget"):
        validate(nano_cfg("layers=cycle", "layers.ratio=0.5", "iso_baseline=true", "iso_compute=true",
                          "tokens_per_parameter=2"))  # fmt: skip
    assert devices(nano_cfg("trainer.devices=2", "trainer.num_nodes=3").trainer) == 6
    assert devices(nano_cfg("trainer.devices=[0,1]").trainer) == 2


def test_a_run_that_ends_between_validations_still_records_its_training_loss(nano_cfg, tmp_path):
    # The last step is validated after training (as an iso-compute twin's or a token budget's whole steps are).
    record = run_task(nano_cfg("trainer.max_steps=3", "trainer.val_check_interval=2"), tmp_path / "run")
    assert record["metrics"]["steps"] == 3 and [h["step"] for h in record["metrics"]["val_history"]] == [0, 2, 3]
    assert record["metrics"]["train_loss"] > 0
