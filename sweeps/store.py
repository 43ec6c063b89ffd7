"""The cell queue of a sweep, kept in Optuna's RDB storage (SQLite locally, PostgreSQL across
machines): no home-made queue.

Owns: opening a storage (scheme check, reachability, heartbeats), publishing a sweep's cells
as enqueued (WAITING) trials, adopting results MLflow holds that the queue lacks, and every
read of the queue: the per-cell summary (waiting / running on which host / done / failed,
attempts), the counts, and the read-only look at an existing storage (`existing_study`,
`known_states`) that dry runs, relaunches and reports take. The worker that claims cells is
worker.py.

Where a cell's state lives: MLflow holds results (a cell is done when its sweep has a
FINISHED cell run with an `error`: the run the tables count), the queue holds everything else
(waiting, running under a lease, failed attempts). The queue's COMPLETE trial is derived from
the MLflow result: the worker writes it right after the run finished, and `adopt` writes it
where the two writes were cut apart (a worker killed in between, a lost storage file). Every
command then reads a cell's state from the queue alone, which needs neither MLflow nor torch.

Why Optuna: `study.ask()` pops a WAITING trial with an atomic state update, so two workers
never claim the same cell; a worker that dies stops heartbeating, `fail_stale_trials` marks
its trial FAIL and `RetryHeartbeatStaleTrialCallback` re-enqueues the same cell for another
worker, which resumes from the cell's checkpoint when the checkpoint directory is shared.
Each trial carries its cell in user attrs (`cell_key`, `config`), not in params, so a spec can
grow (a new seed, a new label count) without clashing distributions.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState, create_trial
from sqlalchemy import event

from mixmatch_core.config import Config, ConfigError

from .spec import file_stem

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and fail_stale_trials are 'experimental' in Optuna's terms; we rely on them on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql")
# A worker writes a heartbeat every HEARTBEAT_SECONDS; after 3x that without one its cell is
# handed to another worker (and a relaunched local sweep waits at most that long).
HEARTBEAT_SECONDS = int(os.environ.get("MIXMATCH_HEARTBEAT_SECONDS", "5"))


class StorageError(RuntimeError):
    """The Optuna storage cannot be used; the message is one line."""


def sweep_study_name(sweep: str) -> str:
    return f"sweep:{sweep}"


def default_sweep_storage(sweep: str) -> str:
    """Where `mixmatch sweep SPEC` keeps a sweep's cells unless --storage says otherwise."""
    return default_storage(f"sweep-{sweep}")


DEFAULT_DIR = "optuna"


def default_storage(name: str) -> str:
    """The embedded default: one SQLite file per sweep or study under ./optuna/."""
    return f"sqlite:///{DEFAULT_DIR}/{file_stem(name)}.db"


