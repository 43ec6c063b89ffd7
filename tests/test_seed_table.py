"""The reporting over seeds and the per-class report, on numbers where the wrong statistic or the
wrong orientation gives another answer.

- Three finished seeds of one cell, each run's metrics made by the trainer's reporting rule
  from an evaluation history where the median of the last 3 differs from their mean, the last
  and the best, logged to MLflow as a run logs them: the table shows the mean over seeds of
  each run's median-of-last-3 (13.00), not the median over seeds (11.00), with the sample std
  (ddof=1: 4.36; ddof=0 would be 3.56).
- The confusion matrix and the per-class error have rows = the true class: a model that always
  predicts class 3 has 0% error on class 3 and 100% on every other class, and row t of the
  confusion matrix holds class t's test images, all in column 3.
"""
import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mixmatch_core.config import resolve
from mixmatch_core.data import DeviceData, load_dataset
from mixmatch_core.run_report import final_metrics, write_run_artifacts
from mixmatch_core.train import evaluate
from sweeps import render
from sweeps import table as tb
from sweeps.runs import load_source

from mlflow_store import log_cell, use_store

SPEC = """name: seeds3
experiment: mixmatch-seeds3
base: {dataset: digits, median_of: 3}
grid: {n_labeled: [50], seed: [1, 2, 3]}
"""
# Each seed's last test errors (%): medians of the last 3 are 11, 10 and 18 (mean 13, median 11),
# while the means of the last 3, the last values and the best values all give other numbers.
HISTORIES = {1: [50.0, 10.0, 14.0, 11.0], 2: [40.0, 9.0, 10.0, 30.0], 3: [45.0, 18.0, 25.0, 17.0]}


def history(errors: list[float]) -> list[dict]:
    return [{"step": 10 * (i + 1), "test_error": e, "test_error_ema": e, "test_error_raw": e + 20.0}
            for i, e in enumerate(errors)]


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory, empty_store):
    from mlflow.entities import Metric

    from mixmatch_core.tracking import client, start_parent_run
    from sweeps.spec import load_spec
    root = tmp_path_factory.mktemp("seeds3")
    (root / "seeds3.yaml").write_text(SPEC)
    with pytest.MonkeyPatch.context() as mp:
        use_store(mp, root, empty_store)
        c = client()
        parent = start_parent_run("mixmatch-seeds3", "seeds3", {"sweep": "seeds3", "mixmatch.role": "sweep"})
        for cell in load_spec("seeds3.yaml").cells():
            metrics = final_metrics(history(HISTORIES[cell.seed]), cell.median_of)
            others = [Metric(k, v, 0, 0) for k, v in metrics.items() if k != "error"]
            log_cell(c, "seeds3", parent, cell, metrics["error"], curve=others)
        src = load_source("seeds3.yaml")
        yield tb.build_table(src.runs, src.planned, sweep=src.sweep)


def test_each_run_reports_the_median_of_its_last_evaluations(three_seeds):
    counted = three_seeds.runs[three_seeds.runs["counted"]].sort_values("seed")
    assert counted["error"].tolist() == [11.0, 10.0, 18.0]


def test_a_table_cell_is_the_mean_and_sample_std_over_seeds_not_the_median(three_seeds):
    errors = np.array([11.0, 10.0, 18.0])
    assert np.median(errors) != errors.mean()                  # the two rules disagree here
    assert f"| mixmatch | {errors.mean():.2f} ± {errors.std(ddof=1):.2f} |" in render.to_markdown(three_seeds)
    cell = three_seeds.cells.iloc[0]
    assert cell["error_mean"] == pytest.approx(13.0) and cell["error_std"] == pytest.approx(np.sqrt(19.0))


@pytest.fixture(scope="module")
def always_class_3(tmp_path_factory):
    """The digits test set evaluated by a model that predicts class 3 for every image, and the
    report files written from it."""
    ds = load_dataset("digits", "")
    data = DeviceData.build(ds, 50, seed=1, val_size=0, device="cpu", channels_last=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.eye(10)[3])
    conf = evaluate(model, data, "test", contextlib.nullcontext, 10).numpy()
    out = tmp_path_factory.mktemp("artifacts")
    write_run_artifacts(out, resolve({"dataset": "digits"}), history([20.0, 10.0]), conf)
    return np.bincount(ds.y_test, minlength=10), out


def test_per_class_error_is_per_true_class(always_class_3):
    support, out = always_class_3
    per_class = pd.read_csv(out / "per_class_error.csv")
    assert per_class["n_test"].tolist() == support.tolist()
    assert per_class["error"].tolist() == [0.0 if c == 3 else 100.0 for c in range(10)]


def test_the_confusion_matrix_has_a_row_per_true_class_and_a_column_per_prediction(always_class_3):
    support, out = always_class_3
    conf = pd.read_csv(out / "confusion_matrix.csv", index_col="true")
    want = np.zeros((10, 10), int)
    want[:, 3] = support
    assert (conf.to_numpy() == want).all()
