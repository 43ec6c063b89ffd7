"""Search specs: which config fields an Optuna study searches, and how.

Owns the search spec format and its validation (one line naming the key, before anything is
started or written) and `SearchSpec`, which the study (search.py) turns into trials; the
search's --help shows this text from its example on. A spec looks like:

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
    seeds: [1, 2, 3]                  # optional: each trial trains one run per seed (labeled split);
                                      # objective = their mean, pruned on the mean over the seeds

Pruner steps are training steps (each evaluation reports at its step), so `n_warmup_steps`,
`min_resource` and `max_resource` are in steps. A trial's checkpoint lives in
OUT_DIR/STUDY/RUN_NAME-CELLKEY: a retried trial (same params) resumes from it, and two studies
never share a checkpoint or an MLflow run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixmatch_core.config import FIELDS, ConfigError, did_you_mean, load_yaml, name_unknown, resolve

from .spec import SPEC_KEYS

SEARCH_KEYS = {"name", "experiment", "base", "space", "sampler", "pruner", "trials", "timeout_seconds",
               "objective", "seed", "seeds", "description"}
DIMENSION_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "step", "log"},
                  "categorical": {"type", "choices"}}
# Options each sampler/pruner accepts in its mapping form (all non-negative integers).
SAMPLER_OPTIONS = {"tpe": {"n_startup_trials"}, "random": set(), "grid": set()}
PRUNER_OPTIONS = {"median": {"n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"},
                  "hyperband": {"min_resource", "max_resource", "reduction_factor"}, "none": set()}
OBJECTIVES = ("val_error", "test_error")
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
    seeds: list[int] | None = None   # a trial's training seeds (None: the base's one seed)

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
        err(f"space: unknown config field '{name}'{did_you_mean(name, FIELDS)}; known fields: {', '.join(FIELDS)}")
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


def _seeds(seeds, space: dict, err) -> list[int] | None:
    """The spec's `seeds:` (each trial trains one run per seed), checked."""
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(_is_int(x) and x >= 0 for x in seeds)
                              or len(set(seeds)) != len(seeds)):
        err(f"seeds must be a non-empty list of distinct integers >= 0, got {seeds!r}")
    if seeds is not None and "seed" in space:
        err("space.seed cannot be searched when seeds: lists the seeds every trial trains")
    return seeds


def load_search_spec(path: str) -> SearchSpec:
    """Read and validate a search spec; every problem is one ConfigError line naming the key."""
    raw = load_yaml(path, "search spec")

    def err(msg: str):
        raise ConfigError(f"search spec '{path}': {msg}")

    unknown = set(raw) - SEARCH_KEYS
    sweep_keys = sorted(unknown & SPEC_KEYS)
    if sweep_keys and "space" not in raw:
        raise ConfigError(f"'{path}' is a sweep spec (it has {', '.join(sweep_keys)}), not a search spec: "
                          f"run it with `mixmatch sweep {path}`")
    if unknown:
        err(f"unknown key(s) {name_unknown(unknown, SEARCH_KEYS)}; allowed: {', '.join(sorted(SEARCH_KEYS))}")
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
    seeds = _seeds(raw.get("seeds"), space, err)
    experiment = str(raw.get("experiment") or base.get("experiment") or "mixmatch")
    if not experiment.strip():
        err("experiment must not be empty")
    name = str(raw.get("name") or Path(path).stem)
    return SearchSpec(name=name, path=str(path), experiment=experiment, base=dict(base), space=space,
                      sampler=sampler, pruner=pruner, objective=objective, trials=trials,
                      timeout_seconds=float(timeout) if timeout is not None else None, seed=seed,
                      description=str(raw.get("description", "")), seeds=seeds)
