"""Every scheme of both architectures trains under DDP with no parameter the loss leaves out (no
`find_unused_parameters`): pretraining and GLUE fine-tuning on 2 CPU processes (gloo) end with the parameters of one
process trained on the same global batches."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from sharebench.config import build_model, compose, group_choices
from sharebench.finetune import SequenceClassifier

ARCHS = {"bert": ["arch=bert"], "gpt": ["arch=gpt", "data=tinyshakespeare"]}
SCHEMES = [f"sharing={name}" for name in group_choices("sharing")] + [
    f"layers={name}" for name in group_choices("layers") if name != "none"
]
CASES = [(arch, scheme, task) for arch in ARCHS for scheme in SCHEMES for task in ("pretrain", "glue")
         if task == "pretrain" or arch == "bert"]  # fmt: skip
VOCAB, BATCH, TOKENS, STEPS = 50, 4, 12, 2


def trainable(arch: str, scheme: str, task: str) -> torch.nn.Module:
    """The module a task trains, as the suite builds it: the language model with BERT's pooler frozen in
    pretraining (pretrain.py), or the sequence classifier over the encoder (finetune.py)."""
    cfg = compose(["size=nano", *ARCHS[arch], scheme, "arch.dropout=0", "arch.attention_dropout=0"])
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB)
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
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    return {name: tensor.detach().clone() for name, tensor in inner.state_dict().items()}


def worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    share = BATCH // world
    results = {}
    for case in CASES:
        ddp = DistributedDataParallel(trainable(*case))  # find_unused_parameters=False, DDP's default
        results[case] = train(ddp, slice(rank * share, (rank + 1) * share), case[2])
    if rank == 0:
        torch.save(results, os.path.join(folder, "ddp.pt"))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_every_scheme_trains_under_ddp_as_on_one_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "ddp.pt")
    assert set(distributed) == set(CASES)
    for case in CASES:
        single = train(trainable(*case), slice(None), case[2])
        for name, tensor in single.items():
            torch.testing.assert_close(distributed[case][name], tensor, atol=1e-5, rtol=1e-4, msg=f"{case} {name}")
