"""Specification of the FixMatch and ReMixMatch specs (experiments/fixmatch_*.yaml,
remixmatch_*.yaml), of every method's quickstart (experiments/methods_quickstart.yaml) and of the
three papers' numbers beside their cells (results/paper_reference.csv, sweeps/paper.py).
"""

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from mixmatch_core.config import resolve
from mixmatch_core.data import split_labeled
from mixmatch_core.methods import METHODS
from mixmatch_cli import main
from sweeps import render
from sweeps import table as tb
from sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
REFERENCE = ROOT / "results" / "paper_reference.csv"
FOLDS = [1, 2, 3, 4, 5]
GPU_SPECS = {"fixmatch_table2": 200, "remixmatch_tables": 45, "remixmatch_ablation": 14, "fixmatch_ablation": 13}


@functools.cache
def _cells(name: str) -> tuple:
    return tuple(load_spec(str(EXPERIMENTS / f"{name}.yaml")).cells())


def cells(name: str) -> list:
    """The spec's resolved cells (resolved once per test session: fixmatch_table2 has 200)."""
    return list(_cells(name))


def by_variant(cs) -> dict:
    out: dict = {}
    for c in cs:
        out.setdefault(c.variant, []).append(c)
    return out


# ---- every method on digits -------------------------------------------------------------------
def test_methods_quickstart_has_one_cell_per_registered_method_and_seed():
    cs = cells("methods_quickstart")
    assert sorted((c.method, c.seed) for c in cs) == sorted((m, s) for m in METHODS for s in (1, 2))
    # each method at its defaults: its own name as the variant, on digits' preset, one label count
    assert all(c.variant == c.method and c.dataset == "digits" and c.device == "cpu" for c in cs)
    assert {(c.n_labeled, c.model, c.steps) for c in cs} == {(50, "small_cnn16", 500)}


def test_methods_quickstart_runs_each_method_with_its_own_optimiser_settings():
    lr = {c.method: c.lr for c in cells("methods_quickstart")}
    assert lr["fixmatch"] == 0.03 and lr["mixmatch"] == lr["remixmatch"] == 0.002


# ---- FixMatch's Table 2 -----------------------------------------------------------------------
def test_fixmatch_table2_has_every_dataset_label_count_and_fold_of_the_table():
    grid = {(c.dataset, c.n_labeled) for c in cells("fixmatch_table2")}
    assert grid == {("cifar10", n) for n in (40, 250, 4000)} | {("cifar100", n) for n in (400, 2500, 10000)} \
        | {("svhn", n) for n in (40, 250, 1000)} | {("stl10", 1000)}
    rows = by_variant(cells("fixmatch_table2"))
    for variant in ("fixmatch", "fixmatch_ra", "mixmatch"):
        assert sorted((c.dataset, c.n_labeled, c.seed) for c in rows[variant]) == \
            sorted((ds, n, s) for ds, n in grid for s in FOLDS), variant


def test_fixmatch_table2_runs_remixmatch_with_its_scripts_flags_per_label_count():
    rows = by_variant(cells("fixmatch_table2"))
    assert {(c.dataset, c.n_labeled) for c in rows["remixmatch_40"]} == {("cifar10", 40)}
    assert {(c.dataset, c.n_labeled) for c in rows["remixmatch_svhn_40"]} == {("svhn", 40)}
    assert {(c.dataset, c.n_labeled) for c in rows["remixmatch_stl10"]} == {("stl10", 1000)}
    assert {c.dataset for c in rows["remixmatch"]} == {"cifar10", "cifar100", "svhn"}
    assert 40 not in {c.n_labeled for c in rows["remixmatch"]}


@pytest.mark.parametrize("dataset, model, wd", [("cifar10", "wrn28_2", 0.0005), ("cifar100", "wrn28_8", 0.001),
                                                ("svhn", "wrn28_2", 0.0005), ("stl10", "wrn28_2", 0.0005)])
def test_fixmatch_table2_uses_the_papers_model_and_fixmatch_wd_per_dataset(dataset, model, wd):
    cs = [c for c in cells("fixmatch_table2") if c.dataset == dataset]
    assert {c.model for c in cs} == {model}
    assert {c.wd for c in cs if c.method == "fixmatch"} == {wd}
    assert {c.wd for c in cs if c.method != "fixmatch"} == {0.02}          # the others keep their own
    assert {(c.lr, c.steps, c.batch_size) for c in cs if c.method == "fixmatch"} == {(0.03, 1 << 20, 64)}
    assert {c.scales for c in cs} == {4 if dataset == "stl10" else 0}


