"""`sharebench export <run> <folder>`: a finished run's model as a Hugging Face folder that `transformers` loads.

An unshared BERT (post-LN, biases, the suite's default) becomes a plain `BertForMaskedLM` folder, and an
unshared or grouped-K/V Llama (arch=llama with sharing none, gqa or mqa) a plain `LlamaForCausalLM` one, loaded
natively. Every other model is written with a modeling file and the suite's own model code beside it (sb_*.py,
the modules of `sharebench.model.transformer`, `.sharing` and `.layers`, their imports made relative), loaded with
`trust_remote_code=True` by AutoModelForMaskedLM (arch=bert) or AutoModelForCausalLM (arch=gpt, llama). Either
way model.safetensors stores each shared tensor once, and the tokenizer comes along as a `tokenizer.json` that
AutoTokenizer reads.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file, save_model

from sharebench.data.tokenizer import CHARS_FILE, SPECIAL_TOKENS, load_run_tokenizer
from sharebench.errors import ConfigError
from sharebench.model import llama
from sharebench.model.checkpoint import HF_NAMES, SPEC_NAME, load_pretrained, read_spec
from sharebench.model.transformer import LanguageModel
from sharebench.paths import PACKAGE_DIR
from sharebench.schema import RECORD_NAME, read_record

# The modules a remote-code folder carries: what `sharebench.model.transformer` needs to build any scheme.
MODEL_MODULES = ("errors", "registry", "model.transformer", "sharing.base", "layers.base")
SCHEME_PACKAGES = ("sharing", "layers")
# What a package's own imports stand for in a flat folder (the names they re-export live in their base module).
PACKAGE_MODULES = {"sharing": "sharing.base", "layers": "layers.base"}
HF_ACTIVATION_OF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def export(run: Path, folder: Path) -> dict[str, Any]:
    """Writes `folder`; returns how it loads, the weights file's bytes and the parameters it stores (each shared
    tensor once)."""
    record_path = run / RECORD_NAME
    if not (run / SPEC_NAME).is_file() or not record_path.is_file():
        raise ConfigError(f"export: {run} is not a finished run's folder (no {SPEC_NAME} and {RECORD_NAME})")
    status = read_record(run).get("status")
    if status != "completed":
        raise ConfigError(f"export: {run} did not complete (its status is {status}); finish or resume it first")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"export: {folder} is not empty; give a new or empty folder")
    model = load_pretrained(run)
    sharing = read_spec(run)["sharing"]
    if sharing.get("head_sources"):
        raise ConfigError("export: head-wise shared models (DirectShare conversions) do not export yet; export the "
                          "model they were converted from")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    if native_bert(model):
        written = _export_bert(model, folder)
    elif llama.native(model):
        written = _export_llama(model, folder)
    else:
        written = _export_remote_code(model, sharing, folder)
    _export_tokenizer(run, folder, model.config.causal, model.config.max_positions)
    with safe_open(folder / "model.safetensors", "pt") as weights:
        stored = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return {**written, "folder": str(folder), "bytes": (folder / "model.safetensors").stat().st_size,
            "stored_parameters": stored}  # fmt: skip


def native_bert(model: LanguageModel) -> bool:
    """Whether `transformers`' own BertForMaskedLM computes what this model computes."""
    cfg = model.config
    return (
        cfg.objective == "mlm" and model.sharing_name == "none" and model.layers.name == "none"
        and cfg.norm_position == "post" and cfg.bias and cfg.qkv_bias and cfg.activation in HF_ACTIVATION_OF
        and cfg.type_vocab_size > 0
    )  # fmt: skip


