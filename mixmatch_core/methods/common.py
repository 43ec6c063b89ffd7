"""The tensor ops several methods share (pure functions: no data, no optimiser, no logging).

Owns: the batch-norm freeze of the extra training-mode passes, MixUp's folded Beta draw and
the mixing of row pairs, the losses against soft targets (cross-entropy, squared error of
probabilities) and integer labels, the baselines' consistency warm-up (official
`warmup_pos`) and the official MixUp partner of ict.py, mixup.py and fs_mixup.py (the batch
reversed). MixMatch's own pieces (sharpening, label guessing, its MixUp modes, the
interleave, its ramp-up) live in methods/mixmatch.py.

Rules every function keeps: runs on any device with no host-device sync (no .item(), no
Python branching on tensor values; randomness from the global torch RNG, so the trainer's
seeding and RNG checkpoints cover it) and works under torch.autocast(bf16) (softmax and
losses in fp32). Where the paper's text and the official code differ, the code is followed
and the docstring says so.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def consistency_warmup(step: int, steps: int, warmup_pos: float) -> float:
    """Official baselines: clip(step / (warmup_pos * train_kimg), 0, 1), a linear ramp over the
    first `warmup_pos` fraction of the run (0.4: the first 40% of its steps). A host float."""
    if warmup_pos <= 0:
        return 1.0
    return min(max(step / (warmup_pos * steps), 0.0), 1.0)


def reversed_index(n: int, device: torch.device) -> Tensor:
    """Official ict.py / mixup.py partner `x[::-1]`: row i is mixed with row n - 1 - i (the
    ICT and MixUp papers draw a random partner; the code that made Table 5 reverses)."""
    return torch.arange(n - 1, -1, -1, device=device)


def mixup_xent(logits: Tensor, y: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Mean cross-entropy against mixed one-hot labels lam_i e_y[i] + (1 - lam_i) e_y[perm[i]]
    (official: softmax cross-entropy with the mixed labels), written as the lam-weighted sum of
    the two cross-entropies it equals, so no class count is needed."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll, nll_partner = -logp.gather(1, y[:, None])[:, 0], -logp.gather(1, y[perm][:, None])[:, 0]
    return (lam * nll + (1 - lam) * nll_partner).mean()


def xent(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy with integer labels, in fp32 (official
    softmax_cross_entropy_with_logits_v2 on one-hot labels, no smoothing)."""
    return F.cross_entropy(logits.float(), y)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Forward passes inside use batch statistics but leave BN running statistics unchanged.

    Official code: the extra training-mode passes (label guessing, interleaved chunks 1..K)
    build BN update ops that are never run; here they run and are undone on exit.
    """
    saved = [(buf, buf.detach().clone())
             for m in model.modules() if isinstance(m, _BatchNorm)
             for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
             if buf is not None]
    try:
        yield model
    finally:
        # In place, so outside references to a buffer stay valid. Through .data: the training-
        # mode BN nodes of the passes inside saved these buffers (though their backward reads
        # only the batch statistics), and a version-counted copy_ would make backward raise.
        for buf, value in saved:
            buf.data.copy_(value)


def sample_lambda(n: int, alpha: float, device: torch.device | str | None = None) -> Tensor:
    """Eq. 8-9: lambda ~ Beta(alpha, alpha), lambda' = max(lambda, 1 - lambda); shape [n], fp32.

    Official code: one lambda per sample (the paper's text reads as one per batch).
    alpha == 0 means "no mixing": lambda' = 1 without sampling the degenerate Beta(0, 0).
    """
    if alpha == 0:  # alpha is a host float: no sync
        return torch.ones(n, device=device)
    a = torch.full((), float(alpha), device=device)  # parameters on the device: sample there
    lam = torch.distributions.Beta(a, a, validate_args=False).sample((n,))  # no validation sync
    return torch.maximum(lam, 1.0 - lam)


def mix_rows(t: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    """Eq. 10 for one tensor: t'_i = lam_i t_i + (1 - lam_i) t_perm[i], lam broadcast over the
    trailing dims (C, or C, H, W), in t's dtype (integer targets are made fp32 first)."""
    if not t.is_floating_point():
        t = t.float()
    lam_t = lam.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))
    return lam_t * t + (1 - lam_t) * t[perm]


def mixup_pairs(x: Tensor, targets: Tensor, perm: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 10-11 with a given partner index and weights, applied identically to both:
    x'_i = lam_i x_i + (1 - lam_i) x_perm[i],  p'_i = lam_i p_i + (1 - lam_i) p_perm[i].

    x: [N, ...] inputs, targets: [N, C] probabilities, perm: [N] long, lam: [N] (>= 0.5).
    """
    lam = lam.float()
    return mix_rows(x, perm, lam), mix_rows(targets.float(), perm, lam)


def soft_xent(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy against soft targets (MixMatch Eq. 3, L_X; MixUp's mixed labels): mean of H(p, p_model) = -sum_c p_c log softmax(logits)_c (nats)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * logp).sum(dim=-1).mean()


def squared_prob_error(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows AND classes of (target - softmax(logits))^2 (MixMatch Eq. 4, L_U; the
    consistency loss of Pi-Model, Mean Teacher and ICT).

    The paper writes 1/(L|U'|) * sum ||q - p||^2; the official code's reduce_mean over rows
    and classes is the same thing, and lambda_u = 75 assumes this normalisation.
    """
    return (targets.float() - torch.softmax(logits.float(), dim=-1)).square().mean()
