"""Specification of the paper-table specs (experiments/paper_table*.yaml) and the config rules they
rely on: every table of the paper is one spec, run as the official runs/*.sh scripts ran it.
"""

from pathlib import Path

import pytest
import torch
import yaml

from mixmatch_core.config import ConfigError, resolve
from mixmatch_cli import main
from sweeps.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
SEEDS = [1, 2, 3, 4, 5]
LABELS = [250, 500, 1000, 2000, 4000]


# ---- config rules ----------------------------------------------------------------------------
def test_stl10_preset_has_four_scales_and_other_datasets_auto():
    assert resolve({"dataset": "stl10", "n_labeled": 5000}).scales == 4
    assert resolve({"dataset": "cifar10"}).scales == 0
    assert resolve({"dataset": "stl10", "n_labeled": 5000, "scales": 5}).scales == 5   # explicit wins


def test_negative_scales_is_one_line_naming_scales():
    with pytest.raises(ConfigError, match=r"^scales: must be >= 0"):
        resolve({"scales": -1})


@pytest.mark.parametrize("seed", [0, 1, 5, 9])
def test_stl10_at_1000_labels_accepts_the_ten_fold_seeds(seed):
    assert resolve({"dataset": "stl10", "n_labeled": 1000, "seed": seed}).seed == seed


@pytest.mark.parametrize("seed", [10, 11, -1])
def test_stl10_at_1000_labels_with_a_seed_outside_the_folds_is_one_line_naming_seed(seed):
    with pytest.raises(ConfigError) as e:
        resolve({"dataset": "stl10", "n_labeled": 1000, "seed": seed})
    assert str(e.value).startswith("seed:") and "0..9" in str(e.value) and "\n" not in str(e.value)


