"""Benchmark: what the sweep orchestrator adds per cell, beyond training (target < 3 s per cell).

Owns: a throw-away sweep of N one-step cells (digits, `steps: 1, eval_every: 1`, seeds 1..N)
in a temporary directory with its own SQLite MLflow store and Optuna storage; it runs

1. `mixmatch sweep SPEC --workers 1` (as a subprocess, exactly as a user would: process start,
   imports, the MLflow parent run, publishing the cells, one worker process claiming each cell
   from the Optuna storage and training it as a tracked MLflow run, closing summary; the error
   table is skipped with --no-table, its cost is benchmarks/table_store.py's subject);
2. the same command again: every cell is done, so this is the fixed cost of the command
   (start-up, MLflow, storage) with no training and no worker;
3. `train()` of one such cell in this process, untracked (median of --train-repeats after one
   warm-up), with the worker's thread count: the pure training time of a cell.

Reported: seconds per cell = (sweep wall - N * train) / N (everything the orchestrator adds,
start-up amortised over the N cells: the target), and its two parts from the MLflow records:
the fixed cost per sweep (command start to the first cell's run: imports, parent run,
publishing, the worker's process start, the first claim; plus the last run's end to exit) and
the cost inside the worker per cell (mean tracked-run duration + mean gap between runs - the
pure training time: run creation, params and tags, metric flushes, artifacts, claiming).
A worker trains many cells in one process, so process start is paid per worker, not per cell.

    python -m benchmarks.sweep_overhead [--cells 10] [--train-repeats 3] [--keep DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .results import write_result

REPO = Path(__file__).resolve().parents[1]
SWEEP = "overhead"
EXPERIMENT = "mixmatch-bench-overhead"
TARGET_S_PER_CELL = 3.0
CELL_BASE = {"dataset": "digits", "steps": 1, "eval_every": 1, "log_every": 1, "median_of": 1, "device": "cpu"}


def write_spec(root: Path, n_cells: int) -> Path:
    spec = {"name": SWEEP, "experiment": EXPERIMENT, "description": "1-step digits cells: orchestration cost",
            "base": {**CELL_BASE, "out_dir": str(root / "runs")},
            "grid": {"seed": list(range(1, n_cells + 1))}, "retries": 0}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep(root: Path, spec: Path) -> tuple[float, str, tuple[float, float]]:
    """Wall seconds of `mixmatch sweep SPEC --workers 1` in `root` (own stores), its stderr, and
    its (start, end) as epoch seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "mixmatch_cli", "sweep", str(spec), "--workers", "1",
           "--storage", f"sqlite:///{root / 'optuna.db'}", "--no-table"]
    t0, e0 = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep_overhead: `{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc.stderr, (e0, time.time())


def train_seconds(root: Path, repeats: int, threads: int) -> list[float]:
    """Wall seconds of train() for one such cell in this process, untracked, fresh out_dir each
    time (after one untimed warm-up: imports and first-call costs a worker pays once)."""
    from mixmatch_core.config import resolve
    from mixmatch_core.train import train
    cfg = resolve({**CELL_BASE, "experiment": EXPERIMENT, "progress": False, "num_threads": threads})
    times = []
    for i in range(repeats + 1):
        c = dataclasses.replace(cfg, out_dir=str(root / f"inproc{i}"))
        t0 = time.perf_counter()
        r = train(c)
        if i:
            times.append(time.perf_counter() - t0)
        assert r.status == "FINISHED"
    return times


def mlflow_breakdown(root: Path, span: tuple[float, float]) -> dict:
    """From the MLflow records (seconds): the mean duration of the cells' runs, the mean gap
    between consecutive ones, the time from the command's start to the first cell's run (start-up,
    parent run, publishing, worker process start, first claim) and from the last run's end to
    the command's exit."""
    from mlflow import MlflowClient
    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id], "tags.`mixmatch.role` = 'cell'", max_results=10000)
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs if r.info.end_time)
    gaps = [(b[0] - a[1]) / 1000 for a, b in zip(spans, spans[1:])]
    return {"cell_runs": len(runs), "finished": sum(r.info.status == "FINISHED" for r in runs),
            "mean_run_s": statistics.mean((e - s) / 1000 for s, e in spans) if spans else None,
            "mean_gap_between_runs_s": statistics.mean(gaps) if gaps else None,
            "startup_to_first_run_s": spans[0][0] / 1000 - span[0] if spans else None,
            "last_run_to_exit_s": span[1] - spans[-1][1] / 1000 if spans else None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=10, help="one-step cells in the sweep")
    p.add_argument("--train-repeats", type=int, default=3, help="timed in-process train() calls")
    p.add_argument("--keep", default=None, help="work in this directory and keep it (default: a temp dir)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def measure(args, threads: int) -> dict:
    """The sweep, its relaunch, MLflow's breakdown of the runs and in-process train() times, in
    a fresh directory (--keep, or a temporary one)."""
    with tempfile.TemporaryDirectory(prefix="mm-overhead-") as tmp:
        root = Path(args.keep).absolute() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise SystemExit(f"sweep_overhead: {root} is not empty")
        spec = write_spec(root, args.cells)
        load0 = os.getloadavg()
        print(f"sweep of {args.cells} one-step cells in {root} ...", file=sys.stderr, flush=True)
        wall, stderr, span = run_sweep(root, spec)
        print(f"  sweep: {wall:.1f} s; relaunch (all cells done) ...", file=sys.stderr, flush=True)
        relaunch, _, _ = run_sweep(root, spec)
        print(f"  relaunch: {relaunch:.1f} s; train() in-process ...", file=sys.stderr, flush=True)
        breakdown = mlflow_breakdown(root, span)
        if breakdown["finished"] != args.cells:
            raise SystemExit(f"sweep_overhead: {breakdown['finished']} of {args.cells} cells FINISHED:\n"
                             f"{stderr[-3000:]}")
        t_train = train_seconds(root, args.train_repeats, threads)
    return {"wall": wall, "relaunch": relaunch, "breakdown": breakdown, "t_train": t_train, "load0": load0}


def result_record(args, threads: int, m: dict) -> dict:
    """The overheads: amortised per cell (sweep wall minus train() time), in the worker, fixed."""
    wall, b, t_train = m["wall"], m["breakdown"], m["t_train"]
    train_s = statistics.median(t_train)
    per_cell = (wall - args.cells * train_s) / args.cells
    in_worker = (b["mean_run_s"] + (b["mean_gap_between_runs_s"] or 0.0) - train_s) if b["mean_run_s"] else None
    fixed = b["startup_to_first_run_s"] + b["last_run_to_exit_s"] if b["mean_run_s"] else None
    return {
        "benchmark": "sweep_overhead", "cells": args.cells, "workers": 1, "worker_threads": threads,
        "cell": CELL_BASE, "sweep_wall_s": wall, "relaunch_wall_s": m["relaunch"],
        "train_s_per_cell": train_s, "train_s_repeats": t_train,
        "overhead_s_per_cell": per_cell, "in_worker_overhead_s_per_cell": in_worker,
        "fixed_s_per_sweep": fixed, "mlflow": b, "target_s_per_cell": TARGET_S_PER_CELL,
        "load_avg_before": m["load0"], "load_avg_after": os.getloadavg(),
    }


def print_report(r: dict) -> None:
    b = r["mlflow"]
    print(f"sweep_overhead: {r['cells']} one-step digits cells, 1 worker ({r['worker_threads']} threads), own SQLite "
          f"MLflow + Optuna stores; load avg before {r['load_avg_before'][0]:.1f}, after {r['load_avg_after'][0]:.1f}")
    rows = [("sweep wall (s)", r["sweep_wall_s"]), ("relaunch, nothing to do (s)", r["relaunch_wall_s"]),
            ("train() per cell, in-process (s)", r["train_s_per_cell"]),
            ("start to first cell's MLflow run (s)", b["startup_to_first_run_s"]),
            ("MLflow cell run duration, mean (s)", b["mean_run_s"]),
            ("gap between cell runs, mean (s)", b["mean_gap_between_runs_s"]),
            ("last cell's run end to exit (s)", b["last_run_to_exit_s"]),
            ("fixed per sweep (start + tail) (s)", r["fixed_s_per_sweep"]),
            ("in-worker overhead per cell (s)", r["in_worker_overhead_s_per_cell"]),
            ("overhead per cell, amortised (s)", r["overhead_s_per_cell"])]
    for name, v in rows:
        print(f"  {name:<38} {'-' if v is None else f'{v:8.2f}'}")
    ok = r["overhead_s_per_cell"] < TARGET_S_PER_CELL
    print(f"target: < {TARGET_S_PER_CELL:.0f} s per cell (amortised): {'met' if ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.cells < 1:
        p.error("--cells must be >= 1")
    threads = max(1, os.cpu_count() or 1)   # what `mixmatch sweep --workers 1` gives its worker
    result = result_record(args, threads, measure(args, threads))
    print_report(result)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
