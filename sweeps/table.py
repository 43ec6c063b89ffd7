"""The paper-style error table of a sweep: which run stands for each cell, the aggregation over
seeds, the paper's numbers beside ours and each variant against the full method (paired by
seed where the two share seeds, else Welch: stats.py).

Owns `build_table` (runs as runs.py reads them -> a `Table`: the grids every renderer prints,
their notes, and tidy per-run and per-cell frames for the CSVs, plots and report) and
`table_of` (a Source's table, with its spec's layout and notes). Reading is runs.py, the
paper's numbers paper.py, the formats render.py.

The rules, in one place:
- A cell (one cell_key) counts once: its newest FINISHED run that has an `error` metric. A cell
  without one is shown by what happened to its newest run: failed, killed or running; a planned
  cell without any run is missing, or failed where the sweep's queue says its worker failed it
  before its run began (a foreign checkpoint, data a remote worker lacks: `queue_failed`). None
  of them is dropped: a table cell with fewer finished
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
- Reference matching: same dataset, model, method, variant and n_labeled; which paper's table wins
  where several have the cell, and how a number names its paper and table: paper.py.
- Under the main grid: the error at the last evaluation (`error_last`, mean ± std; where runs
  logged it), the difference of each row to the full method's row at the same label count (one
  line each: Δ, interval, test, p, seeds, P(better), bootstrap; the numbers are stats.py's,
  paired by seed where the rows share seeds), and, with >= 2 label counts, each row's
  interquartile mean over its cells with the stratified bootstrap interval.
- The runs may come from several sweeps (runs.load_sources): rows and pairs do not care which
  sweep a cell came from.
- Notes: the table's own (what the numbers are, markers, the paper, which labeled set cells
  drew from when not `train`), then the spec's `notes:`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixmatch_core.config import Config, ConfigError
from mixmatch_core.methods import FULL_METHOD, row_order

from .paper import REFERENCE_CSV, Paper, paper_numbers, sources_text, table_label
from .runs import IDENTITY, PARAM_COLUMNS, RUN_COLUMNS, Source
from .spec import LAYOUTS
from .stats import PAIRED, Comparison, compare, iqm

REFERENCES = ("paper", "none")
FULL = FULL_METHOD          # the row every other row is compared against (stats.compare)
# The registry's order: each method followed by its variants (the full method and its Table 4
# ablations in the paper's order, then Table 5's methods, the fully supervised recipe last);
# other rows follow by name.
ROW_ORDER = tuple(row_order())
# Fields that place a cell in the table; any other identity field that varies becomes part of the row.
PLACED = ("dataset", "n_labeled", "seed", "method", "variant")
# Fields the notes describe instead: they split rows only where they vary at one label count.
NOTED = ("labeled_pool",)
PLACE = ["dataset", "model", "n_labeled", "seed", "method", "variant"]     # what a cell shows of its config
CELL_COLUMNS = ["cell_key"] + PLACE + ["planned", "state", "error", "error_last", "run_id", "n_runs",
                                      "failure_reason"] \
    + PARAM_COLUMNS
STATES = ("failed", "killed", "running", "missing")    # a cell without a finished run
DASH = "—"                                             # no number (the paper has none, or no cell)
DEFAULT_POOL = "train"      # the labeled set of a run without a `labeled_pool` param
# What each labeled set other than train is, for the note that names it.
POOL_ORIGINS = {"train+unlabeled": "official create_split.py"}
# The difference table's columns (stats.py computes each number; docs/sweeps.md explains them).
VS_FULL_HEADER = ["variant", "labels", "Δ error", "95% interval", "test", "p", "seeds", "P(better)",
                  "bootstrap 95%"]


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
    vs_full: Grid | None             # each variant minus the full method: interval, test, p, P(better)
    notes: list[str]
    runs: pd.DataFrame               # tidy, one row per run plus planned cells without a run; `row`
                                     # is the run's table row, `counted` marks its cell's result
    cells: pd.DataFrame              # aggregated, one row per (table row, n_labeled)
    reference_used: bool = False
    extra_axes: list[str] = field(default_factory=list)
    outcomes: pd.DataFrame | None = None   # one row per cell (planned or seen): state, error, run_id, row
    last: Grid | None = None         # the error at the last evaluation (the headline is the median rule's)
    iqm: Grid | None = None          # each row's interquartile mean over its grid (>= 2 label counts)

    def second_grids(self) -> list[Grid]:
        """The grids printed under the main one and its notes, in order."""
        return [g for g in (self.last, self.vs_full, self.iqm) if g is not None]


def choose_layout(n_label_counts: int, n_rows: int) -> str:
    """`auto`: Table 5 (labels) for a label-count sweep of a few methods, else Table 4."""
    return "labels" if n_label_counts >= 3 and n_rows <= 4 else "ablation"


# Step 1: which run stands for each cell ----------------------------------------------------------
def _plan_frame(planned: list[Config]) -> pd.DataFrame:
    return pd.DataFrame([{"cell_key": c.cell_key, "run_name": c.run_name, **{f: getattr(c, f) for f in PLACE},
                          **{f"params.{f}": str(getattr(c, f)) for f in IDENTITY}} for c in planned],
                        columns=["cell_key", "run_name"] + PLACE + PARAM_COLUMNS)


def _cell_outcomes(runs: pd.DataFrame, planned: list[Config] | None,
                   queue_failed: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per cell (planned first, in plan order, then cells seen only in MLflow, newest
    first) with its state and counted error; and the runs with a `counted` column (plus a
    MISSING row per planned cell that has no run, FAILED where `queue_failed` has its reason)."""
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
    outcome = ["cell_key", "status", "counted", "error", "error_last", "run_id", "failure_reason", "n_runs"]
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
    failed_early = ~has_run & cells["cell_key"].isin(list(queue_failed or {}))
    if failed_early.any():
        cells["failure_reason"] = cells["failure_reason"].astype(object)
        cells.loc[failed_early, "state"] = "failed"
        cells.loc[failed_early, "failure_reason"] = cells.loc[failed_early, "cell_key"].map(queue_failed)
    cells["error"] = cells["error"].where(counts)
    cells["error_last"] = cells["error_last"].where(counts)
    cells["n_runs"] = cells["n_runs"].fillna(0).astype(int)
    missing = cells.loc[~has_run, ["run_name", "cell_key", "failure_reason"] + PLACE].assign(
        sweep=None, run_id=None, status=np.where(failed_early[~has_run], "FAILED", "MISSING"), counted=False)
    if len(missing):
        runs = pd.concat([runs, missing], ignore_index=True)
    return cells[CELL_COLUMNS], runs


