"""Specification of augment.py: reflect padding, batched random crop/flip, uint8 -> float."""

import numpy as np
import pytest
import torch

from mixmatch_core.augment import AugmentSpec, augment_batch, pad_reflect, to_float


def coordinate_images(n: int, hp: int, wp: int) -> torch.Tensor:
    """uint8 [n, hp, wp, 3] whose pixel (i, j) of image b holds (i, j, b): a crop's content
    then tells exactly where it came from."""
    i = torch.arange(hp)[None, :, None].expand(n, hp, wp)
    j = torch.arange(wp)[None, None, :].expand(n, hp, wp)
    b = torch.arange(n)[:, None, None].expand(n, hp, wp)
    return torch.stack([i, j, b], dim=-1).to(torch.uint8)


def crop_origin(out: torch.Tensor):
    """(dy, dx, flipped, image id) per image of a crop of `coordinate_images`."""
    dy = out[:, 0, 0, 0].long()
    first, last = out[:, 0, 0, 1].long(), out[:, 0, -1, 1].long()
    flipped = first > last
    dx = torch.minimum(first, last)
    return dy, dx, flipped, out[:, 0, 0, 2].long()


@pytest.mark.parametrize("pad", [1, 2, 4])
@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_pad_reflect_matches_numpy_reflect_mode(pad, hw):
    x = torch.randint(0, 256, (3, *hw, 2), dtype=torch.uint8)
    expected = np.pad(x.numpy(), ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = pad_reflect(x, pad)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), expected)


def test_pad_reflect_with_zero_pad_is_identity():
    x = torch.randint(0, 256, (2, 4, 4, 1), dtype=torch.uint8)
    assert torch.equal(pad_reflect(x, 0), x)


@pytest.mark.parametrize("spec", [AugmentSpec(True, 4), AugmentSpec(False, 4), AugmentSpec(False, 1),
                                  AugmentSpec(True, 0)])
def test_augment_batch_returns_uint8_nhwc_of_the_unpadded_size(spec):
    h, w, p = 8, 6, spec.pad
    out = augment_batch(torch.zeros(5, h + 2 * p, w + 2 * p, 3, dtype=torch.uint8), spec)
    assert out.shape == (5, h, w, 3) and out.dtype == torch.uint8


@pytest.mark.parametrize("flip", [True, False])
def test_augment_batch_crops_are_sub_windows_of_the_padded_image(flip):
    torch.manual_seed(0)
    spec, h, w = AugmentSpec(flip, 4), 6, 5
    x = coordinate_images(256, h + 8, w + 8)
    out = augment_batch(x, spec)
    dy, dx, flipped, ids = crop_origin(out)
    assert torch.equal(ids, torch.arange(256))
    rows = dy[:, None, None] + torch.arange(h)[None, :, None]
    cols = torch.arange(w).expand(256, w)
    cols = dx[:, None] + torch.where(flipped[:, None], w - 1 - cols, cols)
    assert torch.equal(out[..., 0].long(), rows.expand(256, h, w))
    assert torch.equal(out[..., 1].long(), cols[:, None, :].expand(256, h, w))
    # The offsets are uniform over 0..2p: all 9 values appear among 256 images.
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))


def test_augment_batch_flips_some_images_and_not_others():
    torch.manual_seed(0)
    out = augment_batch(coordinate_images(200, 10, 10), AugmentSpec(True, 1))
    flipped = crop_origin(out)[2]
    assert 50 < int(flipped.sum()) < 150


def test_augment_batch_never_flips_when_flip_is_off():
    torch.manual_seed(0)
    out = augment_batch(coordinate_images(200, 10, 10), AugmentSpec(False, 1))
    assert not crop_origin(out)[2].any()


def test_augment_batch_gathers_the_requested_index_rows():
    torch.manual_seed(0)
    index = torch.tensor([7, 3, 3, 0, 9])
    out = augment_batch(coordinate_images(10, 10, 10), AugmentSpec(True, 2), index=index)
    assert torch.equal(crop_origin(out)[3], index)


def test_augment_batch_is_reproducible_from_the_global_seed():
    x = coordinate_images(16, 12, 12)
    torch.manual_seed(3)
    a = augment_batch(x, AugmentSpec(True, 2))
    torch.manual_seed(3)
    b = augment_batch(x, AugmentSpec(True, 2))
    assert torch.equal(a, b)


def test_to_float_maps_0_and_255_to_minus_one_and_one_in_nchw():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).reshape(1, 1, 3, 1).expand(2, 4, 3, 3)
    y = to_float(x.contiguous(), channels_last=False)
    assert y.shape == (2, 3, 4, 3) and y.dtype == torch.float32
    assert y.min() == -1.0 and y.max() == 1.0
    assert torch.allclose(y[0, 0, 0], torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


@pytest.mark.parametrize("channels_last", [True, False])
def test_to_float_memory_format_follows_channels_last(channels_last):
    y = to_float(torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8), channels_last)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    else:
        assert y.is_contiguous()
