"""Shared test set-up: each test starts with MLflow's process-global tracking URI unset, and the
modules that hold `slow` tests run first.

`mlflow.set_tracking_uri` (used by tests that read a store) sets a process-global that wins
over MLFLOW_TRACKING_URI, so without this a later test could read an earlier test's store.

The order: with pytest-xdist (`-n 2 --dist loadfile`, README's test command) each module goes
whole to a worker as one becomes free; the modules with real-process tests (workers, servers,
kills) are the long ones, so they start first and the many short modules fill in around them,
instead of one long module starting last and running alone. Within a module the order is kept.
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


def pytest_collection_modifyitems(items):
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)   # stable: each module's order kept
