"""Run records free of the machine and versioned (docs/run-record.md): paths named relative to the output root,
the data mirror as ${data_root}, installed files by name; records of schema version 1 read through `upgrade`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from sharebench.cli import main as cli
from sharebench.errors import ConfigError
from sharebench.paths import machine_free
from sharebench.report.results import read_records
from sharebench.run.record import declared_keys
from sharebench.schema import SCHEMA_VERSION, read_record, record_leaves, upgrade
from sharebench.train.tasks import run_task

# A path of a machine: an absolute one, or one folder name made of one (a run named after a path override).
MACHINE_PATH = re.compile(r"""(?<![\w.~<>$}\])=-])/(?:[\w.-]+/)*[\w.-]+|_(?:work|root|home|tmp|Users)_""")


def machine_paths(record: dict) -> list[str]:
    return sorted({match for match in MACHINE_PATH.findall(json.dumps(record)) if match != "/s"})


def test_paths_are_named_by_their_root_and_never_inside_a_longer_path():
    roots = [("/srv/out", ""), ("/srv/mirror", "${data_root}"), ("../mirror", "${data_root}"), ("/home/me", "~")]
    record = {
        "run_dir": "/srv/out/runs/a/seed=0",
        "config": {"output_root": "/srv/out", "data": {"source": "/srv/mirror/wikipedia"}, "glue": "../mirror/glue"},
        "error": "RunInterrupted: checkpoint saved in /srv/out/runs/a/seed=0/last.ckpt; the same command resumes",
        "traceback": 'File "/opt/env/lib/python3.12/site-packages/torch/nn.py"\nFile "/x/src/sharebench/model.py"',
        "others": ["/srv/outer/x", "/data/home/me/x", "/home/me/.cache/sharebench"],
    }
    assert machine_free(record, roots) == {
        "run_dir": "runs/a/seed=0",
        "config": {"output_root": ".", "data": {"source": "${data_root}/wikipedia"}, "glue": "${data_root}/glue"},
        "error": "RunInterrupted: checkpoint saved in runs/a/seed=0/last.ckpt; the same command resumes",
        "traceback": 'File "<site-packages>/torch/nn.py"\nFile "<sharebench>/model.py"',
        "others": ["/srv/outer/x", "/data/home/me/x", "~/.cache/sharebench"],
    }


def test_a_run_writes_a_record_no_machine_is_named_in(nano_cfg, corpus, tmp_path):
    output_root = tmp_path / "out"
    run_dir = output_root / "runs" / "a" / "seed=0"
    config = nano_cfg(f"output_root={output_root}", f"data_root={corpus.parent}")
    returned = run_task(config, run_dir)
    stored = json.loads((run_dir / "run.json").read_text())
    assert stored["schema_version"] == SCHEMA_VERSION
    assert stored["run_dir"] == "runs/a/seed=0" and returned["run_dir"] == str(run_dir)
    assert stored["checkpoint"]["path"] == "runs/a/seed=0/model.safetensors"
    assert stored["config"]["output_root"] == "."
    assert stored["config"]["data"]["source"] == f"${{data_root}}/{corpus.name}"
    assert stored["tokenizer"]["kind"] == "wordpiece" and stored["config"]["cache_dir"] == "${cache_dir}"
    assert stored["data"]["name"] == config.data.name and len(stored["data"]["fingerprint"]) == 16
    assert machine_paths(stored) == []


def test_the_same_data_anywhere_has_the_same_fingerprint(nano_cfg, tmp_path):
    first = run_task(nano_cfg(f"cache_dir={tmp_path / 'cache-a'}"), tmp_path / "a")
    again = run_task(nano_cfg(f"cache_dir={tmp_path / 'cache-b'}"), tmp_path / "b")
    other = run_task(nano_cfg(f"cache_dir={tmp_path / 'cache-c'}", "data.seq_len=16"), tmp_path / "c")
    assert first["data"]["fingerprint"] == again["data"]["fingerprint"]
    assert other["data"]["fingerprint"] == first["data"]["fingerprint"]  # blocks are cut later: same tokens
    less = run_task(nano_cfg(f"cache_dir={tmp_path / 'cache-d'}", "data.max_train_chars=5000"), tmp_path / "d")
    assert less["data"]["fingerprint"] != first["data"]["fingerprint"]


FIRST_VERSION = {
    "status": "completed",
    "run_dir": "/old/machine/repo/outputs/reproduce/x/runs/arch=gpt/seed=1",
    "seed": 1,
    "config": {
        "output_root": "outputs/reproduce/x",
        "data_root": "/old/mirror",
        "data": {"source": "/old/mirror/tinyshakespeare/input.txt", "batch_size": 4, "seq_len": 8},
        "trainer": {"accumulate_grad_batches": 2},
    },
    "metrics": {"steps": 10},
    "flops_per_token": 100,
    "checkpoint": {"path": "/old/machine/repo/outputs/reproduce/x/runs/arch=gpt/seed=1/model.safetensors"},
    "traceback": 'File "/old/machine/repo/.venv/lib/python3.11/site-packages/torch/x.py"',
}


def test_a_first_version_record_is_upgraded_from_what_it_says_itself():
    upgraded = upgrade(json.loads(json.dumps(FIRST_VERSION)), declared_keys())
    assert upgraded["schema_version"] == SCHEMA_VERSION and list(upgraded)[0] == "schema_version"
    assert upgraded["run_dir"] == "runs/arch=gpt/seed=1"
    assert upgraded["checkpoint"]["path"] == "runs/arch=gpt/seed=1/model.safetensors"
    assert upgraded["config"]["data"]["source"] == "${data_root}/tinyshakespeare/input.txt"
    assert upgraded["traceback"] == 'File "<site-packages>/torch/x.py"'
    assert upgraded["compute"] == {"tokens_seen": 10 * 2 * 4 * 8, "training_flops": 10 * 2 * 4 * 8 * 100}
    assert machine_paths(upgraded) == []
    assert upgrade(upgraded) == upgraded  # the current version passes unchanged


def test_a_second_version_record_gains_what_its_keys_are():
    """Records before version 3 did not state their keys' roles: the upgrade states those of this version, which
    only the run side knows; read without them (by collect), such a record asks for `sharebench upgrade`."""
    second = {
        "schema_version": 2,
        "status": "completed",
        "config": {"seed": 1, "output_root": "x", "data": {"seq_len": 8}},
    }
    with pytest.raises(ConfigError, match=r"of schema version 2 does not state its config's keys; `sharebench upgrade"):
        upgrade(second)
    upgraded = upgrade(second, declared_keys())
    assert list(upgraded)[0] == "schema_version" and upgraded["schema_version"] == SCHEMA_VERSION
    assert upgraded["config_keys"]["roles"]["output_root"] == "location"
    assert record_leaves(upgraded) == {"seed": 1, "data.seq_len": 8}  # where the run lived does not identify it
    assert upgrade(upgraded) == upgraded


def test_a_third_version_run_from_a_checkpoint_drops_the_unshared_size_of_its_config():
    """Version 3 recorded a run from a checkpoint the unshared size of its config's own shape (arch=llama's default
    while it trained SmolLM2): not the model's, so not read; a run trained from scratch keeps its count."""
    third = {"schema_version": 3, "status": "completed", "unshared_parameters": 10,
             "config": {"seed": 0, "pretrained": "model.gguf"}}  # fmt: skip
    assert "unshared_parameters" not in upgrade(third)
    assert upgrade({**third, "config": {"seed": 0, "pretrained": None}})["unshared_parameters"] == 10


