"""Within-layer sharing schemes, one module each; `SCHEMES` finds them by name.

A new scheme is one module here defining an `AttentionSharing` subclass with a `name`, plus
`conf/sharing/<name>.yaml` whose `_target_` names that class.
"""

from __future__ import annotations

import importlib
import pkgutil

from sharebench.errors import ConfigError
from sharebench.sharing.base import AttentionSharing


def _discover() -> dict[str, type[AttentionSharing]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found: dict[str, type[AttentionSharing]] = {}
    pending = list(AttentionSharing.__subclasses__())
    while pending:
        scheme = pending.pop()
        pending.extend(scheme.__subclasses__())
        if scheme.name:
            found[scheme.name] = scheme
    return found


SCHEMES: dict[str, type[AttentionSharing]] = _discover()


def scheme_class(name: str) -> type[AttentionSharing]:
    if name not in SCHEMES:
        raise ConfigError(f"unknown sharing scheme {name!r}; valid choices: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


__all__ = ["AttentionSharing", "SCHEMES", "scheme_class"]
