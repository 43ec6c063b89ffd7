"""Optuna hyperparameter search over config fields: `mixmatch search SPEC`.

Owns: the search spec format and its validation (one line naming the key, before anything is
started or written), turning a trial into a Config (base + sampled params, then `resolve`),
reporting each evaluation to the pruner, the MLflow layout of a study (one parent run per
study, reopened on resume; one child run per trial, tagged with its Optuna state), resuming a
study from its storage, and the study's outputs: the best config as ready-to-run YAML and
Optuna's plots. A spec looks like:

    name: digits-search               # study name (default: the file's stem)
    experiment: mixmatch-search       # MLflow experiment (default: base's, else mixmatch)
    base: {dataset: digits, val_size: 200, steps: 300}
    space:                            # per config field
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      rampup_steps: {type: int, low: 0, high: 300, step: 50}
      T: {type: categorical, choices: [0.25, 0.5, 1.0]}
    sampler: tpe                      # tpe | random | grid; or {type: tpe, n_startup_trials: 5}
    pruner: median                    # median | hyperband | none; or {type: median, n_warmup_steps: 100}
    objective: val_error              # val_error (needs val_size > 0) | test_error (flawed, warns)
    trials: 20                        # total finished (COMPLETE + PRUNED) trials of the study
    timeout_seconds: null             # per invocation
    seed: 0                           # sampler seed

Pruner steps are training steps (each evaluation reports at its step), so `n_warmup_steps`,
`min_resource` and `max_resource` are in steps. A trial's checkpoint lives in
OUT_DIR/STUDY/RUN_NAME-CELLKEY: a retried trial (same params) resumes from it, and two studies
never share a checkpoint or an MLflow run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
import time
import zlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mixmatch_cli.errors import EXIT_RUN_FAILED, ArgumentParser, die, user_errors
from mixmatch_core.config import FIELDS, Config, ConfigError, load_yaml, resolve

from . import gpus

SEARCH_KEYS = {"name", "experiment", "base", "space", "sampler", "pruner", "trials", "timeout_seconds",
               "objective", "seed", "description"}
DIMENSION_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "step", "log"},
                  "categorical": {"type", "choices"}}
# Options each sampler/pruner accepts in its mapping form (all non-negative integers).
SAMPLER_OPTIONS = {"tpe": {"n_startup_trials"}, "random": set(), "grid": set()}
PRUNER_OPTIONS = {"median": {"n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"},
                  "hyperband": {"min_resource", "max_resource", "reduction_factor"}, "none": set()}
OBJECTIVES = ("val_error", "test_error")
# The final value of a trial: the reporting rule (median of the last N evaluations) applied
# to the objective's split; RunResult.metrics calls the test one plain `error`.
FINAL_METRIC = {"val_error": "val_error", "test_error": "error"}
# Fields that must not be searched: val_size changes the data the objective is measured on.
NOT_SEARCHABLE = {"val_size"}
TEST_OBJECTIVE_WARNING = ("WARNING: objective test_error selects hyperparameters on the test set, a known "
                          "flaw of published SSL results (Oliver et al. 2018); the best value is optimistic. "
                          "Use val_size > 0 and objective: val_error for numbers you report.")


@dataclass
class Dimension:
    name: str
    type: str                        # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None          # int only; None = 1 and not usable by the grid sampler
    choices: list = field(default_factory=list)

    def grid_values(self) -> list | None:
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int" and self.step is not None and not self.log:
            return list(range(int(self.low), int(self.high) + 1, self.step))
        return None

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.name, self.choices)


@dataclass
class SearchSpec:
    name: str
    path: str
    experiment: str
    base: dict[str, Any]
    space: dict[str, Dimension]
    sampler: dict[str, Any]          # {"type": ..., options}
    pruner: dict[str, Any]
    objective: str = "val_error"
    trials: int = 20
    timeout_seconds: float | None = None
    seed: int = 0
    description: str = ""

    def user_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """The user-level fields of a trial: base, the study's experiment, then the params.
        This is what best.yaml holds; runtime-only trial settings (progress) are added later."""
        return {**self.base, "experiment": self.experiment, **params}


# ---- spec loading and validation ---------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _named(value, what: str, options: dict[str, set], default: str, err) -> dict[str, Any]:
    """`sampler`/`pruner` as a name or a mapping {type: name, option: int, ...}."""
    if value is None:
        value = default
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        err(f"{what} must be a name ({' | '.join(options)}) or a mapping with type")
    kind = value.get("type", default)
    if kind not in options:
        err(f"{what} '{kind}' is not one of {', '.join(options)}")
    for key, v in value.items():
        if key == "type":
            continue
        if key not in options[kind]:
            err(f"{what} {kind}: unknown option '{key}'; allowed: {', '.join(sorted(options[kind])) or 'none'}")
        if key == "max_resource" and v == "auto":
            continue
        if not _is_int(v) or v < 0:
            err(f"{what} {kind}: {key} must be an integer >= 0, got {v!r}")
    if kind == "hyperband":
        if value.get("min_resource", 1) < 1:
            err("pruner hyperband: min_resource must be >= 1 (steps)")
        if value.get("reduction_factor", 3) < 2:
            err("pruner hyperband: reduction_factor must be >= 2")
    if kind == "median" and value.get("interval_steps", 1) < 1:
        err("pruner median: interval_steps must be >= 1")
    return {**value, "type": kind}


def _dimension(name: str, raw, base: dict[str, Any], err) -> Dimension:
    where = f"space.{name}"
    if name not in FIELDS:
        err(f"space: unknown config field '{name}'; known fields: {', '.join(FIELDS)}")
    if FIELDS[name].metadata.get("runtime") or name in NOT_SEARCHABLE:
        err(f"space: '{name}' cannot be searched ("
            + ("it changes the data the objective is measured on)" if name in NOT_SEARCHABLE
               else "a runtime field, not a hyperparameter)"))
    if not isinstance(raw, dict) or raw.get("type") not in DIMENSION_KEYS:
        err(f"{where} must be a mapping with type: float | int | categorical")
    kind = raw["type"]
    extra = set(raw) - DIMENSION_KEYS[kind]
    if extra:
        err(f"{where}: unknown key(s) {', '.join(sorted(extra))} for type {kind}; "
            f"allowed: {', '.join(sorted(DIMENSION_KEYS[kind]))}")
    dim = _categorical(name, raw, where, err) if kind == "categorical" else _numeric(name, raw, where, err)
    probes = dim.choices if kind == "categorical" else [raw["low"], raw["high"]]
    # Every choice and both ends must make a valid config with the base: catches e.g.
    # ema_decay high 1.0 or T 0 here, in one line, instead of as failed trials later.
    for v in probes:
        try:
            resolve({**base, name: v})
        except ConfigError as e:
            err(f"{where}: value {v!r} makes an invalid config ({e})")
    return dim


def _categorical(name: str, raw: dict, where: str, err) -> Dimension:
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        err(f"{where}: choices must be a non-empty list")
    if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
        err(f"{where}: choices must be numbers, strings or booleans")
    if len({repr(c) for c in choices}) != len(choices):
        err(f"{where}: choices contain duplicates")
    return Dimension(name, "categorical", choices=list(choices))


def _numeric(name: str, raw: dict, where: str, err) -> Dimension:
    kind, field_type = raw["type"], type(FIELDS[name].default)
    if kind == "float" and field_type is not float:
        err(f"{where}: type float needs a float field; '{name}' is {field_type.__name__}"
            + (": use type: int" if field_type is int else ": use type: categorical"))
    if kind == "int" and field_type is not int:
        err(f"{where}: type int needs an integer field; '{name}' is {field_type.__name__}"
            + (": use type: float" if field_type is float else ": use type: categorical"))
    check = _is_int if kind == "int" else _is_number
    for key in ("low", "high"):
        if key not in raw:
            err(f"{where}: {key} is required for type {kind}")
        if not check(raw[key]):
            err(f"{where}: {key} must be {'an integer' if kind == 'int' else 'a number'}, got {raw[key]!r}")
    low, high = raw["low"], raw["high"]
    if low >= high:
        err(f"{where}: low ({low}) must be < high ({high})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        err(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        err(f"{where}: log: true needs low > 0, got low={low}")
    step = raw.get("step")
    if step is not None:
        if not _is_int(step) or step < 1:
            err(f"{where}: step must be an integer >= 1, got {step!r}")
        if log and step != 1:
            err(f"{where}: log: true cannot be combined with step {step} (Optuna allows step 1 only)")
        if (high - low) % step:
            err(f"{where}: high - low ({high - low}) must be a multiple of step ({step})")
    return Dimension(name, kind, low=float(low) if kind == "float" else low,
                     high=float(high) if kind == "float" else high, log=log, step=step)


def load_search_spec(path: str) -> SearchSpec:
    """Read and validate a search spec; every problem is one ConfigError line naming the key."""
    raw = load_yaml(path)

    def err(msg: str):
        raise ConfigError(f"search spec '{path}': {msg}")

    unknown = set(raw) - SEARCH_KEYS
    if unknown:
        err(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(SEARCH_KEYS))}")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        err("base must be a mapping of config fields")
    try:
        base_cfg = resolve(base)
    except ConfigError as e:
        err(f"base: {e}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        err("space must be a non-empty mapping of config field: {type: float | int | categorical, ...}")
    space = {name: _dimension(name, d, base, err) for name, d in space_raw.items()}

    objective = raw.get("objective", "val_error")
    if objective not in OBJECTIVES:
        err(f"objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if objective == "val_error" and base_cfg.val_size <= 0:
        err("objective val_error needs a validation split: set base val_size > 0 (e.g. 200), "
            "or choose objective: test_error explicitly")
    sampler = _named(raw.get("sampler"), "sampler", SAMPLER_OPTIONS, "tpe", err)
    if sampler["type"] == "grid":
        bad = [d.name for d in space.values() if d.grid_values() is None]
        if bad:
            err(f"sampler grid needs every space dimension categorical or int with step (no log); "
                f"not: {', '.join(bad)}")
    pruner = _named(raw.get("pruner"), "pruner", PRUNER_OPTIONS, "median", err)
    trials = raw.get("trials", 20)
    if not _is_int(trials) or trials < 1:
        err(f"trials must be an integer >= 1, got {trials!r}")
    timeout = raw.get("timeout_seconds")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        err(f"timeout_seconds must be a number > 0 or null, got {timeout!r}")
    seed = raw.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        err(f"seed must be an integer >= 0, got {seed!r}")
    experiment = str(raw.get("experiment") or base.get("experiment") or "mixmatch")
    if not experiment.strip():
        err("experiment must not be empty")
    name = str(raw.get("name") or Path(path).stem)
    return SearchSpec(name=name, path=str(path), experiment=experiment, base=dict(base), space=space,
                      sampler=sampler, pruner=pruner, objective=objective, trials=trials,
                      timeout_seconds=float(timeout) if timeout is not None else None, seed=seed,
                      description=str(raw.get("description", "")))


# ---- Optuna objects ------------------------------------------------------------------------------
def make_sampler(spec: SearchSpec, seed: int):
    import optuna
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
    import optuna
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


def _pruned_type():
    import optuna

    from mixmatch_core.train import RunStopped

    class TrialStopped(optuna.TrialPruned, RunStopped):
        """Raised from `on_eval` when the pruner says stop: train() ends the MLflow run KILLED
        (not FAILED; RunStopped's status); we tag it trial_state=PRUNED ourselves."""

        def __init__(self, reason: str):
            RunStopped.__init__(self, "KILLED", reason)

    return TrialStopped


def _safe_url(url: str) -> str:
    """The storage URL without its password (it is logged as a tag)."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable URLs were rejected earlier; be safe anyway
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# ---- the study -----------------------------------------------------------------------------------
def _twin(study, number: int, cell_key: str):
    """Another trial of this study with the same config (same cell_key, so the same checkpoint
    directory and MLflow run): a COMPLETE one wins, then PRUNED, then RUNNING. FAIL twins are
    not returned: re-training one resumes it from its checkpoint (that is how retries work)."""
    from optuna.trial import TrialState
    rank = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2}
    twins = [t for t in study.get_trials(deepcopy=False)
             if t.number != number and t.state in rank and t.user_attrs.get("cell_key") == cell_key]
    return min(twins, key=lambda t: rank[t.state], default=None)


def _open_parent_run(study, spec: SearchSpec, storage_url: str) -> str:
    """The study's MLflow parent run (see store.open_parent_run), with the spec logged."""
    from mixmatch_core.tracking import client
    from sweeps.store import open_parent_run
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


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_plots(study, out_dir: Path, log=print) -> list[Path]:
    """Optuna's optimisation history, intermediate values (pruned trials end early) and parameter
    importances as PNGs (matplotlib backend). A plot that cannot be made is skipped with a note."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

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
    header = (f"# Best trial {trial.number} of Optuna study '{study_name}' ({spec.objective} "
              f"{trial.value:.2f}%, median of the last {resolve(user).median_of} evaluations).\n"
              f"# Run it: mixmatch train --config {path}   (or use it as a sweep spec's base)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(user, sort_keys=False))
    return path


def _open_study(spec: SearchSpec, study_name: str, storage_url: str, heartbeat_seconds: int | None,
                role: str = "all"):
    """Create or load the study, with its sampler and pruner; returns (storage, study)."""
    import optuna

    from sweeps.store import default_storage, open_storage
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
    tracked, every evaluation reported to the pruner."""
    import optuna
    from optuna.trial import TrialState

    from mixmatch_core.tracking import RunTracker
    from mixmatch_core.train import RunTakenOver
    from sweeps.store import train_trial
    host = f"{socket.gethostname()}:{os.getpid()}"
    out_root = f"{resolve(spec.base).out_dir}/{_safe_name(study.study_name)}"
    TrialStopped = _pruned_type()

    def objective(trial: optuna.Trial) -> float:
        params = {d.name: d.suggest(trial) for d in spec.space.values()}
        lease.update(number=trial.number, params=params)    # for _interrupted
        user = spec.user_config(params)
        trial.set_user_attr("host", host)
        try:
            cfg = resolve({**user, "progress": False, "out_dir": out_root})
        except ConfigError as e:
            trial.set_user_attr("failure_reason", str(e)[:1000])
            raise
        trial.set_user_attr("cell_key", cfg.cell_key)
        trial.set_user_attr("config", user)
        twin = _twin(study, trial.number, cfg.cell_key)
        if twin is not None:
            return _reuse_twin(trial, twin)
        tracker = RunTracker(cfg, parent_run_id=parent, tags={
            "study": study.study_name, "mixmatch.role": "trial", "trial_number": str(trial.number)})

        def on_eval(step: int, h: dict) -> None:
            trial.report(h[spec.objective], step)
            # Pruning at the last evaluation saves no compute and loses a complete trial.
            if step < cfg.steps and trial.should_prune():
                trial.set_user_attr("pruned_at_step", step)
                raise TrialStopped(f"pruned at step {step}: {spec.objective} {h[spec.objective]:.2f}%")

        state, result = TrialState.FAIL, None
        try:
            result = train_trial(storage, trial, cfg, tracker, lease, on_eval)
            state = TrialState.COMPLETE
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
                trial.set_user_attr("mlflow_run_id", run_id)
                _tag_run(run_id, {"trial_state": state.name, "trial_number": str(trial.number)})
        trial.set_user_attr("test_error", result.metrics["error"])
        if "val_error" in result.metrics:
            trial.set_user_attr("val_error", result.metrics["val_error"])
        return result.metrics[FINAL_METRIC[spec.objective]]
    return objective


def _tag_run(run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    from mixmatch_core.tracking import client
    try:
        client().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    except Exception:  # noqa: BLE001 - the Optuna state is the record that counts
        pass


def _reuse_twin(trial, twin) -> float:
    """Same config as another trial. Training it again would reopen that trial's checkpoint and
    MLflow run, so reuse its outcome instead."""
    import optuna
    from optuna.trial import TrialState
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
    "worker" (one of several pinned processes: train only) or "finish" (outputs only)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from mixmatch_core.tracking import end_parent_run
    from sweeps.store import Lease, optimize_one

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
            die(f"interrupted; the trial's MLflow run ended KILLED. Re-run the same command to resume study "
                f"'{study_name}' (the interrupted trial resumes from its checkpoint)", 130)
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
        from optuna.trial import TrialState
        self.failed = self.failed + 1 if trial.state == TrialState.FAIL else 0
        if self.failed >= self.limit:
            study.stop()


def _interrupted(study, lease: dict) -> None:
    """Ctrl-C: mark the interrupted trial FAIL if Optuna could not, and queue its params again so
    that re-running the command resumes that config from its checkpoint (not a fresh draw)."""
    from optuna.trial import TrialState
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
    from collections import Counter

    from mixmatch_core.tracking import client, end_parent_run
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    log(f"study '{study_name}': {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))})"
        f", {elapsed:.0f} s in this run")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    c = client()
    if not complete:
        end_parent_run(parent, "FAILED")
        reasons = [t.user_attrs["failure_reason"] for t in trials if "failure_reason" in t.user_attrs]
        die(f"no trial of study '{study_name}' completed" + (f"; first failure: {reasons[0]}" if reasons else ""),
            EXIT_RUN_FAILED)
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
    from mlflow.entities import Metric, RunTag
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


# ---- command line --------------------------------------------------------------------------------
def _positive(kind):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}")
        return v
    return parse


def search_parser():
    p = ArgumentParser(prog="mixmatch search", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Optuna hyperparameter search with pruning; every trial is an MLflow run "
                            "under one parent run per study. Re-running the same command resumes the study.",
                epilog="search spec:" + __doc__.split("A spec looks like:", 1)[1])
    p.add_argument("spec", metavar="SPEC", help="search spec YAML (see below)")
    p.add_argument("--trials", type=_positive(int),
                   help="total finished (COMPLETE + PRUNED) trials of the study, counting earlier runs "
                        "and other workers (default: the spec's trials)")
    p.add_argument("--timeout", type=_positive(float), metavar="S",
                   help="stop starting new trials after S seconds of this run (default: the spec's)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage (default sqlite:///optuna/STUDY.db; postgresql://... to share with workers)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the spec's name)")
    p.add_argument("--heartbeat-seconds", type=_positive(int), metavar="S",
                   help="trial heartbeat; a trial silent for 3x this is failed and retried (default 30)")
    p.add_argument("--out", metavar="DIR", help="where best.yaml and the plots go (default optuna/STUDY)")
    gpus.add_arguments(p)
    p.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)   # set by --workers-per-gpu
    return p


