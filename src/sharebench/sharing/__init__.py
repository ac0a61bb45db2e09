"""Within-layer sharing schemes, one module each; `SCHEMES` finds them by name.

A new scheme is one module here defining an `AttentionSharing` subclass with a `name`, plus
`conf/sharing/<name>.yaml` whose `_target_` names that class; or, from another package, an entry point in the
group `sharebench.sharing` naming such a class (docs/schemes.md).
"""

from __future__ import annotations

from sharebench.errors import ConfigError
from sharebench.registry import plugins, subclasses_by_name
from sharebench.sharing.base import AttentionSharing

SCHEMES: dict[str, type[AttentionSharing]] = subclasses_by_name(__name__, __path__, AttentionSharing)
PLUGINS: dict[str, type[AttentionSharing]] = plugins("sharebench.sharing", AttentionSharing, SCHEMES)
SCHEMES |= PLUGINS


def scheme_class(name: str) -> type[AttentionSharing]:
    if name not in SCHEMES:
        raise ConfigError(f"unknown sharing scheme {name!r}; valid choices: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


__all__ = ["AttentionSharing", "PLUGINS", "SCHEMES", "scheme_class"]
