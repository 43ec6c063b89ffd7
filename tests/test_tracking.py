"""Every run is tracked in MLflow: its name, tags, params, metrics by step, final errors, system
metrics and artifacts; its terminal status (FINISHED, FAILED with a reason, KILLED); one run per
cell across a kill and a resume (a real `mixmatch train` SIGKILLed: test_failures.py); a remote
tracking server; and `mixmatch ui` on loopback only.

Each test has its own sqlite store in tmp_path, a copy of one empty store (creating MLflow's
tables takes seconds); the tests of one finished run share that run's store. Runs are tiny: 20
steps of 16 labeled digits, 2 evaluations. Servers started here listen on 127.0.0.1 only and are
killed (with their whole process group) when their test ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from mixmatch_core.config import Config, load_config
from mixmatch_core.models import SmallCNN
from mixmatch_core.tracking import RunTracker, git_commit, start_parent_run
from mixmatch_core.train import train
from mixmatch_cli import main as mixmatch

from mlflow_store import use_store

TINY = ["dataset=digits", "steps=20", "eval_every=10", "log_every=5", "batch_size=16", "median_of=2",
        "progress=false", "device=cpu", "num_threads=1"]
# The `mixmatch` console entry of this venv (or the same entry point through -m).
_ENTRY = Path(sys.executable).with_name("mixmatch")
MIXMATCH = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "mixmatch_cli"]
SERVER_START_SECONDS = 60


# ---- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, monkeypatch, empty_store) -> MlflowClient:
    """A fresh store in tmp_path, which is also the cwd (checkpoints go to ./runs)."""
    return MlflowClient(use_store(monkeypatch, tmp_path, empty_store))


def only_run(c: MlflowClient, experiment: str = "mixmatch"):
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def steps_of(c: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A test server needs one web worker (MLflow's default of 4 takes a minute to start on a busy
# 2-core machine) and no background job runner (another process importing MLflow).
LEAN_SERVER = {"MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    """A child in its own session, so that `stop` also ends the workers it spawns."""
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kw)


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group: the child and every worker it spawned. For the
    trainer that is the crash under test; the servers have throwaway stores."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_until(ready, seconds: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"not ready after {seconds} s:\n{log.read_text()[-3000:]}")


# ---- one finished run, inspected by several tests ----------------------------------------------------
@dataclass
class Finished:
    uri: str
    client: MlflowClient
    cfg: Config
    where: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, empty_store) -> Finished:
    """`mixmatch train` of TINY, with system metrics sampled every 0.1 s."""
    where = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        uri = use_store(mp, where, empty_store)
        # MLflow's own knob (seconds): short, so a 20-step run on a fast or a busy machine still
        # gets samples (at 0.5 s one CI run on 2 busy cores logged none)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
        assert mixmatch(["train", *TINY]) == 0
    return Finished(uri, MlflowClient(uri), load_config(overrides=TINY), where)


def test_a_run_is_named_and_tagged_from_its_config(finished, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished.uri)
    runs = mlflow.search_runs(experiment_names=["mixmatch"], output_format="list")
    assert len(runs) == 1
    run, cfg = runs[0], finished.cfg
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "digits-50-s1-mixmatch" == cfg.run_name
    tags = run.data.tags
    assert {k: tags[k] for k in ("dataset", "n_labeled", "seed", "method", "variant", "cell_key")} == {
        "dataset": "digits", "n_labeled": "50", "seed": "1", "method": "mixmatch", "variant": "mixmatch",
        "cell_key": cfg.cell_key}
    assert tags["code_version"] == git_commit() != ""
    assert tags["torch_version"] == torch.__version__
    assert tags["device_name"].startswith("cpu")
    assert "sweep" not in tags and "failure_reason" not in tags and "logging_incomplete" not in tags


def test_the_runs_dataset_is_an_mlflow_input_with_its_labeled_split(finished):
    (inp,) = only_run(finished.client).inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.source_type) == ("digits-50-s1", "code")
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train", "labeled_split.n_labeled": "50",
                                                  "labeled_split.seed": "1", "labeled_split.val_size": "0"}
    assert len(inp.dataset.digest) == 8


def test_experiments_are_created_as_model_training_for_mlflow_3s_ui(finished):
    exp = finished.client.get_experiment_by_name("mixmatch")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_every_resolved_config_field_is_a_param(finished):
    run = only_run(finished.client)
    assert run.data.params == {f.name: str(getattr(finished.cfg, f.name)) for f in fields(Config)}


@pytest.mark.parametrize("key, steps", [
    *[(k, [5, 10, 15, 20]) for k in ("loss", "loss_x", "loss_u", "lambda_u", "lr", "steps_per_s", "images_per_s")],
    ("test_error", [10, 20]),        # the reported (EMA) model
    ("test_error_raw", [10, 20]),    # the live model
    ("test_error_ema", [10, 20]),
])
def test_training_metrics_have_one_point_per_interval(finished, key, steps):
    assert steps_of(finished.client, only_run(finished.client).info.run_id, key) == steps


def test_final_errors_follow_the_reporting_rule(finished):
    c, run_id = finished.client, only_run(finished.client).info.run_id
    test_errors = [m.value for m in sorted(c.get_metric_history(run_id, "test_error"), key=lambda m: m.step)]
    expected = {"error": statistics.median(test_errors[-2:]), "error_last": test_errors[-1],
                "error_best": min(test_errors)}
    for key, value in expected.items():
        history = c.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(20, pytest.approx(value))], key


def test_system_metrics_are_sampled_during_the_run(finished):
    metrics = only_run(finished.client).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)
    assert metrics["system/system_memory_usage_megabytes"] > 0


def _png(path: Path, cfg: Config) -> None:
    import matplotlib.image
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)


def _confusion_csv(path: Path, cfg: Config) -> None:
    import pandas as pd
    conf = pd.read_csv(path, index_col=0)
    assert conf.shape == (10, 10) and conf.to_numpy().sum() > 0
    assert list(conf.columns) == [str(i) for i in range(10)]


def _per_class_csv(path: Path, cfg: Config) -> None:
    import pandas as pd
    per_class = pd.read_csv(path)
    assert list(per_class.columns) == ["class", "n_test", "error"] and len(per_class) == 10
    assert per_class["error"].between(0, 100).all()


def _config_yaml(path: Path, cfg: Config) -> None:
    assert load_config(str(path)) == cfg


def _checkpoint(path: Path, cfg: Config) -> None:
    state = torch.load(path, weights_only=True)
    assert state["cell_key"] == cfg.cell_key and state["step"] == cfg.steps and state["finished"]


@pytest.mark.parametrize("artifact, check", [
    ("config.yaml", _config_yaml),
    ("confusion_matrix.png", _png),
    ("confusion_matrix.csv", _confusion_csv),
    ("per_class_error.csv", _per_class_csv),
    ("learning_curve.png", _png),
    ("checkpoint/ckpt.pt", _checkpoint),
])
def test_artifacts_are_logged_and_open(finished, tmp_path, artifact, check):
    run_id = only_run(finished.client).info.run_id
    path = finished.client.download_artifacts(run_id, artifact, str(tmp_path))
    check(Path(path), finished.cfg)


@pytest.mark.parametrize("status", ["FINISHED", "RUNNING"])  # RUNNING: killed after its last checkpoint
def test_rerunning_a_finished_run_adds_no_run_and_no_points(finished, monkeypatch, status):
    monkeypatch.chdir(finished.where)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished.uri)
    run_id = only_run(finished.client).info.run_id
    finished.client.update_run(run_id, status=status)
    keys = ("loss", "test_error", "error", "error_last", "error_best")
    before = {key: steps_of(finished.client, run_id, key) for key in keys}
    assert mixmatch(["train", *TINY]) == 0
    after = only_run(finished.client)
    assert after.info.run_id == run_id and after.info.status == "FINISHED"
    assert {key: steps_of(finished.client, run_id, key) for key in keys} == before
    assert before["error"] == [20]


# ---- where runs go and when points are sent -----------------------------------------------------
def test_without_a_uri_runs_go_to_mlflow_db_in_the_cwd_with_artifacts_beside_it(tmp_path, monkeypatch,
                                                                                  empty_store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    cfg = load_config(overrides=[*TINY, "experiment=ablations"])
    tracker = RunTracker(cfg, system_metrics=False)
    run_id = tracker.start(None, "cpu")
    (tmp_path / "note.txt").write_text("hello")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.end("FINISHED")
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert c.get_experiment_by_name("ablations").artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert c.get_run(run_id).info.status == "FINISHED"
    assert (tmp_path / "mlartifacts" / run_id / "artifacts" / "note.txt").read_text() == "hello"


def test_metric_points_are_sent_in_batches_only_at_evaluations(store):
    cfg = load_config(overrides=TINY)
    tracker = RunTracker(cfg, system_metrics=False)
    sent, log_batch = [], tracker.client.log_batch

    def spy(run_id, metrics=(), **kw):
        if metrics:
            sent.append(sorted({m.step for m in metrics}))
        return log_batch(run_id, metrics=metrics, **kw)
    tracker.client.log_batch = spy
    train(cfg, tracker=tracker)
    # Points of steps 5 and 10 go out after the evaluation at 10, those of 15 and 20 after the
    # one at 20, then the final errors.
    assert sent == [[5, 10], [15, 20], [20]]


# ---- terminal status ---------------------------------------------------------------------------
def test_a_non_finite_loss_fails_the_run_with_one_line(store, capfd):
    with pytest.raises(SystemExit) as e:
        mixmatch(["train", *TINY, "lambda_u=1e40", "rampup_steps=0"])
    assert e.value.code == 1
    stderr = capfd.readouterr().err  # MLflow's log lines included: they go to the same stream
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "FAILED" in lines[0] and "non-finite" in lines[0], stderr
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert "non-finite" in run.data.tags["failure_reason"]


def test_an_exception_in_training_fails_the_run_naming_it(store, monkeypatch):
    def explode(self, x):
        raise RuntimeError("forward exploded")
    monkeypatch.setattr(SmallCNN, "forward", explode)
    with pytest.raises(RuntimeError, match="forward exploded"):
        mixmatch(["train", *TINY])
    run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "RuntimeError: forward exploded"


def test_an_interrupted_run_is_killed(store):
    cfg = load_config(overrides=TINY)

    def interrupt(step, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tracker=RunTracker(cfg, system_metrics=False), on_eval=interrupt)
    assert only_run(store).info.status == "KILLED"


def test_a_sweep_cell_is_tagged_with_its_sweep_and_nested_under_it(store):
    cfg = load_config(overrides=TINY)
    parent = start_parent_run(cfg.experiment, "abl", {"sweep": "abl"})
    tracker = RunTracker(cfg, parent_run_id=parent, tags={"sweep": "abl"}, system_metrics=False)
    run_id = tracker.start(None, "cpu")
    tracker.end("FINISHED")
    tags = store.get_run(run_id).data.tags
    assert tags["sweep"] == "abl" and tags["mlflow.parentRunId"] == parent


# ---- a remote tracking server ------------------------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path, empty_store):
    """`mlflow server` on a free loopback port, proxying artifacts into tmp_path/server-artifacts."""
    port, db = free_port(), tmp_path / "server.db"
    shutil.copy(empty_store, db)
    log = tmp_path / "server.log"
    proc = start([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
                  "--artifacts-destination", str(tmp_path / "server-artifacts")], log, cwd=tmp_path,
                 env={**os.environ, **LEAN_SERVER})
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    try:
        wait_until(healthy, SERVER_START_SECONDS, proc, log)
        yield url
    finally:
        stop(proc)


@pytest.mark.slow
def test_a_run_is_tracked_through_a_tracking_server(mlflow_server, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert mixmatch(["train", *TINY]) == 0
    assert "View run" not in capfd.readouterr().out     # MLflow's per-run chatter stays out of our output
    c = MlflowClient(mlflow_server)
    run = only_run(c)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert steps_of(c, run.info.run_id, "loss") == [5, 10, 15, 20] and "error" in run.data.metrics
    path = c.download_artifacts(run.info.run_id, "per_class_error.csv", str(tmp_path / "download"))
    _per_class_csv(Path(path), load_config(overrides=TINY))
    assert list((tmp_path / "server-artifacts").rglob("learning_curve.png"))  # stored by the server


# ---- mixmatch ui ---------------------------------------------------------------------------
def test_ui_help_says_it_binds_to_loopback(capsys):
    with pytest.raises(SystemExit) as e:
        mixmatch(["ui", "--help"])
    assert e.value.code == 0 and "default 127.0.0.1" in " ".join(capsys.readouterr().out.split())


def test_ui_prints_the_runs_table_of_the_newest_experiment_in_the_model_training_view(finished, monkeypatch,
                                                                                         capsys):
    import mixmatch_cli.ui
    monkeypatch.chdir(finished.where)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished.uri)
    started = []
    monkeypatch.setattr(mixmatch_cli.ui.os, "execve", lambda exe, cmd, env: started.append(env))
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert mixmatch(["ui", "--port", "5123", "--no-browser"]) == 0
    exp = finished.client.get_experiment_by_name("mixmatch").experiment_id
    url = f"http://127.0.0.1:5123/#/experiments/{exp}/runs?workflowType=machine_learning"
    assert url in capsys.readouterr().err
    # The UI starts without MLflow's job runner (processes it never uses), unless the user asks.
    assert started[0]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert mixmatch(["ui", "--port", "5123", "--no-browser"]) == 0
    assert started[1]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true" and "MLFLOW_TRACKING_URI" in started[1]


def test_ui_names_an_unknown_experiment_in_one_line(finished, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished.uri)
    with pytest.raises(SystemExit) as e:
        mixmatch(["ui", "nope", "--no-browser"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no MLflow experiment named 'nope'" in err


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path):
    """Several workers (or a sweep and searches started together) meeting a store that does not
    exist yet: MLflow's table creation is not safe to run concurrently on SQLite, so every
    process must come through (one creates the tables, the others find them)."""
    import subprocess
    import sys
    code = ("import os, sys, time\n"
            "from mixmatch_core.tracking import client\n"
            "import mlflow.store.tracking.sqlalchemy_store\n"
            "open(sys.argv[1] + '.ready' + sys.argv[2], 'w').close()\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.002)\n"
            "client().search_experiments()\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), str(i)], env=env, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]   # two race: without the lock 4 of 4 runs failed
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.ready*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()                                   # both open the store at the same moment
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [e[-300:] for e in errors if e]


@pytest.mark.parametrize("argv", [["ui", "nope", "--no-browser"], ["ui", "--no-browser"]])
def test_ui_where_nothing_was_tracked_is_one_line_and_creates_no_store(tmp_path, monkeypatch, capsys, argv):
    import mixmatch_cli.ui
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(mixmatch_cli.ui.os, "execve", lambda *a: pytest.fail("the UI was started"))
    with pytest.raises(SystemExit) as e:
        mixmatch(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no MLflow store at sqlite:///mlflow.db" in err
    assert list(tmp_path.iterdir()) == []
