"""The GPU check's own data: scikit-learn's embedded digits upscaled to 32x32 RGB (no download,
no ../shared), as the trainer's Dataset and as an npz file the trainer's workers read.

Owns only that data; benchmarks/gpu_check.py and gpu_sections.py both use it.
"""

from __future__ import annotations

from pathlib import Path


def digits32(n_train: int | None = None):
    """scikit-learn's embedded digits (8x8, 1297 train / 500 test) upscaled to 32x32 RGB uint8
    (bilinear), as the trainer's Dataset with shift-only augmentation (digits are not
    mirror-symmetric)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mixmatch_core.augment import AugmentSpec
    from mixmatch_core.data import Dataset, load_dataset
    ds = load_dataset("digits", "data")

    def up(x):
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).round().clamp(0, 255)
        return np.ascontiguousarray(t.to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy())
    x_train, y_train = ds.x_train[:n_train], ds.y_train[:n_train]
    return Dataset("digits32", up(x_train), y_train, up(ds.x_test), ds.y_test, 10, AugmentSpec(flip=False, pad=4))


def write_digits32(path: Path) -> Path:
    import numpy as np
    ds = digits32()
    np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    return path
