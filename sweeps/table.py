"""Paper-style error tables of a sweep, built from what MLflow holds: `mixmatch table`.

Owns: reading a sweep's cell runs from MLflow into a tidy per-run DataFrame (`load_runs`),
deciding which run stands for each cell, aggregating over seeds (`build_table`), the paper's
numbers (results/paper_reference.csv) beside ours, the difference of every variant to the full
method with Welch's t-test, and the renderers (Markdown, LaTeX/booktabs, CSV, standalone
HTML), plus `export`, which the sweep runner calls at the end of a sweep.

The rules, in one place:
- A cell (one cell_key) counts once: its newest FINISHED run that has an `error` metric. A cell
  without one is shown by what happened to its newest run: failed, killed or running; a planned
  cell without any run is missing. None of them is dropped: a table cell with fewer finished
  seeds than planned reads `11.20 ± 0.40 (n=2/3, 1 failed)`.
- Value = mean ± sample std (ddof=1) of `error` (100 - median accuracy of the last evaluations,
  in %) over the finished seeds; the std is left out when only one seed finished.
- Rows are (dataset, method, variant) plus any other identity field that takes several values
  within one of them (e.g. a grid over `steps`), so different configs are never averaged as
  if they were seeds. The full method (`mixmatch`) comes first, then Table 4's order.
- Bold: the lowest error of each label-count column, when at least two rows have a number.
- Layouts (rows = variants, columns = label counts in both): `labels` is the paper's Table 5
  (many label counts; the paper's numbers come as two rows under each of ours: "paper" and
  "Δ vs paper", preferring Table 5's 5-split means); `ablation` is Table 4 (few label counts;
  "paper" and "Δ" columns next to each label count, preferring Table 4's single-split
  numbers). `auto` takes the spec's `layout:` if it names one, else `labels` when the sweep
  has >= 3 label counts and <= 4 rows, else `ablation`.
- Reference matching: same dataset, model, method, variant and n_labeled. `digits` never
  matches. An `npz:PATH` dataset matches only when the file's stem is exactly a paper dataset
  name (npz:/data/cifar10.npz -> cifar10): any other npz may be a subset or another split.
"""

from __future__ import annotations

import html
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmatch_core.config import FIELDS, Config, ConfigError
from mixmatch_core.methods import FULL_METHOD, METHODS

from .spec import LAYOUTS, file_stem

FORMATS = ("markdown", "latex", "csv", "html")
REFERENCES = ("paper", "none")
FULL = FULL_METHOD          # the row every other row is compared against (Welch's t-test)
REFERENCE_CSV = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"
# The full method, its Table 4 ablations in the paper's order, then every other method in the
# registry's order (Table 5's), the fully supervised recipe last; other rows follow by name.
ROW_ORDER = (FULL, "k1", "k3", "k4", "no_sharpen", "ema_guess", "no_ema", "no_mixup", "mixup_labeled_only",
             "mixup_unlabeled_only", "mixup_separate", *(m for m in METHODS if m != FULL), "fully_supervised")
# Which of the paper's tables each layout prefers when several have the same cell.
PREFERRED_TABLES = {"labels": (5, 6, 7, 1, 2, 4), "ablation": (4, 5, 6, 7, 1, 2)}
PAPER_DATASETS = ("cifar10", "cifar100", "svhn", "svhn_extra", "stl10")
IDENTITY = tuple(n for n, f in FIELDS.items() if not f.metadata.get("runtime"))
PARAM_COLUMNS = [f"params.{f}" for f in IDENTITY]
# Fields that place a cell in the table; any other identity field that varies becomes part of the row.
PLACED = ("dataset", "n_labeled", "seed", "method", "variant")
PLACE = ["dataset", "model", "n_labeled", "seed", "method", "variant"]     # what a cell shows of its config
RUN_COLUMNS = ["sweep", "run_id", "run_name", "cell_key", "dataset", "model", "n_labeled", "seed", "method",
               "variant", "status", "error", "error_last", "error_best", "error_raw", "failure_reason",
               "start_time", "end_time", "experiment_id", "parent_run_id",
               "steps_per_s", "host", "device_name", "num_threads", "code_version"]   # the last five: the report
CELL_COLUMNS = ["cell_key"] + PLACE + ["planned", "state", "error", "run_id", "n_runs", "failure_reason"] \
    + PARAM_COLUMNS
STATES = ("failed", "killed", "running", "missing")    # a cell without a finished run
DASH = "—"                                             # no number (the paper has none, or no cell)
SEARCH_MAX_RUNS = 1_000_000                            # runs one search may return (MLflow pages them)


# ---- reading MLflow ----------------------------------------------------------------------------
def _check_name(sweep: str) -> None:
    # MLflow's filter grammar has no escape for quotes inside a string literal.
    if not sweep or "'" in sweep or '"' in sweep:
        raise ConfigError(f"sweep: name {sweep!r} must be non-empty and contain no quotes")


def _experiment_ids(experiment: str | None) -> list[str]:
    from mixmatch_core.tracking import client, tracking_uri

    if experiment is None:
        return [e.experiment_id for e in _fluent().search_experiments()]
    exp = client().get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"experiment: no MLflow experiment named '{experiment}' in {tracking_uri()}")
    return [exp.experiment_id]


