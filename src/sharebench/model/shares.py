"""`SharingSpec`: the one description of what a model shares, from validation to run records and checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SharingSpec:
    """What a model shares, in the one shape that run records (`sharing`), checkpoints (model.json's `sharing`) and
    exported Hugging Face configs store (docs/run-record.md): the within-layer scheme by name with its ratio (the
    default filled in) and its own options (partial_qk's `split`); the cross-layer scheme as `LayerSharing.describe()`
    gives it; and where a conversion shared single heads (DirectShare, PostShare), which head holds which.

    A record adds the context of its run: an iso-parameter baseline shares nothing and names the configuration it
    matches; a model loaded from a checkpoint names the checkpoint, a converted one its conversion."""

    name: str
    ratio: float | None
    options: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, Any] = field(default_factory=lambda: {"name": "none", "ratio": None})
    head_sources: list[list[int]] | None = None  # [layer, head, source layer, source head] per head shared
    iso_baseline_of: SharingSpec | None = None
    pretrained: str | None = None
    conversion: Mapping[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "ratio": self.ratio, "options": dict(self.options),
                                  "layers": dict(self.layers)}  # fmt: skip
        if self.iso_baseline_of is not None:
            record["iso_baseline_of"] = self.iso_baseline_of.to_record()
        return record | {key: value for key in ("head_sources", "pretrained", "conversion")
                         if (value := getattr(self, key)) is not None}  # fmt: skip

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SharingSpec:
        baseline = record.get("iso_baseline_of")
        layers = record.get("layers") or {"name": "none", "ratio": None}
        return cls(record["name"], record["ratio"], record.get("options") or {}, layers, record.get("head_sources"),
                   cls.from_record(baseline) if baseline else None, record.get("pretrained"),
                   record.get("conversion"))  # fmt: skip

    def built(self) -> SharingSpec:
        """What the model itself shares, as its checkpoint stores it: without the run's context. An iso-parameter
        baseline is the unshared model it trains."""
        return SharingSpec(self.name, self.ratio, self.options, self.layers, self.head_sources)
