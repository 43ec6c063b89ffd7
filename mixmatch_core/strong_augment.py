"""The strong augmentations a run may name, and the checks of their settings (torch-free).

Owns: the allowed names of the `augment` field (`STRONG_AUGMENTATIONS`), the CTAugment
defaults (cta/lib/train.py flags) and `check_strong_augment`, which config validation calls:
one line naming the field and the allowed values, as every bad user input. It imports no
torch (a relaunch validates configs without it); the implementations are ctaugment.py and
randaugment.py.
"""

from __future__ import annotations

from .config import ConfigError

STRONG_AUGMENTATIONS = ("ctaugment", "randaugment")
CTA_DEPTH = 2         # ops per image (cta/lib/train.py flag; the class default is 2 too)
CTA_THRESHOLD = 0.80  # bins with normalised p below it are not drawn (the class default is 0.85)
CTA_DECAY = 0.99      # EMA decay of each bin's rate per update


def check_strong_augment(augment: str, cta_depth: int = CTA_DEPTH, cta_threshold: float = CTA_THRESHOLD,
                         cta_decay: float = CTA_DECAY) -> None:
    """Raise ConfigError (one line: the field and what is allowed) for an unknown augmentation
    or a CTAugment setting out of range: cta_depth an integer >= 1, cta_threshold in [0, 1),
    cta_decay in (0, 1)."""
    if augment not in STRONG_AUGMENTATIONS:
        raise ConfigError(f"augment: '{augment}' is not one of {', '.join(STRONG_AUGMENTATIONS)}")
    if isinstance(cta_depth, bool) or not isinstance(cta_depth, int) or cta_depth < 1:
        raise ConfigError(f"cta_depth: must be an integer >= 1 (ops per image), got {cta_depth!r}")
    if not 0 <= cta_threshold < 1:
        raise ConfigError(f"cta_threshold: must be in [0, 1), got {cta_threshold!r}")
    if not 0 < cta_decay < 1:
        raise ConfigError(f"cta_decay: must be in (0, 1), got {cta_decay!r}")