def _fluent():
    """mlflow's fluent API (it pages through results itself) pointed at our tracking store."""
    import mlflow

    from mixmatch_core.tracking import tracking_uri
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
            "code_version": t.get("code_version"), **{f"params.{k}": p.get(k) for k in IDENTITY}}


def load_runs(sweep: str, experiment: str | None = None) -> pd.DataFrame:
    """The sweep's cell runs (tags sweep=SWEEP, mixmatch.role=cell), one row per run, newest
    first: the RUN_COLUMNS plus `params.<field>` for every identity config field. `experiment`
    None searches every experiment of the tracking store."""
    _check_name(sweep)
    runs = search_runs(_experiment_ids(experiment), f"tags.sweep = '{sweep}' and tags.`mixmatch.role` = 'cell'")
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


def known_sweeps(experiment: str | None = None) -> list[str]:
    """Names of the sweeps whose parent run the store holds (for the 'no such sweep' message)."""
    runs = search_runs(_experiment_ids(experiment), "tags.`mixmatch.role` = 'sweep'")
    return sorted({r.data.tags["sweep"] for r in runs if "sweep" in r.data.tags})


@dataclass
class Source:
    """What a table or plot is made from: the sweep's runs and, from a spec, its planned cells."""
    sweep: str
    runs: pd.DataFrame
    planned: list[Config] | None
    layout: str = "auto"            # the spec's `layout:`; auto without a spec
    experiment: str | None = None
    spec: Any = None                # the Spec, when given one


def add_source_arguments(p) -> None:
    """SWEEP_OR_SPEC and --experiment, as every command reading a sweep from MLflow takes them."""
    p.add_argument("sweep", metavar="SWEEP_OR_SPEC", help="sweep spec YAML, or a sweep name")
    p.add_argument("--experiment", metavar="NAME",
                   help="MLflow experiment (default: the spec's; for a sweep name, all experiments)")


def is_spec_path(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or Path(arg).is_file()


def load_source(sweep_or_spec: str, experiment: str | None = None) -> Source:
    """A spec path gives the sweep name, experiment and planned cells; a bare sweep name gives
    only what MLflow holds and must match at least one run."""
    from mixmatch_core.tracking import client

    if is_spec_path(sweep_or_spec):
        from sweeps.spec import load_spec
        spec = load_spec(sweep_or_spec)
        exp = experiment or spec.experiment
        if experiment is None and client().get_experiment_by_name(exp) is None:
            runs = empty_runs()         # nothing has run yet: every planned cell is missing
        else:
            runs = load_runs(spec.name, exp)
        return Source(spec.name, runs, spec.cells(), spec.layout, exp, spec)
    runs = load_runs(sweep_or_spec, experiment)
    if runs.empty:
        names = known_sweeps(experiment)
        where = f"experiment '{experiment}'" if experiment else "any experiment"
        raise ConfigError(f"sweep: no cell runs tagged sweep='{sweep_or_spec}' in {where}; known sweeps: "
                          + (", ".join(names[:20]) if names else "none") + " (or pass the spec file)")
    return Source(sweep_or_spec, runs, None, "auto", experiment)


# ---- the paper's numbers ---------------------------------------------------------------------
def load_reference(path: str | Path = REFERENCE_CSV) -> pd.DataFrame:
    """results/paper_reference.csv: dataset, model, table, paper_label, method, variant,
    n_labeled, error_mean, error_std, n_splits, note (error in %)."""
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"reference: '{path}' does not exist; use --reference none") from None


def reference_dataset(dataset: str) -> str | None:
    """The paper dataset our dataset is compared with, or None (see the module docstring)."""
    if dataset in PAPER_DATASETS:
        return dataset
    if dataset.startswith("npz:"):
        stem = Path(dataset[4:]).name.removesuffix(".npz")
        return stem if stem in PAPER_DATASETS else None
    return None


# ---- the table ---------------------------------------------------------------------------------
@dataclass
class Entry:
    """One rendered entry of a grid (a number with its markers, a label or a dash)."""
    text: str
    bold: bool = False


@dataclass
class Grid:
    """One rectangular table: header, rows of entries, and each row's kind (ours | paper | delta)."""
    title: str
    header: list[str]
    rows: list[list[Entry]]
    kinds: list[str]


@dataclass
class Table:
    sweep: str
    layout: str                      # labels | ablation (auto resolved)
    main: Grid
    vs_full: Grid | None             # each variant minus the full method, with Welch's t-test
    notes: list[str]
    runs: pd.DataFrame               # tidy, one row per run plus planned cells without a run; `row`
                                     # is the run's table row, `counted` marks its cell's result
    cells: pd.DataFrame              # aggregated, one row per (table row, n_labeled)
    reference_used: bool = False
    extra_axes: list[str] = field(default_factory=list)
    outcomes: pd.DataFrame | None = None   # one row per cell (planned or seen): state, error, run_id, row


def choose_layout(n_label_counts: int, n_rows: int) -> str:
    """`auto`: Table 5 (labels) for a label-count sweep of a few methods, else Table 4."""
    return "labels" if n_label_counts >= 3 and n_rows <= 4 else "ablation"