def test_stl10_at_1000_labels_with_seed_10_exits_2_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit) as e:
        main(["train", "dataset=stl10", "n_labeled=1000", "seed=10", "device=cpu", f"data_dir={tmp_path}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("mixmatch: error: seed:"), err
    assert "0..9" in err[0]
    assert list(tmp_path.iterdir()) == []        # no runs/, no mlflow.db, no dataset download


def test_the_trainer_builds_stl10s_wrn_with_four_stages():
    from mixmatch_core.train import build_models
    model, _ = build_models(resolve({"dataset": "stl10", "n_labeled": 5000}), 10, 3, "cpu")
    assert len(model.blocks) == 4 * 4 and model.fc.in_features == 256


@pytest.mark.parametrize("dataset", ["svhn", "svhn_extra"])
def test_svhn_takes_any_label_count(dataset):
    # create_split's draw follows SVHN's class frequencies: no per-class count to divide into
    assert resolve({"dataset": dataset, "n_labeled": 255}).n_labeled == 255


@pytest.mark.parametrize("dataset", ["cifar10", "stl10", "digits"])
def test_balanced_datasets_need_a_multiple_of_the_class_count(dataset):
    with pytest.raises(ConfigError, match=r"^n_labeled: must be a positive multiple of the class count"):
        resolve({"dataset": dataset, "n_labeled": 255})


# ---- the specs -------------------------------------------------------------------------------
SCRIPTS = {1: "runs/table1.sh", 2: "runs/table2.sh", 4: "runs/table4.sh", 5: "runs/table5.sh",
           6: "runs/table6.sh", 7: "runs/table7.sh"}


def raw_spec(table: int) -> dict:
    return yaml.safe_load((EXPERIMENTS / f"paper_table{table}.yaml").read_text())


def grids_of(table: int) -> list[dict]:
    raw = raw_spec(table)
    return raw["grids"] if "grids" in raw else [raw["grid"]]


def grid_cells(table: int, index: int, **grid_override) -> list:
    """Resolved cells of grid `index` of paper_tableN.yaml alone (with `grid_override` axes)."""
    raw = raw_spec(table)
    spec = Spec(name=raw["name"], path=f"paper_table{table}.yaml", base=raw["base"],
                grids=[{**grids_of(table)[index], **grid_override}], variants=raw.get("variants") or {},
                experiment=raw["experiment"])
    return spec.cells()


def all_cells(table: int) -> list:
    return [c for i in range(len(grids_of(table))) for c in grid_cells(table, i)]


@pytest.mark.parametrize("table", sorted(SCRIPTS))
def test_every_paper_spec_cites_its_official_script_and_keeps_the_full_schedule(table):
    text = (EXPERIMENTS / f"paper_table{table}.yaml").read_text()
    assert SCRIPTS[table] in text and "1,048,576 steps" in text
    raw = raw_spec(table)
    assert raw["name"] == f"paper_table{table}" and raw["base"]["device"] == "cuda"
    schedule = {"steps", "eval_every", "median_of", "batch_size", "lr", "ema_decay"}
    assert not schedule & set(raw["base"]) and not any(schedule & set(g) for g in grids_of(table))
    for c in grid_cells(table, 0, variant=["mixmatch"]):
        assert (c.steps, c.eval_every, c.median_of, c.batch_size, c.lr, c.ema_decay) == \
            (1 << 20, 1024, 20, 64, 0.002, 0.999)


def test_table1_is_the_large_model_with_wd_0_04_at_table1_sh_label_counts():
    cells = all_cells(1)
    assert len(cells) == 10
    assert {(c.dataset, c.n_labeled, c.lambda_u) for c in cells} == {("cifar10", 4000, 75.0),
                                                                     ("cifar100", 10000, 150.0)}
    assert all(c.model == "wrn28_large" and c.wd == 0.04 and c.alpha == 0.75 for c in cells)
    assert sorted(c.seed for c in cells if c.dataset == "cifar100") == SEEDS


def test_table2_is_stl10_with_four_scales_folds_1_to_5_and_all_5000_labels():
    cells = all_cells(2)
    assert sorted((c.n_labeled, c.seed) for c in cells) == [(1000, s) for s in SEEDS] + [(5000, 1)]
    assert all((c.dataset, c.model, c.scales, c.lambda_u, c.alpha, c.wd) == ("stl10", "wrn28_2", 4, 50.0, 0.75, 0.02)
               for c in cells)
    # the 5000-label cell draws from train + unlabeled, as the official stl10.1@5000 split did
    assert {(c.n_labeled, c.labeled_pool) for c in cells} == {(1000, "train"), (5000, "train+unlabeled")}


@pytest.mark.parametrize("table, words", [(2, "labeled_pool=train+unlabeled"),
                                          (4, "inferred from ablation/ab_mixmatch.py"), (7, "0.000002")])
def test_specs_whose_number_measures_a_setting_of_note_say_so_in_notes(table, words):
    notes = raw_spec(table)["notes"]
    assert isinstance(notes, list) and all(isinstance(n, str) for n in notes)
    assert any(words in n for n in notes)
    load_spec(str(EXPERIMENTS / f"paper_table{table}.yaml"))              # spec.py accepts `notes`


def test_table4_mixmatch_rows_run_split_seed_3_with_the_ablation_defaults():
    cells = grid_cells(4, 0)
    assert len(cells) == 20 and {c.seed for c in cells} == {3} and {c.n_labeled for c in cells} == {250, 4000}
    assert all((c.lambda_u, c.rampup_steps, c.alpha, c.wd, c.method) == (100.0, 2048, 0.75, 0.02, "mixmatch")
               for c in cells)
    one_flag = {c.variant: (c.K, c.T, c.ema_guess, c.mixup) for c in cells if c.n_labeled == 250}
    assert one_flag == {"mixmatch": (2, 0.5, False, "all"), "k1": (1, 0.5, False, "all"),
                        "k3": (3, 0.5, False, "all"), "k4": (4, 0.5, False, "all"),
                        "no_sharpen": (2, 1.0, False, "all"), "ema_guess": (2, 0.5, True, "all"),
                        "no_mixup": (2, 0.5, False, "none"), "mixup_labeled_only": (2, 0.5, False, "labeled"),
                        "mixup_unlabeled_only": (2, 0.5, False, "unlabeled"),
                        "mixup_separate": (2, 0.5, False, "separate")}


def test_table4_ict_row_is_ict_py_with_consistency_weight_1000_at_seed_3():
    assert grids_of(4)[1] == {"n_labeled": [250, 4000], "variant": ["ict"]}   # no ablation lambda_u
    cells = grid_cells(4, 1)
    assert all((c.method, c.seed, c.consistency_weight, c.alpha) == ("ict", 3, 1000.0, 0.75) for c in cells)


def test_table5_is_six_methods_by_five_label_counts_by_five_splits_plus_fully_supervised():
    grid = grids_of(5)[0]
    assert (grid["n_labeled"], grid["seed"]) == (LABELS, SEEDS)
    assert set(grid["variant"]) == {"pi_model", "pseudo_label", "mixup", "vat", "mean_teacher", "mixmatch"}
    assert grids_of(5)[1] == {"n_labeled": [50000], "seed": [1], "variant": ["fully_supervised"]}
    cells = all_cells(5)
    assert len(cells) == 151
    (fs,) = [c for c in cells if c.variant == "fully_supervised"]
    assert (fs.method, fs.alpha, fs.wd, fs.n_labeled) == ("fs_mixup", 0.5, 0.002, 50000)


def test_paper_cifar10_is_table5s_comparison_and_keeps_its_mixmatch_cells():
    alias = load_spec(str(EXPERIMENTS / "paper_cifar10.yaml")).cells()
    comparison = grid_cells(5, 0)
    assert [c.cell_key for c in alias] == [c.cell_key for c in comparison] and len(alias) == 150
    # (tests/test_identity.py: its MixMatch cells are the 25 it had before the method registry)


@pytest.mark.parametrize("table, dataset, alpha, n_all", [(6, "svhn", 0.75, 73257), (7, "svhn_extra", 0.25, 604388)])
def test_svhn_tables_run_mixmatch_with_the_dataset_preset_and_label_every_image_when_fully_supervised(
        table, dataset, alpha, n_all):
    cells = grid_cells(table, 0, variant=["mixmatch"])
    assert len(cells) == 25 and {(c.dataset, c.lambda_u, c.alpha, c.wd) for c in cells} == {(dataset, 250.0, alpha, 0.02)}
    assert grids_of(table)[1] == {"n_labeled": [n_all], "seed": [1], "variant": ["fully_supervised"]}


@pytest.mark.parametrize("table, mean_teacher", [(6, ("mean_teacher_svhn", 150)), (7, ("mean_teacher_svhn_extra", 180))])
def test_svhn_tables_use_table6_and_table7_sh_method_flags(table, mean_teacher):
    variants = raw_spec(table)["variants"]
    assert variants == {
        "mixup_svhn": {"method": "mixup", "wd": 0.02, "alpha": 0.25},
        "pi_model_svhn": {"method": "pi_model", "wd": 0.2, "consistency_weight": 5},
        "pseudo_label_svhn": {"method": "pseudo_label", "wd": 0.02, "consistency_weight": 2},
        mean_teacher[0]: {"method": "mean_teacher", "wd": 0.02, "consistency_weight": mean_teacher[1]}}
    assert set(grids_of(table)[0]["variant"]) == set(variants) | {"vat", "mixmatch"}


@pytest.mark.parametrize("table", [1, 2])
def test_dry_run_lists_the_cells_with_their_cost_in_gpu_hours(table, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code = main(["sweep", str(EXPERIMENTS / f"paper_table{table}.yaml"), "--dry-run"])
    out, err = capsys.readouterr()
    rows = [ln for ln in out.splitlines() if ln.endswith("GPU-h")]
    assert len(rows) == len(all_cells(table)) and "GPU-h of CUDA time to go" in out and "nothing was run" in out
    # priced without a GPU all the same; exit 2 says that a launch here would fail
    assert code == 0 if torch.cuda.is_available() else (code == 2 and "a launch here would fail: device" in err)
    assert list(tmp_path.iterdir()) == []


# ---- the paper's numbers beside every cell -------------------------------------------------------
REFERENCE = ROOT / "results" / "paper_reference.csv"


def reference_keys(paper: str = "mixmatch") -> set:
    """(dataset, model, method, variant, n_labeled, table) of one paper's rows of the CSV."""
    import csv
    with open(REFERENCE) as fh:
        return {(r["dataset"], r["model"], r["method"], r["variant"], int(r["n_labeled"]), int(r["table"]))
                for r in csv.DictReader(fh) if r["paper"] == paper}


@pytest.mark.parametrize("table, index", [(t, i) for t in sorted(SCRIPTS) for i in range(3) if i < len(grids_of(t))])
def test_every_cell_of_a_paper_spec_has_the_papers_number(table, index):
    keys = reference_keys()
    for c in grid_cells(table, index):
        key = (c.dataset, c.model, c.method, c.variant, c.n_labeled, table)
        assert key in keys, key


def test_reference_rows_of_registry_methods_name_their_variants():
    keys = reference_keys()
    assert ("cifar10", "wrn28_2", "fs_mixup", "fully_supervised", 50000, 5) in keys
    assert ("svhn", "wrn28_2", "fs_mixup", "fully_supervised", 73257, 6) in keys
    assert ("svhn_extra", "wrn28_2", "fs_mixup", "fully_supervised", 604388, 7) in keys
    assert {k for k in keys if k[3] == "ict"} == {("cifar10", "wrn28_2", "ict", "ict", n, 4) for n in (250, 4000)}
    assert {k[3] for k in keys if k[0] == "svhn" and k[5] == 6} >= {"pi_model_svhn", "pseudo_label_svhn",
                                                                  "vat", "mean_teacher_svhn", "mixmatch"}


@pytest.mark.parametrize("table", sorted(SCRIPTS))
def test_every_mixmatch_cell_of_a_paper_spec_has_the_papers_number(table):
    keys = reference_keys()
    for c in grid_cells(table, 0, variant=["mixmatch"]):
        assert (c.dataset, c.model, c.method, c.variant, c.n_labeled, table) in keys


def runs_of(cells, error=10.0):
    """Finished runs as sweeps.runs.load_runs returns them, one per cell."""
    import pandas as pd
    return pd.DataFrame([{"sweep": "t", "run_id": f"r{i}", "cell_key": c.cell_key, "dataset": c.dataset,
                          "model": c.model, "n_labeled": c.n_labeled, "seed": c.seed, "method": c.method,
                          "variant": c.variant, "status": "FINISHED", "error": error + i % 3, "start_time": i}
                         for i, c in enumerate(cells)])


@pytest.mark.parametrize("table, cells, numbers", [
    (1, lambda: all_cells(1), ["4.95 ± 0.08", "25.88 ± 0.30"]),
    (2, lambda: all_cells(2), ["10.18 ± 1.46", "5.59"]),
    (4, lambda: grid_cells(4, 0), ["11.80", "6.00", "17.09", "27.83", "39.11", "12.26", "6.50"]),
    (6, lambda: grid_cells(6, 0, variant=["mixmatch"]), ["3.78 ± 0.26", "2.89 ± 0.06"]),
    (7, lambda: grid_cells(7, 0, variant=["mixmatch"]), ["2.22 ± 0.08", "2.07 ± 0.05"]),
])
def test_mixmatch_table_shows_the_papers_number_beside_the_cells(table, cells, numbers):
    from sweeps import render
    from sweeps import table as tb
    cells = cells()
    layout = raw_spec(table)["layout"]
    text = render.to_markdown(tb.build_table(runs_of(cells), cells, layout=layout, sweep=f"paper_table{table}"))
    for n in numbers:
        assert n in text, (n, text)
