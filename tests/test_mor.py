"""Mixture-of-Recursions (`layers=mor`): its parameters, FLOPs and KV cache against the paper's accounting, its
routers' choices and losses, cached decoding, and its refusals. The fast path against the plain reference path and
the export are tested with every cross-layer scheme (test_reference.py, test_export.py)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from sharebench.errors import ConfigError
from sharebench.model.inference import kv_cache_bytes
from sharebench.model.reference import reference_loss
from sharebench.run.build import build_model
from sharebench.train.tasks import run_task
from tests.conftest import spec_of

VOCAB, DIM, FFN, TOKENS = 50, 32, 64, 12
SIZE = ["size.n_layers=5", f"size.dim={DIM}", "size.n_heads=4", f"size.ffn_dim={FFN}", f"data.seq_len={TOKENS}"]
POLICIES = [(router, kv) for router in ("expert", "token") for kv in ("recursion", "shared")]


def mor(*overrides: str, arch: str = "gpt") -> torch.nn.Module:
    """Prelude 1, a one-layer recursion block applied three times, coda 1 (the defaults), without dropout."""
    torch.manual_seed(0)
    spec = spec_of([f"arch={arch}", *SIZE, "arch.dropout=0", "arch.attention_dropout=0", "layers=mor", *overrides])
    return build_model(spec, VOCAB)


def mixed_routers(model: torch.nn.Module) -> torch.nn.Module:
    """Routers whose choices differ from token to token (at initialisation they score every token about alike)."""
    with torch.no_grad():
        for router in model.transformer.router.scores:
            router.weight.normal_(0, 3 / DIM**0.5)
            router.bias.zero_()
    return model


def tokens(batch: int = 3, length: int = TOKENS, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_it_stores_prelude_recursion_block_and_coda_once_plus_the_routers():
    plain = build_model(spec_of(["arch=gpt", *SIZE, "size.n_layers=3"]), VOCAB).parameter_counts()
    per_layer = (plain.total - build_model(spec_of(["arch=gpt", *SIZE, "size.n_layers=2"]), VOCAB)
                 .parameter_counts().total)  # fmt: skip
    for router, routers in (("expert", 2 * (DIM + 1)), ("token", DIM * 3 + 3)):
        counts = mor(f"layers.router={router}").parameter_counts()
        assert counts.by_component["routers"] == routers
        assert counts.unique == plain.unique + routers  # 3 blocks stored: prelude, the recursion block, coda
        assert counts.total == plain.total + 2 * per_layer + routers  # the block used by 3 recursions


@pytest.mark.parametrize("kv", ["recursion", "shared"])
def test_training_flops_count_each_recursion_at_the_share_of_tokens_it_takes(kv):
    model = mor(f"layers.kv={kv}")
    qkv_out, ffn, head = 4 * DIM * DIM, 2 * DIM * FFN, DIM * VOCAB
    shares = [1, 1, 2 / 3, 1 / 3, 1]  # prelude, recursions 1 to 3 at capacity 1, 2/3, 1/3, coda
    attended = shares if kv == "recursion" else [1, 1, 1, 1, 1]  # shared: the first recursion's keys, every token
    routers = 2 * DIM  # expert-choice: one score per token before recursions 2 and 3
    forward = (
        sum(s * (qkv_out + ffn + 2 * TOKENS * a * DIM) for s, a in zip(shares, attended, strict=True)) + routers + head
    )
    assert model.flops_per_token(TOKENS) == round(6 * forward)
    routed = model.transformer.router.layer_shares([1.0, 0.5, 0.25])  # as a token-choice router may route
    assert routed == [1, 1, 0.5, 0.25, 1]
    assert model.flops_per_token(TOKENS, token_shares=routed) < model.flops_per_token(TOKENS)


@pytest.mark.parametrize("kv", ["recursion", "shared"])
def test_the_kv_cache_holds_what_the_policy_keeps(kv):
    model = mor(f"layers.kv={kv}").train()  # in training the capacities hold exactly
    per_layer = 2 * TOKENS * DIM * 4  # keys and values, float32
    kept = [1, 1, 2 / 3, 1 / 3, 1] if kv == "recursion" else [1, 1, 0, 0, 1]
    assert kv_cache_bytes(model, TOKENS) == [round(share * per_layer) for share in kept]


def test_expert_choice_takes_each_capacity_per_sequence_among_the_tokens_of_the_recursion_before():
    model = mixed_routers(mor("layers.capacity=[0.5,0.25]")).train()
    router, taken = model.transformer.router, []
    route = router.route

    def recorded(recursion: int, h: torch.Tensor, before: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        taken.append(route(recursion, h, before))
        return taken[-1]

    router.route = recorded
    model(tokens(), labels=tokens())
    counts = [chosen.sum(1).tolist() for chosen, _ in taken]
    assert counts == [[TOKENS] * 3, [6] * 3, [3] * 3]
    assert all(bool((later <= earlier).all()) for (earlier, _), (later, _) in pairwise(taken))
    assert model.transformer.router.shares(training=True) == [1.0, 0.5, 0.25]


def test_training_adds_the_routers_loss_and_evaluation_reports_the_language_model_loss_alone():
    for router in ("expert", "token"):
        model = mixed_routers(mor(f"layers.router={router}")).train()
        ids = tokens()
        output = model(ids, labels=ids)
        router_loss = model.transformer.router.loss
        language = F.cross_entropy(output.logits.flatten(0, 1), ids.flatten())
        assert router_loss > 0
        torch.testing.assert_close(output.loss, language + router_loss)
        model.eval()
        output = model(ids, labels=ids)
        torch.testing.assert_close(output.loss, F.cross_entropy(output.logits.flatten(0, 1), ids.flatten()))


def test_the_expert_choice_loss_is_the_cross_entropy_of_its_choices_and_token_choice_balances_depths():
    model = mixed_routers(mor("layers.router_loss=0.5")).train()
    router = model.transformer.router
    h = torch.randn(2, TOKENS, DIM)
    everyone = torch.ones(2, TOKENS, dtype=torch.bool)
    router.begin()
    chosen, weight = router.route(1, h, everyone)
    logits = router.scores[0](h).squeeze(-1)
    torch.testing.assert_close(router.loss, 0.5 * F.binary_cross_entropy_with_logits(logits, chosen.float()))
    torch.testing.assert_close(weight, torch.sigmoid(logits))

    model = mixed_routers(mor("layers.router=token", "layers.router_loss=0.5")).train()
    router = model.transformer.router
    router.begin()
    depths = [router.route(r, h, None)[0] for r in range(3)]
    probabilities = router.scores[0](h).softmax(-1)
    assigned = F.one_hot(probabilities.argmax(-1), 3).float()
    balancing = 3 * (assigned.mean((0, 1)) * probabilities.mean((0, 1))).sum()
    torch.testing.assert_close(router.loss, 0.5 * balancing)
    assert torch.equal(depths[1], probabilities.argmax(-1) >= 1) and bool(depths[0].all())


@pytest.mark.parametrize(
    ("arch", "router", "kv"),  # every pair of router and KV policy once, each architecture with both policies
    [
        ("gpt", "expert", "recursion"),
        ("gpt", "token", "shared"),
        ("llama", "token", "recursion"),
        ("llama", "expert", "shared"),
    ],
)
def test_cached_decoding_gives_the_tokens_of_recomputing_the_whole_prefix(arch, router, kv):
    model = mixed_routers(mor(f"layers.router={router}", f"layers.kv={kv}", arch=arch)).eval()
    prompt = tokens(batch=4, length=5)
    cached = model.generate(prompt, 8, temperature=0)
    shares = model.transformer.router.shares(training=False)
    assert 0 < shares[1] < 1  # some tokens went on, others stopped: the routing is tested, not bypassed
    assert torch.equal(cached, model.generate(prompt, 8, temperature=0, use_cache=False))


@pytest.mark.parametrize(("router", "kv"), POLICIES)
def test_gathering_the_routed_tokens_gives_the_loss_of_masking_the_rest(router, kv):
    model = mixed_routers(mor(f"layers.router={router}", f"layers.kv={kv}", arch="llama")).eval()
    ids = tokens()
    with torch.no_grad():
        fast = model(ids, labels=ids).loss
    torch.testing.assert_close(fast, reference_loss(model, ids, ids), rtol=1e-5, atol=0)


def test_a_trained_run_records_the_share_of_tokens_per_recursion(nano_cfg, tmp_path):
    overrides = ["arch=gpt", "layers=mor", "layers.prelude=0", "layers.coda=0", "layers.recursions=2"]
    record = run_task(nano_cfg(*overrides), tmp_path)
    shares = record["routing"]["tokens_per_recursion"]
    assert shares["training"] == [1.0, 0.5]  # expert-choice at its capacity, 1/2 for two recursions
    assert len(shares["held_out"]) == 2 and shares["held_out"][0] == 1.0
    assert record["sharing"]["layers"]["router"] == "expert"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["arch=bert"], "layers=mor routes each token by what precedes it, which needs a decoder; arch=bert"),
        (["layers.recursions=2"], "2 recursions cannot split the 3 layers .* valid layers.recursions: 3"),
        (["layers.router=random"], "unknown layers.router='random'; valid choices: expert, token"),
        (["layers.kv=none"], "unknown layers.kv='none'; valid choices: recursion, shared"),
        (["layers.capacity=[0.3,0.6]"], r"layers.capacity=\[0.3, 0.6\] must give recursions 2 … 3"),
        (["layers.router_loss=0"], "a router trained without its auxiliary loss"),
        (["layers.router=token", "layers.capacity=[0.5,0.5]"], "token-choice routing picks each token's depth"),
    ],
)
def test_what_it_cannot_train_is_refused_in_one_line(overrides, message):
    arch = [] if overrides[0].startswith("arch=") else ["arch=gpt"]
    with pytest.raises(ConfigError, match=message):
        spec_of([*arch, *SIZE, "layers=mor", *overrides])
