"""Shared test set-up: each test starts with MLflow's process-global tracking URI unset; one
empty MLflow store for tests to copy; under pytest-xdist, the modules holding `slow` tests go
out first and each test process gets its share of the cores.

`mlflow.set_tracking_uri` (used by tests that read a store) sets a process-global that wins
over MLFLOW_TRACKING_URI, so without this a later test could read an earlier test's store.

The order: with pytest-xdist (`-n 2 --dist loadfile`, README's test command) each module goes
whole to a test process as one becomes free, in the collection order set here; the modules with
real-process tests (workers, servers, kills) are the long ones, so they start first and the many
short modules fill in around them, instead of one long module starting last and running alone.
Within a module the order is kept.
"""

import os
import shutil
from pathlib import Path

import mlflow
import pytest


@pytest.fixture(scope="session")
def empty_store(request, tmp_path_factory) -> Path:
    """An sqlite MLflow store whose tables exist, for tests to copy (creating MLflow's tables
    takes 1-2 s of CPU); kept in pytest's cache for this MLflow version (in a temporary
    directory when the cache plugin is off, `-p no:cacheprovider`)."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir(f"mlflow-{mlflow.__version__}-empty-store") if cache else tmp_path_factory.mktemp("cache")
    db = root / "mlflow.db"
    if not db.exists():
        tmp = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp.parent)  # the Default experiment's artifact root, never used, is made from the cwd
            mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments()
        shutil.copy(tmp, db.with_suffix(f".{os.getpid()}.tmp"))
        os.replace(db.with_suffix(f".{os.getpid()}.tmp"), db)  # atomic: a concurrent process sees all or nothing
    return db


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


def pytest_configure(config):
    """Under pytest-xdist: the modules go out in this file's order (xdist's own reorder, by number
    of tests, is switched off: it sent the two-test distributed module last, to run alone), and
    each test process gets its share of the cores for torch's threads (2 cores, 2 processes: one
    each), as `--workers` gives each worker: two processes each running torch's default of every
    core oversubscribe them, and the idle threads spin (more CPU, no gain)."""
    if hasattr(config.option, "loadscopereorder"):   # pytest-xdist's --loadscope-reorder, on by default
        config.option.loadscopereorder = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch    # only here: a plain `pytest` run keeps torch's default
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(items):
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)   # stable: each module's order kept
