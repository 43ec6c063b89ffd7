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

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mixmatch_cli.errors import ArgumentParser, die, user_errors
from mixmatch_core.config import ConfigError
from mixmatch_core.methods import FULL_METHOD, METHODS

from . import gpus as gpu_slots
from . import mlflow_view
from .spec import Spec, file_stem, load_spec, select

# Expected seconds per MixMatch (K = 2) step, by (model family, device type), for --dry-run
# cost estimates and nothing else. CPU rows: measured on this project's 2-core AVX2 machines
# (benchmarks/step_time.py: WRN-28-2 MixMatch 3.1-3.6 s/step eager; small CNN on digits about
# 20 steps/s on one thread). GPU rows: estimates (about 0.43 GFLOP per 32x32 forward for
# WRN-28-2, x3 for forward+backward, 192 + 128 images per step, at a realistic ~25% of a
# modern GPU's peak), not measurements.
STEP_SECONDS = {
    ("small_cnn", "cpu"): 0.6, ("wrn", "cpu"): 3.3, ("small_cnn", "cuda"): 0.004, ("wrn", "cuda"): 0.025,
}


def step_seconds(cfg, device_type: str) -> float:
    """Estimated seconds per step of `cfg`: MixMatch's (K = 2) measured or estimated step,
    scaled by the method's forwards per step (mixmatch_core.methods) and by K for MixMatch."""
    fam = "small_cnn" if cfg.model.startswith("small_cnn") else "wrn"
    base = STEP_SECONDS[(fam, device_type)]
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
    if cfg.dataset == "stl10":
        base *= 9           # 96x96 images: 9x the pixels of 32x32 (estimate)
    method = METHODS[cfg.method]
    relative = (1 + cfg.K) / 3 if cfg.method == FULL_METHOD else \
        method.forwards_per_step / METHODS[FULL_METHOD].forwards_per_step
    return base * cfg.batch_size / 64 * relative


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}min"
    return f"{s / 3600:.1f}h"


def default_workers(device: str, workers: int | None = None) -> tuple[int, list[str | None]]:
    """`workers` (default: one per visible GPU; on CPU one single-threaded worker per core, at
    most 4: small models scale better across processes than across threads) and the GPU of each."""
    if device in ("auto", "cuda"):
        import torch    # only here: importing torch takes seconds
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return (n if workers is None else workers), [str(i) for i in range(n)]
    return (max(1, min(os.cpu_count() or 1, 4)) if workers is None else workers), [None]


def dry_run(spec: Spec, cells, device_type: str, workers: int, states: dict | None = None) -> None:
    """List the cells with their estimated cost; cells the sweep's storage already has done
    cost nothing, so the total is what a (re)launch would still spend."""
    states = states or {}
    total, n_done = 0.0, 0
    # GPU specs: cost in GPU-hours (the unit GPU budgets are counted in); CPU: readable durations
    cost_text = (lambda s: f"{s / 3600:,.1f} GPU-h") if device_type == "cuda" else fmt_seconds
    print(f"sweep '{spec.name}' ({spec.path}): {len(cells)} cells, experiment '{spec.experiment}'")
    print(f"{'run name':<36} {'cell_key':<13} {'steps':>9} {'state':>8} {'est. cost':>10}")
    for c in cells:
        state = states[c.cell_key].state if c.cell_key in states else "new"
        cost = 0.0 if state == "done" else c.steps * step_seconds(c, device_type)
        n_done += state == "done"
        total += cost
        print(f"{c.run_name:<36} {c.cell_key:<13} {c.steps:>9,} {state:>8} {cost_text(cost):>10}")
    print(f"total: {len(cells)} cells ({n_done} done), ~{cost_text(total)} of {device_type.upper()} time to go "
          f"(~{fmt_seconds(total / max(workers, 1))} wall with {workers} worker(s)); nothing was run")


def existing_study(url: str, sweep: str):
    """The sweep's study in an existing SQLite storage, opened read-only; None when the sweep
    has not been started here (a dry run must not create files or tables)."""
    from . import store
    if not url.startswith("sqlite:///"):     # a server database: opening it may create tables
        return None
    try:
        return store.load_sweep_study(store.open_storage(url, must_exist=True, read_only=True), sweep)
    except (ConfigError, store.StorageError):
        return None


def known_states(url: str, sweep: str) -> dict:
    """Cell states from an existing SQLite storage, read-only; {} when there is none."""
    from . import store
    study = existing_study(url, sweep)
    return {} if study is None else store.cell_states(study)


