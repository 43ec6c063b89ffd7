"""What MLflow holds about a sweep: its cell runs, read once into a tidy per-run DataFrame.

Owns every read of a sweep's runs, shared by the table, the plots, the report and the
workers: the runs (`load_runs`, one row per run, newest first), the sweep given as a spec or a
name (`Source`, `load_source`; several sweeps as one, `load_sources`), each cell's result
(`finished_results`: its newest FINISHED run with an `error`, the run the tables count and the
queue adopts), the sweeps a store knows,
metric histories (learning curves), the spec a sweep's parent run logged, and the cell states
its queue holds (`storage_states`, read-only: which cells failed before a run began).

MLflow itself is imported on first use (mixmatch_core.tracking): reading a spec must not pay
for it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mixmatch_core.config import FIELDS, Config, ConfigError
from mixmatch_core.tracking import client, store_exists, tracking_uri

from .spec import Spec, load_spec
from .store import default_sweep_storage, known_states

IDENTITY = tuple(n for n, f in FIELDS.items() if not f.metadata.get("runtime"))
PARAM_COLUMNS = [f"params.{f}" for f in IDENTITY]
RUN_COLUMNS = ["sweep", "run_id", "run_name", "cell_key", "dataset", "model", "n_labeled", "seed", "method",
               "variant", "status", "error", "error_last", "error_best", "error_raw", "failure_reason",
               "start_time", "end_time", "experiment_id", "parent_run_id",
               "steps_per_s", "host", "device_name", "num_threads", "code_version",   # these five: the report
               "labeled_pool"]     # the labeled set the cell drew from (a param; runs without it used train)
SEARCH_MAX_RUNS = 1_000_000                            # runs one search may return (MLflow pages them)
CELL_RUNS = "tags.`mixmatch.role` = 'cell'"


def _check_name(sweep: str) -> None:
    # MLflow's filter grammar has no escape for quotes inside a string literal.
    if not sweep or "'" in sweep or '"' in sweep:
        raise ConfigError(f"sweep: name {sweep!r} must be non-empty and contain no quotes")


def _experiment_ids(experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in _fluent().search_experiments()]
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"experiment: no MLflow experiment named '{experiment}' in {tracking_uri()}")
    return [exp.experiment_id]


def _fluent():
    """mlflow's fluent API (it pages through results itself) pointed at our tracking store."""
    import mlflow       # lazy: MLflow takes seconds to import; reading a spec needs none of it
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def search_runs(exp_ids: list[str], filter_string: str) -> list:
    """Every active run matching the filter, newest first (MLflow pages them: one query per
    10,000 runs, never one per run)."""
    if not exp_ids:
        return []
    return _fluent().search_runs(exp_ids, filter_string, order_by=["attributes.start_time DESC"],
                                 max_results=SEARCH_MAX_RUNS, output_format="list")


def _run_record(r) -> dict:
    t, m, p = r.data.tags, r.data.metrics, r.data.params
    return {"sweep": t.get("sweep"), "run_id": r.info.run_id, "run_name": r.info.run_name,
            "cell_key": t.get("cell_key"), "dataset": t.get("dataset"), "model": p.get("model"),
            "n_labeled": t.get("n_labeled"), "seed": t.get("seed"), "method": t.get("method"),
            "variant": t.get("variant"), "status": r.info.status, "error": m.get("error"),
            "error_last": m.get("error_last"), "error_best": m.get("error_best"), "error_raw": m.get("error_raw"),
            "failure_reason": t.get("failure_reason"), "start_time": r.info.start_time,
            "end_time": r.info.end_time, "experiment_id": r.info.experiment_id,
            "parent_run_id": t.get("mlflow.parentRunId"), "steps_per_s": m.get("steps_per_s"),
            "host": t.get("host"), "device_name": t.get("device_name"), "num_threads": p.get("num_threads"),
            "code_version": t.get("code_version"), "labeled_pool": p.get("labeled_pool"),
            **{f"params.{k}": p.get(k) for k in IDENTITY}}


def load_runs(sweep: str, experiment: str | None = None) -> pd.DataFrame:
    """The sweep's cell runs (tags sweep=SWEEP, mixmatch.role=cell), one row per run, newest
    first: the RUN_COLUMNS plus `params.<field>` for every identity config field. `experiment`
    None searches every experiment of the tracking store."""
    _check_name(sweep)
    runs = search_runs(_experiment_ids(experiment), f"tags.sweep = '{sweep}' and {CELL_RUNS}")
    return _typed(pd.DataFrame([_run_record(r) for r in runs], columns=RUN_COLUMNS + PARAM_COLUMNS))


