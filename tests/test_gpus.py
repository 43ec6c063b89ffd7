"""Several cells per GPU (sweeps/gpus.py): GPU discovery, the slot plan, each worker's pinning,
and the `--workers-per-gpu` / `--gpus` options of sweep, worker and search. No GPU is needed:
the visible GPUs are mocked through CUDA_VISIBLE_DEVICES (what Slurm and submitit set)."""

import subprocess
import sys

import pytest

from sweeps import gpus
from mixmatch_cli import main

from mlflow_store import use_store
from test_failures import assert_nothing_started, cli, the_error_line
from test_sweep import cell_runs, write_spec

SEARCH_SPEC = """name: s
experiment: s-exp
base: {dataset: digits, val_size: 100, steps: 20, eval_every: 10, log_every: 10, batch_size: 16, median_of: 2,
       device: cpu}
space:
  lr: {type: float, low: 1.0e-3, high: 5.0e-3, log: true}
sampler: random
pruner: none
trials: 2
"""


@pytest.mark.parametrize("value, expected", [
    ("0,1", ["0", "1"]),
    ("3", ["3"]),
    ("GPU-8a1f,GPU-77c2", ["GPU-8a1f", "GPU-77c2"]),   # UUIDs (and MIG ids) pass through
    ("2, 5", ["2", "5"]),
    ("", []),
    ("-1", []),
    ("1,-1,2", ["1"]),                                 # CUDA stops at the first invalid entry
])
def test_visible_gpus_are_the_cuda_visible_devices_entries_when_it_is_set(value, expected):
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": value}) == expected


