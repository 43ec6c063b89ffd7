"""`mixmatch slurm` (sweeps/slurm.py): option checks, the checkpointable job, and one real job
array run by submitit's LocalExecutor on this machine: of its two jobs, one is SIGKILLed
mid-cell and the other is preempted mid-cell, requeued, and drains the sweep, resuming both
stopped cells from their checkpoints. The GPU list is mocked (CUDA_VISIBLE_DEVICES); the cells
train on the CPU."""

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from sweeps.slurm import SweepJob

from test_failures import assert_nothing_started, cli, the_error_line
from test_sweep import write_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["--jobs", "2", "--gpus-per-job", "1", "--time", "30", "--executor", "local"]
BAD = {
    "zero-workers-per-gpu": (["--workers-per-gpu", "0"], ("--workers-per-gpu", ">= 1")),
    "zero-jobs": (["--jobs", "0"], ("--jobs", ">= 1")),
    "more-gpus-than-visible": (["--gpus-per-job", "2"], ("--gpus-per-job", "allowed: 1..1")),
    "unknown-slurm-option": (["--slurm-option", "bogus=1"], ("--slurm-option bogus", "allowed:", "qos")),
    "slurm-option-without-value": (["--slurm-option", "qos"], ("--slurm-option", "KEY=VALUE")),
    "no-slurm-here": (["--executor", "slurm"], ("--executor slurm", "srun", "allowed: slurm, local")),
    "unknown-executor": (["--executor", "pbs"], ("--executor", "slurm", "local")),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_slurm_option_is_one_line_and_nothing_is_submitted(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    write_spec(tmp_path)
    opts, words = BAD[case]
    code, _, err = cli(["slurm", "spec.yaml", *GOOD, *opts], capsys)
    line = the_error_line(err)
    assert code == 2 and all(w in line for w in words), line
    assert_nothing_started(tmp_path)      # also: no runs/_slurm job folder


def test_checkpoint_stops_the_workers_and_resubmits_the_same_job_with_its_index(tmp_path):
    job = SweepJob("sqlite:///x.db", "s", 2, str(tmp_path), {})
    job.attempt = 1
    job._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    delayed = job.checkpoint(3)
    assert job._proc.returncode == -signal.SIGKILL
    assert delayed.function is job and delayed.args == (3,)
    again = pickle.loads(pickle.dumps(delayed.function))     # what submitit pickles for the requeue
    assert again.attempt == 1 and again._proc is None and again.command()[-2:] == ["--workers-per-gpu", "2"]


# ---- real job arrays on submitit's LocalExecutor -------------------------------------------------
SPEC_GRID = "grid: {n_labeled: [50], variant: [mixmatch], seed: [1, 2, 3]}\nretries: 2\n"


def _submit(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """`mixmatch slurm ... --jobs 2 --executor local --wait` in the background; returns it and the
    job ids (the local controllers' pids)."""
    # One thread per cell: two jobs' workers share this machine's cores (spin-waiting OpenMP
    # threads on oversubscribed cores make every step several times slower).
    spec = write_spec(tmp_path, SPEC_GRID).read_text().replace("steps: 30", "steps: 100, num_threads: 1")
    (tmp_path / "spec.yaml").write_text(spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mixmatch_cli", "slurm", "spec.yaml", "--storage", f"sqlite:///{tmp_path}/optuna.db",
           "--jobs", "2", "--gpus-per-job", "1", "--workers-per-gpu", "1", "--time", "30",
           "--executor", "local", "--heartbeat-seconds", "1", "--wait"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "cli.log", "w"),
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        m = re.search(r"job ids ([\d, ]+);", line)
        if m:
            return proc, [int(x) for x in m.group(1).split(",")]
        assert time.time() < deadline
    raise AssertionError("no job ids printed: " + (tmp_path / "cli.log").read_text()[-2000:])


def _wait_until_mid_cell(tmp_path, job_pid: int, timeout: float = 240) -> psutil.Process:
    """Wait until a worker under job `job_pid` trains a cell that has a checkpoint; returns the job."""
    import optuna
    from sweeps.store import load_sweep_study, open_storage
    job = psutil.Process(job_pid)
    study = load_sweep_study(open_storage(f"sqlite:///{tmp_path}/optuna.db", read_only=True), "tiny")
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = {p.pid for p in job.children(recursive=True)}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if int(t.user_attrs.get("host", ":0").rsplit(":", 1)[1]) in pids and \
                    list(tmp_path.glob(f"runs/{t.user_attrs['run_name']}-*/ckpt.pt")):
                return job
        time.sleep(0.3)
    raise AssertionError("no worker of the job got mid-cell")


def _finish(proc: subprocess.Popen, tmp_path, timeout: float = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def _runs_by_cell(tmp_path):
    """Each cell's MLflow runs' statuses, deleted runs included (a cell that started over instead
    of resuming its checkpoint deletes its unfinished run and makes a new one)."""
    from mlflow.entities import ViewType
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    df = mlflow.search_runs(experiment_names=["tiny-exp"], filter_string="tags.sweep = 'tiny'",
                            run_view_type=ViewType.ALL)
    cells = df[df["tags.mixmatch.role"] == "cell"]
    return {k: sorted(g["status"]) for k, g in cells.groupby("tags.cell_key")}


@pytest.mark.slow
def test_of_two_local_jobs_one_killed_one_preempted_mid_cell_the_requeued_one_resumes_every_cell_once(tmp_path):
    proc, (killed_id, preempted_id) = _submit(tmp_path)
    try:
        job = _wait_until_mid_cell(tmp_path, killed_id)
        for p in [job] + job.children(recursive=True):     # the whole job, as scancel -s KILL would
            p.kill()
        job = _wait_until_mid_cell(tmp_path, preempted_id)
        (task,) = job.children()               # the submitit task running SweepJob
        task.send_signal(signal.SIGUSR2)       # submitit's preemption / time-limit signal
    finally:
        out = _finish(proc, tmp_path)
    assert f"job {killed_id}: did not finish" in out, out
    assert f"job {preempted_id}: finished (array task 1, attempt 2)" in out, out
    # Every cell FINISHED exactly once, in one MLflow run: both stopped cells resumed their runs.
    runs = _runs_by_cell(tmp_path)
    assert runs == {k: ["FINISHED"] for k in runs} and len(runs) == 3, runs
