"""`task=evaluate`: what a trained model is worth on held-out text, converted as `convert` says or not.

The model of `pretrained` (a run, a checkpoint, a Hugging Face BERT or Llama folder, a Llama GGUF file), scored on
the data's validation and test splits with its own tokenizer (`data.tokenizer.kind=pretrained`): the loss over
every predicted token, its perplexity and bits per UTF-8 byte, beside what the model stores (unique parameters,
fp32 weight bytes) and adds to the KV cache per token. The unconverted model's figures are the same task with
`convert.to=null`, so a sweep over conversions holds its own reference.
"""

from __future__ import annotations

from pathlib import Path

from sharebench.data.corpora import PretrainData
from sharebench.errors import ConfigError
from sharebench.model.checkpoint import loaded_sharing, pretrained_model
from sharebench.model.inference import kv_cache_bytes
from sharebench.model.transformer import perplexity
from sharebench.paths import resolve_path
from sharebench.run.record import RunRecord, run_once
from sharebench.run.spec import RunSpec
from sharebench.schema import Record
from sharebench.train.pretrain import full_split_loss

FP32_BYTES = 4


def run_evaluate(spec: RunSpec, run_dir: Path) -> Record:
    """task=evaluate: the record holds the model's sharing, parameters, weight bytes, KV bytes per token, and the
    loss, perplexity and bits per byte of each held-out split."""

    def score(record: RunRecord) -> None:
        source = resolve_path(spec.pretrained)
        model, built = pretrained_model(source, spec.convert)
        if not model.config.causal:
            raise ConfigError(f"task=evaluate scores a causal LM's next-token loss; {source} is a masked LM")
        data = PretrainData(spec.data, "causal", spec.cache_dir)
        data.prepare()
        if data.vocab_size > model.config.vocab_size:
            raise ConfigError(
                f"data.tokenizer has {data.vocab_size} tokens, more than the {model.config.vocab_size} "
                f"token embeddings of {source}; use its own tokenizer: data.tokenizer.kind=pretrained"
            )
        loss = {split: full_split_loss(model, data.loader(split, spec.seed)) for split in ("validation", "test")}
        counts = model.parameter_counts()
        record.update(
            pretrained=str(source),
            sharing=loaded_sharing(source, built, spec.convert.to_dict() if spec.convert.to else None),
            parameters=counts.to_dict(),
            tokenizer=data.tokenizer.describe(),
            tokens={split: len(data.streams[split]) for split in ("validation", "test")},
            checkpoint={"bytes": counts.unique * FP32_BYTES},
            inference={"kv_cache_bytes_per_token": sum(kv_cache_bytes(model, 1))},
            metrics={
                "val_loss_full": loss["validation"],
                "test_loss_full": loss["test"],
                "val_ppl": perplexity(loss["validation"]),
                "test_ppl": perplexity(loss["test"]),
                "val_bpb": data.bits_per_byte(loss["validation"], "validation"),
                "test_bpb": data.bits_per_byte(loss["test"], "test"),
            },
        )  # fmt: skip

    record, ran = run_once(spec.to_dict(), run_dir, score)
    if ran and record["status"] == "completed":
        metrics = record["metrics"]
        print(f"done: {record['run_dir']}: test loss {metrics['test_loss_full']:.4f} (perplexity "
              f"{metrics['test_ppl']:,.2f}, {metrics['test_bpb']:.4f} bits per byte), "
              f"{record['parameters']['unique']:,} unique parameters")  # fmt: skip
    return record