def test_a_fourth_version_sharing_takes_the_shape_checkpoints_store_and_keeps_its_name_in_tables():
    """Version 4's `sharing` lacked a scheme's options, named a model whose heads DirectShare shared `headwise`
    (without the scheme its heads came from) and left PostShare to the config; version 5 states the options from
    the config, and both head conversions as conversions, which name the model in a table as before."""
    from sharebench.schema import named_schemes

    def fourth(recorded: dict, **config) -> dict:
        return {"schema_version": 4, "status": "completed", "sharing": recorded,
                "config": {"seed": 0, "pretrained": None, **config}}  # fmt: skip

    layers = {"name": "cycle", "ratio": 0.5}
    trained = fourth({"name": "partial_qk", "ratio": 0.5, "layers": layers},
                     sharing={"_target_": "sharebench.sharing.partial_qk.PartialQK", "split": "matrix"})  # fmt: skip
    assert upgrade(trained)["sharing"] == {"name": "partial_qk", "ratio": 0.5, "options": {"split": "matrix"},
                                           "layers": layers}  # fmt: skip
    twin = fourth({"name": "none", "ratio": None, "layers": {"name": "none", "ratio": None},
                   "iso_baseline_of": {"name": "partial_qk", "ratio": 0.5, "layers": layers}},
                  sharing={"_target_": "sharebench.sharing.partial_qk.PartialQK", "split": "matrix"})  # fmt: skip
    assert upgrade(twin)["sharing"]["options"] == {}  # the twin shares nothing; the configuration it matches does
    assert upgrade(twin)["sharing"]["iso_baseline_of"]["options"] == {"split": "matrix"}
    conversion = {"to": "headwise", "ratio": 0.3, "rank": 8}
    directshare = fourth({"name": "headwise", "ratio": 0.3, "layers": {"name": "none", "ratio": None},
                          "conversion": conversion})  # fmt: skip
    upgraded = upgrade(directshare)["sharing"]
    assert upgraded["name"] is upgraded["ratio"] is None and upgraded["conversion"] == conversion
    postshare = fourth({"name": "gqa", "ratio": 0.5, "layers": {"name": "none", "ratio": None}, "pretrained": "m"},
                       postshare_ratio=0.3)  # fmt: skip
    assert upgrade(postshare)["sharing"]["conversion"] == {"to": "postshare", "ratio": 0.3}
    for record in (trained, twin, directshare, postshare):
        assert named_schemes(upgrade(record)["sharing"]) == old_named_schemes(record)
    assert named_schemes(upgrade(directshare)["sharing"])["sharing"] == "headwise"
    assert named_schemes(upgrade(postshare)["sharing"])["sharing"] == "postshare"


