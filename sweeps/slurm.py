"""`mixmatch slurm`: a sweep's workers as ONE Slurm job array, submitted through submitit.

Owns: the command (every option checked before anything is published or submitted), the job
each array task runs (`SweepJob`: one `mixmatch worker --workers-per-gpu N` on the sweep's
shared storage, i.e. N pinned workers per GPU of the job), and its requeue after a time limit
or a preemption through submitit's checkpointing.

How a requeue keeps "exactly once": submitit signals the job (SIGUSR2, `signal_delay_s`
before the limit, or on preemption), calls `SweepJob.checkpoint`, which SIGKILLs the job's
workers and returns the same job for resubmission. The cells those workers held stop
heartbeating; after 3 heartbeats the first worker to look (a sibling job, or the requeued job
itself) re-queues each one (store.py) and resumes it from its checkpoint in the shared
`--out-dir`, continuing the same MLflow run. Like a lost machine, a requeue costs the cell
one of its `retries`.

    mixmatch slurm SPEC --storage postgresql://... --jobs 16 --partition gpu --gpus-per-job 1 \\
        --workers-per-gpu 4 --time 240 [--executor slurm|local] [--slurm-option qos=high ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from submitit.helpers import Checkpointable

from mixmatch_cli.errors import ArgumentParser, die
from mixmatch_core.config import ConfigError

from . import gpus

EXECUTORS = ("slurm", "local")


class SweepJob(Checkpointable):
    """One task of the job array: run this job's pinned workers on the sweep until no cell is
    left. Picklable (submitit sends it to the job); the worker processes are not part of its
    state."""

    def __init__(self, storage: str, sweep: str, workers_per_gpu: int, cwd: str, env: dict[str, str],
                 out_dir: str | None = None, heartbeat_seconds: int | None = None):
        self.storage, self.sweep, self.workers_per_gpu = storage, sweep, workers_per_gpu
        self.cwd, self.env, self.out_dir, self.heartbeat_seconds = cwd, env, out_dir, heartbeat_seconds
        self.attempt = 0            # calls of this job, requeues included (the state survives a requeue)
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mixmatch_cli", "worker", "--storage", self.storage, "--sweep", self.sweep,
               "--workers-per-gpu", str(self.workers_per_gpu)]
        cmd += ["--out-dir", self.out_dir] if self.out_dir else []
        cmd += ["--heartbeat-seconds", str(self.heartbeat_seconds)] if self.heartbeat_seconds else []
        return cmd

    def __call__(self, index: int) -> dict:
        self.attempt += 1
        os.chdir(self.cwd)          # relative storage, tracking and out_dir paths mean the submitter's
        env = {**os.environ, **self.env}
        print(f"array task {index}, attempt {self.attempt}: GPUs {gpus.visible_gpus(env) or 'none'}, "
              f"{gpus.cpu_cores()} cores: {' '.join(self.command())}", flush=True)
        # Its own session: checkpoint() stops the launcher and its workers with one killpg. And it
        # dies with this process (a job killed outright must not leave workers training on).
        self._proc = subprocess.Popen(self.command(), env=env, start_new_session=True,
                                      preexec_fn=gpus.tie_to_parent)
        try:
            while self._proc.poll() is None:
                time.sleep(0.5)     # a sleep, not wait(): submitit's signal handler runs between polls
        finally:
            self._kill()
        code = self._proc.returncode
        if code != 0:
            raise RuntimeError(f"array task {index}: `mixmatch worker` exited with {code} (see this job's log)")
        return {"index": index, "attempt": self.attempt, "exit_code": code}

    def checkpoint(self, *args, **kwargs):
        """Time limit or preemption: stop the workers now (their cells are re-queued and resumed
        from their checkpoints) and resubmit this job with the same array index."""
        self._kill()
        return super().checkpoint(*args, **kwargs)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proc": None}


# ---- the command --------------------------------------------------------------------------------
def _option_value(text: str):
    """KEY=VALUE of --slurm-option: integers become int (submitit checks types), the rest str."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), int(value) if value.strip().lstrip("-").isdigit() else value


def make_executor(args, folder: str):
    """The submitit executor with every Slurm parameter set; any rejection is a ConfigError."""
    import submitit
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=args.executor)
    except RuntimeError as e:       # SlurmExecutor without `srun` on this machine
        raise ConfigError(f"--executor {args.executor}: {str(e).splitlines()[0]}; allowed: "
                          f"{', '.join(EXECUTORS)} (local runs the jobs on this machine)") from None
    params = dict(name=f"mixmatch-{args.sweep or Path(args.spec).stem}", timeout_min=args.time,
                  gpus_per_node=args.gpus_per_job, tasks_per_node=1, nodes=1, cpus_per_task=args.cpus_per_job,
                  slurm_partition=args.partition, slurm_array_parallelism=args.jobs)
    if args.mem_gb is not None:
        params["mem_gb"] = args.mem_gb
    for key, value in args.slurm_option:
        try:
            executor.update_parameters(**{f"slurm_{key}": value})
        except NameError:
            allowed = ", ".join(sorted(submitit.SlurmExecutor._valid_parameters()))
            raise ConfigError(f"--slurm-option {key}: not a parameter of submitit's SlurmExecutor; "
                              f"allowed: {allowed}") from None
        except (ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"--slurm-option {key}={value}: submitit rejects it: "
                              f"{str(e).strip().splitlines()[0][:200]}") from None
    try:
        executor.update_parameters(**params)
    except (NameError, ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"slurm options: submitit rejects them ({str(e).splitlines()[0][:200]})") from None
    return executor