def _export_bert(model: LanguageModel, folder: Path) -> dict[str, Any]:
    cfg = model.config
    ours = model.state_dict()
    renamed = {}
    for hf, suite in HF_NAMES.items():
        for layer in range(cfg.n_layers) if "{i}" in hf else [None]:
            source, target = suite.replace("{i}", str(layer)), hf.replace("{i}", str(layer))
            for leaf in ("weight", "bias"):
                if f"{source}.{leaf}" in ours:
                    prefix = "" if target.startswith("cls.") else "bert."
                    renamed[f"{prefix}{target}.{leaf}"] = ours[f"{source}.{leaf}"]
    for layer in range(cfg.n_layers):
        for leaf in ("weight", "bias"):
            qkv = ours[f"transformer.blocks.{layer}.attn.qkv.proj.{leaf}"].chunk(3)
            for role, tensor in zip(("query", "key", "value"), qkv, strict=True):
                renamed[f"bert.encoder.layer.{layer}.attention.self.{role}.{leaf}"] = tensor
    renamed = {name: tensor for name, tensor in renamed.items() if ".pooler." not in name}  # unused by the MLM
    renamed["cls.predictions.bias"] = ours["head.decoder.bias"]
    renamed.pop("cls.predictions.decoder.bias", None)
    if cfg.tie_embeddings:  # transformers ties the decoder to the word embeddings itself
        renamed.pop("cls.predictions.decoder.weight", None)
    save_file({name: tensor.contiguous() for name, tensor in renamed.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    config = {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_dim, "hidden_act": HF_ACTIVATION_OF[cfg.activation],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "pad_token_id": 0,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"loads_as": "BertForMaskedLM", "trust_remote_code": False}


def _export_llama(model: LanguageModel, folder: Path) -> dict[str, Any]:
    config, state = llama.to_hf(model)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"loads_as": "LlamaForCausalLM", "trust_remote_code": False}


def _export_remote_code(model: LanguageModel, sharing: dict[str, Any], folder: Path) -> dict[str, Any]:
    save_model(model, str(folder / "model.safetensors"))  # each shared tensor once, as the suite's checkpoint
    modules = [*MODEL_MODULES]
    for package in SCHEME_PACKAGES:
        modules += sorted(f"{package}.{p.stem}" for p in (PACKAGE_DIR / package).glob("*.py")
                          if p.stem not in ("__init__", "base"))  # fmt: skip
    for module in modules:
        (folder / f"{flat_name(module)}.py").write_text(relative_imports((PACKAGE_DIR / module.replace(".", "/"))
                                                                         .with_suffix(".py").read_text()))  # fmt: skip
    schemes = "\n".join(f"from .{flat_name(m)} import *  # noqa: F403" for m in modules if m.split(".")[0]
                        in SCHEME_PACKAGES and not m.endswith(".base"))  # fmt: skip
    remote_code = PACKAGE_DIR / "model" / "hf"
    template = (remote_code / "modeling_sharebench.py").read_text()
    (folder / "modeling_sharebench.py").write_text(template.replace("# {scheme modules}", schemes))
    shutil.copyfile(remote_code / "configuration_sharebench.py", folder / "configuration_sharebench.py")
    head = "SharebenchForCausalLM" if model.config.causal else "SharebenchForMaskedLM"
    auto = "AutoModelForCausalLM" if model.config.causal else "AutoModelForMaskedLM"
    config = {
        "architectures": [head], "model_type": "sharebench",
        "auto_map": {"AutoConfig": "configuration_sharebench.SharebenchConfig", auto: f"modeling_sharebench.{head}"},
        "model": model.config.to_dict(),
        "sharing": sharing, "tie_word_embeddings": False,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"loads_as": f"{auto} (trust_remote_code=True)", "trust_remote_code": True}


def flat_name(module: str) -> str:
    return "sb_" + module.replace(".", "_")


def relative_imports(source: str) -> str:
    """`from sharebench.sharing.base import x` → `from .sb_sharing_base import x`: transformers copies a remote-code
    model's modules, found by their relative imports, into one flat package."""

    def replace(match: re.Match) -> str:
        module = PACKAGE_MODULES.get(match[2], match[2])
        return f"{match[1]}from .{flat_name(module)} import"

    return re.sub(r"^(\s*)from sharebench\.([\w.]+) import", replace, source, flags=re.MULTILINE)


def document_boundary(run: Path, vocab: dict[str, int]) -> str | None:
    """The token a causal run put between documents, else its newline character, else None."""
    separator = load_run_tokenizer(run).separator_id
    if separator is not None:
        return next(token for token, index in vocab.items() if index == separator)
    return "\n" if "\n" in vocab else None


def _export_tokenizer(run: Path, folder: Path, causal: bool, max_positions: int) -> None:
    """tokenizer.json for PreTrainedTokenizerFast: the run's WordPiece tokenizer, or its characters as a vocabulary
    of single characters. A causal model's beginning and end of text (`bos_token`, `eos_token`, which
    lm-evaluation-harness starts a continuation from) are the token the run put between documents, or for a
    character model that had none, its newline. Its `model_max_length` is the model's context, to which readers
    (lm-evaluation-harness) cut their inputs."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel

    if (run / "tokenizer.json").is_file():
        shutil.copyfile(run / "tokenizer.json", folder / "tokenizer.json")
        vocab = json.loads((run / "tokenizer.json").read_text())["model"]["vocab"]
    else:
        chars = json.loads((run / CHARS_FILE).read_text())
        vocab = {c: i for i, c in enumerate(chars["chars"])}
        vocab.update({t: len(vocab) + i for i, t in enumerate(chars["special_tokens"])})
        tokenizer = Tokenizer(WordLevel(vocab, unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        tokenizer.save(str(folder / "tokenizer.json"))
    special = {f"{t[1:-1].lower()}_token": t for t in SPECIAL_TOKENS if t in vocab}
    if causal and (boundary := document_boundary(run, vocab)) is not None:
        special |= {"bos_token": boundary, "eos_token": boundary}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_positions, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
