"""A sharebench model for `transformers`, written into a folder by `sharebench export` together with the suite's
model code (the sb_*.py files beside it), so that the folder alone loads it:

    AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)     # arch=bert
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)     # arch=gpt

model.safetensors stores every shared tensor once, as the suite saved it; loading restores the sharing.
"""

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput

from .configuration_sharebench import SharebenchConfig
from .sb_layers_base import LayerSharing
from .sb_model_transformer import IGNORE_INDEX, LanguageModel, ModelConfig
from .sb_registry import subclasses_by_name
from .sb_sharing_base import AttentionSharing

# {scheme modules}


def subclasses(base: type) -> dict[str, type]:
    """Every scheme class by its name (the modules above define them)."""
    return subclasses_by_name(__name__, [], base)


class SharebenchPreTrainedModel(PreTrainedModel):
    config_class = SharebenchConfig
    base_model_prefix = "model"

    def __init__(self, config: SharebenchConfig) -> None:
        super().__init__(config)
        name = config.sharing["name"]
        sharing = subclasses(AttentionSharing)[name].factory(config.sharing["ratio"], config.sharing["options"])
        layers = dict(config.sharing["layers"])
        layer_scheme = subclasses(LayerSharing)[layers.pop("name")](**layers)
        self.model = LanguageModel(ModelConfig(**config.model), sharing, name, layer_scheme)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, config: Any = None,
                        **kwargs: Any) -> "SharebenchPreTrainedModel":  # fmt: skip
        """The model with its weights, in eval mode: read with safetensors' `load_model`, which restores tensors
        stored once for several parameters (transformers' loader would initialise the other names afresh)."""
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():  # a hub repository
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(pretrained_model_name_or_path)))
        if not isinstance(config, SharebenchConfig):
            config = SharebenchConfig.from_pretrained(folder)
        model = cls(config)
        load_model(model.model, str(folder / "model.safetensors"))
        return model.eval()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The suite initialises its own modules."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


class SharebenchForMaskedLM(SharebenchPreTrainedModel):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **_: Any) -> MaskedLMOutput:  # fmt: skip
        """Logits at every position (the suite's training computes them at masked positions only)."""
        logits = self.model.head(self.model.encode(input_ids, attention_mask, token_type_ids))
        return MaskedLMOutput(loss=self.loss(logits, labels), logits=logits)


class SharebenchForCausalLM(SharebenchPreTrainedModel):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: Any) -> CausalLMOutput:  # fmt: skip
        """Next-token logits at every position; `labels` are the inputs shifted by one, as the suite trains."""
        logits = self.model.head(self.model.encode(input_ids, attention_mask))
        return CausalLMOutput(loss=self.loss(logits, labels), logits=logits)
