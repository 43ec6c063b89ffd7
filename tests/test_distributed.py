"""Many workers, one sweep: Optuna RDB storage on PostgreSQL and a real MLflow server.

Needs the PostgreSQL at 127.0.0.1:5432 (trust auth) that this project's machines and CI run;
skipped with the reason when it is not there. One MLflow server (on its own fresh database) serves
the module, each test tracking to its own experiment; each test's Optuna storage is a fresh
database. Every database is dropped afterwards and every process started is stopped.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG = dict(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "root"), dbname="postgres")


def _pg_connect():
    import psycopg   # SQLAlchemy 2.1's default driver for postgresql:// URLs (Optuna and MLflow)
    return psycopg.connect(connect_timeout=3, autocommit=True, **PG)


def _pg_available() -> str | None:
    try:
        _pg_connect().close()
        return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable ({type(e).__name__}: {str(e).strip()[:80]})"


pytestmark = [pytest.mark.skipif(_pg_available() is not None, reason=_pg_available() or ""), pytest.mark.slow]


@contextmanager
def _fresh_database():
    """A fresh PostgreSQL database (its URL), dropped afterwards."""
    name = f"mm_test_{uuid.uuid4().hex[:10]}"
    conn = _pg_connect()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{PG['user']}@127.0.0.1:5432/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def optuna_db():
    """The test's Optuna storage."""
    with _fresh_database() as url:
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow server on a fresh backend database, shared by the module's tests."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    with _fresh_database() as backend:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", backend, "--artifacts-destination", str(tmp / "artifacts"),
                                 "--workers", "1"], stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"),
                                start_new_session=True,
                                # no background job runner (huey processes the tracking never uses)
                                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 90
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).read()
                    break
                except Exception:  # noqa: BLE001
                    if time.time() > deadline or proc.poll() is not None:
                        pytest.fail("mlflow server did not start: " + (tmp / "server.log").read_text()[-2000:])
                    time.sleep(0.5)
            yield url
        finally:
            # A throwaway server: SIGKILL (SIGTERM's graceful shutdown takes seconds); its
            # database is dropped with FORCE right after.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _env(tmp_path, tracking):
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": tracking, "OMP_NUM_THREADS": "1"}


SPEC = """name: dist
experiment: dist-exp
base: {dataset: digits, steps: 40, eval_every: 10, log_every: 10, batch_size: 16, median_of: 2, device: cpu}
grid:
  n_labeled: [50, 100]
  seed: [1, 2, 3]
retries: 2
"""


def test_three_workers_one_killed_every_cell_finishes_exactly_once(optuna_db, mlflow_server, tmp_path, monkeypatch,
                                                                   capsys):
    storage = optuna_db
    (tmp_path / "spec.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    from mixmatch_cli import main
    assert main(["sweep", "spec.yaml", "--storage", storage, "--workers", "0"]) == 0     # publish, in-process
    env = _env(tmp_path, mlflow_server)
    mm = [sys.executable, "-m", "mixmatch_cli"]
    workers = [subprocess.Popen(mm + ["worker", "--storage", storage, "--sweep", "dist", "--threads", "1",
                                      "--heartbeat-seconds", "1"], cwd=tmp_path, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"w{i}.log", "w"))
               for i in range(3)]
    try:
        # Kill worker 0 in the middle of a cell: once it has written a checkpoint of its own.
        import optuna
        from sweeps.store import load_sweep_study, open_storage
        study = load_sweep_study(open_storage(storage), "dist")
        victim = workers[0]
        deadline = time.time() + 240
        killed = False
        while time.time() < deadline and not killed:
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("host", "").endswith(f":{victim.pid}"):
                    ckpt = list(tmp_path.glob(f"runs/{t.user_attrs['run_name']}-*/ckpt.pt"))
                    if ckpt:
                        os.killpg(victim.pid, signal.SIGKILL)
                        killed = True
                        break
            time.sleep(0.3)
        assert killed, "worker 0 never got mid-cell"
        for w in workers[1:]:
            assert w.wait(timeout=300) == 0, (tmp_path / "w1.log").read_text()[-2000:]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()

    import mlflow
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["dist-exp"], filter_string="tags.sweep = 'dist'")
    cells = runs[runs["tags.mixmatch.role"] == "cell"]
    finished = cells[cells["status"] == "FINISHED"]
    assert len(finished) == 6 and finished["tags.cell_key"].nunique() == 6
    capsys.readouterr()
    assert main(["status", "--storage", storage, "--sweep", "dist"]) == 0     # in-process: it only reads
    status = capsys.readouterr().out
    assert "6 done" in status and "0 failed" in status
    from sweeps import table
    from sweeps.runs import load_runs
    tab = table.build_table(load_runs("dist", "dist-exp"), None, layout="labels", sweep="dist")
    counted = tab.runs[tab.runs["counted"]]
    assert len(counted) == 6


SEARCH_SPEC = """name: dsearch
experiment: dsearch-exp
base: {dataset: digits, val_size: 100, steps: 40, eval_every: 10, log_every: 10, batch_size: 16, median_of: 2,
       device: cpu, num_threads: 1}
space:
  lr: {type: float, low: 1.0e-3, high: 5.0e-3, log: true}
  T: {type: float, low: 0.3, high: 1.0}
sampler: random
pruner: none
seed: 0
"""


def test_two_search_workers_share_one_study_one_killed_trials_complete_once(optuna_db, mlflow_server, tmp_path):
    storage = optuna_db
    (tmp_path / "search.yaml").write_text(SEARCH_SPEC)
    env = _env(tmp_path, mlflow_server)
    cmd = [sys.executable, "-m", "mixmatch_cli", "search", "search.yaml", "--storage", storage, "--trials", "4",
           "--heartbeat-seconds", "1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / f"s{i}.log", "w")) for i in range(2)]
    try:
        import optuna
        from sweeps.store import open_storage
        st = open_storage(storage)
        deadline = time.time() + 240
        killed = False
        while time.time() < deadline and not killed:
            try:
                study = optuna.load_study(study_name="dsearch", storage=st)
            except KeyError:
                time.sleep(0.5)
                continue
            # Kill process 0 in the middle of a trial: once its trial has a checkpoint.
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("host", "").endswith(f":{procs[0].pid}") and "cell_key" in t.user_attrs and \
                        list(tmp_path.glob(f"runs/**/*-{t.user_attrs['cell_key']}/ckpt.pt")):
                    os.killpg(procs[0].pid, signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.3)
        assert killed, "process 0 never got mid-trial"
        assert procs[1].wait(timeout=300) == 0, (tmp_path / "s1.log").read_text()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    study = optuna.load_study(study_name="dsearch", storage=open_storage(storage))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4, "\n".join([f"{t.number} {t.state.name} {t.user_attrs.get('cell_key')} "
                                       f"{t.user_attrs.get('failure_reason', '')} {t.system_attrs}"
                                       for t in study.get_trials()] + [(tmp_path / "s1.log").read_text()[-3000:]])
    import mlflow
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["dsearch-exp"], filter_string="tags.study = 'dsearch'")
    trials = runs[(runs["tags.mixmatch.role"] == "trial") & (runs["status"] == "FINISHED")]
    assert len(trials) == 4 and trials["tags.cell_key"].nunique() == 4, runs[
        ["status", "tags.mixmatch.role", "tags.cell_key", "tags.trial_number", "tags.mlflow.parentRunId"]].to_string()
    assert (runs["tags.mixmatch.role"] == "study").sum() == 1
