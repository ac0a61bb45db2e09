"""Every scheme of both architectures trains under DDP with no parameter the loss leaves out (no
`find_unused_parameters`), and under FSDP with units that never split a shared tensor: pretraining (and, for DDP,
GLUE fine-tuning) on 2 CPU processes (gloo) end with the parameters of one process trained on the same global
batches."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType
from torch.nn.parallel import DistributedDataParallel

from sharebench.model.fsdp import fsdp_units, fsdp_wrap_policy
from sharebench.run.build import build_model
from sharebench.run.composing import compose, group_choices
from sharebench.train.finetune import SequenceClassifier
from tests.conftest import decoder_only, each_once_in_the_fast_tier, layers_for, spec_of

ARCHS = {"bert": ["arch=bert"], "gpt": ["arch=gpt", "data=tinyshakespeare"]}
SCHEMES = [f"sharing={name}" for name in group_choices("sharing")] + [
    f"layers={name}" for name in group_choices("layers") if name != "none"
]
CASES = [(arch, scheme, task) for arch in ARCHS for scheme in SCHEMES for task in ("pretrain", "glue")
         if (task == "pretrain" or arch == "bert") and not (arch == "bert" and decoder_only(scheme))]  # fmt: skip
VOCAB, BATCH, TOKENS, STEPS = 50, 4, 12, 2


def trainable(arch: str, scheme: str, task: str) -> torch.nn.Module:
    """The module a task trains, as the suite builds it: the language model with BERT's pooler frozen in
    pretraining (pretrain.py), or the sequence classifier over the encoder (finetune.py)."""
    cfg = compose(
        ["size=nano", *layers_for(scheme), *ARCHS[arch], scheme, "arch.dropout=0", "arch.attention_dropout=0"]
    )
    torch.manual_seed(0)
    model = build_model(spec_of(cfg), VOCAB)
    if task == "glue":
        return SequenceClassifier(model, 2, dropout=0.0)
    if model.pooler is not None:
        model.pooler.requires_grad_(False)
    return model


def loss(module: torch.nn.Module, rows: slice, task: str) -> torch.Tensor:
    """The loss of some rows of a fixed global batch; every row predicts as many tokens, so the mean of the
    processes' losses is the loss of the whole batch."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (BATCH, TOKENS), generator=generator)[rows]
    if task == "glue":
        labels = torch.tensor([0, 1, 1, 0])[rows]
        return F.cross_entropy(module(ids, torch.ones_like(ids), torch.zeros_like(ids)), labels)
    labels = ids.clone()
    labels[:, ::2] = -100  # masked LM predicts the odd positions; causal LM (next tokens) reads them all
    return module(ids, labels).loss


def train(module: torch.nn.Module, rows: slice, task: str) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss(module, rows, task).backward()
        optimizer.step()
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def wrapped(case: tuple[str, str, str], strategy: str) -> torch.nn.Module:
    module = trainable(*case)
    if strategy == "ddp":
        return DistributedDataParallel(module)  # find_unused_parameters=False, DDP's default
    return FullyShardedDataParallel(module, auto_wrap_policy=fsdp_wrap_policy(module), device_id=torch.device("cpu"),
                                    use_orig_params=True)  # fmt: skip


def trained_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(module, FullyShardedDataParallel):
        return {name: tensor.detach().clone() for name, tensor in module.module.state_dict().items()}
    with FullyShardedDataParallel.state_dict_type(module, StateDictType.FULL_STATE_DICT):
        return {name.replace("_fsdp_wrapped_module.", ""): tensor.detach().clone()
                for name, tensor in module.state_dict().items()}  # fmt: skip


def worker(rank: int, world: int, port: int, folder: str, strategy: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    share = BATCH // world
    results = {}
    for case in CASES if strategy == "ddp" else [c for c in CASES if c[2] == "pretrain"]:
        module = wrapped(case, strategy)
        train(module, slice(rank * share, (rank + 1) * share), case[2])
        results[case] = trained_parameters(module)
    if rank == 0:
        torch.save(results, os.path.join(folder, f"{strategy}.pt"))
    dist.barrier()  # a rank that tears down while the other still saves can leave it hanging in its teardown
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_every_scheme_trains_on_two_processes_as_on_one(strategy, tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), strategy), nprocs=2, join=True)
    distributed = torch.load(tmp_path / f"{strategy}.pt")
    assert set(distributed) == {c for c in CASES if strategy == "ddp" or c[2] == "pretrain"}
    for case, parameters in distributed.items():
        single = train(trainable(*case), slice(None), case[2])
        assert parameters.keys() == single.keys()
        for name, tensor in parameters.items():
            torch.testing.assert_close(tensor, single[name], atol=1e-5, rtol=1e-4, msg=f"{case} {name}")


@pytest.mark.parametrize(("arch", "scheme"), each_once_in_the_fast_tier(sorted({(a, s) for a, s, _ in CASES})))
def test_fsdp_units_never_split_a_shared_tensor(arch, scheme):
    model = trainable(arch, scheme, "pretrain")
    units = fsdp_units(model)
    for unit in units:
        inside = {id(m) for m in unit.modules()}
        outside = {
            id(p) for m in model.modules() if id(m) not in inside for p in m._parameters.values() if p is not None
        }
        assert not outside & {id(p) for p in unit.parameters()}, (type(unit).__name__, scheme)
    embeddings = model.transformer.embeddings.tokens.weight
    assert model.head.decoder.weight is embeddings and not any(embeddings is p for u in units for p in u.parameters())
    if scheme in ("sharing=none", "sharing=partial_qk", "sharing=shared_qkv"):  # nothing shared across layers
        assert set(model.transformer.blocks) <= units


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning runs FSDP on CUDA only (GPU tier)")
def test_pretraining_under_lightnings_fsdp_with_the_suites_wrap_policy(nano_overrides, tmp_path):
    from sharebench.train.tasks import run_task

    overrides = ["layers=cycle", "layers.ratio=0.5", "trainer.accelerator=gpu", "trainer.strategy=fsdp"]
    assert run_task(compose([*nano_overrides, *overrides]), tmp_path / "fsdp")["status"] == "completed"


def test_fsdp_on_cpu_is_refused_in_one_line():
    from sharebench.errors import ConfigError
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match="needs a GPU: Lightning runs FSDP on CUDA only; on CPU use"):
        validate(compose(["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp"]), data=False)
