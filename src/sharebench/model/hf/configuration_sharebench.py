"""The configuration of a sharebench model exported for `transformers` (`sharebench export`): the suite's model
shape and sharing, as its checkpoint's model.json stores them."""

from typing import Any

from transformers import PretrainedConfig


class SharebenchConfig(PretrainedConfig):
    model_type = "sharebench"

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        sharing: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model = model or {}
        unshared = {"name": "none", "ratio": None, "options": {}, "layers": {"name": "none", "ratio": None}}
        self.sharing = sharing or unshared
        kwargs.setdefault("tie_word_embeddings", False)  # the model ties its own tensors, as it was trained
        super().__init__(**kwargs)
