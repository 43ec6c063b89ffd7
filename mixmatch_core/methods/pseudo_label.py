"""Pseudo-Label (Lee 2013), as the official pseudo_label.py runs it.

Owns: its losses. The live model's own argmax on an unlabeled image is its target, counted
only where the model is confident:
    L = xent(labeled) + consistency_weight * warmup(t) * mean_i [max_c p_ic > threshold] xent(u_i, argmax p_i)
Official code vs. the paper: a confidence `threshold` (0.95; Lee's paper has none, the
"realistic evaluation" codebase of Oliver et al. 2018 added it), the mean runs over every
unlabeled row, confident or not, and the weight ramps linearly over the first `warmup_pos`
of the run. The gradient flows through the unlabeled logits (the target and the mask carry
none). `smoothing` is accepted but unused by pseudo_label.py. One augmentation per unlabeled
image (libml/data.py, not data_pair). Batch norm: only the labeled pass updates statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import consistency_warmup, frozen_bn_stats, xent


def unlabeled_views(cfg) -> int:
    return 1


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.consistency_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def pseudo_label_loss(logits_u: Tensor, threshold: float) -> Tensor:
    """Mean over all rows of mask_i * xent(logits_i, argmax_i), mask_i = max_c p_ic > threshold."""
    logits_u = logits_u.float()
    p = torch.softmax(logits_u, dim=-1).detach()
    mask = (p > threshold).any(dim=-1).float()          # official: reduce_any(p > threshold)
    return (F.cross_entropy(logits_u, p.argmax(dim=-1), reduction="none") * mask).mean()


def losses(cfg, model, ema_model, x, y, u_views, w: float):
    logits_x = model(x)                         # the one pass that updates BN statistics
    with frozen_bn_stats(model):
        logits_u = model(u_views[0])
    lx = xent(logits_x, y)
    lu = pseudo_label_loss(logits_u, cfg.threshold)
    return lx + w * lu, lx, lu
