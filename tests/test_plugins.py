"""Schemes from other packages: an entry point adds a scheme that the suite finds by name, with no change to it;
a plugin that fails to import or takes a built-in name is left out in one line, and the built-in schemes work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sharebench.paths import PROJECT_ROOT
from sharebench.run.composing import compose
from tests.conftest import nano_settings


def docs_plugin() -> tuple[str, str]:
    """docs/schemes.md's example plugin: its pyproject.toml and its module's code."""
    text = (PROJECT_ROOT / "docs" / "schemes.md").read_text().split("## A scheme from another package", 1)[1]
    return text.split("```toml\n", 1)[1].split("```", 1)[0], text.split("```python\n", 1)[1].split("```", 1)[0]


def docs_plugin_installed(folder: Path) -> dict[str, str]:
    pyproject, module = docs_plugin()
    return installed(folder, tomllib.loads(pyproject)["project"]["entry-points"], {"sharebench_shared_kv": module})


def installed(folder: Path, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> dict[str, str]:
    """A package as pip lays it out (its modules and a dist-info naming its entry points) in `folder`; the
    environment of a process that has it installed."""
    for name, code in modules.items():
        (folder / f"{name}.py").write_text(code)
    info = folder / "sharebench_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sharebench-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items())
        for group, entries in entry_points.items()))  # fmt: skip
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT,
                          timeout=600)  # fmt: skip


def params(env: dict[str, str], *overrides: str) -> dict:
    result = run(env, "-m", "sharebench", "params", "size=nano", *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_the_docs_plugin_is_a_scheme_by_name(tmp_path):
    """`sharebench params sharing=shared_kv` with the docs' plugin installed: one D × D block (and its bias) fewer
    per layer than separate Q/K/V."""
    from sharebench.cli import params as params_here

    plugin = params(docs_plugin_installed(tmp_path), "sharing=shared_kv")
    unshared = params_here(["size=nano", "sharing=none"])  # needs no plugin: in this process
    assert plugin["sharing"] == "shared_kv"
    size = compose(["size=nano"]).size
    assert unshared["unique"] - plugin["unique"] == size.n_layers * (size.dim * size.dim + size.dim)


def test_a_broken_or_clashing_plugin_is_left_out_in_one_line_each(tmp_path, monkeypatch, capsys):
    """In this process: the entry points are read from the installed package's dist-info, as at import."""
    from sharebench.layers import LAYER_SCHEMES, LayerSharing
    from sharebench.registry import plugins
    from sharebench.sharing import SCHEMES, AttentionSharing

    clash = ("from sharebench.sharing.gqa import GroupedQuery\n\n\nclass Mine(GroupedQuery):\n"
             "    name = 'gqa'\n")  # fmt: skip
    installed(tmp_path, {"sharebench.sharing": {"broken": "no_such_module:Scheme", "mine": "clashing:Mine"},
                         "sharebench.layers": {"odd": "clashing:Mine"}}, {"clashing": clash})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins("sharebench.sharing", AttentionSharing, SCHEMES) == {}
    assert plugins("sharebench.layers", LayerSharing, LAYER_SCHEMES) == {}
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("plugin no_such_module:Scheme (sharebench.sharing) failed to import and is left out" in line
               for line in lines)  # fmt: skip
    assert any("plugin clashing:Mine (sharebench.sharing) is refused: 'gqa' is a built-in scheme's name" in line
               for line in lines)  # fmt: skip
    assert any("plugin clashing:Mine (sharebench.layers) is left out: it names no LayerSharing subclass" in line
               for line in lines)  # fmt: skip
    assert len(lines) == 3  # one line each


@pytest.mark.slow
def test_a_plugin_scheme_trains_and_sweeps(tmp_path, corpus, cache_dir):
    (tmp_path / "site").mkdir()
    env = docs_plugin_installed(tmp_path / "site")
    result = run(env, "train.py", "-m", "sharing=none,shared_kv", *nano_settings(corpus, cache_dir, tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = {json.loads(p.read_text())["sharing"]["name"]: json.loads(p.read_text())
               for p in (tmp_path / "out").rglob("run.json")}  # fmt: skip
    assert set(records) == {"none", "shared_kv"} and all(r["status"] == "completed" for r in records.values())
    assert records["shared_kv"]["parameters"]["unique"] < records["none"]["parameters"]["unique"]