@pytest.mark.parametrize("seed", FOLDS)
def test_40_labels_on_cifar10_are_4_a_class_as_create_split_draws_them(seed):
    assert resolve({"dataset": "cifar10", "n_labeled": 40, "seed": seed}).n_labeled == 40
    y = np.repeat(np.arange(10), 5000)                                  # CIFAR-10's class counts
    labeled, _, _ = split_labeled(y, 40, 10, seed)
    assert np.bincount(y[labeled], minlength=10).tolist() == [4] * 10


# ---- ReMixMatch's scripts -----------------------------------------------------------------------
# runs/ssl/cifar10.sh, svhn.sh and stl10.sh: (dataset, sizes) -> (K, w_rot, warm-up steps, scales)
REMIXMATCH_LINES = {
    ("cifar10", 250): (8, 0.5, 16384, 0), ("cifar10", 1000): (8, 0.5, 16384, 0), ("cifar10", 4000): (8, 0.5, 16384, 0),
    ("cifar10", 40): (1, 2.0, 131072, 0),                                   # --K=1 --w_rot=2 --warmup_kimg=8192
    ("svhn", 250): (8, 0.5, 16384, 0), ("svhn", 1000): (8, 0.5, 16384, 0), ("svhn", 4000): (8, 0.5, 16384, 0),
    ("svhn", 40): (1, 3.0, 16384, 0),                                       # --K=1 --w_rot=3
    ("stl10", 1000): (4, 0.5, 16384, 4),                                    # --K=4 --scales=4
}


def test_remixmatch_tables_run_each_script_line_on_folds_1_to_5():
    cs = cells("remixmatch_tables")
    got = {}
    for c in cs:
        got.setdefault((c.dataset, c.n_labeled), set()).add((c.K, c.w_rot, c.rampup_steps, c.scales))
    assert got == {k: {v} for k, v in REMIXMATCH_LINES.items()}
    assert sorted((c.dataset, c.n_labeled, c.seed) for c in cs) == sorted((*k, s) for k in REMIXMATCH_LINES for s in FOLDS)
    assert {(c.lr, c.wd, c.alpha, c.w_kl, c.w_match, c.steps) for c in cs} == {(0.002, 0.02, 0.75, 0.5, 1.5, 1 << 20)}


