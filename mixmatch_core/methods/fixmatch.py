"""FixMatch (Sohn et al. 2020, arXiv 2001.07685), as the official fixmatch.py computes it.

Owns: FixMatch's pseudo-label loss and the wiring of one step:
    L = xent(labeled) + wu * mean_i( mask_i * xent(strong_i, argmax p_i) ),
    p_i = stop_gradient(softmax(weak_i)), mask_i = [max_c p_ic >= confidence]
with uratio * B unlabeled rows (uratio 7), wu 1, confidence 0.95, and the knobs of its
ablation/ab_fixmatch_*.py files (T, pseudo_target, anchoring, teacher). Its optimiser (TF
Momentum 0.9 with Nesterov, lr 0.03 x cos(7 pi t / 16), wd 0.0005 x l2_loss(kernels) in the
loss) is declared in the registry (methods/__init__.py) and applied by optim.py and
train.optimizer_update; its views (a weak and a strong view of each unlabeled image, CTAugment's
probe) by views(); the rules of methods/common.py hold (no host sync, autocast-safe).

Official lines (fixmatch.py, FixMatch.model), and how they are written here:
- The mean runs over ALL uratio * B rows, confident or not (line 118, `reduce_mean(loss_xeu *
  pseudo_mask)`): a step with few confident rows has a small loss, not a loss renormalised over
  the confident ones. The mask is `>=` (line 116; a row at exactly `confidence` counts).
- One training pass (lines 98-102): `interleave(concat([xt, y_weak, y_strong]), 2 * uratio + 1)`, then
  para_cat (one tower per GPU), then de_interleave. interleave is a fixed permutation of the
  (2u+1) * B rows (reshape to [B, 2u+1], transpose, flatten: row i * (2u+1) + j moves to row
  j * B + i), undone by de_interleave; it exists so that each GPU's tower of para_cat (a
  contiguous share of the permuted rows) sees labeled and unlabeled rows alike. With one
  device there is one tower, and batch norm's batch statistics are means over all rows, which
  a permutation does not change: the official pass on one GPU is one forward of the plain
  concatenation, which is what we run (up to the order of a floating-point sum). Its BN
  updates are every UPDATE_OP of that pass (post_ops): the running statistics are updated
  once, from the whole batch, as here.
  Multi-GPU para_cat (per-tower statistics of 1/n of the interleaved batch) is not reproduced:
  a run trains on one device.
- The weak view's logits come from the same pass as the strong view's; the pseudo-label is
  tf.stop_gradient(softmax(logits_weak)) (line 113), so the weak rows get gradient only
  through batch norm's batch statistics, never through the target (detach() here).

The ablation files, each a knob (their variants: methods/__init__.py, docs/methods.md):
- T (ab_fixmatch_sharpen.py): p = softmax(weak / T); the argmax and the mask read it.
- pseudo_target=soft (ab_fixmatch_sharpen_conditional_consistency.py): the target is the
  distribution softmax(weak / T), the mask still from softmax(weak) >= confidence.
- anchoring (ab_fixmatch_anchoring.py, 'A.B'): view A makes the pseudo-label, view B learns it;
  each 'strong' is an independent strong view, each 'weak' an independent weak one.
- teacher (ab_fixmatch_meanteacher*.py): the EMA model makes the pseudo-label from the weak
  view, in inference mode (ema: EMA weights, the live model's BN running statistics, as the
  official EMA getter reads them) or with batch statistics (ema_train; its BN updates are not
  in post_ops, so none is kept). The live pass still holds labeled, weak and strong rows (its
  BN statistics as the file's), and the strong rows learn. The files as committed slice
  `logits_strong = logits[batch:]`, 2 * uratio * B rows against uratio * B labels, which TF
  refuses when it builds the graph; we take the strong rows, what the slice evidently meant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..views import Unlabeled, Views
from .common import frozen_bn_stats, xent


def views(cfg) -> Views:
    """One weak and one strong view of uratio * B unlabeled images (the anchoring ablation asks
    for two of one kind); CTAugment's probe when the strong augmentation is CTAugment."""
    kinds = cfg.anchoring.split(".")
    return Views(weak=kinds.count("weak"), strong=kinds.count("strong"), uratio=cfg.uratio,
                 probe=(cfg.augment == "ctaugment"))


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.wu   # loss_xe + wu * loss_xeu: no warm-up


def pseudo_label_loss(logits_learner: Tensor, logits_anchor: Tensor, confidence: float, T: float = 1.0,
                      target: str = "hard") -> Tensor:
    """mean_i mask_i * xent_i over all rows (official reduce_mean(loss_xeu * pseudo_mask)).

    hard: p = softmax(anchor / T), xent_i = xent(learner_i, argmax p_i), mask_i = max p_i >= confidence.
    soft: xent_i = H(softmax(anchor / T)_i, softmax(learner_i)), mask_i = max softmax(anchor)_i >= confidence.
    The anchor's logits carry no gradient (official tf.stop_gradient)."""
    anchor = logits_anchor.detach().float()
    p = torch.softmax(anchor / T, dim=-1)
    logp = F.log_softmax(logits_learner.float(), dim=-1)
    if target == "hard":
        mask = p.max(dim=-1).values >= confidence
        per_row = -logp.gather(1, p.argmax(dim=-1, keepdim=True))[:, 0]
    else:
        mask = torch.softmax(anchor, dim=-1).max(dim=-1).values >= confidence
        per_row = -(p * logp).sum(dim=-1)
    return (per_row * mask.float()).mean()


@torch.no_grad()
def teacher_logits(kind: str, model: nn.Module, ema_model: nn.Module, u: Tensor) -> Tensor:
    """The EMA model's logits on the anchor view (ab_fixmatch_meanteacher*.py). Called before
    the live pass, so the running statistics it reads are those before this step's update, as
    the official graph reads them (its BN updates run after train_op)."""
    if kind == "ema_train":
        with frozen_bn_stats(ema_model):
            return ema_model(u)
    for dst, src in zip(ema_model.buffers(), model.buffers()):   # the live BN statistics
        dst.copy_(src)
    ema_model.eval()
    try:
        return ema_model(u)
    finally:
        ema_model.train()


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    anchor_kind, learner_kind = cfg.anchoring.split(".")
    pool = {"weak": list(u.weak), "strong": list(u.strong)}
    u_anchor, u_learner = pool[anchor_kind].pop(0), pool[learner_kind].pop(0)
    teacher = teacher_logits(cfg.teacher, model, ema_model, u_anchor) if cfg.teacher != "live" else None
    # One training-mode pass of [labeled, anchor, learner]: BN statistics from all rows, updated once.
    logits = model(torch.cat([x, u_anchor, u_learner]))
    logits_x, logits_anchor, logits_learner = logits.split([x.shape[0], u_anchor.shape[0], u_learner.shape[0]])
    lx = xent(logits_x, y)
    lu = pseudo_label_loss(logits_learner, logits_anchor if teacher is None else teacher, cfg.confidence, cfg.T,
                           cfg.pseudo_target)
    return lx + w * lu, lx, lu
