"""CTAugment (FixMatch / ReMixMatch, libml/ctaugment.py) on the device, image by image.

Owns: the op set with its bins (`OPS`, the official registration order), the learned rates
(`CTAugment.rates`, one float32 device tensor), policy sampling (`CTAugment.policy`), applying
a policy to uint8 NHWC images (`CTAugment.apply`, optionally with FixMatch's final cutout), the
rate update from the labeled probe (`proximity`, `CTAugment.update_rates`), the checkpoint
state and the official `stats()` text.

Official semantics (google-research/fixmatch libml/ctaugment.py; cta/lib/train.py):
- 19 ops, each with a tuple of bins (17 for most, posterize 8, rescale 17 x 6, identity none);
  every bin's rate starts at 1.
- policy(probe=True): per depth step an op drawn uniformly, each of its levels ~ U(0, 1).
  policy(probe=False): per level, p = rate + (1 - decay), p /= max(p), p[p < threshold] = 0,
  a bin drawn with probability p / sum(p), level = (bin + U(0, 1)) / n_bins.
- update_rates(policy, proximity): for each level of each op of the policy, bin
  int(level * n_bins * 0.999) gets rate <- rate * decay + proximity * (1 - decay). The
  trainer calls it for each probe image in batch order, so two images (or two depth steps of
  one image) that hit one bin update it one after the other. NOTE the 0.999: a level drawn
  from the last bin with U(0, 1) < ~0.016 updates the bin below it; kept as the official code.
- proximity = 1 - 0.5 * |p - onehot(label)|_1 of the EMA model's softmax on the probe image.
- The defaults are cta/lib/train.py's flags (depth 2, threshold 0.80, decay 0.99); the
  class's own default threshold is 0.85.
- FixMatch's strong view appends OP('cutout', (1,)) to each drawn policy (fixmatch.py
  AugmentPoolCTACutOut): `apply(..., cutout=True)`.
Where the remixmatch repository's file differs: its policy() draws one of the n_bins - 1
segments with probability p[i] + p[i + 1] and returns (segment + U) / (n_bins - 1); its
rescale crops `scale` pixels (< 1, so round() makes it the identity). `variant="remixmatch"`
selects both.

Here: a policy is two tensors (op ids [n, depth], levels [n, depth, 2]); each image's ops run
through mixmatch_core/image_ops.py, which computes what the official PIL calls compute. All
randomness comes from the global torch RNG of the device; there is no host sync except in
`stats()` (text, for evaluation time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mixmatch_core import image_ops as io
from mixmatch_core.strong_augment import CTA_DECAY, CTA_DEPTH, CTA_THRESHOLD, strong_augment_error

VARIANTS = ("fixmatch", "remixmatch")
CUTOUT_FILL = 127  # libml/ctaugment.py cutout: pixels[i, j] = (127, 127, 127)


def _blend_op(degenerate: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Official _imageop / _filter: Image.blend(x, f(x), level)."""
    return lambda x, lv: io.blend(x, degenerate(x), lv[:, 0].double())


