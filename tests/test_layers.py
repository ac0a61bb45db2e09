"""Cross-layer schemes (trained from scratch) and sharing applied to trained models (DirectShare, PostShare,
GQA and recursive conversion): exact accounting, the outputs they must keep, and round trips through checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import get_class

from sharebench.errors import ConfigError
from sharebench.layers import LAYER_SCHEMES
from sharebench.layers.takase import Cycle, CycleRev, Sequence
from sharebench.model.checkpoint import load_pretrained, save_pretrained
from sharebench.model.convert import direct_share, mlkv_sources, select_shared_heads, share_heads, to_gqa, to_mlkv
from sharebench.model.shares import SharingSpec
from sharebench.paths import PROJECT_ROOT
from sharebench.run.build import build_model
from sharebench.run.composing import compose
from sharebench.train.conversion import convert_checkpoint
from tests.conftest import decoder_only, layers_for, spec_of, within_layer_for
from tests.test_checkpoint import minilm_folder

VOCAB = 1000
L, D, H, F = 6, 64, 4, 128  # a 6-layer model so that M = 1, 2, 3 and 6 all divide L
SIZE = [f"size.n_layers={L}", f"size.dim={D}", f"size.n_heads={H}", f"size.ffn_dim={F}"]
ATTENTION = 4 * (D * D + D)  # Q, K, V, O with biases (BERT)
FFN = 2 * D * F + F + D
NORMS = 2 * 2 * D
BLOCK = ATTENTION + FFN + NORMS


def counts(*overrides: str):
    with torch.device("meta"):
        return build_model(spec_of([*SIZE, *overrides]), VOCAB).parameter_counts()


def test_every_layers_yaml_names_a_scheme_and_back():
    """Each scheme has its YAML under its name; a preset (mobilellm_ls) is a YAML naming a scheme with settings."""
    from omegaconf import OmegaConf

    targets = {p.stem: OmegaConf.load(p)["_target_"] for p in (PROJECT_ROOT / "conf" / "layers").glob("*.yaml")}
    files = set(targets)
    assert set(LAYER_SCHEMES) <= files
    presets = {name: target for name, target in targets.items() if name not in LAYER_SCHEMES}
    assert presets == {"mobilellm_ls": "sharebench.layers.takase.Sequence"}
    assert all(get_class(target).name in LAYER_SCHEMES for target in targets.values())
    assert {"none", "all", "attn", "ffn", "sequence", "cycle", "cycle_rev", "sandwich", "cla", "recursive_lora",
            "ffn_wide"} <= files  # fmt: skip


@pytest.mark.parametrize("scheme", ["sequence", "cycle", "cycle_rev"])
@pytest.mark.parametrize("sets", [1, 2, 3, 6])
def test_whole_block_sharing_stores_exactly_m_blocks(scheme, sets):
    none = counts()
    shared = counts(f"layers={scheme}", f"layers.ratio={1 - sets / L}")
    assert shared.unique == none.unique - (L - sets) * BLOCK
    assert shared.total == none.total  # every layer still uses a whole block


def test_albert_stores_one_block():
    none, albert = counts(), counts("layers=all")
    assert albert.unique == none.unique - (L - 1) * BLOCK  # one layer's parameters plus embeddings and heads
    assert albert.total == none.total
    assert albert.unique == counts("layers=sequence", f"layers.ratio={1 - 1 / L}").unique


@pytest.mark.parametrize("part,size", [("attn", ATTENTION), ("ffn", FFN)])
def test_albert_attn_and_ffn_share_only_that_part(part, size):
    shared = counts(f"layers={part}", "layers.ratio=0.5")
    assert shared.unique == counts().unique - (L - 3) * size
    assert shared.by_component["norms"] == counts().by_component["norms"]


def test_sandwich_keeps_first_and_last_layers():
    assert counts("layers=sandwich").unique == counts().unique - (L - 3) * BLOCK


@pytest.mark.parametrize("factor", [1, 2, 3, 6])
def test_cla_removes_the_key_value_projections_of_reusing_layers(factor):
    cla = counts("layers=cla", f"layers.ratio={1 - 1 / factor}")
    reusing = L - L // factor
    assert cla.unique == counts().unique - reusing * 2 * (D * D + D)


def test_ffn_wide_keeps_the_parameter_count_with_one_ffn():
    wide = counts("layers=ffn_wide")
    assert abs(wide.unique - counts().unique) <= 2 * D + 1  # one FFN unit
    model = build_model(spec_of([*SIZE, "layers=ffn_wide"]), VOCAB)
    assert len({id(b.ffn) for b in model.transformer.blocks}) == 1
    assert len({id(b.attn) for b in model.transformer.blocks}) == L


@pytest.mark.parametrize("rank", [1, 4])
def test_recursive_lora_stores_m_blocks_of_matrices_and_per_layer_lora_and_vectors(rank):
    sets = 2
    recursive = counts("layers=recursive_lora", f"layers.ratio={1 - sets / L}", f"layers.rank={rank}")
    matrices = 4 * D * D + 2 * D * F
    vectors = BLOCK - matrices
    lora = rank * ((D + 3 * D) + (D + D) + (D + F) + (F + D))  # the fused Q/K/V projection has one LoRA
    assert recursive.unique == counts().unique - L * BLOCK + sets * matrices + L * (vectors + lora)


def test_within_and_cross_layer_schemes_compose():
    cycle = counts("layers=cycle", "layers.ratio=0.5")
    both = counts("sharing=partial_qk", "ratio=0.5", "layers=cycle", "layers.ratio=0.5")
    shared_columns = H * round(0.5 * D / H)
    assert both.unique == cycle.unique - 3 * shared_columns * (D + 1)


@pytest.mark.parametrize("scheme,expected", [(Sequence, [0, 0, 1, 1, 2, 2]), (Cycle, [0, 1, 2, 0, 1, 2]),
                                             (CycleRev, [0, 1, 2, 2, 1, 0])])  # fmt: skip
def test_takase_orders(scheme, expected):
    assert scheme(ratio=0.5).layer_sets(6) == expected
    model = build_model(spec_of([*SIZE, f"layers={scheme.name}", "layers.ratio=0.5"]), VOCAB)
    blocks = list(model.transformer.blocks)
    assert [[blocks.index(b) for b in blocks].index(blocks.index(b)) for b in blocks] == [
        expected.index(s) for s in expected
    ]


def test_recurrent_depth_stores_prelude_core_and_coda_and_loops_the_core():
    """Huginn's pattern at L = 6: a prelude layer, a core of 2 blocks looped twice, a coda layer; a core that does
    not divide the layers between is refused naming the valid ones."""
    none = counts()
    shared = counts("layers=recurrent_depth", "layers.core=2")
    assert shared.unique == none.unique - 2 * BLOCK and shared.total == none.total
    model = build_model(spec_of([*SIZE, "layers=recurrent_depth", "layers.core=2"]), VOCAB)
    blocks = [id(b) for b in model.transformer.blocks]
    assert len(set(blocks)) == 4 and blocks[1] == blocks[3] and blocks[2] == blocks[4]
    refusal = "a core of 3 blocks cannot loop over the 4 layers .* valid layers.core: 1, 2, 4"
    with pytest.raises(ConfigError, match=refusal):
        counts("layers=recurrent_depth", "layers.core=3")


def test_a_recurrent_depth_core_loops_more_or_fewer_times_at_inference():
    model = gpt_model("size.n_layers=6", "layers=recurrent_depth", "layers.core=2")  # prelude, 2 × 2 loops, coda
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = model(ids).logits
        counts = model.parameter_counts()
        model.loop_core(2)  # as trained
        torch.testing.assert_close(model(ids).logits, trained, rtol=0, atol=0)
        model.loop_core(4)
        deeper = model(ids).logits
    blocks = [id(block) for block in model.transformer.blocks]
    assert len(blocks) == 10 == model.config.n_layers and blocks[1:9] == blocks[1:3] * 4
    assert model.parameter_counts().unique == counts.unique and model.parameter_counts().total > counts.total
    assert not torch.allclose(deeper, trained)
    assert torch.equal(model.generate(ids[:, :3], 6, temperature=0), model.generate(ids[:, :3], 6, temperature=0,
                                                                                        use_cache=False))  # fmt: skip
    with pytest.raises(ConfigError, match="layers=cycle has no looped core; .* layers=recurrent_depth"):
        gpt_model("size.n_layers=4", "layers=cycle").loop_core(3)


def test_yoco_caches_the_lower_half_and_one_global_set_of_keys_and_values():
    """At L = 6: layers 0–2 keep their keys and values, layer 3 computes the global ones, layers 4 and 5 reuse them
    (no key/value projections of their own); the preset mobilellm_ls is sequence at M = L/2."""
    from sharebench.model.inference import kv_cache_bytes

    model = build_model(spec_of([*SIZE, "arch=gpt", "layers=yoco"]), VOCAB)
    per_layer = kv_cache_bytes(model, 5)
    assert per_layer[:4] == [per_layer[0]] * 4 and per_layer[0] > 0 and per_layer[4:] == [0, 0]
    unshared = counts("arch=gpt")
    assert counts("arch=gpt", "layers=yoco").unique == unshared.unique - 2 * 2 * D * D  # GPT's K, V: no biases
    assert counts("layers=mobilellm_ls").unique == counts("layers=sequence", "layers.ratio=0.5").unique


def test_masa_stores_s_atoms_per_role_and_mixes_each_layers_matrices_from_them():
    """At L = 6, S = 2 atoms per role: 4·S·D² atom parameters and 4·S coefficients per layer in place of 4·L·D²
    weights (biases stay per layer); each layer's W_Q is Σ_s c_s A_s of the shared atoms; a within-layer scheme
    is refused naming sharing=none."""
    none = counts()
    masa = counts("layers=masa", "layers.ratio=0.6667")
    assert masa.unique == none.unique - 4 * (L - 2) * D * D + 4 * 2 * L
    model = build_model(spec_of([*SIZE, "layers=masa", "layers.ratio=0.6667"]), VOCAB)
    first, last = model.transformer.blocks[0].attn, model.transformer.blocks[-1].attn
    assert first.qkv.atoms is last.qkv.atoms and first.out.atoms is last.out.atoms
    atoms = first.qkv.atoms["q"].weight
    expected = first.qkv.coefficients[0, 0] * atoms[0] + first.qkv.coefficients[0, 1] * atoms[1]
    torch.testing.assert_close(first.qkv.role_weights()["q"][0], expected)
    with pytest.raises(ConfigError, match="layers=masa builds every layer's attention projections .* use sharing=none"):
        counts("layers=masa", "sharing=gqa")


def test_cycle_rev_18_layers_6_sets_reverses_the_last_cycle():
    assert CycleRev(ratio=2 / 3).layer_sets(18) == [*range(6), *range(6), *reversed(range(6))]


@pytest.mark.parametrize("scheme", sorted(LAYER_SCHEMES))
def test_every_layers_scheme_trains_and_round_trips(scheme, nano_cfg, tmp_path):
    from sharebench.train.tasks import run_task

    ratio = ["layers.ratio=0.5"] if LAYER_SCHEMES[scheme].ratio_range else []
    ratio += layers_for(f"layers={scheme}") + (["arch=gpt"] if decoder_only(f"layers={scheme}") else [])
    record = run_task(nano_cfg(f"layers={scheme}", *ratio, *within_layer_for(scheme)), tmp_path)
    assert record["status"] == "completed" and record["sharing"]["layers"]["name"] == scheme
    model = load_pretrained(tmp_path)
    assert model.layers.name == scheme
    assert model.parameter_counts().to_dict() == record["parameters"]
    checkpoint = (tmp_path / "model.safetensors").stat().st_size
    assert checkpoint < 4 * record["parameters"]["unique"] * 1.02 + 20_000  # every shared tensor stored once


def gpt_model(*overrides: str):
    torch.manual_seed(0)
    return build_model(spec_of(["arch=gpt", "size.n_layers=3", "size.dim=32", "size.n_heads=4", "size.ffn_dim=64",
                                "data.seq_len=16", *overrides]), 50).eval()  # fmt: skip


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def copy_head(model, target: tuple[int, int], source: tuple[int, int]) -> None:
    """Make head `target` identical to head `source`: query/key/value rows, biases and output columns."""
    d, dim = model.config.dim // model.config.n_heads, model.config.dim
    blocks = model.transformer.blocks
    qkv = [blocks[layer].attn.qkv.proj.weight for layer in (target[0], source[0])]
    out = [blocks[layer].attn.out.weight for layer in (target[0], source[0])]
    with torch.no_grad():
        for role in range(3):
            starts = [role * dim + head * d for head in (target[1], source[1])]
            qkv[0][starts[0] : starts[0] + d] = qkv[1][starts[1] : starts[1] + d]
        out[0][:, target[1] * d : (target[1] + 1) * d] = out[1][:, source[1] * d : (source[1] + 1) * d]


def test_directshare_selects_identical_heads_and_keeps_the_outputs():
    model = gpt_model()
    copy_head(model, (1, 2), (0, 1))
    copy_head(model, (2, 0), (1, 3))
    ids = torch.randint(0, 50, (2, 16))
    before, unique_before = logits(model, ids), model.parameter_counts().unique
    sources = select_shared_heads(model, 2 / 12)
    assert sources == {(1, 2): (0, 1), (2, 0): (1, 3)}  # the most similar heads are the identical ones
    share_heads(model, sources)
    assert torch.allclose(logits(model, ids), before, atol=1e-5)
    d = 32 // 4
    assert model.parameter_counts().unique == unique_before - 2 * (3 * d * 32 + 32 * d)  # gpt: no q/k/v bias


def test_directshare_at_ratio_zero_is_the_identity_and_round_trips(tmp_path):
    model = gpt_model()
    ids = torch.randint(0, 50, (2, 16))
    before, unique_before = logits(model, ids), model.parameter_counts().unique
    direct_share(model, 0.0)
    assert torch.allclose(logits(model, ids), before, atol=1e-6)
    assert model.parameter_counts().unique == unique_before

    shared = direct_share(gpt_model(), 0.5)
    assert len(shared.head_sources) == 6
    save_pretrained(shared, tmp_path, SharingSpec("none", None))
    loaded = load_pretrained(tmp_path)
    assert loaded.parameter_counts() == shared.parameter_counts()
    assert torch.equal(logits(loaded, ids), logits(shared, ids))


def test_headwise_ratio_out_of_range_names_the_range():
    from sharebench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"0 <= ratio <= 0.5"):
        select_shared_heads(gpt_model(), 0.7)


def test_gqa_conversion_at_g_equal_h_is_the_identity_and_mean_pools_groups():
    model = gpt_model()
    ids = torch.randint(0, 50, (2, 16))
    assert torch.allclose(logits(to_gqa(model, 0.0).eval(), ids), logits(model, ids), atol=1e-5)
    pooled = to_gqa(model, 0.5)
    d = 8
    keys = model.transformer.blocks[0].attn.qkv.proj.weight[32:64]
    pooled_keys = pooled.transformer.blocks[0].attn.qkv.proj.weight[32 : 32 + 2 * d]
    assert torch.allclose(pooled_keys[:d], (keys[:d] + keys[d : 2 * d]) / 2)
    assert pooled.parameter_counts().by_component["attention_qkv"] == 3 * (32 + 2 * 2 * d) * 32


def test_mlkv_conversion_groups_layers_over_mean_pooled_keys_and_values(tmp_path):
    """MLKV from a checkpoint: at ratio 0 the model as it was; at 0.5 on 4 layers, layers 0-1 and 2-3 each attend
    over the mean of their two key/value projections, computed by the group's first layer, the second projecting
    queries only; a key/value projection (2·D × D) fewer per pair, half the KV cache; it reloads as written."""
    from sharebench.model.inference import kv_cache_bytes
    from sharebench.sharing.none import Separate

    model = gpt_model("size.n_layers=4")
    ids = torch.randint(0, 50, (2, 16))
    assert torch.allclose(logits(to_mlkv(model, 0.0, Separate).eval(), ids), logits(model, ids), atol=1e-5)
    assert mlkv_sources(4, 0.5) == [0, 0, 2, 2] and mlkv_sources(6, 2 / 3) == [0, 0, 0, 3, 3, 3]
    assert mlkv_sources(5, 0.4) == [0, 0, 2, 3, 3]  # groups as even as they can be
    save_pretrained(model, tmp_path / "source", SharingSpec("none", None))
    grouped = convert_checkpoint(tmp_path / "source", tmp_path / "mlkv", "mlkv", 0.5).eval()
    assert grouped.layers.describe() == {"name": "kv_sources", "ratio": None, "sources": [0, 0, 2, 2]}
    weight = [block.attn.qkv.proj.weight for block in model.transformer.blocks]
    for source, reader in ((0, 1), (2, 3)):
        kv = grouped.transformer.blocks[source].attn.qkv.proj.weight[32:]
        assert torch.allclose(kv, (weight[source][32:] + weight[reader][32:]) / 2)
        assert torch.equal(grouped.transformer.blocks[reader].attn.qkv.proj.weight, weight[reader][:32])
    assert grouped.parameter_counts().unique == model.parameter_counts().unique - 2 * (2 * 32 * 32)  # no qkv bias
    assert sum(kv_cache_bytes(grouped, 16)) * 2 == sum(kv_cache_bytes(model, 16))
    assert not torch.allclose(logits(grouped, ids), logits(model, ids), atol=1e-3)
    assert torch.equal(logits(load_pretrained(tmp_path / "mlkv"), ids), logits(grouped, ids))
    with pytest.raises(ConfigError, match=r"convert --to mlkv: ratio=0.9 leaves 0 of 4 layers with keys and values; "
                                          r"choose a ratio in \[0, 0.75\]"):  # fmt: skip
        to_mlkv(model, 0.9, Separate)


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_recursive_conversion_at_full_rank_reproduces_the_model(tmp_path, ratio):
    model = gpt_model("size.n_layers=4")
    save_pretrained(model, tmp_path / "source", SharingSpec("none", None))
    ids = torch.randint(0, 50, (2, 16))
    full = convert_checkpoint(tmp_path / "source", tmp_path / "full", "recursive_lora", ratio, rank=32).eval()
    assert torch.allclose(logits(full, ids), logits(model, ids), atol=1e-5)
    low = convert_checkpoint(tmp_path / "source", tmp_path / "low", "recursive_lora", ratio, rank=2).eval()
    assert low.parameter_counts().unique < model.parameter_counts().unique
    assert not torch.allclose(logits(low, ids), logits(model, ids), atol=1e-3)
    assert torch.equal(logits(load_pretrained(tmp_path / "low"), ids), logits(low, ids))


def test_postshare_trains_towards_the_pairs_then_shares_them(nano_cfg, tmp_path):
    from sharebench.train.tasks import run_task

    run_task(nano_cfg(), tmp_path / "base")
    record = run_task(nano_cfg(f"pretrained={tmp_path / 'base'}", "postshare_ratio=0.25", "trainer.max_steps=4"),
                 tmp_path / "post")  # fmt: skip
    assert record["status"] == "completed"
    assert record["postshare"]["pairs"] == 2  # int(0.25 · 2 layers · 4 heads)
    spec = json.loads((tmp_path / "post" / "model.json").read_text())
    assert len(spec["sharing"]["head_sources"]) == 2 == len(record["sharing"]["head_sources"])
    assert record["sharing"]["conversion"] == {"to": "postshare", "ratio": 0.25}
    base = json.loads((tmp_path / "base" / "run.json").read_text())["parameters"]["unique"]
    assert record["parameters"]["unique"] < base
    assert load_pretrained(tmp_path / "post").parameter_counts().unique == record["parameters"]["unique"]


def test_uptraining_refuses_a_vocabulary_of_another_size(nano_cfg, tmp_path):
    from sharebench.errors import ConfigError
    from sharebench.train.tasks import run_task

    run_task(nano_cfg(), tmp_path / "base")
    with pytest.raises(ConfigError, match="token embeddings but the data's tokenizer"):
        run_task(nano_cfg(f"pretrained={tmp_path / 'base'}", "data.tokenizer.vocab_size=150"), tmp_path / "up")


def test_converted_minilm_scores_sts_b_zero_shot(tmp_path):
    from sharebench.train.tasks import run_task
    from tests.conftest import FIXTURE_DATA

    folder = minilm_folder()
    scores = {}
    for ratio in (0.0, 0.5):
        cfg = compose(["task=sts_zero_shot", f"pretrained={folder}", "convert.to=headwise", f"convert.ratio={ratio}",
                       "glue.recipe.max_eval_examples=64", f"glue.source={FIXTURE_DATA / 'glue'}"])  # fmt: skip
        record = run_task(cfg, tmp_path / str(ratio))
        scores[ratio] = record["metrics"]["spearman"]
        assert record["examples"]["validation"] == 64
    assert scores[0.0] > 0.7  # a sentence-embedding model ranks similar pairs well without training
    assert scores[0.5] < scores[0.0]


@pytest.mark.parametrize(("scheme", "sources"), [(["layers=cla", "layers.ratio=0.5"], "[0,0,2,2]"),
                                                 (["layers=cla", "layers.ratio=0.75"], "[0,0,0,0]"),
                                                 (["layers=yoco"], "[0,1,2,2]")])  # fmt: skip
def test_a_kv_map_expresses_cla_and_yoco(scheme, sources):
    """The same map gives the same model: parameters (built in the same order from the same seed) and logits."""
    four = ["size.n_layers=4"]
    named, mapped = gpt_model(*four, *scheme), gpt_model(*four, "layers=kv_sources", f"layers.sources={sources}")
    assert mapped.transformer.kv_sources == named.transformer.kv_sources == json.loads(sources)
    assert mapped.parameter_counts() == named.parameter_counts()
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(mapped, ids), logits(named, ids))


def test_mlkv_groups_share_one_set_of_keys_and_values_and_its_cache():
    from sharebench.model.inference import kv_cache_bytes

    six = ["size.n_layers=6"]
    unshared, mlkv = gpt_model(*six), gpt_model(*six, "layers=kv_sources", "layers.sources=[0,0,0,3,3,3]")
    by_layer = kv_cache_bytes(mlkv, 8)
    assert by_layer[1:3] == by_layer[4:] == [0, 0] and by_layer[0] == by_layer[3] > 0  # stored by layers 0 and 3
    assert sum(by_layer) * 3 == sum(kv_cache_bytes(unshared, 8))
    key_value_weights = 2 * 32 * 32  # a layer's key and value projections (arch=gpt: qkv_bias false)
    assert unshared.parameter_counts().unique - mlkv.parameter_counts().unique == 4 * key_value_weights
    assert mlkv.flops_per_token(16) < unshared.flops_per_token(16)


@pytest.mark.parametrize(("sources", "refusal"), [
    ("[0,0,2]", r"layers.sources=\[0, 0, 2\] names 3 layers; the model has 4"),
    ("[0,4,2,3]", "layer 1 takes keys and values from layer 4; the layers are 0 … 3"),
    ("[0,0,1,3]", "layer 2 takes keys and values from layer 1, which computes none of its own .*name 0"),
    ("[0,true,2,3]", "layers.sources must list, for every layer"),
])  # fmt: skip
def test_a_kv_map_that_reads_a_missing_layer_or_a_reader_or_misses_layers_is_refused(sources, refusal):
    with pytest.raises(ConfigError, match=refusal):
        gpt_model("size.n_layers=4", "layers=kv_sources", f"layers.sources={sources}")


def test_a_kv_map_that_reads_a_later_layer_needs_a_decoder():
    with pytest.raises(ConfigError, match="has layers that read a later layer's keys .* arch=bert is an encoder"):
        spec_of(["size.n_layers=4", "layers=kv_sources", "layers.sources=[0,3,3,3]"])
    spec_of(["size.n_layers=4", "layers=kv_sources", "layers.sources=[0,0,2,2]"])  # reading earlier layers: any


def test_lckv_condenses_the_middle_layers_onto_the_last_of_them_and_caches_three_of_eight():
    from sharebench.model.inference import kv_cache_bytes

    eight = ["size.n_layers=8"]
    unshared, lckv = gpt_model(*eight), gpt_model(*eight, "layers=lckv")
    assert lckv.layers.kv_sources(8) == [0, 6, 6, 6, 6, 6, 6, 7]  # the paper's configuration (one warm-up at each end)
    by_layer = kv_cache_bytes(lckv, 8)
    assert [bool(size) for size in by_layer] == [True, False, False, False, False, False, True, True]
    assert sum(by_layer) * 8 == sum(kv_cache_bytes(unshared, 8)) * 3
    key_value_weights = 2 * 32 * 32
    assert unshared.parameter_counts().unique - lckv.parameter_counts().unique == 5 * key_value_weights


def test_lckv_training_flops_count_its_passes_over_the_condensed_layers():
    """Layers 1 to 6 run 7 forward passes (a third of a training pass each) and 2 training passes."""
    eight = ["size.n_layers=8"]
    unshared, lckv = gpt_model(*eight), gpt_model(*eight, "layers=lckv")
    assert lckv.layers.training_passes(8) == [1, *[7 / 3 + 2] * 6, 1]
    dim, ffn, tokens = 32, 64, 16
    reader = 2 * dim * dim + 2 * dim * ffn + 2 * tokens * dim  # query and output projections, FFN, attention
    own = reader + 2 * dim * dim  # with its key and value projections
    head = dim * unshared.config.vocab_size
    forward = own + 5 * (7 / 3 + 2) * reader + (7 / 3 + 2) * own + own + head
    assert lckv.flops_per_token(tokens) == round(6 * forward)
    assert unshared.flops_per_token(tokens) == round(6 * (8 * own + head))


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_lckv_passes_give_a_token_by_token_model_once_they_reach_the_sequence_length(arch):
    torch.manual_seed(0)
    size = ["size.n_layers=5", "size.dim=32", "size.n_heads=4", "size.ffn_dim=64", "data.seq_len=12"]
    spec = spec_of([f"arch={arch}", *size, "layers=lckv", "layers.forward_passes=2", "layers.backward_passes=1"])
    model = build_model(spec, 50).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.new_cache()  # decoding: each token over the cached keys and values, one pass
        stepwise = torch.cat([model.transformer(ids[:, [t]], cache=cache) for t in range(12)], dim=1)
        three_passes = model.transformer(ids)
        model.transformer.kv_passes = (11, 1)
        twelve_passes = model.transformer(ids)
    torch.testing.assert_close(twelve_passes, stepwise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(three_passes[:, :3], stepwise[:, :3], rtol=1e-5, atol=1e-5)  # n passes: n tokens
    assert not torch.allclose(three_passes, stepwise, rtol=1e-5, atol=1e-5)  # and not all of them


def test_lckv_trains_the_readers_and_the_layer_they_read_through_its_last_passes():
    model = gpt_model("size.n_layers=4", "layers=lckv", "layers.warmup=0").train()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    blocks = model.transformer.blocks
    assert blocks[0].attn.qkv.proj.weight.grad.abs().sum() > 0  # a reader: its query projection
    assert (
        blocks[3].attn.qkv.proj.weight.grad[32:].abs().sum() > 0
    )  # the layer read: its keys and values, through readers


@pytest.mark.parametrize(("overrides", "refusal"), [
    (["arch=bert", "layers=lckv"], "layers=lckv has layers that read a later layer's keys .* arch=bert is an encoder"),
    (["arch=gpt", "layers=lckv", "layers.warmup=2"], "4 layers leave no layer between 2 warm-up layers .* 0 … 1"),
    (["arch=gpt", "layers=lckv", "layers.backward_passes=0"], "layers.backward_passes=0 1 or more"),
])  # fmt: skip
def test_what_lckv_cannot_train_is_refused_in_one_line(overrides, refusal):
    with pytest.raises(ConfigError, match=refusal):
        spec_of(["size.n_layers=4", *overrides])


def paper_rank(ratio: float, layers: int, d_in: int, d_out: int) -> int:
    """Basis Sharing's `compute_num_basis` (its utils.py): ⌊d_in·d_out·n·(1 − r) / (d_in + d_out·n)⌋."""
    return int((d_in * d_out * layers * (1 - ratio)) // (d_in + d_out * layers))


def test_basis_sharing_stores_a_basis_per_group_and_role_and_coefficients_per_layer():
    """At L = 6 in groups of 2 and r = 0.5: per group, Q, K, V (D × D each) and the FFN's up projection (F × D)
    each store one k × D basis and two layers' coefficients (the paper's shared roles); the output and down
    projections store a basis and coefficients per layer; biases and norms stay. At any group size the ratio
    sets what the projections store. A within-layer scheme other than none, gqa or mqa, and a group longer than
    the model, are refused in one line."""
    none = counts()
    basis = counts("layers=basis", "layers.ratio=0.5")
    shared_qkv, shared_up = paper_rank(0.5, 2, D, D), paper_rank(0.5, 2, D, F)
    own_out, own_down = paper_rank(0.5, 1, D, D), paper_rank(0.5, 1, F, D)
    per_group = 3 * shared_qkv * (D + 2 * D) + shared_up * (D + 2 * F)
    per_layer = own_out * (D + D) + own_down * (F + D)
    weights = L * (4 * D * D + 2 * D * F)
    assert basis.unique == none.unique - weights + (L // 2) * per_group + L * per_layer
    model = build_model(spec_of([*SIZE, "layers=basis", "layers.ratio=0.5"]), VOCAB)
    blocks = model.transformer.blocks
    assert blocks[0].attn.qkv.proj.bases[0] is blocks[1].attn.qkv.proj.bases[0]
    assert blocks[1].attn.qkv.proj.bases[0] is not blocks[2].attn.qkv.proj.bases[0]
    assert blocks[0].attn.out.bases[0] is not blocks[1].attn.out.bases[0]
    for group in (1, 2, 3, 6):  # the ratio sets what is stored, the group how it is spread (k rounds down)
        stored = counts("layers=basis", "layers.ratio=0.5", f"layers.group={group}").unique - (none.unique - weights)
        assert 0.95 * 0.5 * weights < stored <= 0.5 * weights, group
    refused = "layers=basis compresses plain query/key/value projections; it does not compose with sharing=partial_qk"
    with pytest.raises(ConfigError, match=f"{refused}: use sharing=none or gqa or mqa"):
        counts("layers=basis", "sharing=partial_qk")
    with pytest.raises(ConfigError, match="layers=basis: group=7 is more than the model's 6 layers"):
        counts("layers=basis", "layers.group=7")


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_basis_conversion_is_each_groups_best_rank_k_approximation(arch, tmp_path):
    """`convert --to basis`: each group's stacked query matrices (and the FFN's up projections) become their
    truncated SVD, so the error left is exactly the norm of the singular values dropped (Eckart-Young); the
    output projection is compressed per layer; the checkpoint reloads with the logits it was written with."""
    from sharebench.layers.basis import rank_for

    model = gpt_model(*([] if arch == "gpt" else ["arch=llama", "sharing=gqa"]), "size.n_layers=4")
    save_pretrained(model, tmp_path / "source", SharingSpec("none", None) if arch == "gpt" else SharingSpec("gqa", 0.5))
    converted = convert_checkpoint(tmp_path / "source", tmp_path / "basis", "basis", 0.3, group=2).eval()
    assert converted.layers.describe()["group"] == 2
    for path, members in (("attn.qkv.proj", [0, 1]), ("ffn.up", [2, 3]), ("attn.out", [1])):
        original = torch.cat([query_or_weight(model, layer, path) for layer in members]).double()
        approximated = torch.cat([query_or_weight(converted, layer, path) for layer in members]).double()
        rank = rank_for(0.3, len(members), original.size(1), original.size(0) // len(members))
        dropped = torch.linalg.svdvals(original)[rank:]
        torch.testing.assert_close(torch.linalg.matrix_norm(original - approximated), dropped.norm(), rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
    ids = torch.randint(0, 50, (2, 16))
    assert torch.equal(logits(load_pretrained(tmp_path / "basis"), ids), logits(converted, ids))
    assert converted.parameter_counts().unique < model.parameter_counts().unique


def query_or_weight(model, layer: int, path: str) -> torch.Tensor:
    """The query rows of a layer's fused projection, or the weight of another of its linear layers."""
    block = model.transformer.blocks[layer]
    return block.attn.qkv.role_weights()["q"][0] if path == "attn.qkv.proj" else block.get_submodule(path).weight
