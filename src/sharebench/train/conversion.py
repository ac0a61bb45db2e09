"""`sharebench convert`: a checkpoint converted (`sharebench.model.convert`) and written as a checkpoint of its own,
with its tokenizer files and a run record of the conversion."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from sharebench.data.tokenizer import TOKENIZER_FILES, gguf_tokenizer
from sharebench.model.checkpoint import WEIGHTS_NAME, converted_model, load_pretrained, save_pretrained
from sharebench.model.transformer import LanguageModel
from sharebench.run.record import RunRecord, run_once


def convert_checkpoint(source: str | Path, out: str | Path, to: str, ratio: float, rank: int = 8, group: int = 2
                       ) -> LanguageModel:  # fmt: skip
    """Convert the checkpoint in `source` and write it, with its tokenizer files and a run record of the
    conversion (its sharing, parameters and checkpoint), to `out`; returns the converted model as written."""
    source, out = Path(source), Path(out)
    conversion = {"to": to, "ratio": ratio, "rank": rank} | ({"group": group} if to == "basis" else {})
    config = {"task": "convert", "seed": None, "pretrained": str(source), "convert": conversion}

    def convert(record: RunRecord) -> None:
        converted, sharing = converted_model(source, to, ratio, rank, group)
        weights_bytes = save_pretrained(converted, out, sharing)
        if source.suffix == ".gguf":  # its tokenizer, as the converted folder's own
            gguf_tokenizer(source).save(out)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
        record.update(
            sharing=replace(sharing, pretrained=str(source), conversion=conversion).to_record(),
            parameters=converted.parameter_counts().to_dict(),
            checkpoint={"path": str(out / WEIGHTS_NAME), "bytes": weights_bytes},
        )  # fmt: skip

    run_once(config, out, convert)  # a conversion already written is not made again
    return load_pretrained(out)
