"""Cross-layer sharing schemes, one module each; `LAYER_SCHEMES` finds them by name.

A scheme decides which of the L layers get the same block (or the same attention or FFN module). It composes
with any within-layer scheme of `sharebench.sharing`, which builds each block's query/key/value projection.
A new scheme is one module here defining a `LayerSharing` subclass with a `name`, plus `conf/layers/<name>.yaml`.
"""

from __future__ import annotations

import importlib
import pkgutil

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, Unshared


def _discover() -> dict[str, type[LayerSharing]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[LayerSharing]] = {}
    pending = list(LayerSharing.__subclasses__())
    while pending:
        scheme = pending.pop()
        pending.extend(scheme.__subclasses__())
        if scheme.name:
            found[scheme.name] = scheme
    return found


LAYER_SCHEMES: dict[str, type[LayerSharing]] = _discover()


def layer_scheme_class(name: str) -> type[LayerSharing]:
    if name not in LAYER_SCHEMES:
        raise ConfigError(f"unknown layers scheme {name!r}; valid choices: {', '.join(sorted(LAYER_SCHEMES))}")
    return LAYER_SCHEMES[name]


__all__ = ["BlockFactory", "LAYER_SCHEMES", "LayerSharing", "Unshared", "layer_scheme_class"]
