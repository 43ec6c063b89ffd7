"""MixUp (Zhang et al. 2018, arXiv 1710.09412) adapted to SSL, as the official mixup.py: Table 5's MixUp row.

Owns: its losses. The labeled batch is mixed with itself reversed (mixed one-hot labels); the
unlabeled batch gets the live model's softmax as its labels (no gradient) and is mixed the same
way; both terms are cross-entropies with equal weight:
    L = xent(mix(x), mix(e_y)) + xent(mix(u), mix(p(u)))
Official code vs. a purely supervised MixUp: the unlabeled term is there (mixup.py's loss_xeu),
without warm-up or weight; the partner of row i is row B - 1 - i (the batch reversed, not a
random permutation); lambda is folded to >= 0.5 per sample. Official flag `beta` is our
`alpha` (table5.sh: 0.75). Batch norm: only the pass on the mixed labeled batch updates
running statistics; the label-guessing and mixed unlabeled passes use batch statistics.
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import (frozen_bn_stats, mix_rows, mixup_pairs, mixup_xent,
                     reversed_index, sample_lambda, soft_xent)


def views(cfg) -> Views:
    return Views(weak=1)   # libml/data.py: one augmentation per unlabeled image


def unlabeled_weight(cfg, step: int) -> float:
    return 1.0                         # loss_xe + loss_xeu: no weight, no warm-up


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    B, u = x.shape[0], u.weak[0]       # the one weak view
    rev = reversed_index(B, x.device)
    lam_x = sample_lambda(B, cfg.alpha, x.device)
    lx = mixup_xent(model(mix_rows(x, rev, lam_x)), y, rev, lam_x)   # updates BN statistics
    with frozen_bn_stats(model):
        with torch.no_grad():
            p_u = torch.softmax(model(u).float(), dim=-1)
        lam_u = sample_lambda(u.shape[0], cfg.alpha, u.device)
        u_mix, q_mix = mixup_pairs(u, p_u, reversed_index(u.shape[0], u.device), lam_u)
        lu = soft_xent(model(u_mix).float(), q_mix)     # soft-target cross-entropy (Eq. 3's form)
    return lx + w * lu, lx, lu
