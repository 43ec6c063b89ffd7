"""`mixmatch slurm`: a sweep's workers as ONE Slurm job array, submitted through submitit.

Owns the command's arguments, their checks (every option before anything is published or
submitted), publishing the spec's cells (the same `publish_sweep` as `mixmatch sweep`),
submitting the array and, with --wait, how each job ended. The job itself and the executor
are sweeps.slurm's.

    mixmatch slurm SPEC --storage postgresql://... --jobs 16 --partition gpu --gpus-per-job 1 \\
        --workers-per-gpu 4 --time 240 [--executor slurm|local] [--slurm-option qos=high ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from mixmatch_core.config import ConfigError
from mixmatch_core.tracking import check_reachable, tracking_uri
from sweeps import gpus, runner, store
from sweeps.slurm import EXECUTORS, Resources, SweepJob, make_executor
from sweeps.spec import Spec, load_spec

from .errors import ArgumentParser, die, user_errors
from .options import positive_int


def _option_value(text: str):
    """KEY=VALUE of --slurm-option: integers become int (submitit checks types), the rest str."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), int(value) if value.strip().lstrip("-").isdigit() else value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch slurm", description="Submit a sweep's workers as one Slurm job array "
                       "(submitit): each job runs N pinned workers per GPU on the sweep's shared storage and is "
                       "requeued, its cells resumed from their checkpoints, after a time limit or preemption.")
    p.add_argument("spec", nargs="?", help="sweep spec: publish its cells first (else give --sweep)")
    p.add_argument("--storage", help="Optuna storage URL every job can reach (default with a spec: its "
                   "sqlite:///optuna/... file, for --executor local)")
    p.add_argument("--sweep", help="an already published sweep's name (instead of SPEC)")
    p.add_argument("--jobs", type=positive_int, required=True, help="array tasks (jobs) to submit")
    p.add_argument("--gpus-per-job", type=positive_int, required=True, help="GPUs of each job")
    p.add_argument("--workers-per-gpu", type=positive_int, default=1, help="pinned workers per GPU")
    p.add_argument("--time", type=positive_int, required=True, metavar="MINUTES", help="time limit of a job")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--cpus-per-job", type=positive_int, default=None, help="Slurm cpus-per-task")
    p.add_argument("--mem-gb", type=float, default=None, help="memory of a job in GB")
    p.add_argument("--slurm-option", type=_option_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other parameter of submitit's SlurmExecutor (qos=high, account=x, ...); repeatable")
    p.add_argument("--executor", choices=EXECUTORS, default="slurm",
                   help="slurm (default) or local: submitit's LocalExecutor runs the jobs on this machine")
    p.add_argument("--folder", default="runs/_slurm", help="submitit's job folder (logs, pickles), shared by the jobs")
    p.add_argument("--out-dir", default=None, help="checkpoint root shared by every job (default: the cells')")
    p.add_argument("--heartbeat-seconds", type=positive_int, default=None)
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report how each ended")
    return p


def resources(args) -> Resources:
    return Resources(name=f"mixmatch-{args.sweep or Path(args.spec).stem}", jobs=args.jobs,
                     gpus_per_job=args.gpus_per_job, time_min=args.time, partition=args.partition,
                     cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, options=args.slurm_option)


def check(args) -> tuple[Spec | None, str, str]:
    """Every option, before anything is published or submitted: the spec (None with --sweep),
    the sweep's name and its storage URL."""
    if bool(args.spec) == bool(args.sweep):
        raise ConfigError("mixmatch slurm: give a sweep spec or --sweep NAME (with --storage), not both")
    if args.sweep and not args.storage:
        raise ConfigError("--storage: required with --sweep")
    if args.executor == "local":     # the jobs share this machine's GPUs
        gpus.choose_gpus(args.gpus_per_job, gpus.visible_gpus(), "--gpus-per-job",
                         "the local executor runs every job on this machine's GPUs")
    with tempfile.TemporaryDirectory() as d:   # check the options without creating args.folder
        make_executor(args.executor, d, resources(args))
    spec = load_spec(args.spec) if args.spec else None
    sweep = spec.name if spec else args.sweep
    url = args.storage or store.default_sweep_storage(sweep)
    store.check_storage_url(url)
    check_reachable()
    return spec, sweep, url


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with user_errors(store.StorageError):
        spec, sweep, url = check(args)
        storage = store.open_storage(url, args.heartbeat_seconds, must_exist=spec is None,
                                     max_retry=spec.retries if spec else 2)
        if spec is None:
            store.load_sweep_study(storage, sweep)
    if spec is not None:       # publish (or top up) the cells, with the sweep's MLflow parent run
        runner.publish_sweep(spec, spec.cells(), storage, url)
    executor = make_executor(args.executor, args.folder, resources(args))
    job = SweepJob(url, sweep, args.workers_per_gpu, os.getcwd(), {"MLFLOW_TRACKING_URI": tracking_uri()},
                   args.out_dir, args.heartbeat_seconds)
    try:
        jobs = executor.map_array(job, range(args.jobs))    # ONE job array of `jobs` tasks
    except Exception as e:  # noqa: BLE001 - sbatch errors: one line, nothing was submitted
        die(f"submitting to {args.executor} failed: {str(e).strip().splitlines()[0][:300]}", 1)
    print(f"submitted {len(jobs)} job(s) as one {args.executor} array for sweep '{sweep}': "
          f"job ids {', '.join(j.job_id for j in jobs)}; logs in {args.folder}", flush=True)
    print(f"follow: mixmatch status --storage {url} --sweep {sweep}", flush=True)
    return wait_for(jobs, local=args.executor == "local") if args.wait else 0


def wait_for(jobs: list, local: bool = False) -> int:
    """--wait: how each job ended; 1 if any did not finish."""
    failed = 0
    for j in jobs:
        if local:
            # submitit waits up to 15 s for a job's result file in case a shared filesystem is
            # slow to show it; a local job writes it to this machine's disk, and one killed
            # outright never writes it, so its "did not finish" need not wait. (A class
            # attribute that submitit's own tests set per job.)
            j._results_timeout_s = 1
        try:
            r = j.result()
            print(f"job {j.job_id}: finished (array task {r['index']}, attempt {r['attempt']})", flush=True)
        except Exception as e:  # noqa: BLE001 - killed, failed or out of requeues
            failed += 1
            print(f"job {j.job_id}: did not finish ({type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})", flush=True)
    return 1 if failed else 0