# Step 1: which run stands for each cell ----------------------------------------------------------
def _plan_frame(planned: list[Config]) -> pd.DataFrame:
    return pd.DataFrame([{"cell_key": c.cell_key, "run_name": c.run_name, **{f: getattr(c, f) for f in PLACE},
                          **{f"params.{f}": str(getattr(c, f)) for f in IDENTITY}} for c in planned],
                        columns=["cell_key", "run_name"] + PLACE + PARAM_COLUMNS)


def _cell_outcomes(runs: pd.DataFrame, planned: list[Config] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per cell (planned first, in plan order, then cells seen only in MLflow, newest
    first) with its state and counted error; and the runs with a `counted` column (plus a
    MISSING row per planned cell that has no run)."""
    runs = runs.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)
    # A cell's result is its newest FINISHED run with an error (runs are newest first here).
    finished = runs[runs["status"].eq("FINISHED") & runs["error"].notna()]
    runs["counted"] = runs.index.isin(finished.drop_duplicates("cell_key").index)
    counted = runs[runs["counted"]]
    # The counted run speaks for its cell; a cell without one is shown by its newest run. Cells
    # keep the order in which their newest run appears.
    first_seen = runs["cell_key"].drop_duplicates()
    seen = pd.concat([counted, runs]).drop_duplicates("cell_key")
    seen = seen.assign(n_runs=seen["cell_key"].map(runs["cell_key"].value_counts(dropna=False)),
                       _first=seen["cell_key"].map(pd.Series(range(len(first_seen)), index=first_seen.values)))
    seen = seen.sort_values("_first", kind="stable")
    outcome = ["cell_key", "status", "counted", "error", "run_id", "failure_reason", "n_runs"]
    plan = _plan_frame(planned or [])
    parts = [plan.merge(seen[outcome], on="cell_key", how="left").assign(planned=True),
             seen[~seen["cell_key"].isin(plan["cell_key"])].assign(planned=planned is None)]
    cells = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) \
        else parts[0]
    cells["planned"] = cells["planned"].astype(bool)
    has_run, counts = cells["status"].notna(), cells["counted"].eq(True)
    cells["state"] = np.select([counts, ~has_run], ["finished", "missing"],
                               cells["status"].map(_state).fillna("failed"))
    cells["failure_reason"] = cells["failure_reason"].where(
        ~counts & has_run & cells["status"].ne("FINISHED"),
        np.where(~counts & cells["status"].eq("FINISHED"), "finished without an error metric", None))
    cells["error"] = cells["error"].where(counts)
    cells["n_runs"] = cells["n_runs"].fillna(0).astype(int)
    missing = cells.loc[~has_run, ["run_name", "cell_key"] + PLACE].assign(
        sweep=None, run_id=None, status="MISSING", counted=False)
    if len(missing):
        runs = pd.concat([runs, missing], ignore_index=True)
    return cells[CELL_COLUMNS], runs


def _state(status: str) -> str:
    return {"RUNNING": "running", "SCHEDULED": "running", "KILLED": "killed"}.get(status, "failed")


def _extra_axes(cells: pd.DataFrame) -> list[str]:
    """Identity fields (other than the placed ones) that take several values within one
    (dataset, method, variant): they must split rows, not be averaged as seeds."""
    cols = [f"params.{f}" for f in IDENTITY if f not in PLACED]
    if cells.empty:
        return []
    counts = cells.groupby(["dataset", "method", "variant"], dropna=False)[cols].nunique()
    return [c.removeprefix("params.") for c in cols if (counts[c] > 1).any()]


# Step 2: aggregate over seeds --------------------------------------------------------------------
def _aggregate(cells: pd.DataFrame, row_cols: list[str]) -> pd.DataFrame:
    """One record per (row, n_labeled): counts by state, the finished errors, mean ± std
    (ddof=1), and the models seen; `row` is the tuple of row_cols."""
    g = cells.assign(row=list(cells[row_cols].itertuples(index=False, name=None)),
                     finished=cells["state"].eq("finished"),
                     **{f"n_{s}": cells["state"].eq(s) for s in STATES})
    agg = g.groupby(["row", "n_labeled"], sort=False).agg(
        n_planned=("cell_key", "size"), n_finished=("finished", "sum"),
        **{f"n_{s}": (f"n_{s}", "sum") for s in STATES},
        errors=("error", lambda e: [float(x) for x in e.dropna()]),
        error_mean=("error", "mean"), error_std=("error", "std"),
        models=("model", lambda m: tuple(m.dropna().unique()))).reset_index()
    return agg.astype({c: int for c in ["n_planned", "n_finished"] + [f"n_{s}" for s in STATES]})


def _row_models(agg: pd.DataFrame) -> dict[tuple, str | None]:
    """Each row's model: the one model of its first label count, None when it has several."""
    first = agg.groupby("row", sort=False)["models"].first()
    return {r: str(m[0]) if len(m) == 1 else None for r, m in first.items()}


def _sort_value(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _row_sort_key(row: tuple) -> tuple:
    dataset, method, variant, *vals = row
    order = ROW_ORDER.index(variant) if variant in ROW_ORDER else len(ROW_ORDER)
    return (str(dataset), order, str(variant), str(method), tuple(_sort_value(v) for v in vals))


def _row_label(row: tuple, extras: list[str], multi_dataset: bool) -> str:
    dataset, method, variant, *vals = row
    label = str(variant)
    tags = [f"method={method}"] if method not in (FULL, variant) else []
    tags += [f"{k}={v}" for k, v in zip(extras, vals)]
    if tags:
        label += " [" + ", ".join(tags) + "]"
    return f"{dataset}: {label}" if multi_dataset else label


# Step 3: the paper's numbers ---------------------------------------------------------------------
@dataclass
class Paper:
    """The paper's number for each (row, n_labeled) that has one, and why rows have none."""
    numbers: dict[tuple, dict]       # (row, n) -> the reference record (table, error_mean, error_std)
    datasets: set[str]               # paper datasets our rows were compared with
    models: list[str]                # when no number matched: the models the paper used there


def _paper_numbers(rows: list[tuple], label_counts: list[int], models: dict, layout: str,
                   path: str | Path) -> Paper:
    """Same dataset, method, variant and n_labeled, and the row's model when it has one; where
    several of the paper's tables have the cell, the layout's preferred table wins."""
    ref = load_reference(path)
    rank = {t: i for i, t in enumerate(PREFERRED_TABLES[layout])}
    ref = ref.assign(_rank=ref["table"].map(rank).fillna(99)).sort_values(["_rank", "table"], kind="stable")
    ref = ref.assign(_order=range(len(ref)))
    wanted = [(r, reference_dataset(str(r[0])), n) for r in rows for n in label_counts]
    wanted = pd.DataFrame([(r, ds, r[1], r[2], n, models.get(r)) for r, ds, n in wanted
                           if ds is not None and ds in set(ref["dataset"])],
                          columns=["row", "dataset", "method", "variant", "n_labeled", "row_model"])
    m = wanted.merge(ref, on=["dataset", "method", "variant", "n_labeled"])
    m = m[m["row_model"].isna() | m["row_model"].eq(m["model"])]
    m = m.sort_values("_order", kind="stable").drop_duplicates(["row", "n_labeled"])
    numbers = {(r, n): rec for r, n, rec in zip(m["row"], m["n_labeled"], m.to_dict("records"))}
    datasets = set(wanted["dataset"])
    # The paper's numbers are per model: a small CNN on CIFAR-10 gets none (a WRN-28-2 number
    # beside it would read as a reproduction gap); the note says why the column is absent.
    models_used = sorted({str(x) for x in ref.loc[ref["dataset"].isin(datasets), "model"]}) if not numbers else []
    return Paper(numbers, datasets, models_used)


# Step 4: each variant against the full method ----------------------------------------------------
def _vs_full(agg: pd.DataFrame, rows: list[tuple], label_counts: list[int]) -> dict[tuple, dict]:
    """(row, n) -> the difference to the full method's row (same dataset and extra axes) at the
    same label count, with Welch's t-test when both sides have >= 2 finished seeds; text only
    (a dash) where one side has no finished seed."""
    full = {r: (r[0], FULL, FULL, *r[3:]) for r in rows}
    pairs = pd.DataFrame([(r, full[r], n) for r in rows if full[r] != r and full[r] in full for n in label_counts],
                         columns=["row", "full", "n_labeled"])
    side = agg[["row", "n_labeled", "n_finished", "errors", "error_mean"]]
    m = pairs.merge(side, on=["row", "n_labeled"], how="left").merge(
        side.rename(columns={"row": "full"}), on=["full", "n_labeled"], how="left", suffixes=("", "_full"))
    out = {}
    for rec in m.to_dict("records"):
        key = (rec["row"], rec["n_labeled"])
        if not (rec["n_finished"] > 0 and rec["n_finished_full"] > 0):    # NaN (no record) is not > 0
            out[key] = {"text": DASH}
            continue
        d = rec["error_mean"] - rec["error_mean_full"]
        c = {"diff_full": d, "welch_t": np.nan, "welch_p": np.nan, "test_note": "n too small"}
        if rec["n_finished"] >= 2 and rec["n_finished_full"] >= 2:
            c["welch_t"], c["welch_p"] = _welch(rec["errors"], rec["errors_full"])
            c["test_note"] = f"Welch {_p_text(c['welch_p'])}"
        c["text"] = f"{_signed(d)} ({c['test_note'].removeprefix('Welch ')})"
        out[key] = c
    return out


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    import warnings
    from scipy.stats import ttest_ind
    with warnings.catch_warnings():   # zero variance on both sides: p is nan, shown as p=n/a
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


def _p_text(p: float) -> str:
    if math.isnan(p):
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


# Step 5: the best of each column -----------------------------------------------------------------
def _best(agg: pd.DataFrame) -> set[tuple]:
    """(row, n) with the lowest error (to 2 decimals, as shown) of its label-count column, when
    at least two rows have a number there."""
    fin = agg[agg["n_finished"] > 0]
    shown = fin["error_mean"].map(lambda v: round(v, 2))
    by_n = shown.groupby(fin["n_labeled"])
    is_best = shown.eq(by_n.transform("min")) & by_n.transform("size").ge(2)
    return set(zip(fin.loc[is_best, "row"], fin.loc[is_best, "n_labeled"]))


# Step 6: the text of every entry and the grids ---------------------------------------------------
def _fmt_mean(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n >= 2 else f"{mean:.2f}"


def _signed(d: float) -> str:
    return "+0.00" if abs(d) < 0.005 else f"{d:+.2f}"


def _value_text(a: dict) -> str:
    """`11.20 ± 0.40`, `11.20 ± 0.40 (n=2/3, 1 failed)`, `failed`, `1 failed, 1 missing`."""
    states = [(a[f"n_{s}"], s) for s in STATES if a[f"n_{s}"]]
    if a["n_finished"] == 0:
        if not states:
            return DASH
        return states[0][1] if len(states) == 1 else ", ".join(f"{k} {s}" for k, s in states)
    text = _fmt_mean(a["error_mean"], a["error_std"], a["n_finished"])
    if a["n_finished"] < a["n_planned"]:
        text += f" (n={a['n_finished']}/{a['n_planned']}" + "".join(f", {k} {s}" for k, s in states) + ")"
    return text


def _paper_text(p: dict | None) -> str:
    if p is None:
        return DASH
    return f"{p['error_mean']:.2f}" + ("" if pd.isna(p["error_std"]) else f" ± {p['error_std']:.2f}")


def _delta_text(p: dict | None, a: dict | None) -> str:
    if p is None or not a or not a["n_finished"]:
        return DASH
    return _signed(a["error_mean"] - p["error_mean"])


@dataclass
class _Parts:
    """What the grids and notes are made of (the outputs of steps 2 to 5)."""
    agg: dict[tuple, dict]           # (row, n) -> aggregated record
    rows: list[tuple]
    label_counts: list[int]
    labels: dict[tuple, str]
    paper: Paper
    comparisons: dict[tuple, dict]
    best: set[tuple]


def _main_grid(p: _Parts, title: str, layout: str) -> Grid:
    use_ref, ref = bool(p.paper.numbers), p.paper.numbers

    def ours(r, n) -> Entry:
        a = p.agg.get((r, n))
        return Entry(_value_text(a) if a else DASH, (r, n) in p.best)

    header, lines, kinds = ["variant"], [], []
    if layout == "ablation" and use_ref:
        # Table 4: the paper's number and the difference right of each of ours.
        header += [h for n in p.label_counts for h in (str(n), "paper", "Δ")]
        for r in p.rows:
            lines.append([Entry(p.labels[r])] + [e for n in p.label_counts for e in (
                ours(r, n), Entry(_paper_text(ref.get((r, n)))),
                Entry(_delta_text(ref.get((r, n)), p.agg.get((r, n)))))])
            kinds.append("ours")
        return Grid(title, header, lines, kinds)
    # Table 5: the paper's numbers and the differences as two rows under each of ours.
    header += [str(n) for n in p.label_counts]
    for r in p.rows:
        lines.append([Entry(p.labels[r])] + [ours(r, n) for n in p.label_counts])
        kinds.append("ours")
        tables = sorted({int(ref[(r, n)]["table"]) for n in p.label_counts if (r, n) in ref})
        if tables:
            lines.append([Entry(f"paper (Table {', '.join(map(str, tables))})")]
                         + [Entry(_paper_text(ref.get((r, n)))) for n in p.label_counts])
            lines.append([Entry("Δ vs paper")]
                         + [Entry(_delta_text(ref.get((r, n)), p.agg.get((r, n)))) for n in p.label_counts])
            kinds += ["paper", "delta"]
    return Grid(title, header, lines, kinds)


def _vs_full_grid(p: _Parts) -> Grid | None:
    rows = [r for r in p.rows if any((r, n) in p.comparisons for n in p.label_counts)]
    if not rows:
        return None
    return Grid(f"Difference to the full method ({FULL}) at the same label count, Welch's t-test over seeds",
                ["variant"] + [str(n) for n in p.label_counts],
                [[Entry(p.labels[r])] + [Entry(p.comparisons.get((r, n), {}).get("text", DASH))
                                         for n in p.label_counts] for r in rows], ["ours"] * len(rows))


# Step 7: the notes under the table ---------------------------------------------------------------
def _notes(p: _Parts, models: dict, reference: str, datasets: list[str], planned, cells: pd.DataFrame,
           has_vs_full: bool) -> list[str]:
    notes = ["error: 100 - median test accuracy of the last evaluations, in %; "
             "mean ± sample std (ddof=1) over finished seeds."]
    if any(a["n_finished"] < a["n_planned"] for a in p.agg.values()):
        notes.append("(n=k/m): k of m cells finished; failed, killed, running, missing: "
                     "cells without a finished run.")
    if p.best:
        notes.append("bold: lowest error in its column.")
    if p.paper.numbers:
        used = sorted({int(x["table"]) for x in p.paper.numbers.values()})
        notes.append(f"paper: Berthelot et al. 2019, Table{'s' if len(used) > 1 else ''} "
                     f"{', '.join(map(str, used)) or '-'}"
                     f"{' (Table 4: one split)' if 4 in used else ''}; Δ = ours - paper; "
                     f"{DASH}: the paper has no number.")
    elif p.paper.models:
        ours = sorted({str(m) for m in models.values() if m}) or ["this model"]
        notes.append(f"paper: no numbers for {', '.join(ours)} (its {', '.join(sorted(p.paper.datasets))} numbers "
                     f"are for {', '.join(p.paper.models)}); not shown.")
    elif reference == "paper":
        notes.append(f"paper: no numbers for {', '.join(datasets) or 'this sweep'}.")
    if has_vs_full:
        notes.append("difference to the full method: Welch's t-test when both sides have >= 2 finished "
                     "seeds, else n too small.")
    if planned is None:
        notes.append("cells known from MLflow only (no spec given): cells that never started are not shown.")
    elif (~cells["planned"]).any():
        notes.append(f"{int((~cells['planned']).sum())} cell(s) with runs are not in the spec's plan; "
                     "they are included.")
    return notes


# Step 8: the tidy outputs ------------------------------------------------------------------------
def _cells_frame(p: _Parts, agg: pd.DataFrame, models: dict, extras: list[str], sweep: str) -> pd.DataFrame:
    """Aggregated, one row per (table row, n_labeled), in table order, with the paper's number
    and the difference to the full method."""
    order = {r: i for i, r in enumerate(p.rows)}
    agg = agg.assign(_order=[order[r] for r in agg["row"]]).sort_values(["_order", "n_labeled"], kind="stable")
    out = []
    for a in agg.to_dict("records"):
        r, n = a["row"], a["n_labeled"]
        ref, c = p.paper.numbers.get((r, n), {}), p.comparisons.get((r, n), {})
        out.append({"sweep": sweep, "row": p.labels[r], "dataset": r[0], "model": models.get(r), "method": r[1],
                    "variant": r[2], **dict(zip(extras, r[3:])), "n_labeled": n,
                    **{k: a[k] for k in ["n_planned", "n_finished"] + [f"n_{s}" for s in STATES]},
                    "error_mean": a["error_mean"], "error_std": a["error_std"], "text": _value_text(a),
                    "best": (r, n) in p.best, "paper_table": ref.get("table"), "paper_error": ref.get("error_mean"),
                    "paper_std": ref.get("error_std"),
                    "diff_paper": a["error_mean"] - ref["error_mean"] if ref and a["n_finished"] else np.nan,
                    "diff_full": c.get("diff_full", np.nan), "welch_t": c.get("welch_t", np.nan),
                    "welch_p": c.get("welch_p", np.nan), "test_note": c.get("test_note"), "errors": a["errors"]})
    return pd.DataFrame(out)


def _labeled_runs(runs: pd.DataFrame, cells: pd.DataFrame, p: _Parts) -> pd.DataFrame:
    """The runs with their table row (via their cell: a cell's row comes from the plan when
    there is one), in table order."""
    order = {r: i for i, r in enumerate(p.rows)}
    row_of = dict(zip(cells["cell_key"], cells["row"]))
    rows = [row_of.get(k, ()) for k in runs["cell_key"]]
    runs = runs.assign(row=[p.labels.get(r) for r in rows], _row=[order.get(r, len(order)) for r in rows])
    runs = runs.sort_values(["_row", "n_labeled", "seed", "start_time"], kind="stable", na_position="last")
    return runs.drop(columns="_row").reset_index(drop=True)


def build_table(runs_df: pd.DataFrame, planned: list | None = None, layout: str = "auto",
                reference: str = "paper", *, sweep: str | None = None,
                reference_path: str | Path = REFERENCE_CSV) -> Table:
    """Aggregate the runs of one sweep (from `load_runs`) into the paper-style table. `planned`
    (a spec's cells) lets cells without any run show as missing; without it only the cells
    MLflow holds are known. See the module docstring for every rule."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: '{layout}' is not one of {', '.join(LAYOUTS)}")
    if reference not in REFERENCES:
        raise ConfigError(f"reference: '{reference}' is not one of {', '.join(REFERENCES)}")
    if sweep is None:
        names = runs_df["sweep"].dropna().unique() if "sweep" in runs_df else []
        sweep = str(names[0]) if len(names) else "sweep"
    runs_df = runs_df.reindex(columns=list(dict.fromkeys(list(runs_df.columns) + RUN_COLUMNS + PARAM_COLUMNS)))
    cells, runs = _cell_outcomes(runs_df, planned)
    extras = _extra_axes(cells)
    row_cols = ["dataset", "method", "variant"] + [f"params.{f}" for f in extras]
    # NaN never equals itself, so it cannot be part of a row key: a run without tags or params
    # (not written by our trainer) gets empty values instead of vanishing.
    cells[row_cols] = cells[row_cols].astype(object).where(cells[row_cols].notna(), "")
    cells["n_labeled"] = cells["n_labeled"].fillna(0).astype(int)
    cells["row"] = list(cells[row_cols].itertuples(index=False, name=None))

    agg = _aggregate(cells, row_cols)
    models = _row_models(agg)
    rows = sorted(set(agg["row"]), key=_row_sort_key)
    label_counts = sorted(set(agg["n_labeled"]))
    layout = choose_layout(len(label_counts), len(rows)) if layout == "auto" else layout
    datasets = sorted({str(r[0]) for r in rows})
    paper = _paper_numbers(rows, label_counts, models, layout, reference_path) if reference == "paper" and rows \
        else Paper({}, set(), [])
    parts = _Parts({(a["row"], a["n_labeled"]): a for a in agg.to_dict("records")}, rows, label_counts,
                   {r: _row_label(r, extras, len(datasets) > 1) for r in rows}, paper,
                   _vs_full(agg, rows, label_counts), _best(agg))

    what = "by number of labels (layout of the paper's Table 5)" if layout == "labels" else \
        "ablations (layout of the paper's Table 4)"
    main = _main_grid(parts, f"Sweep {sweep}: test error (%) on {', '.join(datasets) or 'no data'}, {what}", layout)
    vs_full = _vs_full_grid(parts)
    notes = _notes(parts, models, reference, datasets, planned, cells, vs_full is not None)
    outcomes = cells.assign(row=[parts.labels[r] for r in cells["row"]])
    return Table(sweep, layout, main, vs_full, notes, _labeled_runs(runs, cells, parts),
                 _cells_frame(parts, agg, models, extras, sweep), bool(paper.numbers), extras, outcomes)


# ---- renderers ---------------------------------------------------------------------------------
def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_grid(g: Grid, level: str) -> list[str]:
    out = [f"{level} {_md(g.title)}", "", "| " + " | ".join(_md(h) for h in g.header) + " |",
           "|" + "|".join([":---"] + ["---:"] * (len(g.header) - 1)) + "|"]
    for row, kind in zip(g.rows, g.kinds):
        cells = [f"**{_md(c.text)}**" if c.bold else _md(c.text) for c in row]
        if kind != "ours":
            cells[0] = f"*{cells[0]}*"
        out.append("| " + " | ".join(cells) + " |")
    return out


def to_markdown(table: Table) -> str:
    """GitHub Markdown: the main table, its notes, then the difference to the full method."""
    out = _md_grid(table.main, "###") + [""] + [f"- {_md(n)}" for n in table.notes]
    if table.vs_full is not None:
        out += [""] + _md_grid(table.vs_full, "####")
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", DASH: "---", "≥": r"$\geq$"}


def _tex(text: str) -> str:
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for u, t in _LATEX_UNICODE.items():
        text = text.replace(u, t)
    return text


def _tex_grid(g: Grid, notes: list[str]) -> list[str]:
    out = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(g.title)}}}",
           r"\begin{tabular}{l" + "r" * (len(g.header) - 1) + "}", r"\toprule",
           " & ".join(_tex(h) for h in g.header) + r" \\", r"\midrule"]
    for row, kind in zip(g.rows, g.kinds):
        cells = [rf"\textbf{{{_tex(c.text)}}}" if c.bold else _tex(c.text) for c in row]
        if kind != "ours":
            cells[0] = rf"\quad\textit{{{cells[0]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        out += [r"\par\smallskip", r"{\footnotesize " + " ".join(_tex(n) for n in notes) + "}"]
    return out + [r"\end{table}"]


def to_latex(table: Table) -> str:
    """LaTeX with booktabs (\\usepackage{booktabs}): one table environment per grid."""
    out = [f"% mixmatch table: sweep {table.sweep}; needs \\usepackage{{booktabs}}"]
    out += _tex_grid(table.main, table.notes)
    if table.vs_full is not None:
        out += [""] + _tex_grid(table.vs_full, [])
    return "\n".join(out) + "\n"


TABLE_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222}
h2,h3{font-weight:600}
table{border-collapse:collapse;border-top:2px solid #222;border-bottom:2px solid #222;margin:1em 0}
th,td{padding:.3em .8em;text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{border-bottom:1px solid #222}
tr.paper td,tr.delta td{color:#666;font-style:italic;font-size:.92em}
ul.notes{color:#444;font-size:.9em}"""


def _html_grid(g: Grid, level: str) -> list[str]:
    e = html.escape
    out = [f"<{level}>{e(g.title)}</{level}>", "<table>", "<thead><tr>"
           + "".join(f"<th>{e(h)}</th>" for h in g.header) + "</tr></thead>", "<tbody>"]
    for row, kind in zip(g.rows, g.kinds):
        out.append(f'<tr class="{kind}">' + "".join(
            f"<td><strong>{e(c.text)}</strong></td>" if c.bold else f"<td>{e(c.text)}</td>" for c in row) + "</tr>")
    return out + ["</tbody>", "</table>"]


def html_body(table: Table, level: int = 2) -> list[str]:
    """The tables and their notes as HTML elements (headings from <h{level}>), for to_html and
    the sweep report."""
    e = html.escape
    out = _html_grid(table.main, f"h{level}")
    out += ['<ul class="notes">'] + [f"<li>{e(n)}</li>" for n in table.notes] + ["</ul>"]
    if table.vs_full is not None:
        out += _html_grid(table.vs_full, f"h{level + 1}")
    return out


def to_html(table: Table) -> str:
    """One standalone HTML file with inline CSS."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(table.main.title)}</title>", f"<style>\n{TABLE_CSS}\n</style>", "</head>", "<body>"]
    return "\n".join(out + html_body(table) + ["</body>", "</html>"]) + "\n"


RUNS_CSV_COLUMNS = ["sweep", "run_id", "run_name", "cell_key", "dataset", "model", "n_labeled", "seed", "method",
                    "variant", "status", "counted", "error", "error_last", "error_best", "error_raw",
                    "failure_reason", "start_time", "end_time", "experiment_id", "parent_run_id"]


def runs_csv(table: Table) -> str:
    """Tidy CSV, one row per run (planned cells without a run: status MISSING); `counted` marks
    the run that stands for its cell; times in UTC ISO 8601."""
    df = table.runs.copy()
    for f in table.extra_axes:
        df[f] = df.get(f"params.{f}")
    for col in ("start_time", "end_time"):
        t = pd.to_numeric(df[col], errors="coerce")
        df[col] = pd.to_datetime(t, unit="ms", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    cols = RUNS_CSV_COLUMNS[:10] + ["row"] + table.extra_axes + RUNS_CSV_COLUMNS[10:]
    df["sweep"] = table.sweep
    return df.reindex(columns=cols).to_csv(index=False, float_format="%.6g", lineterminator="\n")


def cells_csv(table: Table) -> str:
    """Aggregated CSV, one row per (table row, n_labeled), with the paper's number and the
    difference to the full method."""
    return table.cells.drop(columns=["errors"], errors="ignore").to_csv(index=False, float_format="%.6g",
                                                                           lineterminator="\n")


# ---- files and the command ---------------------------------------------------------------------
def log_artifacts(paths: list[Path], parent_run_id: str | None, artifact_path: str) -> list[Path]:
    """Log the files to the run (none without a run id); returns them."""
    if parent_run_id and paths:
        from mixmatch_core.tracking import client
        c = client()
        for p in paths:
            c.log_artifact(parent_run_id, str(p), artifact_path)
    return paths


def write_table(table: Table, out_dir: str | Path, formats=FORMATS) -> list[Path]:
    """Write the chosen formats into out_dir; csv gives two files (per run, aggregated)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"format: '{bad[0]}' is not one of {', '.join(FORMATS)}, all")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem, paths = file_stem(table.sweep), []
    texts = {"markdown": [(f"{stem}_table.md", to_markdown)], "latex": [(f"{stem}_table.tex", to_latex)],
             "csv": [(f"{stem}_runs.csv", runs_csv), (f"{stem}_cells.csv", cells_csv)],
             "html": [(f"{stem}_table.html", to_html)]}
    for fmt in formats:
        for name, render in texts[fmt]:
            p = out / name
            p.write_text(render(table), encoding="utf-8")
            paths.append(p)
    return paths


def load_table(sweep_or_spec: str, experiment: str | None = None, layout: str = "auto",
               reference: str = "paper") -> tuple[Source, Table]:
    """The sweep's source and its table; layout auto takes the spec's `layout:` if it names one."""
    src = load_source(sweep_or_spec, experiment)
    return src, build_table(src.runs, src.planned, src.layout if layout == "auto" else layout, reference,
                            sweep=src.sweep)


def export(sweep_or_spec: str, out_dir, formats=("markdown", "latex", "csv", "html"), reference: str = "paper",
           layout: str = "auto", parent_run_id: str | None = None, experiment: str | None = None) -> list[Path]:
    """Build the sweep's table and write it in every format; with `parent_run_id`, also log
    the files as artifacts (folder `tables`) of the sweep's parent run. `layout` auto uses
    the spec's `layout:` when it names one."""
    _, table = load_table(sweep_or_spec, experiment, layout, reference)
    return log_artifacts(write_table(table, out_dir, formats), parent_run_id, "tables")


def table_parser():
    from mixmatch_cli.errors import ArgumentParser, die, user_errors

    p = ArgumentParser(prog="mixmatch table", description="Paper-style error tables of a sweep, from MLflow. "
                "Give the spec file (planned cells are known: missing ones are marked) or the sweep's name.")
    add_source_arguments(p)
    p.add_argument("--format", default="markdown", choices=FORMATS + ("all",),
                   help="output format (default markdown); csv = per-run and aggregated CSV; all needs --out")
    p.add_argument("--out", metavar="DIR", help="write files into DIR (default: print to stdout)")
    p.add_argument("--reference", default="paper", choices=REFERENCES,
                   help="show the paper's numbers beside ours (default paper)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="labels = Table 5, ablation = Table 4; auto = the spec's layout, else labels for "
                        ">= 3 label counts and <= 4 rows (default auto)")
    return p


def table_main(argv: list[str]) -> int:
    from mixmatch_cli.errors import ArgumentParser, die, user_errors

    args = table_parser().parse_args(argv)
    if args.format == "all" and not args.out:
        die("--format all writes several files; give --out DIR")
    with user_errors(out=args.out):
        _, table = load_table(args.sweep, args.experiment, args.layout, args.reference)
        if args.out:
            formats = FORMATS if args.format == "all" else (args.format,)
            for path in write_table(table, args.out, formats):
                print(path)
        else:
            render = {"markdown": to_markdown, "latex": to_latex, "csv": cells_csv, "html": to_html}[args.format]
            sys.stdout.write(render(table))
    return 0
