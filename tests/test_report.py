"""The sweep report: one self-contained HTML page built from a small finished sweep (digits,
tiny steps), with the same tables as `mixmatch table`, every cell's state and its links."""

import json
import re
import urllib.parse
from pathlib import Path

import pytest

from mixmatch_cli import main
from sweeps import render, report
from sweeps import table as tb
from sweeps.runs import load_source
from sweeps.store import CellState

from inprocess_sweep import run_sweep

SPEC = ("name: tiny\nexperiment: tiny-exp\ndescription: two seeds and a cell that fails\n"
        "base: {dataset: digits, steps: 20, eval_every: 10, log_every: 10, batch_size: 16, median_of: 2, "
        "progress: false, device: cpu, num_threads: 1}\n"
        "variants: {boom: {lambda_u: 1.0e+40, rampup_steps: 0}}\n"
        "grids:\n  - {n_labeled: [50], variant: [mixmatch, supervised], seed: [1, 2]}\n"
        "  - {n_labeled: [50], variant: [boom], seed: [1]}\nretries: 0\n"
        "notes: [the boom variant diverges on purpose]\n")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The tiny sweep, run once by `mixmatch sweep` (its worker in this process)."""
    root = tmp_path_factory.mktemp("report")
    code = run_sweep(root, SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        src = load_source("spec.yaml")
        table = tb.table_of(src)
        yield {"root": root, "code": code, "src": src, "table": table,
               "page": (root / "runs/_tables/tiny/tiny_report.html").read_text()}


def rows_of(page: str, cls: str) -> list[str]:
    body = page.split(f'<table class="{cls}">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr>(.*?)</tr>", body)


def test_the_sweep_writes_its_report_and_fails_for_the_failing_cell(sweep):
    assert sweep["code"] == 1
    assert sweep["page"].startswith("<!DOCTYPE html>") and "two seeds and a cell that fails" in sweep["page"]


def test_the_report_holds_the_tables_of_mixmatch_table(sweep):
    # The same code builds both: every line of `mixmatch table --format html`'s tables is in the page.
    tables = render.to_html(sweep["table"])
    body = tables.split("<body>", 1)[1].split("</body>", 1)[0].strip().splitlines()
    assert all(line in sweep["page"] for line in body)
    assert "<td>paired t</td>" in sweep["page"] and "supervised" in sweep["page"]


def test_every_cell_is_listed_with_its_state_error_and_run_link(sweep):
    rows = rows_of(sweep["page"], "cells")
    cells = [r for r in rows if "<code>" in r]
    assert len(cells) == 5
    assert sum('class="state-finished">finished<' in r for r in cells) == 4
    (failed,) = [r for r in cells if "digits-50-s1-boom" in r]
    assert 'class="state-failed">failed<' in failed
    assert any("non-finite loss" in r for r in rows)       # the reason, on the line below it
    runs = sweep["table"].runs
    for run_id in runs.loc[runs["run_id"].notna(), "run_id"]:
        assert f"/runs/{run_id}?workflowType=machine_learning" in sweep["page"]
    finished = [r for r in cells if "finished" in r]
    assert all(re.search(r"<td>\d+\.\d\d</td><td>\d+\.\d</td>", r) for r in finished)   # error, steps/s


def test_links_go_to_the_local_ui_and_the_compare_view_only_for_a_server(sweep):
    page = sweep["page"]
    assert "http://127.0.0.1:5000/#/experiments/" in page and "compare-runs" not in page
    served = report.render(sweep["src"], sweep["table"], [], "http://mlflow.example:5000")
    (href,) = re.findall(r'href="(http://mlflow\.example:5000/#/compare-runs\?[^"]+)"', served)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(href.replace("&amp;", "&").replace("/#/", "/")).query)
    runs = sweep["table"].outcomes["run_id"].dropna()
    assert sorted(json.loads(query["runs"][0])) == sorted(runs)


def test_the_report_links_the_sweeps_saved_mlflow_views(sweep):
    exp = sweep["table"].runs["experiment_id"].dropna().iloc[0]
    runs_table = f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning"
    for key in ("sweep-tiny-cells", "sweep-tiny-means"):
        assert f'href="{runs_table}&amp;viewStateShareKey={key}"' in sweep["page"]


def test_a_cell_waiting_in_the_queue_is_shown_waiting_not_missing(sweep):
    src = load_source(str(sweep["root"] / "spec.yaml"))
    (missing,) = [c for c in src.planned if c.variant == "boom"]
    table = tb.build_table(src.runs[src.runs["variant"] != "boom"], src.planned, sweep="tiny")
    states = report.cell_states(table, {missing.cell_key: CellState(missing.cell_key, missing.run_name, "waiting", 0)})
    assert states.set_index("cell_key").loc[missing.cell_key, "state"] == "waiting"


def test_a_cell_mlflow_shows_running_is_shown_as_the_queue_has_it(sweep):
    # A worker SIGKILLed mid-cell leaves its MLflow run RUNNING; the queue knows it was lost.
    runs = sweep["src"].runs.copy()
    boom = runs["variant"] == "boom"
    runs.loc[boom, "status"] = "RUNNING"
    table = tb.build_table(runs, sweep["src"].planned, sweep="tiny")
    (key,) = runs.loc[boom, "cell_key"]
    lost = CellState(key, "digits-50-s1-boom", "failed", 3, reason="worker lost (heartbeat stale)")
    cell = report.cell_states(table, {key: lost}).set_index("cell_key").loc[key]
    assert (cell["state"], cell["failure_reason"]) == ("failed", "worker lost (heartbeat stale)")
    assert report.cell_states(table, None).set_index("cell_key").loc[key, "state"] == "running"


def test_the_spec_notes_close_the_notes_of_the_page(sweep):
    notes = sweep["page"].split('<ul class="notes">', 1)[1].split("</ul>", 1)[0]
    assert notes.rstrip().endswith("<li>the boom variant diverges on purpose</li>")


def test_the_page_opens_offline(sweep):
    page = sweep["page"]
    assert "<style>" in page and "<link" not in page and "<script" not in page
    assert not re.search(r'src="(?!data:)', page) and page.count('src="data:image/png;base64,') == 4


def test_the_configs_list_the_variants_in_the_tables_order(tmp_path):
    from sweeps.spec import load_spec
    (tmp_path / "s.yaml").write_text("name: o\nbase: {dataset: digits}\n"
                                     "grid: {variant: [supervised, no_mixup, mixmatch, k1], seed: [1]}\n")
    _, diffs = report.config_diffs(load_spec(str(tmp_path / "s.yaml")))
    assert list(diffs) == ["mixmatch", "k1", "no_mixup", "supervised"]


def test_the_report_draws_the_differences_to_the_full_method(sweep):
    assert '<img alt="tiny_differences" src="data:image/png;base64,' in sweep["page"]


def test_provenance_and_configs(sweep):
    page = sweep["page"]
    assert "mixmatch sweep spec.yaml" in page and "CPU core-hours" in page and "wall time" in page
    assert "lambda_u: 75.0 → 1e+40" in page and "method: mixmatch → supervised" in page


def test_report_command_writes_one_file(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(sweep["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sweep['root']}/mlflow.db")
    assert main(["report", "spec.yaml", "--out", str(tmp_path / "out")]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny_report.html"]
    assert Path(capsys.readouterr().out.strip()) == tmp_path / "out" / "tiny_report.html"


def test_a_report_by_sweep_name_takes_its_configs_from_the_spec_the_parent_run_logged(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(sweep["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{sweep['root']}/mlflow.db")
    assert main(["report", "tiny", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "tiny_report.html").read_text()
    assert "mixmatch sweep spec.yaml" in page and "method: mixmatch → supervised" in page
    assert "cells known from MLflow only" in page        # the tables are those of `mixmatch table tiny`
    assert "<li>the boom variant diverges on purpose</li>" in page     # and the logged spec's notes
