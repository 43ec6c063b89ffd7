"""Interpolation Consistency Training (Verma et al. 2019, arXiv 1903.03825), as the official ict.py.

Owns: its losses. The EMA teacher's predictions on an unlabeled batch are mixed exactly as the
inputs are, and the live model must predict the mix on the mixed inputs:
    lambda_i = max(l, 1 - l), l ~ Beta(alpha, alpha);   partner of row i: row B - 1 - i
    u'_i = lambda_i u_i + (1 - lambda_i) u_partner;   q'_i = lambda_i p_ema(u_i) + (1 - lambda_i) p_ema(u_partner)
    L = xent(labeled) + consistency_weight * warmup(t) * mean_{i,c} (q'_ic - p(u')_ic)^2
Official code vs. the paper: the partner is the batch reversed (not a second random batch),
lambda is folded to >= 0.5 per sample as in MixMatch, only the first of the two augmentations
data_pair.py makes is used (so we draw one), the teacher runs in training mode (batch
statistics, averaged weights) and the weight ramps over the first `warmup_pos` of the run.
Official flag `beta` is our `alpha`. Batch norm: only the labeled pass updates statistics.
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import (consistency_warmup, frozen_bn_stats, mixup_pairs, reversed_index,
                     sample_lambda, squared_prob_error, xent)


def views(cfg) -> Views:
    return Views(weak=1)


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.consistency_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    u = u.weak[0]                               # the one weak view
    lam, rev = sample_lambda(u.shape[0], cfg.alpha, u.device), reversed_index(u.shape[0], u.device)
    logits_x = model(x)                         # the one pass that updates BN statistics
    with torch.no_grad(), frozen_bn_stats(ema_model):
        teacher = torch.softmax(ema_model(u).float(), dim=-1)
    u_mix, q_mix = mixup_pairs(u, teacher, rev, lam)
    with frozen_bn_stats(model):
        student = model(u_mix)
    lx = xent(logits_x, y)
    lu = squared_prob_error(student.float(), q_mix)
    return lx + w * lu, lx, lu