def search_main(argv: list[str]) -> int:
    args = search_parser().parse_args(argv)

    from mixmatch_core.tracking import check_reachable
    from sweeps.store import StorageError, check_storage_url, default_storage
    with user_errors(StorageError):
        spec = load_search_spec(args.spec)
        if args.trials is not None:
            spec.trials = args.trials
        if args.timeout is not None:
            spec.timeout_seconds = args.timeout
        study_name = args.study if args.study is not None else spec.name
        if not study_name.strip():
            raise ConfigError("--study: the study name must not be empty")
        storage_url = args.storage or default_storage(study_name)
        check_storage_url(storage_url)
        out_dir = Path(args.out or Path("optuna") / _safe_name(study_name))
        if spec.objective == "test_error":
            print(TEST_OBJECTIVE_WARNING, file=sys.stderr)
        slots = gpus.slots_from_args(args)
        check_reachable()
        if slots is not None:   # N pinned search processes per GPU share the study; then the outputs
            from mixmatch_core.tracking import client
            from sweeps.store import open_storage
            # Optuna's and MLflow's tables, once: N processes creating them at once collide
            open_storage(storage_url)
            client().search_experiments(max_results=1)
            child = gpus.strip_options(argv, {"--workers-per-gpu": True, "--gpus": True})
            gpus.run_pinned(slots, lambda s: [sys.executable, "-m", "mixmatch_cli", "search", *child, "--as-worker"],
                            log=lambda m: print(m, file=sys.stderr, flush=True))
        role = "worker" if args.as_worker else "finish" if slots is not None else "all"
        return run_search(spec, study_name, storage_url, out_dir, args.heartbeat_seconds, role=role)