def sweep_parser() -> ArgumentParser:
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
    p.add_argument("--no-table", action="store_true", help="skip the closing error table, plots and report")
    gpu_slots.add_arguments(p)
    return p


def sweep_main(argv: list[str]) -> int:
    args = sweep_parser().parse_args(argv)

    from . import store
    with user_errors(store.StorageError):
        spec = load_spec(args.spec)
        cells = select(spec.cells(), args.only)
        if not cells:
            raise ConfigError(f"--only '{args.only}' matches none of the {len(spec.cells())} cells")
        device = args.device or spec.base.get("device", "auto")
        if args.workers is not None and args.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {args.workers}")
        slots = gpu_slots.slots_from_args(args)     # --workers-per-gpu: N pinned workers per GPU
        if slots is not None and args.workers is not None:
            raise ConfigError("--workers-per-gpu: give --workers or --workers-per-gpu, not both")
        url = args.storage or store.default_sweep_storage(spec.name)
        if args.dry_run:
            workers = len(slots) if slots else default_workers(device, args.workers)[0]
            dry_run(spec, cells, device_type(device), workers or 1, known_states(url, spec.name))
            return 0
        previous = existing_study(url, spec.name)
        if previous is not None and unchanged_since_last_report(spec, previous, cells, args.no_table):
            return relaunch_of_a_finished_sweep(spec, previous, cells, url, args.no_table)
        from mixmatch_core.checkpoint import check_out_dir
        for out_dir in sorted({x.out_dir for x in cells}) if args.workers != 0 else ():
            check_out_dir(out_dir)  # local workers will write there: one line now, not one failure per cell
        store.check_storage_url(url)
        from mixmatch_core.tracking import check_reachable
        check_reachable()
        storage = store.open_storage(url, args.heartbeat_seconds, max_retry=spec.retries)

    import optuna
    study = optuna.create_study(study_name=store.sweep_study_name(spec.name), storage=storage,
                                load_if_exists=True, direction="minimize")
    parent = open_sweep_parent_run(spec, study)
    todo = [x for x in cells if x.cell_key not in finished_in_mlflow(spec, cells, study)]
    actions = store.publish(storage, spec.name, todo, {"parent_run_id": parent, "experiment": spec.experiment,
                                                       "spec_path": str(spec.path)}, spec.retries)
    n_new = sum(a in ("queued", "retry") for a in actions.values())
    print(f"sweep '{spec.name}': {len(cells)} cells ({len(cells) - len(todo) + sum(a == 'done' for a in actions.values())}"
          f" already done, {n_new} queued, "
          f"{sum(a.startswith('failed') for a in actions.values())} failed beyond retries); storage {url}; "
          f"MLflow parent run {parent}", file=sys.stderr)

    pending = store.counts(study)
    if args.workers == 0:
        print(f"cells published; start workers with: mixmatch worker --storage {url} --sweep {spec.name}",
              file=sys.stderr)
        return 0
    if pending["waiting"] or pending["running"]:
        workers, gpus = (len(slots), [None]) if slots else default_workers(device, args.workers)
        run_local_workers(spec, url, workers, gpus, device, args.heartbeat_seconds, study, cells, slots)
    return finish(spec, study, parent, cells, no_table=args.no_table)


def device_type(device: str) -> str:
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto":
        import torch    # only here: importing torch takes seconds
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def open_sweep_parent_run(spec: Spec, study) -> str:
    """One MLflow parent run per sweep, reopened on relaunch (its id is kept in the study), with
    the spec and the planned cells (the spec may have grown since the last launch)."""
    from mixmatch_core.tracking import client

    from . import store
    parent = store.open_parent_run(study, spec.experiment, spec.name, "sweep", {"spec_path": str(spec.path)})
    planned = [{"cell_key": x.cell_key, "run_name": x.run_name, "dataset": x.dataset, "n_labeled": x.n_labeled,
                "seed": x.seed, "variant": x.variant, "method": x.method} for x in spec.cells()]
    c = client()
    c.log_text(parent, Path(spec.path).read_text(), "sweep/spec.yaml")
    c.log_dict(parent, planned, "sweep/cells.json")
    mlflow_view.write_views(spec, c)     # the MLflow UI's views of the sweep's table (mixmatch ui links them)
    return parent