def old_named_schemes(record: dict) -> dict:
    """How version 4's tables named a record's schemes (its `results.scheme_of`)."""
    sharing = record["sharing"]
    scheme = sharing.get("iso_baseline_of") or sharing
    layers, name, ratio = scheme.get("layers") or {}, scheme.get("name"), scheme.get("ratio")
    if (postshare := record["config"].get("postshare_ratio")) is not None:
        name, ratio = "postshare", postshare
    return {"sharing": name, "ratio": ratio, "layers": layers.get("name", "none"), "layers.ratio": layers.get("ratio")}


def test_every_reader_reads_through_the_upgrade_and_a_newer_record_is_refused(tmp_path, capsys):
    old, newer = tmp_path / "runs" / "old", tmp_path / "runs" / "newer"
    old.mkdir(parents=True), newer.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps(FIRST_VERSION))
    (old / "glue_summary.json").write_text(json.dumps({"pretrained": FIRST_VERSION["run_dir"]}))
    (newer / "run.json").write_text(json.dumps({**FIRST_VERSION, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ConfigError, match="does not state its config's keys; `sharebench upgrade"):
        read_record(old)
    with pytest.raises(ConfigError, match=f"schema_version {SCHEMA_VERSION + 1} is newer than this sharebench"):
        read_record(newer)
    by_folder = {Path(r["_path"]).parent.name: r for r in read_records([tmp_path])}
    assert by_folder["old"]["status"] == "failed" and "sharebench upgrade" in by_folder["old"]["error"]
    assert by_folder["newer"]["status"] == "failed" and "upgrade sharebench" in by_folder["newer"]["error"]
    (newer / "run.json").unlink()
    cli(["upgrade", str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [
        f"upgrade: 1 of 1 run records rewritten in schema version {SCHEMA_VERSION}",
        "upgrade: 0 of 0 checkpoints (model.json) rewritten in version 2",
    ]
    assert json.loads((old / "run.json").read_text()) == upgrade(json.loads(json.dumps(FIRST_VERSION)), declared_keys())
    assert read_record(old)["run_dir"] == "runs/arch=gpt/seed=1"
    summary = json.loads((old / "glue_summary.json").read_text())
    assert summary == {"pretrained": "runs/arch=gpt/seed=1"}  # named as its record names its run
    cli(["upgrade", str(tmp_path)])
    assert capsys.readouterr().out.startswith("upgrade: 0 of 1")
    assert json.loads((old / "glue_summary.json").read_text()) == summary  # upgraded once, left as it is then


def test_every_committed_record_is_upgraded_and_names_no_machine(project_root):
    listed = subprocess.run(["git", "ls-files", "results"], capture_output=True, text=True, cwd=project_root)
    paths = [project_root / name for name in listed.stdout.split() if name.endswith("run.json")]
    assert len(paths) > 900
    for path in paths:
        record = json.loads(path.read_text())
        assert record.get("schema_version") == SCHEMA_VERSION, path
        assert machine_paths(record) == [], path
