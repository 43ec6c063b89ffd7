"""MixMatch's step: Algorithm 1 of Berthelot et al. (2019), official mixmatch.py.

Owns: the wiring of one step's losses from the pure functions in mixmatch_core/mixmatch.py:
guess one q per unlabeled image from its K views, give that same q to all K views, MixUp the
labeled and unlabeled rows together, forward the mixed batch interleaved, and L = L_X +
lambda_u(t) L_U with L_U over all K views. The Table 4 ablations are config fields (K, T,
mixup, ema_guess, bn_mode); their names and defaults are the paper's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import mixmatch as mm


def unlabeled_views(cfg) -> int:
    return cfg.K                    # Algorithm 1 line 5: K augmentations per unlabeled image


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.lambda_u * mm.rampup(step, cfg.rampup_steps)   # Eq. 5, ramped (warmup_kimg 1024)


def losses(cfg, model, ema_model, x, y, u_views, w: float):
    B, K = x.shape[0], cfg.K
    # Lines 6-8: the live model guesses (official), in training mode, BN updates discarded;
    # the Table 4 "with parameter EMA" row lets the EMA model guess.
    q = mm.guess_labels(ema_model if cfg.ema_guess else model, u_views, cfg.T)
    targets = torch.cat([F.one_hot(y, q.shape[1]).float()] + [q] * K)
    mixed, mixed_t = mm.mixup(torch.cat([x] + u_views), targets, B, cfg.alpha, cfg.mixup)
    logits = mm.forward_interleaved(model, list(mixed.split(B)), B, cfg.bn_mode)
    lx = mm.loss_x(logits[0].float(), mixed_t[:B])
    lu = mm.loss_u(torch.cat(logits[1:]).float(), mixed_t[B:])
    return lx + w * lu, lx, lu
