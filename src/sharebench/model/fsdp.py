"""FSDP for models that share tensors: a wrap policy whose units never split a shared tensor.

FSDP flattens each unit's parameters into one sharded tensor. A tensor held by two units (tied embeddings, a
block or FFN reused by several layers, a projection shared across heads) would be flattened twice and trained as
two copies, or fail. So a block, attention or FFN becomes a unit only where it occurs once in the model and no
module outside it holds any of its parameters; everything else stays in the unit above it, the model's root at
most (ALBERT's single block, for example, is sharded as part of the root).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable

from torch import nn

from sharebench.model.transformer import Attention, Block, FeedForward

UNIT_TYPES = (Block, Attention, FeedForward)


def fsdp_units(model: nn.Module) -> set[nn.Module]:
    """The modules FSDP may wrap as units of their own."""
    occurrences: Counter[int] = Counter()
    holders: dict[int, set[int]] = {}  # a parameter → the modules that hold it directly

    for _, module in model.named_modules(remove_duplicate=False):  # every occurrence, also of a reused module
        occurrences[id(module)] += 1
        for parameter in module.parameters(recurse=False):
            holders.setdefault(id(parameter), set()).add(id(module))
    units = set()
    for module in model.modules():
        if not isinstance(module, UNIT_TYPES) or occurrences[id(module)] != 1:
            continue
        inside = {id(m) for m in module.modules()}
        if all(occurrences[m] == 1 for m in inside) and all(holders[id(p)] <= inside for p in module.parameters()):
            units.add(module)
    return units


def fsdp_wrap_policy(model: nn.Module) -> Callable[..., bool]:
    """`auto_wrap_policy` for FSDP (torch's, or Lightning's FSDPStrategy): wrap exactly `fsdp_units(model)`."""
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    units = fsdp_units(model)
    return functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda module: module in units)
