"""A sweep's workers as ONE Slurm job array, submitted through submitit (`mixmatch slurm`).

Owns: the submitit executor with every Slurm parameter checked (`make_executor`, before
anything is published or submitted), the job each array task runs (`SweepJob`: one `mixmatch
worker --workers-per-gpu N` on the sweep's shared storage, i.e. N pinned workers per GPU of the
job), and its requeue after a time limit or a preemption through submitit's checkpointing.

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

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import submitit
from submitit.helpers import Checkpointable

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
        # A string, not an import: sweeps/ knows nothing of the command line's code.
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


@dataclass
class Resources:
    """What the job array asks Slurm for."""
    name: str                       # the jobs' name
    jobs: int                       # array tasks, all allowed to run at once
    gpus_per_job: int
    time_min: int                   # time limit of a job
    partition: str | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    options: list[tuple[str, object]] = field(default_factory=list)   # other SlurmExecutor parameters


def make_executor(cluster: str, folder: str, res: Resources):
    """The submitit executor (`cluster` slurm or local) with every Slurm parameter set; any
    rejection is a ConfigError naming the option."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:       # SlurmExecutor without `srun` on this machine
        raise ConfigError(f"--executor {cluster}: {str(e).splitlines()[0]}; allowed: "
                          f"{', '.join(EXECUTORS)} (local runs the jobs on this machine)") from None
    params = dict(name=res.name, timeout_min=res.time_min, gpus_per_node=res.gpus_per_job, tasks_per_node=1,
                  nodes=1, cpus_per_task=res.cpus_per_job, slurm_partition=res.partition,
                  slurm_array_parallelism=res.jobs)
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    for key, value in res.options:
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
