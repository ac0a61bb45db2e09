"""Decoding with a KV cache: the same tokens and logits as recomputing the whole prefix, for every within-layer
and cross-layer scheme, and a cache whose size follows the scheme."""

from __future__ import annotations

import json

import pytest
import torch

from sharebench.run.build import build_model
from sharebench.run.composing import group_choices
from tests.conftest import layers_for, spec_of

WITHIN = group_choices("sharing")
ACROSS = [c for c in group_choices("layers") if c != "none"]


def decoder(nano_cfg, *overrides: str, arch: str = "gpt"):
    torch.manual_seed(0)
    cfg = nano_cfg(f"arch={arch}", "arch.dropout=0", "arch.attention_dropout=0", "size.n_layers=4", *overrides)
    return build_model(spec_of(cfg), vocab_size=200).eval()


SCHEMES = [["arch=gpt", f"sharing={s}"] for s in WITHIN] + [
    ["arch=gpt", f"layers={c}", *layers_for(f"layers={c}")] for c in ACROSS
]
# Rotary positions (the table of cosines grows as decoding goes on) with separate, grouped and reused keys.
ROTARY = [["arch=llama", "sharing=none"], ["arch=llama", "sharing=gqa"], ["arch=llama", "layers=cla"]]


@pytest.mark.parametrize("overrides", SCHEMES + ROTARY, ids=lambda o: " ".join(o))
def test_cached_decoding_matches_recomputing_the_prefix(nano_cfg, overrides):
    model = decoder(nano_cfg, *overrides[1:], arch=overrides[0].removeprefix("arch="))
    prompt = torch.randint(0, 200, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 20, temperature=0)
    recomputed = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)

    cache = model.new_cache()  # step by step, the logits of each new token against the full forward pass
    model.transformer(cached[:, :10], cache=cache)
    for position in range(10, 14):
        hidden = model.transformer(cached[:, position : position + 1], cache=cache)
        full = model.transformer(cached[:, : position + 1])[:, -1:]
        torch.testing.assert_close(hidden, full, rtol=1e-5, atol=1e-5)


def test_generation_past_the_context_keeps_the_latest_tokens(nano_cfg):
    model = decoder(nano_cfg, "data.seq_len=16")
    prompt = torch.randint(0, 200, (1, 4), generator=torch.Generator().manual_seed(2))
    cached = model.generate(prompt, 30, temperature=0)
    assert cached.shape == (1, 34)
    assert torch.equal(cached, model.generate(prompt, 30, temperature=0, use_cache=False))


def test_sampling_follows_the_generator(nano_cfg):
    model = decoder(nano_cfg)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    draw = [model.generate(prompt, 12, top_k=50, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])


def test_an_encoder_does_not_generate(nano_cfg):
    model = build_model(spec_of(nano_cfg()), vocab_size=200).eval()
    with pytest.raises(ValueError, match="generate needs a decoder"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 3)


def kv_bytes_per_token(nano_cfg, *overrides: str) -> int:
    from sharebench.model.inference import kv_cache_bytes

    return sum(kv_cache_bytes(decoder(nano_cfg, "size.n_heads=4", *overrides), tokens=8)) // 8


def test_kv_cache_shrinks_as_the_scheme_says(nano_cfg):
    """fp32 keys and values: 2 × 4 bytes × D per layer and token without sharing."""
    none = kv_bytes_per_token(nano_cfg)
    dim, layers = 32, 4  # size=nano with 4 layers
    assert none == 2 * 4 * dim * layers
    assert kv_bytes_per_token(nano_cfg, "sharing=mqa") * 4 == none  # one key/value head of H = 4
    assert kv_bytes_per_token(nano_cfg, "sharing=gqa", "ratio=0.5") * 2 == none  # G = H/2
    assert kv_bytes_per_token(nano_cfg, "layers=cla", "layers.ratio=0.5") * 2 == none  # k = 2: every other layer
    assert kv_bytes_per_token(nano_cfg, "sharing=symmetric") == none  # Q = K shares weights, not the cache


