"""The weight of each method's unlabeled term at step 0, in the middle of its warm-up and after it.

Expected weights are written out per method (its table5.sh preset), and cross-checked against
the official expression in the official unit (images, not steps):
    baselines:  weight * clip(images / (warmup_pos * train_kimg << 10), 0, 1)
    mixmatch.py: w_match * clip(images / (warmup_kimg << 10), 0, 1)
    remixmatch:  clip(images / (warmup_kimg << 10), 0, 1), the factor of w_match and w_kl
A dropped or rescaled warm-up fails here.
"""
import numpy as np
import pytest

from mixmatch_core import methods
from mixmatch_core.config import resolve
from mixmatch_core.methods import METHODS

STEPS = [0, 200, 400, 900]          # start, mid-warm-up, its end, after it (a 1000-step run)
# method: its unlabeled weight at STEPS (warm-up over 40% of the run; MixMatch: rampup 400 steps)
EXPECTED = {
    "mixmatch": [0.0, 37.5, 75.0, 75.0],          # lambda_u 75
    "fixmatch": [1.0, 1.0, 1.0, 1.0],             # loss_xe + wu * loss_xeu, wu 1: no warm-up
    "pi_model": [0.0, 10.0, 20.0, 20.0],          # consistency_weight 20
    "pseudo_label": [0.0, 0.5, 1.0, 1.0],         # consistency_weight 1
    "mixup": [1.0, 1.0, 1.0, 1.0],                # loss_xe + loss_xeu: no weight, no warm-up
    "vat": [0.0, 0.15, 0.3, 0.3],                 # vat 0.3 (entmin_weight is not warmed up)
    "mean_teacher": [0.0, 25.0, 50.0, 50.0],      # consistency_weight 50
    "ict": [0.0, 500.0, 1000.0, 1000.0],          # consistency_weight 1000
    "remixmatch": [0.0, 0.5, 1.0, 1.0],           # the warm-up factor of w_match and w_kl (losses apply them)
    "fs_mixup": [0.0, 0.0, 0.0, 0.0],             # no unlabeled term
    "supervised": [0.0, 0.0, 0.0, 0.0],
}


def short_run(name: str, **kw):
    extra = {"rampup_steps": 400} if name in ("mixmatch", "remixmatch") else {}
    return resolve({"variant": name, "steps": 1000, "eval_every": 100, **extra, **kw})


def official_weight(name: str, cfg, step: int) -> float:
    """The official files' expression, counted in images as self.step is."""
    images, train_images = step * cfg.batch_size, cfg.steps * cfg.batch_size
    if name == "mixmatch":
        warmup_images = cfg.rampup_steps * cfg.batch_size        # warmup_kimg << 10
        return cfg.lambda_u * float(np.clip(images / warmup_images, 0, 1))
    if name == "remixmatch":
        return float(np.clip(images / (cfg.rampup_steps * cfg.batch_size), 0, 1))
    if name == "fixmatch":
        return cfg.wu
    if name in ("mixup", "fs_mixup", "supervised"):
        return {"mixup": 1.0}.get(name, 0.0)
    weight = cfg.vat_weight if name == "vat" else cfg.consistency_weight
    return weight * float(np.clip(images / (cfg.warmup_pos * train_images), 0, 1))


def test_every_registered_method_has_its_schedule_pinned():
    assert set(EXPECTED) == set(METHODS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unlabeled_weight_at_start_mid_warmup_and_after(name):
    cfg = short_run(name)
    mod = methods.load(name)
    got = [mod.unlabeled_weight(cfg, s) for s in STEPS]
    assert got == pytest.approx(EXPECTED[name], abs=1e-9)
    assert got == pytest.approx([official_weight(name, cfg, s) for s in STEPS], abs=1e-9)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_schedule_matches_the_official_expression(name):
    """The paper's length (2^26 images) and MixMatch's 1024 kimg = 16,384-step ramp."""
    cfg = resolve({"variant": name})
    mod = methods.load(name)
    for step in (0, 8192, 16384, 209715, 419430, 1 << 19, (1 << 20) - 1):
        assert mod.unlabeled_weight(cfg, step) == pytest.approx(official_weight(name, cfg, step), rel=1e-9, abs=1e-12)
