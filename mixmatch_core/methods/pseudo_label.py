"""Pseudo-Label (Lee 2013), as the official pseudo_label.py runs it.

Owns: its losses. The live model's own argmax on an unlabeled image is its target, and a
confidence threshold decides how much of it counts:
    L = xent(labeled) + consistency_weight * warmup(t) * L_pl
Official code vs. the paper: a confidence `threshold` (0.95; Lee's paper has none, the
"realistic evaluation" codebase of Oliver et al. 2018 added it), and the weight ramps linearly
over the first `warmup_pos` of the run. `smoothing` is accepted but unused by pseudo_label.py.
One augmentation per unlabeled image (libml/data.py, not data_pair). Batch norm: only the
labeled pass updates statistics. The gradient flows through the unlabeled logits; the target
(argmax) and the mask carry none.

Official code vs. its own comment ("Only enforce the loss when the model is confident"), lines
47-61 of pseudo_label.py, B = unlabeled batch size:
    loss_pl             = sparse_softmax_cross_entropy_with_logits(...)    shape [B]
    greater_than_thresh = reduce_any(softmax > threshold, -1, keepdims=True) shape [B, 1]
    loss_pl *= greater_than_thresh                                         [B] x [B, 1] -> [B, B]
    reduce_mean(loss_pl) = mean_i mask_i * mean_j xent_j
                         = (fraction of confident rows) x (mean cross-entropy over ALL rows).
So every unlabeled row, confident or not, is pulled towards its own argmax; the threshold only
scales the term. The paper's PseudoLabel rows (Tables 5-7) were made by that computation, so it
is the default, `pl_mask=official`. `pl_mask=per_row` is what the comment intends (row i counts
only if it is confident: mean_i mask_i * xent_i), kept as an explicit option; it is part of the
run's identity either way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import METHODS
from ..views import Unlabeled, Views
from .common import consistency_warmup, frozen_bn_stats, xent

PL_MASKS = METHODS["pseudo_label"].hparams["pl_mask"].choices   # official, per_row: declared in the registry


def views(cfg) -> Views:
    return Views(weak=1)


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.consistency_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def pseudo_label_loss(logits_u: Tensor, threshold: float, pl_mask: str = "official") -> Tensor:
    """L_pl for unlabeled logits [B, C], with mask_i = [max_c p_ic > threshold] and
    xent_i = xent(logits_i, argmax_i):
        official: mean_i mask_i * mean_j xent_j  (the [B] x [B, 1] broadcast, see the docstring)
        per_row:  mean_i mask_i * xent_i
    The mean of the [B, B] product is written as the product of the two means it equals (same
    value and gradient, without B^2 memory)."""
    if pl_mask not in PL_MASKS:
        raise ValueError(f"pl_mask: '{pl_mask}' is not one of {', '.join(PL_MASKS)}")
    logits_u = logits_u.float()
    p = torch.softmax(logits_u, dim=-1).detach()
    mask = (p > threshold).any(dim=-1).float()          # official: reduce_any(p > threshold)
    per_row = F.cross_entropy(logits_u, p.argmax(dim=-1), reduction="none")
    if pl_mask == "official":
        return mask.mean() * per_row.mean()
    return (per_row * mask).mean()


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    logits_x = model(x)                         # the one pass that updates BN statistics
    with frozen_bn_stats(model):
        logits_u = model(u.weak[0])
    lx = xent(logits_x, y)
    lu = pseudo_label_loss(logits_u, cfg.threshold, cfg.pl_mask)
    return lx + w * lu, lx, lu
