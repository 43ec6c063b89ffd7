"""Plots of a sweep from MLflow: `mixmatch plot`.

Owns four figures, each written as PNG and SVG with matplotlib's Agg backend (no display):
- error vs number of labels: log x, mean ± std over seeds, one line per table row (each its own
  marker, dodged a little along x so that equal means stay apart), plus the paper's MixMatch
  CIFAR-10 curve (Table 5) dashed when the sweep is on CIFAR-10;
- ablation bars: one bar per (row, label count) at the seed mean with the std as error bar and
  each finished seed as a dot; cells without a finished run are labeled (failed, missing...);
- learning curves: test error (metric history `test_error`: the EMA model, the live one where
  ema=false) vs step on a log y axis (the final errors stay apart), one line per cell's run (its
  counted run, else its newest), colored by row, one panel per label count;
- differences (a forest plot): each variant's difference to the full method with its 95%
  interval (thin: the test's, thick: the paired bootstrap's where there is one) and the test,
  one panel per label count: the table's difference grid drawn.

The numbers come from `sweeps.table.build_table`, so the plots and the tables follow the same
rules (which run counts for a cell, what is a row). Only the learning curves need one MLflow
call per run; beyond MAX_CURVES runs an evenly spaced subset is drawn and the title says so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from .paper import load_reference, reference_dataset
from .parent_run import log_artifacts
from .runs import load_source, metric_histories, storage_states
from .spec import file_stem
from .table import FULL, Table, table_of

matplotlib.use("Agg")       # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter, StrMethodFormatter  # noqa: E402

# Stable SVG element ids: re-plotting the same data gives the same file.
plt.rcParams["svg.hashsalt"] = "mixmatch"

MAX_CURVES = 200          # learning curves drawn at most (one get_metric_history call each)
MAX_PANELS = 6            # label counts shown as separate learning-curve panels
MARKERS = "osD^vP*X<>ph"  # one per row in error vs labels (coinciding points stay distinguishable)
DODGE_DECADES = 0.012     # x shift between neighbouring rows in error vs labels, in log10 units
LOG_TICKS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]     # the learning curves' error axis (%)
FONT = {"title": 11, "label": 10, "tick": 9, "legend": 9}    # points, learning curves and differences


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return [png, svg]


def _rows(table: Table) -> list[str]:
    return list(dict.fromkeys(table.cells["row"])) if not table.cells.empty else []


def _any_finished(table: Table) -> bool:
    return not table.cells.empty and bool((table.cells["n_finished"] > 0).any())


def _colors(rows: list[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10" if len(rows) <= 10 else "tab20"]
    return {r: cmap(i % cmap.N) for i, r in enumerate(rows)}


def plot_error_vs_labels(table: Table, out: Path) -> list[Path]:
    """Error (%) vs labeled examples, log x, mean with std error bars, one line per row."""
    if not _any_finished(table):
        return []
    cells = table.cells
    rows = _rows(table)
    colors = _colors(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, r in enumerate(rows):
        d = cells[(cells["row"] == r) & (cells["n_finished"] > 0)].sort_values("n_labeled")
        if len(d):
            dodge = 10 ** (DODGE_DECADES * (i - (len(rows) - 1) / 2))
            ax.errorbar(d["n_labeled"] * dodge, d["error_mean"], yerr=d["error_std"].fillna(0),
                        marker=MARKERS[i % len(MARKERS)], capsize=3, color=colors[r], label=r)
    ticks = sorted(cells["n_labeled"].unique())
    if "cifar10" in {reference_dataset(str(ds)) for ds in cells["dataset"]}:
        ref = load_reference()
        ref = ref[(ref["dataset"] == "cifar10") & (ref["table"] == 5) & (ref["variant"] == "mixmatch")]
        ref = ref.sort_values("n_labeled")
        ax.errorbar(ref["n_labeled"], ref["error_mean"], yerr=ref["error_std"].fillna(0), ls="--", marker="s",
                    ms=4, capsize=3, color="black", alpha=0.7, label="MixMatch, paper Table 5 (CIFAR-10)")
        ticks = sorted(set(ticks) | set(ref["n_labeled"]))
    ax.set_xscale("log")
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labeled examples")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{table.sweep}: error vs labels (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, f"{file_stem(table.sweep)}_error_vs_labels")


def plot_ablation(table: Table, out: Path) -> list[Path]:
    """Grouped bars (rows x label counts): seed mean, std error bar, every finished seed a dot."""
    if not _any_finished(table):
        return []
    cells = table.cells
    rows = _rows(table)
    ns = sorted(cells["n_labeled"].unique())
    counted = table.runs[table.runs["counted"].fillna(False).astype(bool)]
    width = 0.8 / len(ns)
    colors = _colors([str(n) for n in ns])
    fig, ax = plt.subplots(figsize=(min(14.0, max(5.0, 0.45 * len(rows) * len(ns) + 1.5)), 4.2))
    top = float(np.nanmax(cells["error_mean"] + cells["error_std"].fillna(0)))
    rng = np.random.default_rng(0)      # fixed jitter: the same data gives the same figure
    labeled: set = set()                # label counts already in the legend
    for j, n in enumerate(ns):
        for i, r in enumerate(rows):
            x = i - 0.4 + width * (j + 0.5)
            c = cells[(cells["row"] == r) & (cells["n_labeled"] == n)]
            if c.empty:
                continue
            c = c.iloc[0]
            if c["n_finished"] == 0:
                ax.text(x, 0.02 * top, c["text"], rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
                continue
            ax.bar(x, c["error_mean"], width * 0.9, color=colors[str(n)], alpha=0.75,
                   label=None if n in labeled else f"{n} labels")
            labeled.add(n)
            if c["n_finished"] >= 2:
                ax.errorbar(x, c["error_mean"], yerr=c["error_std"], color="black", capsize=3, lw=1)
            if c["n_finished"] < c["n_planned"]:     # partly failed or missing: say so on the bar
                ax.text(x, c["error_mean"] + (0 if pd.isna(c["error_std"]) else c["error_std"]) + 0.01 * top,
                        f"n={c['n_finished']}/{c['n_planned']}", ha="center", va="bottom", fontsize=7, color="0.3")
            seeds = counted[(counted["row"] == r) & (counted["n_labeled"] == n)]["error"].to_numpy(float)
            ax.scatter(x + rng.uniform(-0.25, 0.25, len(seeds)) * width, seeds, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{table.sweep}: ablations (bar: mean, line: std, dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, f"{file_stem(table.sweep)}_ablation")


def plot_learning_curves(table: Table, out: Path, max_curves: int = MAX_CURVES) -> list[Path]:
    """Test error vs step, one line per cell's run (dashed: not finished), colored by row."""
    runs = table.runs[table.runs["run_id"].notna()]
    if runs.empty:
        return []
    # One run per cell: the counted one, else the newest attempt.
    reps = runs.assign(_c=runs["counted"].fillna(False).astype(bool)).sort_values(
        ["_c", "start_time"], ascending=False, kind="stable").drop_duplicates("cell_key")
    reps = reps.sort_values(["n_labeled", "row", "seed"], kind="stable")
    total = len(reps)
    if total > max_curves:
        reps = reps.iloc[np.linspace(0, total - 1, max_curves).round().astype(int)]
    hist = metric_histories(list(reps["run_id"]))
    if not hist:
        return []
    rows = _rows(table) or list(dict.fromkeys(reps["row"]))
    colors = _colors(rows)
    ns = sorted(reps["n_labeled"].dropna().unique())
    panels = ns if len(ns) <= MAX_PANELS else [None]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 1.5, 3.2 * nrows + 0.4), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    seen: dict[str, object] = {}
    for ax, n in zip(axes.flat, panels):
        sub = reps if n is None else reps[reps["n_labeled"] == n]
        for rec in sub.itertuples(index=False):
            h = hist.get(rec.run_id)
            if not h:
                continue
            steps, vals = zip(*h)
            line, = ax.plot(steps, vals, color=colors.get(rec.row, "grey"), lw=1, alpha=0.8,
                            ls="-" if rec.counted is True else "--")
            seen.setdefault(rec.row, line)
        ax.set_title("all label counts" if n is None else f"{n} labels", fontsize=FONT["label"])
        ax.set_xlabel("step", fontsize=FONT["label"])
        _log_y(ax)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel("test error (%), reported model, log scale", fontsize=FONT["label"])
    shown = f" ({len(reps)} of {total} runs shown)" if total > len(reps) else ""
    fig.suptitle(f"{table.sweep}: learning curves{shown}; dashed: not finished", fontsize=FONT["title"])
    order = [r for r in rows if r in seen] + [r for r in seen if r not in rows]
    fig.legend([seen[r] for r in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=FONT["legend"])
    fig.tight_layout()
    return _save(fig, out, f"{file_stem(table.sweep)}_learning_curves")


def _log_y(ax) -> None:
    """A log y axis labeled in plain numbers (1, 2, 5, 10, 20, 50, 100), errors of 0 clipped to
    its floor."""
    ax.set_yscale("log", nonpositive="clip")
    ax.yaxis.set_major_locator(FixedLocator(LOG_TICKS))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="both", which="both", labelsize=FONT["tick"])


