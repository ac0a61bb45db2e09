"""Zero-shot STS-B (`task=sts_zero_shot`): how much of a model's sentence similarity survives a conversion,
with no training (Cao et al. 2024); GLUE fine-tuning is in `sharebench.train.finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sharebench.data.glue import encode, load_split, pad_batch
from sharebench.data.tokenizer import load_pretrained_tokenizer
from sharebench.model.checkpoint import loaded_sharing, pretrained_model
from sharebench.model.transformer import LanguageModel
from sharebench.paths import resolve_path
from sharebench.run.record import RunRecord, run_once
from sharebench.run.spec import RunSpec
from sharebench.schema import Record


def run_sts_zero_shot(spec: RunSpec, run_dir: Path) -> Record:
    """task=sts_zero_shot: the pretrained model, converted as `convert` says (or not), scored on the STS-B
    validation split without training; the run record holds the parameters and the correlations."""

    def score(record: RunRecord) -> None:
        source = resolve_path(spec.pretrained)
        model, built = pretrained_model(source, spec.convert)
        tokenizer = load_pretrained_tokenizer(source, spec.glue.recipe.max_length, model.config.vocab_size)
        split = load_split(spec.glue.source, "stsb", "validation")
        if spec.glue.recipe.max_eval_examples:
            split = {column: values[: spec.glue.recipe.max_eval_examples] for column, values in split.items()}
        counts = model.parameter_counts(lm_head=False)
        record.update(
            pretrained=str(source),
            sharing=loaded_sharing(source, built, spec.convert.to_dict() if spec.convert.to else None),
            parameters=counts.to_dict(),
            examples={"validation": len(split["label"])},
            metrics=sts_zero_shot(model, tokenizer, split),
        )  # fmt: skip

    return run_once(spec.to_dict(), run_dir, score)[0]


def mean_pooled(model: LanguageModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings: final hidden states averaged over the non-padding tokens (sentence-transformers)."""
    hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def sts_zero_shot(model: LanguageModel, tokenizer: Any, split: dict[str, list], batch_size: int = 64) -> dict:
    """STS-B without training: Spearman and Pearson correlation of the cosine similarity of the two sentences'
    mean-pooled embeddings with the gold scores."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    model.eval()
    similarities = []
    for start in range(0, len(split["label"]), batch_size):
        pooled = []
        for column in ("text_a", "text_b"):
            texts = split[column][start : start + batch_size]
            sentences = {"text_a": texts, "text_b": None, "label": [0.0] * len(texts)}  # one sentence, no gold
            pooled.append(mean_pooled(model, pad_batch(encode(tokenizer, sentences, regression=True))))
        similarities.append(torch.nn.functional.cosine_similarity(*pooled))
    predicted, gold = torch.cat(similarities), torch.tensor(split["label"], dtype=torch.float)
    return {"spearman": float(spearman_corrcoef(predicted, gold)), "pearson": float(pearson_corrcoef(predicted, gold))}
