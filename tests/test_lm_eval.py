"""lm-evaluation-harness on an exported model (`pip install 'sharebench[eval]'`): a causal run exported by
`sharebench export` runs under `lm_eval --model hf … trust_remote_code=True`, and its log-likelihoods and accuracy
on a local multiple-choice task are the suite's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharebench.data.tokenizer import load_run_tokenizer
from sharebench.model.checkpoint import load_pretrained
from sharebench.model.export import export
from sharebench.run.composing import compose
from sharebench.train.tasks import run_task
from tests.conftest import nano_settings

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an opt-in extra: pip install 'sharebench[eval]'")

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # the task is local: nothing to fetch
TASK = """task: sharebench_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {examples}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""


def examples_from(text: str, count: int) -> list[dict]:
    """Contexts cut from the text, each with its true continuation and another stretch of the text as choices."""
    made = []
    for i in range(count):
        start = 500 + 300 * i
        context = text[start : start + 20].rstrip()  # lm-eval scores a context's trailing spaces as continuation
        true, other = text[start + len(context) :][:8], text[start + 150 : start + 158]
        made.append({"context": context, "choices": [true, other] if i % 2 == 0 else [other, true], "label": i % 2})
    return made


def suite_log_likelihood(model: torch.nn.Module, tokenizer, context: str, continuation: str) -> float:
    context_ids, whole = tokenizer.encode_batch([context, context + continuation])
    ids = torch.tensor([whole])
    with torch.no_grad():
        log_probs = model(ids).logits[0, :-1].log_softmax(-1)
    return sum(log_probs[position - 1, whole[position]].item() for position in range(len(context_ids), len(whole)))


@pytest.mark.slow
def test_lm_eval_scores_an_exported_model_as_the_suite_does(corpus, cache_dir, tmp_path):
    import pyarrow.parquet as pq

    # A character model of the corpus's documents, one a line (its newline is the exported beginning of text).
    text = "\n".join(pq.read_table(Path(corpus) / "train-00000-of-00001.parquet").column("text").to_pylist())
    (tmp_path / "corpus.txt").write_text(text)
    run = tmp_path / "run"
    run_task(compose([*nano_settings(corpus, cache_dir, tmp_path / "outputs"), "arch=gpt", "data=tinyshakespeare",
                      f"data.source={tmp_path / 'corpus.txt'}", "trainer.max_steps=20"]), run)  # fmt: skip
    export(run, tmp_path / "hf")
    examples = examples_from(text, 6)
    (tmp_path / "examples.jsonl").write_text("".join(json.dumps(example) + "\n" for example in examples))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "choice.yaml").write_text(TASK.format(examples=tmp_path / "examples.jsonl"))
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={tmp_path / 'hf'},trust_remote_code=True", "--tasks", "sharebench_choice", "--include_path",
         str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path",
         str(tmp_path / "scores")],
        capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logged = next((tmp_path / "scores").rglob("samples_*.jsonl"))
    samples = [json.loads(line) for line in logged.read_text().splitlines()]
    assert len(samples) == len(examples)
    model, tokenizer = load_pretrained(run).eval(), load_run_tokenizer(run)
    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = sample["doc"]
        theirs = [float(log_likelihood) for log_likelihood, _ in sample["filtered_resps"]]
        ours = [suite_log_likelihood(model, tokenizer, doc["context"], choice) for choice in doc["choices"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
        correct += max(range(len(ours)), key=ours.__getitem__) == doc["label"]
        assert sample["acc"] == float(max(range(len(theirs)), key=theirs.__getitem__) == doc["label"])
    reported = json.loads(next((tmp_path / "scores").rglob("results_*.json")).read_text())
    assert reported["results"]["sharebench_choice"]["acc,none"] == pytest.approx(correct / len(examples))
