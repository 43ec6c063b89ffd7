"""`mixmatch worker`: claim and train cells of a published sweep until none are left.

Owns the command's arguments, the runtime overrides they give every cell, and, with
--workers-per-gpu, re-running itself as one pinned worker per slot. The worker loop is
sweeps.worker's; coordination is Optuna's RDB storage (PostgreSQL for many machines; see
sweeps/store.py for why this gives exactly-once training and stale-worker retry).
"""

from __future__ import annotations

import sys

from mixmatch_core.tracking import check_reachable
from sweeps import gpus, store
from sweeps.worker import run_worker

from .errors import ArgumentParser, die, user_errors
from .options import add_gpu_arguments


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch worker", description="Claim and train cells of a published sweep until none are "
                "left. Start one per GPU (CUDA_VISIBLE_DEVICES) on any number of machines.")
    p.add_argument("--storage", required=True, help="Optuna storage URL, e.g. postgresql://user@host:5432/db")
    p.add_argument("--sweep", required=True, help="sweep name (the spec's `name`)")
    p.add_argument("--device", default=None, help="device for every cell (default: the cell's own)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per cell (0 = default)")
    p.add_argument("--out-dir", default=None, help="checkpoint root; share it between machines to resume "
                   "a lost worker's cell instead of restarting it")
    p.add_argument("--heartbeat-seconds", type=int, default=None)
    p.add_argument("--progress", action="store_true", help="show each cell's progress bar")
    add_gpu_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    overrides = {"progress": args.progress, "num_threads": args.threads}
    if args.device:
        overrides["device"] = args.device
    if args.out_dir:
        overrides["out_dir"] = args.out_dir
    try:
        with user_errors(store.StorageError):
            slots = gpus.pinned_slots(args.workers_per_gpu, args.gpus)
            check_reachable()
            storage = store.open_storage(args.storage, args.heartbeat_seconds, must_exist=True)
            store.load_sweep_study(storage, args.sweep)
            if slots is not None:   # this process only launches: one pinned `mixmatch worker` per slot
                child = gpus.strip_options(argv, {"--workers-per-gpu": True, "--gpus": True, "--threads": True})
                return gpus.run_pinned(slots, lambda s: [sys.executable, "-m", "mixmatch_cli", "worker", *child,
                                                         "--threads", str(s.threads)], log=_log)
            done = run_worker(storage, args.sweep, overrides, log=_log)
    except KeyboardInterrupt:
        die("worker interrupted; its cell will be handed to another worker", 130)
    print(f"worker finished: {dict(done) or 'no cells left'}", file=sys.stderr)
    return 0


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
