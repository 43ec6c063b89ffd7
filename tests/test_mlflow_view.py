"""The sweep's saved MLflow views: their format, and, in a real browser, that `mixmatch ui`'s URL
opens on the sweep's table (every cell a row with its name and error, sorted by n_labeled then
variant) and on the mean error per (n_labeled, variant).

The browser test drives Debian's Chromium (/usr/bin/chromium) with Playwright for Python; it
skips, saying why, where either is missing (.ci/run installs both). The one `mixmatch ui` server
of the module also shows that the UI listens on 127.0.0.1 only (no browser needed).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from sweeps import mlflow_view
from sweeps import table as tb

from inprocess_sweep import run_sweep

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The fewest cells that show it: two label counts that sort wrongly as text (100 < 30), two
# variants at 30 labels, and one group of two seeds whose mean is not either seed's error.
SPEC = ("name: view\nexperiment: view-exp\n"
        "base: {dataset: digits, steps: 10, eval_every: 5, log_every: 5, batch_size: 16, median_of: 2, "
        "progress: false, device: cpu, num_threads: 1}\n"
        "grids:\n  - {n_labeled: [100, 30], variant: [mixmatch], seed: [1]}\n"
        "  - {n_labeled: [30], variant: [supervised, mixmatch], seed: [2]}\nretries: 0\n")
UI_START_SECONDS = 120


# ---- the format ------------------------------------------------------------------------------
def test_the_order_tag_sorts_as_text_like_n_labeled_as_a_number_then_the_tables_rows_then_seed():
    cells = [(4000, "mixmatch", 1), (250, "supervised", 1), (250, "mixmatch", 2), (1000, "k1", 1),
             (250, "mixmatch", 1), (250, "k1", 1), (250, "no_ema", 1)]
    by_tag = sorted(cells, key=lambda c: mlflow_view.order_value(*c))
    assert by_tag == [(250, "mixmatch", 1), (250, "mixmatch", 2), (250, "k1", 1), (250, "no_ema", 1),
                      (250, "supervised", 1), (1000, "k1", 1), (4000, "mixmatch", 1)]
    table = tb.build_table(pd.DataFrame([
        {"cell_key": f"{v}{n}{s}", "dataset": "d", "n_labeled": n, "seed": s, "variant": v, "status": "FINISHED",
         "method": "supervised" if v == "supervised" else "mixmatch", "error": 1.0, "start_time": 0}
        for n, v, s in cells]), None)
    at_250 = [v for n, v, _ in by_tag if n == 250]
    assert list(dict.fromkeys(at_250)) == [r[0].text for r in table.main.rows]      # the table's row order


def test_a_view_is_the_uis_saved_view_envelope_around_the_state_json():
    tag = json.loads(mlflow_view.envelope("q: cells", mlflow_view.cells_state("q"), 1234))
    assert {k: tag[k] for k in ("name", "createdAt", "updatedAt")} == {"name": "q: cells", "createdAt": 1234,
                                                                       "updatedAt": 1234}
    state = json.loads(tag["state"])
    assert state["searchFilter"] == "tags.sweep = 'q' and tags.`mixmatch.role` = 'cell'"
    assert state["orderByKey"] == "tags.`table_order`" and state["orderByAsc"] is True
    assert "runsExpanded" not in state      # the UI drops it from a shared view


def test_the_means_view_names_its_groups_as_the_ui_does(tmp_path):
    from sweeps.spec import load_spec
    (tmp_path / "s.yaml").write_text(SPEC)
    state = mlflow_view.means_state("view", load_spec(str(tmp_path / "s.yaml")).cells())
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "n_labeled"},
                                               {"mode": "tag", "groupByData": "variant"}]
    assert sorted(state["groupsExpanded"]) == ["tag.n_labeled.100,tag.variant.mixmatch",
                                               "tag.n_labeled.30,tag.variant.mixmatch",
                                               "tag.n_labeled.30,tag.variant.supervised"]


def test_the_means_view_shows_error_mean_which_write_means_puts_on_one_run_per_group(tmp_path, monkeypatch,
                                                                                     empty_store):
    """(4.4 + 4.7) / 2 is 4.550000000000001 in binary floats, as MLflow's group-by would print the
    average of the seeds' errors; the group's one `error_mean` is 4.55. A re-run that changes the
    result moves the mean to the new counted run and updates the old carrier too."""
    from types import SimpleNamespace

    from mixmatch_core.config import resolve
    from mixmatch_core.tracking import client
    from mlflow_store import log_cell, use_store
    assert (4.4 + 4.7) / 2 != 4.55
    state = mlflow_view.means_state("m", [])
    assert state["selectedColumns"][0] == "metrics.`error_mean`"
    assert "std and n: the report's table" in mlflow_view.NAMES["means"]
    use_store(monkeypatch, tmp_path, empty_store)
    c = client()
    cfgs = {s: resolve({"dataset": "digits", "seed": s, "experiment": "m-exp"}) for s in (1, 2)}
    first = log_cell(c, "m", "", cfgs[1], 4.4)
    second = log_cell(c, "m", "", cfgs[2], 4.7)
    spec = SimpleNamespace(name="m", experiment="m-exp")
    assert mlflow_view.write_means(spec, c) == {("50", "mixmatch"): 4.55}
    assert repr(c.get_run(first).data.metrics["error_mean"]) == "4.55"
    assert "error_mean" not in c.get_run(second).data.metrics
    rerun = log_cell(c, "m", "", cfgs[1], 4.5)
    assert mlflow_view.write_means(spec, c) == {("50", "mixmatch"): 4.6}
    assert [c.get_run(r).data.metrics["error_mean"] for r in (rerun, first)] == [4.6, 4.6]


def test_a_view_url_adds_the_share_key_to_the_runs_table_url():
    url = "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert mlflow_view.view_url(url, "sweep-q-cells") == url + "&viewStateShareKey=sweep-q-cells"


# ---- in the browser ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """The small sweep, run once by `mixmatch sweep` (its worker in this process), and its cell runs."""
    from mixmatch_core.tracking import client
    root = tmp_path_factory.mktemp("view")
    assert run_sweep(root, SPEC, "--no-table") == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        c = client()
        yield root, c.search_runs([c.get_experiment_by_name("view-exp").experiment_id], "tags.`mixmatch.role` = 'cell'")


def js_number(x: float) -> str:
    """A float as the UI's JavaScript prints it (94.0 is "94"; otherwise both print the shortest repr)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@pytest.fixture(scope="module")
