"""Training memory: weights, gradients and optimizer state counted from the tensors, activations measured."""

from __future__ import annotations

import pytest
import torch

from sharebench.model.memory import activation_bytes, training_memory
from sharebench.run.build import build_model
from sharebench.train.optim import adamw_with_schedule
from tests.conftest import spec_of


def mlm_batch(vocab_size: int, batch: int, seq_len: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab_size, (batch, seq_len), generator=generator)
    labels = torch.where(torch.rand(batch, seq_len, generator=generator) < 0.15, input_ids, -100)
    return {"input_ids": input_ids, "labels": labels}


@pytest.mark.parametrize("sharing", ["shared_qkv", "mqa", "symmetric"])
def test_weights_bytes_differ_by_four_bytes_per_unique_parameter(nano_cfg, sharing):
    def measured(*overrides: str) -> tuple[int, dict[str, int]]:
        model = build_model(spec_of(nano_cfg(*overrides)), vocab_size=200)
        optimizer = adamw_with_schedule(model, 1e-3, 0.01, 1, 10, "linear", 0.0)["optimizer"]
        model(**mlm_batch(200, 4)).loss.backward()
        optimizer.step()
        unique, memory = model.parameter_counts().unique, training_memory(model, optimizer, mlm_batch(200, 4))
        # AdamW: two fp32 moments per trained parameter and an fp32 step count per tensor (the MLM loss leaves
        # the pooler without gradients, so without state)
        trained = [p for p in model.parameters() if p.grad is not None]
        assert memory["optimizer_bytes"] == 8 * sum(p.numel() for p in trained) + 4 * len(trained)
        return unique, memory

    (unique_none, none), (unique_shared, shared) = measured("sharing=none"), measured(f"sharing={sharing}")
    assert unique_shared < unique_none
    assert none["weights_bytes"] - shared["weights_bytes"] == 4 * (unique_none - unique_shared)
    assert none["gradients_bytes"] - shared["gradients_bytes"] == 4 * (unique_none - unique_shared)
    for memory in (none, shared):
        assert memory["training_bytes"] == sum(v for k, v in memory.items() if k != "training_bytes")


def test_activation_bytes_grow_with_the_batch(nano_cfg):
    model = build_model(spec_of(nano_cfg("arch.dropout=0", "arch.attention_dropout=0")), vocab_size=200)
    small, large = (activation_bytes(model, mlm_batch(200, batch)) for batch in (8, 32))
    assert small > 0
    assert 3.0 < large / small < 4.5  # activations scale with the batch; a few buffers do not


def test_measuring_activations_leaves_the_model_and_the_rng_alone(nano_cfg):
    model = build_model(spec_of(nano_cfg()), vocab_size=200)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = torch.get_rng_state()
    activation_bytes(model, mlm_batch(200, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None and torch.equal(p, before[name]) for name, p in model.named_parameters())
