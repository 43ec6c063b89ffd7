"""Small pieces the baselines share (pure functions, no data, no optimiser).

Owns: the baselines' consistency warm-up (official `warmup_pos`), the official MixUp partner
of ict.py, mixup.py and fs_mixup.py (the batch reversed), and cross-entropy against integer
labels. The MixMatch pieces they also use (MixUp of pairs, the folded Beta draw, the squared
error of probabilities, the batch-norm freeze) live in mixmatch_core/mixmatch.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