def plot_differences(table: Table, out: Path) -> list[Path]:
    """Forest plot: each variant minus the full method at each label count (one panel each), the
    point the difference, thin line the test's 95% interval, thick line the paired bootstrap's,
    the test and p beside it; variants in the table's row order, top to bottom."""
    d = table.cells[table.cells["test"].notna()] if "test" in table.cells else table.cells.iloc[:0]
    if d.empty:
        return []
    ns = sorted(d["n_labeled"].unique())
    rows = [r for r in _rows(table) if r in set(d["row"])]
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns) + 1.0, 0.6 * len(rows) + 1.6), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes[0], ns):
        for rec in d[d["n_labeled"] == n].itertuples(index=False):
            y = rows.index(rec.row)
            if not np.isnan(rec.diff_low):
                ax.plot([rec.diff_low, rec.diff_high], [y, y], color="0.25", lw=1.2)
            if not np.isnan(rec.boot_low):
                ax.plot([rec.boot_low, rec.boot_high], [y, y], color="tab:blue", lw=4, alpha=0.6)
            ax.plot(rec.diff_full, y, "o", color="black", ms=5)
            p = "" if np.isnan(rec.p) else (", p<0.001" if rec.p < 0.001 else f", p={rec.p:.3f}")
            ax.annotate(f"{rec.test}{p}", (rec.diff_full, y), xytext=(0, 5), textcoords="offset points",
                        ha="center", va="bottom", fontsize=FONT["tick"] - 1, color="0.3")
        ax.axvline(0, color="0.5", lw=1, ls="--")
        ax.set_title(f"{n} labels", fontsize=FONT["label"])
        ax.set_xlabel(f"error difference to {FULL} (points)", fontsize=FONT["label"])
        ax.tick_params(labelsize=FONT["tick"])
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(rows)), rows)
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)       # the table's first row on top
    fig.suptitle(f"{table.sweep}: variant - {FULL}, 95% intervals (thin: t; thick: paired bootstrap)",
                 fontsize=FONT["title"])
    fig.tight_layout()
    return _save(fig, out, f"{file_stem(table.sweep)}_differences")


def plot_table(table: Table, out_dir) -> list[Path]:
    """Every plot of a built table into out_dir (PNG and SVG); none when no cell has finished."""
    out = Path(out_dir)
    return plot_error_vs_labels(table, out) + plot_ablation(table, out) + plot_differences(table, out) \
        + plot_learning_curves(table, out)


def plot_all(sweep_or_spec: str, out_dir, parent_run_id: str | None = None,
             experiment: str | None = None) -> list[Path]:
    """Every plot of the sweep into out_dir (PNG and SVG); with `parent_run_id`, also logged as
    artifacts (folder `plots`) of the sweep's parent run. Returns the files written (none when
    no cell has finished yet)."""
    src = load_source(sweep_or_spec, experiment)
    return log_artifacts(plot_table(table_of(src, states=storage_states(src, None)), out_dir), parent_run_id, "plots")
