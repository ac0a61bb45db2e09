"""The benchmark's memory worker measures what `make bench` reports: memory that follows unique parameters and
FLOPs that fall with sharing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sharebench.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cpu", PROJECT_ROOT / "benchmarks" / "bench_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_shared_scheme_stores_and_optimises_only_unique_parameters(bench):
    facts = {}
    for scheme in ("shared_qkv", "none"):
        trainee = bench.Trainee(**bench.CONFIGURATIONS[scheme])
        clocked = trainee.clocked_step()
        assert 0 < clocked["matmul_seconds"] < clocked["seconds"]
        facts[scheme] = trainee.facts()
    shared, none = facts["shared_qkv"], facts["none"]
    assert shared["unique_parameters"] < none["unique_parameters"]
    for result in (shared, none):
        assert abs(result["checkpoint_bytes"] / (4 * result["unique_parameters"]) - 1) < 0.02
        # Two fp32 moments per unique parameter that trains; the pooler gets no gradient in MLM pretraining.
        pooler = bench.SHAPE["dim"] * (bench.SHAPE["dim"] + 1)
        assert result["optimizer_state_bytes"] == 8 * (result["unique_parameters"] - pooler)
    assert none["flops_per_token"] / shared["flops_per_token"] > 1.1
    # Hugging Face's count: logits and the last layer at every position, not only at the predicted 15 %.
    assert none["flops_per_token_every_position"] > 2.5 * none["flops_per_token"]
    assert none["loss"] > 0 and none["peak_rss_bytes"] > 0


def test_inference_bench_kv_cache_rows_match_their_formula():
    spec = importlib.util.spec_from_file_location("bench_inference", PROJECT_ROOT / "benchmarks" / "bench_inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.kv_cache()
    assert rows["mqa"]["measured"] * 6 == rows["none"]["measured"]
    assert all(row["measured"] == row["formula"] for row in rows.values()), rows


def test_the_llama_bench_times_the_same_model_in_both_implementations():
    """Equal weights give equal training losses and the same greedy tokens, so the timings compare like with
    like (a small shape of SmolLM2's kind: grouped keys and values, tied embeddings, rope θ = 100,000)."""
    spec = importlib.util.spec_from_file_location("bench_llama", PROJECT_ROOT / "benchmarks" / "bench_llama.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = {**module.SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}  # fmt: skip
    suite, hugging_face = module.models(small)
    trainees = module.Trainee(suite, shifts_labels=False), module.Trainee(hugging_face, shifts_labels=True)
    for _ in range(2):
        for trainee in trainees:
            trainee.step()
        assert trainees[0].loss.item() == pytest.approx(trainees[1].loss.item(), abs=1e-5)
    suite.eval(), hugging_face.eval()
    assert torch.equal(module.decode(suite, 2, False)[1], module.decode(hugging_face, 2, True)[1])


def test_the_attainable_speed_up_shrinks_only_the_matrix_multiplies(bench):
    assert bench.attainable_speedup(1.5, 1.0) == pytest.approx(1.5)  # a step of matmuls only: all of the saving
    assert bench.attainable_speedup(1.5, 0.0) == 1.0  # nothing but other work: none of it
    # results/bench: shared_qkv saves 16.4 % of FLOPs where matmuls take 74.5 % of the step
    assert bench.attainable_speedup(1.164, 0.745) == pytest.approx(1 / (0.255 + 0.745 / 1.164))
