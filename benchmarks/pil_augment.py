"""The official strong augmentations with PIL, image by image: the naive anchor of
benchmarks/strong_augment.py and the reference of tests/test_strong_augment.py.

Owns: libml/ctaugment.py's ops (`CTA_OPS`), its policy draw, apply and cutout
(`cta_policy`, `cta_apply`, `cutout_with_centre`), and third_party/auto_augment/
augmentations.py's RandAugment transforms with AugmentPoolRAMC's pipeline (`ra_transform`,
`ra_apply`), all rewritten (google-research/fixmatch) with the same Image / ImageOps /
ImageEnhance calls and parameter arithmetic, on the Pillow installed here (Image.ANTIALIAS is
Image.LANCZOS since Pillow 10). The random draws the official code makes inside an op (cutout's
centre, RandAugment's sign flips) are arguments here, so a test can give ours and these the same.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def _enhance(x, op, level):
    return op(x).enhance(0.1 + 1.9 * level)


def _imageop(x, op, level):
    return Image.blend(x, op(x), level)


def _filter(x, op, level):
    return Image.blend(x, x.filter(op), level)


def _affine(x, m):
    return x.transform(x.size, Image.AFFINE, m)


def rescale(x, scale, method):
    s = x.size
    scale *= 0.25
    crop = (scale * s[0], scale * s[1], s[0] * (1 - scale), s[1] * (1 - scale))
    methods = (Image.LANCZOS, Image.BICUBIC, Image.BILINEAR, Image.BOX, Image.HAMMING, Image.NEAREST)
    return x.crop(crop).resize(x.size, methods[int(method * 5.99)])


def cutout_with_centre(img, level: float, height_loc: int, width_loc: int):
    """libml cutout with its two np.random.randint draws given (PIL image in, PIL image out)."""
    x = img.copy()
    size = 1 + int(level * min(x.size) * 0.499)
    img_height, img_width = x.size
    upper_coord = (max(0, height_loc - size // 2), max(0, width_loc - size // 2))
    lower_coord = (min(img_height, height_loc + size // 2), min(img_width, width_loc + size // 2))
    pixels = x.load()
    for i in range(upper_coord[0], lower_coord[0]):
        for j in range(upper_coord[1], lower_coord[1]):
            pixels[i, j] = (127, 127, 127)
    return x


def _cutout(x, level):
    return cutout_with_centre(x, level, np.random.randint(low=0, high=x.size[0]),
                              np.random.randint(low=0, high=x.size[1]))


# name -> (bins, op), libml's registration order
CTA_OPS = {
    "autocontrast": ((17,), lambda x, l: _imageop(x, ImageOps.autocontrast, l)),
    "blur": ((17,), lambda x, l: _filter(x, ImageFilter.BLUR, l)),
    "brightness": ((17,), lambda x, l: _enhance(x, ImageEnhance.Brightness, l)),
    "color": ((17,), lambda x, l: _enhance(x, ImageEnhance.Color, l)),
    "contrast": ((17,), lambda x, l: _enhance(x, ImageEnhance.Contrast, l)),
    "cutout": ((17,), _cutout),
    "equalize": ((17,), lambda x, l: _imageop(x, ImageOps.equalize, l)),
    "invert": ((17,), lambda x, l: _imageop(x, ImageOps.invert, l)),
    "identity": ((), lambda x: x),
    "posterize": ((8,), lambda x, l: ImageOps.posterize(x, 1 + int(l * 7.999))),
    "rescale": ((17, 6), rescale),
    "rotate": ((17,), lambda x, l: x.rotate(int(np.round((2 * l - 1) * 45)))),
    "sharpness": ((17,), lambda x, l: _enhance(x, ImageEnhance.Sharpness, l)),
    "shear_x": ((17,), lambda x, l: _affine(x, (1, (2 * l - 1) * 0.3, 0, 0, 1, 0))),
    "shear_y": ((17,), lambda x, l: _affine(x, (1, 0, 0, (2 * l - 1) * 0.3, 1, 0))),
    "smooth": ((17,), lambda x, l: _filter(x, ImageFilter.SMOOTH, l)),
    "solarize": ((17,), lambda x, l: ImageOps.solarize(x, int(l * 255.999))),
    "translate_x": ((17,), lambda x, l: _affine(x, (1, 0, (2 * l - 1) * 0.3, 0, 1, 0))),
    "translate_y": ((17,), lambda x, l: _affine(x, (1, 0, 0, 0, 1, (2 * l - 1) * 0.3))),
}


def rate_to_p(rate: np.ndarray, decay: float, th: float) -> np.ndarray:
    """CTAugment.rate_to_p."""
    p = rate + (1 - decay)
    p = p / p.max()
    p[p < th] = 0
    return p


def cta_policy(rates: dict, depth: int, th: float, decay: float, probe: bool) -> list:
    """CTAugment.policy (fixmatch): [(name, levels)] for one image."""
    names = list(CTA_OPS)
    v = []
    for _ in range(depth):
        k = random.choice(names)
        rnd = np.random.uniform(0, 1, len(rates[k]))
        if probe:
            v.append((k, rnd.tolist()))
            continue
        levels = []
        for r, rate in zip(rnd, rates[k]):
            p = rate_to_p(rate, decay, th)
            levels.append((np.random.choice(p.shape[0], p=p / p.sum()) + r) / p.shape[0])
        v.append((k, levels))
    return v


def cta_apply(x: np.ndarray, ops: list) -> np.ndarray:
    """libml ctaugment.apply: float image in [-1, 1] -> PIL ops -> float image."""
    y = Image.fromarray(np.round(127.5 * (1 + x)).clip(0, 255).astype("uint8"))
    for op, args in ops:
        y = CTA_OPS[op][1](y, *args)
    return np.asarray(y).astype("f") / 127.5 - 1


# ------------------------------------------------------------------ RandAugment (RAMC)

RA_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Contrast",
          "Brightness", "Sharpness", "ShearX", "TranslateX", "TranslateY", "Posterize", "ShearY")
_ENHANCE = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
            "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


def ra_transform(name: str, img, level: int, negate: bool):
    """augmentations.py's transform `name` at `level` on an RGBA image, with its
    `random.random() > 0.5` sign flip given as `negate`."""
    sign = -1 if negate else 1
    if name == "Identity":
        return img
    if name in ("AutoContrast", "Equalize"):
        op = ImageOps.autocontrast if name == "AutoContrast" else ImageOps.equalize
        return op(img.convert("RGB")).convert("RGBA")
    if name == "Rotate":
        return img.rotate(sign * int(level * 30 / 10))
    if name == "Solarize":
        return ImageOps.solarize(img.convert("RGB"), 256 - int(level * 256 / 10)).convert("RGBA")
    if name in _ENHANCE:
        return _ENHANCE[name](img).enhance(float(level) * 1.8 / 10 + .1)
    if name in ("ShearX", "ShearY"):
        s = sign * float(level) * 0.3 / 10
        return img.transform(img.size, Image.AFFINE, (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0))
    if name in ("TranslateX", "TranslateY"):
        d = sign * int(level * 10 / 10)
        return img.transform(img.size, Image.AFFINE, (1, 0, d, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, d))
    assert name == "Posterize", name
    return ImageOps.posterize(img.convert("RGB"), 4 - int(level * 4 / 10)).convert("RGBA")


def ra_apply(x: np.ndarray, draws: list, centre: tuple[int, int], size: int = 16) -> np.ndarray:
    """AugmentPoolRAMC for one float image in [-1, 1]: apply_policy (pil_wrap, each drawn
    (name, level, applied, negate), pil_unwrap) then cutout_numpy with its centre given."""
    pil = Image.fromarray(np.uint8((x * 0.5 + 0.5) * 255.0)).convert("RGBA")
    for name, level, applied, negate in draws:
        if applied:
            pil = ra_transform(name, pil, level, negate)
    s = pil.size
    arr = np.asarray(pil).reshape((s[0], s[1], 4)) / 255.0   # getdata() in the official code
    i1, i2 = np.where(arr[:, :, 3] == 0)
    arr = (arr[:, :, :3] - 0.5) / 0.5
    arr[i1, i2] = [0, 0, 0]
    (hl, wl), half = centre, size // 2
    arr[max(0, hl - half):min(s[1], hl + half), max(0, wl - half):min(s[0], wl + half)] = 0
    return arr


def ra_draws() -> tuple[list, tuple[int, int]]:
    """One image's RAMC draws as the official code makes them: the policy lambda, the per-op
    coin and sign flips, cutout_numpy's centre (32 x 32 images)."""
    policy = [(op, 0.5, np.random.randint(1, 10)) for op in np.random.choice(RA_OPS, 2)]
    draws = [(op, level, random.random() < p, random.random() > 0.5) for op, p, level in policy]
    return draws, (np.random.randint(0, 32), np.random.randint(0, 32))