def slurm_parser():
    p = ArgumentParser(prog="mixmatch slurm", description="Submit a sweep's workers as one Slurm job array "
                       "(submitit): each job runs N pinned workers per GPU on the sweep's shared storage and is "
                       "requeued, its cells resumed from their checkpoints, after a time limit or preemption.")
    p.add_argument("spec", nargs="?", help="sweep spec: publish its cells first (else give --sweep)")
    p.add_argument("--storage", help="Optuna storage URL every job can reach (default with a spec: its "
                   "sqlite:///optuna/... file, for --executor local)")
    p.add_argument("--sweep", help="an already published sweep's name (instead of SPEC)")
    p.add_argument("--jobs", type=gpus.positive_int, required=True, help="array tasks (jobs) to submit")
    p.add_argument("--gpus-per-job", type=gpus.positive_int, required=True, help="GPUs of each job")
    p.add_argument("--workers-per-gpu", type=gpus.positive_int, default=1, help="pinned workers per GPU")
    p.add_argument("--time", type=gpus.positive_int, required=True, metavar="MINUTES", help="time limit of a job")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--cpus-per-job", type=gpus.positive_int, default=None, help="Slurm cpus-per-task")
    p.add_argument("--mem-gb", type=float, default=None, help="memory of a job in GB")
    p.add_argument("--slurm-option", type=_option_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other parameter of submitit's SlurmExecutor (qos=high, account=x, ...); repeatable")
    p.add_argument("--executor", choices=EXECUTORS, default="slurm",
                   help="slurm (default) or local: submitit's LocalExecutor runs the jobs on this machine")
    p.add_argument("--folder", default="runs/_slurm", help="submitit's job folder (logs, pickles), shared by the jobs")
    p.add_argument("--out-dir", default=None, help="checkpoint root shared by every job (default: the cells')")
    p.add_argument("--heartbeat-seconds", type=gpus.positive_int, default=None)
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report how each ended")
    return p


def slurm_main(argv: list[str]) -> int:
    args = slurm_parser().parse_args(argv)

    from mixmatch_core.tracking import TrackingError, check_reachable, tracking_uri
    from . import store
    try:
        if bool(args.spec) == bool(args.sweep):
            raise ConfigError("mixmatch slurm: give a sweep spec or --sweep NAME (with --storage), not both")
        if args.sweep and not args.storage:
            raise ConfigError("--storage: required with --sweep")
        if args.executor == "local":     # the jobs share this machine's GPUs
            gpus.choose_gpus(args.gpus_per_job, gpus.visible_gpus(), "--gpus-per-job",
                             "the local executor runs every job on this machine's GPUs")
        with tempfile.TemporaryDirectory() as d:   # check the options without creating args.folder
            make_executor(args, d)
        if args.spec:
            from .spec import load_spec
            sweep = load_spec(args.spec).name
            url = args.storage or store.default_sweep_storage(sweep)
        else:
            sweep, url = args.sweep, args.storage
        store.check_storage_url(url)
        check_reachable()
        if args.sweep:
            store.load_sweep_study(store.open_storage(url, args.heartbeat_seconds, must_exist=True), sweep)
    except (ConfigError, TrackingError, store.StorageError) as e:
        die(str(e))
    if args.spec:       # publish (or top up) the cells, with the sweep's MLflow parent run; no local workers
        from .runner import sweep_main
        pub = [args.spec, "--workers", "0", "--storage", url, "--no-table"]
        sweep_main(pub + (["--heartbeat-seconds", str(args.heartbeat_seconds)] if args.heartbeat_seconds else []))

    executor = make_executor(args, args.folder)
    job = SweepJob(url, sweep, args.workers_per_gpu, os.getcwd(), {"MLFLOW_TRACKING_URI": tracking_uri()},
                   args.out_dir, args.heartbeat_seconds)
    try:
        jobs = executor.map_array(job, range(args.jobs))    # ONE job array of `jobs` tasks
    except Exception as e:  # noqa: BLE001 - sbatch errors: one line, nothing was submitted
        die(f"submitting to {args.executor} failed: {str(e).strip().splitlines()[0][:300]}", 1)
    print(f"submitted {len(jobs)} job(s) as one {args.executor} array for sweep '{sweep}': "
          f"job ids {', '.join(j.job_id for j in jobs)}; logs in {args.folder}", flush=True)
    print(f"follow: mixmatch status --storage {url} --sweep {sweep}", flush=True)
    if not args.wait:
        return 0
    failed = 0
    for j in jobs:
        try:
            r = j.result()
            print(f"job {j.job_id}: finished (array task {r['index']}, attempt {r['attempt']})", flush=True)
        except Exception as e:  # noqa: BLE001 - killed, failed or out of requeues
            failed += 1
            print(f"job {j.job_id}: did not finish ({type(e).__name__}: "
                  f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})", flush=True)
    return 1 if failed else 0
