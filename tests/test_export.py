"""`sharebench export`: every scheme of the three architectures out to `transformers`, with the suite's logits and
each shared tensor stored once; an unshared BERT as transformers' own BertForMaskedLM, an unshared or grouped-K/V
Llama as its own LlamaForCausalLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sharebench.errors import ConfigError
from sharebench.model.checkpoint import load_pretrained, save_pretrained
from sharebench.model.export import export
from sharebench.run.build import build_model
from sharebench.run.composing import compose, group_choices
from sharebench.train.tasks import run_task
from tests.conftest import decoder_only, each_once_in_the_fast_tier, layers_for, run_in_process, spec_of

transformers = pytest.importorskip("transformers")
ARCHS = {"bert": [], "gpt": ["arch=gpt", "data=tinyshakespeare"], "llama": ["arch=llama", "data=tinyshakespeare"]}
NATIVE = {("bert", "sharing=none"): "BertForMaskedLM", **{("llama", f"sharing={name}"): "LlamaForCausalLM"
                                                          for name in ("none", "gqa", "mqa")}}  # fmt: skip
SCHEMES = [[f"sharing={name}"] for name in group_choices("sharing")] + [
    [f"layers={name}"] for name in group_choices("layers") if name != "none"
]
SIZE = ["size.n_layers=4", "size.dim=64", "size.n_heads=4", "size.ffn_dim=128"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nano_overrides_for_module) -> dict[str, Path]:
    """A finished nano run of each architecture: its record and tokenizer serve every scheme's checkpoint."""
    runs = {}
    for arch, overrides in ARCHS.items():
        runs[arch] = tmp_path_factory.mktemp(f"run-{arch}")
        run_task(compose([*nano_overrides_for_module, *overrides, *SIZE]), runs[arch])
    return runs


@pytest.fixture(scope="module")
def nano_overrides_for_module(corpus, cache_dir, tmp_path_factory) -> list[str]:
    from tests.conftest import nano_settings

    return [*nano_settings(corpus, cache_dir, tmp_path_factory.mktemp("outputs")), "trainer.max_steps=1"]


def scheme_run(trained: Path, overrides: list[str], folder: Path) -> Path:
    """A copy of a finished run holding a model of another scheme (initialised, not trained)."""
    spec = spec_of(overrides)
    shutil.copytree(trained, folder)
    vocab_size = json.loads((trained / "run.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    save_pretrained(build_model(spec, vocab_size), folder, spec.shares)
    return folder


def loaded(folder: Path, info: dict, causal: bool) -> torch.nn.Module:
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForMaskedLM
    return auto.from_pretrained(folder, trust_remote_code=info["trust_remote_code"]).eval()


@pytest.mark.parametrize(
    ("arch", "scheme"),
    each_once_in_the_fast_tier(
        [(arch, scheme) for scheme in SCHEMES for arch in ARCHS if not (arch == "bert" and decoder_only(scheme[0]))],
        name=lambda scheme: scheme[0],
    ),
)
def test_every_scheme_exports_with_the_suites_logits_and_shared_tensors_once(arch, scheme, trained, tmp_path,
                                                                               nano_overrides_for_module):  # fmt: skip
    overrides = [*nano_overrides_for_module, *ARCHS[arch], *SIZE, *scheme, *layers_for(scheme[0])]
    run = scheme_run(trained[arch], overrides, tmp_path / "run")
    info = export(run, tmp_path / "hf")
    model = load_pretrained(run)
    unique = model.parameter_counts().unique
    native = NATIVE.get((arch, scheme[0]))
    assert info["trust_remote_code"] is not bool(native)
    pooler = sum(p.numel() for p in model.pooler.parameters()) if native and model.pooler else 0
    assert info["stored_parameters"] == unique - pooler  # each shared tensor once
    assert 4 * info["stored_parameters"] <= info["bytes"] <= 1.06 * 4 * info["stored_parameters"]
    hf = loaded(tmp_path / "hf", info, model.config.causal)
    if native:
        assert type(hf).__name__ == native
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        for attention_mask in (None, mask):
            ours = model.head(model.encode(ids, attention_mask))
            theirs = hf(input_ids=ids, attention_mask=attention_mask).logits
            keep = slice(None) if attention_mask is None else mask.bool()
            torch.testing.assert_close(theirs[keep], ours[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_basis_sharing_conversion_exports_with_the_suites_logits(arch, trained, tmp_path):
    """Issue 48, item 4: a trained GPT or Llama converted by `convert --to basis`, then exported, computes in
    transformers what it computes in the suite; its shared bases are stored once."""
    from sharebench.train.conversion import convert_checkpoint

    model = convert_checkpoint(trained[arch], tmp_path / "basis", "basis", 0.3, group=2).eval()
    info = export(tmp_path / "basis", tmp_path / "hf")
    assert info["trust_remote_code"] and info["stored_parameters"] == model.parameter_counts().unique
    hf = loaded(tmp_path / "hf", info, causal=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_exported_tokenizer_encodes_as_the_run_did(arch, trained, tmp_path):
    from sharebench.data.tokenizer import load_run_tokenizer

    export(trained[arch], tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "the king walks over the river. north"
    ours = load_run_tokenizer(trained[arch]).encode_batch([text])[0]
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours
    assert (arch == "bert") == (theirs.mask_token == "[MASK]")


def test_unfinished_runs_and_non_empty_folders_are_refused(trained, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty; give a new or empty folder"):
        export(trained["bert"], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    unfinished = shutil.copytree(trained["bert"], tmp_path / "unfinished")
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    with pytest.raises(ConfigError, match="did not complete \\(its status is interrupted\\)"):
        export(unfinished, tmp_path / "out")
    with pytest.raises(ConfigError, match="is not a finished run's folder"):
        export(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_command_on_a_trained_run(trained, tmp_path):
    command = ["sharebench", "export", str(trained["gpt"]), str(tmp_path / "hf")]
    result = run_in_process(command, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["loads_as"] == "AutoModelForCausalLM (trust_remote_code=True)"
    again = run_in_process(command, tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "is not empty" in again.stderr
