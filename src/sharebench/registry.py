"""Finding a family's classes by name: the modules of a package are imported, and every subclass of the
family's base class that sets a `name` is registered under it. A new scheme is found without being listed."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def subclasses_by_name(package: str, paths: Iterable[str], base: type) -> dict[str, type]:
    for module in pkgutil.iter_modules(paths):
        importlib.import_module(f"{package}.{module.name}")
    found: dict[str, type] = {}
    pending = list(base.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.name:
            found[cls.name] = cls
    return found
