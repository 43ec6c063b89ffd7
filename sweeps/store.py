"""The cell queue of a sweep, kept in Optuna's RDB storage (SQLite locally, PostgreSQL across
machines): no home-made queue.

Owns: opening a storage (scheme check, reachability, heartbeats), publishing a sweep's cells
as enqueued (WAITING) trials, the per-cell summary (waiting / running on which host / done /
failed, attempts), the worker that claims cells and trains them, and what sweep workers and
`mixmatch search` share: training a claimed trial for as long as its lease holds
(`train_trial`, `optimize_one`) and the MLflow parent run kept in the study (`open_parent_run`).

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
import re
import socket
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from mixmatch_core.config import Config, ConfigError, validate

from . import mlflow_view

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


def default_storage(name: str) -> str:
    """The embedded default: one SQLite file per sweep or study under ./optuna/."""
    safe = re.sub(r"[^\w.-]+", "_", name)
    return f"sqlite:///optuna/{safe}.db"


def check_storage_url(url: str) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in SCHEMES:
        raise ConfigError(f"storage: unknown URL scheme '{scheme or url}'; allowed: "
                          "sqlite:///FILE, postgresql://USER@HOST:PORT/DB, mysql://...")


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
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None     # SQLAlchemy, not the driver, says BEGIN

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()    # pooled connections were opened before the hooks: replace them


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


def publish(storage: RDBStorage, sweep: str, cells: list[Config], attrs: dict, retries: int) -> dict[str, str]:
    """Create or load the sweep's study and enqueue every cell that is not done, queued or
    running, and whose failures are within `retries`. Returns cell_key -> action taken."""
    study = optuna.create_study(study_name=sweep_study_name(sweep), storage=storage, load_if_exists=True,
                                direction="minimize")
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    fail_stale_trials(study)
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


def counts(study: optuna.Study) -> Counter:
    return Counter(s.state for s in cell_states(study).values())


def holds(storage: RDBStorage, trial_id: int) -> bool:
    """The lease a worker checks at every evaluation: is its trial still RUNNING? If its
    heartbeat went stale (a stalled machine, a network partition), another worker failed it and
    re-queued the cell; training on would train it twice. An unreadable storage (a blip) is not
    a lost lease: keep training, Optuna's tell settles it."""
    try:
        return storage.get_trial(trial_id).state == TrialState.RUNNING
    except Exception:  # noqa: BLE001
        return True


class Lease(dict):
    """What the loop around `study.optimize` must know of the trial its objective claimed: the
    trial (`trial_id`, `number`) and whether it was handed to another worker (`handed_off`)."""


def train_trial(storage: RDBStorage, trial: optuna.Trial, cfg: Config, tracker, lease: Lease, on_eval=None):
    """The training inside an Optuna objective, for sweep cells and search trials alike: train()
    for as long as this worker holds the trial (`holds`, asked at every evaluation and once more
    after the last one). A lost lease raises RunTakenOver and is noted in `lease` (see
    `optimize_one`); a failure is recorded as the trial's `failure_reason`; pruning is neither."""
    from mixmatch_core.train import RunTakenOver, train
    lease.update(trial_id=trial._trial_id, number=trial.number)
    try:
        result = train(cfg, tracker=tracker, on_eval=on_eval, still_owner=lambda: holds(storage, trial._trial_id))
        if not holds(storage, trial._trial_id):
            raise RunTakenOver("handed to another worker after the last evaluation; it reuses this run")
        return result
    except optuna.TrialPruned:
        raise
    except RunTakenOver:
        lease["handed_off"] = True
        raise
    except KeyboardInterrupt:
        trial.set_user_attr("failure_reason", "interrupted (Ctrl-C)")
        raise
    except BaseException as e:
        trial.set_user_attr("failure_reason", f"{type(e).__name__}: {e}"[:1000])
        raise


def optimize_one(study: optuna.Study, objective, lease: Lease, handed_off_line, **optimize_kw) -> bool:
    """study.optimize(objective, ...) that survives a handoff: once our trial was failed as stale
    and re-queued, Optuna refuses our tell (it raises); that is no error of this worker, so log
    `handed_off_line(lease)` and return True. Any other error is raised."""
    lease.clear()
    try:
        study.optimize(objective, catch=(Exception,), **optimize_kw)
        return False
    except Exception:
        if not lease.get("handed_off"):
            raise
        handed_off_line(lease)
        return True


