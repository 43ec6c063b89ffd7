"""Every setting of the official runs/table5.sh, table6.sh and table7.sh, checked on the resolved
cells of experiments/paper_table5/6/7.yaml (not a sample: every line, every cell, every flag).

The two tables below are written literally from reading the official scripts and the method
files' flag definitions (google-research/mixmatch): a line's flags override its file's defaults,
and every resulting flag must equal the matching field of each of that method's 25 cells
(5 label counts x 5 seeds). A changed preset, variant or dataset preset fails here.
"""
import functools
import re
from pathlib import Path

import pytest

from mixmatch_core.config import resolve
from sweeps.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
LABELS, SEEDS = [250, 500, 1000, 2000, 4000], [1, 2, 3, 4, 5]
DATASET = {5: "cifar10", 6: "svhn", 7: "svhn_extra"}   # table6.sh 'svhn_noextra', table7.sh 'svhn'

# The lines of runs/tableN.sh, flags as written (--train_dir and --dataset left out).
SCRIPTS = {
    5: {"ict": "--wd=0.02 --beta=0.75 --consistency_weight=1000",
        "mean_teacher": "--wd=0.2 --smoothing=0.001 --consistency_weight=50",
        "mixmatch": "--wd=0.02 --beta=0.75 --w_match=75",
        "mixup": "--wd=0.02 --beta=0.75",
        "pi_model": "--wd=0.02 --smoothing=0.001 --consistency_weight=20",
        "pseudo_label": "--wd=0.02 --smoothing=0.01 --consistency_weight=1",
        "vat": "--wd=0.02 --smoothing=0.01"},
    6: {"ict": "--wd=0.02 --beta=0.5 --consistency_weight=20",
        "mean_teacher": "--wd=0.02 --smoothing=0.001 --consistency_weight=150",
        "mixmatch": "--wd=0.02 --beta=0.75 --w_match=250",
        "mixup": "--wd=0.02 --beta=0.25",
        "pi_model": "--wd=0.2 --smoothing=0.001 --consistency_weight=5",
        "pseudo_label": "--wd=0.02 --smoothing=0.01 --consistency_weight=2",
        "vat": "--wd=0.02 --smoothing=0.01"},
    7: {"ict": "--wd=0.02 --beta=0.5 --consistency_weight=20",
        "mean_teacher": "--wd=0.02 --smoothing=0.001 --consistency_weight=180",
        "mixmatch": "--wd=0.02 --beta=0.25 --w_match=250",
        "mixup": "--wd=0.02 --beta=0.25",
        "pi_model": "--wd=0.2 --smoothing=0.001 --consistency_weight=5",
        "pseudo_label": "--wd=0.02 --smoothing=0.01 --consistency_weight=2",
        "vat": "--wd=0.02 --smoothing=0.01"},
}

# Each file's flag defaults (flags.DEFINE_*, FLAGS.set_default, and mixmatch.py's model()
# keyword defaults: warmup_kimg=1024, nu=2, mixmode='xxy.yxy', guess_label(T=0.5)).
COMMON = {"lr": 0.002, "batch": 64, "train_kimg": 1 << 16, "ema": 0.999, "filters": 32}
FILES = {
    "pi_model": {"wd": 0.02, "consistency_weight": 10, "warmup_pos": 0.4, "smoothing": 0.1},
    "mean_teacher": {"wd": 0.02, "consistency_weight": 50, "warmup_pos": 0.4, "smoothing": 0.001},
    "ict": {"wd": 0.02, "consistency_weight": 50, "warmup_pos": 0.4, "beta": 0.5},
    "mixup": {"wd": 0.02, "beta": 0.5},
    "vat": {"wd": 0.02, "vat": 0.3, "vat_eps": 6, "entmin_weight": 0.06, "warmup_pos": 0.4, "smoothing": 0.1},
    "pseudo_label": {"wd": 0.02, "consistency_weight": 1, "threshold": 0.95, "warmup_pos": 0.4, "smoothing": 0.1},
    "mixmatch": {"wd": 0.02, "beta": 0.5, "w_match": 100, "warmup_kimg": 1024, "nu": 2, "T": 0.5,
                 "mixmode": "xxy.yxy"},
    "fs_mixup": {"wd": 0.002, "beta": 0.5},
}
# Flags with no field: `smoothing` is defined but never read by these files (no augment call).
UNUSED = {"smoothing"}


def field_value(cfg, flag: str):
    """Our config's value of an official flag, in the flag's unit."""
    batch = cfg.batch_size
    return {"wd": cfg.wd, "beta": cfg.alpha, "consistency_weight": cfg.consistency_weight,
            "w_match": cfg.lambda_u, "warmup_pos": cfg.warmup_pos, "threshold": cfg.threshold,
            "vat": cfg.vat_weight, "vat_eps": cfg.vat_eps, "entmin_weight": cfg.entmin_weight,
            "ema": cfg.ema_decay, "lr": cfg.lr, "batch": batch, "nu": cfg.K, "T": cfg.T,
            "train_kimg": cfg.steps * batch // 1024,
            "warmup_kimg": None if cfg.rampup_steps is None else cfg.rampup_steps * batch // 1024,
            "mixmode": {"all": "xxy.yxy"}.get(cfg.mixup, cfg.mixup),
            "filters": {"wrn28_2": 32}.get(cfg.model)}[flag]