def _enhance_op(degenerate: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """Official _enhance: ImageEnhance.X(x).enhance(0.1 + 1.9 * level), i.e.
    Image.blend(degenerate, x, factor)."""
    return lambda x, lv: io.blend(degenerate(x), x, 0.1 + 1.9 * lv[:, 0].double())


def cutout(x: Tensor, lv: Tensor) -> Tensor:
    """Official cutout(level): a gray (127) square of side 2 * (size // 2), size = 1 +
    int(level * min(W, H) * 0.499), centred on a uniformly drawn pixel, clipped."""
    n, h, w, _ = x.shape
    # libml draws `height_loc` over x.size[0] (the width: a column) and `width_loc` over the
    # height (a row), then writes pixels[column, row].
    return cutout_at(x, lv, torch.randint(0, w, (n,), device=x.device),
                     torch.randint(0, h, (n,), device=x.device))


def cutout_at(x: Tensor, lv: Tensor, column: Tensor, row: Tensor) -> Tensor:
    """`cutout` centred on the given pixels (int64 [n] each)."""
    _, h, w, _ = x.shape
    size = 1 + (lv[:, 0].double() * min(w, h) * 0.499).to(torch.int64)
    inside = io.box_mask(io.cutout_box(column, row, size, w, h), h, w)
    return torch.where(inside[..., None], torch.full_like(x, CUTOUT_FILL), x)


def _affine(matrix: Callable[[Tensor], list]) -> Callable[[Tensor, Tensor], Tensor]:
    """Image.transform(x.size, AFFINE, matrix(level)) with NEAREST, black fill."""
    def op(x: Tensor, lv: Tensor) -> Tensor:
        v = lv[:, 0].double()
        return io.affine_nearest(x, io.affine_matrix(matrix(v), v))[0]
    return op


def _signed(v: Tensor) -> Tensor:
    return (2 * v - 1) * 0.3  # shear_x/y, translate_x/y: (2 * level - 1) * 0.3


def rotate(x: Tensor, lv: Tensor) -> Tensor:
    """x.rotate(int(np.round((2 * level - 1) * 45))): NEAREST, centre (w / 2, h / 2), black."""
    degrees = torch.round((2 * lv[:, 0].double() - 1) * 45).to(torch.int64)
    return io.affine_nearest(x, io.rotation_matrices(degrees, x.shape[2], x.shape[1]))[0]


def posterize(x: Tensor, lv: Tensor) -> Tensor:
    bits = 1 + (lv[:, 0].double() * 7.999).to(torch.int64)
    return io.apply_lut(x, io.posterize_lut(bits, x.shape[-1]))


def solarize(x: Tensor, lv: Tensor) -> Tensor:
    threshold = (lv[:, 0].double() * 255.999).to(torch.int64)
    return io.apply_lut(x, io.solarize_lut(threshold, x.shape[-1]))


def rescale_box(lv: Tensor, width: int, height: int) -> Tensor:
    """fixmatch rescale's crop: scale = level * 0.25, box (scale W, scale H, W (1 - scale),
    H (1 - scale)) rounded as Image.crop (Python round: half to even, as torch.round)."""
    scale = lv[:, 0].double() * 0.25
    return torch.round(torch.stack([scale * width, scale * height, width * (1 - scale),
                                    height * (1 - scale)], 1)).to(torch.int64)


def rescale(x: Tensor, lv: Tensor) -> Tensor:
    """fixmatch: x.crop(box).resize(x.size, methods[int(level2 * 5.99)])."""
    method = (lv[:, 1].double() * 5.99).to(torch.int64)
    return io.rescale(x, rescale_box(lv, x.shape[2], x.shape[1]), method)


# name -> (bins per level, op(x uint8 [m, H, W, C], levels [m, 2]) -> uint8), in libml's
# registration order (random.choice(list(OPS.keys())) draws by position).
OPS: dict[str, tuple[tuple[int, ...], Callable[[Tensor, Tensor], Tensor]]] = {
    "autocontrast": ((17,), _blend_op(io.autocontrast)),
    "blur": ((17,), _blend_op(io.blur_filter)),
    "brightness": ((17,), _enhance_op(torch.zeros_like)),
    "color": ((17,), _enhance_op(io.color_degenerate)),
    "contrast": ((17,), _enhance_op(io.contrast_degenerate)),
    "cutout": ((17,), cutout),
    "equalize": ((17,), _blend_op(io.equalize)),
    "invert": ((17,), _blend_op(lambda x: 255 - x)),
    "identity": ((), lambda x, lv: x),
    "posterize": ((8,), posterize),
    "rescale": ((17, 6), rescale),
    "rotate": ((17,), rotate),
    "sharpness": ((17,), _enhance_op(io.smooth_filter)),
    "shear_x": ((17,), _affine(lambda s: [1, _signed(s), 0, 0, 1, 0])),
    "shear_y": ((17,), _affine(lambda s: [1, 0, 0, _signed(s), 1, 0])),
    "smooth": ((17,), _blend_op(io.smooth_filter)),
    "solarize": ((17,), solarize),
    "translate_x": ((17,), _affine(lambda d: [1, 0, _signed(d), 0, 1, 0])),
    "translate_y": ((17,), _affine(lambda d: [1, 0, 0, 0, 1, _signed(d)])),
}
OP_NAMES = tuple(OPS)
MAX_ARGS = 2
MAX_BINS = 17
_RESCALE_ID = OP_NAMES.index("rescale")


def _remixmatch_rescale(x: Tensor, lv: Tensor) -> Tensor:
    """remixmatch rescale: crop (scale, scale, W - scale, H - scale) with scale <= 0.25 px,
    which Image.crop rounds to the whole image, then a same-size resize: the identity."""
    return x


@dataclass(frozen=True)
class Policy:
    """Per-image CTAugment policies: `ops` int64 [n, depth] op ids (positions in OP_NAMES);
    `levels` float32 [n, depth, 2] in [0, 1), 0 beyond the op's number of levels."""

    ops: Tensor
    levels: Tensor


def proximity(probs: Tensor, labels: Tensor) -> Tensor:
    """cta/lib/train.py: 1 - 0.5 * |p - onehot(label)|_1 per probe image. probs: [n, classes]
    (the EMA model's softmax); labels: int [n] -> [n]."""
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    return 1 - 0.5 * (probs - onehot).abs().sum(1)


class CTAugment:
    """The learned augmentation: rates per op level bin (one flat float32 tensor on `device`),
    sampled by `policy`, applied by `apply`, learned by `update_rates` (see the module doc).

    depth: ops per image (>= 1); threshold: bins whose normalised p is below it are never
    drawn, in [0, 1); decay: the rates' EMA decay, in (0, 1); variant: 'fixmatch' (its policy
    and rescale) or 'remixmatch'."""

    def __init__(self, depth: int = CTA_DEPTH, threshold: float = CTA_THRESHOLD, decay: float = CTA_DECAY,
                 device: torch.device | str = "cpu", variant: str = "fixmatch"):
        error = strong_augment_error("ctaugment", depth, threshold, decay)
        if error:
            raise ValueError(error)
        if variant not in VARIANTS:
            raise ValueError(f"CTAugment variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.depth, self.threshold, self.decay, self.variant = depth, threshold, decay, variant
        self.device = torch.device(device)
        bins = torch.zeros(len(OPS), MAX_ARGS, dtype=torch.int64)
        for k, (op_bins, _) in enumerate(OPS.values()):
            bins[k, :len(op_bins)] = torch.tensor(op_bins, dtype=torch.int64)
        self.bins = bins.to(self.device)                                   # [ops, 2], 0 = no level
        self.offsets = (bins.flatten().cumsum(0) - bins.flatten()).view_as(bins).to(self.device)
        self.rates = torch.ones(int(bins.sum()), device=self.device)       # every bin starts at 1
        self._ops = [fn for _, fn in OPS.values()]
        if variant == "remixmatch":
            self._ops[_RESCALE_ID] = _remixmatch_rescale

    # ---------------------------------------------------------------- sampling
    def probabilities(self) -> Tensor:
        """rate_to_p for every (op, level): float32 [ops, 2, 17], zero-padded past each level's
        bins: p = rate + (1 - decay), p / max(p), zeroed below the threshold."""
        slot = torch.arange(MAX_BINS, device=self.device)
        valid = slot < self.bins[..., None]                                 # [ops, 2, 17]
        index = torch.where(valid, self.offsets[..., None] + slot, 0)
        p = torch.where(valid, self.rates[index] + (1 - self.decay), 0.0)
        p = p / p.amax(-1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny)
        return torch.where(p < self.threshold, 0.0, p)

    def policy(self, n: int, probe: bool) -> Policy:
        """n per-image policies of `depth` ops (libml CTAugment.policy, once per image)."""
        ops = torch.randint(0, len(OPS), (n, self.depth), device=self.device)
        bins = self.bins[ops]                                               # [n, depth, 2]
        u = torch.rand(n, self.depth, MAX_ARGS, device=self.device)
        if probe:
            return Policy(ops, torch.where(bins > 0, u, 0.0))
        p = self.probabilities()[ops]                                       # [n, depth, 2, 17]
        if self.variant == "remixmatch":
            bins = (bins - 1).clamp(min=0)                                  # segments between bins
            segment = torch.arange(MAX_BINS - 1, device=self.device)
            p = torch.where(segment < bins[..., None], p[..., 1:] + p[..., :-1], 0.0)
        cdf = p.cumsum(-1)
        pick = torch.rand(n, self.depth, MAX_ARGS, 1, device=self.device) * cdf[..., -1:]
        drawn = (cdf <= pick).sum(-1).clamp(max=(bins - 1).clamp(min=0))   # inverse CDF
        levels = (drawn + u) / bins.clamp(min=1)
        return Policy(ops, torch.where(bins > 0, levels, 0.0).to(torch.float32))

    # ---------------------------------------------------------------- applying
    def apply(self, x: Tensor, policy: Policy, cutout: bool = False, by_index: bool | None = None) -> Tensor:
        """The policy's ops, in order, on uint8 NHWC images [n, H, W, C] (C = 3 or 1); with
        `cutout`, FixMatch's OP('cutout', (1,)) last (a 16 x 16 gray square on 32 x 32).
        `by_index`: io.apply_per_image's dispatch (None: by the device)."""
        for d in range(policy.ops.shape[1]):
            x = io.apply_per_image(x, policy.ops[:, d], self._ops, policy.levels[:, d], by_index=by_index)
        if cutout:
            x = OPS["cutout"][1](x, torch.ones(x.shape[0], MAX_ARGS, device=x.device))
        return x

    # ---------------------------------------------------------------- learning
    def update_rates(self, policy: Policy, proximity: Tensor) -> None:
        """The official sequential update for every probe image in batch order (closed form).

        Each (image, depth step, level) is an event on bin int(level * n_bins * 0.999), in
        the order image, depth, level. A bin hit by m events with proximities x_1..x_m ends at
        rate * decay^m + (1 - decay) * sum_j x_j * decay^(number of its hits after j), which is
        the sequential rule unrolled. Computed in float64 on the device, without host sync."""
        n_bins = self.bins[policy.ops]                                      # [n, depth, 2]
        valid = (n_bins > 0).flatten()
        local = (policy.levels.double() * n_bins * 0.999).to(torch.int64)
        flat = (self.offsets[policy.ops] + local).flatten()
        flat = torch.where(valid, flat, self.rates.numel())                 # a dummy slot
        x = proximity.double()[:, None, None].expand_as(policy.levels).flatten()
        same = (flat[:, None] == flat[None, :]) & valid[:, None] & valid[None, :]
        later = torch.ones_like(same).triu(1)
        hits_after = (same & later).sum(1)                                  # [events]
        total = torch.zeros(self.rates.numel() + 1, dtype=torch.float64, device=self.device)
        hits = total.clone().index_add_(0, flat, valid.double())
        gain = total.index_add_(0, flat, (1 - self.decay) * x * self.decay ** hits_after.double()
                                * valid)
        new = self.rates.double() * self.decay ** hits[:-1] + gain[:-1]
        self.rates.copy_(new.to(self.rates.dtype))

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors only (torch.load(weights_only=True)): the rates and the bin layout."""
        return {"rates": self.rates.detach().clone(), "bins": self.bins.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not torch.equal(state["bins"].to(self.bins.device), self.bins):
            raise ValueError("CTAugment state has another op/bin layout")
        self.rates.copy_(state["rates"].to(self.rates.device))

    def stats(self) -> str:
        """The official stats() text: per op (sorted by name) the normalised, thresholded p of
        each level, '%.2f' joined by spaces, levels separated by ' / '. Reads the device."""
        p = self.probabilities().cpu()
        bins = self.bins.cpu()
        lines = []
        for name in sorted(OPS):
            k = OP_NAMES.index(name)
            levels = [" ".join("%.2f" % float(v) for v in p[k, a, :int(bins[k, a])])
                      for a in range(MAX_ARGS) if bins[k, a] > 0]
            lines.append("%-16s    %s" % (name, " / ".join(levels)))
        return "\n".join(lines)
