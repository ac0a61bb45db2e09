"""Speed work never changes results: the fast path of the model gives the loss of the plain reference path
(materialised per-role projections, explicit softmax attention, logits at every position) for every scheme on
every architecture (the fast tier: every scheme on one of them)."""

from __future__ import annotations

import pytest
import torch

from sharebench.layers import LAYER_SCHEMES
from sharebench.model.convert import direct_share
from sharebench.model.reference import reference_loss
from sharebench.model.transformer import IGNORE_INDEX
from sharebench.run.build import build_model
from sharebench.sharing import SCHEMES
from tests.conftest import each_once_in_the_fast_tier, layers_for, spec_of, within_layer_for

VOCAB = 97
ARCHS = ("bert", "gpt", "llama")
SIZE = ["size.n_layers=4", "size.dim=48", "size.n_heads=4", "size.ffn_dim=96", "data.seq_len=24"]


def batch(objective: str, padded: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 24), generator=generator)
    labels = ids.clone()
    if objective == "mlm":
        labels[torch.rand(ids.shape, generator=generator) > 0.15] = IGNORE_INDEX
        labels[:, 0] = ids[:, 0]  # at least one prediction per row
    mask = torch.ones_like(ids)
    if padded:
        mask[0, 18:] = 0
        labels[0, 18:] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def model_with(*overrides: str):
    torch.manual_seed(0)
    model = build_model(spec_of([*SIZE, *overrides]), VOCAB).eval()
    with torch.no_grad():  # move every parameter off its initial value (ones, zeros) so each one matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def assert_same_loss(model, objective: str, padded: bool = False) -> None:
    inputs = batch(objective, padded)
    if not padded:
        inputs.pop("attention_mask")
    fast = model(**inputs).loss
    plain = reference_loss(model, **inputs)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=0), (fast.item(), plain.item())


RATIOS = {"partial_qk": 0.5, "shared_qkv": 0.5, "gqa": 0.5}


@pytest.mark.parametrize(
    ("arch", "scheme"), each_once_in_the_fast_tier([(arch, scheme) for scheme in sorted(SCHEMES) for arch in ARCHS])
)
def test_fast_path_matches_the_reference_for_every_within_layer_scheme(scheme, arch):
    ratio = [f"ratio={RATIOS[scheme]}"] if scheme in RATIOS else []
    model = model_with(f"arch={arch}", f"sharing={scheme}", *ratio)
    objective = "mlm" if arch == "bert" else "causal"
    assert_same_loss(model, objective)
    assert_same_loss(model, objective, padded=True)


@pytest.mark.parametrize(
    ("arch", "layers"),
    each_once_in_the_fast_tier([(arch, layers) for layers in sorted(LAYER_SCHEMES) for arch in ARCHS
                                if not (arch == "bert" and LAYER_SCHEMES[layers].decoder_only)]),
)  # fmt: skip
def test_fast_path_matches_the_reference_for_every_cross_layer_scheme(layers, arch):
    ratio = ["layers.ratio=0.5"] if LAYER_SCHEMES[layers].ratio_range else []
    ratio += layers_for(f"layers={layers}")
    model = model_with(f"arch={arch}", f"layers={layers}", *ratio, *within_layer_for(layers))
    assert_same_loss(model, "mlm" if arch == "bert" else "causal", padded=arch == "bert")


def test_masked_lm_runs_the_last_layer_only_at_predicted_positions():
    model = model_with("arch=bert")
    inputs = batch("mlm", padded=True)
    widths = []
    for block in model.transformer.blocks:
        block.ffn.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[1]))
    model(**inputs)
    most_predicted = int((inputs["labels"] != IGNORE_INDEX).sum(1).max())
    assert widths == [24, 24, 24, most_predicted] and most_predicted < 24


def test_fast_path_matches_the_reference_after_directshare():
    model = direct_share(model_with("arch=bert"), 0.25)
    assert_same_loss(model, "mlm", padded=True)


def test_partial_qk_split_matrix_matches_the_reference():
    assert_same_loss(model_with("sharing=partial_qk", "ratio=0.3", "sharing.split=matrix"), "mlm")


