"""Failure behaviour: kills, crashes, outages and bad input, each promise proven by one test.

docs/failures.md lists every case with what happens and the test below that proves it.
Each test runs in its own tmp_path (also the cwd, so checkpoints go to ./runs) with its own
MLflow store. Runs are tiny (digits, 16-image batches, 20-40 steps, one CPU thread); a
subprocess is used only where a real kill is needed.
"""

from __future__ import annotations

import ast
import functools
import io
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

import mixmatch_core.train as train_module
from mixmatch_core.config import load_config, resolve
from mixmatch_core.tracking import RunTracker
from mixmatch_core.checkpoint import save_checkpoint
from mixmatch_core.train import train
from mixmatch_cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("mixmatch_core", "sweeps", "benchmarks") for p in (ROOT / d).rglob("*.py"))
_ENTRY = Path(sys.executable).with_name("mixmatch")
MIXMATCH = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "mixmatch_cli"]

# 20 steps of 16 digits, evaluations at 10 and 20; one thread is the fastest on a busy machine.
TINY = ["dataset=digits", "steps=20", "eval_every=10", "log_every=5", "batch_size=16", "median_of=2",
        "progress=false", "device=cpu", "num_threads=1"]
SPEC_BASE = ("base: {dataset: digits, steps: 20, eval_every: 10, log_every: 5, batch_size: 16, median_of: 2, "
             "progress: false, device: cpu, num_threads: 1%s}\n")


# ---- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, monkeypatch, empty_store) -> MlflowClient:
    """tmp_path as the cwd, with an empty MLflow store of its own (MLFLOW_TRACKING_URI)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mixmatch ARGV` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def the_error_line(err: str) -> str:
    """stderr must be exactly one non-empty line, `mixmatch: error: ...`; returns it."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("mixmatch: error: "), lines[0]
    return lines[0]


def assert_nothing_started(where: Path) -> None:
    """No checkpoint directory, no Optuna queue, and no experiment or run in MLflow."""
    assert not (where / "runs").exists(), list((where / "runs").rglob("*"))
    assert not (where / "optuna").exists()
    db = where / "mlflow.db"
    if db.exists():
        c = MlflowClient(f"sqlite:///{db}")
        exps = c.search_experiments(view_type=ViewType.ALL)
        assert [e.name for e in exps] == ["Default"]
        assert not c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL)


def all_runs(c: MlflowClient, experiment: str = "mixmatch") -> list:
    """Every run of the experiment, deleted ones included."""
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)


