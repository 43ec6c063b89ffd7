"""ReMixMatch (Berthelot et al. 2020, arXiv 1911.09785) as the official code computes it:
google-research/remixmatch cta/cta_remixmatch.py, whose model is remixmatch_no_cta.py's.

Owns: ReMixMatch's pure pieces (distribution alignment with its two running averages,
label guessing per `redux`, the rotation of the first strong view and its 4-way head, the
forward of the mixed batch where only the last interleaved pass updates BN statistics) and
the wiring of one step's losses:

    L = xe(X') + r(t) w_kl xe(guess, u_1) + r(t) w_match xe|L2(U') + w_rot xe(rot(u_1))

u_0 is the anchor (the weak view, y_in[:, 0]), u_1..u_K the strong views (y_in[:, 1:]),
r(t) the warm-up clip(step / rampup_steps, 0, 1) (official warmup_kimg, 1024 kimg = 16384
steps at batch 64), X' and U' the MixUp of [x, u_0, ..., u_K] with their targets (MixMode
'xxy.yxy': every row may mix with any row). What the official code does, and we with it:
- guess_label (remixmatch_no_cta.py 36-60): the probabilities per `redux` - '1st' (the
  default of cta_remixmatch.py line 72): softmax of the anchor only, tiled K + 1 times; 'swap'
  (remixmatch_no_cta.py's default): view i gets view i+1's softmax, the last the anchor's;
  'mean': the mean over the K + 1 views - then, with use_dm, times (1e-6 + p_data) /
  (1e-6 + p_model) and renormalised, then sharpened with T. One target per row, no gradient.
- p_model (layers.PMovingAverage): a buffer of the last `dbuf` batch means of those
  probabilities (not an EMA), starting uniform; read as its mean, renormalised.
- p_data (layers.PData): for our datasets neither p_unlabeled (a flag no run script sets) nor
  p_labeled (never set by data.py) exists, so it is the EMA (decay 0.999) of the labeled
  batches' one-hot label means, starting uniform. Both update after the step's losses, as the
  official post_ops after train_op: this step's guess reads the values of before.
- the "KL" loss is the cross-entropy of the anchor's target against the first strong view's
  logits (the pass that gets its gradient); w_kl and w_match ramp, w_rot does not.
- the rotation loss: random_rotate's fixed quarters of the first strong view (0, 180 degrees,
  transpose-then-flip-H = 90 ccw, transpose-then-flip-W = 90 cw, labels 0, 1, 2, 3 in that
  order), through the trunk's embeddings and `classify_rot`, a dense 4-way head with bias
  (Glorot-normal kernel). Its variables sit under `classify_rot`, which
  `model_vars('classify')` matches as a regex prefix: its kernel is weight-decayed, as
  train.decay_params decays every nn.Linear kernel here.
- batch norm: every pass but the last interleaved one has its UPDATE_OPS in skip_ops; only
  the last of the K + 2 interleaved mixed passes updates running statistics (MixMatch: the
  first).
- the optimiser: TF Adam with a constant lr, decoupled wd after the step (`wd *= lr`,
  kernels *= 1 - wd): the trainer's default for a method without optimizer knobs.
  (fixmatch's copy of remixmatch_no_cta.py uses Momentum + cosine lr + coupled l2 instead.)
Nothing here knows about optimisers, data sets or logging; the rules of methods/common.py
hold (no host sync, autocast-safe: softmax and losses in fp32).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import TRUNCATED_NORMAL_STD
from ..views import Unlabeled, Views
from .common import frozen_bn_stats, soft_xent, squared_prob_error, xent
from .mixmatch import interleave, mixup, rampup

REDUX = ("1st", "swap", "mean")
ANCHOR_VIEWS = ("weak", "strong")
N_ROTATIONS = 4          # classify_rot: tf.layers.dense(embeds, 4)
PDATA_DECAY = 0.999      # layers.PData.update(entry, decay=0.999)
DM_EPS = 1e-6            # guess_label: (1e-6 + p_data) / (1e-6 + p_model)


def views(cfg) -> Views:
    """cta_remixmatch.py (AugmentPoolCTA): the labeled batch strongly augmented, u_0 weak, u_1..u_K
    strong, CTAugment's probe. augment=none without Cutout is ab_remixmatch.py's 'd.d.d' without
    CTA: every view weak (and drawn as such). anchor_view=strong is ab_cta_remixmatch_noweak.py."""
    if cfg.augment == "none" and not cfg.cutout:
        return Views(weak=cfg.K + 1)
    cta = cfg.augment == "ctaugment"
    labeled = "strong" if cta else "weak"
    if cfg.anchor_view == "strong":
        return Views(strong=cfg.K + 1, labeled=labeled, probe=cta)
    return Views(weak=1, strong=cfg.K, labeled=labeled, probe=cta)


def unlabeled_weight(cfg, step: int) -> float:
    """The warm-up factor r(t) shared by w_match and w_kl (official: both multiplied by
    clip(step / (warmup_kimg << 10), 0, 1)); the weights themselves are applied in `losses`."""
    return rampup(step, cfg.rampup_steps)


def extend_model(cfg, model: nn.Module, data=None) -> None:
    """The rotation head (only when w_rot > 0, as the official graph builds it) and the two
    distribution buffers, registered on the model: trained, EMA-averaged, weight-decayed (the
    head's kernel), checkpointed and resumed with it. Initial values as the official variables:
    glorot_normal kernel (TF's truncated normal), zero bias, p_model and p_data uniform."""
    n_classes, width = model.fc.out_features, model.fc.in_features
    if cfg.w_rot > 0:
        model.rot_head = nn.Linear(width, N_ROTATIONS)
        std = math.sqrt(2.0 / (width + N_ROTATIONS)) / TRUNCATED_NORMAL_STD
        nn.init.trunc_normal_(model.rot_head.weight, 0.0, std, -2.0 * std, 2.0 * std)
        nn.init.zeros_(model.rot_head.bias)
    model.register_buffer("p_model", torch.full((cfg.dbuf, n_classes), 1.0 / n_classes))
    model.register_buffer("p_data", torch.full((n_classes,), 1.0 / n_classes))


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    B, n_classes = x.shape[0], model.fc.out_features
    u_views = u.weak + u.strong                      # official y_in[:, 0] (anchor), y_in[:, 1..K]
    if len(u_views) != cfg.K + 1:
        raise ValueError(f"remixmatch: K = {cfg.K} needs K + 1 unlabeled views, got {len(u_views)}")
    zero = x.new_zeros((), dtype=torch.float32)
    with frozen_bn_stats(model):                     # skip_ops: these passes' BN updates never run
        logits_kl, p_model_y = guess_passes(model, u_views, cfg.redux, cfg.w_kl > 0)
    p_target = guess_label(p_model_y, distribution(model.p_data), distribution(model.p_model), cfg.T, cfg.use_dm)
    loss_kl = soft_xent(logits_kl, p_target[:B]) if cfg.w_kl > 0 else zero
    targets = torch.cat([F.one_hot(y, n_classes).float(), p_target])
    mixed, mixed_t = mixup(torch.cat([x] + u_views), targets, B, cfg.alpha, "all")   # MixMode('xxy.yxy')
    logits = forward_last_updates_bn(model, list(mixed.split(B)), B)
    loss_x = soft_xent(logits[0], mixed_t[:B])
    logits_u, targets_u = torch.cat(logits[1:]).float(), mixed_t[B:]
    loss_u = soft_xent(logits_u, targets_u) if cfg.use_xe else squared_prob_error(logits_u, targets_u)
    with frozen_bn_stats(model):                     # last: see rotation_loss
        loss_rot = rotation_loss(model, u_views[1]) if cfg.w_rot > 0 else zero
    update_distributions(model, p_model_y, y, n_classes)
    loss = loss_x + (w * cfg.w_kl) * loss_kl + (w * cfg.w_match) * loss_u + cfg.w_rot * loss_rot
    return loss, loss_x, loss_u


def distribution(buffer: Tensor) -> Tensor:
    """PMovingAverage() and PData(): the mean over the buffer's rows (a [C] buffer is its own
    mean), renormalised to sum to 1."""
    v = buffer.mean(dim=0) if buffer.dim() == 2 else buffer
    return v / v.sum()


def guess_passes(model: nn.Module, u_views: list[Tensor], redux: str, with_kl: bool) -> tuple[Tensor | None, Tensor]:
    """remixmatch_no_cta.py lines 103-111 and guess_label's redux (36-47): the logits of the
    first strong view u_1 (with gradient, for the KL loss; None without it) and p_model_y,
    [(K + 1) B, C] fp32 without gradient, the probabilities each view's target comes from.
    '1st' forwards only u_0 (and u_1 for the KL loss); 'swap' and 'mean' every view. The
    caller holds frozen_bn_stats: none of these passes updates BN statistics."""
    n = len(u_views)
    logits_kl = model(u_views[1]) if with_kl else None
    with torch.no_grad():
        if redux == "1st":
            return logits_kl, torch.softmax(model(u_views[0]).float(), dim=-1).repeat(n, 1)
        if redux not in REDUX:
            raise ValueError(f"redux: '{redux}' is not one of {', '.join(REDUX)}")
        probs = [torch.softmax((logits_kl.detach() if i == 1 and with_kl else model(v)).float(), dim=-1)
                 for i, v in enumerate(u_views)]
        if redux == "swap":                          # logits_y[1:] + logits_y[:1]
            return logits_kl, torch.cat(probs[1:] + probs[:1])
        return logits_kl, (sum(probs) / n).repeat(n, 1)


@torch.no_grad()
def guess_label(p_model_y: Tensor, p_data: Tensor, p_model: Tensor, T: float, use_dm: bool) -> Tensor:
    """guess_label lines 49-59 (distribution alignment, Eq. 2 of the paper, then sharpening):
    p = p_model_y (1e-6 + p_data) / (1e-6 + p_model), renormalised per row (use_dm), then
    p^(1/T) renormalised. [N, C] fp32, no gradient (official tf.stop_gradient)."""
    p = p_model_y.float()
    if use_dm:
        p = p * ((DM_EPS + p_data) / (DM_EPS + p_model))
        p = p / p.sum(dim=1, keepdim=True)
    p = p.pow(1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


@torch.no_grad()
def update_distributions(model: nn.Module, p_model_y: Tensor, y: Tensor, n_classes: int) -> None:
    """The official post_ops, in place on the model's buffers: p_model drops its oldest row
    and appends the mean of p_model_y (PMovingAverage.update); p_data <- 0.999 p_data + 0.001
    mean(one_hot(y)) (PData.update, the labeled batch's labels)."""
    model.p_model.copy_(torch.cat([model.p_model[1:], p_model_y.float().mean(dim=0, keepdim=True)]))
    entry = F.one_hot(y, n_classes).float().mean(dim=0)
    model.p_data.copy_(model.p_data * PDATA_DECAY + entry * (1 - PDATA_DECAY))


def rotate_quarters(x: Tensor) -> tuple[Tensor, Tensor]:
    """random_rotate (remixmatch_no_cta.py 79-84) on NCHW images: with b4 = B // 4, rows
    [0, b4) unrotated, [b4, 2 b4) flipped in H and W (180 degrees), and of the transposed
    (H <-> W) rest, the first b4 flipped in H (90 ccw), the others flipped in W (90 cw);
    labels 0, 1, 2, 3 per quarter. Deterministic: the rotation of a row is its position.
    Official: B must be a multiple of 4 (its labels have 4 b4 rows); here extra rows are the
    last quarter's."""
    B, b4 = x.shape[0], x.shape[0] // 4
    head, tail = x[:2 * b4], x[2 * b4:].transpose(2, 3)
    rotated = torch.cat([head[:b4], head[b4:].flip(2, 3), tail[:b4].flip(2), tail[b4:].flip(3)])
    labels = torch.arange(N_ROTATIONS, device=x.device).repeat_interleave(b4)
    labels = torch.cat([labels, labels.new_full((B - 4 * b4,), N_ROTATIONS - 1)])
    return rotated, labels


def rotation_loss(model: nn.Module, u1: Tensor) -> Tensor:
    """Lines 93-98: mean cross-entropy of rot_head(embed(rotated u_1)) against the rotation
    labels, in training mode (the caller freezes BN statistics).

    `model.embed` is never compiled (torch.compile wraps forward only), and an eager training-
    mode BN node saves the running statistics for its backward, which a later compiled pass's
    write-back of its own statistics (a versioned copy_) would invalidate. So `losses` runs this
    pass after every other one; the order changes no number (training-mode BN reads batch
    statistics, and only the last mixed pass's updates are kept)."""
    rotated, labels = rotate_quarters(u1)
    return xent(model.rot_head(model.embed(rotated)), labels)


def forward_last_updates_bn(model: nn.Module, batches: list[Tensor], batch: int) -> list[Tensor]:
    """Lines 129-136: interleave the K + 2 mixed chunks, forward them, un-interleave the logits.
    Only the last pass updates BN running statistics (post_ops = its UPDATE_OPS only); the
    others run inside frozen_bn_stats. Returns logits per input chunk, rows aligned."""
    mixed = interleave(batches, batch)
    with frozen_bn_stats(model):
        logits = [model(b) for b in mixed[:-1]]
    logits.append(model(mixed[-1]))
    return interleave(logits, batch)
