"""MixMatch: Algorithm 1 of Berthelot et al. (2019, arXiv 1905.02249, Eqs. 3-11), official mixmatch.py.

Owns: MixMatch's own pure functions (sharpening, label guessing, MixUp with the Table 4
modes, the official batch-norm interleave and the interleaved forward of the mixed batch, the
lambda_u ramp-up) and the wiring of one step's losses: guess one q per unlabeled image from
its K views, give that same q to all K views, MixUp the labeled and unlabeled rows together,
forward the mixed batch interleaved, and L = L_X + lambda_u(t) L_U with L_U over all K views.
The Table 4 ablations are config fields (K, T, mixup, ema_guess, bn_mode), declared with the
named variants in methods/__init__.py. Nothing here knows about optimisers, data sets,
logging or checkpoints; the rules of methods/common.py hold (no host sync, autocast-safe).
Where the paper's text and the official code differ, the code is followed and the docstring
says so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..views import Unlabeled, Views
from .common import frozen_bn_stats, mixup_pairs, sample_lambda, soft_xent, squared_prob_error

MIXUP_MODES = ("all", "none", "labeled", "unlabeled", "separate")
BN_MODES = ("interleave", "fused")


def views(cfg) -> Views:
    return Views(weak=cfg.K)   # Algorithm 1 line 5: K augmentations per unlabeled image


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.lambda_u * rampup(step, cfg.rampup_steps)   # Eq. 5, ramped (warmup_kimg 1024)


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    B, K = x.shape[0], cfg.K
    # Lines 6-8: the live model guesses (official), in training mode, BN updates discarded;
    # the Table 4 "with parameter EMA" row lets the EMA model guess.
    q = guess_labels(ema_model if cfg.ema_guess else model, u.weak, cfg.T)
    targets = torch.cat([F.one_hot(y, q.shape[1]).float()] + [q] * K)
    mixed, mixed_t = mixup(torch.cat([x] + u.weak), targets, B, cfg.alpha, cfg.mixup)
    logits = forward_interleaved(model, list(mixed.split(B)), B, cfg.bn_mode)
    lx = soft_xent(logits[0].float(), mixed_t[:B])
    lu = squared_prob_error(torch.cat(logits[1:]).float(), mixed_t[B:])
    return lx + w * lu, lx, lu


def sharpen(p: Tensor, T: float) -> Tensor:
    """Algorithm 1 line 8, Eq. 7: Sharpen(p, T)_i = p_i^(1/T) / sum_j p_j^(1/T) (last dim)."""
    # pow, not softmax(log p / T): the official guess_label does exactly this.
    pt = p.pow(1.0 / T)
    return pt / pt.sum(dim=-1, keepdim=True)


def guess_labels(model: nn.Module, u_views: list[Tensor], T: float) -> Tensor:
    """Algorithm 1 lines 7-8 on the K views of line 5 (Eq. 6-7):
    q = Sharpen(mean_k softmax(model(u_k)), T).

    One forward per view, in the model's current mode (the caller keeps training mode, as
    the official code does: batch statistics, running-stat updates discarded). The official
    method passes the live model; the Table 4 "EMA guesses" ablation passes the EMA model.
    Returns [B, C] fp32, rows summing to 1, without grad.
    """
    with torch.no_grad(), frozen_bn_stats(model):
        probs = [torch.softmax(model(u).float(), dim=-1) for u in u_views]
        q = torch.stack(probs, dim=0).mean(dim=0)  # average over the K augmentations
    return sharpen(q, T).detach()


def _mix_block(x: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Official MixMode.augment: mix a block with a random permutation of itself."""
    n = x.shape[0]
    lam = sample_lambda(n, alpha, x.device)
    perm = torch.randperm(n, device=x.device)
    return mixup_pairs(x, targets, perm, lam)


