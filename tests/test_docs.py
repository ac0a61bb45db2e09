"""Docs are tests: every command in a fenced shell block of README.md and docs/ runs as a user would type it, in
one scratch folder, in the order the docs give them (training shortened by overrides appended to it, sweeps and
make targets as dry runs, placeholders such as `<run>` filled with a run made before), so no documented command
breaks silently. Nothing the docs link to lies outside the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharebench.paths import PROJECT_ROOT
from tests.conftest import FIXTURE_DATA, run_in_process

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# What a documented run is shortened with: two steps on little data, GLUE on one small task of the fixture, and no
# measuring pass after training (the tests of the measurements ask for it: tests/test_memory.py, test_bench.py).
SHORT = ["measure=false", "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "data.batch_size=4", "data.max_train_chars=30000", "data.max_validation_chars=10000",
         "data.tokenizer.train_chars=null", "glue.tasks=[rte]", "glue.recipe.max_train_examples=8",
         "glue.recipe.max_eval_examples=8", "glue.recipe.epochs=1", "glue.predict_test=false",
         f"glue.source={FIXTURE_DATA / 'glue'}", "trainer.enable_progress_bar=false"]  # fmt: skip
# The environment, the tests themselves, and lm-evaluation-harness's tasks, which read the hub (tests/test_lm_eval.py
# runs lm-eval on a local task).
NOT_RUN = ("source ", "export ", "make test", "lm_eval ")


def documented_commands() -> list[tuple[str, str]]:
    commands = []
    for path in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    commands.append((path.name, command))
    return commands


def test_the_docs_link_nothing_outside_the_repository():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#]+)[^)]*\)", path.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).resolve().is_relative_to(PROJECT_ROOT), (path.name, target)
                assert (path.parent / target).exists(), (path.name, target)


def as_run(command: str, scratch: Path, runs: dict[str, str]) -> list[str] | None:
    """The command as it runs here, or None where it is not run (see NOT_RUN)."""
    if command.startswith(NOT_RUN):
        return None
    for placeholder in re.findall(r"<[^>]+>", command):
        if placeholder == "<out>":
            command = command.replace(placeholder, str(scratch / "converted"))
            continue
        named = next((kind for kind in runs if kind in placeholder), "bert")  # <gpt run>, <recurrent_depth run>, …
        command = command.replace(placeholder, runs[named])
    words = shlex.split(command.replace("~/", f"{scratch}/"))
    if words[0] == "make":
        return ["make", "-n", "-C", str(PROJECT_ROOT), *words[1:]]  # what it would run, and that the target exists
    if words[:2] == ["python", "train.py"] or words[:2] == ["sharebench", "train"]:
        words = ["train.py", *words[2:]]
        if "-m" in words:
            return [*words, "hydra.sweeper.dry_run=true", f"output_root={scratch / 'outputs'}"]
        gpus = any(w in words for w in ("trainer.devices=4", "trainer.strategy=fsdp"))
        if gpus:  # no GPU here: composed, not run
            return [*words, "--cfg", "job"]
        if "trainer.strategy=ddp" in words:  # Lightning starts the other processes with this one's command line
            return [sys.executable, str(PROJECT_ROOT / "train.py"), *words[1:], *SHORT]
        return [*words, *SHORT]
    if words[0] == "sharebench":
        return words
    raise AssertionError(f"a documented command this test does not know how to run: {command}")


@pytest.mark.slow
def test_every_documented_command_works_as_typed(tmp_path):
    runs = {}
    gpt = ["arch=gpt", "size=nano", "data=tinyshakespeare"]
    made_runs = {
        "recurrent_depth": [*gpt, "layers=recurrent_depth", "size.n_layers=3"],
        "bert": ["size=nano"],
        "gpt": gpt,
    }
    for kind, overrides in made_runs.items():
        made = run_in_process(["train.py", *overrides, *SHORT, f"output_root={tmp_path / 'made'}"], tmp_path)
        assert made.returncode == 0, made.stderr[-2000:]
        runs[kind] = next(line.split(": ")[1] for line in made.stdout.splitlines() if line.startswith("done: "))
    commands = documented_commands()
    assert len(commands) > 30
    ran = set()
    for source, command in commands:
        argv = as_run(command, tmp_path, runs)
        if argv is None or command in ran:  # a command several pages give runs where it stands first
            continue
        ran.add(command)
        started = time.perf_counter()
        if argv[0] in ("train.py", "sharebench"):  # in this process (tests/test_install.py runs the installed one)
            result = run_in_process(argv, tmp_path)
        else:
            result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=900)
        print(f"{time.perf_counter() - started:5.1f} s  {source}: {command}")
        if command.startswith("sharebench data download"):  # the hub, which this machine cannot reach
            assert result.returncode == 2 and "SHAREBENCH_DATA" in result.stderr, (source, command, result.stderr)
            continue
        assert result.returncode == 0, (source, command, result.stderr[-3000:])
