"""Plots from MLflow: each figure is written as a real PNG and SVG, logged to the parent run,
with the paper's curve for CIFAR-10 and a sampled subset of learning curves for big sweeps."""

import pandas as pd
import pytest

from mixmatch_cli import main
from sweeps import plot as pl
from sweeps import table as tb
from sweeps.runs import load_source

from mlflow_store import log_cell, sqlite_store

SPEC = """name: tiny
experiment: mixmatch-plot
base: {dataset: digits}
grid:
  n_labeled: [50, 100]
  variant: [mixmatch, k1]
  seed: [1, 2]
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric

    from mixmatch_core.tracking import start_parent_run
    from sweeps.spec import load_spec

    root = tmp_path_factory.mktemp("store")
    (root / "tiny.yaml").write_text(SPEC)
    with sqlite_store(root) as c:
        parent = start_parent_run("mixmatch-plot", "tiny", {"sweep": "tiny", "mixmatch.role": "sweep"})
        for i, cfg in enumerate(load_spec("tiny.yaml").cells()):
            failed = i == 3
            final = 10.0 + 5 * (cfg.variant == "k1") + i % 3
            curve = [Metric("test_error", final + 50 * 0.5 ** k, 0, 100 * k) for k in range(1, 6)]
            log_cell(c, "tiny", parent, cfg, None if failed else final, "FAILED" if failed else "FINISHED",
                     curve=curve)
        yield {"root": root, "parent": parent}


def test_plot_all_writes_a_png_and_an_svg_of_each_plot_and_logs_them(store, tmp_path):
    from mixmatch_core.tracking import client
    paths = pl.plot_all("tiny.yaml", tmp_path, parent_run_id=store["parent"])
    assert [p.name for p in paths] == [f"tiny_{name}.{ext}" for name in ("error_vs_labels", "ablation", "differences",
                                                                          "learning_curves") for ext in ("png", "svg")]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 5000
        if p.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert data.startswith(b"<?xml") and b"<svg" in data[:1000] and data.rstrip().endswith(b"</svg>")
    assert sorted(f.path for f in client().list_artifacts(store["parent"], "plots")) == \
        sorted(f"plots/{p.name}" for p in paths)


def captured(monkeypatch) -> list:
    """Keep each figure's title, suptitle and legend texts instead of writing files."""
    seen = []

    def save(fig, out, name):
        ax = fig.axes[0]
        legend = ax.get_legend() or (fig.legends[0] if fig.legends else None)
        seen.append({"name": name, "title": ax.get_title(), "suptitle": fig._suptitle.get_text() if fig._suptitle
                     else "", "legend": [t.get_text() for t in legend.get_texts()] if legend else []})
        pl.plt.close(fig)
        return []
    monkeypatch.setattr(pl, "_save", save)
    return seen


def frame(dataset: str, n_runs: int = 4) -> pd.DataFrame:
    return pd.DataFrame([{"sweep": "t", "run_id": None, "cell_key": f"k{i}", "dataset": dataset, "model": "wrn28_2",
                          "n_labeled": 250 * (1 + i % 2), "seed": i, "method": "mixmatch", "variant": "mixmatch",
                          "status": "FINISHED", "error": 10.0 + i, "start_time": i} for i in range(n_runs)])


@pytest.mark.parametrize("dataset,paper", [("cifar10", True), ("digits", False)])
def test_error_vs_labels_shows_the_papers_cifar10_curve_only_for_cifar10(monkeypatch, tmp_path, dataset, paper):
    seen = captured(monkeypatch)
    pl.plot_error_vs_labels(tb.build_table(frame(dataset), None), tmp_path)
    assert ("MixMatch, paper Table 5 (CIFAR-10)" in seen[0]["legend"]) is paper


def test_learning_curves_beyond_the_limit_are_sampled_and_say_so(store, monkeypatch, tmp_path):
    seen = captured(monkeypatch)
    src = load_source("tiny.yaml")
    pl.plot_learning_curves(tb.build_table(src.runs, src.planned), tmp_path, max_curves=3)
    assert seen[0]["suptitle"] == "tiny: learning curves (3 of 8 runs shown); dashed: not finished"
    assert seen[0]["legend"] == ["mixmatch", "k1"]


