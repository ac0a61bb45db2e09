"""Cross-layer sharing schemes, one module each; `LAYER_SCHEMES` finds them by name.

A scheme decides which of the L layers get the same block (or the same attention or FFN module). It composes
with any within-layer scheme of `sharebench.sharing`, which builds each block's query/key/value projection.
A new scheme is one module here defining a `LayerSharing` subclass with a `name`, plus `conf/layers/<name>.yaml`;
or, from another package, an entry point in the group `sharebench.layers` naming such a class.
"""

from __future__ import annotations

from sharebench.errors import ConfigError
from sharebench.layers.base import BlockFactory, LayerSharing, Unshared
from sharebench.registry import plugins, subclasses_by_name

LAYER_SCHEMES: dict[str, type[LayerSharing]] = subclasses_by_name(__name__, __path__, LayerSharing)
LAYER_PLUGINS: dict[str, type[LayerSharing]] = plugins("sharebench.layers", LayerSharing, LAYER_SCHEMES)
LAYER_SCHEMES |= LAYER_PLUGINS


def layer_scheme_class(name: str) -> type[LayerSharing]:
    if name not in LAYER_SCHEMES:
        raise ConfigError(f"unknown layers scheme {name!r}; valid choices: {', '.join(sorted(LAYER_SCHEMES))}")
    return LAYER_SCHEMES[name]


__all__ = ["BlockFactory", "LAYER_PLUGINS", "LAYER_SCHEMES", "LayerSharing", "Unshared", "layer_scheme_class"]
