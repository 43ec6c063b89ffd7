"""The strong augmentations a run may name, and the checks of their settings (torch-free).

Owns: the allowed names of the `augment` field (`STRONG_AUGMENTATIONS`), the CTAugment
defaults (cta/lib/train.py flags) and `strong_augment_error`, which config validation calls:
one line naming the field and the allowed values, as every bad user input. It imports neither
torch (a relaunch validates configs without it) nor mixmatch_core.config (which can import it
without a cycle). The implementations are ctaugment.py and randaugment.py.
"""

from __future__ import annotations

STRONG_AUGMENTATIONS = ("ctaugment", "randaugment")
CTA_DEPTH = 2         # ops per image (cta/lib/train.py flag; the class default is 2 too)
CTA_THRESHOLD = 0.80  # bins with normalised p below it are not drawn (the class default is 0.85)
CTA_DECAY = 0.99      # EMA decay of each bin's rate per update


def strong_augment_error(augment: str | None = None, cta_depth: int | None = None,
                         cta_threshold: float | None = None, cta_decay: float | None = None) -> str | None:
    """The one-line message for the first bad setting, or None when all are allowed: augment
    one of STRONG_AUGMENTATIONS, cta_depth an integer >= 1, cta_threshold in [0, 1), cta_decay
    in (0, 1). A setting given as None (a method that does not own it) is not checked.
    Config validation raises ConfigError with it."""
    if augment is not None and augment not in STRONG_AUGMENTATIONS:
        return f"augment: '{augment}' is not one of {', '.join(STRONG_AUGMENTATIONS)}"
    if cta_depth is not None and (isinstance(cta_depth, bool) or not isinstance(cta_depth, int) or cta_depth < 1):
        return f"cta_depth: must be an integer >= 1 (ops per image), got {cta_depth!r}"
    if cta_threshold is not None and not 0 <= cta_threshold < 1:
        return f"cta_threshold: must be in [0, 1), got {cta_threshold!r}"
    if cta_decay is not None and not 0 < cta_decay < 1:
        return f"cta_decay: must be in (0, 1), got {cta_decay!r}"
    return None
