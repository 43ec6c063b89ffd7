"""PIL's image operations, batched on the device: uint8 NHWC in, uint8 NHWC out, one set of
parameters PER IMAGE.

Owns: the primitives the strong augmentations (CTAugment, RandAugment) are made of, each
computing what Pillow computes on the same image and parameter (checked bit for bit against
Pillow 13.0 by tests/test_strong_augment.py): `blend` (Image.blend), the lookup-table ops
(`autocontrast`, `equalize`, `posterize_lut`, `solarize_lut`, `apply_lut`: ImageOps),
`grayscale` (convert('L')) and the ImageEnhance degenerates, the 3x3 SMOOTH and 5x5 BLUR
kernel filters (Image.filter), `affine_nearest` (Image.transform / rotate with NEAREST,
including Pillow's 16.16 fixed-point coordinates), `rotation_matrices` (Image.rotate's matrix),
`rescale` (crop, then resize with each of the six resampling filters, using Pillow's
fixed-point separable kernels), `cutout_box` / `box_mask`, and the per-image dispatch
`apply_per_image`. Parameters are those PIL receives (an angle in degrees, a shear, a blend
factor), not augmentation levels: ctaugment.py and randaugment.py map their levels.

Exactness: the integer ops (LUTs, filters, resampling, fixed-point affine maps) are computed in
int32/int64 or exact float, so they match Pillow bit for bit; `blend` is float32 as Pillow's C
code, with the same truncation. Parameter arithmetic that Python/C does in double is done in
float64 here ([n] or [n, 6] tensors only).

Style (mixmatch_core/augment.py): no Python loop over images and no host sync on an
accelerator. `apply_per_image` computes an op on the images that drew it: on the CPU by
index-selecting them (a boolean mask's nonzero is free there), elsewhere by computing it on
the whole batch and selecting with torch.where (no data-dependent shapes, so no sync).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Image.resize's filters in the order libml/ctaugment.py `rescale` lists them
# (Image.ANTIALIAS is LANCZOS), with Pillow's support radii (src/libImaging/Resample.c).
RESAMPLE_METHODS = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")
_SUPPORT = {"lanczos": 3.0, "bicubic": 2.0, "bilinear": 1.0, "box": 0.5, "hamming": 1.0}
_PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2 bits of fixed-point kernel weights


# ---------------------------------------------------------------------------------- blending

def blend(a: Tensor, b: Tensor, alpha: Tensor) -> Tensor:
    """Image.blend(a, b, alpha) per image: trunc(a + alpha * (b - a)) clipped to [0, 255],
    in float32 as Pillow's C code (Blend.c; alpha is a C float; outside [0, 1] the enhance ops
    extrapolate and the result is clipped). a, b: uint8 [n, H, W, C]; alpha: [n]."""
    alpha = alpha.to(torch.float32).view(-1, 1, 1, 1)
    a32 = a.to(torch.float32)
    y = a32 + alpha * (b.to(torch.float32) - a32)
    return y.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates, as the C cast


def grayscale(x: Tensor) -> Tensor:
    """convert('L') of RGB uint8 [n, H, W, 3] -> [n, H, W, 1]: Pillow's ITU-R 601-2 luma in
    16-bit fixed point, (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 (Convert.c L24).
    A 1-channel image is already 'L'."""
    if x.shape[-1] == 1:
        return x
    c = x.to(torch.int32)  # (the weights as Python ints: a weight tensor would be a host-to-device copy)
    luma = c[..., 0:1] * 19595 + c[..., 1:2] * 38470 + c[..., 2:3] * 7471 + 0x8000
    return luma.bitwise_right_shift(16).to(torch.uint8)


# ------------------------------------------------------------------------------ lookup tables

def histogram(x: Tensor) -> Tensor:
    """Image.histogram() per image and channel: int64 [n, C, 256] pixel counts."""
    n, h, w, c = x.shape
    flat = x.permute(0, 3, 1, 2).reshape(n * c, h * w).to(torch.int64)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    return hist.view(n, c, 256)


def _first_last_present(hist: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest pixel value present, per [.., 256] histogram row."""
    present = (hist > 0).to(torch.int8)
    lo = present.argmax(-1)
    hi = 255 - present.flip(-1).argmax(-1)
    return lo, hi


def autocontrast_lut(hist: Tensor) -> Tensor:
    """ImageOps.autocontrast(image) (cutoff 0) as a per-channel LUT: int(v * scale + offset)
    clipped, scale = 255 / (hi - lo), offset = -lo * scale, in double as Python; the identity
    where a channel has one value. hist: [n, C, 256] -> uint8 LUT [n, C, 256]."""
    lo, hi = _first_last_present(hist)
    lo64, hi64 = lo.to(torch.float64)[..., None], hi.to(torch.float64)[..., None]
    # a true division: torch computes `scalar / tensor` as scalar * reciprocal(tensor)
    scale = torch.full_like(lo64, 255.0) / (hi64 - lo64).clamp(min=1)
    offset = -lo64 * scale
    v = torch.arange(256, dtype=torch.float64, device=hist.device)
    lut = (v * scale + offset).trunc().clamp(0, 255)
    lut = torch.where((hi > lo)[..., None], lut, v)
    return lut.to(torch.uint8)


def equalize_lut(hist: Tensor) -> Tensor:
    """ImageOps.equalize(image) (no mask) as a per-channel LUT, Pillow 13's rule: step =
    (pixels - count of the largest value present) // 255; lut[v] = (step // 2 + pixels below
    v) // step, clipped by Image.point; the identity where step is 0 or one value is present.
    hist: [n, C, 256] -> uint8 LUT [n, C, 256]."""
    _, hi = _first_last_present(hist)
    last_count = hist.gather(-1, hi[..., None])
    step = (hist.sum(-1, keepdim=True) - last_count) // 255
    below = hist.cumsum(-1) - hist  # pixels strictly below v
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(0, 255)
    v = torch.arange(256, dtype=torch.int64, device=hist.device)
    keep = ((hist > 0).sum(-1, keepdim=True) > 1) & (step > 0)
    return torch.where(keep, lut, v).to(torch.uint8)


def posterize_lut(bits: Tensor, channels: int) -> Tensor:
    """ImageOps.posterize(image, bits): v & ~(2 ** (8 - bits) - 1). bits: int [n] in 1..8."""
    v = torch.arange(256, dtype=torch.int64, device=bits.device)
    mask = 255 - ((1 << (8 - bits.to(torch.int64))) - 1)
    return (v & mask[:, None]).to(torch.uint8)[:, None].expand(-1, channels, -1)


def solarize_lut(threshold: Tensor, channels: int) -> Tensor:
    """ImageOps.solarize(image, threshold): v if v < threshold else 255 - v. threshold: [n]."""
    v = torch.arange(256, dtype=torch.int64, device=threshold.device)
    lut = torch.where(v < threshold.to(torch.int64)[:, None], v, 255 - v)
    return lut.to(torch.uint8)[:, None].expand(-1, channels, -1)


def autocontrast(x: Tensor) -> Tensor:
    """ImageOps.autocontrast(image) per image."""
    return apply_lut(x, autocontrast_lut(histogram(x)))


def equalize(x: Tensor) -> Tensor:
    """ImageOps.equalize(image) per image."""
    return apply_lut(x, equalize_lut(histogram(x)))


def color_degenerate(x: Tensor) -> Tensor:
    """ImageEnhance.Color's degenerate: convert('L').convert(mode); an 'L' image is its own."""
    return grayscale(x).expand_as(x)


def contrast_degenerate(x: Tensor) -> Tensor:
    """ImageEnhance.Contrast's degenerate: a flat image of int(mean of convert('L') + 0.5)
    (ImageStat's mean: sum / count in double)."""
    gray = grayscale(x).to(torch.float64)
    mean = torch.floor(gray.sum((1, 2, 3)) / gray[0].numel() + 0.5)
    return mean.to(torch.uint8).view(-1, 1, 1, 1).expand_as(x)


def apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Image.point(lut) per image and channel: out[i, y, x, c] = lut[i, c, x[i, y, x, c]].
    x: uint8 [n, H, W, C]; lut: uint8 [n, C, 256]."""
    n, _, _, c = x.shape
    base = (torch.arange(n * c, device=x.device) * 256).view(n, 1, 1, c)
    return lut.reshape(-1)[base + x.to(torch.int64)]


# -------------------------------------------------------------------------------- filters

def _kernel_sum(x32: Tensor, size: int) -> Tensor:
    """Sum over each size x size window of float32 [n, C, H, W] (valid positions only)."""
    return F.avg_pool2d(x32, size, stride=1, divisor_override=1)


def _filter_interior(x: Tensor, sums: Tensor, divisor: int, border: int) -> Tensor:
    """Pillow's kernel filter result: round(sum / divisor) as clip8(sum / divisor + 0.5), on the
    interior; the `border` outermost rows and columns keep the input (Filter.c copies them).
    The sums are integers (exact in float32) and sum / divisor + 0.5 is never within float32
    error of an integer for divisors 13 and 16, so the rounding equals Pillow's."""
    out = x.clone()
    inner = torch.floor(sums / divisor + 0.5).clamp_(0, 255).to(torch.uint8)
    out[:, border:-border, border:-border] = inner.permute(0, 2, 3, 1)
    return out


def smooth_filter(x: Tensor) -> Tensor:
    """Image.filter(ImageFilter.SMOOTH): 3x3 kernel (1 1 1 / 1 5 1 / 1 1 1) / 13."""
    x32 = x.permute(0, 3, 1, 2).to(torch.float32)
    sums = _kernel_sum(x32, 3) + 4 * x32[:, :, 1:-1, 1:-1]
    return _filter_interior(x, sums, 13, 1)


def blur_filter(x: Tensor) -> Tensor:
    """Image.filter(ImageFilter.BLUR): the 5x5 ring of ones (inner 3x3 zero) / 16."""
    x32 = x.permute(0, 3, 1, 2).to(torch.float32)
    sums = _kernel_sum(x32, 5) - _kernel_sum(x32, 3)[:, :, 1:-1, 1:-1]
    return _filter_interior(x, sums, 16, 2)


# ------------------------------------------------------------------------- affine (NEAREST)

def _fix16(v: Tensor) -> Tensor:
    """Geometry.c FIX(v): floor(v * 65536 + 0.5), the 16.16 fixed point of a coefficient."""
    return torch.floor(v * 65536.0 + 0.5).to(torch.int64)


def affine_nearest(x: Tensor, matrix: Tensor, fill: int = 0) -> tuple[Tensor, Tensor]:
    """Image.transform(size, AFFINE, matrix) with NEAREST per image (Image.rotate uses it too).

    matrix: float64 [n, 6] = (a, b, c, d, e, f): output pixel (x, y) reads input
    (a x' + b y' + c, d x' + e y' + f) at the pixel centre x' = x + 0.5, y' = y + 0.5 (floor).
    Pillow (Geometry.c ImagingTransformAffine) takes two paths that round differently:
    b = d = 0 -> ImagingScaleAffine in double; else affine_fixed in 16.16 fixed point. Both
    are computed exactly here. Pixels mapped outside the input get `fill`.
    Returns (uint8 [n, H, W, C], inside: bool [n, H, W], False where filled)."""
    n, h, w, c = x.shape
    a = matrix.to(torch.float64)
    ys = torch.arange(h, device=x.device, dtype=torch.int64).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.int64).view(1, 1, w)
    col = lambda k: a[:, k].view(n, 1, 1)  # noqa: E731 - a column as [n, 1, 1]
    # ImagingScaleAffine: xin = COORD(c + a * 0.5 + x * a) (COORD = floor, -1 below 0)
    xin_s = torch.floor(col(2) + col(0) * 0.5 + xs * col(0)).to(torch.int64)
    yin_s = torch.floor(col(5) + col(4) * 0.5 + ys * col(4)).to(torch.int64)
    # affine_fixed: integer accumulation of the FIX'ed coefficients, >> 16 (floor)
    f = _fix16(a)
    off_x = _fix16(a[:, 2] + a[:, 1] * 0.5 + a[:, 0] * 0.5).view(n, 1, 1)
    off_y = _fix16(a[:, 5] + a[:, 4] * 0.5 + a[:, 3] * 0.5).view(n, 1, 1)
    xin_f = (off_x + ys * f[:, 1].view(n, 1, 1) + xs * f[:, 0].view(n, 1, 1)) >> 16
    yin_f = (off_y + ys * f[:, 4].view(n, 1, 1) + xs * f[:, 3].view(n, 1, 1)) >> 16
    scale_only = ((a[:, 1] == 0) & (a[:, 3] == 0)).view(n, 1, 1)
    xin = torch.where(scale_only, xin_s.expand(n, h, w), xin_f)
    yin = torch.where(scale_only, yin_s.expand(n, h, w), yin_f)
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    src = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(n, h * w, 1).expand(n, h * w, c)
    out = x.reshape(n, h * w, c).gather(1, src).view(n, h, w, c)
    out = torch.where(inside[..., None], out, torch.full_like(out, fill))
    return out, inside