# runs/ssl/ablation.sh, one line each: (K, w_kl, w_rot, use_dm, use_xe, w_match, anchor_view, augment, redux)
ABLATION_LINES = {
    "remixmatch_k1": (1, 0.5, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_k2": (2, 0.5, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_k4": (4, 0.5, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_k8": (8, 0.5, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_k16": (16, 0.5, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_no_kl": (8, 0.0, 0.5, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_no_rot": (8, 0.5, 0.0, True, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_no_dm": (8, 0.5, 0.5, False, True, 1.5, "weak", "ctaugment", "1st"),
    "remixmatch_l2": (8, 0.5, 0.5, True, False, 75.0, "weak", "ctaugment", "1st"),
    "remixmatch_only_strong": (8, 0.5, 0.5, True, True, 1.5, "strong", "ctaugment", "1st"),
    "remixmatch_only_weak_k1": (1, 0.5, 0.5, True, True, 1.5, "weak", "none", "swap"),
    "remixmatch_only_weak_k8": (8, 0.5, 0.5, True, True, 1.5, "weak", "none", "swap"),
    "remixmatch_only_weak_mean_k1": (1, 0.5, 0.5, True, True, 1.5, "weak", "none", "mean"),
    "remixmatch_only_weak_mean_k8": (8, 0.5, 0.5, True, True, 1.5, "weak", "none", "mean"),
}


def test_remixmatch_ablation_is_ablation_sh_line_by_line_on_split_3_at_250_labels():
    cs = cells("remixmatch_ablation")
    assert {c.variant: (c.K, c.w_kl, c.w_rot, c.use_dm, c.use_xe, c.w_match, c.anchor_view, c.augment, c.redux)
            for c in cs} == ABLATION_LINES
    assert len(cs) == len(ABLATION_LINES) and {(c.dataset, c.seed, c.n_labeled) for c in cs} == {("cifar10", 3, 250)}


def test_fixmatch_ablation_has_fixmatch_and_every_fixmatch_variant_on_split_3_at_250_labels():
    cs = cells("fixmatch_ablation")
    assert sorted(c.variant for c in cs) == sorted({"fixmatch"} | set(METHODS["fixmatch"].variants))
    assert {(c.dataset, c.seed, c.n_labeled, c.model, c.steps) for c in cs} == {("cifar10", 3, 250, "wrn28_2", 1 << 20)}


def test_cpu_methods_spec_runs_fixmatch_and_remixmatch_on_mixmatchs_model_and_schedule():
    cs = by_variant(cells("cpu_cifar10_methods"))
    (mm,) = {(c.model, c.steps, c.eval_every, c.median_of, c.ema_decay, c.n_labeled) for c in cs["mixmatch"]}
    for variant in ("fixmatch", "remixmatch"):
        assert {(c.model, c.steps, c.eval_every, c.median_of, c.ema_decay, c.n_labeled) for c in cs[variant]} == {mm}
        assert sorted(c.seed for c in cs[variant]) == [1, 2]
    assert {(c.lr, c.wd) for c in cs["fixmatch"]} == {(0.03, 0.0005)}      # fixmatch.py's, not the Adam-tuned 0.01
    assert {(c.lr, c.wd, c.rampup_steps) for c in cs["remixmatch"]} == {(0.01, 0.02, 31)}


@pytest.mark.parametrize("name", sorted(GPU_SPECS))
def test_method_spec_dry_run_prices_every_cell_in_gpu_hours(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(["sweep", str(EXPERIMENTS / f"{name}.yaml"), "--dry-run", "--workers", "0"])
    out, _ = capsys.readouterr()
    rows = [ln for ln in out.splitlines() if ln.endswith("GPU-h")]
    assert len(rows) == GPU_SPECS[name] == len(cells(name)) and "GPU-h of CUDA time to go" in out
    assert code == 0 and list(tmp_path.iterdir()) == []


# ---- the papers' numbers ------------------------------------------------------------------------
def reference_rows() -> list[dict]:
    with open(REFERENCE) as fh:
        return list(csv.DictReader(fh))


def test_every_reference_row_names_one_of_our_variants_of_its_method_and_a_source():
    for r in reference_rows():
        assert r["paper"] in ("mixmatch", "fixmatch", "remixmatch")
        if r["paper"] != "mixmatch":
            assert resolve({"variant": r["variant"]}).method == r["method"], r
            assert r["note"], r                                                      # where it was read


def runs_of(cs, error=10.0):
    """Finished runs as sweeps.runs.load_runs returns them, one per cell."""
    import pandas as pd
    return pd.DataFrame([{"sweep": "t", "run_id": f"r{i}", "cell_key": c.cell_key, "dataset": c.dataset,
                          "model": c.model, "n_labeled": c.n_labeled, "seed": c.seed, "method": c.method,
                          "variant": c.variant, "status": "FINISHED", "error": error, "start_time": i}
                         for i, c in enumerate(cs)])


def markdown(name: str, keep) -> str:
    cs = [c for c in cells(name) if keep(c)]
    layout = load_spec(str(EXPERIMENTS / f"{name}.yaml")).layout
    return render.to_markdown(tb.build_table(runs_of(cs), cs, layout=layout, sweep=name))


def test_a_fixmatch_sweep_shows_fixmatchs_table2_for_its_mixmatch_row_and_names_the_paper():
    text = markdown("fixmatch_table2", lambda c: c.dataset == "cifar10")
    assert "| *paper (FixMatch Table 2)* | 47.54 ± 11.50 | 11.05 ± 0.86 | 6.42 ± 0.10 |" in text   # not Table 5's 11.08
    assert "| *paper (FixMatch Table 2)* | — | 5.44 ± 0.05 | 4.72 ± 0.13 |" in text              # remixmatch
    assert "| *paper (FixMatch Table 2)* | 19.10 ± 9.64 | — | — |" in text                      # remixmatch_40
    assert "11.08" not in text and "paper: Sohn et al. 2020 (FixMatch), Table 2;" in text


def test_a_remixmatch_sweep_prefers_remixmatchs_own_table_over_fixmatchs_rerun():
    text = markdown("remixmatch_tables", lambda c: c.dataset == "cifar10" and c.n_labeled in (250, 1000, 4000))
    assert "| *paper (ReMixMatch Table 1)* | 6.27 ± 0.34 | — | 5.14 |" in text and "5.44" not in text
    assert "paper: Berthelot et al. 2020 (ReMixMatch), Table 1;" in text


def test_the_remixmatch_ablation_shows_its_single_split_table_beside_each_row():
    text = markdown("remixmatch_ablation", lambda c: True)
    for number in ("5.94", "7.28", "6.66", "6.08", "7.32", "17.28"):
        assert f"| {number} |" in text, number
    assert "Berthelot et al. 2020 (ReMixMatch), Table 3 (Table 3: one split)" in text


def test_a_mixmatch_sweep_keeps_the_mixmatch_papers_table_where_fixmatchs_also_has_the_cell():
    text = markdown("paper_table5", lambda c: c.variant == "mixmatch")
    assert "| *paper (Table 5)* | 11.08 ± 0.87 |" in text and "11.05" not in text
    assert "paper: Berthelot et al. 2019, Table 5;" in text
