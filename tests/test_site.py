"""`sharebench site`: the committed leaderboard as pages that open from disk, checked as files and, where the
system has Chromium, in that real browser (Playwright drives it; no browser is downloaded)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from sharebench.report.results import by_model, find_configurations, pretraining
from sharebench.report.site import slug
from tests.conftest import run_in_process

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "results" / "leaderboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = run_in_process(["sharebench", "site", str(BOARD), "--out", str(out)], out)
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.strip() == f"open {out / 'index.html'}"
    return out


# Building the board's site, a page for each of its configurations, takes seconds: the tests that read it are in
# the full tier (`make test-full`), and the fast tier keeps the refusal.
@pytest.mark.slow
def test_the_site_has_a_board_readme_and_page_per_configuration_with_plotly_written_once(site):
    groups = by_model(pretraining(find_configurations([BOARD / "runs"])))
    pages = sorted(p.name for p in (site / "leaderboard" / "config").glob("*.html"))
    assert len(pages) == sum(len(group) for group in groups.values())
    assert [p.name for p in site.rglob("plotly*.js")] == ["plotly.min.js"]
    board = (site / "leaderboard" / "index.html").read_text()
    assert board.count("<tr>") - board.count("<thead><tr>") == len(pages)  # one row per configuration
    assert not re.search(r'<(script|img|link)[^>]+(src|href)="https?:', board)  # nothing loaded from a network
    readme = (site / "leaderboard" / "readme.html").read_text()
    for file in (p for p in BOARD.iterdir() if p.is_file()):  # the tables and plots the README names, linked
        assert (
            f'<a href="{file.name}">' in readme and (site / "leaderboard" / file.name).read_bytes() == file.read_bytes()
        )
    assert "Machine and code" in board and "hardware:" in board  # setting.md's section, as the footer


@pytest.mark.slow
def test_a_configuration_page_states_its_command_and_each_run(site):
    label = "arch=gpt,sharing=gqa,iso_baseline=false"
    configuration = next(c for c in find_configurations([BOARD / "runs"]) if c.label == label)
    page = (site / "leaderboard" / "config" / f"{slug(label)}.html").read_text()
    seeds = ",".join(str(r["seed"]) for r in configuration.records)
    assert f"python train.py -m experiment=leaderboard scale=cpu {label.replace(',', ' ')} seed={seeds}" in page
    for index, record in enumerate(configuration.records):
        assert f"{record['metrics']['val_loss_full']:.4f}" in page
        copy = f"{slug(label)}/run-{index}-seed={record['seed']}.json"  # each run's record, linked from its row
        assert f'<a href="{copy}">run.json</a>' in page
        assert json.loads((site / "leaderboard" / "config" / copy).read_text())["metrics"] == record["metrics"]
    assert "plotly-graph-div" in page  # its curves


def test_a_folder_collect_did_not_write_is_refused_in_one_line(tmp_path):
    result = run_in_process(["sharebench", "site", str(tmp_path), "--out", str(tmp_path / "s")], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: site: {tmp_path} has no runs/ folder; give folders that "
                                     "`sharebench collect --out` wrote (results/<name>)")  # fmt: skip
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the browser tests skip")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with playwright.sync_playwright() as driver:
        # No background connections: this machine's closed network refuses them, many at a time.
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])  # fmt: skip
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    opened = browser.new_page(viewport={"width": 1400, "height": 900})
    opened.errors = []
    opened.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    opened.close()


def numbers(page, board: int, column: int) -> list[float | None]:
    texts = page.locator("table.ranked").nth(board).locator("tbody tr").evaluate_all(
        f"rows => rows.map(row => row.cells[{column}].textContent.trim())")  # fmt: skip
    found = [re.match(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", t) for t in texts]
    return [float(m.group(0).replace(",", "")) if m else None for m in found]


@pytest.mark.slow
def test_the_board_in_a_browser_has_its_rows_sorts_filters_and_plots(site, page):
    groups = by_model(pretraining(find_configurations([BOARD / "runs"])))
    page.goto((site / "leaderboard" / "index.html").as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg")
    boards = page.locator("section.board")
    assert boards.count() == len(groups)
    for index, group in enumerate(groups.values()):
        assert boards.nth(index).locator("tbody tr").count() == len(group)
    ranked = numbers(page, 0, 6)  # the main metric, lower first
    assert ranked == sorted(ranked)
    header = page.locator("table.ranked").first.locator("th", has_text="unique params")
    header.click()
    ascending = numbers(page, 0, 2)
    assert ascending == sorted(ascending) and ascending != ranked
    header.click()
    assert numbers(page, 0, 2) == sorted(ascending, reverse=True)
    page.locator("input.filter").first.fill("gqa")
    shown = page.locator("table.ranked").first.locator("tbody tr:visible")
    assert 0 < shown.count() < len(next(iter(groups.values())))
    assert all("gqa" in text.lower() for text in shown.all_text_contents())
    assert page.locator(".plotly-graph-div .scatterlayer .point").count() > 10  # the Pareto views drew their points
    assert page.errors == []


@pytest.mark.slow
def test_every_kind_of_page_opens_without_a_console_error(site, page):
    config = next((site / "leaderboard" / "config").glob("*.html"))
    for path in (site / "index.html", site / "leaderboard" / "readme.html", config):
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        assert page.title().endswith("· sharebench")
    page.goto(config.as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg")  # the curves
    assert page.errors == []
    page.goto((site / "index.html").as_uri())
    page.get_by_role("link", name="leaderboard").first.click()
    assert page.url.endswith("leaderboard/index.html")
    assert json.dumps(page.errors) == "[]"
