"""Data: local sources in every layout, tokenizers, cached token streams, MLM masking."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import sharebench
from sharebench.data import corpora as data_module
from sharebench.data.corpora import BlockSampler, EstimateSampler, PretrainData, mask_tokens, read_documents
from sharebench.errors import ConfigError
from sharebench.run.composing import compose
from tests.conftest import FIXTURE_DATA, HUB_WIKIPEDIA, HUB_WIKITEXT, bert_vocab, spec_of

MLM = OmegaConf.create({"probability": 0.15, "mask": 0.8, "random": 0.1})


def test_masking_follows_bert():
    tokens = torch.randint(10, 1000, (200_000,))
    inputs, labels = mask_tokens(tokens, MLM, mask_id=4, vocab_size=1000, generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.005
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    masked = (inputs[chosen] == 4).float().mean().item()
    unchanged = (inputs[chosen] == tokens[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01


def test_mlm_blocks_wrap_cls_and_sep_and_never_predict_them(nano_overrides):
    cfg = spec_of(nano_overrides)
    data = PretrainData(cfg.data, "mlm", cfg.cache_dir, cfg.arch.mlm)
    item = data.dataset("train")[0, 7]
    assert item["input_ids"].shape == (32,)
    assert item["input_ids"][0] == data.special_ids["[CLS]"] and item["input_ids"][-1] == data.special_ids["[SEP]"]
    assert item["labels"][0] == -100 and item["labels"][-1] == -100
    train = data.dataset("train")
    assert torch.equal(train[0, 7]["input_ids"], item["input_ids"])  # masks follow the item's mask seed
    assert not torch.equal(train[0, 8]["labels"], item["labels"])
    assert data.vocab_size <= 200


def test_causal_blocks_shift_labels(nano_overrides):
    cfg = spec_of([*nano_overrides, "arch=gpt"])
    data = PretrainData(cfg.data, "causal", cfg.cache_dir)
    item = data.dataset("train")[3, 0]
    assert torch.equal(item["input_ids"][1:], item["labels"][:-1])


def batches(sampler: BlockSampler) -> list[list[tuple[int, int]]]:
    items = list(sampler)
    return [items[i : i + sampler.batch_size] for i in range(0, len(items), sampler.batch_size)]


def test_processes_share_global_batches_and_resume_part_way():
    single = BlockSampler(50, 8, seed=3, shuffle=True)
    halves = [BlockSampler(50, 4, seed=3, shuffle=True, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *halves):
            sampler.set_epoch(epoch)
        whole = batches(single)
        assert len(whole) == 50 // 8
        assert [a + b for a, b in zip(batches(halves[0]), batches(halves[1]), strict=True)] == whole
    single.set_epoch(1)
    single.skip_batches = 2
    assert len(single) == len(whole[2:]) * 8
    assert batches(single) == whole[2:]
    assert len(list(single)) == len(whole) * 8  # skipping applies to one pass only
    single.set_epoch(0)
    assert batches(single) != whole  # a new permutation and new mask seeds every epoch


def test_the_training_loss_estimate_keeps_its_batches_whatever_the_epoch():
    estimate = EstimateSampler(50, 8, seed=3)
    first = batches(estimate)
    for epoch in (0, 1, 2):
        training = BlockSampler(50, 8, seed=3, shuffle=True)
        training.set_epoch(epoch)
        estimate.set_epoch(epoch)  # as Lightning does for every loader
        assert batches(estimate) == first
        assert batches(training)[0] != first[0]  # not the batch an epoch starts training on


def test_tokens_are_cached_and_not_tokenised_again(nano_overrides, tmp_path, monkeypatch):
    cfg = spec_of([*nano_overrides, f"cache_dir={tmp_path}"])
    first = PretrainData(cfg.data, "mlm", cfg.cache_dir, cfg.arch.mlm)
    first.prepare()
    monkeypatch.setattr(data_module, "tokenize_stream", lambda *a: pytest.fail("tokenised again"))
    monkeypatch.setattr(data_module, "read_documents", lambda *a: pytest.fail("read again"))
    second = PretrainData(cfg.data, "mlm", cfg.cache_dir, cfg.arch.mlm)
    second.prepare()
    assert np.array_equal(first.streams["train"], second.streams["train"])


def test_json_and_text_sources(tmp_path, nano_overrides):
    (tmp_path / "train.jsonl").write_text('{"body": "one two three four"}\n{"body": "five six"}\n')
    (tmp_path / "validation.jsonl").write_text('{"body": "seven eight"}\n')
    cfg = spec_of([*nano_overrides, f"data.source={tmp_path}", "data.text_column=body"])
    assert read_documents(cfg.data) == {  # one held-out document: validation and test cut it by characters
        "train": ["one two three four", "five six"],
        "validation": ["seven"],
        "test": [" eight"],
    }
    text = tmp_path / "book.txt"
    text.write_text("abcdefghij" * 10)
    cfg = spec_of(
        [*nano_overrides, f"data.source={text}", "data.validation_split=null", "data.validation_fraction=0.1"]
    )
    split = read_documents(cfg.data)
    assert split["train"] == ["abcdefghij" * 9] and split["validation"] == ["abcde"] and split["test"] == ["fghij"]


def test_missing_text_column_is_named(tmp_path, nano_overrides):
    from sharebench.errors import ConfigError

    (tmp_path / "train.jsonl").write_text('{"body": "x"}\n')
    cfg = spec_of([*nano_overrides, f"data.source={tmp_path}"])
    with pytest.raises(ConfigError, match="not a column.*columns: body"):
        read_documents(cfg.data)


def test_tiny_shakespeare_ships_with_the_package_and_splits_90_10(tmp_path):
    cfg = spec_of(["arch=gpt", "data=tinyshakespeare", f"cache_dir={tmp_path}"])
    assert Path(cfg.data.source).is_relative_to(Path(sharebench.__file__).parent)
    data = PretrainData(cfg.data, "causal", cfg.cache_dir)
    data.prepare()
    assert data.vocab_size == 65
    total = sum(len(data.streams[split]) for split in ("train", "validation", "test"))
    assert total == 1_115_394 and len(data.streams["train"]) == int(1_115_394 * 0.9)
    assert len(data.streams["validation"]) == int((total - len(data.streams["train"])) * 0.5)


@pytest.mark.slow
def test_wikipedia_with_the_bert_base_uncased_vocabulary(tmp_path):
    cfg = spec_of(
        [
            "data=wikipedia",
            f"data_root={FIXTURE_DATA}",
            f"data.tokenizer.path={bert_vocab()}",
            f"cache_dir={tmp_path}",
            "data.tokenizer.kind=vocab_file",
            "data.max_train_chars=20000",
            "data.max_validation_chars=5000",
        ]
    )
    data = PretrainData(cfg.data, "mlm", cfg.cache_dir, cfg.arch.mlm)
    data.prepare()
    assert data.vocab_size == 30522
    assert data.special_ids == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    assert data.tokenizer.encode_batch(["Political"])[0] == [2576]  # line 2577 of vocab.txt, lowercased


@pytest.mark.slow
def test_wordpiece_vocabulary_is_the_same_bytes_every_build(nano_overrides, tmp_path):
    """`tokenizers` numbers the pieces it learns in hash order, different in every process."""
    cfg = spec_of(nano_overrides)
    script = (
        "import sys, pathlib; from sharebench.run.composing import compose;"
        "from sharebench.data import corpora as data;"
        "from sharebench.run.validation import validate;"
        "cfg = validate(compose(sys.argv[2:]), data=False);"
        "data.build_tokenizer(cfg.data, 'mlm', lambda: data.read_documents(cfg.data), pathlib.Path(sys.argv[1]))"
    )
    builds = []
    for build in ("first", "second"):  # two processes: any two hash in different orders
        cache = tmp_path / build
        subprocess.run([sys.executable, "-c", script, str(cache), *nano_overrides], check=True, timeout=300)
        (path,) = (cache / "tokenizers").glob("*.json")
        builds.append(path.read_bytes())
    assert builds[0] == builds[1]
    vocab = json.loads(builds[0])["model"]["vocab"]
    assert list(vocab)[:5] == list(data_module.SPECIAL_TOKENS) and len(vocab) <= cfg.data.tokenizer.vocab_size


@pytest.mark.slow
def test_jobs_starting_together_train_the_tokenizer_once(nano_overrides, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    cfg = spec_of(nano_overrides)
    trained = []
    train = data_module.train_wordpiece

    def counted(*args):
        trained.append(1)
        return train(*args)

    monkeypatch.setattr(data_module, "train_wordpiece", counted)
    with ThreadPoolExecutor(4) as pool:
        tokenizers = list(pool.map(lambda _: data_module.build_tokenizer(
            cfg.data, "mlm", lambda: read_documents(cfg.data), tmp_path), range(4)))  # fmt: skip
    assert len(trained) == 1
    assert len({t.tokenizer.to_str() for t in tokenizers}) == 1


def test_character_seen_only_in_validation_has_a_token(tmp_path):
    corpus = tmp_path / "input.txt"
    corpus.write_text("to be or not to be " * 200 + "café")  # é only in the last 10 %
    cfg = spec_of(["arch=gpt", "data=tinyshakespeare", f"data.source={corpus}", f"cache_dir={tmp_path / 'cache'}",
                   "data.seq_len=64"])  # fmt: skip
    data = PretrainData(cfg.data, "causal", cfg.cache_dir)
    data.prepare()
    assert data.tokenizer.token_id("é") is not None and len(data.streams["test"]) > 0


def test_the_default_data_ships_with_the_package(tmp_path):
    cfg = spec_of([f"cache_dir={tmp_path}"])
    assert cfg.data.name == "wikipedia_excerpt"
    assert Path(cfg.data.source).is_relative_to(Path(sharebench.__file__).parent)
    documents = read_documents(cfg.data)
    assert sum(map(len, documents["train"])) > 8_000_000
    assert (len(documents["validation"]), len(documents["test"])) == (16, 15)  # the 31 held-out articles


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_the_test_split_is_disjoint_from_validation_by_document(fraction):
    from sharebench.data.corpora import held_out_as_validation_and_test

    documents = [f"article {i}" for i in range(20)]
    split = held_out_as_validation_and_test(documents, fraction)
    assert sorted(split["validation"] + split["test"]) == sorted(documents)  # each held-out article in one split
    assert not set(split["validation"]) & set(split["test"])
    assert len(split["test"]) == int(20 * fraction)
    if fraction == 0.5:
        assert split["test"] == documents[1::2]  # spread through the held-out text, not its end


def test_bits_per_byte_is_the_loss_in_bits_times_tokens_per_byte(tmp_path):
    import math

    cfg = spec_of(["arch=gpt", "data=tinyshakespeare", f"cache_dir={tmp_path}"])
    data = PretrainData(cfg.data, "causal", cfg.cache_dir)
    data.prepare()
    # One character a token, and Tiny Shakespeare's characters are ASCII: a byte a token.
    assert data.bytes["test"] == len(data.streams["test"])
    assert data.bits_per_byte(math.log(2), "test") == pytest.approx(1.0)


def test_wikipedia_comes_from_the_hub_without_a_mirror_and_from_the_mirror_with_one():
    hub = compose(["data=wikipedia"]).data
    assert (hub.source, hub.hub_config, hub.validation_split) == ("wikimedia/wikipedia", "20231101.en", None)
    mirror = compose(["data=wikipedia", f"data_root={FIXTURE_DATA}"]).data
    assert (mirror.source, mirror.hub_config, mirror.validation_split) == (
        f"{FIXTURE_DATA}/wikipedia",
        None,
        "validation",
    )
    glue = compose([f"data_root={FIXTURE_DATA}"]).glue.source, compose([]).glue.source
    assert glue == (f"{FIXTURE_DATA}/glue", "nyu-mll/glue")


def test_a_hub_corpus_of_one_split_is_streamed_to_its_caps_and_held_out(tmp_path):
    """The hub's code path (load_dataset(name, config, streaming=True)) on a local clone of wikimedia/wikipedia."""
    cfg = spec_of(["data=wikipedia", f"data.source={HUB_WIKIPEDIA}", "data.max_train_chars=38000",
                   "data.max_validation_chars=2000", f"cache_dir={tmp_path}"])  # fmt: skip
    import pyarrow.parquet as pq

    articles = pq.read_table(next(HUB_WIKIPEDIA.glob("20231101.en/*.parquet"))).column("text").to_pylist()
    documents = read_documents(cfg.data)
    train, (validation,) = documents["train"], documents["validation"]
    assert train[:-1] == articles[: len(train) - 1] and articles[len(train) - 1].startswith(train[-1])
    # The last 5 % of the articles read (no more than the two caps together, of 30 there) are held out.
    held_out = next(i for i, article in enumerate(articles) if article.startswith(validation))
    assert len(train) <= held_out < len(articles) - 5
    assert sum(map(len, train)) <= 38_000 and len(validation) <= 2_000


