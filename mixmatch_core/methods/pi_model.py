"""Pi-Model (Laine & Aila 2017, arXiv 1610.02242), as the official pi_model.py runs it.

Owns: its losses. Two augmentations of each unlabeled image go through the live model; the
first, without gradient, is the target of the second:
    L = xent(labeled) + consistency_weight * warmup(t) * mean_{i,c} (p(u1)_ic - p(u2)_ic)^2
Official code vs. the paper: the squared error is averaged over classes too (reduce_mean), the
weight ramps linearly over the first `warmup_pos` of the run (the paper: a Gaussian ramp over
80 epochs), and the labeled and unlabeled images are separate batches (the paper feeds one
mixed batch). Its `smoothing` flag is accepted but never used by pi_model.py (MultiModel.augment
is not called), so we have no such field. Batch norm: only the labeled pass updates the running
statistics ("Take only first call to update batch norm"); the unlabeled passes use batch
statistics and leave them.
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import consistency_warmup, frozen_bn_stats, squared_prob_error, xent


def views(cfg) -> Views:
    return Views(weak=2)   # libml/data_pair.py: two augmentations of each image


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.consistency_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    logits_x = model(x)                         # the one pass that updates BN statistics
    with frozen_bn_stats(model):
        with torch.no_grad():                   # official: tf.stop_gradient on the teacher
            teacher = torch.softmax(model(u.weak[0]).float(), dim=-1)
        student = model(u.weak[1])
    lx = xent(logits_x, y)
    lu = squared_prob_error(student.float(), teacher)    # mean over rows and classes of squared error
    return lx + w * lu, lx, lu
