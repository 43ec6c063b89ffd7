"""Batched, device-side image augmentation: reflect padding, random crop + horizontal flip.

Owns: the per-dataset augmentation spec (`AugmentSpec`), the one-time reflect padding of the
stored uint8 images (`pad_reflect`), the per-batch random crop/flip (`augment_batch`) and the
uint8 -> float conversion to the model's input range (`to_float`).

Official semantics (libml/data.py `augment_shift`, `augment_mirror`): optional random
left-right flip, then reflect-pad by `pad` pixels and take a random crop of the original size,
i.e. a random shift of up to `pad` pixels per axis. Here the padding is done ONCE when the
data is put on the device, so a training batch costs one gather: per image a crop offset
(dy, dx) in [0, 2 * pad] and an optional column reversal. Flipping the crop of the padded
image has the same distribution as cropping the padded flipped image (the offset
distribution is symmetric), so the order flip -> pad -> crop of the official code is kept.

Style (airbench): images stay uint8 NHWC on the device; randomness comes from the global
torch RNG of the tensor's device; there is no per-image Python loop and no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AugmentSpec:
    """How a dataset is augmented: `flip` = random horizontal flip with probability 1/2;
    `pad` = reflect padding in pixels, i.e. the maximal random shift per axis (0 = no shift)."""

    flip: bool
    pad: int


def _reflect_index(n: int, pad: int, device: torch.device) -> Tensor:
    """Source index of each of the n + 2 * pad output positions of a reflect pad along one
    axis, numpy 'reflect' mode (the edge pixel is not repeated): -1 -> 1, n -> n - 2."""
    i = torch.arange(-pad, n + pad, device=device)
    i = i.abs()                                    # left border: -k -> k
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)  # right border: n - 1 + k -> n - 1 - k


def pad_reflect(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad uint8 NHWC images [N, H, W, C] by `pad` pixels on each side of H and W.

    Done once at load time. It is a single index gather, so it works on uint8 without a
    float copy (a float32 copy of SVHN+extra would be 4x the uint8 size)."""
    if pad == 0:
        return x
    n, h, w, c = x.shape
    if pad >= h or pad >= w:
        raise ValueError(f"reflect pad {pad} needs images larger than {pad} px, got {h}x{w}")
    iy = _reflect_index(h, pad, x.device)
    ix = _reflect_index(w, pad, x.device)
    # x[:, iy[:, None], ix[None, :]] -> [N, H + 2p, W + 2p, C]
    return x[:, iy[:, None], ix[None, :]]


def augment_batch(x_padded: Tensor, spec: AugmentSpec, index: Tensor | None = None) -> Tensor:
    """Random crop (and flip when `spec.flip`) of reflect-padded uint8 NHWC images.

    x_padded: uint8 [N, H + 2p, W + 2p, C] with p = spec.pad (see `pad_reflect`).
    index: optional int64 [B] rows of `x_padded` to augment; the selection is fused into the
        same gather, so sampling a batch from the whole device-resident pool costs one copy.
        Default: all N rows.
    Returns uint8 [B, H, W, C]: out[b, i, j] = x_padded[index[b], dy[b] + i, dx[b] + j'],
    with j' = j, or W - 1 - j for the images drawn to be flipped.

    The crop offsets dy, dx ~ U{0..2p} and the flip bits ~ Bernoulli(1/2) are drawn per image
    from the global torch RNG of the tensor's device (no host sync, no Python per image).
    """
    p = spec.pad
    device = x_padded.device
    h, w = x_padded.shape[1] - 2 * p, x_padded.shape[2] - 2 * p
    if index is None:
        index = torch.arange(x_padded.shape[0], device=device)
    b = index.shape[0]
    offsets = torch.randint(0, 2 * p + 1, (2, b), device=device)  # pixels, [dy; dx]
    iy = offsets[0, :, None] + torch.arange(h, device=device)      # [B, H] source rows
    cols = torch.arange(w, device=device).expand(b, w)             # [B, W]
    if spec.flip:
        flipped = torch.randint(0, 2, (b, 1), device=device, dtype=torch.bool)
        cols = torch.where(flipped, (w - 1) - cols, cols)
    ix = offsets[1, :, None] + cols                                 # [B, W] source columns
    # One advanced-indexing gather: [B, 1, 1], [B, H, 1], [B, 1, W] broadcast to [B, H, W].
    return x_padded[index[:, None, None], iy[:, :, None], ix[:, None, :]]


def to_float(x: Tensor, channels_last: bool) -> Tensor:
    """uint8 NHWC [B, H, W, C] -> float32 NCHW [B, C, H, W] in [-1, 1] (x / 127.5 - 1, the
    official `image * 2 / 255 - 1`).

    The NCHW permutation of NHWC-contiguous data is already channels_last-contiguous, and
    the elementwise ops preserve that layout, so channels_last costs no copy; for
    channels_last=False the result is made NCHW-contiguous."""
    y = x.permute(0, 3, 1, 2)
    if not channels_last:
        y = y.contiguous()  # the NCHW copy is made on uint8: 1/4 of the bytes of a float copy
    y = y.float().div_(127.5).sub_(1.0)  # float() and the in-place ops keep y's memory layout
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)  # a no-op for NHWC-contiguous input
    return y