def empty_runs() -> pd.DataFrame:
    """`load_runs`'s frame with no rows."""
    return _typed(pd.DataFrame(columns=RUN_COLUMNS + PARAM_COLUMNS))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("n_labeled", "seed"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("error", "error_last", "error_best", "error_raw", "steps_per_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def finished_results(exp_id: str, sweep: str, cell_key: str | None = None) -> dict[str, tuple[str, float]]:
    """cell_key -> (run_id, error) of each cell of the sweep (or of the one cell) that has a
    result: its newest FINISHED cell run with an `error` metric, the run the tables count."""
    _check_name(sweep)
    only = f" and tags.cell_key = '{cell_key}'" if cell_key else ""
    out: dict[str, tuple[str, float]] = {}
    for r in search_runs([exp_id], f"tags.sweep = '{sweep}' and {CELL_RUNS} and attributes.status = 'FINISHED'"
                                   + only):
        if "error" in r.data.metrics and "cell_key" in r.data.tags:
            out.setdefault(r.data.tags["cell_key"], (r.info.run_id, r.data.metrics["error"]))
    return out


def known_sweeps(experiment: str | None = None) -> list[str]:
    """Names of the sweeps whose parent run the store holds (for the 'no such sweep' message)."""
    runs = search_runs(_experiment_ids(experiment), "tags.`mixmatch.role` = 'sweep'")
    return sorted({r.data.tags["sweep"] for r in runs if "sweep" in r.data.tags})


def metric_histories(run_ids: list[str], key: str = "test_error") -> dict[str, list[tuple[int, float]]]:
    """run_id -> the metric's (step, value) points, sorted by step (one MLflow call per run)."""
    c = client()
    out = {}
    for rid in run_ids:
        hist = c.get_metric_history(rid, key)
        if hist:
            out[rid] = sorted((m.step, m.value) for m in hist)
    return out


@dataclass
class Source:
    """What a table or plot is made from: the sweep's runs and, from a spec, its planned cells."""
    sweep: str
    runs: pd.DataFrame
    planned: list[Config] | None
    layout: str = "auto"            # the spec's `layout:`; auto without a spec
    experiment: str | None = None
    spec: Spec | None = None        # the Spec, when given one (or found in the parent run: the report)
    parts: list[Source] = dataclasses.field(default_factory=list)   # the sweeps a combined Source joins

    def sources(self) -> list[Source]:
        """The sweeps this Source holds: its parts when it joins several, else itself."""
        return self.parts or [self]

    def notes(self) -> list[str]:
        """Every spec's `notes:`, in the order the sweeps were given."""
        return [n for part in self.sources() if part.spec is not None for n in part.spec.notes]


def is_spec_path(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def source_of_spec(spec: Spec, cells: list[Config], experiment: str | None = None) -> Source:
    """The spec's sweep with `cells` planned (a cell without a run shows as missing)."""
    exp = experiment or spec.experiment
    if not store_exists() or (experiment is None and client().get_experiment_by_name(exp) is None):
        runs = empty_runs()         # nothing has run yet (no store is made for it): every planned cell is missing
    else:
        runs = load_runs(spec.name, exp)
    return Source(spec.name, runs, cells, spec.layout, exp, spec)


def load_source(sweep_or_spec: str, experiment: str | None = None) -> Source:
    """A spec path gives the sweep name, experiment and planned cells; a bare sweep name gives
    only what MLflow holds and must match at least one run."""
    if is_spec_path(sweep_or_spec):
        spec = load_spec(sweep_or_spec)
        return source_of_spec(spec, spec.cells(), experiment)
    if not store_exists():
        raise ConfigError(f"sweep: no MLflow store at {tracking_uri()}, so no sweep '{sweep_or_spec}'; start from "
                          "the folder you ran the sweeps in, or set MLFLOW_TRACKING_URI")
    runs = load_runs(sweep_or_spec, experiment)
    if runs.empty:
        names = known_sweeps(experiment)
        where = f"experiment '{experiment}'" if experiment else "any experiment"
        raise ConfigError(f"sweep: no cell runs tagged sweep='{sweep_or_spec}' in {where}; known sweeps: "
                          + (", ".join(names[:20]) if names else "none") + " (or pass the spec file)")
    return Source(sweep_or_spec, runs, None, "auto", experiment)


def load_sources(sweeps_or_specs: list[str], experiment: str | None = None) -> Source:
    """Several sweeps (each a spec or a name) as one Source: their runs together, their planned
    cells (each cell once) when every one has a plan, the name their names joined by '+'. A
    cell counts once however many sweeps ran it (its newest finished run); the table pairs
    cells that share (dataset, n_labeled, seed), across the sweeps too."""
    sources = [load_source(s, experiment) for s in dict.fromkeys(sweeps_or_specs)]
    if len(sources) == 1:
        return sources[0]
    planned = None
    if all(s.planned is not None for s in sources):
        planned = list({c.cell_key: c for s in sources for c in s.planned}.values())
    runs = pd.concat([s.runs for s in sources], ignore_index=True).drop_duplicates("run_id")
    layouts = {s.layout for s in sources}
    return Source("+".join(s.sweep for s in sources), runs, planned, layouts.pop() if len(layouts) == 1 else "auto",
                  experiment, None, sources)


def spec_from_parent_run(src: Source) -> Spec | None:
    """For a sweep given by name: its spec as its parent run logged it (sweep/spec.yaml, with the
    path it was launched with), for the report's configs, command and notes; None when there is
    none. The tables stay those of `mixmatch table NAME` (cells known from MLflow only)."""
    parents = src.runs["parent_run_id"].dropna().unique()
    if len(parents) != 1:
        return None
    try:
        c = client()
        with tempfile.TemporaryDirectory() as d:
            spec = load_spec(c.download_artifacts(parents[0], "sweep/spec.yaml", d))
        return dataclasses.replace(spec, path=c.get_run(parents[0]).data.tags.get("spec_path", spec.path))
    except Exception:  # noqa: BLE001 - an older sweep, another store: the page says no spec was given
        return None


def storage_states(src: Source, storage: str | None) -> dict | None:
    """The sweep storage's cell states (read-only), when there is one to read; of every sweep a
    combined Source joins (`storage` then serves them all)."""
    states = {}
    for part in src.sources():
        if part.spec is not None or storage is not None:
            states.update(known_states(storage or default_sweep_storage(part.sweep), part.sweep))
    return states or None