def finished_in_mlflow(spec: Spec, cells, study) -> set[str]:
    """Cells the storage does not hold as done but MLflow has FINISHED (e.g. the storage file was
    deleted): MLflow is the record, they are not run again. One query, none when the storage
    already has every cell done."""
    from mixmatch_core.tracking import client, experiment_id

    from . import store
    done = {k for k, s in store.cell_states(study).items() if s.state == "done"}
    if all(x.cell_key in done for x in cells):
        return set()
    c = client()
    return {r.data.tags.get("cell_key") for r in c.search_runs(
        [experiment_id(spec.experiment, c)], f"tags.sweep = '{spec.name}' and attributes.status = 'FINISHED'",
        max_results=50000)}


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
        cmd = [sys.executable, "-m", "mixmatch_cli", "worker", "--storage", url, "--sweep", spec.name,
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
    """Closing summary, error table, plots and report (also logged to the parent run), and the
    parent's status."""
    from mixmatch_core.tracking import end_parent_run
    states = summarize(spec, study, cells)
    failed = [k for k, s in states.items() if s is None or s.state != "done"]
    out = tables_dir(spec)
    if not no_table:
        from . import report
        try:
            paths = report.export_all(spec.path, out, parent_run_id=parent, experiment=spec.experiment,
                                      states=states)
            print()
            print(next(p for p in paths if p.name.endswith("_table.md")).read_text().rstrip())
            print(f"\ntables, plots and report written to {out}/ and logged to the sweep's parent run {parent}")
            print(f"report: {next(p for p in paths if p.name.endswith('_report.html'))}")
        except Exception as e:  # noqa: BLE001 - the runs are safe in MLflow; `mixmatch report` can retry
            print(f"could not build the table and report ({type(e).__name__}: {e}); run `mixmatch report "
                  f"{spec.path}`", file=sys.stderr)
            no_table = True
    end_parent_run(parent, "FAILED" if failed else "FINISHED")
    # What the next launch may skip: nothing changed and (unless --no-table) the files are there.
    study.set_user_attr("last_report", {"digest": outcome_digest(states), "tables": not no_table})
    return 1 if failed else 0


def summarize(spec, study, cells) -> dict:
    """Print done / failed / not run (failed cells with their reason); cell_key -> CellState."""
    from . import store
    st = store.cell_states(study)
    by = {x.cell_key: st.get(x.cell_key) for x in cells}
    done = [k for k, s in by.items() if s and s.state == "done"]
    failed = [k for k, s in by.items() if s and s.state == "failed"]
    print(f"\nsweep '{spec.name}': {len(done)} done, {len(failed)} failed, {len(by) - len(done) - len(failed)} not run")
    names = {x.cell_key: x.run_name for x in cells}
    for k in failed:
        print(f"  FAILED {names[k]} [{k}] after {by[k].attempts} attempt(s): {by[k].reason}")
    return by


def tables_dir(spec) -> Path:
    return Path("runs") / "_tables" / spec.name


def table_md_path(spec) -> Path:
    return tables_dir(spec) / f"{file_stem(spec.name)}_table.md"


def outcome_digest(states: dict) -> str:
    """A fingerprint of every cell's outcome (state, error, attempts)."""
    items = sorted((k, s.state, s.error, s.attempts) if s else (k,) for k, s in states.items())
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


def unchanged_since_last_report(spec, study, cells, no_table: bool) -> bool:
    """True when every cell is done and nothing changed since the last launch closed the sweep
    (same outcomes; its tables and report still on disk unless --no-table): a relaunch then has
    nothing to train, log or rebuild, and needs neither MLflow nor torch (their imports and the
    MLflow store's start-up were 8 of the 13 s such a relaunch took on a busy 2-core VM)."""
    from . import store
    last = study.user_attrs.get("last_report")
    st = store.cell_states(study)
    states = {x.cell_key: st.get(x.cell_key) for x in cells}
    if not last or any(s is None or s.state != "done" for s in states.values()):
        return False
    return last["digest"] == outcome_digest(states) and (no_table or (last["tables"] and table_md_path(spec).exists()))


def relaunch_of_a_finished_sweep(spec, study, cells, url: str, no_table: bool) -> int:
    """What `finish` printed last time, from the storage and the files it wrote."""
    print(f"sweep '{spec.name}': {len(cells)} cells ({len(cells)} already done, 0 queued, 0 failed beyond "
          f"retries); storage {url}; MLflow parent run {study.user_attrs.get('parent_run_id')}", file=sys.stderr)
    summarize(spec, study, cells)
    if not no_table:
        print()
        print(table_md_path(spec).read_text().rstrip())
        print(f"\nnothing changed since the last launch: tables, plots and report in {tables_dir(spec)}/ are current")
    return 0
