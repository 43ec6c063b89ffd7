"""Test helpers: a throwaway SQLite MLflow store holding cell runs logged the way the trainer logs
them (tags, every config field as a param, metrics, terminal status), shared by test_table.py
and test_plot.py, which build one such store per module (creating MLflow's schema takes seconds);
and `use_store`, a test's own copy of conftest.py's `empty_store`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest


def use_store(mp: pytest.MonkeyPatch, where: Path, empty_store: Path) -> str:
    """WHERE as the working directory, holding a copy of the empty store (conftest.py's
    `empty_store` fixture) as MLFLOW_TRACKING_URI; returns the URI."""
    mp.chdir(where)
    shutil.copy(empty_store, where / "mlflow.db")
    uri = f"sqlite:///{where / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@contextlib.contextmanager
def sqlite_store(root: Path):
    """MLFLOW_TRACKING_URI -> ROOT/mlflow.db and the working directory -> ROOT while open;
    yields an MLflow client of that store."""
    from mixmatch_core.tracking import client
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        yield client()


def log_cell(c, sweep: str, parent: str, cfg, error, status="FINISHED", reason=None, curve=()) -> str:
    """One finished (or failed) cell run: the trainer's tags and params, `error` unless None, and
    `curve` as extra Metric objects (e.g. a test_error history)."""
    from mlflow.entities import Metric, Param

    from mixmatch_core.tracking import experiment_id
    tags = {"sweep": sweep, "mixmatch.role": "cell", "dataset": cfg.dataset, "n_labeled": str(cfg.n_labeled),
            "seed": str(cfg.seed), "method": cfg.method, "variant": cfg.variant, "cell_key": cfg.cell_key,
            "mlflow.parentRunId": parent, **({"failure_reason": reason} if reason else {})}
    run_id = c.create_run(experiment_id(cfg.experiment, c), run_name=cfg.run_name, tags=tags).info.run_id
    c.log_batch(run_id, metrics=list(curve) + ([Metric("error", error, 0, 0)] if error is not None else []),
                params=[Param(k, str(v)) for k, v in cfg.to_dict().items()])
    c.set_terminated(run_id, status)
    time.sleep(0.005)       # distinct start times: "newest" is well defined
    return run_id
