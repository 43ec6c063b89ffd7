"""The supervised baseline: cross-entropy on the labeled batch, MixMatch's schedule.

Owns: its loss. Not an official file: it is our lower bound with the same data, model,
optimiser, weight decay and EMA as every other method (the official fully supervised recipe,
MixUp with every label, is `fs_mixup`).
"""
from __future__ import annotations

import torch

from ..views import Unlabeled, Views
from .common import xent


def views(cfg) -> Views:
    return Views()


def unlabeled_weight(cfg, step: int) -> float:
    return 0.0


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    lx = xent(model(x), y)
    return lx, lx, torch.zeros((), device=lx.device)