def open_parent_run(study: optuna.Study, experiment: str, name: str, role: str, tags: dict[str, str]) -> str:
    """The MLflow parent run of a sweep (role "sweep") or a search study (role "study"), tagged
    `{role}: name`: reopened when the study holds its id and MLflow still has it, else created
    and its id kept in the study. Processes starting together (a Slurm array of `mixmatch search`)
    may each create one: all converge on the oldest and delete their own, so there is one."""
    from mixmatch_core.tracking import client, experiment_id, start_parent_run
    c = client()
    run_id = study.user_attrs.get("parent_run_id")
    try:
        if run_id is None or c.get_run(run_id).info.lifecycle_stage != "active":
            raise LookupError(run_id)
        return start_parent_run(experiment, name, {}, run_id=run_id)
    except Exception:  # noqa: BLE001 - missing, deleted or in another MLflow store: make a new one
        pass
    run_id = start_parent_run(experiment, name, {**tags, role: name, "mixmatch.role": role})
    parents = c.search_runs([experiment_id(experiment, c)],
                            f"tags.{role} = '{name}' and tags.`mixmatch.role` = '{role}'",
                            order_by=["attributes.start_time ASC"], max_results=100)
    oldest = min(parents, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if parents else run_id
    if oldest != run_id:
        c.delete_run(run_id)
        run_id = start_parent_run(experiment, name, {}, run_id=oldest)
    study.set_user_attr("parent_run_id", run_id)
    return run_id


def run_worker(storage: RDBStorage, sweep: str, overrides: dict | None = None,
               poll_seconds: float = 2.0, log=print) -> Counter:
    """Claim cells until none are waiting or running; train each as a tracked MLflow run.
    `overrides` sets runtime fields (device, num_threads, progress, out_dir) of every cell
    (num_threads only of cells whose spec left it at 0)."""
    study = load_sweep_study(storage, sweep)
    host = f"{socket.gethostname()}:{os.getpid()}"
    done, lease = Counter(), Lease()
    objective = _cell_objective(storage, sweep, study.user_attrs.get("parent_run_id"), host, overrides, lease)

    def report(_study, t) -> None:
        if t.user_attrs.get("spurious"):
            return
        done[t.state.name] += 1
        log(f"[{host}] {t.user_attrs.get('run_name', '?')}: {t.state.name}"
            + (f" error {t.value:.2f}%" if t.value is not None else "")
            + (f" ({t.user_attrs['failure_reason']})" if "failure_reason" in t.user_attrs else ""))

    def handed_off(lease) -> None:
        name = storage.get_trial(lease["trial_id"]).user_attrs.get("run_name", "?")
        log(f"[{host}] {name}: handed to another worker (this worker's heartbeat went stale)")
        done["HANDED_OFF"] += 1

    while True:
        fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if any(t.state == TrialState.WAITING for t in trials):
            optimize_one(study, objective, lease, handed_off, n_trials=1, callbacks=[report])
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(poll_seconds)     # another worker may die; its cell would come back to us
        else:
            return done


def _cell_objective(storage: RDBStorage, sweep: str, parent: str | None, host: str, overrides: dict | None,
                    lease: Lease):
    """The Optuna objective of a sweep worker: the claimed trial's cell, trained and tracked."""
    from mixmatch_core.tracking import RunTracker, experiment_id, find_cell_runs

    def objective(trial: optuna.Trial) -> float:
        cfg_dict = trial.user_attrs.get("config")
        if cfg_dict is None:
            # ask() found no WAITING trial because another worker claimed the last one between
            # our check and our claim: Optuna created a fresh trial. It is not a cell; drop it.
            trial.set_user_attr("spurious", True)
            raise optuna.TrialPruned("no cell to claim")
        cfg = Config(**cfg_dict)
        # A worker's thread share (--threads) fills in only where the spec left num_threads at
        # 0: a spec that asks for one thread per cell keeps it however many workers run.
        mine = {k: v for k, v in (overrides or {}).items() if not (k == "num_threads" and cfg.num_threads)}
        cfg = dataclasses.replace(cfg, **mine)
        validate(cfg)
        trial.set_user_attr("host", host)
        # Exactly-once: a cell whose MLflow run already FINISHED (e.g. its worker died after
        # training but before telling Optuna) is not trained again.
        for run in find_cell_runs(experiment_id(cfg.experiment), cfg.cell_key):
            if run.info.status == "FINISHED" and run.data.tags.get("sweep") == sweep and "error" in run.data.metrics:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                return run.data.metrics["error"]
        tracker = RunTracker(cfg, parent_run_id=parent, tags={"sweep": sweep, "mixmatch.role": "cell",
                                                                 "optuna_trial": str(trial.number),
                                                                 **mlflow_view.row_tags(cfg)})
        result = train_trial(storage, trial, cfg, tracker, lease)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        return result.metrics["error"]
    return objective
