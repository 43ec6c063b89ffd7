"""Named views: what a method asks of the data each step, and what its losses receive.

Owns: `Views`, a method's request (declared by `views(cfg)` in methods/<name>.py): how the
labeled batch is augmented, how many weak and strong views of the unlabeled batch it needs, the
unlabeled batch's size relative to the labeled one, and whether CTAugment's probe batch is
drawn; and `Unlabeled`, the drawn views handed to the method's `losses` by name.

The views, as the official code builds them (libml/augment.py, fixmatch.py):
- weak: the dataset's flip-and-shift (mixmatch_core/augment.py), drawn independently per view;
- strong: an independent weak view, then the run's strong augmentation (CTAugment or
  RandAugment, then Cutout where the method's file appends it; mixmatch_core/strong.py). The
  official pools apply the strong policy to images that the TF pipeline already flipped and
  shifted, once per view;
- the probe (CTAugment only): the weakly augmented labeled images under a uniform policy,
  scored by the EMA model to update CTAugment's rates (cta/lib/train.py).

The order of the draws is fixed (labeled batch, then the unlabeled indices, the weak views, the
strong views, then the probe), so a MixMatch step draws exactly what it drew before named views
existed, and its runs stay bit-identical (tests/test_identity.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LABELED_VIEWS = ("weak", "strong")


@dataclass(frozen=True)
class Views:
    """A method's request for one step. All counts are views, not images."""
    weak: int = 0             # unlabeled views under flip-and-shift (MixMatch: K)
    strong: int = 0           # unlabeled views under flip-and-shift + the strong augmentation
    uratio: int = 1           # unlabeled images per labeled image (FixMatch: 7)
    labeled: str = "weak"     # the labeled batch's augmentation: weak | strong (ReMixMatch with CTAugment)
    probe: bool = False       # draw CTAugment's probe of the labeled batch

    def __post_init__(self) -> None:
        if self.labeled not in LABELED_VIEWS:
            raise ValueError(f"Views.labeled: '{self.labeled}' is not one of {', '.join(LABELED_VIEWS)}")
        if min(self.weak, self.strong) < 0 or self.uratio < 1:
            raise ValueError(f"Views: counts must be >= 0 and uratio >= 1, got {self}")

    @property
    def n_unlabeled(self) -> int:
        """Unlabeled views per step (0: the method trains on the labeled batch only)."""
        return self.weak + self.strong

    @property
    def needs_strong(self) -> bool:
        return self.strong > 0 or self.labeled == "strong" or self.probe


@dataclass
class Unlabeled:
    """The unlabeled views of one step, as float tensors [uratio * B, C, H, W] in [-1, 1]: the
    same images in every view, each view augmented independently."""
    weak: list[Any] = field(default_factory=list)
    strong: list[Any] = field(default_factory=list)


@dataclass
class Probe:
    """CTAugment's probe of one step: the labeled images under uniform policies (float, as the
    model reads them), their labels and the policies drawn (the device tensors the rates update
    reads)."""
    x: Any
    y: Any
    policy: Any
