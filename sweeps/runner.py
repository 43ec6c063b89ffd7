"""`mixmatch sweep SPEC`: publish a spec's cells and train them with local worker processes.

Owns: the sweep command (validation, `--dry-run` with cost estimates, the MLflow parent run,
publishing cells to the Optuna storage, starting N local workers, the sweep's progress line,
and the closing summary with the error table). The queue itself and the worker loop live in
store.py, so a local sweep and a sweep spread over many machines are the same mechanism:
local workers are just `mixmatch worker` processes on the same storage.

Relaunch safety: finished cells are found in the storage (and, as a fallback, in MLflow by
`cell_key`) and skipped; cells whose worker was killed are re-queued and resume from their
checkpoints; failed cells are retried on relaunch up to the spec's `retries`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixmatch_core.cli import ArgumentParser, die
from mixmatch_core.config import ConfigError

from . import gpus as gpu_slots
from .spec import Spec, load_spec, select

# Expected seconds per training step, by (model family, device type, method), for --dry-run
# cost estimates and nothing else. CPU rows: measured on this project's 2-core AVX2 machines
# (benchmarks/step_time.py: WRN-28-2 MixMatch 3.1-3.6 s/step eager; small CNN on digits about
# 20 steps/s on one thread). GPU rows: estimates (about 0.43 GFLOP per 32x32 forward for
# WRN-28-2, x3 for forward+backward, 192 + 128 images per step, at a realistic ~25% of a
# modern GPU's peak), not measurements.
STEP_SECONDS = {
    ("small_cnn", "cpu", "mixmatch"): 0.6, ("small_cnn", "cpu", "supervised"): 0.2,
    ("wrn", "cpu", "mixmatch"): 3.3, ("wrn", "cpu", "supervised"): 1.0,
    ("small_cnn", "cuda", "mixmatch"): 0.004, ("small_cnn", "cuda", "supervised"): 0.002,
    ("wrn", "cuda", "mixmatch"): 0.025, ("wrn", "cuda", "supervised"): 0.008,
}


def step_seconds(cfg, device_type: str) -> float:
    fam = "small_cnn" if cfg.model.startswith("small_cnn") else "wrn"
    base = STEP_SECONDS[(fam, device_type, cfg.method)]
    width = cfg.model[len("small_cnn"):] if fam == "small_cnn" else ""
    if width:
        # FLOPs scale with W^2, but narrow nets use the cores worse: on CPU small_cnn16 takes
        # 0.34x (not 0.25x) of small_cnn's (W = 32) step, so narrow widths scale linearly.
        w = int(width) / 32
        base *= max(w ** 2, 0.68 * w)
    if cfg.model == "wrn28_large":
        base *= 17          # ~26 M vs 1.5 M parameters; FLOPs scale about the same
    if cfg.dataset == "digits":
        base *= 0.1         # 8x8 images: about a tenth of the 32x32 cost (measured)
    return base * cfg.batch_size / 64 * ((1 + cfg.K) / 3 if cfg.method == "mixmatch" else 1)


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def default_workers(device: str) -> tuple[int, list[str | None]]:
    """One worker per visible GPU; on CPU one single-threaded worker per core (at most 4): small
    models scale better across processes than across threads."""
    import torch
    if device in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        return n, [str(i) for i in range(n)]
    return max(1, min(os.cpu_count() or 1, 4)), [None]


def dry_run(spec: Spec, cells, device_type: str, workers: int, states: dict | None = None) -> None:
    """List the cells with their estimated cost; cells the sweep's storage already has done
    cost nothing, so the total is what a (re)launch would still spend."""
    states = states or {}
    total, n_done = 0.0, 0
    print(f"sweep '{spec.name}' ({spec.path}): {len(cells)} cells, experiment '{spec.experiment}'")
    print(f"{'run name':<36} {'cell_key':<13} {'steps':>9} {'state':>8} {'est. cost':>10}")
    for c in cells:
        state = states[c.cell_key].state if c.cell_key in states else "new"
        cost = 0.0 if state == "done" else c.steps * step_seconds(c, device_type)
        n_done += state == "done"
        total += cost
        print(f"{c.run_name:<36} {c.cell_key:<13} {c.steps:>9,} {state:>8} {fmt_seconds(cost):>10}")
    print(f"total: {len(cells)} cells ({n_done} done), ~{fmt_seconds(total)} of {device_type.upper()} time to go "
          f"(~{fmt_seconds(total / max(workers, 1))} wall with {workers} worker(s)); nothing was run")


def known_states(url: str, sweep: str) -> dict:
    """Cell states from an existing SQLite storage, read-only; {} when the sweep has not been
    started here (a dry run must not create files or tables)."""
    from . import store
    if not url.startswith("sqlite:///"):     # a server database: opening it may create tables
        return {}
    try:
        return store.cell_states(store.load_sweep_study(store.open_storage(url, must_exist=True, read_only=True),
                                                        sweep))
    except (ConfigError, store.StorageError):
        return {}


def sweep_main(argv: list[str]) -> int:
    p = ArgumentParser(prog="mixmatch sweep", description="Train every cell of a sweep spec, tracked in MLflow; "
                "relaunching the same command skips finished cells and resumes interrupted ones.")
    p.add_argument("spec", help="sweep spec YAML (see experiments/)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per GPU; on CPU one per core, at most 4); "
                        "0 = only publish the cells for `mixmatch worker`s elsewhere")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their estimated cost; run nothing")
    p.add_argument("--only", help="run only cells whose run name (glob) or cell_key prefix matches; comma = or")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///optuna/<sweep>.db)")
    p.add_argument("--device", default=None, help="device for every cell (default: the spec's, else auto)")
    p.add_argument("--heartbeat-seconds", type=int, default=None, help="worker heartbeat (stale after 3x)")
    p.add_argument("--no-table", action="store_true", help="skip the closing error table")
    gpu_slots.add_arguments(p)
    args = p.parse_args(argv)

    from mixmatch_core.tracking import TrackingError, check_reachable, client, experiment_id, start_parent_run
    from . import store
    try:
        spec = load_spec(args.spec)
        cells = select(spec.cells(), args.only)
        if not cells:
            raise ConfigError(f"--only '{args.only}' matches none of the {len(spec.cells())} cells")
        device = args.device or spec.base.get("device", "auto")
        n_auto, gpus = default_workers(device)
        workers = n_auto if args.workers is None else args.workers
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {workers}")
        slots = gpu_slots.slots_from_args(args)     # --workers-per-gpu: N pinned workers per GPU
        if slots is not None:
            if args.workers is not None:
                raise ConfigError("--workers-per-gpu: give --workers or --workers-per-gpu, not both")
            workers = len(slots)
        if args.dry_run:
            import torch
            dtype = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
            dry_run(spec, cells, dtype, workers or 1,
                    known_states(args.storage or store.default_sweep_storage(spec.name), spec.name))
            return 0
        from mixmatch_core.train import check_out_dir
        for out_dir in sorted({x.out_dir for x in cells}) if workers else ():
            check_out_dir(out_dir)  # local workers will write there: one line now, not one failure per cell
        url = args.storage or store.default_sweep_storage(spec.name)
        store.check_storage_url(url)
        check_reachable()
        storage = store.open_storage(url, args.heartbeat_seconds, max_retry=spec.retries)
    except (ConfigError, TrackingError, store.StorageError) as e:
        die(str(e))

    # One parent run per sweep, reopened on relaunch (its id is kept in the study).
    import optuna
    c = client()
    study = optuna.create_study(study_name=store.sweep_study_name(spec.name), storage=storage,
                                load_if_exists=True, direction="minimize")
    parent = study.user_attrs.get("parent_run_id")
    try:
        if parent is None or c.get_run(parent).info.lifecycle_stage != "active":
            raise LookupError
        start_parent_run(spec.experiment, spec.name, {}, run_id=parent)
    except Exception:  # noqa: BLE001 - missing or deleted parent: make a new one
        parent = start_parent_run(spec.experiment, spec.name, {"sweep": spec.name, "mixmatch.role": "sweep",
                                                                "spec_path": str(spec.path)})
        with tempfile.TemporaryDirectory() as d:
            Path(d, "spec.yaml").write_text(Path(spec.path).read_text())
            c.log_artifact(parent, str(Path(d, "spec.yaml")), "sweep")
    planned = [{"cell_key": x.cell_key, "run_name": x.run_name, "dataset": x.dataset, "n_labeled": x.n_labeled,
                "seed": x.seed, "variant": x.variant, "method": x.method} for x in spec.cells()]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "cells.json").write_text(json.dumps(planned, indent=1))
        c.log_artifact(parent, str(Path(d, "cells.json")), "sweep")

    # MLflow is the record: a cell FINISHED there (e.g. storage file deleted) is not re-run.
    exp = experiment_id(spec.experiment, c)
    finished = {r.data.tags.get("cell_key") for r in c.search_runs(
        [exp], f"tags.sweep = '{spec.name}' and attributes.status = 'FINISHED'", max_results=50000)}
    todo = [x for x in cells if x.cell_key not in finished]
    actions = store.publish(storage, spec.name, todo, {"parent_run_id": parent, "experiment": spec.experiment,
                                                       "spec_path": str(spec.path)}, spec.retries)
    n_new = sum(a in ("queued", "retry") for a in actions.values())
    print(f"sweep '{spec.name}': {len(cells)} cells ({len(cells) - len(todo) + sum(a == 'done' for a in actions.values())}"
          f" already done, {n_new} queued, "
          f"{sum(a.startswith('failed') for a in actions.values())} failed beyond retries); storage {url}; "
          f"MLflow parent run {parent}", file=sys.stderr)

    pending = store.counts(study)
    if workers and (pending["waiting"] or pending["running"]):
        run_local_workers(spec, url, workers, gpus, device, args.heartbeat_seconds, study, cells, slots)
    elif not workers:
        print(f"cells published; start workers with: mixmatch worker --storage {url} --sweep {spec.name}",
              file=sys.stderr)
        return 0
    return finish(spec, study, parent, cells, no_table=args.no_table)


def run_local_workers(spec, url, workers, gpus, device, heartbeat, study, cells, slots=None) -> None:
    """Start `workers` worker processes (same process group, so a kill of the group stops
    all) and show the sweep's progress until they exit. `slots` (gpus.py) pins each worker to
    its GPU with its share of the CPU threads."""
    from . import store
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = []
    log_dir = Path("runs") / "_workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    for i in range(workers):
        env = dict(os.environ) if slots is None else slots[i].env()
        if slots is None and gpus[0] is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        n_threads = slots[i].threads if slots else threads if gpus[0] is None else 0
        cmd = [sys.executable, "-m", "sweeps.cli", "worker", "--storage", url, "--sweep", spec.name,
               "--threads", str(n_threads)]
        if device != "auto":
            cmd += ["--device", device]
        if heartbeat:
            cmd += ["--heartbeat-seconds", str(heartbeat)]
        log = open(log_dir / f"{spec.name}-worker{i}.log", "ab")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    keys = {x.cell_key for x in cells}
    t0, done0, last = time.time(), None, None
    tty = sys.stderr.isatty()
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(1)
            st = store.cell_states(study)
            n = {k: sum(s.state == k for c, s in st.items() if c in keys) for k in ("done", "running", "waiting", "failed")}
            done0 = n["done"] if done0 is None else done0
            rate = (n["done"] - done0) / max(time.time() - t0, 1e-9)    # cells per second this launch
            left = n["running"] + n["waiting"]
            eta = fmt_seconds(left / rate) if rate > 0 else "?"
            line = (f"sweep {spec.name}: {n['done']}/{len(keys)} done, {n['running']} running, "
                    f"{n['waiting']} waiting, {n['failed']} failed | {fmt_seconds(time.time() - t0)} elapsed, ETA {eta}")
            if tty:
                print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
            elif tuple(n.values()) != last:   # in a log file: one line per change, not per second
                print(line, file=sys.stderr, flush=True)
            last = tuple(n.values())
        if tty:
            print(file=sys.stderr)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            p.wait()
        die("interrupted; relaunch the same command to resume (finished cells are kept)", 130)
    finally:
        for _, log in procs:
            log.close()


def finish(spec, study, parent, cells, no_table: bool = False) -> int:
    """Closing summary, error table (also logged to the parent run) and the parent's status."""
    from mixmatch_core.tracking import end_parent_run
    from . import store
    st = store.cell_states(study)
    keys = [x.cell_key for x in cells]
    by = {k: st.get(k) for k in keys}
    done = [k for k in keys if by[k] and by[k].state == "done"]
    failed = [k for k in keys if by[k] and by[k].state == "failed"]
    other = [k for k in keys if k not in done and k not in failed]
    print(f"\nsweep '{spec.name}': {len(done)} done, {len(failed)} failed, {len(other)} not run")
    names = {x.cell_key: x.run_name for x in cells}
    for k in failed:
        print(f"  FAILED {names[k]} [{k}] after {by[k].attempts} attempt(s): {by[k].reason}")
    if not no_table:
        from . import plot, table
        out = Path("runs") / "_tables" / spec.name
        try:
            paths = table.export(spec.path, out, parent_run_id=parent, experiment=spec.experiment)
            plot.plot_all(spec.path, out, parent_run_id=parent, experiment=spec.experiment)
            print()
            print(next(p for p in paths if p.suffix == ".md").read_text().rstrip())
            print(f"\ntables and plots written to {out}/ and logged to the sweep's parent run {parent}")
        except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; `mixmatch table` can retry
            print(f"could not build the table ({type(e).__name__}: {e}); run `mixmatch table {spec.path}`",
                  file=sys.stderr)
    end_parent_run(parent, "FINISHED" if not failed and not other else "FAILED")
    return 0 if not failed and not other else 1
