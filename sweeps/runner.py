"""A sweep's launch: publish a spec's cells, train them with local worker processes, close it.

Owns: the checks before anything starts (`check_launch`), publishing (`publish_sweep`, shared
by `mixmatch sweep` and `mixmatch slurm`: the sweep's MLflow parent run, the results MLflow
holds that the queue lacks, the cells enqueued), the local worker processes and the sweep's
progress line (`run_local_workers`), and closing the sweep (`finish`: the summary, the tables,
plots and report, the parent run's status). The queue and the worker loop live in store.py
and worker.py, so a local sweep and a sweep spread over many machines are the same
mechanism: local workers are just `mixmatch worker` processes on the same storage, started
through the same slot code as --workers-per-gpu (gpus.py).

Relaunch safety: finished cells are found in the storage (and, where it lacks them, in MLflow
by `cell_key`, then adopted into the storage) and skipped; cells whose worker was killed are
re-queued and resume from their checkpoints; failed cells are retried on relaunch up to the
spec's `retries`. A relaunch of a finished sweep never gets here (summary.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna

from mixmatch_core.checkpoint import check_out_dir
from mixmatch_core.config import Config
from mixmatch_core.tracking import check_reachable, end_parent_run, experiment_id

from . import gpus, mlflow_view, store
from .cost import fmt_seconds
from .parent_run import open_sweep_parent_run
from .runs import finished_results
from .spec import Spec
from .summary import record_close, summarize, tables_dir

STATES = ("done", "running", "waiting", "failed")


def check_launch(cells: list[Config], url: str, local_workers: bool) -> None:
    """Before anything is published: the storage URL, the tracking store and, when local
    workers will train the cells here, what their runs would fail on at once: the out_dirs, the
    device, the data (each dataset loaded once, downloaded if its loader downloads) and each
    cell's labeled split (train.check_runs). One line now, not one failed cell each. Workers
    elsewhere (--workers 0) may see other data and devices, so their cells are not checked here."""
    store.check_storage_url(url)
    check_reachable()
    if local_workers:
        for out_dir in sorted({x.out_dir for x in cells}):
            check_out_dir(out_dir)
        from mixmatch_core.train import check_runs   # lazy: torch, only where workers train here
        check_runs(cells)               # last: it may load (or download) data


def publish_sweep(spec: Spec, cells: list[Config], storage, url: str) -> tuple[optuna.Study, str]:
    """Open the sweep's study and its MLflow parent run, adopt the results MLflow holds that the
    queue lacks (one query, none when the queue has every cell done), enqueue every other cell
    not done, queued or running (failed ones within `retries`; store.publish), and say so in
    one line. Returns the study and the parent run's id."""
    study = store.open_sweep_study(storage, spec.name)
    parent = open_sweep_parent_run(spec, study)
    attrs = {"parent_run_id": parent, "experiment": spec.experiment, "spec_path": str(spec.path)}
    actions = store.publish(storage, spec.name, cells, attrs, spec.retries,
                            results=lambda: finished_results(experiment_id(spec.experiment), spec.name))
    done = sum(a == "done" for a in actions.values())
    queued = sum(a in ("queued", "retry") for a in actions.values())
    failed = sum(a.startswith("failed") for a in actions.values())
    print(f"sweep '{spec.name}': {len(cells)} cells ({done} already done, {queued} queued, {failed} failed beyond "
          f"retries); storage {url}; MLflow parent run {parent}", file=sys.stderr)
    return study, parent


