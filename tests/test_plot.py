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
    assert [p.name for p in paths] == [f"tiny_{name}.{ext}" for name in ("error_vs_labels", "ablation",
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


def test_a_sweep_with_nothing_finished_gives_no_plots(store, tmp_path):
    spec = tmp_path / "later.yaml"
    spec.write_text("experiment: not-yet\nbase: {dataset: digits}\ngrid: {seed: [1, 2]}\n")
    assert pl.plot_all(str(spec), tmp_path / "out") == []


def test_plot_of_an_unknown_sweep_is_a_one_line_error(store, capsys):
    with pytest.raises(SystemExit) as e:
        main(["plot", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("mixmatch: error: sweep: no cell runs") and err.count("\n") == 1
