"""The supervised baseline: cross-entropy on the labeled batch, MixMatch's schedule.

Owns: its loss. Not an official file: it is our lower bound with the same data, model,
optimiser, weight decay and EMA as every other method (the official fully supervised recipe,
MixUp with every label, is `fs_mixup`).
"""
from __future__ import annotations

import torch

from .common import xent


def unlabeled_views(cfg) -> int:
    return 0


def unlabeled_weight(cfg, step: int) -> float:
    return 0.0


def losses(cfg, model, ema_model, x, y, u_views, w: float):
    lx = xent(model(x), y)
    return lx, lx, torch.zeros((), device=lx.device)