def figures(monkeypatch) -> dict:
    """Keep each figure (by name) instead of writing it; the test closes them."""
    kept = {}
    monkeypatch.setattr(pl, "_save", lambda fig, out, name: kept.setdefault(name, fig) and [])
    return kept


# Two variants at two label counts, three seeds each: k1 is paired with mixmatch at 50 labels
# (differences 0.5, 0.6, 0.9), no_sharpen only by Welch (other seeds); equal means at 100 labels.
PAIRS = [("mixmatch", 50, s, e) for s, e in ((1, 10.0), (2, 14.0), (3, 30.0))] + \
        [("k1", 50, s, e) for s, e in ((1, 10.5), (2, 14.6), (3, 30.9))] + \
        [("no_sharpen", 50, s, e) for s, e in ((4, 12.0), (5, 16.0), (6, 20.0))] + \
        [(v, 100, s, 8.0 + s) for v in ("mixmatch", "k1", "no_sharpen") for s in (1, 2)]


def pairs_table() -> tb.Table:
    return tb.build_table(pd.DataFrame([{"sweep": "t", "run_id": None, "cell_key": f"{v}-{n}-{s}", "dataset": "digits",
                                         "model": "small_cnn", "n_labeled": n, "seed": s, "method": "mixmatch",
                                         "variant": v, "status": "FINISHED", "error": e, "start_time": i}
                                        for i, (v, n, s, e) in enumerate(PAIRS)]), None)


def test_the_forest_plot_draws_each_difference_and_interval_one_panel_per_label_count(monkeypatch, tmp_path):
    kept, table = figures(monkeypatch), pairs_table()
    pl.plot_differences(table, tmp_path)
    fig = kept["t_differences"]
    assert [ax.get_title() for ax in fig.axes] == ["50 labels", "100 labels"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["k1", "no_sharpen"]     # the table's order
    cells = table.cells.set_index(["variant", "n_labeled"])
    for ax, n in zip(fig.axes, (50, 100)):
        points = {int(line.get_ydata()[0]): float(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o"}
        intervals = [tuple(line.get_xdata()) for line in ax.lines if line.get_marker() == "None"]
        for y, v in enumerate(["k1", "no_sharpen"]):
            assert points[y] == pytest.approx(cells.loc[(v, n), "diff_full"])
            assert (cells.loc[(v, n), "diff_low"], cells.loc[(v, n), "diff_high"]) in intervals
    assert [t.get_text() for t in fig.axes[0].texts] == ["paired t, p=0.031", "Welch, p=0.783"]
    pl.plt.close(fig)


def test_error_vs_labels_gives_each_row_its_marker_and_dodges_equal_points(monkeypatch, tmp_path):
    kept = figures(monkeypatch)
    pl.plot_error_vs_labels(pairs_table(), tmp_path)
    fig = kept["t_error_vs_labels"]
    lines = [line for line in fig.axes[0].lines if line.get_marker() in pl.MARKERS]
    assert len({line.get_marker() for line in lines}) == 3
    assert len({float(line.get_xdata()[1]) for line in lines}) == 3      # 100 labels, equal means: apart in x
    pl.plt.close(fig)


def test_learning_curves_use_a_log_error_axis_and_readable_text(store, monkeypatch, tmp_path):
    kept = figures(monkeypatch)
    src = load_source("tiny.yaml")
    pl.plot_learning_curves(tb.build_table(src.runs, src.planned), tmp_path)
    fig = kept["tiny_learning_curves"]
    assert {ax.get_yscale() for ax in fig.axes} == {"log"}
    assert min(t.get_fontsize() for ax in fig.axes for t in [ax.title, ax.xaxis.label]) >= 9
    pl.plt.close(fig)


def test_a_sweep_with_nothing_finished_gives_no_plots(store, tmp_path):
    spec = tmp_path / "later.yaml"
    spec.write_text("experiment: not-yet\nbase: {dataset: digits}\ngrid: {seed: [1, 2]}\n")
    assert pl.plot_all(str(spec), tmp_path / "out") == []


def test_plot_of_an_unknown_sweep_is_a_one_line_error(store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plot", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("mixmatch: error: sweep: no cell runs") and err.count("\n") == 1