def test_wikitext_lines_are_joined_into_articles_at_their_titles():
    lines = ["", " = First = \n", "", " Text of one . \n", " = = Section = = \n", " More . \n", "", " = Second = \n",
             " Two . \n"]  # fmt: skip
    assert list(data_module.wikitext_articles(lines)) == [
        "".join(lines[:7]),  # the empty row before the second title stays with the first article
        " = Second = \n Two . \n",
    ]


def test_wikitext_reads_its_own_three_splits_as_articles(tmp_path):
    """data=wikitext2 through the hub's code path (load_dataset(name, config)) on a local clone of
    Salesforce/wikitext: each split read from its own, its lines joined into the articles they come from."""
    import pyarrow.parquet as pq

    assert compose(["data=wikitext2"]).data.source == "Salesforce/wikitext"
    cfg = spec_of(["data=wikitext2", f"data.source={HUB_WIKITEXT}", f"cache_dir={tmp_path}"])
    documents = read_documents(cfg.data)
    for split, count in {"train": 8, "validation": 3, "test": 3}.items():
        articles = documents[split]
        assert len(articles) == count and all(article.startswith(" = ") for article in articles)
        lines = pq.read_table(HUB_WIKITEXT / "wikitext-2-raw-v1" / f"{split}-00000-of-00001.parquet")
        assert "".join(articles) == "".join(lines.column("text").to_pylist())
    assert documents["test"][0] not in documents["validation"]
    with pytest.raises(ConfigError, match="test_split=test needs a validation_split beside it"):
        spec_of(["data=wikitext2", "data.validation_split=null", "data.validation_fraction=0.1"])


