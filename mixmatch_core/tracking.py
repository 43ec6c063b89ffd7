"""MLflow tracking of one training run: where runs go, what is recorded, and how it survives.

Owns: the tracking URI (MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` with artifacts in
`./mlartifacts` beside it), experiment creation, the run's name/tags/params, batched metric
logging (buffered on the host, flushed at evaluations, never per step), the final metrics,
artifacts, terminal status, nesting under a parent run (sweeps and studies), and system
metrics. MLflow failures in the middle of a run never stop training: unflushed points stay
buffered (and are saved in the checkpoint) and the run is tagged `logging_incomplete` if they
could not be delivered by the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .datasets import dataset_info

if TYPE_CHECKING:
    from mlflow import MlflowClient

# A tracking server that went away must not stall training for minutes of retries. These
# are MLflow's own settings; the user's values win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# MLflow prints "View run ... at" and "View experiment at ..." to stdout whenever a run on a
# server ends (and asks the server for the run to do so): noise in every worker's output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# mlflow itself is imported where it is used: it takes seconds, and commands that never talk to
# MLflow (status, a dry run, the relaunch of a finished sweep) should not pay for it.

# MLflow's INFO lines on every run (system-metrics monitor start/stop, store creation) would bury
# the trainer's one result or error line on stderr. MLFLOW_LOGGING_LEVEL, when set, wins.
if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
    for _name in ("mlflow.system_metrics", "mlflow.store.db.utils"):
        logging.getLogger(_name).setLevel(logging.WARNING)

DEFAULT_URI = "sqlite:///mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = "mlflow.experimentKind"


SHOWN_DIGITS = 12    # significant digits a logged metric keeps: below a float64's 15-17, above a float32's 7


def shown(value) -> float:
    """A metric as MLflow stores and shows it: rounded to SHOWN_DIGITS significant digits, so
    binary-float tails (the median (4.4 + 4.5) / 2, a sum of percentages) never reach a user:
    4.400000000000004 is logged as 4.4."""
    v = float(value)
    return float(f"{v:.{SHOWN_DIGITS}g}") if math.isfinite(v) else v


class TrackingError(RuntimeError):
    """MLflow could not be reached or used; the message is one line."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def client() -> MlflowClient:
    from mlflow import MlflowClient
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    # Processes opening a new SQLite store at once race in MLflow's table creation and
    # migrations (seen here: "table _alembic_tmp_tags already exists", "duplicate column: step",
    # and a store left half-migrated). The client creates the tables when it is made, so it is
    # made under an exclusive lock on a file beside the database: the first process creates
    # them, the others wait, then find them.
    import fcntl
    with open(uri[len("sqlite:///"):] + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return MlflowClient(uri)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_exists(uri: str | None = None) -> bool:
    """False only for a local SQLite store whose file is not there: reading it would create an
    empty one (MLflow makes its tables when a client opens it)."""
    uri = uri or tracking_uri()
    return not uri.startswith("sqlite:///") or os.path.exists(uri[len("sqlite:///"):])


def check_reachable(uri: str | None = None) -> None:
    """Fail fast, in one line, when the tracking store cannot be used (before any training)."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        import urllib.request
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({type(e).__name__}: {e}); "
                                "start it or unset MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.exists() or not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: directory '{parent}' is missing or not writable")
    elif uri.startswith("file:") or uri.startswith("./") or uri.endswith("mlruns"):
        raise TrackingError(f"MLflow store {uri}: the file store is no longer supported; "
                            f"use {DEFAULT_URI} or an http:// server")


def experiment_id(name: str, c: MlflowClient | None = None) -> str:
    """Get or create the experiment; with the default sqlite store artifacts go to ./mlartifacts."""
    c = c or client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:///"):
        db = Path(tracking_uri()[len("sqlite:///"):]).resolve()
        location = (db.parent / "mlartifacts").as_uri()
    try:
        # Tell MLflow 3's UI this is model training, so it opens on the runs table rather than
        # the GenAI overview.
        return c.create_experiment(name, artifact_location=location,
                                   tags={EXPERIMENT_KIND: "custom_model_development"})
    except Exception:  # noqa: BLE001 - created concurrently by another worker
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_cell_runs(exp_id: str, cell_key: str, c: MlflowClient | None = None) -> list:
    """All live (not deleted) runs of an experiment with this cell_key, newest first."""
    c = c or client()
    return c.search_runs([exp_id], filter_string=f"tags.cell_key = '{cell_key}'",
                         order_by=["attributes.start_time DESC"], max_results=1000)


@functools.cache     # one `git` process per process, not one per run and tag
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(experiment: str, name: str, tags: dict[str, str], run_id: str | None = None) -> str:
    """Create (or reopen) the parent run of a sweep or study; returns its run id."""
    c = client()
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    run = c.create_run(experiment_id(experiment, c), run_name=name, tags={**tags, "code_version": git_commit()})
    return run.info.run_id


def dataset_input(cfg):
    """What a run trained on, as an MLflow dataset input (the runs table's Dataset column): the
    dataset's name and source, and a digest of the split identity: dataset, labeled examples,
    split seed and validation size fix which images are labeled (data.split_labeled). The
    labeled split is also in the input's tags, beside the context `train`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    info = dataset_info(cfg.dataset)
    if info.source == "local":        # a user's npz file
        source_type, source = "local", {"uri": str(Path(cfg.dataset[4:]).resolve())}
    elif info.source == "code":
        source_type, source = "code", {"uri": info.source_uri}
    else:
        source_type, source = "local", {"uri": str(Path(cfg.data_dir).resolve()), "torchvision": cfg.dataset}
    split = {"n_labeled": cfg.n_labeled, "seed": cfg.seed, "val_size": cfg.val_size}
    digest = hashlib.sha1(json.dumps({"dataset": cfg.dataset, **split}, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{cfg.dataset.removeprefix('npz:').rsplit('/', 1)[-1].removesuffix('.npz')}-{cfg.n_labeled}-s{cfg.seed}"
    return DatasetInput(Dataset(name=name, digest=digest, source_type=source_type, source=json.dumps(source),
                                profile=json.dumps({"labeled_split": split})),
                        tags=[InputTag("mlflow.data.context", "train"),
                              *(InputTag(f"labeled_split.{k}", str(v)) for k, v in split.items())])


class RunTracker:
    """One MLflow run for one training run. All network calls are batched and fault tolerant."""

    def __init__(self, cfg, parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                 system_metrics: bool = True):
        self.cfg = cfg
        self.parent_run_id = parent_run_id
        self.extra_tags = dict(tags or {})
        self.system_metrics = system_metrics
        self._client = None     # opened on first use: a config error found later writes nothing
        self.run_id: str | None = None
        self.pending: list[tuple[str, float, int, int]] = []  # (key, value, step, timestamp ms)
        self.incomplete = False  # some MLflow call failed at some point (its points may have arrived later)
        self.lost = False        # an artifact or tag could not be written: the run is missing something
        self._monitor = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = client()
        return self._client

    @client.setter
    def client(self, value) -> None:
        self._client = value

    def tags(self, device_name: str) -> dict[str, str]:
        import torch
        c = self.cfg
        tags = {"dataset": c.dataset, "n_labeled": str(c.n_labeled), "seed": str(c.seed), "method": c.method,
                "variant": c.variant, "cell_key": c.cell_key, "code_version": git_commit(),
                "mlflow.source.git.commit": git_commit(), "torch_version": torch.__version__,
                "device_name": device_name, "host": platform.node(), **self.extra_tags}
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        return tags

    def start(self, run_id: str | None, device_name: str) -> str:
        """Resume `run_id` (from a checkpoint) or create a new run. A stale unfinished run of the
        same cell without a checkpoint is deleted so that each cell has a single run."""
        from mlflow.entities import Param, RunTag
        exp = experiment_id(self.cfg.experiment, self.client)
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            except Exception:  # noqa: BLE001 - the run was deleted or the store changed: start anew
                run_id = None
        if run_id is None:
            for old in find_cell_runs(exp, self.cfg.cell_key, self.client):
                if old.info.status != "FINISHED" and old.data.tags.get(PARENT_TAG) == self.parent_run_id:
                    self.client.delete_run(old.info.run_id)
            run = self.client.create_run(exp, run_name=self.cfg.run_name, tags=self.tags(device_name))
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in self.cfg.to_dict().items()]
            for i in range(0, len(params), 100):        # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            try:
                self.client.log_inputs(self.run_id, datasets=[dataset_input(self.cfg)])
            except Exception:  # noqa: BLE001 - e.g. an older server: train anyway, say what is missing
                self.incomplete = self.lost = True
        else:       # resumed, maybe elsewhere: refresh host, device and code version, in one request
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags(device_name).items()
                                                     if k != PARENT_TAG])
        if self.system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
                # One sample every 10 seconds; MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
                # (seconds) overrides it. A run shorter than one interval logs no system metrics.
                self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1,
                                                     resume_logging=run_id is not None, tracking_uri=tracking_uri())
                self._monitor.start()
            except Exception:  # noqa: BLE001 - system metrics are optional (psutil missing, ...)
                self._monitor = None
        return self.run_id

    def is_finished(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.status == "FINISHED"
        except Exception:  # noqa: BLE001 - deleted or unreachable: treat as not finished
            return False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer metric points on the host (as `shown` prints them); `flush` sends them in one batch."""
        ts = int(time.time() * 1000)
        self.pending.extend((k, shown(v), int(step), ts) for k, v in metrics.items())

    def flush(self) -> bool:
        """Send buffered points; on failure keep them and return False (training goes on)."""
        if not self.pending or self.run_id is None:
            return True
        from mlflow.entities import Metric
        try:
            for i in range(0, len(self.pending), 1000):
                chunk = self.pending[i:i + 1000]
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, s, ts in chunk])
            self.pending.clear()
            return True
        except Exception:  # noqa: BLE001 - server lost mid-run: retry at the next flush
            self.incomplete = True
            return False

    def drop_logged(self) -> None:
        """After a resume: forget buffered points the store already has (no duplicated steps)."""
        if not self.pending or self.run_id is None:
            return
        try:
            last = {}
            for key in {k for k, *_ in self.pending}:
                hist = self.client.get_metric_history(self.run_id, key)
                last[key] = max((m.step for m in hist), default=-1)
            self.pending = [p for p in self.pending if p[2] > last[p[0]]]
        except Exception:  # noqa: BLE001
            pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        try:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception:  # noqa: BLE001
            self.incomplete = self.lost = True

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag
        try:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception:  # noqa: BLE001
            self.incomplete = self.lost = True

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception:  # noqa: BLE001
                pass
            self._monitor = None

    def detach(self) -> None:
        """Stop logging without touching the run: another process has taken it over."""
        self._stop_monitor()
        self.pending.clear()

    def end(self, status: str, reason: str | None = None) -> None:
        """FINISHED | FAILED (with a failure_reason tag) | KILLED. Retries the buffered points."""
        self._stop_monitor()
        if self.run_id is None:
            return
        ok = self.flush()
        tags = {"failure_reason": reason[:4000]} if reason else {}
        if not ok or self.lost:
            tags["logging_incomplete"] = "true"
        try:
            if tags:
                self.set_tags(tags)
            self.client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - nothing more we can do; the checkpoint is safe
            pass


def end_parent_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


__all__ = ["TrackingError", "RunTracker", "tracking_uri", "client", "check_reachable", "experiment_id",
           "find_cell_runs", "start_parent_run", "end_parent_run", "git_commit", "dataset_input"]