def steps_of(c: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def ckpt_of(argv: list[str]) -> Path:
    return Path(load_config(None, argv).run_dir) / "ckpt.pt"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stop(Exception):
    pass


def stop_at(step: int):
    def on_eval(s, h):
        if s == step:
            raise Stop
    return on_eval


# ---- 1. a training process SIGKILLed mid-step ---------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_training_then_relaunch_ends_with_the_numbers_of_an_uninterrupted_run(store, tmp_path):
    argv = [*TINY, "steps=200"]     # long enough that a fast CPU is still mid-run at the kill
    ckpt = ckpt_of(argv)
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([*MIXMATCH, "train", *argv], cwd=tmp_path, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            killed_at, deadline = 0, time.time() + 180
            while killed_at < 20 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
                if ckpt.exists():        # atomic replace: a read sees the old or the new file
                    killed_at = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert 20 <= killed_at < 200, (killed_at, (tmp_path / "killed.log").read_text()[-2000:])
    (run,) = all_runs(store)
    assert run.info.status == "RUNNING"        # a crash: nobody ended the run; the relaunch continues it

    assert main(["train", *argv]) == 0                                     # the same command resumes
    reference = train(load_config(None, [*argv, "out_dir=reference"]))   # same cell_key, no kill

    resumed = torch.load(ckpt, weights_only=True)
    uninterrupted = torch.load(Path(reference.run_dir) / "ckpt.pt", weights_only=True)
    assert resumed["step"] == 200 and resumed["history"] == reference.history
    for part in ("model", "ema"):
        for k, v in uninterrupted[part].items():
            assert torch.equal(resumed[part][k], v), (part, k)
    (run,) = all_runs(store)                                               # one MLflow run, no gaps
    assert run.info.status == "FINISHED"
    assert run.data.metrics["error"] == reference.metrics["error"]
    assert steps_of(store, run.info.run_id, "test_error") == list(range(10, 201, 10))
    assert steps_of(store, run.info.run_id, "loss") == list(range(5, 201, 5))


# ---- 2. SIGKILL while a checkpoint is being written ---------------------------------------------
def _sigkill_halfway_through_a_checkpoint(path: str) -> None:
    """In a forked child: save_checkpoint whose torch.save writes half the bytes, then SIGKILL."""
    real_save = torch.save

    def torn_save(obj, fh):
        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = torn_save
    save_checkpoint(Path(path), {"cell_key": "newer", "weights": torch.zeros(10_000)})


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_cleans_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, TINY)
    ckpt = Path(cfg.run_dir) / "ckpt.pt"
    with pytest.raises(Stop):
        train(cfg, on_eval=stop_at(10))                                    # checkpoint at step 10
    before = ckpt.read_bytes()
    child = multiprocessing.get_context("fork").Process(target=_sigkill_halfway_through_a_checkpoint,
                                                        args=(str(ckpt),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    (stray,) = Path(cfg.run_dir).glob(".ckpt-*.tmp")                        # the torn temporary file
    assert stray.stat().st_size > 0

    assert ckpt.read_bytes() == before
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["step"] == 10
    resumed = train(cfg)
    assert resumed.status == "FINISHED" and [h["step"] for h in resumed.history] == [10, 20]
    assert not list(Path(cfg.run_dir).glob(".ckpt-*.tmp"))


# ---- 3. corrupt, foreign or malicious checkpoints -----------------------------------------------
class _Payload:
    """Unpickling this runs os.mkdir(marker): what a malicious pickle could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _write_corrupt(ckpt: Path) -> None:
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))


def _write_foreign(ckpt: Path) -> None:
    torch.save({"cell_key": "0123456789ab", "step": 10, "model": {"w": torch.zeros(3)}}, ckpt)


@pytest.mark.parametrize("write,says", [(_write_corrupt, "is corrupt"), (_write_foreign, "another config")],
                         ids=["random-bytes", "another-configs"])
def test_an_unusable_checkpoint_is_one_line_naming_the_file(store, tmp_path, capsys, write, says):
    ckpt = ckpt_of(TINY)
    ckpt.parent.mkdir(parents=True)
    write(ckpt)
    code, _, err = cli(["train", *TINY], capsys)
    line = the_error_line(err)
    assert code == 2 and str(ckpt) in line and says in line and "--restart" in line
    assert not all_runs(store)


def test_a_checkpoint_holding_a_pickled_object_is_refused_not_executed(store, tmp_path, capsys, monkeypatch):
    ckpt, marker = ckpt_of(TINY), tmp_path / "payload-ran"
    ckpt.parent.mkdir(parents=True)
    torch.save({"cell_key": load_config(None, TINY).cell_key, "model": _Payload(str(marker))}, ckpt)
    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    code, _, err = cli(["train", *TINY], capsys)
    assert code == 2 and str(ckpt) in the_error_line(err)
    assert loads and all(kw.get("weights_only") is True for kw in loads)
    assert not marker.exists()
    real_load(ckpt, weights_only=False)          # the payload is real: a full unpickle would run it
    assert marker.exists()


def test_restart_discards_a_corrupt_checkpoint_and_starts_over(store, capsys):
    ckpt = ckpt_of(TINY)
    ckpt.parent.mkdir(parents=True)
    _write_corrupt(ckpt)
    junk = ckpt.read_bytes()
    code, out, _ = cli(["train", *TINY, "--restart"], capsys)
    assert code == 0 and "FINISHED" in out
    assert torch.load(ckpt, weights_only=True)["step"] == 20
    assert ckpt.with_name("ckpt.pt.discarded").read_bytes() == junk
    assert [r.info.status for r in all_runs(store)] == ["FINISHED"]


# ---- 4. a NaN loss or an exception inside a run or a sweep cell ---------------------------------
def test_a_non_finite_loss_fails_the_run_with_its_reason_in_mlflow(store, capsys):
    code, _, err = cli(["train", *TINY, "lambda_u=1e40", "rampup_steps=0"], capsys)
    line = the_error_line(err)
    assert code == 1 and "FAILED" in line and "non-finite loss" in line
    (run,) = all_runs(store)
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure_reason"]


def test_an_exception_inside_one_cell_fails_only_that_cell_and_the_worker_goes_on(store, tmp_path, monkeypatch):
    from sweeps import store as queue
    from sweeps.worker import run_worker
    cells = [resolve({**dict(a.split("=") for a in TINY), "variant": "supervised", "seed": seed,
                      "experiment": "crash-exp"}) for seed in (1, 2)]
    real_step = train_module.train_step

    def crash_in_seed_2(cfg, *args):
        if cfg.seed == 2:
            raise RuntimeError("simulated crash in cell seed 2")
        return real_step(cfg, *args)

    monkeypatch.setattr(train_module, "train_step", crash_in_seed_2)
    storage = queue.open_storage(f"sqlite:///{tmp_path / 'queue.db'}")
    queue.publish(storage, "crash", cells, {}, retries=0)
    done = run_worker(storage, "crash", {"num_threads": 1}, log=lambda msg: None)
    assert done == Counter(COMPLETE=1, FAIL=1)
    states = queue.cell_states(queue.load_sweep_study(storage, "crash"))
    assert states[cells[0].cell_key].state == "done"
    assert states[cells[1].cell_key].state == "failed" and "simulated crash" in states[cells[1].cell_key].reason
    runs = {r.data.tags["seed"]: r for r in all_runs(store, "crash-exp")}
    assert runs["1"].info.status == "FINISHED" and runs["2"].info.status == "FAILED"
    assert "RuntimeError: simulated crash" in runs["2"].data.tags["failure_reason"]


@pytest.mark.parametrize("stale_at_step", [10, 20])
def test_a_worker_whose_heartbeat_went_stale_hands_its_cell_over_and_it_is_trained_once(
        store, tmp_path, monkeypatch, stale_at_step):
    # A live worker whose heartbeat went stale (stalled machine, network partition) has its cell
    # failed and re-queued. It must stop before writing its next evaluation, leave the MLflow
    # run alone, and survive Optuna refusing to tell the finished trial. Stale mid-run (step 10):
    # the retry resumes from the checkpoint. Stale after the last evaluation (step 20): the
    # retry finds the finished run and trains nothing.
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from sweeps import store as queue
    from sweeps.worker import run_worker
    cell = resolve({**dict(a.split("=") for a in TINY), "variant": "supervised", "experiment": "stale-exp"})
    storage = queue.open_storage(f"sqlite:///{tmp_path / 'queue.db'}")
    queue.publish(storage, "stale", [cell], {}, retries=2)
    study = queue.load_sweep_study(storage, "stale")
    real_train, calls = train_module.train, []

    def train_and_go_stale_once(cfg, tracker=None, on_eval=None, **kw):
        calls.append(cfg.cell_key)

        def hook(step, h):
            if len(calls) == 1 and step == stale_at_step:   # what fail_stale_trials does elsewhere
                (t,) = study.get_trials(states=(TrialState.RUNNING,))
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                RetryHeartbeatStaleTrialCallback(max_retry=2)(study, storage.get_trial(t._trial_id))
            if on_eval is not None:
                on_eval(step, h)
        return real_train(cfg, tracker=tracker, on_eval=hook, **kw)

    monkeypatch.setattr(train_module, "train", train_and_go_stale_once)
    lines = []
    done = run_worker(storage, "stale", {"num_threads": 1}, log=lines.append)
    assert done == Counter(HANDED_OFF=1, COMPLETE=1) and any("handed to another worker" in m for m in lines)
    assert len(calls) == (2 if stale_at_step == 10 else 1)
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "FAIL"]
    (run,) = all_runs(store, "stale-exp")        # the same run resumed or reused: one, finished
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert steps_of(store, run.info.run_id, "test_error") == [10, 20]     # nothing logged twice


FAILING_SPEC = ("name: failing\nexperiment: failing-exp\n" + SPEC_BASE % "" +
                "variants: {boom: {lambda_u: 1.0e+40, rampup_steps: 0}}\n"
                "grid: {variant: [supervised, boom]}\nretries: 1\n")


def test_a_failing_cell_fails_the_sweep_not_its_other_cells_and_is_retried_at_most_retries_times(
        store, tmp_path, capsys, monkeypatch):
    import optuna

    from sweeps import render, runner, table, worker
    from sweeps import store as queue
    from sweeps.runs import load_runs
    from sweeps.spec import load_spec
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    spec = load_spec("spec.yaml")
    ok, boom = (c.cell_key for c in spec.cells())
    # `mixmatch sweep` in this process, its worker too: the same `run_worker` loop a `mixmatch
    # worker` process runs (a new process costs ~30 s of imports on a busy machine; the worker
    # processes themselves are exercised by test_sweep.py).
    monkeypatch.setattr(runner, "run_local_workers", lambda spec, url, *rest: worker.run_worker(
        queue.open_storage(url), spec.name, {"num_threads": 1}, log=lambda msg: None))
    code, out, _ = cli(["sweep", "spec.yaml", "--workers", "1", "--no-table"], capsys)
    assert code == 1 and "1 done, 1 failed" in out and "non-finite loss" in out

    def cell_runs():
        return {r.data.tags["cell_key"]: r for r in all_runs(store, "failing-exp")
                if r.data.tags.get("mixmatch.role") == "cell" and r.info.lifecycle_stage == "active"}

    runs = cell_runs()
    assert runs[ok].info.status == "FINISHED"
    assert runs[boom].info.status == "FAILED" and "non-finite loss" in runs[boom].data.tags["failure_reason"]
    (parent,) = [r for r in all_runs(store, "failing-exp") if r.data.tags.get("mixmatch.role") == "sweep"]
    assert parent.info.status == "FAILED"
    tab = table.build_table(load_runs("failing", "failing-exp"), spec.cells(), layout=spec.layout,
                            sweep="failing")
    assert "failed" in render.to_markdown(tab)

    study = optuna.load_study(study_name="sweep:failing", storage="sqlite:///optuna/sweep-failing.db")

    def trials(key):
        return Counter(t.state.name for t in study.get_trials() if t.user_attrs.get("cell_key") == key)

    assert main(["sweep", "spec.yaml", "--workers", "1", "--no-table"]) == 1     # retry 1 of 1
    assert trials(boom) == Counter(FAIL=2) and trials(ok) == Counter(COMPLETE=1)
    capsys.readouterr()
    assert main(["sweep", "spec.yaml", "--workers", "1", "--no-table"]) == 1     # retries exhausted
    assert "1 failed beyond retries" in capsys.readouterr().err
    assert trials(boom) == Counter(FAIL=2) and trials(ok) == Counter(COMPLETE=1)
    assert cell_runs()[ok].info.run_id == runs[ok].info.run_id                 # never re-run
    assert sum(r.data.tags["cell_key"] == ok for r in all_runs(store, "failing-exp")
               if r.data.tags.get("mixmatch.role") == "cell") == 1


# ---- 5. MLflow unreachable at start, or lost mid-run --------------------------------------------
@pytest.mark.parametrize("command", [["train", *TINY], ["sweep", "spec.yaml", "--workers", "1"]],
                         ids=["train", "sweep"])
def test_an_unreachable_tracking_server_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys,
                                                                           command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    code, _, err = cli(command, capsys)
    assert code == 2 and url in the_error_line(err)
    assert_nothing_started(tmp_path)


class Outage:
    """An MlflowClient whose every call raises, like a lost server, while `down` is true."""

    def __init__(self, client):
        self._client, self.down, self.failed_calls = client, False, 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                self.failed_calls += 1
                raise ConnectionError(f"MLflow server lost ({name})")
            return attr(*args, **kwargs)
        return call


def train_through_outage(down_after: int, up_after: int | None, steps: int):
    """Train with the server lost after the evaluation at `down_after` and back after `up_after`."""
    cfg = load_config(None, [*TINY, f"steps={steps}"])
    tracker = RunTracker(cfg, system_metrics=False)
    outage = tracker.client = Outage(tracker.client)

    def on_eval(step, h):
        if step == down_after:
            outage.down = True
        if step == up_after:
            outage.down = False

    return cfg, tracker, outage, train(cfg, tracker=tracker, on_eval=on_eval)


def test_mlflow_lost_mid_run_training_goes_on_and_the_points_arrive_when_it_is_back(store):
    cfg, tracker, outage, result = train_through_outage(down_after=10, up_after=20, steps=30)
    assert result.status == "FINISHED" and outage.failed_calls > 0 and tracker.incomplete
    assert torch.load(Path(cfg.run_dir) / "ckpt.pt", weights_only=True)["step"] == 30
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["error"] == result.metrics["error"]
    assert steps_of(store, result.run_id, "test_error") == [10, 20, 30]
    assert steps_of(store, result.run_id, "loss") == list(range(5, 31, 5))


def test_a_run_whose_points_all_arrived_after_an_outage_is_not_tagged_logging_incomplete(store):
    _, _, _, result = train_through_outage(down_after=10, up_after=20, steps=30)
    assert "logging_incomplete" not in store.get_run(result.run_id).data.tags


def test_mlflow_lost_for_good_keeps_the_points_in_the_checkpoint_and_a_rerun_delivers_them(store):
    cfg, tracker, outage, result = train_through_outage(down_after=10, up_after=None, steps=20)
    assert result.status == "FINISHED" and tracker.incomplete
    state = torch.load(Path(cfg.run_dir) / "ckpt.pt", weights_only=True)
    assert state["finished"] and ("test_error", 20) in {(k, s) for k, _, s, _ in state["pending"]}
    assert store.get_run(result.run_id).info.status == "RUNNING"   # the server never heard the end
    assert steps_of(store, result.run_id, "test_error") == [10]

    # The server is back: the same command trains nothing and delivers everything.
    again = train(cfg, tracker=RunTracker(cfg, system_metrics=False),
                  on_eval=lambda step, h: pytest.fail("trained again"))
    assert again.run_id == result.run_id and again.metrics == result.metrics
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["error"] == result.metrics["error"]
    assert steps_of(store, result.run_id, "test_error") == [10, 20]
    assert steps_of(store, result.run_id, "loss") == [5, 10, 15, 20]


# ---- 6. Optuna storage unreachable or of an unknown kind ----------------------------------------
STORAGE_COMMANDS = {
    "sweep": lambda url: ["sweep", "spec.yaml", "--workers", "1", "--storage", url],
    "worker": lambda url: ["worker", "--storage", url, "--sweep", "failing"],
    "status": lambda url: ["status", "--storage", url, "--sweep", "failing"],
}


@pytest.mark.parametrize("command", STORAGE_COMMANDS)
def test_an_unreachable_optuna_storage_is_one_line_and_nothing_starts(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    code, _, err = cli(STORAGE_COMMANDS[command]("postgresql://nobody@127.0.0.1:1/x"), capsys)
    line = the_error_line(err)
    assert code == 2 and "postgresql://nobody@127.0.0.1:1/x" in line and "unreachable" in line
    assert_nothing_started(tmp_path)


@pytest.mark.parametrize("command", STORAGE_COMMANDS)
def test_an_unknown_storage_scheme_is_one_line_naming_the_allowed_ones(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    code, _, err = cli(STORAGE_COMMANDS[command]("redis://x"), capsys)
    line = the_error_line(err)
    assert code == 2 and "'redis'" in line and "sqlite" in line and "postgresql" in line
    assert_nothing_started(tmp_path)


def test_a_storage_path_in_a_missing_folder_is_one_line_and_makes_no_folder(tmp_path, monkeypatch, capsys):
    """Only the default folder (optuna/) is made: a typo in a --storage path would otherwise make
    folders anywhere and start a new, empty queue."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    for folder in ("typo/queues", "typo/optuna"):      # an optuna/ folder only where its parent exists
        url = f"sqlite:///{tmp_path}/{folder}/q.db"
        code, _, err = cli(STORAGE_COMMANDS["sweep"](url), capsys)
        assert code == 2 and f"folder '{tmp_path}/{folder}' does not exist" in the_error_line(err)
        assert not (tmp_path / "typo").exists()
    assert_nothing_started(tmp_path)


def test_status_of_a_sweep_never_started_here_is_one_line_and_creates_no_storage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(FAILING_SPEC)
    code, _, err = cli(["status", "spec.yaml"], capsys)
    line = the_error_line(err)
    assert code == 2 and "sqlite:///optuna/sweep-failing.db" in line and "no such file" in line
    assert not (tmp_path / "optuna").exists()
    code, _, err = cli(["status"], capsys)
    assert code == 2 and "--storage" in the_error_line(err)


CANNOT_TRAIN_HERE = {     # a cell value or option that every worker here would fail on at once
    "labels beyond the data": ("dataset: digits, n_labeled: 20000", [],
                               "n_labeled: 20000 exceeds the 1297 training images"),
    "a missing npz file": ("dataset: npz:missing/cifar10.npz", [], "npz file 'missing/cifar10.npz' does not exist"),
    "CUDA without a GPU": ("dataset: digits", ["--device", "cuda"], "CUDA is not available"),
}


@pytest.mark.parametrize("case", CANNOT_TRAIN_HERE)
def test_a_cell_no_worker_here_could_train_is_one_line_before_the_sweep_starts(tmp_path, monkeypatch, capsys, case):
    """The launch makes open_session's checks for every cell first (each dataset loaded once):
    one line, exit 2, nothing published, instead of a queue of failed cells. The dry run lists
    the cells, says that a launch here would fail and why, and exits 2; --workers 0 (workers
    elsewhere, with their own data and devices) checks neither."""
    value, options, says = CANNOT_TRAIN_HERE[case]
    if options[-1:] == ["cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "spec.yaml").write_text("name: here\n" + (SPEC_BASE % "").replace("dataset: digits", value)
                                        + "grid: {seed: [1, 2]}\n")
    code, _, err = cli(["sweep", "spec.yaml", "--workers", "1", *options], capsys)
    assert code == 2 and says in the_error_line(err)
    code, out, err = cli(["sweep", "spec.yaml", "--dry-run", *options], capsys)
    assert code == 2 and out.count("-s1-") == out.count("-s2-") == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("mixmatch sweep: a launch here would fail: ") and says in last
    code, out, err = cli(["sweep", "spec.yaml", "--dry-run", "--workers", "0", *options], capsys)
    assert code == 0 and "would fail" not in err
    assert_nothing_started(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unknown_device_option_is_one_line_before_the_sweep_starts_or_is_priced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: here\n" + SPEC_BASE % "" + "grid: {seed: [1]}\n")
    for dry in ([], ["--dry-run"]):
        code, out, err = cli(["sweep", "spec.yaml", "--device", "tpu", *dry], capsys)
        assert code == 2 and "device: 'tpu' is not one of auto, cpu, cuda, cuda:N, mps" in the_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_a_dry_run_notes_a_dataset_a_launch_would_download_and_downloads_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: dl\n" + (SPEC_BASE % ", data_dir: nodata").replace(
        "dataset: digits", "dataset: cifar10, model: small_cnn") + "grid: {seed: [1]}\n")
    code, out, err = cli(["sweep", "spec.yaml", "--dry-run"], capsys)
    assert code == 0 and "cifar10-250-s1" in out
    assert "mixmatch sweep: dataset: 'cifar10' is not in 'nodata' (a launch downloads it)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("command", [["sweep"], ["search"], ["status"], ["train", "--config"]])
def test_a_directory_given_as_a_spec_is_one_line_naming_its_files(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text("name: a\n")
    code, _, err = cli([*command, "specs"], capsys)
    line = the_error_line(err)
    assert code == 2 and "'specs' is a directory" in line and "specs/a.yaml" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["specs"]


# ---- 7. bad input -------------------------------------------------------------------------------
def _file(d: Path, name: str, text: str) -> str:
    (d / name).write_text(text)
    return str(d / name)


def _npz(d: Path, name: str = "data.npz", **change) -> str:
    """A 2-class 8x8 npz dataset (20 train, 4 test images) with `change`d arrays (None drops one)."""
    arrays = dict(x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 2,
                  x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4) % 2)
    arrays.update(change)
    np.savez(d / name, **{k: v for k, v in arrays.items() if v is not None})
    return f"dataset=npz:{d / name}"


def _afile(d: Path) -> Path:
    (d / "afile").write_text("a regular file, so afile/sub cannot be a directory")
    return d / "afile" / "sub"


# (id, argv after `mixmatch train` as a function of tmp_path, text the line must contain)
BAD_TRAIN = [
    ("malformed-yaml", lambda d: ["--config", _file(d, "bad.yaml", "steps: [20\n")], "bad.yaml"),
    ("missing-config-file", lambda d: ["--config", str(d / "nope.yaml")], "nope.yaml"),
    ("yaml-not-a-mapping", lambda d: ["--config", _file(d, "list.yaml", "- steps\n")], "list.yaml"),
    ("unknown-key", lambda d: ["stepz=20"], "stepz"),
    ("unknown-key-in-yaml", lambda d: ["--config", _file(d, "c.yaml", "colour: red\n")], "colour"),
    ("wrong-type", lambda d: ["steps=abc"], "steps"),
    ("wrong-type-in-yaml", lambda d: ["--config", _file(d, "t.yaml", "alpha: [0.75]\n")], "alpha"),
    ("not-key-value", lambda d: ["steps"], "steps"),
    ("out-of-range", lambda d: ["ema_decay=1.5"], "ema_decay"),
    ("negative-lr", lambda d: ["lr=-1"], "lr"),
    ("unknown-choice", lambda d: ["mixup=sometimes"], "mixup"),
    ("labels-not-a-multiple-of-classes", lambda d: ["n_labeled=55"], "n_labeled"),
    ("more-labels-than-images", lambda d: ["n_labeled=20000"], "n_labeled"),
    ("no-unlabeled-images-left", lambda d: [_npz(d), "n_labeled=20"], "n_labeled"),
    ("unknown-variant", lambda d: ["variant=nope"], "variant"),
    ("unknown-method", lambda d: ["method=uda"], "method"),
    ("hyperparameter-of-another-method", lambda d: ["variant=vat", "consistency_weight=5"], "consistency_weight"),
    ("variant-contradicted", lambda d: ["variant=k1", "K=3"], "variant 'k1'"),
    ("unknown-dataset", lambda d: ["dataset=mnist"], "dataset"),
    ("unknown-model", lambda d: ["model=resnet"], "model"),
    ("missing-npz", lambda d: [f"dataset=npz:{d / 'missing.npz'}", "n_labeled=2"], "missing.npz"),
    ("npz-not-an-npz", lambda d: [f"dataset=npz:{_file(d, 'junk.npz', 'junk')}", "n_labeled=2"], "junk.npz"),
    ("npz-wrong-keys", lambda d: [_npz(d, x_train=None), "n_labeled=2"], "x_train"),
    ("npz-wrong-dtype", lambda d: [_npz(d, x_train=np.zeros((20, 8, 8), np.float32)), "n_labeled=2"], "uint8"),
    ("npz-wrong-image-shape", lambda d: [_npz(d, x_train=np.zeros((20, 8), np.uint8)), "n_labeled=2"], "x_train"),
    ("npz-label-count-mismatch", lambda d: [_npz(d, y_train=np.arange(19) % 2), "n_labeled=2"], "y_train"),
    ("out-dir-under-a-file", lambda d: [f"out_dir={_afile(d)}"], "out_dir"),
    ("out-dir-in-proc", lambda d: ["out_dir=/proc/forbidden"], "out_dir"),
    ("unknown-option", lambda d: ["--resume"], "--resume"),
]


@pytest.mark.parametrize("make_argv,names", [c[1:] for c in BAD_TRAIN], ids=[c[0] for c in BAD_TRAIN])
def test_bad_training_input_is_one_line_naming_it_and_nothing_starts(store, tmp_path, capsys, make_argv, names):
    code, _, err = cli(["train", *TINY, *make_argv(tmp_path)], capsys)
    assert code == 2 and names in the_error_line(err)
    assert_nothing_started(tmp_path)


def test_a_dataset_that_needs_a_download_while_offline_is_one_line(store, tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)    # offline even where the network is up
    t0 = time.time()
    code, _, err = cli(["train", *TINY, "dataset=cifar10", f"data_dir={tmp_path / 'empty'}"], capsys)
    line = the_error_line(err)
    assert code == 2 and "cifar10" in line and str(tmp_path / "empty") in line and "offline" in line
    assert time.time() - t0 < 60
    assert_nothing_started(tmp_path)


# (id, spec text as a function of tmp_path, text the line must contain)
BAD_SPECS = [
    ("unknown-key", lambda d: SPEC_BASE % "" + "colour: red\n", "colour"),
    ("empty-axis", lambda d: SPEC_BASE % "" + "grid: {n_labeled: []}\n", "n_labeled"),
    ("unknown-axis", lambda d: SPEC_BASE % "" + "grid: {flavour: [1]}\n", "flavour"),
    ("unknown-variant", lambda d: SPEC_BASE % "" + "grid: {variant: [nope]}\n", "nope"),
    ("bad-cell-value", lambda d: SPEC_BASE % "" + "grid: {n_labeled: [55]}\n", "n_labeled"),
    ("unknown-key-in-base", lambda d: SPEC_BASE % ", colour: red", "colour"),
    ("malformed-yaml", lambda d: SPEC_BASE % "" + "grid: {seed: [1\n", "spec.yaml"),
    ("unknown-layout", lambda d: SPEC_BASE % "" + "layout: wide\n", "layout"),
    ("negative-retries", lambda d: SPEC_BASE % "" + "retries: -1\n", "retries"),
    ("out-dir-under-a-file", lambda d: SPEC_BASE % f", out_dir: '{_afile(d)}'", "out_dir"),
]


@pytest.mark.parametrize("make_text,names", [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_a_bad_sweep_spec_is_one_line_naming_it_and_nothing_starts(store, tmp_path, capsys, make_text, names):
    (tmp_path / "spec.yaml").write_text(make_text(tmp_path))
    code, _, err = cli(["sweep", "spec.yaml", "--workers", "1"], capsys)
    assert code == 2 and names in the_error_line(err)
    assert_nothing_started(tmp_path)


def test_a_missing_sweep_spec_is_one_line_naming_the_file(store, tmp_path, capsys):
    code, _, err = cli(["sweep", "nope.yaml"], capsys)
    assert code == 2 and "nope.yaml" in the_error_line(err)
    assert_nothing_started(tmp_path)


# ---- 8. defaults that let no one in -------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _nodes(path: Path) -> list[ast.AST]:
    return list(ast.walk(ast.parse(path.read_text(), str(path))))


def _calls(name: str):
    """(file, call) for every call to NAME (e.g. 'torch.load') in the project's sources."""
    mod, func = name.split(".")
    for path in SOURCES:
        for node in _nodes(path):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == func
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == mod):
                yield path.relative_to(ROOT), node


def _keyword(call: ast.Call, name: str):
    kw = [k.value for k in call.keywords if k.arg == name]
    return kw[0].value if kw and isinstance(kw[0], ast.Constant) else None


def test_yaml_is_only_read_with_safe_load():
    unsafe = [f"{p}:{n.lineno}" for fn in ("yaml.load", "yaml.unsafe_load", "yaml.full_load")
              for p, n in _calls(fn)]
    assert not unsafe and list(_calls("yaml.safe_load"))


def test_no_subprocess_runs_through_a_shell():
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if re.search(r"shell\s*=\s*True", p.read_text())]
    assert not offenders


def test_every_torch_load_is_weights_only():
    loads = list(_calls("torch.load"))
    assert loads and all(_keyword(n, "weights_only") is True for _, n in loads), \
        [f"{p}:{n.lineno}" for p, n in loads if _keyword(n, "weights_only") is not True]


def test_every_np_load_refuses_pickles():
    loads = list(_calls("np.load"))
    assert all(_keyword(n, "allow_pickle") is False for _, n in loads), [f"{p}:{n.lineno}" for p, n in loads]


def test_no_server_binds_to_every_interface_by_default():
    assert not [str(p.relative_to(ROOT)) for p in SOURCES if "0.0.0.0" in p.read_text()]


def test_mixmatch_ui_binds_to_127_0_0_1_by_default(store, monkeypatch, capsys):
    import mixmatch_cli.ui
    started = []
    monkeypatch.setattr(mixmatch_cli.ui.os, "execve", lambda exe, cmd, env: started.append(cmd))
    assert cli(["ui"], capsys)[0] == 0
    (cmd,) = started
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_reading_a_sweep_where_nothing_was_tracked_creates_no_store(tmp_path, monkeypatch, capsys):
    """table, plot and report only read MLflow: in a folder without a store they show the spec's
    cells as missing (or say there is no sweep of that name, one line, exit 2) and never create
    an empty store (MLflow makes its tables when a client opens a SQLite file)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text("name: here\n" + SPEC_BASE % "" + "grid: {seed: [1]}\n")
    code, out, _ = cli(["table", "spec.yaml"], capsys)
    assert code == 0 and "missing" in out
    assert cli(["plot", "spec.yaml", "--out", "p"], capsys)[0] == 0
    assert cli(["report", "spec.yaml", "--out", "r"], capsys)[0] == 0
    code, _, err = cli(["table", "here"], capsys)
    assert code == 2 and "no MLflow store at sqlite:///mlflow.db" in the_error_line(err)
    assert not list(tmp_path.glob("mlflow.db*"))