def test_visible_gpus_without_cuda_visible_devices_are_every_gpu_torch_counts(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert gpus.visible_gpus({}) == ["0", "1", "2"]


def test_the_plan_puts_n_workers_on_each_gpu_round_robin_and_splits_the_cores():
    slots = gpus.plan(["0", "1"], 3, cores=16)
    assert [(s.gpu, s.rank) for s in slots] == [("0", 0), ("1", 0), ("0", 1), ("1", 1), ("0", 2), ("1", 2)]
    assert {s.threads for s in slots} == {16 // 6}


def test_every_worker_gets_at_least_one_thread():
    assert {s.threads for s in gpus.plan(["0"], 8, cores=2)} == {1}


def test_a_slot_environment_pins_one_gpu_and_its_threads():
    env = gpus.Slot("GPU-77c2", 1, 4).env({"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/bin"})
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-77c2", "OMP_NUM_THREADS": "4", "PATH": "/bin"}


def test_a_pinned_process_sees_only_its_gpu_and_threads():
    slot = gpus.plan(["5", "7"], 1, cores=4)[1]
    code = "import os, torch; print(os.environ['CUDA_VISIBLE_DEVICES'], torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=slot.env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "2"]


@pytest.mark.parametrize("count, visible, match", [
    (3, ["0", "1"], "--gpus: 3 GPUs asked for, 2 visible (0,1); allowed: 1..2"),
    (None, [], "--gpus: no GPU is visible"),
])
def test_asking_for_gpus_that_are_not_visible_names_the_option_and_the_allowed_range(count, visible, match):
    with pytest.raises(gpus.ConfigError, match=match.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        gpus.choose_gpus(count, visible)


def test_strip_options_removes_them_with_their_values():
    argv = ["--storage", "x", "--workers-per-gpu", "2", "--gpus=1", "--sweep", "s", "--threads", "3"]
    assert gpus.strip_options(argv, {"--workers-per-gpu": True, "--gpus": True, "--threads": True}) == \
        ["--storage", "x", "--sweep", "s"]


# ---- the commands -------------------------------------------------------------------------------
COMMANDS = {
    "sweep": lambda opts: ["sweep", "spec.yaml", *opts],
    "worker": lambda opts: ["worker", "--storage", "sqlite:///optuna/sweep-tiny.db", "--sweep", "tiny", *opts],
    "search": lambda opts: ["search", "search.yaml", *opts],
}
BAD = {
    "zero-workers-per-gpu": (["--workers-per-gpu", "0"], "0", ("--workers-per-gpu", ">= 1")),
    "not-a-number": (["--workers-per-gpu", "two"], "0", ("--workers-per-gpu", ">= 1")),
    "more-gpus-than-visible": (["--workers-per-gpu", "2", "--gpus", "3"], "0,1", ("--gpus", "allowed: 1..2")),
    "no-gpu-visible": (["--workers-per-gpu", "2"], "", ("--workers-per-gpu", "no GPU is visible")),
}


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_workers_per_gpu_value_is_one_line_and_nothing_starts(tmp_path, monkeypatch, capsys, command, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    opts, visible, words = BAD[case]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    write_spec(tmp_path)
    (tmp_path / "search.yaml").write_text(SEARCH_SPEC)
    code, _, err = cli(COMMANDS[command](opts), capsys)
    line = the_error_line(err)
    assert code == 2 and all(w in line for w in words), line
    assert_nothing_started(tmp_path)


@pytest.mark.slow
def test_sweep_workers_per_gpu_pins_each_worker_to_its_gpu_and_trains_every_cell(tmp_path, monkeypatch, empty_store,
                                                                                 capsys):
    use_store(monkeypatch, tmp_path, empty_store)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")    # two mocked GPUs; the cells run on the CPU
    monkeypatch.setattr(gpus, "cpu_cores", lambda: 4)
    started = []
    real_popen = subprocess.Popen

    def popen(cmd, env=None, **kw):
        if "worker" in cmd:     # (the module is shared: git and others pass through unrecorded)
            started.append((env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"], cmd[cmd.index("--threads") + 1]))
        return real_popen(cmd, env=env, **kw)

    monkeypatch.setattr(gpus.subprocess, "Popen", popen)
    spec = write_spec(tmp_path, "grid: {n_labeled: [50], variant: [supervised], seed: [1, 2]}\n")
    # Each cell trains on one thread (the spec's num_threads wins over the slot's share): the 4
    # mocked cores are more than this machine may have, and oversubscribed cores slow every step.
    spec.write_text(spec.read_text().replace("steps: 30", "steps: 30, num_threads: 1"))
    assert main(["sweep", str(spec), "--workers-per-gpu", "1", "--heartbeat-seconds", "1", "--no-table"]) == 0
    assert started == [("3", "2", "2"), ("5", "2", "2")]   # 4 cores / 2 workers
    runs = cell_runs(tmp_path)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}


def test_sweep_refuses_workers_and_workers_per_gpu_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    write_spec(tmp_path)
    code, _, err = cli(["sweep", "spec.yaml", "--workers", "2", "--workers-per-gpu", "2"], capsys)
    assert code == 2 and "not both" in the_error_line(err)


class _Recorder:
    """Stands in for gpus.run_pinned: records the slots and each slot's command."""

    def __init__(self):
        self.calls = []

    def __call__(self, slots, command, log=None):
        self.calls.append([(s.gpu, s.threads, command(s)) for s in slots])
        return 0


def test_worker_workers_per_gpu_launches_one_pinned_worker_per_slot(tmp_path, monkeypatch, empty_store, capsys):
    use_store(monkeypatch, tmp_path, empty_store)
    write_spec(tmp_path)
    assert main(["sweep", "spec.yaml", "--workers", "0"]) == 0      # publish only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setattr(gpus, "cpu_cores", lambda: 8)
    rec = _Recorder()
    monkeypatch.setattr(gpus, "run_pinned", rec)
    assert main(["worker", "--storage", "sqlite:///optuna/sweep-tiny.db", "--sweep", "tiny", "--gpus", "2",
                 "--workers-per-gpu", "2", "--threads", "7"]) == 0
    (slots,) = rec.calls
    assert [(g, t) for g, t, _ in slots] == [("0", 2), ("1", 2), ("0", 2), ("1", 2)]
    cmd = slots[0][2]
    assert cmd[1:4] == ["-m", "mixmatch_cli", "worker"] and cmd[-2:] == ["--threads", "2"]
    assert "--workers-per-gpu" not in cmd and "--gpus" not in cmd and "7" not in cmd
    assert cmd[cmd.index("--sweep") + 1] == "tiny"


def test_search_workers_per_gpu_runs_pinned_search_workers_then_the_study_outputs(tmp_path, monkeypatch, empty_store,
                                                                                  capsys):
    use_store(monkeypatch, tmp_path, empty_store)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    (tmp_path / "search.yaml").write_text(SEARCH_SPEC)
    rec = _Recorder()
    monkeypatch.setattr(gpus, "run_pinned", rec)
    roles = []
    import sweeps.search
    monkeypatch.setattr(sweeps.search, "run_search", lambda *a, role, **k: roles.append(role) or 0)
    assert main(["search", "search.yaml", "--workers-per-gpu", "3", "--trials", "4"]) == 0
    (slots,) = rec.calls
    assert len(slots) == 3 and {g for g, _, _ in slots} == {"0"}
    cmd = slots[0][2]
    assert cmd[3:] == ["search", "search.yaml", "--trials", "4", "--as-worker"]
    assert roles == ["finish"]      # the launcher trains nothing itself; it writes the study's outputs


def test_run_pinned_waits_for_every_worker_and_fails_if_one_failed():
    slots = gpus.plan(["0", "1"], 1, cores=2)
    exit_with_gpu_id = [sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['CUDA_VISIBLE_DEVICES']))"]
    assert gpus.run_pinned(slots, lambda s: exit_with_gpu_id) == 1          # the worker on GPU 1 exited 1
    assert gpus.run_pinned(slots[:1], lambda s: exit_with_gpu_id) == 0


def test_a_tied_worker_dies_with_its_launcher(tmp_path):
    launcher = ("import sys, time; from sweeps import gpus; "
                "p = gpus.start(gpus.plan(['0'], 1, cores=1), lambda s: [sys.executable, '-c', "
                "'import time; time.sleep(120)'], tied=True)[0]; print(p.pid, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    proc.kill()                                   # SIGKILL: no cleanup code of the launcher runs
    proc.wait()
    import psutil
    try:
        psutil.Process(worker).wait(timeout=10)   # gone (PR_SET_PDEATHSIG), not orphaned and training
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_search_with_two_pinned_workers_finishes_the_study_and_writes_best_yaml_once(tmp_path, monkeypatch, empty_store,
                                                                                     capfd):
    """The launcher runs in this process; its two pinned search workers are real processes (capfd
    sees their output too: only the launcher prints the best config)."""
    (tmp_path / "search.yaml").write_text(SEARCH_SPEC)
    use_store(monkeypatch, tmp_path, empty_store)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    code = main(["search", "search.yaml", "--workers-per-gpu", "2", "--heartbeat-seconds", "1"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert out.count("best config:") == 1 and (tmp_path / "optuna/s/best.yaml").exists()
    import optuna
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna/s.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the two workers drew different params (their sampler seeds differ even on the default storage)
    assert len(complete) >= 2 and len({t.params["lr"] for t in complete}) == len(complete)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]   # no duplicate draws