def run_local_workers(spec: Spec, url: str, slots: list[gpus.Slot], device: str, heartbeat: int | None,
                      study: optuna.Study, cells: list[Config]) -> None:
    """One `mixmatch worker` process per slot (pinned to its GPU, if any, with its share of the
    CPU threads; each dies with this process), logged to runs/_workers/, and the sweep's
    progress until they exit. Ctrl-C stops them and is raised again."""
    log_dir = Path("runs") / "_workers"
    log_dir.mkdir(parents=True, exist_ok=True)

    def command(s: gpus.Slot) -> list[str]:
        # A string, not an import: sweeps/ knows nothing of the command line's code.
        cmd = [sys.executable, "-m", "mixmatch_cli", "worker", "--storage", url, "--sweep", spec.name,
               "--threads", str(s.threads)]
        cmd += ["--device", device] if device != "auto" else []
        return cmd + (["--heartbeat-seconds", str(heartbeat)] if heartbeat else [])

    logs = [open(log_dir / f"{spec.name}-worker{i}.log", "ab") for i in range(len(slots))]
    try:
        procs = [gpus.start_one(s, command(s), tied=True, stdout=log, stderr=subprocess.STDOUT)
                 for s, log in zip(slots, logs)]
        try:
            show_progress(spec, study, cells, procs)
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            raise
    finally:
        for log in logs:
            log.close()


def show_progress(spec: Spec, study: optuna.Study, cells: list[Config], procs: list[subprocess.Popen]) -> None:
    """The sweep's progress line until every worker has exited: rewritten in place on a
    terminal, one line per change in a log file."""
    keys = {x.cell_key for x in cells}
    t0, done0, last = time.time(), None, None
    tty = sys.stderr.isatty()
    while any(p.poll() is None for p in procs):
        _wait_for_exit(procs, seconds=1.0)     # a storage query a second, the last one right after the exits
        st = store.cell_states(study)
        n = {k: sum(s.state == k for c, s in st.items() if c in keys) for k in STATES}
        done0 = n["done"] if done0 is None else done0
        rate = (n["done"] - done0) / max(time.time() - t0, 1e-9)    # cells per second this launch
        eta = fmt_seconds((n["running"] + n["waiting"]) / rate) if rate > 0 else "?"
        line = (f"sweep {spec.name}: {n['done']}/{len(keys)} done, {n['running']} running, "
                f"{n['waiting']} waiting, {n['failed']} failed | {fmt_seconds(time.time() - t0)} elapsed, ETA {eta}")
        if tty:
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        elif tuple(n.values()) != last:
            print(line, file=sys.stderr, flush=True)
        last = tuple(n.values())
    if tty:
        print(file=sys.stderr)


def _wait_for_exit(procs: list[subprocess.Popen], seconds: float) -> None:
    """Sleep up to `seconds`, but return as soon as every process has exited: the sweep closes
    as soon as its last worker is done, not up to a second later."""
    deadline = time.monotonic() + seconds
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            return


def finish(spec: Spec, study: optuna.Study, parent: str, cells: list[Config], no_table: bool = False) -> int:
    """Closing summary, error table, plots and report (also logged to the parent run), the
    parent's status, and what the next launch may skip (summary.record_close)."""
    states = summarize(spec, study, cells)
    failed = [k for k, s in states.items() if s is None or s.state != "done"]
    out = tables_dir(spec)
    if not no_table:
        try:
            from .report import export_all   # lazy: pandas, scipy and matplotlib, only for the tables
            paths = export_all(spec, spec.cells(), out, parent_run_id=parent, states=states)
            print()
            print(next(p for p in paths if p.name.endswith("_table.md")).read_text().rstrip())
            print(f"\ntables, plots and report written to {out}/ and logged to the sweep's parent run {parent}")
            print(f"report: {next(p for p in paths if p.name.endswith('_report.html'))}")
        except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; `mixmatch report` can retry
            print(f"could not build the table and report ({type(e).__name__}: {e}); run `mixmatch report "
                  f"{spec.path}`", file=sys.stderr)
            no_table = True
    try:
        mlflow_view.write_means(spec)    # the means view's error_mean (cheap: one search, a log per group)
    except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; only that view's column waits
        print(f"could not write the means view's error_mean ({type(e).__name__}: {e})", file=sys.stderr)
    end_parent_run(parent, "FAILED" if failed else "FINISHED")
    record_close(study, states, tables=not no_table)
    return 1 if failed else 0
