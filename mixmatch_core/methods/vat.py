"""Virtual Adversarial Training (Miyato et al. 2018, arXiv 1704.03976), as the official vat.py
with third_party/vat_utils.py, plus its entropy minimisation.

Owns: its losses and the adversarial direction. One power iteration finds the direction that
most changes the prediction on an unlabeled image u; the model is then asked to predict the
same on u + r_adv:
    d = xi * normalize(N(0, 1));  g = grad_d KL(p(u) || p(u + d));  r_adv = vat_eps * normalize(g)
    L = xent(labeled) + vat_weight * warmup(t) * KL(p(u + r_adv) || p(u))
        + entmin_weight * H(p(u))
Official code vs. the paper: `normalize` divides by the max-abs value and then by
sqrt(1e-6 + squared L2 norm) per image; the final KL is taken as KL(student || teacher)
(layers.kl_divergence_from_logits(logits_student, logits_teacher)), the reverse of the
paper's KL(p(u) || p(u + r)); the entropy term (VAT+EntMin) is not warmed up and its gradient
flows through the clean unlabeled logits; the teacher p(u) carries no gradient in the VAT term.
All unlabeled passes run in training mode (batch statistics); only the labeled pass updates
the running statistics. `smoothing` is accepted but unused by vat.py.

Precision of the probe (ours, not in the official code, which ran fp32 under TF1 without TF32):
the probe d has L2 norm xi = 1e-6 after the max-abs then L2 normalisation, about 2e-8 per
pixel of a 32x32x3 image. Under bf16 autocast (8 mantissa bits) or TF32 convolutions/matmuls
(10 bits, PyTorch's default for cuDNN convolutions on Ampere/Hopper), the first layer reads
u + d as u: the probe's forward equals the clean one, the KL's gradient is zero or rounding
noise, and VAT silently becomes entropy minimisation plus a random eps-sized perturbation. So
the clean pass that the probe is compared with and the probe's forward and backward run in
strict fp32 (precision.strict_fp32: autocast off, TF32 off for cuDNN and matmul), for that region
only; the adversarial pass and the labeled pass keep the run's precision (r_adv has norm
vat_eps = 6, far above any rounding). `power_iteration` is the raw math in the ambient
precision (for benchmarks comparing the two).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..precision import strict_fp32
from ..views import Unlabeled, Views
from .common import consistency_warmup, frozen_bn_stats, xent


def views(cfg) -> Views:
    return Views(weak=1)   # libml/data.py: one augmentation per unlabeled image


def unlabeled_weight(cfg, step: int) -> float:
    return cfg.vat_weight * consistency_warmup(step, cfg.steps, cfg.warmup_pos)


def normalize(d: Tensor) -> Tensor:
    """vat_utils.get_normalized_vector: per row, divide by 1e-12 + max|d|, then by
    sqrt(1e-6 + sum d^2) (the first step keeps the squares from underflowing)."""
    dims = tuple(range(1, d.dim()))
    d = d / (1e-12 + d.abs().amax(dim=dims, keepdim=True))
    return d / torch.sqrt(1e-6 + d.square().sum(dim=dims, keepdim=True))


def at_least_fp32(t: Tensor) -> Tensor:
    """`t` in fp32, or in its own dtype if wider (float64 in tests)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def kl_from_logits(a: Tensor, b: Tensor) -> Tensor:
    """KL(Cat(softmax a) || Cat(softmax b)) per row, in nats, in fp32 at least (bf16 logits
    under autocast are promoted)."""
    la, lb = F.log_softmax(at_least_fp32(a), dim=-1), F.log_softmax(at_least_fp32(b), dim=-1)
    return (la.exp() * (la - lb)).sum(dim=-1)


def power_iteration(forward, u: Tensor, logits_u: Tensor, eps: float, xi: float) -> Tensor:
    """vat_utils.generate_perturbation: one power iteration from a Gaussian probe of norm xi, in
    whatever precision is ambient. `logits_u` is the clean prediction (no gradient needed); the
    gradient is taken with respect to the probe only, so the model's parameters receive nothing
    from this pass."""
    d = (xi * normalize(torch.randn_like(u))).requires_grad_(True)
    dist = kl_from_logits(logits_u.detach(), forward(u + d)).mean()
    (grad,) = torch.autograd.grad(dist, [d])
    return eps * normalize(grad.detach())


def adversarial_perturbation(forward, u: Tensor, logits_u: Tensor, eps: float, xi: float) -> Tensor:
    """`power_iteration` in strict fp32 (module docstring: the probe vanishes in bf16 or TF32).
    `logits_u` must come from a strict-fp32 pass too: the KL's gradient at d is the difference of
    the two predictions, and a clean prediction in another precision would differ from the
    probe's by its rounding, which would then drive the direction instead of the probe."""
    with strict_fp32():
        return power_iteration(forward, at_least_fp32(u), at_least_fp32(logits_u), eps, xi)


def entropy(logits: Tensor) -> Tensor:
    """Mean entropy of softmax(logits) over rows, in nats."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def losses(cfg, model, ema_model, x, y, u: Unlabeled, w: float):
    logits_x = model(x)                         # the one pass that updates BN statistics
    u = u.weak[0]                               # the one weak view
    with frozen_bn_stats(model):
        with strict_fp32():                     # the probe's reference: same precision as the probe
            logits_u = model(at_least_fp32(u))
        r_adv = adversarial_perturbation(model, u, logits_u, cfg.vat_eps, cfg.vat_xi)
        logits_adv = model(u + r_adv)
    lx = xent(logits_x, y)
    lu = kl_from_logits(logits_adv, logits_u.detach()).mean()
    return lx + w * lu + cfg.entmin_weight * entropy(logits_u), lx, lu
