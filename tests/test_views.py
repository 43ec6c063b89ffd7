"""The augmented views the methods train on, read back from the pixels: images whose channels
hold each pixel's own row and column, so any crop and flip of them says which it was.

- The K unlabeled views of a step are drawn independently: different crops and flips of the
  same images, not K copies of one (seen by the model in one training step of each method that
  takes several views).
- Each dataset's flip and shift are the official ones (libml/data.py): augment_cifar10 (CIFAR-10
  and CIFAR-100) mirrors and shifts by 4, augment_svhn (svhn_noextra and svhn, our svhn and
  svhn_extra) shifts by 4 without mirroring, augment_stl10 mirrors and shifts by 12; the labeled
  and the unlabeled images alike (`DataSet.creator`: `augment = [augment] * 2`).
"""
import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from mixmatch_core import methods
from mixmatch_core.augment import AugmentSpec
from mixmatch_core.config import resolve
from mixmatch_core.data import Dataset, DeviceData, load_dataset
from mixmatch_core.train import train_step

# libml/data.py lines 181-198: dataset -> (mirror, shift in pixels)
OFFICIAL_AUGMENT = {"cifar10": (True, 4), "cifar100": (True, 4), "svhn": (False, 4), "svhn_extra": (False, 4),
                    "stl10": (True, 12)}


def coordinate_images(n: int, side: int, channels: int = 3, ids: bool = False) -> np.ndarray:
    """uint8 NHWC: channel 0 = the pixel's row, channel 1 = its column, channel 2 = the image's
    index when `ids` (else 0)."""
    x = np.zeros((n, side, side, channels), np.uint8)
    x[..., 0] = np.arange(side)[:, None]
    x[..., 1] = np.arange(side)[None, :]
    if ids:
        x[..., 2] = np.arange(n)[:, None, None]
    return x


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image of a float [-1, 1] NCHW batch of coordinate images: (vertical shift, horizontal
    shift, flipped), read at the centre, where no reflected pixel can be."""
    codes = torch.round((x + 1) * 127.5).long().numpy()
    mid = x.shape[-1] // 2
    rows, cols = codes[:, 0, mid, mid], codes[:, 1, mid, mid]
    flipped = codes[:, 1, mid, mid + 1] - cols == -1
    return rows - mid, np.where(flipped, cols - (x.shape[-1] - 1 - mid), cols - mid), flipped


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1)[:, :10] * self.w


@pytest.mark.parametrize("fields, K", [(dict(variant="no_mixup"), 2), (dict(variant="no_mixup", K=3), 3),
                                      (dict(variant="pi_model"), 2), (dict(variant="mean_teacher"), 2)],
                         ids=["mixmatch_K2", "mixmatch_K3", "pi_model", "mean_teacher"])
def test_the_unlabeled_views_of_a_step_are_independent_crops_and_flips_of_the_same_images(fields, K):
    n, batch = 200, 64
    ds = Dataset("coords", coordinate_images(n, 8, ids=True), np.arange(n) % 10, coordinate_images(10, 8),
                 np.arange(10), 10, AugmentSpec(flip=True, pad=2))
    data = DeviceData.build(ds, 10, seed=1, val_size=0, device="cpu", channels_last=False)
    unlabeled_ids = set(torch.round((data.x_unlabeled[:, 0, 0, 2].float())).long().tolist())
    cfg = resolve(dict(dataset="digits", batch_size=batch, device="cpu", **fields))   # MixMatch unmixed: rows keep their pixels
    torch.manual_seed(0)
    model, teacher = Recorder(), Recorder()
    train_step(cfg, methods.load(cfg.method), model, teacher, data, contextlib.nullcontext, 1.0)
    views: dict[int, set] = {}
    for x in model.seen + teacher.seen:
        ids = torch.round((x[:, 2, 0, 0] + 1) * 127.5).long().tolist()
        for i, dy, dx, f in zip(ids, *decode(x)):
            if i in unlabeled_ids:
                views.setdefault(i, set()).add((int(dy), int(dx), bool(f)))
    assert len(views) == batch                        # the views are of the same B images
    # 5 x 5 shifts x 2 flips = 50 equally likely views: K independent draws are all different
    # for ~94% (K = 3) to ~98% (K = 2) of the images; K copies of one view never are.
    all_different = sum(len(v) == K for v in views.values())
    assert all_different >= 0.8 * batch and all(len(v) <= K for v in views.values())


class FakeTorchvision:
    """A torchvision dataset class of coordinate images in that class's layout."""

    def __init__(self, side, n_classes, nchw, label_attr):
        self.side, self.n_classes, self.nchw, self.label_attr = side, n_classes, nchw, label_attr

    def __call__(self, root, download, train=True, split="train"):
        n = 2 * self.n_classes if split != "unlabeled" else 20
        data = coordinate_images(n, self.side)
        obj = type("FakeSplit", (), {})()
        obj.data = np.ascontiguousarray(data.transpose(0, 3, 1, 2)) if self.nchw else data
        labels = np.arange(n) % self.n_classes if split != "unlabeled" else np.full(n, -1)
        setattr(obj, self.label_attr, labels.tolist() if self.label_attr == "targets" else labels)
        return obj


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    import torchvision.datasets as tvd
    monkeypatch.setattr(tvd, "CIFAR10", FakeTorchvision(32, 10, nchw=False, label_attr="targets"))
    monkeypatch.setattr(tvd, "CIFAR100", FakeTorchvision(32, 100, nchw=False, label_attr="targets"))
    monkeypatch.setattr(tvd, "SVHN", FakeTorchvision(32, 10, nchw=True, label_attr="labels"))
    monkeypatch.setattr(tvd, "STL10", FakeTorchvision(96, 10, nchw=True, label_attr="labels"))
    (tmp_path / "stl10_binary").mkdir()
    (tmp_path / "stl10_binary" / "fold_indices.txt").write_text("0 1 2 3 4 5 6 7 8 9\n" * 10)
    return tmp_path


@pytest.mark.parametrize("name", sorted(OFFICIAL_AUGMENT))
def test_each_dataset_is_flipped_and_shifted_as_the_official_augment_function(fake_torchvision, name):
    flip, shift = OFFICIAL_AUGMENT[name]
    ds = load_dataset(name, str(fake_torchvision))
    n_classes = ds.n_classes
    data = DeviceData.build(ds, n_classes, seed=1, val_size=0, device="cpu", channels_last=False)
    torch.manual_seed(0)
    for x in (data.labeled_batch(400)[0], data.unlabeled_batch(400, 1)[0]):
        dy, dx, flipped = decode(x)
        assert set(dy) == set(dx) == set(range(-shift, shift + 1))
        assert set(flipped) == ({False, True} if flip else {False})