def official_flags(table: int, method: str) -> dict:
    line = dict(re.findall(r"--(\w+)=(\S+)", SCRIPTS[table][method]))
    return {**COMMON, **FILES[method], **{k: float(v) for k, v in line.items()}}


@functools.lru_cache(maxsize=None)
def spec_cells(table: int) -> tuple:
    return tuple(load_spec(str(ROOT / "experiments" / f"paper_table{table}.yaml")).cells())


def cells_of(table: int, method: str) -> list:
    return [c for c in spec_cells(table) if c.method == method]


@pytest.mark.parametrize("table, method", [(t, m) for t in SCRIPTS for m in SCRIPTS[t] if m != "ict"])
def test_every_cell_of_a_script_line_has_every_flag_of_that_line(table, method):
    cells = cells_of(table, method)
    assert sorted((c.n_labeled, c.seed) for c in cells) == sorted((n, s) for n in LABELS for s in SEEDS)
    want = {k: v for k, v in official_flags(table, method).items() if k not in UNUSED}
    for c in cells:
        assert c.dataset == DATASET[table]
        got = {k: field_value(c, k) for k in want}
        assert got == want, (c.run_name, {k: (got[k], want[k]) for k in want if got[k] != want[k]})
        if method == "pseudo_label":
            assert c.pl_mask == "official"              # the computation that made the paper's rows


@pytest.mark.parametrize("table", sorted(SCRIPTS))
def test_the_ict_line_has_no_cell_and_its_flags_are_documented(table):
    """The paper's Tables 5-7 have no ICT row; each spec says which ict.py line it leaves out."""
    assert cells_of(table, "ict") == []
    flags = official_flags(table, "ict")
    text = re.sub(r"\s*\n#\s*", " ", (ROOT / "experiments" / f"paper_table{table}.yaml").read_text())
    assert f"ict.py (wd {flags['wd']:g}, beta {flags['beta']:g}, consistency_weight {flags['consistency_weight']:g})" \
        in text


def test_the_registered_ict_preset_is_table5s_ict_line():
    """Used by every spec that runs ict on CIFAR-10 (Table 4's row, the CPU comparison)."""
    want = {k: v for k, v in official_flags(5, "ict").items() if k not in UNUSED}
    cfg = resolve({"variant": "ict", "dataset": "cifar10"})
    assert {k: field_value(cfg, k) for k in want} == want


@pytest.mark.parametrize("table", sorted(SCRIPTS))
def test_the_fully_supervised_row_is_fs_mixup_with_its_file_defaults(table):
    """fully_supervised/runs/all.sh passes no flag but --dataset to fs_mixup.py."""
    (cell,) = cells_of(table, "fs_mixup")
    want = {**COMMON, **FILES["fs_mixup"]}
    assert {k: field_value(cell, k) for k in want} == want


# The registry's own defaults: what a method's knob is when no preset and no user sets it. Table
# lines override some of them (pi_model's consistency_weight 10 -> 20, ict's 50 -> 1000, mixup's
# and ict's beta 0.5 -> 0.75), so the cells above do not pin these.
KNOB_OF_FLAG = {"consistency_weight": "consistency_weight", "warmup_pos": "warmup_pos", "threshold": "threshold",
                "vat": "vat_weight", "vat_eps": "vat_eps", "entmin_weight": "entmin_weight", "beta": "alpha"}
# Knobs that are not flags of the method file: vat_xi is third_party/vat_utils.py's
# generate_perturbation(xi=1e-6); pl_mask 'official' is pseudo_label.py's computation.
KNOB_ONLY = {("vat", "vat_xi"): 1e-6, ("pseudo_label", "pl_mask"): "official"}


@pytest.mark.parametrize("method", [m for m in FILES if m != "mixmatch"])   # mixmatch: the cells test above
def test_every_knob_of_a_method_defaults_to_its_official_files_flag(method):
    from mixmatch_core.methods import METHODS
    knobs = METHODS[method].hparams
    want = {KNOB_OF_FLAG[f]: v for f, v in FILES[method].items() if f in KNOB_OF_FLAG}
    want.update({k: v for (m, k), v in KNOB_ONLY.items() if m == method})
    assert set(knobs) == set(want), "a knob without its official default here"
    assert {k: knobs[k].default for k in knobs} == want


def test_mixmatchs_label_guess_and_batch_norm_defaults_are_the_official_ones():
    """ab_mixmatch.py use_ema_guess=False (the live model guesses); mixmatch.py's interleave, where
    only the first pass updates batch-norm statistics; every cell of Table 5 keeps them."""
    for c in cells_of(5, "mixmatch"):
        assert (c.ema_guess, c.bn_mode, c.ema) == (False, "interleave", True)
