"""benchmarks/gpu_check.py at CI size (`--device cpu --tiny`), run once for the module in a
subprocess where importing MLflow or Optuna raises (the GPU machine it is written for has
neither), in every process it starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Imported by Python at startup (site) in the check and in every subprocess it starts, through
# PYTHONPATH: the blocked packages look uninstalled (every finder says it has no such module, as
# for a package that is not there) and each attempt to import one is written down.
BLOCKER = """import sys

# Not on the GPU machine: MLflow and Optuna (the brief), and what only they or the sweeps need.
BLOCKED = ("mlflow", "optuna", "pandas", "matplotlib", "submitit", "psutil", "sqlalchemy")


class _Uninstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open({log!r}, "a") as f:
                f.write(name + "\\n")
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [_Uninstalled(f) for f in sys.meta_path]
"""


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(log=str(tmp / "blocked.log")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "CUDA_VISIBLE_DEVICES": ""}
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--device", "cpu",
                           "--tiny"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, out, tmp


def test_the_blocker_really_blocks_mlflow_and_optuna(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(log=str(tmp_path / "blocked.log")))
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", "import optuna"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError: No module named 'optuna'" in proc.stderr


def test_gpu_check_tiny_runs_without_mlflow_or_optuna_being_imported(tiny_check):
    proc, _, tmp = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    tried = (tmp / "blocked.log").read_text().split() if (tmp / "blocked.log").exists() else []
    # (scikit-learn and joblib try pandas and psutil and do without; nothing may even try these)
    assert not [name for name in tried if name.split(".")[0] in ("mlflow", "optuna")], tried


def test_gpu_check_writes_every_section_to_its_json(tiny_check):
    proc, out, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    (eager,) = r["step"]
    assert eager["mode"] == "eager" and eager["a_s"] > 0 and eager["b_s"] > 0 and eager["c_s"] > 0
    assert [w["workers"] for w in r["workers"]] == [1, 2]
    for w in r["workers"]:
        assert w["total_steps_per_s"] > 0 and len(w["steps_per_s"]) == w["workers"], w
        assert w["pinned"] == ["0"] * w["workers"]      # no GPU visible: the first GPU id, as on a 1-GPU box
    assert len(r["train"]["curve"]) >= 2 and r["train"]["curve"][-1]["step"] > r["train"]["curve"][0]["step"]


def test_gpu_check_prints_one_table_per_section(tiny_check):
    proc, _, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("1. seconds per step", "2. workers on one GPU", "3. training run"):
        assert title in proc.stdout
    assert "gpu_check.json" in proc.stdout.splitlines()[-1]


def test_workers_pinned_like_workers_per_gpu_get_their_gpu_and_thread_share(monkeypatch):
    from benchmarks import gpu_check
    from sweeps import gpus
    seen = []

    def start(slots, command, base_env=None, tied=False, **kw):
        seen.extend((s.gpu, s.threads, command(s)) for s in slots)
        raise RuntimeError("stop here")

    monkeypatch.setattr(gpus, "start", start)
    monkeypatch.setattr(gpus, "cpu_cores", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")

    class Args:
        workers_list, eval_interval_s, out, device, model, batch, amp, tiny = [4], 3.0, None, "cuda", "wrn28_2", 64, \
            "bf16", False
        deadline = None
    with pytest.raises(RuntimeError, match="stop here"):
        gpu_check.run_workers(Args, Path("d.npz"), gpu_check.BUDGET_S, 0.03)
    assert [(g, t) for g, t, _ in seen] == [("2", 4)] * 4
    assert [c[c.index("--rank") + 1] for _, _, c in seen] == ["0", "1", "2", "3"]


def test_window_rates_count_each_workers_steps_inside_the_common_window():
    from benchmarks.gpu_check import window_rates
    # worker A: 10 steps/s from t=0; worker B starts later (first evaluation at t=2), 5 steps/s
    a = {"evals": [(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40)]}
    b = {"evals": [(2.0, 100), (3.5, 107.5), (5.0, 115)]}
    start, end, rates = window_rates([a, b])
    assert (start, end) == (2.0, 4.0)             # from the last first evaluation to the first last one
    assert rates == pytest.approx([10.0, 5.0])
