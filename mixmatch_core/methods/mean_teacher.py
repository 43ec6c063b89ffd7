"""Mean Teacher (Tarvainen & Valpola 2017, arXiv 1703.01780), as the official mean_teacher.py.

Owns: its losses. The teacher is the EMA model (decay `ema_decay`, official flag `ema`, 0.999):
the same exponential moving average of the weights that every method evaluates. The teacher
sees the first augmentation of an unlabeled image, the live model the second:
    L = xent(labeled) + consistency_weight * warmup(t) * mean_{i,c} (p_ema(u1) - p(u2))^2
Official code vs. the paper: squared error averaged over classes, a linear warm-up over the
first `warmup_pos` of the run, separate labeled and unlabeled batches, Adam with the decoupled
weight decay of every method here (table5.sh: wd 0.2), and the teacher runs in training mode:
batch statistics of its own batch with the averaged weights. `smoothing` is accepted but unused
by mean_teacher.py. Batch norm: only the labeled pass updates running statistics.
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import consistency_warmup, frozen_bn_stats, squared_prob_error, xent


def views(cfg) -> Views:
    return Views(weak=2)


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.consistency_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    logits_x = model(x)                         # the one pass that updates BN statistics
    with torch.no_grad(), frozen_bn_stats(ema_model):
        teacher = torch.softmax(ema_model(u.weak[0]).float(), dim=-1)
    with frozen_bn_stats(model):
        student = model(u.weak[1])
    lx = xent(logits_x, y)
    lu = squared_prob_error(student.float(), teacher)
    return lx + w * lu, lx, lu
