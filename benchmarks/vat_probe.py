"""The VAT probe: how much the adversarial direction r_adv moves when the power iteration runs in
reduced precision (TF32 convolutions, bf16 autocast) instead of strict fp32.

Owns: one r_adv per precision setting from the same model, batch and Gaussian probe, and their
comparison per image (cosine similarity, norm ratio). Used by benchmarks/gpu_check.py.

Why it matters: VAT's probe has norm xi = 1e-6 over a whole image (about 2e-8 per pixel), far
below the resolution of TF32 (10-bit mantissa) or bf16 (7-bit) inputs to a convolution; there
u + d rounds to u, the KL's gradient at its minimum is zero or noise, and r_adv loses its direction
(cosine near 0) or vanishes (norm ratio 0). mixmatch_core.methods.vat exposes (since the VAT fix)
`power_iteration(forward, u, logits_u, eps, xi)` (the raw math in the ambient precision) and
`adversarial_perturbation(...)` (the same inside a strict-fp32 guard). Before that change only
`adversarial_perturbation` existed, unguarded; the probe then uses it as the raw math and says so.

The raw rows compute the clean logits `logits_u` in their own setting (the power iteration as it
ran before the fix); the guarded row computes them in strict fp32 and calls the guarded function
in bf16 autocast over the TF32 defaults, exactly as methods/vat.py's losses does. The clean logits
must come from the probe's precision: the KL's gradient at d = 0 is J^T (p(u) - p_clean), and a
bf16 error in p_clean is a first-order term that swamps the second-order one (|d| = 1e-6) (on
CPU, a guard fed bf16 clean logits gave a cosine of -0.49 for one image).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from mixmatch_core.methods.common import frozen_bn_stats
from mixmatch_core.precision import strict_fp32


def strict(device_type: str):
    """Plain fp32 (mixmatch_core.precision.strict_fp32: autocast off on every device, TF32 off),
    as a setting of `perturbation`."""
    return strict_fp32()


def bf16_autocast(device_type: str):
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def ambient(device_type: str):
    """PyTorch's defaults as shipped: on CUDA cuDNN convolutions may use TF32, matmuls do not."""
    return contextlib.nullcontext()


def perturbation(fn, model, u: Tensor, eps: float, xi: float, seed: int, setting, clean_setting=None) -> Tensor:
    """r_adv = fn(model, u, logits_u, eps, xi) in `setting`, as methods/vat.py's losses call it:
    training mode with BN statistics left as they were, the clean logits computed in
    `clean_setting` (default: `setting`), and the Gaussian probe from `seed` (the same d in every
    setting). Returns fp32 [B, C, H, W]."""
    with frozen_bn_stats(model):
        with (clean_setting or setting)(u.device.type):
            logits_u = model(u)
        with setting(u.device.type):
            torch.manual_seed(seed)
            return fn(model, u, logits_u, eps, xi).detach().float()


def compare(r: Tensor, ref: Tensor) -> dict[str, float]:
    """Per image: cosine similarity of r with ref, and |r| / |ref|; mean and extremes over the batch."""
    r, ref = r.flatten(1).double(), ref.flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(r, ref, dim=1, eps=1e-30)
    ratio = r.norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)
    return {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(), "norm_ratio_mean": ratio.mean().item(),
            "norm_ratio_min": ratio.min().item(), "norm_ratio_max": ratio.max().item()}


def probe_rows(model, u: Tensor, eps: float, xi: float, seed: int = 0) -> tuple[list[dict], str | None]:
    """Each reduced-precision setting against the raw math in strict fp32 (rows: name, setting and
    comparison), and a note when methods/vat.py has no `power_iteration` yet."""
    from mixmatch_core import methods
    vat = methods.load("vat")
    raw = getattr(vat, "power_iteration", None)
    note = None if raw else ("mixmatch_core.methods.vat has no power_iteration yet: the raw probe is "
                             "adversarial_perturbation (unguarded today); no guarded row")
    raw = raw or vat.adversarial_perturbation
    ref = perturbation(raw, model, u, eps, xi, seed, strict)
    cases = [("raw", "TF32 defaults", raw, ambient, None), ("raw", "bf16 autocast", raw, bf16_autocast, None)]
    if note is None:      # as vat.losses calls it: clean logits in strict fp32, the rest in the run's precision
        cases.append(("guarded", "TF32 defaults + bf16 autocast", vat.adversarial_perturbation, bf16_autocast,
                      strict))
    rows = [{"function": f, "setting": s, "clean_logits": "strict fp32" if clean else s, "vs": "raw, strict fp32",
             **compare(perturbation(fn, model, u, eps, xi, seed, ctx, clean), ref)} for f, s, fn, ctx, clean in cases]
    return rows, note