def affine_matrix(coefficients: Sequence[Tensor | int], like: Tensor) -> Tensor:
    """float64 [n, 6] from six per-image tensors [n] or the constants 0 and 1."""
    return torch.stack([c.to(torch.float64) if torch.is_tensor(c)
                        else torch.full_like(like, float(c), dtype=torch.float64)
                        for c in coefficients], 1)


@functools.lru_cache(maxsize=None)
def _rotation_table(width: int, height: int, max_degrees: int, device: torch.device) -> Tensor:
    """Image.rotate(angle)'s inverse affine matrix (centre (w / 2, h / 2), no expand, no
    translate) for each integer angle in [-max_degrees, max_degrees], computed in Python
    doubles with Pillow's own expressions so the matrices are bit-identical: float64 [2 *
    max_degrees + 1, 6], built once per size and device."""
    cx, cy = width / 2, height / 2
    rows = []
    for degrees in range(-max_degrees, max_degrees + 1):
        t = -math.radians(degrees % 360.0)
        a, b = round(math.cos(t), 15), round(math.sin(t), 15)
        d, e = round(-math.sin(t), 15), round(math.cos(t), 15)
        c = a * -cx + b * -cy + 0.0 + cx
        f = d * -cx + e * -cy + 0.0 + cy
        rows.append((a, b, c, d, e, f))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def rotation_matrices(degrees: Tensor, width: int, height: int, max_degrees: int = 45) -> Tensor:
    """float64 [n, 6] matrices of Image.rotate for integer `degrees` [n] in [-max_degrees,
    max_degrees]. Angle 0 gives the identity (Pillow copies; the map is the same)."""
    table = _rotation_table(width, height, max_degrees, degrees.device)
    return table[degrees.to(torch.int64) + max_degrees]