def _state(status: str) -> str:
    return {"RUNNING": "running", "SCHEDULED": "running", "KILLED": "killed"}.get(status, "failed")


def _extra_axes(cells: pd.DataFrame) -> list[str]:
    """Identity fields (other than the placed ones) that take several values within one
    (dataset, method, variant): they must split rows, not be averaged as seeds. A NOTED field
    (the notes say which cells used which value) splits rows only where it varies within one
    label count of a row."""
    cols = [f"params.{f}" for f in IDENTITY if f not in PLACED]
    if cells.empty:
        return []
    varies = (cells.groupby(["dataset", "method", "variant"], dropna=False)[cols].nunique() > 1).any()
    noted = [c for c in cols if c.removeprefix("params.") in NOTED]
    if noted:
        at_one_count = ["dataset", "method", "variant", "n_labeled"]
        varies[noted] = (cells.groupby(at_one_count, dropna=False)[noted].nunique() > 1).any()
    return [c.removeprefix("params.") for c in cols if varies[c]]


# Step 2: aggregate over seeds --------------------------------------------------------------------
def _aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """One record per (row, n_labeled): counts by state, the finished errors (a list, and keyed
    by seed for pairing), mean ± std (ddof=1) of the headline error and of the error at the last
    evaluation, and the models seen."""
    g = cells.assign(finished=cells["state"].eq("finished"), **{f"n_{s}": cells["state"].eq(s) for s in STATES},
                     _seed=[_seed_key(s, k) for s, k in zip(cells["seed"], cells["cell_key"])])
    agg = g.groupby(["row", "n_labeled"], sort=False).agg(
        n_planned=("cell_key", "size"), n_finished=("finished", "sum"),
        **{f"n_{s}": (f"n_{s}", "sum") for s in STATES},
        errors=("error", lambda e: [float(x) for x in e.dropna()]),
        error_mean=("error", "mean"), error_std=("error", "std"),
        error_last_mean=("error_last", "mean"), error_last_std=("error_last", "std"),
        n_last=("error_last", "count"),
        models=("model", lambda m: tuple(m.dropna().unique()))).reset_index()
    by_seed = {key: dict(zip(d["_seed"], d["error"].astype(float)))
               for key, d in g[g["error"].notna()].groupby(["row", "n_labeled"], sort=False)}
    agg["by_seed"] = [by_seed.get((r, n), {}) for r, n in zip(agg["row"], agg["n_labeled"])]
    return agg.astype({c: int for c in ["n_planned", "n_finished", "n_last"] + [f"n_{s}" for s in STATES]})


