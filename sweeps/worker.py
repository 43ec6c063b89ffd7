"""A sweep's worker: claim cells from the queue (store.py) and train each as a tracked MLflow
run until none are waiting or running (`run_worker`); `mixmatch worker` and the local workers
of `mixmatch sweep` run it.

Owns also what sweep workers and `mixmatch search` share: training a claimed trial for as long
as this worker holds its lease (`holds`, `train_trial`) and surviving the handoff of a trial
whose heartbeat went stale (`optimize_one`).

Exactly once: before training, a claimed cell whose result MLflow already holds (its worker
died after the run finished, before it could tell the queue) is completed with that result
instead of trained again (runs.finished_results, the same rule the tables count by).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import Counter

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from mixmatch_core.config import Config, validate
from mixmatch_core.tracking import RunTracker, experiment_id

from . import mlflow_view
from .runs import finished_results
from .store import load_sweep_study


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
    from mixmatch_core.train import RunTakenOver, train     # lazy: torch, only once a cell trains
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


def idle_poll_seconds(storage: RDBStorage) -> float:
    """How often a worker with nothing to claim looks again while other workers train the last
    cells (one of them may die and its cell come back). A server database is shared by the
    workers of many machines: every 2 s each. A SQLite file serves one machine's few workers:
    every 0.5 s, so that the last idle worker, which a local sweep waits for, exits soon after
    the last cell finishes."""
    return 0.5 if storage.engine.name == "sqlite" else 2.0


def run_worker(storage: RDBStorage, sweep: str, overrides: dict | None = None, log=print) -> Counter:
    """Claim cells until none are waiting or running; train each as a tracked MLflow run.
    `overrides` sets runtime fields (device, num_threads, progress, out_dir) of every cell
    (num_threads only of cells whose spec left it at 0)."""
    study = load_sweep_study(storage, sweep)
    poll_seconds = idle_poll_seconds(storage)
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
        # Exactly once: a cell whose MLflow run already FINISHED (e.g. its worker died after
        # training but before telling Optuna) is not trained again.
        done = finished_results(experiment_id(cfg.experiment), sweep, cfg.cell_key).get(cfg.cell_key)
        if done is not None:
            trial.set_user_attr("mlflow_run_id", done[0])
            return done[1]
        tracker = RunTracker(cfg, parent_run_id=parent, tags={"sweep": sweep, "mixmatch.role": "cell",
                                                                 "optuna_trial": str(trial.number),
                                                                 **mlflow_view.row_tags(cfg)})
        result = train_trial(storage, trial, cfg, tracker, lease)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        return result.metrics["error"]
    return objective
