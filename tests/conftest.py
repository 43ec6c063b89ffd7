"""Shared test isolation: each test starts with MLflow's process-global tracking URI unset.

`mlflow.set_tracking_uri` (used by tests that read a store) sets a process-global that wins
over MLFLOW_TRACKING_URI, so without this a later test could read an earlier test's store.
"""

import os

import mlflow
import pytest


def _unset_global_tracking_uri() -> None:
    """Clear MLflow's process-global URI; set_tracking_uri(None) also drops the env var, so restore it."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(None)
    if env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture(autouse=True)
def _fresh_mlflow_tracking_uri():
    _unset_global_tracking_uri()
    yield
    _unset_global_tracking_uri()
