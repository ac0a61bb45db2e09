"""A pip install outside the repository: the wheel, in a fresh virtual environment, trains, sweeps, runs a recipe,
counts parameters and collects from an empty folder, with no source tree, data mirror or network."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sharebench.paths import PROJECT_ROOT

SMALL = ["size=nano", "data.max_train_chars=30000", "data.max_validation_chars=5000", "data.tokenizer.vocab_size=200",
         "data.tokenizer.train_chars=null", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
         "trainer.enable_progress_bar=false"]  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the sharebench wheel alone; its dependencies are read from this interpreter's site-packages
    (a path in a .pth file: the development install's own .pth files there are not read)."""
    root = tmp_path_factory.mktemp("install")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(root / "wheel"), str(PROJECT_ROOT)], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (wheel,) = (root / "wheel").glob("sharebench-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              str(wheel)], capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


def sharebench(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "sharebench"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
def test_the_installed_command_works_from_an_empty_folder(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import sharebench; print(sharebench.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout  # fmt: skip
    assert where.startswith(str(installed)), where
    cache = f"cache_dir={tmp_path / 'cache'}"
    single = sharebench(installed, tmp_path, "train", "sharing=partial_qk", "ratio=0.9", *SMALL, cache)
    assert single.returncode == 0, single.stderr[-3000:]
    sweep = sharebench(installed, tmp_path, "train", "-m", "sharing=none,shared_qkv", *SMALL, cache)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    recipe = sharebench(installed, tmp_path, "train", "experiment=yang24", "ratio=0.9", "seed=0", "size.n_layers=2",
                        "size.dim=16", "size.n_heads=2", "trainer.max_steps=2", "trainer.val_check_interval=2",
                        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", cache)  # fmt: skip
    assert recipe.returncode == 0, recipe.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("run.json")]
    assert len(records) == 4 and all(r["status"] == "completed" for r in records)
    assert {r["config"]["data"]["name"] for r in records} == {"wikipedia_excerpt", "tinyshakespeare"}
    params = sharebench(installed, tmp_path, "params", "arch=bert", "size=bert-base", "sharing=shared_qkv")
    assert params.returncode == 0, params.stderr[-3000:]
    assert json.loads(params.stdout)["sharing"] == "shared_qkv"
    collected = sharebench(installed, tmp_path, "collect", "outputs", "--out", "results", "--no-plots")
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert (tmp_path / "results" / "table.md").stat().st_size > 0


@pytest.mark.slow
def test_the_docs_plugin_installs_beside_the_wheel_and_is_a_scheme(installed, tmp_path):
    """docs/schemes.md's example plugin, pip-installed into the fresh venv: its scheme is a choice by name."""
    from tests.test_plugins import docs_plugin

    pyproject, module = docs_plugin()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "pyproject.toml").write_text(pyproject)
    (tmp_path / "plugin" / "sharebench_shared_kv.py").write_text(module)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(installed / "bin" / "python"), "install",
                              "-q", "--no-deps", "--no-build-isolation", str(tmp_path / "plugin")],
                             capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    params = sharebench(installed, tmp_path, "params", "size=nano", "sharing=shared_kv")
    assert params.returncode == 0, params.stderr[-3000:]
    assert json.loads(params.stdout)["sharing"] == "shared_kv" and not params.stderr.strip()
