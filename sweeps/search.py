"""An Optuna hyperparameter search over config fields: the study's lifecycle (`mixmatch search`).

Owns: turning a trial into a Config (base + sampled params, then `resolve`; one per seed where
the spec names `seeds`, the trial's value then their mean), reporting each evaluation to the
pruner (with seeds: the mean over the seeds, at the steps every seed has reported), the MLflow
layout of a study (one parent run per study, reopened on resume; one child run per trial and
seed, tagged with its Optuna state), resuming a study from its
storage, and the study's outputs: the best config as ready-to-run YAML and Optuna's plots. The
spec (its format and validation) is search_spec.py.
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import matplotlib
import optuna
import yaml
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm
from sqlalchemy.engine import make_url

from mixmatch_core.config import Config, ConfigError, resolve
from mixmatch_core.tracking import RunTracker, client, end_parent_run
from mixmatch_core.train import RunStopped

from .parent_run import open_parent_run
from .search_spec import SearchSpec
from .spec import file_stem
from .store import default_storage, open_storage
from .worker import Lease, optimize_one, train_trial

matplotlib.use("Agg")       # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

# The final value of a trial: the reporting rule (median of the last N evaluations) applied
# to the objective's split; RunResult.metrics calls the test one plain `error`.
FINAL_METRIC = {"val_error": "val_error", "test_error": "error"}


class SearchInterrupted(Exception):
    """Ctrl-C during a trial: its MLflow run ended KILLED and its params are queued again."""

    def __init__(self, study_name: str):
        super().__init__(study_name)
        self.study_name = study_name


class NoTrialCompleted(RuntimeError):
    """The study has no complete trial: no best config to write (the message is one line)."""


# ---- Optuna objects ------------------------------------------------------------------------------
def make_sampler(spec: SearchSpec, seed: int):
    kind, opts = spec.sampler["type"], {k: v for k, v in spec.sampler.items() if k != "type"}
    if kind == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid_values() for d in spec.space.values()}, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, **opts)


def make_pruner(spec: SearchSpec, base: Config):
    """Defaults for short runs, in training steps: judge a trial from its second evaluation on
    (the first mostly reflects the initialisation and the lambda_u ramp-up), and only once 3
    trials have finished (a median of fewer is noise)."""
    kind, opts = spec.pruner["type"], {k: v for k, v in spec.pruner.items() if k != "type"}
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        # Rungs at min_resource * 3^k steps; steps searched -> let Optuna infer the maximum.
        defaults = dict(min_resource=base.eval_every,
                        max_resource="auto" if "steps" in spec.space else base.steps, reduction_factor=3)
        return optuna.pruners.HyperbandPruner(**{**defaults, **opts})
    defaults = dict(n_startup_trials=3, n_warmup_steps=2 * base.eval_every, interval_steps=1, n_min_trials=1)
    return optuna.pruners.MedianPruner(**{**defaults, **opts})


class TrialStopped(optuna.TrialPruned, RunStopped):
    """Raised from `on_eval` when the pruner says stop: train() ends the MLflow run KILLED (not
    FAILED; RunStopped's status); we tag it trial_state=PRUNED ourselves."""

    def __init__(self, reason: str):
        RunStopped.__init__(self, "KILLED", reason)


def _safe_url(url: str) -> str:
    """The storage URL without its password (it is logged as a tag)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable URLs were rejected earlier; be safe anyway
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# ---- the study -----------------------------------------------------------------------------------
def _twin(study, number: int, cell_key: str):
    """Another trial of this study with the same config (same cell_key, so the same checkpoint
    directory and MLflow run): a COMPLETE one wins, then PRUNED, then RUNNING. FAIL twins are
    not returned: re-training one resumes it from its checkpoint (that is how retries work)."""
    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2}
    twins = [t for t in study.get_trials(deepcopy=False)
             if t.number != number and t.state in rank and t.user_attrs.get("cell_key") == cell_key]
    return min(twins, key=lambda t: rank[t.state], default=None)


def _open_parent_run(study, spec: SearchSpec, storage_url: str) -> str:
    """The study's MLflow parent run (see parent_run.open_parent_run), with the spec logged."""
    run_id = open_parent_run(study, spec.experiment, study.study_name, "study", {
        "objective": spec.objective, "sampler": spec.sampler["type"], "pruner": spec.pruner["type"],
        "optuna_storage": _safe_url(storage_url)})
    try:
        client().log_artifact(run_id, spec.path, "search")
    except Exception:  # noqa: BLE001 - the spec copy is a convenience
        pass
    return run_id


def _trial_line(t, objective: str) -> str:
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    out = f"trial {t.number} {t.state.name}"
    if t.value is not None and t.state.name == "COMPLETE":
        out += f" {objective} {t.value:.2f}%"
    if t.state.name == "PRUNED" and t.intermediate_values:
        step = max(t.intermediate_values)
        out += f" at step {step} ({objective} {t.intermediate_values[step]:.2f}%)"
    if "resumes_trial" in t.user_attrs or "failed_trial" in t.system_attrs:
        out += f" (resumed trial {t.user_attrs.get('resumes_trial', t.system_attrs.get('failed_trial'))})"
    if "duplicate_of" in t.user_attrs:
        out += f" (same config as trial {t.user_attrs['duplicate_of']})"
    if t.state.name == "FAIL" and "failure_reason" in t.user_attrs:
        out += f" ({t.user_attrs['failure_reason']})"
    if t.duration is not None:
        out += f" [{t.duration.total_seconds():.0f} s]"
    return f"{out}: {params}"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_plots(study, out_dir: Path, log=print) -> list[Path]:
    """Optuna's optimisation history, intermediate values (pruned trials end early) and parameter
    importances as PNGs (matplotlib backend). A plot that cannot be made is skipped with a note."""
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = [("optimization_history", ovm.plot_optimization_history),
             ("intermediate_values", ovm.plot_intermediate_values),
             ("param_importances", ovm.plot_param_importances)]
    paths = []
    for name, fn in plots:
        if name == "param_importances" and n_complete < 2:
            log(f"note: {name}.png skipped: parameter importances need >= 2 complete trials (have {n_complete})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # Optuna marks its matplotlib plots experimental
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            paths.append(path)
        except Exception as e:  # noqa: BLE001 - e.g. a constant objective, a missing optional package
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log(f"note: {name}.png skipped: {first}")
    return paths


def write_best_yaml(path: Path, spec: SearchSpec, study_name: str, trial) -> Path:
    """The best trial's user-level config (base + best params) as a YAML that `mixmatch train
    --config` runs and a sweep spec can use as its `base`."""
    user = trial.user_attrs.get("config") or spec.user_config(trial.params)
    seeds = f", the mean over seeds {', '.join(map(str, spec.seeds))}" if spec.seeds else ""
    header = (f"# Best trial {trial.number} of Optuna study '{study_name}' ({spec.objective} "
              f"{trial.value:.2f}%, median of the last {resolve(user).median_of} evaluations{seeds}).\n"
              f"# Run it: mixmatch train --config {path}   (or use it as a sweep spec's base)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(user, sort_keys=False))
    return path


def _open_study(spec: SearchSpec, study_name: str, storage_url: str, heartbeat_seconds: int | None,
                role: str = "all"):
    """Create or load the study, with its sampler and pruner; returns (storage, study)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats, retry callback
        storage = open_storage(storage_url, heartbeat_seconds=heartbeat_seconds)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, direction="minimize")
    previous = study.user_attrs.get("objective")
    if previous and previous != spec.objective:
        raise ConfigError(f"objective: study '{study_name}' was run with {previous}, not {spec.objective}; "
                          "use another --study name")
    # Offset the sampler's seed by the trials already in the study: a resumed process seeded as
    # the first one would draw the same params again (same runs, same checkpoints).
    seed = spec.seed + len(study.get_trials(deepcopy=False))
    if storage_url != default_storage(study_name) or role == "worker":
        # A shared storage may have several workers starting together: without this they would
        # all draw the same first params. (The embedded default stays reproducible.)
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000
    study.sampler = make_sampler(spec, seed)
    study.pruner = make_pruner(spec, resolve(spec.base))
    study.set_user_attr("objective", spec.objective)
    study.set_user_attr("spec", spec.path)
    return storage, study


def _trial_objective(spec: SearchSpec, study, storage, parent: str, lease):
    """The Optuna objective of a search: the trial's params on the base config, trained and
    tracked (one run per seed where the spec names `seeds`: their mean is the value), every
    evaluation reported to the pruner (with seeds, the mean over the seeds once all have it)."""
    from mixmatch_core.train import RunTakenOver  # lazy: torch; `mixmatch search --help` needs none
    host = f"{socket.gethostname()}:{os.getpid()}"
    out_root = f"{resolve(spec.base).out_dir}/{file_stem(study.study_name)}"

    def objective(trial: optuna.Trial) -> float:
        params = {d.name: d.suggest(trial) for d in spec.space.values()}
        lease.update(number=trial.number, params=params)    # for _interrupted
        user = spec.user_config(params)
        trial.set_user_attr("host", host)
        try:
            cfgs = [resolve({**user, **({} if seed is None else {"seed": seed}), "progress": False,
                             "out_dir": out_root}) for seed in spec.seeds or [None]]
        except ConfigError as e:
            trial.set_user_attr("failure_reason", str(e)[:1000])
            raise
        trial.set_user_attr("cell_key", "+".join(c.cell_key for c in cfgs))
        trial.set_user_attr("config", user)
        twin = _twin(study, trial.number, trial.user_attrs["cell_key"])
        if twin is not None:
            return _reuse_twin(trial, twin)
        curves: dict[int, dict[int, float]] = {}          # seed index -> step -> objective
        results = []
        try:
            for i, cfg in enumerate(cfgs):
                results.append(_train_seed(spec, study, trial, cfg, i, curves, parent, storage, lease))
        except RunTakenOver:
            raise                   # the trial is another worker's now: so are its tags
        except Exception as e:
            # The seeds that finished belong to a pruned (or failed) trial.
            state = TrialState.PRUNED if isinstance(e, TrialStopped) else TrialState.FAIL
            for r in results:
                _tag_run(r.run_id, {"trial_state": state.name})
            raise
        if len(results) > 1:
            trial.set_user_attr("mlflow_run_ids", [r.run_id for r in results])
        trial.set_user_attr("test_error", _mean(r.metrics["error"] for r in results))
        if all("val_error" in r.metrics for r in results):
            trial.set_user_attr("val_error", _mean(r.metrics["val_error"] for r in results))
        return _mean(r.metrics[FINAL_METRIC[spec.objective]] for r in results)
    return objective


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _train_seed(spec: SearchSpec, study, trial, cfg: Config, index: int, curves: dict, parent: str, storage, lease):
    """Train (or resume, or just report, where its run finished: a killed trial's retry trains
    its unfinished seeds only) the trial's run of one seed; each evaluation goes into `curves`,
    and once every seed has a step, their mean is reported to the pruner."""
    from mixmatch_core.train import RunTakenOver  # lazy: torch; `mixmatch search --help` needs none
    n_seeds = len(spec.seeds or [None])
    tags = {"study": study.study_name, "mixmatch.role": "trial", "trial_number": str(trial.number)}
    tracker = RunTracker(cfg, parent_run_id=parent, tags={**tags, **({"trial_seed": str(cfg.seed)}
                                                                      if spec.seeds else {})})
    mine = curves.setdefault(index, {})

    def on_eval(step: int, h: dict) -> None:
        mine[step] = h[spec.objective]
        if len(curves) < n_seeds or not all(step in c for c in curves.values()):
            return
        value = _mean(c[step] for c in curves.values())
        trial.report(value, step)
        # Pruning at the last evaluation saves no compute and loses a complete trial.
        if step < cfg.steps and trial.should_prune():
            trial.set_user_attr("pruned_at_step", step)
            raise TrialStopped(f"pruned at step {step}: {spec.objective} {value:.2f}%"
                               + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""))

    state, result = TrialState.FAIL, None
    try:
        result = train_trial(storage, trial, cfg, tracker, lease, on_eval)
        mine.update({h["step"]: h[spec.objective] for h in result.history})   # a resumed run's earlier points
        state = TrialState.COMPLETE
        return result
    except TrialStopped:
        state = TrialState.PRUNED
        raise
    except RunTakenOver:
        state = None                # the run is the new owner's now: leave its tags alone
        raise
    finally:
        # A finished run re-reported (a retry of a trial whose worker died after training)
        # has no tracker run; its id comes back in the result.
        run_id = tracker.run_id or (result.run_id if result is not None else None)
        if run_id is not None and state is not None:
            if index == 0:
                trial.set_user_attr("mlflow_run_id", run_id)
            _tag_run(run_id, {"trial_state": state.name, "trial_number": str(trial.number)})


def _tag_run(run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag  # lazy: MLflow takes seconds; `mixmatch search --help` needs none
    try:
        client().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    except Exception:  # noqa: BLE001 - the Optuna state is the record that counts
        pass


def _reuse_twin(trial, twin) -> float:
    """Same config as another trial. Training it again would reopen that trial's checkpoint and
    MLflow run, so reuse its outcome instead."""
    trial.set_user_attr("duplicate_of", twin.number)
    if twin.state == TrialState.COMPLETE:
        for key in ("mlflow_run_id", "test_error", "val_error"):
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        return twin.value
    if twin.state == TrialState.PRUNED:
        raise optuna.TrialPruned(f"same config as pruned trial {twin.number}")
    reason = f"same config is being trained by trial {twin.number}"
    trial.set_user_attr("failure_reason", reason)
    raise RuntimeError(reason)


def run_search(spec: SearchSpec, study_name: str, storage_url: str, out_dir: Path,
               heartbeat_seconds: int | None = None, log=print, role: str = "all") -> int:
    """Create or resume the study and run trials until it has `spec.trials` finished ones (or
    the timeout). Returns the process exit code. role: "all" (train, then the study's outputs),
    "worker" (one of several pinned processes: train only) or "finish" (outputs only). Raises
    SearchInterrupted on Ctrl-C (the trial's run ended KILLED, its params queued again) and
    NoTrialCompleted when the study has no complete trial to report."""
    # Failed trials are reported in one line each by our callback; Optuna's own warning would
    # add a traceback for every invalid combination of params.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage, study = _open_study(spec, study_name, storage_url, heartbeat_seconds, role)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = spec.trials - len(study.get_trials(deepcopy=False, states=finished))
    parent = _open_parent_run(study, spec, storage_url)
    log(f"study '{study_name}': {spec.trials - remaining} of {spec.trials} trials finished, objective "
        f"{spec.objective}, sampler {spec.sampler['type']}, pruner {spec.pruner['type']}; storage {storage_url}; "
        f"MLflow experiment '{spec.experiment}', parent run {parent}")
    lease = Lease()
    objective = _trial_objective(spec, study, storage, parent, lease)
    # MaxTrialsCallback stops every worker sharing the storage once the study as a whole has
    # `trials` finished (COMPLETE + PRUNED) trials; failed trials (invalid params, a config
    # another worker is training) do not count, but too many of them in a row stop us.
    callbacks = [MaxTrialsCallback(spec.trials, states=finished), lambda _s, t: log(_trial_line(t, spec.objective)),
                 _StopAfterFailures(3)]
    t0 = time.perf_counter()
    deadline = None if spec.timeout_seconds is None else time.monotonic() + spec.timeout_seconds
    while remaining > 0 and role != "finish":
        try:
            if not optimize_one(study, objective, lease,
                                lambda lease: log(f"trial {lease['number']}: handed to another worker "
                                                  "(this worker's heartbeat went stale)"),
                                n_trials=None, callbacks=callbacks,
                                timeout=None if deadline is None else max(deadline - time.monotonic(), 0)):
                break
        except KeyboardInterrupt:
            _interrupted(study, lease)
            end_parent_run(parent, "KILLED")
            raise SearchInterrupted(study_name) from None
        remaining = spec.trials - len(study.get_trials(deepcopy=False, states=finished))
    if role == "worker":
        return 0
    return _finish(study, spec, study_name, storage_url, out_dir, parent, time.perf_counter() - t0, log)


class _StopAfterFailures:
    """Stop this process after `limit` failed trials in a row: failures do not count toward
    --trials, so a search space full of invalid configs must not loop forever."""

    def __init__(self, limit: int):
        self.limit, self.failed = limit, 0

    def __call__(self, study, trial) -> None:
        self.failed = self.failed + 1 if trial.state == TrialState.FAIL else 0
        if self.failed >= self.limit:
            study.stop()


def _interrupted(study, lease: dict) -> None:
    """Ctrl-C: mark the interrupted trial FAIL if Optuna could not, and queue its params again so
    that re-running the command resumes that config from its checkpoint (not a fresh draw)."""
    if "number" not in lease:
        return
    try:
        t = study.get_trials(deepcopy=False)[lease["number"]]
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL:
            return                  # Ctrl-C between trials: nothing was cut short
        study.enqueue_trial(lease["params"], user_attrs={"resumes_trial": lease["number"]})
    except Exception:  # noqa: BLE001 - the stale-trial retry covers it on the next run
        pass


def _finish(study, spec: SearchSpec, study_name: str, storage_url: str, out_dir: Path, parent: str,
            elapsed: float, log) -> int:
    """Summary, best config, plots, parent-run artifacts; the parent run ends FINISHED."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    log(f"study '{study_name}': {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})"
        f", {elapsed:.0f} s in this run")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    c = client()
    if not complete:
        end_parent_run(parent, "FAILED")
        reasons = [t.user_attrs["failure_reason"] for t in trials if "failure_reason" in t.user_attrs]
        raise NoTrialCompleted(f"no trial of study '{study_name}' completed"
                               + (f"; first failure: {reasons[0]}" if reasons else ""))
    best = study.best_trial
    log(f"best: trial {best.number}, {spec.objective} {best.value:.2f}%"
        + (f" (its test error {best.user_attrs['test_error']:.2f}%, not used for selection)"
           if spec.objective == "val_error" and "test_error" in best.user_attrs else "")
        + ", params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_best_yaml(out_dir / "best.yaml", spec, study_name, best)]
    paths += write_plots(study, out_dir, log)
    for path in paths:
        try:
            c.log_artifact(parent, str(path), "search")
        except Exception:  # noqa: BLE001 - files are on disk either way
            log(f"note: could not log {path} to MLflow")
    from mlflow.entities import Metric, RunTag  # lazy: MLflow takes seconds; `mixmatch search --help` needs none
    now = int(time.time() * 1000)
    metrics = [Metric(f"best_{spec.objective}", best.value, now, len(trials))]
    metrics += [Metric(f"trials_{s.lower()}", states.get(s, 0), now, len(trials))
                for s in ("COMPLETE", "PRUNED", "FAIL")]
    try:
        c.log_batch(parent, metrics=metrics, tags=[RunTag("best_trial", str(best.number))])    # one request
    except Exception:  # noqa: BLE001
        pass
    end_parent_run(parent, "FINISHED")
    log(f"best config: {paths[0]}  (mixmatch train --config {paths[0]})")
    log(f"plots: {', '.join(str(p) for p in paths[1:]) or 'none'}")
    log(f"dashboard: optuna-dashboard {storage_url}   (pip install optuna-dashboard)")
    return 0
