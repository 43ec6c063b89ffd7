"""benchmarks/gpu_check.py at CI size (`--device cpu --tiny`), run once for the module in a
subprocess where importing MLflow or Optuna raises (the GPU machine it is written for has
neither), in every process it starts; every section's JSON and table come from that one run.
The section helpers that the tiny run cannot reach (a crashing method child, the probe on a
methods/vat.py without power_iteration, the packing decision) are tested directly."""

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


pytestmark = pytest.mark.slow     # the module's --tiny run starts a dozen processes


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


def test_gpu_check_times_packed_models_and_checks_them_against_separate_steps(tiny_check):
    proc, out, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = json.loads((out / "gpu_check.json").read_text())["packed"]
    assert [(row["mode"], row["n_models"]) for row in p["rows"]] == [("eager", 1), ("eager", 2)]
    for row in p["rows"]:
        assert row["ms_per_step"] > 0 and row["cells_steps_per_s"] == pytest.approx(row["n_models"] * 1e3 /
                                                                                      row["ms_per_step"])
        assert row["floor_grouped_ms"] > 0 and row["floor_vmap_ms"] > 0
        assert row["vs_one_cell"] > 0 and row["vs_n_processes"] > 0 and row["vs_best_processes"] > 0
    e = p["equality"]
    assert e["within_tolerance"] and len(e["steps"]) == 2 and e["device"] == "cpu", e
    assert p["decision"]["packed_over_processes"] > 0 and "not a decision" in p["decision"]["verdict"]


def test_gpu_check_probes_vat_and_trains_every_method(tiny_check):
    proc, out, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    from mixmatch_core.methods import METHODS
    settings = [(row["function"], row["setting"]) for row in r["vat"]["rows"]]
    assert settings[:2] == [("raw", "TF32 defaults"), ("raw", "bf16 autocast")]
    assert (len(settings) == 3) == (r["vat"]["note"] is None)   # the guarded row once power_iteration exists
    assert r["vat"]["rows"][0]["cos_min"] == pytest.approx(1.0)  # CPU: no TF32, the same computation
    for row in r["vat"]["rows"][2:]:                             # the guard recovers strict fp32's direction
        assert row["function"] == "guarded" and row["cos_min"] == pytest.approx(1.0, abs=1e-4), row
    assert [m["method"] for m in r["methods"]] == list(METHODS)
    for m in r["methods"]:
        assert m["steps_per_s"] > 0 and m["finite"] and 0 <= m["test_error_pct"] <= 100, m
        # the hours of the method's full official run (2^20 steps) at the measured speed
        assert m["full_run_steps"] == 1 << 20 and m["full_run_hours"] == pytest.approx(
            (1 << 20) * m["ms_per_step"] / 1000 / 3600), m


def test_gpu_check_times_strong_augmentation_against_the_step(tiny_check):
    proc, out, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((out / "gpu_check.json").read_text())["strong_augment"]
    assert a["images"] == 8 * 7 and a["step_images"] == 8 + 2 * 56, a
    assert all(a["seconds_per_step"][k] > 0 for k in ("cta", "ra", "step"))
    assert a["cta_over_step"] == pytest.approx(a["seconds_per_step"]["cta"] / a["seconds_per_step"]["step"])


def test_gpu_check_prints_one_table_per_section(tiny_check):
    proc, _, _ = tiny_check
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("1. seconds per step", "2. workers on one GPU", "3. training run", "4. packed models",
                  "5. VAT probe", "6. every method", "7. strong augmentation"):
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


FAKE_METHODS_CHILD = """import json, sys
names = sys.argv[sys.argv.index("--methods") + 1].split(",")
for name in names:
    if name == "vat":
        sys.exit(3)                                   # dies while training vat
    print("RESULT " + json.dumps({"method": name, "steps_per_s": 1.0}), flush=True)
"""


def test_a_method_whose_child_dies_is_reported_and_the_others_still_train(monkeypatch, tmp_path):
    from benchmarks import gpu_sections
    from mixmatch_core.methods import METHODS
    monkeypatch.setattr(gpu_sections, "child_cmd", lambda args, kind, *extra, **kw: [sys.executable, "-c",
                                                                                    FAKE_METHODS_CHILD, *extra])

    class Args:
        out, method_steps = str(tmp_path), 2
    rows = gpu_sections.run_methods(Args, tmp_path / "d.npz", budget_s=60)
    assert [r["method"] for r in rows] == list(METHODS)
    assert rows[list(METHODS).index("vat")]["error"] == "the process ended (exit 3) while training it"
    assert all(r.get("steps_per_s") == 1.0 for r in rows if r["method"] != "vat")   # before and after vat


def test_the_vat_probe_falls_back_to_adversarial_perturbation_without_power_iteration(monkeypatch):
    import torch

    from benchmarks import vat_probe
    from mixmatch_core import methods
    from mixmatch_core.models import build_model
    vat = methods.load("vat")                  # methods/vat.py before the fix: one unguarded function
    monkeypatch.setattr(vat, "adversarial_perturbation", getattr(vat, "power_iteration", vat.adversarial_perturbation))
    monkeypatch.delattr(vat, "power_iteration", raising=False)
    torch.manual_seed(0)
    rows, note = vat_probe.probe_rows(build_model("small_cnn4", 10, 3).train(), torch.randn(2, 3, 16, 16), 6.0, 1e-6)
    assert [(r["function"], r["setting"]) for r in rows] == [("raw", "TF32 defaults"), ("raw", "bf16 autocast")]
    assert "no power_iteration" in note


def test_packing_is_compared_with_one_cell_and_with_processes_per_gpu():
    from benchmarks.gpu_sections import packed_rows, packing_decision
    results = {"packed eager N=1,4": {"mode": "eager", "compile_and_warmup_s": 1.0, "rows": [
        {"n_models": 1, "ms_per_step": 20.0, "cells_steps_per_s": 50.0},
        {"n_models": 4, "ms_per_step": 25.0, "cells_steps_per_s": 160.0}]}}
    steps = [{"mode": "eager", "a_s": 0.02}]                                    # one cell: 50 steps/s
    workers = [{"workers": 1, "total_steps_per_s": 50.0}, {"workers": 4, "total_steps_per_s": 100.0}]
    rows = packed_rows(results, steps, workers)
    assert [(r["vs_one_cell"], r["vs_n_processes"], r["vs_best_processes"]) for r in rows] == \
        [pytest.approx((1.0, 1.0, 0.5)), pytest.approx((3.2, 1.6, 1.6))]
    d = packing_decision(rows, workers)
    assert d["packed_over_processes"] == pytest.approx(1.6) and d["verdict"] == "packing wins"
    assert packing_decision(rows[:1], workers)["verdict"] == "processes per GPU suffice"