def mixup(x: Tensor, targets: Tensor, n_labeled: int, alpha: float,
          mode: str = "all") -> tuple[Tensor, Tensor]:
    """Algorithm 1 lines 10-14 (W = Shuffle(Concat(X_hat, U_hat)); X' = MixUp(X_hat, W_1..|X|),
    U' = MixUp(U_hat, W_|X|+1..)), Eq. 8-11.

    x = concat(X_hat, U_hat_1..K) [N, ...], targets [N, C]; the first n_labeled rows are
    labeled. Mixing row i of the concatenation with row perm[i] of the concatenation is the
    same as the paper's "mix with the shuffled W". Modes (official MixMode string):
    "all" ('xxy.yxy', the method), "none" ('.'), "labeled" ('xx.'), "unlabeled" ('.yy'),
    "separate" ('xx.yy'); untouched rows are returned bit-identical.
    """
    if mode not in MIXUP_MODES:
        raise ValueError(f"unknown mixup mode {mode!r}; expected one of {MIXUP_MODES}")
    if mode == "none" or alpha == 0:
        return x, targets
    targets = targets.float()
    if mode == "all":
        return _mix_block(x, targets, alpha)
    xl, tl, xu, tu = x[:n_labeled], targets[:n_labeled], x[n_labeled:], targets[n_labeled:]
    if mode in ("labeled", "separate"):
        xl, tl = _mix_block(xl, tl, alpha)
    if mode in ("unlabeled", "separate"):
        xu, tu = _mix_block(xu, tu, alpha)
    return torch.cat([xl, xu], dim=0), torch.cat([tl, tu], dim=0)


def interleave_offsets(batch: int, nu: int) -> list[int]:
    """Official libml/layers.py: nu + 1 near-equal groups; extra rows go to the last groups."""
    groups = [batch // (nu + 1)] * (nu + 1)
    for i in range(batch - sum(groups)):
        groups[-i - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    return offsets


def interleave(chunks: list[Tensor], batch: int) -> list[Tensor]:
    """Official libml/layers.py interleave (not in the paper's text; step 6 of the code):
    swap group i of chunk 0 with group i of chunk i, so chunk 0 - the only forward pass that
    updates BN running statistics - holds a representative mix of labeled and unlabeled rows.
    It is its own inverse: applying it to the logits restores the original row order.
    """
    nu = len(chunks) - 1
    offsets = interleave_offsets(batch, nu)
    sizes = [offsets[p + 1] - offsets[p] for p in range(nu + 1)]
    for c in chunks:
        if c.shape[0] != batch:
            raise ValueError(f"every chunk must have {batch} rows, got {c.shape[0]}")
    groups = [list(c.split(sizes, dim=0)) for c in chunks]
    for i in range(1, nu + 1):
        groups[0][i], groups[i][i] = groups[i][i], groups[0][i]
    return [torch.cat(g, dim=0) for g in groups]


def forward_interleaved(model: nn.Module, batches: list[Tensor], batch: int,
                        bn_mode: str) -> list[Tensor]:
    """Forward of the mixed batch [X', U'_1..K] (official mixmatch.py model(), step 6).

    "interleave" (official): interleave, forward chunk 0 normally (the only pass that updates
    BN running stats), chunks 1..K inside frozen_bn_stats, un-interleave the logits.
    "fused": one forward of the concatenation (stats updated once, from all rows).
    Returns logits per input chunk, rows aligned with the inputs.
    """
    if bn_mode == "interleave":
        mixed = interleave(batches, batch)
        logits = [model(mixed[0])]
        with frozen_bn_stats(model):
            logits += [model(b) for b in mixed[1:]]
        return interleave(logits, batch)
    if bn_mode == "fused":
        out = model(torch.cat(batches, dim=0))
        return list(out.split([b.shape[0] for b in batches], dim=0))
    raise ValueError(f"unknown bn_mode {bn_mode!r}; expected one of {BN_MODES}")


def rampup(step: int, rampup_steps: int) -> float:
    """Ramp-up factor of lambda_U in Eq. 5 (L = L_X + lambda_U L_U): linear 0 -> 1 over
    rampup_steps optimiser steps, then 1 (Sec. 4.1: "linearly ramp up ... first 16,000 steps").

    Official: clip(step_images / (warmup_kimg * 1024), 0, 1), warmup_kimg = 1024, i.e.
    16384 steps at batch 64; step and rampup_steps here are both in optimiser steps.
    """
    if rampup_steps <= 0:
        return 1.0
    return min(max(step / rampup_steps, 0.0), 1.0)

