"""sharebench: a benchmark suite for parameter sharing in transformer language models."""

from sharebench.checkpoint import load_pretrained

__all__ = ["load_pretrained"]
