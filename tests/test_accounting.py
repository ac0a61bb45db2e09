"""Parameter counts equal formulas derived by hand, for every scheme at several ratios and sizes."""

from __future__ import annotations

import pytest
import torch

from sharebench.cli import params
from sharebench.run.build import build_model
from tests.conftest import spec_of

SIZES = {"nano": (2, 32, 4, 64), "bert-mini": (4, 256, 4, 1024), "tinybert": (4, 312, 12, 1200)}
VOCAB = 1000


def model_for(*overrides: str, vocab: int = VOCAB):
    with torch.device("meta"):
        return build_model(spec_of(overrides), vocab)


def qkv(*overrides: str) -> int:
    return model_for(*overrides).parameter_counts().by_component["attention_qkv"]


@pytest.mark.parametrize("size", SIZES)
def test_none_is_three_projections_with_biases(size):
    layers, dim, _, _ = SIZES[size]
    assert qkv(f"size={size}", "sharing=none") == layers * 3 * (dim * dim + dim)
    assert qkv(f"size={size}", "sharing=none", "arch=gpt") == layers * 3 * dim * dim  # no q/k/v bias in gpt


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9, 0.95, 1.0])
def test_partial_qk_saves_exactly_the_shared_columns(size, ratio):
    layers, dim, heads, _ = SIZES[size]
    shared = heads * round(ratio * (dim // heads))  # columns shared per layer
    saved = layers * shared * (dim + 1)  # one weight column of D entries and one bias each
    none = qkv(f"size={size}", "sharing=none")
    assert qkv(f"size={size}", "sharing=partial_qk", f"ratio={ratio}") == none - saved
    # The spec's D·D·(2 − r) for the query/key weights, with r the realised share H·s/D.
    realised = shared / dim
    assert layers * (dim * dim * (2 - realised) + dim * dim) == none - saved - layers * (3 * dim - shared)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_partial_qk_matrix_split_shares_leading_columns_of_the_whole_matrix(ratio):
    layers, dim, _, _ = SIZES["tinybert"]
    shared = round(ratio * dim)
    none = qkv("size=tinybert", "sharing=none")
    assert qkv("size=tinybert", "sharing=partial_qk", f"ratio={ratio}", "sharing.split=matrix") == (
        none - layers * shared * (dim + 1)
    )


def test_symmetric_and_pairwise():
    layers, dim, _, _ = SIZES["bert-mini"]
    symmetric = qkv("size=bert-mini", "sharing=symmetric")
    assert symmetric == layers * 2 * (dim * dim + dim)
    assert symmetric == qkv("size=bert-mini", "sharing=partial_qk", "ratio=1.0")
    assert qkv("size=bert-mini", "sharing=pairwise") == symmetric + layers * dim  # c ∈ R^d for each of H heads


def test_partial_qk_at_zero_is_none():
    assert qkv("sharing=partial_qk", "ratio=0") == qkv("sharing=none")


def test_shared_qkv_at_bert_base_matches_the_paper():
    none = model_for("size=bert-base", "sharing=none", vocab=30522).parameter_counts()
    shared = model_for("size=bert-base", "sharing=shared_qkv", vocab=30522).parameter_counts()
    layers, dim = 12, 768
    assert shared.by_component["attention_qkv"] == layers * (dim * dim + dim + 3 * dim)
    drop = 1 - shared.by_component["attention_qkv"] / none.by_component["attention_qkv"]
    assert 0.6653 <= drop < 0.6654  # the paper's −66.53 %
    whole = 1 - shared.unique / none.unique
    assert 0.125 < whole < 0.132  # the paper's "about 12.9 %"


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_shared_qkv_ratio_generalisation(ratio):
    layers, dim, heads, _ = SIZES["bert-mini"]
    shared = heads * round(ratio * (dim // heads))
    own = 3 * (dim - shared)
    expected = layers * ((shared + own) * (dim + 1) + 3 * shared)
    assert qkv("size=bert-mini", "sharing=shared_qkv", f"ratio={ratio}") == expected


@pytest.mark.parametrize("scheme", ["mhe_add", "mhe_mul"])
@pytest.mark.parametrize("size", SIZES)
def test_mhe_costs_exactly_3hd_over_single_head_attention(scheme, size):
    layers, dim, heads, _ = SIZES[size]
    head_dim = dim // heads
    single_head = 3 * (dim * head_dim + head_dim)  # W_Q, W_K, W_V ∈ R^{D×d} with biases
    assert qkv(f"size={size}", f"sharing={scheme}") == layers * (single_head + 3 * heads * head_dim)


@pytest.mark.parametrize("ratio,kv_heads", [(0.0, 12), (0.5, 6), (0.75, 3), (11 / 12, 1)])
def test_gqa_stores_g_key_value_heads(ratio, kv_heads):
    layers, dim, heads, _ = SIZES["tinybert"]
    head_dim = dim // heads
    rows = dim + 2 * kv_heads * head_dim
    assert qkv("size=tinybert", "sharing=gqa", f"ratio={ratio}") == layers * rows * (dim + 1)
    if kv_heads == 1:
        assert qkv("size=tinybert", "sharing=mqa") == layers * rows * (dim + 1)
    if kv_heads == heads:
        assert qkv("size=tinybert", "sharing=gqa", f"ratio={ratio}") == qkv("size=tinybert", "sharing=none")


def test_components_sum_to_unique_and_total_counts_each_use():
    layers, dim, heads, ffn = SIZES["bert-mini"]
    counts = model_for("size=bert-mini", "sharing=partial_qk", "ratio=0.5").parameter_counts()
    assert sum(counts.by_component.values()) == counts.unique
    shared = heads * round(0.5 * (dim // heads))
    tied_decoder = VOCAB * dim
    assert counts.total == counts.unique + tied_decoder + layers * shared * (dim + 1)
    assert counts.by_component["ffn"] == layers * (2 * dim * ffn + ffn + dim)
    assert counts.by_component["attention_out"] == layers * (dim * dim + dim)
    assert counts.by_component["norms"] == (2 * layers + 1 + 1) * 2 * dim  # blocks, embeddings, MLM transform
    assert counts.by_component["embeddings"] == (VOCAB + 512 + 2) * dim


def test_untied_embeddings_count_the_decoder_once():
    tied = model_for("size=nano").parameter_counts()
    untied = model_for("size=nano", "tie_embeddings=false").parameter_counts()
    assert untied.unique == tied.unique + VOCAB * 32
    assert untied.total == tied.total


def test_flops_follow_the_nanogpt_formula():
    layers, dim, _, ffn = SIZES["bert-mini"]
    model = model_for("size=bert-mini", "arch=gpt", "data.seq_len=128")
    matmul = layers * (3 * dim * dim + dim * dim + 2 * dim * ffn) + VOCAB * dim
    assert model.flops_per_token(128) == 6 * matmul + 12 * layers * dim * 128
    shared = model_for("size=bert-mini", "arch=gpt", "sharing=shared_qkv", "data.seq_len=128")
    assert model.flops_per_token(128) - shared.flops_per_token(128) == 6 * layers * 2 * dim * dim


def test_masked_lm_flops_count_the_last_layer_at_predicted_positions_only():
    layers, dim, _, ffn = SIZES["bert-mini"]
    model = model_for("size=bert-mini", "arch=bert", "data.seq_len=128")
    attention = 2 * 128 * dim
    layer = 4 * dim * dim + 2 * dim * ffn + attention
    last_rows_only = dim * dim + 2 * dim * ffn + attention  # all but the query/key/value projection
    head = dim * dim + dim * VOCAB
    expected = 6 * (layers * layer - 0.85 * last_rows_only + 0.15 * head)
    assert model.flops_per_token(128, 0.15) == round(expected)


def test_params_command_output(nano_overrides):
    result = params(["size=bert-mini", "data.tokenizer.vocab_size=1000"])
    assert set(result["by_component"]) == {
        "embeddings",
        "attention_qkv",
        "attention_out",
        "ffn",
        "norms",
        "heads",
        "routers",
    }
    assert result["unique"] == model_for("size=bert-mini").parameter_counts().unique
    assert result["flops_per_token"] > 0
