"""RandAugment + Cutout as FixMatch's RA ablation draws and applies it, on the device, per image.

Owns: the op list, the per-image draws (`RandPolicy`, `policy`) and their application with the
final Cutout (`apply`, `randaugment`).

Official semantics (google-research/fixmatch): ablation/ab_fixmatch_ra.py trains with
--augment d.d.rac, which libml/augment.py maps to AugmentPoolRAMC(nops=2, magnitude=10): per
image the policy [(op, 0.5, np.random.randint(1, 10)) for op in np.random.choice(
RANDOM_POLICY_OPS, 2)] (two ops drawn with replacement from 14, each applied with probability
1/2, each with its own magnitude in 1..9), applied by third_party/auto_augment/augmentations.py
`apply_policy` to the weak (flipped and shifted) view, then `cutout_numpy` (a 16 x 16 square,
centre uniform, clipped) on the result. Details kept from that code:
- `pil_wrap` converts the [-1, 1] float image with np.uint8((x * 0.5 + 0.5) * 255), a
  truncation: 47 of the 256 values come out one lower (`WRAP_LUT`, computed in float32 as the
  official arithmetic is).
- The image is RGBA: rotate / shear / translate fill with transparent black; the ops that go
  through convert('RGB') (AutoContrast, Equalize, Posterize, Solarize) make every pixel opaque
  again, with the black fill included in their statistics; the enhance ops keep alpha.
  `pil_unwrap` sets transparent pixels to 0.0, i.e. mid gray, and so does cutout_numpy.
- Rotate, ShearX/Y and TranslateX/Y negate their magnitude with probability 1/2.
Here the alpha is a 4th channel (0 or 255) while the ops run. The one departure: mid gray is
127.5 in the official float image and 128 (`GRAY`) in our uint8 output, a 0.5-level
difference on filled pixels only (to_float maps it to +0.0039 instead of 0.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mixmatch_core import image_ops as io

# libml/augment.py RANDOM_POLICY_OPS, in its order (np.random.choice draws by position).
OP_NAMES = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Contrast",
            "Brightness", "Sharpness", "ShearX", "TranslateX", "TranslateY", "Posterize", "ShearY")
NOPS = 2             # AugmentPoolRAMC default
MAGNITUDE = 10       # np.random.randint(1, MAGNITUDE): magnitudes 1..9
PROBABILITY = 0.5    # each op is applied when random.random() < 0.5
PARAMETER_MAX = 10   # augmentations.py: level / PARAMETER_MAX scales each op's maximum
CUTOUT_SIZE = 16     # cutout_numpy(img) default size, pixels
GRAY = 128           # 0.0 in the official [-1, 1] image (127.5), rounded half to even


@dataclass(frozen=True)
class RandPolicy:
    """Per-image draws: `ops` int64 [n, nops] (positions in OP_NAMES), `magnitudes` int64
    [n, nops] in 1..MAGNITUDE - 1, `applied` bool [n, nops], `negate` bool [n, nops] (used by the
    signed ops), `cutout_centre` int64 [n, 2] (row, column)."""

    ops: Tensor
    magnitudes: Tensor
    applied: Tensor
    negate: Tensor
    cutout_centre: Tensor


def wrap_lut(device: torch.device | str = "cpu") -> Tensor:
    """uint8 [256]: v -> np.uint8((x * 0.5 + 0.5) * 255.0) with x = v * (2 / 255) - 1 in float32
    (libml/data.py's float image, then augmentations.py `pil_wrap`)."""
    x = torch.arange(256, dtype=torch.float32, device=device) * (2.0 / 255) - 1.0
    return ((x * 0.5 + 0.5) * 255.0).to(torch.uint8)


def _color(x: Tensor) -> Tensor:
    return x[..., :-1]


def _with_alpha(rgb: Tensor, alpha: Tensor) -> Tensor:
    return torch.cat([rgb, alpha], -1)


def _opaque(op: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    """An op run as op(img.convert('RGB'), m).convert('RGBA'): alpha becomes 255."""
    return lambda x, m, neg: _with_alpha(op(_color(x), m), torch.full_like(x[..., -1:], 255))


def _keeps_alpha(op: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    """An ImageEnhance op on RGBA (Pillow 13 puts the image's alpha on the degenerate)."""
    return lambda x, m, neg: _with_alpha(op(_color(x), m), x[..., -1:])


def _enhance(degenerate: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """_enhancer_impl: enhance(level * 1.8 / 10 + 0.1)."""
    return lambda x, m: io.blend(degenerate(x), x, m.double() * 1.8 / PARAMETER_MAX + 0.1)


def _signed(v: Tensor, negate: Tensor) -> Tensor:
    return torch.where(negate, -v, v)


def _affine(matrix: Callable[[Tensor], list], parameter: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """transform(size, AFFINE, matrix(+-parameter(level))) of the RGBA image: transparent fill."""
    def op(x: Tensor, m: Tensor, neg: Tensor) -> Tensor:
        v = _signed(parameter(m), neg)
        return io.affine_nearest(x, io.affine_matrix(matrix(v), v))[0]
    return op


def _shear(m: Tensor) -> Tensor:
    return m.double() * 0.3 / PARAMETER_MAX                  # float_parameter(level, 0.3)


def _translate(m: Tensor) -> Tensor:
    return (m * 10 // PARAMETER_MAX).double()                # int_parameter(level, 10): pixels


def _rotate(x: Tensor, m: Tensor, neg: Tensor) -> Tensor:
    degrees = _signed(m * 30 // PARAMETER_MAX, neg)          # int_parameter(level, 30)
    return io.affine_nearest(x, io.rotation_matrices(degrees, x.shape[2], x.shape[1], 30))[0]


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    threshold = 256 - m * 256 // PARAMETER_MAX                 # 256 - int_parameter(level, 256)
    return io.apply_lut(x, io.solarize_lut(threshold, x.shape[-1]))


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    bits = 4 - m * 4 // PARAMETER_MAX                          # 4 - int_parameter(level, 4)
    return io.apply_lut(x, io.posterize_lut(bits, x.shape[-1]))


def _lut_op(op: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, m: op(x)


# op(x RGBA uint8 [m, H, W, C + 1], magnitude int64 [m], negate bool [m]) -> RGBA, in OP_NAMES order
OPS: tuple[Callable[..., Tensor], ...] = (
    lambda x, m, neg: x,                                                      # Identity
    _opaque(_lut_op(io.autocontrast)),
    _opaque(_lut_op(io.equalize)),
    _rotate,
    _opaque(_solarize),
    _keeps_alpha(_enhance(io.color_degenerate)),                              # Color
    _keeps_alpha(_enhance(io.contrast_degenerate)),                           # Contrast
    _keeps_alpha(_enhance(torch.zeros_like)),                                 # Brightness
    _keeps_alpha(_enhance(io.smooth_filter)),                                 # Sharpness
    _affine(lambda s: [1, s, 0, 0, 1, 0], _shear),                            # ShearX
    _affine(lambda d: [1, 0, d, 0, 1, 0], _translate),                        # TranslateX
    _affine(lambda d: [1, 0, 0, 0, 1, d], _translate),                        # TranslateY
    _opaque(_posterize),
    _affine(lambda s: [1, 0, 0, s, 1, 0], _shear),                            # ShearY
)


def policy(n: int, height: int, width: int, device: torch.device | str = "cpu", nops: int = NOPS,
           magnitude: int = MAGNITUDE) -> RandPolicy:
    """n per-image draws (AugmentPoolRAMC's policy lambda, apply_policy's coin flips and sign
    flips, cutout_numpy's centre), from the global torch RNG of `device`."""
    shape = (n, nops)
    centre = torch.stack([torch.randint(0, height, (n,), device=device),
                          torch.randint(0, width, (n,), device=device)], 1)
    return RandPolicy(ops=torch.randint(0, len(OP_NAMES), shape, device=device),
                      magnitudes=torch.randint(1, magnitude, shape, device=device),
                      applied=torch.rand(shape, device=device) < PROBABILITY,
                      negate=torch.rand(shape, device=device) > 0.5,
                      cutout_centre=centre)


def apply(x: Tensor, pol: RandPolicy, cutout_size: int = CUTOUT_SIZE, by_index: bool | None = None) -> Tensor:
    """The policy's ops (those drawn to apply), then Cutout, on uint8 NHWC [n, H, W, C].
    `by_index`: io.apply_per_image's dispatch (None: by the device)."""
    identity = torch.zeros_like(pol.ops)
    y = _with_alpha(io.apply_lut(x, wrap_lut(x.device).expand(x.shape[0], x.shape[-1], 256)),
                    torch.full_like(x[..., :1], 255))
    for k in range(pol.ops.shape[1]):
        chosen = torch.where(pol.applied[:, k], pol.ops[:, k], identity[:, k])
        y = io.apply_per_image(y, chosen, OPS, pol.magnitudes[:, k], pol.negate[:, k], by_index=by_index)
    h, w = x.shape[1:3]
    size = torch.full_like(pol.cutout_centre[:, 0], cutout_size)
    # cutout_numpy: rows around height_loc, columns around width_loc
    box = io.cutout_box(pol.cutout_centre[:, 1], pol.cutout_centre[:, 0], size, w, h)
    gray = (y[..., -1] == 0) | io.box_mask(box, h, w)
    return torch.where(gray[..., None], torch.full_like(x, GRAY), _color(y))


def randaugment(x: Tensor, nops: int = NOPS, magnitude: int = MAGNITUDE, cutout_size: int = CUTOUT_SIZE) -> Tensor:
    """FixMatch's RA strong view of uint8 NHWC images: draw per image, apply, cut out."""
    return apply(x, policy(x.shape[0], x.shape[1], x.shape[2], x.device, nops, magnitude), cutout_size)
