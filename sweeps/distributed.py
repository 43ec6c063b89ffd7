"""`mixmatch worker` and `mixmatch status`: many workers, one sweep, on shared infrastructure.

Owns: the worker command (claim cells from the sweep's Optuna storage until none are left,
train each as a tracked MLflow run, exit) and the status command (cells waiting, running on
which host, done, failed with reason). Coordination is Optuna's RDB storage (PostgreSQL for
many machines); see store.py for why this gives exactly-once training and stale-worker retry.
"""

from __future__ import annotations

import sys

from mixmatch_cli.errors import ArgumentParser, die, user_errors

from . import gpus


def _common(p) -> None:
    p.add_argument("--storage", required=True, help="Optuna storage URL, e.g. postgresql://user@host:5432/db")
    p.add_argument("--sweep", required=True, help="sweep name (the spec's `name`)")


def worker_parser():
    p = ArgumentParser(prog="mixmatch worker", description="Claim and train cells of a published sweep until none are "
                "left. Start one per GPU (CUDA_VISIBLE_DEVICES) on any number of machines.")
    _common(p)
    p.add_argument("--device", default=None, help="device for every cell (default: the cell's own)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per cell (0 = default)")
    p.add_argument("--out-dir", default=None, help="checkpoint root; share it between machines to resume "
                   "a lost worker's cell instead of restarting it")
    p.add_argument("--heartbeat-seconds", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show each cell's progress bar")
    gpus.add_arguments(p)
    return p


def worker_main(argv: list[str]) -> int:
    args = worker_parser().parse_args(argv)
    from mixmatch_core.tracking import check_reachable
    from . import store
    overrides = {"progress": args.progress, "num_threads": args.threads}
    if args.device:
        overrides["device"] = args.device
    if args.out_dir:
        overrides["out_dir"] = args.out_dir
    try:
        with user_errors(store.StorageError):
            slots = gpus.slots_from_args(args)
            check_reachable()
            storage = store.open_storage(args.storage, args.heartbeat_seconds, must_exist=True)
            store.load_sweep_study(storage, args.sweep)
            if slots is not None:   # this process only launches: one pinned `mixmatch worker` per slot
                child = gpus.strip_options(argv, {"--workers-per-gpu": True, "--gpus": True, "--threads": True})
                return gpus.run_pinned(slots, lambda s: [sys.executable, "-m", "mixmatch_cli", "worker", *child,
                                                         "--threads", str(s.threads)],
                                       log=lambda m: print(m, file=sys.stderr, flush=True))
            done = store.run_worker(storage, args.sweep, overrides,
                                    log=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        die("worker interrupted; its cell will be handed to another worker", 130)
    print(f"worker finished: {dict(done) or 'no cells left'}", file=sys.stderr)
    return 0


def status_parser():
    p = ArgumentParser(prog="mixmatch status", description="Cells of a sweep: waiting, running (on which host), "
                       "done, failed. Give the spec (local sweep, default storage) or --storage and --sweep.")
    p.add_argument("spec", nargs="?", help="sweep spec YAML: its name and default storage (sqlite:///optuna/...)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://user@host:5432/db "
                   "(default: the spec's local default)")
    p.add_argument("--sweep", help="sweep name (default: the spec's `name`)")
    return p


def status_main(argv: list[str]) -> int:
    args = status_parser().parse_args(argv)
    from . import store
    name, url = args.sweep, args.storage
    with user_errors(store.StorageError):
        if args.spec:
            from .spec import load_spec
            name = name or load_spec(args.spec).name
            url = url or store.default_sweep_storage(name)
        if not (name and url):
            die("mixmatch status: give a sweep spec, or both --storage and --sweep")
        storage = store.open_storage(url, must_exist=True, read_only=True)
        study = store.load_sweep_study(storage, name)
    states = store.cell_states(study)
    order = {"running": 0, "waiting": 1, "failed": 2, "done": 3}
    print(f"{'cell':<36} {'cell_key':<13} {'state':<8} {'tries':>5}  detail")
    for s in sorted(states.values(), key=lambda s: (order[s.state], s.run_name)):
        detail = (f"on {s.host}" if s.state == "running" else f"error {s.error:.2f}%" if s.state == "done"
                  else s.reason if s.state == "failed" else "")
        print(f"{s.run_name:<36} {s.cell_key:<13} {s.state:<8} {s.attempts:>5}  {detail}")
    n = store.counts(study)
    print(f"\n{len(states)} cells: {n['waiting']} waiting, {n['running']} running, {n['done']} done, "
          f"{n['failed']} failed")
    return 0