def _seed_key(seed, cell_key: str):
    """What pairs a cell with another row's at the same label count: its seed (its labeled
    split); a cell without a seed tag pairs with nothing."""
    return int(seed) if pd.notna(seed) else f"no seed: {cell_key}"


def _row_models(agg: pd.DataFrame) -> dict[tuple, str | None]:
    """Each row's model: the one model of its first label count, None when it has several."""
    first = agg.groupby("row", sort=False)["models"].first()
    return {r: str(m[0]) if len(m) == 1 else None for r, m in first.items()}


def _sort_value(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def variant_rank(variant: str) -> tuple[int, str]:
    """Where a variant's rows go in every listing of a sweep: the registry's order, then by name."""
    return (ROW_ORDER.index(variant) if variant in ROW_ORDER else len(ROW_ORDER), str(variant))


def _row_sort_key(row: tuple) -> tuple:
    dataset, method, variant, *vals = row
    return (str(dataset), *variant_rank(variant), str(method), tuple(_sort_value(v) for v in vals))


def _row_label(row: tuple, extras: list[str], multi_dataset: bool) -> str:
    dataset, method, variant, *vals = row
    label = str(variant)
    tags = [f"method={method}"] if method not in (FULL, variant) else []
    tags += [f"{k}={v}" for k, v in zip(extras, vals)]
    if tags:
        label += " [" + ", ".join(tags) + "]"
    return f"{dataset}: {label}" if multi_dataset else label


# Step 4: each variant against the full method ----------------------------------------------------
def _vs_full(agg: pd.DataFrame, rows: list[tuple], label_counts: list[int]) -> dict[tuple, Comparison]:
    """(row, n) -> the row against the full method's row (same dataset and extra axes) at the
    same label count, paired by seed where they share seeds (stats.compare); absent where a side
    has no finished seed."""
    by_seed = {(a["row"], a["n_labeled"]): a["by_seed"] for a in agg.to_dict("records")}
    out = {}
    for r in rows:
        full = (r[0], FULL, FULL, *r[3:])
        if full == r or full not in rows:
            continue
        for n in label_counts:
            if (c := compare(by_seed.get((r, n), {}), by_seed.get((full, n), {}))) is not None:
                out[(r, n)] = c
    return out


def _p_text(p: float) -> str:
    if math.isnan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval_text(low: float, high: float) -> str:
    return DASH if math.isnan(low) else f"[{_signed(low)}, {_signed(high)}]"


def _seeds_text(c: Comparison) -> str:
    """`3 pairs`, `2 pairs, 1 unpaired dropped`, or (unpaired) `3 vs 2` finished seeds."""
    if c.test != PAIRED:
        return f"{c.n_variant} vs {c.n_full}"
    return f"{c.n_pairs} pairs" + (f", {c.n_dropped} unpaired dropped" if c.n_dropped else "")


def comparison_entries(c: Comparison) -> list[str]:
    """A comparison as the difference table's columns (VS_FULL_HEADER after variant and labels)."""
    return [_signed(c.diff), _interval_text(c.low, c.high), c.test, _p_text(c.p), _seeds_text(c),
            DASH if math.isnan(c.p_better) else f"{c.p_better:.2f}", _interval_text(c.boot_low, c.boot_high)]


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
    comparisons: dict[tuple, Comparison]
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
        tables = sorted({table_label(ref[(r, n)]) for n in p.label_counts if (r, n) in ref})
        if tables:
            lines.append([Entry(f"paper ({', '.join(tables)})")]
                         + [Entry(_paper_text(ref.get((r, n)))) for n in p.label_counts])
            lines.append([Entry("Δ vs paper")]
                         + [Entry(_delta_text(ref.get((r, n)), p.agg.get((r, n)))) for n in p.label_counts])
            kinds += ["paper", "delta"]
    return Grid(title, header, lines, kinds)


def _vs_full_grid(p: _Parts) -> Grid | None:
    """One line per (variant, label count) with a comparison, in table order."""
    keys = [(r, n) for r in p.rows for n in p.label_counts if (r, n) in p.comparisons]
    if not keys:
        return None
    return Grid(f"Difference to the full method ({FULL}) at the same label count: variant - {FULL}, "
                "in percentage points of error (negative: the variant errs less)", VS_FULL_HEADER,
                [[Entry(p.labels[r]), Entry(str(n))] + [Entry(t) for t in comparison_entries(p.comparisons[r, n])]
                 for r, n in keys], ["ours"] * len(keys))


def _last_grid(p: _Parts) -> Grid | None:
    """The error at the last evaluation, mean ± std over the same finished seeds (runs logged
    before `error_last` existed show a dash)."""
    if not any(a["n_last"] for a in p.agg.values()):
        return None

    def last(a: dict | None) -> str:
        return _fmt_mean(a["error_last_mean"], a["error_last_std"], a["n_last"]) if a and a["n_last"] else DASH
    return Grid("Test error (%) at the last evaluation (not the headline: see the notes)",
                ["variant"] + [str(n) for n in p.label_counts],
                [[Entry(p.labels[r])] + [Entry(last(p.agg.get((r, n)))) for n in p.label_counts] for r in p.rows],
                ["ours"] * len(p.rows))


def _iqm_grid(p: _Parts) -> Grid | None:
    """Each row's interquartile mean over all its finished (label count, seed) cells with the
    stratified bootstrap interval (stats.iqm), where the sweep has >= 2 label counts."""
    if len(p.label_counts) < 2:
        return None
    lines = []
    for r in p.rows:
        by_count = {n: p.agg[r, n]["errors"] for n in p.label_counts if (r, n) in p.agg and p.agg[r, n]["errors"]}
        if by_count:
            point, low, high = iqm(by_count)
            lines.append([Entry(p.labels[r]), Entry(f"{point:.2f}"), Entry(f"[{low:.2f}, {high:.2f}]"),
                          Entry(str(sum(map(len, by_count.values())))), Entry(", ".join(map(str, by_count)))])
    return Grid("Interquartile mean over each row's (label count, seed) cells, test error (%), with a 95% "
                "stratified bootstrap interval (rliable's; compare rows over the same label counts only)",
                ["variant", "IQM", "95% interval", "cells", "label counts"], lines, ["ours"] * len(lines)) \
        if lines else None


# Step 7: the notes under the table ---------------------------------------------------------------
def _notes(p: _Parts, models: dict, reference: str, datasets: list[str], planned, cells: pd.DataFrame,
           has_vs_full: bool, has_last: bool) -> list[str]:
    notes = ["error: 100 - median test accuracy of the last evaluations, in %; "
             "mean ± sample std (ddof=1) over finished seeds."]
    if any(a["n_finished"] < a["n_planned"] for a in p.agg.values()):
        notes.append("(n=k/m): k of m cells finished; failed, killed, running, missing: "
                     "cells without a finished run.")
    if p.best:
        notes.append("bold: lowest error in its column.")
    if p.paper.numbers:
        notes.append(f"paper: {sources_text(p.paper.numbers.values())}; Δ = ours - paper; "
                     f"{DASH}: the paper has no number.")
    elif p.paper.models:
        ours = sorted({str(m) for m in models.values() if m}) or ["this model"]
        notes.append(f"paper: no numbers for {', '.join(ours)} (its {', '.join(sorted(p.paper.datasets))} numbers "
                     f"are for {', '.join(p.paper.models)}); not shown.")
    elif reference == "paper":
        notes.append(f"paper: no numbers for {', '.join(datasets) or 'this sweep'}.")
    if has_last:
        notes.append("last evaluation: the error of the final evaluation alone (papers and ports differ on "
                     "which number they report; the headline is the median rule's).")
    if has_vs_full:
        notes.append("difference to the full method: paired by seed where both share >= 2 seeds (the same "
                     "labeled splits), else Welch's t-test (>= 2 finished seeds each side), else n too small; "
                     "the columns: docs/sweeps.md.")
    if planned is None:
        notes.append("cells known from MLflow only (no spec given): cells that never started are not shown.")
    elif (~cells["planned"]).any():
        notes.append(f"{int((~cells['planned']).sum())} cell(s) with runs are not in the spec's plan; "
                     "they are included.")
    return notes


def _pool_notes(runs: pd.DataFrame, spec_has_notes: bool) -> list[str]:
    """Which labeled set the counted runs drew from, where it is not train (their
    `labeled_pool` param; a run without one used train)."""
    counted = runs[runs["counted"].eq(True)]
    pools = counted["labeled_pool"].where(counted["labeled_pool"].notna(), DEFAULT_POOL)
    notes = []
    for pool in sorted(set(pools) - {DEFAULT_POOL}):
        counts = [str(n) if pools[counted["n_labeled"].eq(n)].eq(pool).all() else f"some {n}"
                  for n in sorted(set(counted.loc[pools.eq(pool), "n_labeled"]))]
        why = [w for w in (POOL_ORIGINS.get(pool), "see the spec's notes" if spec_has_notes else None) if w]
        notes.append(f"labeled set: {'/'.join(counts)}-label cells drew from {pool}"
                     + (f" ({'; '.join(why)})" if why else "") + ".")
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
        ref, c = p.paper.numbers.get((r, n), {}), p.comparisons.get((r, n))
        out.append({"sweep": sweep, "row": p.labels[r], "dataset": r[0], "model": models.get(r), "method": r[1],
                    "variant": r[2], **dict(zip(extras, r[3:])), "n_labeled": n,
                    **{k: a[k] for k in ["n_planned", "n_finished"] + [f"n_{s}" for s in STATES]},
                    "error_mean": a["error_mean"], "error_std": a["error_std"], "text": _value_text(a),
                    "error_last_mean": a["error_last_mean"], "error_last_std": a["error_last_std"],
                    "best": (r, n) in p.best, "paper_table": ref.get("table"), "paper_error": ref.get("error_mean"),
                    "paper_std": ref.get("error_std"),
                    "diff_paper": a["error_mean"] - ref["error_mean"] if ref and a["n_finished"] else np.nan,
                    **_comparison_columns(c), "errors": a["errors"]})
    return pd.DataFrame(out)


COMPARISON_COLUMNS = {"diff_full": "diff", "diff_low": "low", "diff_high": "high", "boot_low": "boot_low",
                      "boot_high": "boot_high", "test": "test", "t": "t", "p": "p", "p_better": "p_better",
                      "n_pairs": "n_pairs", "n_dropped": "n_dropped"}     # cells CSV column -> Comparison field


def _comparison_columns(c: Comparison | None) -> dict:
    if c is None:
        return {col: (None if col == "test" else np.nan) for col in COMPARISON_COLUMNS}
    return {col: getattr(c, f) for col, f in COMPARISON_COLUMNS.items()}


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
                reference_path: str | Path = REFERENCE_CSV, notes: list[str] | tuple = (),
                queue_failed: dict[str, str] | None = None) -> Table:
    """Aggregate the runs of one sweep (from `load_runs`) into the paper-style table. `planned`
    (a spec's cells) lets cells without any run show as missing; without it only the cells
    MLflow holds are known. `notes` (a spec's) close the table's notes. `queue_failed`
    (cell_key -> reason, from the sweep's queue) marks failed the cells that failed before
    their run began. See the module docstring for every rule."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: '{layout}' is not one of {', '.join(LAYOUTS)}")
    if reference not in REFERENCES:
        raise ConfigError(f"reference: '{reference}' is not one of {', '.join(REFERENCES)}")
    if sweep is None:
        names = runs_df["sweep"].dropna().unique() if "sweep" in runs_df else []
        sweep = str(names[0]) if len(names) else "sweep"
    cells, runs, extras = _cells_in_rows(runs_df, planned, queue_failed)
    agg = _aggregate(cells)
    models = _row_models(agg)
    rows = sorted(set(agg["row"]), key=_row_sort_key)
    label_counts = sorted(set(agg["n_labeled"]))
    layout = choose_layout(len(label_counts), len(rows)) if layout == "auto" else layout
    datasets = sorted({str(r[0]) for r in rows})
    paper = paper_numbers(rows, label_counts, models, layout, reference_path) if reference == "paper" and rows \
        else Paper({}, set(), [])
    parts = _Parts({(a["row"], a["n_labeled"]): a for a in agg.to_dict("records")}, rows, label_counts,
                   {r: _row_label(r, extras, len(datasets) > 1) for r in rows}, paper,
                   _vs_full(agg, rows, label_counts), _best(agg))

    what = "by number of labels (layout of the paper's Table 5)" if layout == "labels" else \
        "ablations (layout of the paper's Table 4)"
    main = _main_grid(parts, f"Sweep {sweep}: test error (%) on {', '.join(datasets) or 'no data'}, {what}", layout)
    vs_full, last, iqm_grid = _vs_full_grid(parts), _last_grid(parts), _iqm_grid(parts)
    all_notes = _notes(parts, models, reference, datasets, planned, cells, vs_full is not None, last is not None) \
        + _pool_notes(runs, bool(notes)) + list(notes)
    outcomes = cells.assign(row=[parts.labels[r] for r in cells["row"]])
    return Table(sweep, layout, main, vs_full, all_notes, _labeled_runs(runs, cells, parts),
                 _cells_frame(parts, agg, models, extras, sweep), bool(paper.numbers), extras, outcomes, last,
                 iqm_grid)


def _cells_in_rows(runs_df: pd.DataFrame, planned: list | None,
                   queue_failed: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The cells (with their `row`: a tuple of dataset, method, variant and the extra axes'
    values), the runs with `counted`, and the extra axes."""
    runs_df = runs_df.reindex(columns=list(dict.fromkeys(list(runs_df.columns) + RUN_COLUMNS + PARAM_COLUMNS)))
    cells, runs = _cell_outcomes(runs_df, planned, queue_failed)
    extras = _extra_axes(cells)
    row_cols = ["dataset", "method", "variant"] + [f"params.{f}" for f in extras]
    # NaN never equals itself, so it cannot be part of a row key: a run without tags or params
    # (not written by our trainer) gets empty values instead of vanishing.
    cells[row_cols] = cells[row_cols].astype(object).where(cells[row_cols].notna(), "")
    cells["n_labeled"] = cells["n_labeled"].fillna(0).astype(int)
    cells["row"] = list(cells[row_cols].itertuples(index=False, name=None))
    return cells, runs, extras


def table_of(src: Source, layout: str = "auto", reference: str = "paper", states: dict | None = None) -> Table:
    """The table of a sweep as runs.py read it: layout auto takes the spec's `layout:` if it
    names one, and the spec's `notes:` close the notes; `states` (the sweep queue's cell states,
    where known) say which cells without a run failed."""
    failed = {k: s.reason for k, s in (states or {}).items() if s.state == "failed"}
    return build_table(src.runs, src.planned, src.layout if layout == "auto" else layout, reference,
                       sweep=src.sweep, notes=src.notes(), queue_failed=failed)