# ------------------------------------------------------------------- rescale (crop + resize)

def _filter_weight(method: str, t: float) -> float:
    """Pillow's resampling filter functions (Resample.c), in double."""
    if method == "box":
        return 1.0 if -0.5 < t <= 0.5 else 0.0
    t = abs(t)
    if method == "bilinear":
        return 1.0 - t if t < 1.0 else 0.0
    if method == "hamming":
        if t == 0.0:
            return 1.0
        if t >= 1.0:
            return 0.0
        t *= math.pi
        return math.sin(t) / t * (0.54 + 0.46 * math.cos(t))
    if method == "bicubic":  # a = -0.5
        if t < 1.0:
            return (1.5 * t - 2.5) * t * t + 1
        return (((t - 5) * t + 8) * t - 4) * -0.5 if t < 2.0 else 0.0
    sinc = lambda v: 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)  # noqa: E731
    return sinc(t) * sinc(t / 3) if t < 3.0 else 0.0  # lanczos


def _resize_taps(method: str, in_size: int, out_size: int) -> list[list[tuple[int, int]]]:
    """Per output pixel, the (input index, fixed-point weight) pairs of Image.resize along one
    axis (Resample.c precompute_coeffs + normalize_coeffs_8bpc; NEAREST: the affine map
    floor((x + 0.5) * in / out) with weight 1 << 22)."""
    scale = in_size / out_size
    if method == "nearest":
        return [[(int(math.floor((x + 0.5) * scale)), 1 << _PRECISION_BITS)] for x in range(out_size)]
    filterscale = max(scale, 1.0)
    support = _SUPPORT[method] * filterscale
    taps = []
    for x in range(out_size):
        center = (x + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        k = [_filter_weight(method, (i - center + 0.5) / filterscale) for i in range(lo, hi)]
        total = sum(k)
        k = [v / total if total != 0.0 else v for v in k]
        fixed = [int(-0.5 + v * (1 << _PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << _PRECISION_BITS))
                 for v in k]
        taps.append(list(zip(range(lo, hi), fixed)))
    return taps


@functools.lru_cache(maxsize=None)
def _resize_tables(out_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Tap indices and weights for every input size 1..out_size and every method, padded to
    the widest kernel: int64 [in_size - 1, method, out, tap], built once per size and device."""
    all_taps = [[_resize_taps(m, s, out_size) for m in RESAMPLE_METHODS] for s in range(1, out_size + 1)]
    width = max(len(t) for per_size in all_taps for per_m in per_size for t in per_m)
    index = [[[[i for i, _ in t] + [0] * (width - len(t)) for t in per_m] for per_m in per_size]
             for per_size in all_taps]
    weight = [[[[k for _, k in t] + [0] * (width - len(t)) for t in per_m] for per_m in per_size]
              for per_size in all_taps]
    return torch.tensor(index, device=device), torch.tensor(weight, device=device)


def _resize_matrices(length: int, start: Tensor, size: Tensor, method: Tensor) -> Tensor:
    """float64 [n, length, length]: row j holds the fixed-point weights with which output
    pixel j of Image.resize reads the input pixels [start, start + size) of one axis."""
    n = start.shape[0]
    index, weight = _resize_tables(length, start.device)
    index = index[size - 1, method] + start.view(n, 1, 1)                   # [n, L, T]
    weight = weight[size - 1, method].to(torch.float64)
    matrix = torch.zeros(n, length, length, dtype=torch.float64, device=start.device)
    return matrix.scatter_add_(2, index, weight)  # padded taps have weight 0


def _resample(matrix: Tensor, x: Tensor) -> Tensor:
    """One separable pass: out[i, j, k] = clip8(sum_m matrix[i, j, m] * x[i, m, k]) with
    Resample.c's fixed point (start at 1 << 21, >> 22, clip to [0, 255]). The products and
    sums are integers below 2^53, so float64 is exact (float32 or TF32 matmuls would not be)."""
    acc = torch.bmm(matrix, x) + (1 << (_PRECISION_BITS - 1))
    return acc.mul_(2.0 ** -_PRECISION_BITS).floor_().clamp_(0, 255)  # exact: a power of 2


def rescale(x: Tensor, box: Tensor, method: Tensor) -> Tensor:
    """image.crop(box).resize(image.size, RESAMPLE_METHODS[method]) per image.

    box: int64 [n, 4] = (left, upper, right, lower), already rounded as Image.crop rounds
    (Python round of each coordinate), inside the image; method: int64 [n]. Pillow resizes
    horizontally, then vertically, with a uint8 result in between; so does this. A box equal
    to the image is the identity (Pillow copies; the kernels give the same)."""
    n, h, w, c = x.shape
    across = _resize_matrices(w, box[:, 0], box[:, 2] - box[:, 0], method)      # [n, W, W]
    down = _resize_matrices(h, box[:, 1], box[:, 3] - box[:, 1], method)        # [n, H, H]
    y = x.to(torch.float64).transpose(1, 2).reshape(n, w, h * c)                 # columns first
    y = _resample(across, y).view(n, w, h, c).transpose(1, 2).reshape(n, h, w * c)
    return _resample(down, y).view(n, h, w, c).to(torch.uint8)


# ---------------------------------------------------------------------------------- cutout

def cutout_box(centre_x: Tensor, centre_y: Tensor, size: Tensor, width: int, height: int) -> Tensor:
    """The official cutout square around a centre pixel: [c - size // 2, c + size // 2) per
    axis, clipped to the image (libml/ctaugment.py `cutout`, auto_augment
    `create_cutout_mask`). Returns int64 [n, 4] = (left, upper, right, lower)."""
    half = size.to(torch.int64) // 2
    return torch.stack([(centre_x - half).clamp(min=0), (centre_y - half).clamp(min=0),
                        (centre_x + half).clamp(max=width), (centre_y + half).clamp(max=height)], 1)


def box_mask(box: Tensor, height: int, width: int) -> Tensor:
    """bool [n, H, W]: True inside each image's box (left, upper, right, lower)."""
    ys = torch.arange(height, device=box.device).view(1, height, 1)
    xs = torch.arange(width, device=box.device).view(1, 1, width)
    b = box.view(-1, 4, 1, 1)
    return (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])


# ------------------------------------------------------------------------- per-image dispatch

def apply_per_image(x: Tensor, choice: Tensor, ops: Sequence[Callable[..., Tensor]],
                    *params: Tensor, by_index: bool | None = None) -> Tensor:
    """out[i] = ops[choice[i]](x[i], params[i]) for a batch: image i gets op choice[i] with its
    own parameters (each `params` tensor has the batch as its first dimension; each op is
    called as op(x_subset, *params_subset) and returns uint8 of the same shape).

    On the CPU each op runs on the images that chose it (index_select; finding them is free
    there). On an accelerator that would be a host sync (a data-dependent size), so each op
    runs on the whole batch and torch.where keeps the images that chose it. `by_index`
    forces one of the two (None: by the device)."""
    out = x
    if by_index if by_index is not None else x.device.type == "cpu":
        out = x.clone()
        for k, op in enumerate(ops):
            rows = (choice == k).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = op(x[rows], *(p[rows] for p in params))
        return out
    for k, op in enumerate(ops):
        out = torch.where((choice == k).view(-1, 1, 1, 1), op(x, *params), out)
    return out
