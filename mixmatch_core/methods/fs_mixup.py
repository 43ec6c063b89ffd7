"""The official fully supervised recipe (fully_supervised/fs_mixup.py): MixUp on labeled data.

Owns: its loss. Every row of the labeled batch is mixed with the batch reversed, one
lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha), per row (official flag `beta`,
default 0.5); cross-entropy against the mixed one-hot labels. With every training label
(n_labeled = the training set size) and wd 0.002 it is the paper's "fully supervised" row.
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import mix_rows, mixup_xent, reversed_index, sample_lambda


def views(cfg) -> Views:
    return Views()


def unlabeled_weight(cfg, step: int) -> float:
    return 0.0


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    B = x.shape[0]
    lam, rev = sample_lambda(B, cfg.alpha, x.device), reversed_index(B, x.device)
    lx = mixup_xent(model(mix_rows(x, rev, lam)), y, rev, lam)
    return lx, lx, torch.zeros((), device=lx.device)
