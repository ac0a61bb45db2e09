"""The sharing schemes compute what their definitions say, and the model's two architectures behave."""

from __future__ import annotations

import pytest
import torch

from sharebench.sharing import SCHEMES
from tests.conftest import spec_of

DIM, HEADS = 64, 4
HEAD_DIM = DIM // HEADS


def projections(name: str, **options):
    torch.manual_seed(0)
    scheme = SCHEMES[name](DIM, HEADS, True, **options)
    with torch.no_grad():
        for p in scheme.parameters():
            p.normal_()
    return scheme, scheme(torch.randn(2, 5, DIM))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_partial_qk_shares_leading_columns_of_each_head(ratio):
    _, (q, k, v) = projections("partial_qk", ratio=ratio)
    shared = round(ratio * HEAD_DIM)
    assert torch.equal(q[..., :shared], k[..., :shared])
    assert not torch.allclose(q[..., shared:], k[..., shared:])
    assert q.shape == k.shape == v.shape == (2, HEADS, 5, HEAD_DIM)


def test_partial_qk_matrix_split_shares_leading_columns_of_the_matrix():
    _, (q, k, _) = projections("partial_qk", ratio=0.5, split="matrix")
    flat_q, flat_k = q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2)
    assert torch.equal(flat_q[..., : DIM // 2], flat_k[..., : DIM // 2])
    assert not torch.allclose(flat_q[..., DIM // 2 :], flat_k[..., DIM // 2 :])


def test_symmetric_queries_are_keys_and_scores_are_symmetric():
    _, (q, k, _) = projections("symmetric")
    assert torch.equal(q, k)
    scores = q @ k.transpose(-1, -2)
    assert torch.allclose(scores, scores.transpose(-1, -2))


def test_pairwise_keys_are_queries_times_a_per_head_coefficient():
    scheme, (q, k, _) = projections("pairwise")
    coefficient = scheme.scales["k"].view(HEADS, 1, HEAD_DIM)
    assert torch.allclose(k, q * coefficient)


def test_shared_qkv_roles_are_one_projection_rescaled():
    """Q = S ⊙ δ_Q, K = S ⊙ δ_K, V = S ⊙ δ_V. The fast path hands attention the keys' scale on the queries: the
    same scores, one multiply fewer."""
    scheme, (q, k, v) = projections("shared_qkv")
    assert scheme.proj.out_features == DIM  # one projection: the matmul for the other two roles is gone
    scales = {r: scheme.scales[r].view(HEADS, 1, HEAD_DIM) for r in "qkv"}
    shared = k
    assert torch.allclose(v, shared * scales["v"], atol=1e-5)
    paper_scores = (shared * scales["q"]) @ (shared * scales["k"]).transpose(-1, -2)
    assert torch.allclose(q @ k.transpose(-1, -2), paper_scores, atol=1e-4)


@pytest.mark.parametrize("name,combine", [("mhe_add", torch.add), ("mhe_mul", torch.mul)])
def test_mhe_heads_are_one_projection_combined_with_head_embeddings(name, combine):
    scheme, (q, _, _) = projections(name)
    x = torch.randn(2, 5, DIM)
    torch.manual_seed(0)
    q, _, _ = scheme(x)
    single = scheme.proj(x)[..., :HEAD_DIM]
    for head in range(HEADS):
        assert torch.allclose(q[:, head], combine(single, scheme.head_embeddings[0, head]), atol=1e-6)


def test_gqa_has_fewer_key_value_heads():
    _, (q, k, v) = projections("gqa", ratio=0.75)
    assert q.shape[1] == HEADS and k.shape[1] == v.shape[1] == 1


def test_causal_model_does_not_look_ahead(nano_cfg):
    from sharebench.run.build import build_model

    model = build_model(spec_of(nano_cfg("arch=gpt", "sharing=partial_qk")), 50).eval()
    ids = torch.randint(0, 50, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    assert torch.allclose(model.encode(ids)[:, :8], model.encode(changed)[:, :8], atol=1e-6)
    assert not torch.allclose(model.encode(ids)[:, 8:], model.encode(changed)[:, 8:])


def test_padding_does_not_change_the_other_tokens(nano_cfg):
    from sharebench.run.build import build_model

    model = build_model(spec_of(nano_cfg()), 50).eval()
    ids = torch.randint(5, 50, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], dim=1).long()
    assert torch.allclose(model.encode(ids), model.encode(padded, mask)[:, :10], atol=1e-5)


def test_masked_lm_predicts_only_masked_positions(nano_cfg):
    from sharebench.run.build import build_model

    model = build_model(spec_of(nano_cfg()), 50)
    ids = torch.randint(5, 50, (2, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7] = 11, 12
    output = model(ids, labels)
    assert output.logits.shape == (2, 50)
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_padded_vocabulary_gives_the_loss_and_gradients_of_the_vocabulary(nano_cfg, arch):
    import torch.nn.functional as F

    from sharebench.run.build import build_model

    model = build_model(spec_of(nano_cfg(f"arch={arch}")), 50)
    hidden, labels = torch.randn(7, model.config.dim), torch.randint(0, 50, (7,))
    padded = model.head.padded_logits(hidden)
    assert model.head.padding == 14 and padded.shape == (7, 64) and bool((padded[:, 50:] == float("-inf")).all())
    losses, grads = [], []
    for logits in (padded, model.head(hidden)):
        loss = F.cross_entropy(logits, labels)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [p for p in model.head.parameters() if p.requires_grad]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0)
    for padded_grad, grad in zip(*grads, strict=True):
        assert padded_grad.shape == grad.shape
        torch.testing.assert_close(padded_grad, grad, rtol=1e-5, atol=1e-8)


def test_pre_ln_option(nano_cfg):
    from sharebench.run.build import build_model

    model = build_model(spec_of(nano_cfg("arch.norm_position=pre")), 50)
    assert model.transformer.final_norm is not None and model.transformer.embeddings.norm is None
    assert model(torch.randint(0, 50, (2, 6))).logits.shape == (2, 6, 50)


def test_cpu_dropout_drops_p_of_the_elements_and_keeps_the_expectation():
    from sharebench.model.transformer import Dropout

    dropout = Dropout(0.1).train()
    x = torch.ones(1000, 999)
    torch.manual_seed(0)
    y = dropout(x)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.005
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # the seed decides the mask
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.slow
def test_compiled_pretraining_gives_the_eager_losses_and_a_plain_checkpoint(nano_cfg, tmp_path):
    from sharebench import load_pretrained
    from sharebench.train.tasks import run_task

    no_dropout = ("arch.dropout=0", "arch.attention_dropout=0", "sharing=partial_qk", "ratio=0.5")
    eager = run_task(nano_cfg(*no_dropout), tmp_path / "eager")
    compiled = run_task(nano_cfg(*no_dropout, "compile=true"), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    assert compiled["metrics"]["val_loss"] == pytest.approx(eager["metrics"]["val_loss"], rel=1e-4)
    assert compiled["metrics"]["train_loss"] == pytest.approx(eager["metrics"]["train_loss"], rel=1e-4)
    model = load_pretrained(tmp_path / "compiled")  # parameter names of the plain model
    assert model.parameter_counts().unique == compiled["parameters"]["unique"]


@pytest.mark.slow
def test_bf16_mixed_precision_pretrains_with_gradient_clipping(nano_cfg, tmp_path):
    """Lightning refuses to clip a fused optimizer's gradients under mixed precision; the suite then steps with
    the multi-tensor AdamW, and the run trains to about the fp32 loss."""
    from sharebench.train.tasks import run_task

    no_dropout = ("arch.dropout=0", "arch.attention_dropout=0", "trainer.gradient_clip_val=1.0")
    fp32 = run_task(nano_cfg(*no_dropout), tmp_path / "fp32")
    bf16 = run_task(nano_cfg(*no_dropout, "trainer.precision=bf16-mixed"), tmp_path / "bf16")
    assert bf16["status"] == "completed"
    assert bf16["metrics"]["val_loss"] == pytest.approx(fp32["metrics"]["val_loss"], rel=0.02)


def test_masked_lm_head_runs_on_a_multiple_of_64_rows_with_the_same_loss(monkeypatch):
    """Batches predict a varying number of tokens; the head always sees a multiple of PREDICTED_ROWS rows (so its
    tensors come in a few sizes the allocator reuses) and the loss is that of the predicted tokens alone."""
    import torch.nn.functional as F

    from sharebench.model.transformer import IGNORE_INDEX, PREDICTED_ROWS, LMHead
    from sharebench.run.build import build_model

    torch.manual_seed(0)
    model = build_model(spec_of(["size=nano", "data.seq_len=32"]), 100).eval()
    seen = []
    padded_logits = LMHead.padded_logits

    def counting(self, hidden):
        seen.append(len(hidden))
        return padded_logits(self, hidden)

    monkeypatch.setattr(LMHead, "padded_logits", counting)
    ids = torch.randint(0, 100, (4, 32))
    for share in (0.1, 0.15, 0.3):
        labels = torch.where(torch.rand(ids.shape) < share, ids, IGNORE_INDEX)
        out = model(ids, labels)
        predicted = labels != IGNORE_INDEX
        assert out.logits.shape == (int(predicted.sum()), 100)
        assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels[predicted]), rtol=1e-6)
    assert seen and all(rows % PREDICTED_ROWS == 0 for rows in seen)