def test_without_a_network_the_hub_error_names_both_ways(tmp_path):
    cfg = spec_of(["data=wikipedia", f"cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="SHAREBENCH_DATA.*sharebench data download.*data=wikipedia_excerpt"):
        read_documents(cfg.data)


def test_data_download_writes_the_mirror_that_sharebench_data_reads(tmp_path):
    """The hub's calls, on local clones in the hub's layout: what `sharebench data download` writes, a run reads."""
    import zlib

    from sharebench.data import glue
    from sharebench.data.mirror import download

    mirror = tmp_path / "mirror"
    sources = {"wikipedia": (str(HUB_WIKIPEDIA), "20231101.en"), "glue": (str(FIXTURE_DATA / "glue"), None),
               "bert-base-uncased": (str(bert_vocab().parent), "vocab.txt"),
               "wikitext2": (str(HUB_WIKITEXT), "wikitext-2-raw-v1")}  # fmt: skip
    names = ["wikipedia", "glue", "tinyshakespeare", "bert-base-uncased", "wikitext2"]
    lines = download(names, mirror, max_train_chars=30_000, sources=sources)
    assert [line.split(":")[0] for line in lines] == names
    cfg = spec_of(["data=wikipedia", f"data_root={mirror}", "data.tokenizer.kind=vocab_file", f"cache_dir={tmp_path}"])
    assert cfg.data.source == f"{mirror}/wikipedia" and cfg.data.validation_split == "validation"
    train = list(data_module._stream_split(cfg.data, "train"))  # 1 % held out of 30 articles: likely none
    assert 30_000 <= sum(map(len, train)) < 35_000
    import pyarrow.parquet as pq

    for file in (mirror / "wikipedia").glob("*.parquet"):
        ids = pq.read_table(file).column("id").to_pylist()
        assert all((zlib.crc32(str(i).encode()) % 100 == 0) == file.name.startswith("validation") for i in ids)
    for name in glue.TASKS:
        for split in glue.TASKS[name].tsv_files:
            assert glue.load_split(str(mirror / "glue"), name, split) == glue.load_split(
                str(FIXTURE_DATA / "glue"), name, split
            )
    shakespeare = compose(["data=tinyshakespeare", f"data_root={mirror}"]).data.source
    assert (
        Path(shakespeare).read_bytes() == (Path(sharebench.__file__).parent / "corpus/tinyshakespeare.txt").read_bytes()
    )
    assert (mirror / "bert-base-uncased/vocab.txt").read_bytes() == bert_vocab().read_bytes()
    wikitext = spec_of(["data=wikitext2", f"data_root={mirror}", f"cache_dir={tmp_path}"]).data
    assert wikitext.source == f"{mirror}/wikitext2" and wikitext.hub_config is None
    assert read_documents(wikitext) == read_documents(spec_of(["data=wikitext2", f"data.source={HUB_WIKITEXT}"]).data)
    again = download(["glue"], mirror, sources=sources)
    assert "there already" in again[0]
    with pytest.raises(ConfigError, match="unknown wikipedias; valid: wikipedia, wikitext2, glue"):
        download(["wikipedias"], mirror)
    with pytest.raises(ConfigError, match="cannot read wikipedia from wikimedia/wikipedia.*SHAREBENCH_DATA"):
        download(["wikipedia"], tmp_path / "offline")  # the real hub name, and no network


def test_a_pretraining_run_reports_the_test_split_and_bits_per_byte(nano_cfg, tmp_path):
    import math

    from sharebench.train.tasks import run_task

    metrics = run_task(nano_cfg(), tmp_path / "run")["metrics"]
    for name in ("val_loss_full", "test_loss_full", "val_bpb", "test_bpb"):
        assert math.isfinite(metrics[name]) and metrics[name] > 0, name
    assert metrics["test_loss_full"] != metrics["val_loss_full"]  # another text
    # WordPiece pieces hold several bytes each: fewer bits per byte than nats per token.
    assert metrics["test_bpb"] < metrics["test_loss_full"]


def test_a_character_vocabulary_read_with_other_text_names_the_missing_character():
    from sharebench.data.tokenizer import CharTokenizer

    with pytest.raises(ConfigError, match="the character 'K' has no token in this vocabulary of 2 characters"):
        CharTokenizer("ab", ()).encode_batch(["abK"])
