"""sharebench: a benchmark suite for parameter sharing in transformer language models."""

from typing import Any

__all__ = ["load_pretrained"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so reporting (`sharebench collect`) runs without importing the model.
    if name == "load_pretrained":
        from sharebench.model.checkpoint import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'sharebench' has no attribute {name!r}")