def check_storage_url(url: str) -> None:
    """The URL's scheme; for SQLite, its folder: the default one (optuna/) is made when needed,
    any other must exist (a typo in a --storage path would otherwise make folders anywhere and
    start a new, empty queue there)."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise ConfigError(f"storage: unknown URL scheme '{scheme or url}'; allowed: "
                          "sqlite:///FILE, postgresql://USER@HOST:PORT/DB, mysql://...")
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).parent
        if not folder.is_dir() and not (folder.name == DEFAULT_DIR and folder.parent.is_dir()):
            raise StorageError(f"storage {url}: folder '{folder}' does not exist; create it first, "
                               f"or leave --storage out for ./{DEFAULT_DIR}/")


def open_storage(url: str, heartbeat_seconds: int | None = None, max_retry: int | None = 2,
                 must_exist: bool = False, read_only: bool = False) -> RDBStorage:
    """An RDBStorage with heartbeats (stale cells are failed and re-enqueued up to max_retry).
    must_exist: a missing SQLite file is an error instead of a new, empty storage (commands that
    only read a sweep, like `mixmatch status`, must not create files). read_only: never claims
    or writes, so SQLite transactions need no write lock (and a read-only file works)."""
    check_storage_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if must_exist and not path.exists():
            raise StorageError(f"storage {url}: no such file (has the sweep been started here?)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {url}: cannot create '{path.parent}' ({e.strerror})") from None
    hb = heartbeat_seconds or HEARTBEAT_SECONDS
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=hb, grace_period=3 * hb,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    except Exception as e:  # noqa: BLE001 - driver errors vary; all mean "cannot use it"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage {url} is unreachable or unusable: {first}") from None
    if storage.engine.name == "sqlite" and not read_only:
        serialize_sqlite_transactions(storage.engine)
    return storage


def serialize_sqlite_transactions(engine) -> None:
    """Make every transaction on this SQLite engine take the write lock when it begins.

    Why: Optuna claims a WAITING trial with SELECT ... FOR UPDATE then UPDATE. SQLite ignores
    FOR UPDATE and Python's sqlite3 driver only opens a transaction at the first write, so two
    workers can both read WAITING and both set RUNNING: the same cell trained twice (Optuna issue
    #4002; measured here: 4 processes popping 300 enqueued trials double-claimed 25 of them).
    BEGIN IMMEDIATE serialises the read-then-write; SQLite allows one writer anyway, and the
    60 s busy timeout makes the others wait instead of failing. PostgreSQL honours FOR UPDATE.
    """
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None     # SQLAlchemy, not the driver, says BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()    # pooled connections were opened before the hooks: replace them


def open_sweep_study(storage: RDBStorage, sweep: str) -> optuna.Study:
    """The sweep's study, created on its first launch."""
    return optuna.create_study(study_name=sweep_study_name(sweep), storage=storage, load_if_exists=True,
                               direction="minimize")


def load_sweep_study(storage: RDBStorage, sweep: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=sweep_study_name(sweep), storage=storage)
    except KeyError:
        raise ConfigError(f"sweep: no sweep named '{sweep}' in this storage") from None


@dataclasses.dataclass
class CellState:
    cell_key: str
    run_name: str
    state: str          # waiting | running | done | failed
    attempts: int       # trials that ended FAIL
    host: str = ""
    error: float | None = None
    reason: str = ""


def cell_states(study: optuna.Study) -> dict[str, CellState]:
    """One summary per cell from all its trials (a COMPLETE trial wins over everything)."""
    out: dict[str, CellState] = {}
    rank = {"done": 3, "running": 2, "waiting": 1, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("cell_key")
        if key is None:         # a spurious trial from a claim race; see `run_worker`
            continue
        s = out.setdefault(key, CellState(key, t.user_attrs.get("run_name", key), "failed", 0))
        state = {TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
                 TrialState.FAIL: "failed", TrialState.PRUNED: "failed"}[t.state]
        if state == "failed":
            s.attempts += 1
            s.reason = t.user_attrs.get("failure_reason", s.reason or "worker lost (heartbeat stale)")
        if rank[state] >= rank[s.state]:
            s.state = state
            if state in ("running", "done"):
                s.host = t.user_attrs.get("host", "")
            if state == "done":
                s.error = t.value
    return out


def publish(storage: RDBStorage, sweep: str, cells: list[Config], attrs: dict, retries: int,
            results: Callable[[], dict[str, tuple[str, float]]] | None = None) -> dict[str, str]:
    """Create or load the sweep's study and enqueue every cell that is not done, queued or
    running, and whose failures are within `retries`. `results` (runs.finished_results, asked
    only when a cell is not done once stale trials are failed) gives the results MLflow holds:
    they are adopted first. Returns cell_key -> action taken."""
    study = open_sweep_study(storage, sweep)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    fail_stale_trials(study)
    if results is not None and not _all_done(study, cells):
        adopt(study, cells, results())
    states = cell_states(study)
    actions = {}
    for cfg in cells:
        s = states.get(cfg.cell_key)
        if s is not None and s.state in ("done", "waiting", "running"):
            actions[cfg.cell_key] = s.state
            continue
        if s is not None and s.attempts > retries:
            actions[cfg.cell_key] = "failed (retries exhausted)"
            continue
        study.enqueue_trial({}, user_attrs={"cell_key": cfg.cell_key, "run_name": cfg.run_name,
                                            "config": cfg.to_dict()})
        actions[cfg.cell_key] = "queued" if s is None else "retry"
    return actions


def adopt(study: optuna.Study, cells: list[Config], finished: dict[str, tuple[str, float]]) -> list[str]:
    """Record as COMPLETE trials the cells whose result MLflow holds (`finished`: cell_key ->
    (run_id, error), from runs.finished_results) but the queue has neither done, waiting nor
    running: the queue's copy of a result that was lost (a deleted storage file, a worker killed
    after its run finished, on its last retry). Returns the adopted cell keys."""
    states = cell_states(study)
    adopted = []
    for cfg in cells:
        s = states.get(cfg.cell_key)
        if cfg.cell_key not in finished or (s is not None and s.state != "failed"):
            continue
        run_id, error = finished[cfg.cell_key]
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=error, user_attrs={
            "cell_key": cfg.cell_key, "run_name": cfg.run_name, "config": cfg.to_dict(), "mlflow_run_id": run_id,
            "adopted": True}))
        adopted.append(cfg.cell_key)
    return adopted


def _all_done(study: optuna.Study, cells: list[Config]) -> bool:
    states = cell_states(study)
    return all(c.cell_key in states and states[c.cell_key].state == "done" for c in cells)


def counts(study: optuna.Study) -> Counter:
    return Counter(s.state for s in cell_states(study).values())


def existing_study(url: str, sweep: str) -> optuna.Study | None:
    """The sweep's study in an existing SQLite storage, opened read-only; None when the sweep
    has not been started here (a dry run must not create files or tables)."""
    if not url.startswith("sqlite:///"):     # a server database: opening it may create tables
        return None
    try:
        return load_sweep_study(open_storage(url, must_exist=True, read_only=True), sweep)
    except (ConfigError, StorageError):
        return None


def known_states(url: str, sweep: str) -> dict[str, CellState]:
    """Cell states from an existing SQLite storage, read-only; {} when there is none."""
    study = existing_study(url, sweep)
    return {} if study is None else cell_states(study)