def test_inference_costs_of_a_decoder_and_an_encoder(nano_cfg):
    from sharebench.model.inference import inference_costs

    costs = inference_costs(decoder(nano_cfg), seq_len=16)
    assert costs["kv_cache_bytes_per_token"] == sum(costs["kv_cache_bytes_per_token_by_layer"]) > 0
    assert set(costs["tokens_per_second"]) == {"batch_1", "batch_8"}
    assert costs["peak_bytes"] > costs["weights_bytes"] > 0
    encoder = inference_costs(build_model(spec_of(nano_cfg()), vocab_size=200), seq_len=16)
    assert encoder["kv_cache_bytes_per_token"] is None and encoder["tokens_per_second"]["batch_32"] > 0


def test_generate_and_infer_commands_on_a_trained_character_model(nano_cfg, tmp_path, capsys):
    import json

    from sharebench.cli import main
    from sharebench.train.tasks import run_task

    record = run_task(
        nano_cfg("arch=gpt", "data.tokenizer.kind=char", "data.tokenizer.vocab_size=null", "measure=true"), tmp_path
    )
    capsys.readouterr()  # the run's own lines
    main(["generate", str(tmp_path), "--prompt", "The king", "--tokens", "20", "--temperature", "0"])
    text = capsys.readouterr().out
    assert text.startswith("The king") and len(text.rstrip("\n")) == len("The king") + 20
    main(["infer", str(tmp_path)])
    costs = json.loads(capsys.readouterr().out)
    assert costs["kv_cache_bytes_per_token"] == record["inference"]["kv_cache_bytes_per_token"] > 0
    assert costs["weights_bytes"] == record["inference"]["weights_bytes"] == record["memory"]["weights_bytes"]


def test_generate_and_infer_loop_a_recurrent_depth_core_as_often_as_asked(nano_cfg, tmp_path, capsys):
    import json

    from sharebench.cli import main
    from sharebench.train.tasks import run_task

    run_task(nano_cfg("arch=gpt", "layers=recurrent_depth", "size.n_layers=3"), tmp_path)  # the core looped once
    capsys.readouterr()
    main(["infer", str(tmp_path)])
    trained = json.loads(capsys.readouterr().out)
    main(["infer", str(tmp_path), "--loops", "4"])
    deeper = json.loads(capsys.readouterr().out)
    assert len(deeper["kv_cache_bytes_per_token_by_layer"]) == 6 and deeper["weights_bytes"] == trained["weights_bytes"]
    assert deeper["kv_cache_bytes_per_token"] * 3 == trained["kv_cache_bytes_per_token"] * 6
    main(["generate", str(tmp_path), "--prompt", "The", "--tokens", "5", "--temperature", "0", "--loops", "4"])
    assert capsys.readouterr().out.startswith("the")  # the uncased WordPiece vocabulary


def test_generate_refuses_an_encoder(nano_cfg, tmp_path):
    from sharebench.cli import generate
    from sharebench.errors import ConfigError
    from sharebench.train.tasks import run_task

    run_task(nano_cfg(), tmp_path)
    with pytest.raises(ConfigError, match="holds an encoder"):
        generate(tmp_path, "The", 5, 0.8, 200, 0)


def test_infer_takes_a_converted_checkpoint(nano_cfg, tmp_path):
    from sharebench.cli import infer
    from sharebench.train.conversion import convert_checkpoint
    from sharebench.train.tasks import run_task

    run_task(nano_cfg("arch=gpt", "size.n_heads=4"), tmp_path / "run")
    convert_checkpoint(tmp_path / "run", tmp_path / "gqa", "gqa", 0.5, 8)
    record = json.loads((tmp_path / "gqa" / "run.json").read_text())  # a conversion is recorded like a run
    assert record["status"] == "completed" and record["sharing"]["name"] == "gqa"
    assert record["sharing"]["conversion"] == {"to": "gqa", "ratio": 0.5, "rank": 8}
    assert (
        record["parameters"]["unique"] < json.loads((tmp_path / "run" / "run.json").read_text())["parameters"]["unique"]
    )
    separate, grouped = infer(tmp_path / "run", None), infer(tmp_path / "gqa", None)
    assert grouped["kv_cache_bytes_per_token"] * 2 == separate["kv_cache_bytes_per_token"]
    assert grouped["weights_bytes"] < separate["weights_bytes"]
