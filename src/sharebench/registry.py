"""Finding a family's classes by name: the modules of a package are imported, and every subclass of the
family's base class that sets a `name` is registered under it. A new scheme is found without being listed, and
another package adds one through an entry point (`plugins`)."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Iterable, Mapping


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


def plugins(group: str, base: type, built_in: Mapping[str, type]) -> dict[str, type]:
    """The classes other packages add through the entry-point group `group` (`sharebench.sharing`,
    `sharebench.layers`): each entry point names a subclass of `base` with a `name`. A plugin that fails to import,
    names no such class or takes a built-in scheme's name is left out, with one line saying so; the built-in
    schemes work regardless."""
    found: dict[str, type] = {}
    for entry in importlib.metadata.entry_points(group=group):
        try:
            cls = entry.load()
        except Exception as error:  # any failure of another package's import leaves the suite working
            print(f"sharebench: plugin {entry.value} ({group}) failed to import and is left out: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)  # fmt: skip
            continue
        if not (isinstance(cls, type) and issubclass(cls, base) and getattr(cls, "name", None)):
            print(f"sharebench: plugin {entry.value} ({group}) is left out: it names no {base.__name__} subclass "
                  f"with a `name`", file=sys.stderr)  # fmt: skip
        elif cls.name in built_in:
            print(f"sharebench: plugin {entry.value} ({group}) is refused: {cls.name!r} is a built-in scheme's name; "
                  f"rename its scheme", file=sys.stderr)  # fmt: skip
        else:
            found[cls.name] = cls
    return found
