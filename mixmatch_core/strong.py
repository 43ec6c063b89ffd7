"""The run's strong augmentation, built from its config: CTAugment or RandAugment, then Cutout
where the method's official file appends it.

Owns: `StrongAugment` (applies the strong augmentation to weakly augmented uint8 NHWC batches,
draws CTAugment's probe, learns CTAugment's rates from the probe's scores, and carries that
state through checkpoints) and `build(cfg, views, device)`. The ops and the policies are
ctaugment.py's, randaugment.py's and image_ops.py's; this file only chooses and composes them.

Official compositions:
- fixmatch.py (AugmentPoolCTACutOut): strong = CTAugment's train policy + OP('cutout', (1,)),
  i.e. CTAugment then a cutout of level 1; the labeled batch stays weak; probe.
- cta/cta_remixmatch.py (AugmentPoolCTA): strong = CTAugment's train policy, no cutout; the
  labeled batch is strongly augmented too; probe.
- ablation/ab_fixmatch_ra.py (--augment d.d.rac: AugmentPoolRAMC): RandAugment then a 16 x 16
  Cutout; no probe, no state.
- ablation/ab_fixmatch_onlycutout.py: the strong view is only FixMatch's cutout (its probe and
  rates are still computed there, but nothing reads them: here augment=none draws no probe).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import ctaugment, randaugment
from .ctaugment import CTAugment, Policy, proximity
from .views import Views


class StrongAugment:
    """The strong augmentation of one run: `kind` ctaugment (`cta` learned from the probe),
    randaugment (nothing learned) or none (only Cutout, or nothing)."""

    def __init__(self, kind: str, cutout: bool, cta: CTAugment | None = None):
        self.kind, self.cutout, self.cta = kind, cutout, cta

    def __call__(self, x: Tensor) -> Tensor:
        """uint8 NHWC -> uint8 NHWC, each image with its own ops and levels."""
        if self.cta is not None:
            return self.cta.apply(x, self.cta.policy(x.shape[0], probe=False), cutout=self.cutout)
        if self.kind == "randaugment":
            return randaugment.randaugment(x, cutout_size=randaugment.CUTOUT_SIZE if self.cutout else 0)
        if self.cutout:     # fixmatch.py's OP('cutout', (1,)) alone: 16 x 16 gray at 32 px
            return ctaugment.cutout(x, torch.ones(x.shape[0], ctaugment.MAX_ARGS, device=x.device))
        return x

    def probe(self, x: Tensor) -> tuple[Tensor, Policy]:
        """CTAugment's probe: each image under a uniformly drawn policy; (images, policy)."""
        policy = self.cta.policy(x.shape[0], probe=True)
        return self.cta.apply(x, policy, cutout=False), policy

    def learn(self, policy: Policy, probs: Tensor, labels: Tensor) -> None:
        """update_rates with each probe image's proximity, in batch order (device only)."""
        self.cta.update_rates(policy, proximity(probs, labels))

    def state_dict(self) -> dict:
        return self.cta.state_dict() if self.cta is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.cta is not None:
            self.cta.load_state_dict(state)

    def stats(self) -> str | None:
        """CTAugment's rates as the official stats() prints them (a host read: evaluation only)."""
        return self.cta.stats() if self.cta is not None else None


def build(cfg, views: Views, device: torch.device) -> StrongAugment | None:
    """The strong augmentation `views` needs, from the method's knobs (None when it needs none).
    ReMixMatch's CTAugment is its own repository's (its policy draws between bins, and its
    rescale crops nothing); every other method's is fixmatch's libml/ctaugment.py."""
    if not views.needs_strong:
        return None
    if cfg.augment == "ctaugment":
        variant = "remixmatch" if cfg.method == "remixmatch" else "fixmatch"
        cta = CTAugment(cfg.cta_depth, cfg.cta_threshold, cfg.cta_decay, device=device, variant=variant)
        return StrongAugment("ctaugment", bool(cfg.cutout), cta)
    return StrongAugment(cfg.augment, bool(cfg.cutout))