def test_fused_adamw_takes_the_same_steps_as_the_plain_loop():
    from sharebench.train.optim import adamw_with_schedule

    models = [model_with("sharing=partial_qk", "ratio=0.5") for _ in range(2)]
    optimizers = [adamw_with_schedule(m, 1e-3, 0.01, 1, 10, "linear", 0.0)["optimizer"] for m in models]
    for group in optimizers[1].param_groups:
        group["fused"] = False  # the per-tensor reference implementation
    inputs = batch("mlm", padded=False)
    inputs.pop("attention_mask")
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    fused, plain = (model(**inputs).loss for model in models)
    assert torch.allclose(fused, plain, rtol=1e-5, atol=0), (fused.item(), plain.item())
    assert fused < reference_loss(model_with("sharing=partial_qk", "ratio=0.5"), **inputs)  # the steps did train


def test_the_walkthrough_scheme_works_as_documented():
    """docs/schemes.md's walkthrough module, as a newcomer would write it, passes the reference check and
    stores one D × D block fewer per layer."""
    from functools import partial

    from sharebench.model.transformer import LanguageModel
    from sharebench.paths import PROJECT_ROOT
    from sharebench.run.build import model_config

    text = (PROJECT_ROOT / "docs" / "schemes.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec("\n".join(line.removeprefix("   ") for line in code.splitlines()), namespace)
    scheme = namespace["SharedKV"]
    cfg = spec_of([*SIZE, "arch=gpt"])
    torch.manual_seed(0)
    model = LanguageModel(model_config(cfg, VOCAB), partial(scheme), scheme.name).eval()
    assert_same_loss(model, "causal")
    unshared = build_model(cfg, VOCAB).parameter_counts()
    per_layer = cfg.size.dim * (cfg.size.dim + cfg.arch.qkv_bias)  # a weight block (and its bias)
    assert model.parameter_counts().unique == unshared.unique - cfg.size.n_layers * per_layer


@pytest.mark.parametrize("kv_overrides", [["sharing=none"], ["sharing=gqa", "ratio=0.5"], ["sharing=mqa"]])
def test_llama_logits_equal_transformers_llama(kv_overrides):
    """arch=llama is Llama: its logits equal transformers' LlamaForCausalLM with the same weights (fp32), with
    all, half and one of the key/value heads; also after cached tokens (rotary positions past the cache)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = model_with("arch=llama", *kv_overrides)
    cfg = model.config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=model.transformer.blocks[0].attn.qkv.n_kv_heads,
        rms_norm_eps=cfg.layer_norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
    )).eval()  # fmt: skip
    weights = {"model.embed_tokens.weight": model.transformer.embeddings.tokens.weight,
               "model.norm.weight": model.transformer.final_norm.weight}  # fmt: skip
    for layer, block in enumerate(model.transformer.blocks):
        roles = block.attn.qkv.role_weights()
        prefix = f"model.layers.{layer}."
        weights |= {f"{prefix}self_attn.{role}_proj.weight": roles[role][0] for role in "qkv"}
        weights |= {f"{prefix}self_attn.o_proj.weight": block.attn.out.weight,
                    f"{prefix}mlp.gate_proj.weight": block.ffn.gate.weight,
                    f"{prefix}mlp.up_proj.weight": block.ffn.up.weight,
                    f"{prefix}mlp.down_proj.weight": block.ffn.down.weight,
                    f"{prefix}input_layernorm.weight": block.attn_norm.weight,
                    f"{prefix}post_attention_layernorm.weight": block.ffn_norm.weight}  # fmt: skip
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in weights.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # the head is tied to the embeddings
    ids = batch("causal", False)["input_ids"]
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()
        cache = [None] * cfg.n_layers
        model.transformer(ids[:, :20], cache=cache)  # the first 20 tokens cached, the last 4 after them
        last = model.head(model.transformer(ids[:, 20:], cache=cache))
        assert torch.allclose(last, theirs[:, 20:], atol=1e-4, rtol=0)