def ui_server(finished_sweep, tmp_path_factory):
    """`mixmatch ui` on the finished sweep's store, started once for the module: (port, URLs)."""
    root, _ = finished_sweep
    proc, port, urls = ui_urls(root, tmp_path_factory.mktemp("ui") / "ui.log")
    try:
        yield port, urls
    finally:
        stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_urls(root: Path, log: Path) -> tuple[subprocess.Popen, int, list[str]]:
    """`mixmatch ui` on the sweep's store, its port and the URLs it printed, once the UI answers."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONPATH": str(Path(__file__).parents[1])}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mixmatch_cli", "ui", "--no-browser", "--port", str(port)],
                                cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + UI_START_SECONDS
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc, port, re.findall(r"(http://127\.0\.0\.1:\d+/#/\S+)", log.read_text())
        except OSError:
            time.sleep(0.5)
    stop(proc)
    pytest.fail(f"mixmatch ui did not answer within {UI_START_SECONDS} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def cell_lines(page, row_id: str, column: str) -> list[str]:
    """The text lines of one cell of the runs table (the run name's cell also holds its colour's
    hex code), asserting that the cell is on screen, inside the viewport."""
    cell = page.locator(f'.ag-row[row-id="{row_id}"] [col-id="{column}"]').first
    cell.wait_for(state="visible", timeout=30_000)
    box, size = cell.bounding_box(), page.viewport_size
    assert box and 0 <= box["x"] <= box["x"] + box["width"] <= size["width"]
    assert 0 <= box["y"] <= box["y"] + box["height"] <= size["height"]
    return cell.inner_text().strip().splitlines()


@pytest.mark.slow
def test_mixmatch_ui_listens_on_loopback_only(ui_server):
    """Bound to 127.0.0.1 unless --host says otherwise: nothing listens on another address."""
    port, _ = ui_server
    listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}


@pytest.mark.slow
def test_mixmatch_ui_opens_on_the_sweeps_cells_sorted_and_on_their_means(finished_sweep, ui_server):
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                          "(pip install playwright)").sync_playwright
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    _, runs = finished_sweep
    _, urls = ui_server
    cells_url, means_url = urls
    assert "viewStateShareKey=sweep-view-cells" in cells_url and "viewStateShareKey=sweep-view-means" in means_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.goto(cells_url)
        for run in runs:
            assert run.info.run_name in cell_lines(page, run.info.run_id, mlflow_view.RUN_NAME_COLUMN)
            error = run.data.metrics["error"]
            assert cell_lines(page, run.info.run_id, "metrics.`error`") == [js_number(error)]
            assert len(repr(error).lstrip("0.").replace(".", "")) <= 12      # no binary-float tail
        shown = page.eval_on_selector_all(
            ".ag-center-cols-container .ag-row", "rows => rows.map(r => [+r.getAttribute('row-index'), "
            "r.getAttribute('row-id')])")
        names = {r.info.run_id: r.info.run_name for r in runs}
        assert [names[i] for _, i in sorted(shown)] == ["digits-30-s1-mixmatch", "digits-30-s2-mixmatch",
                                                        "digits-30-s2-supervised", "digits-100-s1-mixmatch"]
        page.goto(means_url)
        errors = [r.data.metrics["error"] for r in runs if r.data.tags["n_labeled"] == "30"
                  and r.data.tags["variant"] == "mixmatch"]
        group = page.get_by_text("n_labeled: 30, variant: mixmatch").first
        group.wait_for(state="visible", timeout=30_000)
        # The seeds' mean as the table prints it (2 decimals), never MLflow's sum / count of the errors.
        shown = page.get_by_text(re.compile(r"^\d+(\.\d+)? \(average\)$")).all_inner_texts()
        assert f"{js_number(round(sum(errors) / len(errors), 2))} (average)" in shown
        assert all(re.fullmatch(r"\d+(\.\d{1,2})? \(average\)", text) for text in shown), shown
        # Within a label count, the table's order: mixmatch before supervised.
        ys = [page.get_by_text(f"n_labeled: 30, variant: {v}").first.bounding_box()["y"] for v in ("mixmatch",
                                                                                               "supervised")]
        assert ys[0] < ys[1]
        browser.close()
