"""Datasets, labeled/unlabeled/validation splits, and device-resident batch sampling.

Owns:
- `load_dataset` and the built-in loaders: the raw uint8 NHWC arrays of a dataset on the host
  (scikit-learn's bundled digits, read without importing scikit-learn; torchvision CIFAR-10/100,
  SVHN, SVHN+extra, STL-10, or a user `npz:PATH` file) with its augmentation spec, from the
  dataset's record in datasets.py (which names the loader; facts about a dataset live there,
  not here);
- `split_labeled`: the official labeled split of scripts/create_split.py (a seeded per-class
  shuffle, then a greedy draw that follows the class frequencies: exactly n_labeled / n_classes
  per class on balanced data such as CIFAR, proportional on SVHN; STL-10's predefined folds at
  1000 labels; every image for the fully supervised runs) plus an optional validation split;
- the labeled pool (`labeled_pool`): the training set, or for STL-10 the training set followed
  by the 'unlabeled' split with label 0, as create_split.py reads both tfrecords;
- `DeviceData`: every image of the run stored ONCE on the device as uint8 (the training
  images already reflect-padded for augmentation), epoch-style samplers over random
  device permutations, and the batch functions the trainer calls.

Style (airbench): no DataLoader, no per-image Python, no host sync per step. Batches are an
index gather from the device-resident uint8 pool fused with the crop/flip (augment.py),
followed by the uint8 -> [-1, 1] float conversion on the device.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import inspect
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from .augment import AugmentSpec, augment_batch, pad_reflect, to_float
from .config import ConfigError
from .datasets import LABELED_POOLS, DatasetInfo, allowed, dataset_info
from .views import Probe, Unlabeled, Views

DIGITS_N_TEST = 500   # images; the other 1297 of the 1797 are the training set
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split is the same for every run


@dataclass
class Dataset:
    """Raw arrays on the host. Images uint8 NHWC [N, H, W, C]; labels int64 [N] in
    0..n_classes-1. `x_unlabeled_extra` holds extra unlabeled images without labels (STL-10's
    'unlabeled' split) that only ever join the unlabeled pool.

    The labeled split is drawn on `split_labels` when set: the class ids of the official
    tfrecords where they differ from ours (SVHN, whose class order decides the draw), so that a
    seed selects the official labeled images. `label_folds` are predefined labeled sets (STL-10's
    ten 1000-image folds), indices into the training set. `equal_class_draw`: the draw gives
    every class the same share whatever the pool's class counts (create_split.py does so for
    STL-10, whose unlabeled images all carry label 0)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    augment: AugmentSpec
    x_unlabeled_extra: np.ndarray | None = None
    split_labels: np.ndarray | None = None
    label_folds: tuple[np.ndarray, ...] | None = None
    equal_class_draw: bool = False




# ---- loaders ------------------------------------------------------------------------------------
class DatasetNotLocal(ConfigError):
    """The dataset's files are not in data_dir, and loading was asked not to download them."""


def load_dataset(dataset: str, data_dir: str, download: bool = True) -> Dataset:
    """Load `dataset` (a `Config.dataset` value) into host arrays with the loader its record
    names; errors are one-line ConfigErrors naming the field or the file. `download=False`:
    a dataset that would be downloaded raises DatasetNotLocal instead (a dry run writes nothing)."""
    info = dataset_info(dataset)
    if info is None:
        raise ConfigError(f"dataset: unknown '{dataset}'; allowed: {allowed()}")
    module, func = info.loader.split(":")
    loader = getattr(importlib.import_module(module), func)
    # `download` is optional for a loader: one written as loader(info, data_dir) still works
    # (a dry run then cannot keep it from downloading).
    takes = "download" in inspect.signature(loader).parameters
    return loader(info, data_dir, download=download) if takes else loader(info, data_dir)


def augment_spec(info: DatasetInfo, h: int, w: int) -> AugmentSpec:
    """The record's augmentation; for a user npz (none declared), by image size: CIFAR-like
    (flip + 4 px shift) from 32 px, flip + 2 px shift from 16 px, and a 1 px shift without flip
    for tiny (digits-like) images."""
    if info.flip is not None and info.shift_px is not None:
        return AugmentSpec(flip=info.flip, pad=info.shift_px)
    side = min(h, w)
    if side >= 32:
        return AugmentSpec(flip=True, pad=4)
    if side >= 16:
        return AugmentSpec(flip=True, pad=2)
    return AugmentSpec(flip=False, pad=1)


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes proportionally to `counts` (integers summing to `total`;
    the leftover units go to the largest fractional parts, ties to the lower class id)."""
    exact = counts * total / counts.sum()
    out = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    return out


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float64 [1797, 8, 8] with values 0..16, labels [1797]): scikit-learn's bundled
    digits, exactly as sklearn.datasets.load_digits returns them. Read straight from its
    digits.csv.gz, as load_digits does (np.loadtxt), located without importing scikit-learn:
    that import (scipy included) costs more than a small run's training. Falls back to
    load_digits where the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")          # finds the package; imports nothing
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, mode="rt", encoding="utf-8") as fh:
                data = np.loadtxt(fh, delimiter=",")     # [1797, 65]: 64 pixels, then the label
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits   # lazy: scikit-learn only where its file was not found
    d = load_digits()
    return d.images, d.target


def load_digits(info: DatasetInfo, data_dir: str, download: bool = True) -> Dataset:
    """scikit-learn's bundled 8x8 digits (no download): 1797 images, values 0..16 mapped to
    0..255, split once into 1297 train / 500 test, stratified, with a fixed seed. The legacy
    RandomState stream is frozen by numpy, so the split is identical on every machine."""
    images, target = digits_arrays()
    x = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    y = target.astype(np.int64)
    classes = np.arange(10)
    n_test = _largest_remainder(np.bincount(y, minlength=10), DIGITS_N_TEST)
    rs = np.random.RandomState(DIGITS_SPLIT_SEED)
    test = np.concatenate([rs.permutation(np.flatnonzero(y == c))[: n_test[c]] for c in classes])
    is_test = np.zeros(len(y), bool)
    is_test[test] = True
    return Dataset("digits", x[~is_test], y[~is_test], x[is_test], y[is_test], 10, augment_spec(info, 8, 8))


def _nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 2, 3, 1))


def _torchvision_split(info: DatasetInfo, data_dir: str, download: bool, cls_name: str, **kw):
    """One split of torchvision's `cls_name` dataset in `data_dir` (download=True: a no-op when
    the files are already there and pass their checksum); failures are one-line errors."""
    import torchvision.datasets as tvd   # lazy: only these datasets need torchvision
    try:
        return getattr(tvd, cls_name)(root=data_dir, download=download, **kw)
    except (OSError, RuntimeError, EOFError, tarfile.TarError):
        if not download:
            raise DatasetNotLocal(f"dataset: '{info.name}' is not in '{data_dir}' (a launch downloads it)") from None
        # URLError is an OSError; torchvision raises RuntimeError on a bad checksum.
        raise ConfigError(f"dataset: cannot download '{info.name}' into '{data_dir}' (offline?); "
                          "put the files there or use npz:PATH") from None


def _torchvision_class(info: DatasetInfo) -> str:
    if not info.torchvision_class:
        raise ConfigError(f"dataset: the record of '{info.name}' names a torchvision loader but no "
                          "torchvision_class (mixmatch_core/datasets.py)")
    return info.torchvision_class


def load_cifar(info: DatasetInfo, data_dir: str, download: bool = True) -> Dataset:
    """CIFAR-10 or CIFAR-100 (the record's `torchvision_class`): .data is uint8 NHWC already."""
    cls = _torchvision_class(info)
    tr, te = (_torchvision_split(info, data_dir, download, cls, train=t) for t in (True, False))
    return Dataset(info.name, np.ascontiguousarray(tr.data), np.asarray(tr.targets, np.int64),
                   np.ascontiguousarray(te.data), np.asarray(te.targets, np.int64),
                   info.n_classes, augment_spec(info, info.image_px, info.image_px))


def load_svhn(info: DatasetInfo, data_dir: str, download: bool = True) -> Dataset:
    """SVHN with the record's `train_splits` ("train", or "train" + "extra"): .data is uint8
    NCHW; torchvision already maps the '10' label of digit 0 to 0. The extra images join the
    training set, labels and all, as in the official 'svhn' (with extra) dataset, whose labeled
    split is drawn from train+extra (create_split.py svhn-train.tfrecord svhn-extra.tfrecord:
    the same image order)."""
    cls = _torchvision_class(info)
    trs = [_torchvision_split(info, data_dir, download, cls, split=s) for s in info.train_splits]
    te = _torchvision_split(info, data_dir, download, cls, split="test")
    y = np.concatenate([np.asarray(t.labels, np.int64) for t in trs])
    return Dataset(info.name, np.concatenate([_nchw_to_nhwc(t.data) for t in trs]), y,
                   _nchw_to_nhwc(te.data), np.asarray(te.labels, np.int64), info.n_classes,
                   augment_spec(info, info.image_px, info.image_px), split_labels=svhn_official_classes(y))


def load_stl10(info: DatasetInfo, data_dir: str, download: bool = True) -> Dataset:
    """STL-10: labels from 'train' (5000); 'unlabeled' (100,000) only joins the unlabeled pool;
    the predefined folds from the record's `folds_file` (relative to data_dir)."""
    cls = _torchvision_class(info)
    tr, te, unl = (_torchvision_split(info, data_dir, download, cls, split=s) for s in ("train", "test", "unlabeled"))
    return Dataset(info.name, _nchw_to_nhwc(tr.data), np.asarray(tr.labels, np.int64),
                   _nchw_to_nhwc(te.data), np.asarray(te.labels, np.int64), info.n_classes,
                   augment_spec(info, info.image_px, info.image_px), x_unlabeled_extra=_nchw_to_nhwc(unl.data),
                   label_folds=read_folds(os.path.join(data_dir, info.folds_file)),
                   equal_class_draw=info.equal_class_draw)


def svhn_official_classes(y: np.ndarray) -> np.ndarray:
    """SVHN class ids as the official code numbers them: the .mat files label digit d as d (1..9)
    and digit 0 as 10, and scripts/create_datasets.py subtracts 1 (digit 1 -> class 0, ...,
    digit 0 -> class 9), while torchvision maps 10 -> 0 (class = digit). The per-class shuffles
    of create_split.py run in class order and its greedy draw breaks ties toward the lowest
    class id, so the official labeled split needs the official ids."""
    return (np.asarray(y, np.int64) + 9) % 10


def read_folds(path: str) -> tuple[np.ndarray, ...]:
    """STL-10's predefined labeled folds (stl10_binary/fold_indices.txt): one line per fold of
    0-based indices into the 5000 training images; create_split.py takes line `seed`."""
    try:
        with open(path) as fh:
            lines = [ln.split() for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        raise ConfigError(f"dataset: STL-10 fold file '{path}' cannot be read; put the dataset's "
                          "stl10_binary/ files into data_dir") from None
    return tuple(np.asarray(list(map(int, ln)), np.int64) for ln in lines)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(info: DatasetInfo, data_dir: str, download: bool = True) -> Dataset:
    """A user dataset `npz:PATH`: numpy .npz with x_train, y_train, x_test, y_test. Images uint8
    [N, H, W, C] or [N, H, W] (grayscale, C = 1 is added); labels integers >= 0;
    n_classes = max label + 1 over train and test."""
    path = info.name[len("npz:"):]
    where = f"dataset: npz file '{path}'"
    if not os.path.isfile(path):
        raise ConfigError(f"{where} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise ConfigError(f"{where} lacks key(s) {', '.join(missing)}; "
                                  f"needs {', '.join(NPZ_KEYS)}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except ConfigError:
        raise
    except Exception as e:  # not a zip, truncated, object arrays (pickle refused), ...
        raise ConfigError(f"{where} cannot be read as npz ({type(e).__name__})") from None

    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise ConfigError(f"{where}: x_{split} must be uint8 images (0..255), got {x.dtype}")
        if x.ndim == 3:
            x = arrays[f"x_{split}"] = x[..., None]
        if x.ndim != 4 or min(x.shape[1:3]) < 2:
            raise ConfigError(f"{where}: x_{split} must be [N, H, W, C] or [N, H, W] with H, W >= 2, "
                              f"got shape {tuple(arrays[f'x_{split}'].shape)}")
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ConfigError(f"{where}: y_{split} must be 1-D integer labels, got {y.dtype} "
                              f"shape {tuple(y.shape)}")
        if len(x) != len(y):
            raise ConfigError(f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) == 0:
            raise ConfigError(f"{where}: x_{split} is empty")
        if y.min() < 0:
            raise ConfigError(f"{where}: y_{split} has negative labels; labels must be 0..n_classes-1")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ConfigError(f"{where}: train images are {arrays['x_train'].shape[1:]} (H, W, C) but "
                          f"test images are {arrays['x_test'].shape[1:]}")
    n_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    name = os.path.basename(path).removesuffix(".npz")
    return Dataset(name, np.ascontiguousarray(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                   np.ascontiguousarray(arrays["x_test"]), arrays["y_test"].astype(np.int64),
                   n_classes, augment_spec(info, *arrays["x_train"].shape[1:3]))


# ---- splits -------------------------------------------------------------------------------------
def draw_counts(class_counts: np.ndarray, n: int) -> np.ndarray:
    """How many of `n` labels each class gets: the official greedy draw (scripts/create_split.py).

    Label i goes to the class with the largest `train_stats - npos / max(npos.max(), 1)`, where
    train_stats is each class's share of the training set relative to the largest class and npos
    counts the labels drawn so far (ties go to the lowest class id). It keeps npos proportional to
    the class frequencies: equal counts (CIFAR, STL-10) give a round robin, exactly n / n_classes
    per class; SVHN's skewed digits give a skewed labeled set. Same float64 expression as the
    official code, so ties break the same way."""
    train_stats = np.asarray(class_counts, np.float64)
    train_stats = train_stats / train_stats.max()
    npos = np.zeros(len(train_stats), np.int64)
    for _ in range(n):
        npos[np.argmax(train_stats - npos / max(npos.max(), 1))] += 1
    return npos


def split_labeled(y: np.ndarray, n_labeled: int, n_classes: int, seed: int, val_size: int = 0,
                  folds: tuple[np.ndarray, ...] | None = None,
                  equal_class_draw: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labeled_idx, unlabeled_idx, val_idx): sorted int64 indices into the training set.

    Official protocol (scripts/create_split.py): `np.random.seed(seed)`, then each class's index
    list, in class order, is shuffled once (RandomState(seed).permutation draws the same stream:
    numpy's frozen legacy generator, the same split on every machine); `draw_counts` says how
    many labels each class gets, and they are the first ones of the class's shuffle. So on data in
    the official order with the official class ids (`Dataset.split_labels`) seed s selects the
    official labeled set of seed s. All the rest is unlabeled: labeled images never join it.

    - `val_size` (ours; the official runs use none but one image, see experiments/): the
      validation images are taken first from each class's shuffle (`val_size` split over the
      classes in proportion to their sizes), the labels from what follows.
    - `n_labeled` = every image left after val_size: every image is labeled (the fully
      supervised runs, fully_supervised/fs_*.py, train on the whole training set).
    - `folds` (STL-10): at n_labeled == the fold size the labeled set is the predefined fold
      `seed` (create_split reads line `seed` of stl10_fold_indices.txt), not a seeded draw.
    - `equal_class_draw` (STL-10): `draw_counts` sees equal class counts, as create_split.py's
      STL-10 branch sets train_stats to 1 for every class.
    """
    y = np.asarray(y)
    n = len(y)
    if n_labeled <= 0:
        raise ConfigError(f"n_labeled: must be positive, got {n_labeled}")
    if n_labeled > n:
        raise ConfigError(f"n_labeled: {n_labeled} exceeds the {n} training images")
    if val_size < 0 or val_size + n_labeled > n:
        raise ConfigError(f"val_size: {val_size} + n_labeled {n_labeled} exceeds the {n} training images")
    counts = np.bincount(y, minlength=n_classes)
    n_val = _largest_remainder(counts, val_size) if val_size else np.zeros(n_classes, np.int64)
    fold = _predefined_fold(folds, n_labeled, seed, n)
    if fold is not None or n_labeled == n - val_size:
        n_lab = np.zeros(n_classes, np.int64)           # the labeled set is fixed, not drawn
    else:
        n_lab = draw_counts(np.ones(n_classes) if equal_class_draw else counts, n_labeled)
    rs = np.random.RandomState(seed)
    labeled, val = [], []
    for c in range(n_classes):
        idx = rs.permutation(np.flatnonzero(y == c))
        if fold is not None:                             # val from the non-fold images of the class
            val.append(idx[~fold[idx]][: n_val[c]])
            continue
        if n_val[c] + n_lab[c] > len(idx):
            raise ConfigError(f"n_labeled: {n_labeled} needs {n_lab[c]} images of class {c} but it has "
                              f"only {len(idx)} training images" + (f" ({n_val[c]} went to val_size)"
                                                                    if n_val[c] else ""))
        val.append(idx[: n_val[c]])
        labeled.append(idx[n_val[c]: n_val[c] + n_lab[c]])
    return _assemble(n, np.concatenate(val).astype(np.int64), fold, labeled, every_image=n_labeled == n - val_size)


def _assemble(n: int, val_idx: np.ndarray, fold: np.ndarray | None, labeled: list[np.ndarray],
              every_image: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labeled, unlabeled, val) sorted indices: the fold, or every non-val image, or the drawn
    labels; all the rest is unlabeled."""
    rest = np.ones(n, bool)
    rest[val_idx] = False
    if fold is not None:
        lab_idx = np.flatnonzero(fold)
    elif every_image:
        lab_idx = np.flatnonzero(rest)
    else:
        lab_idx = np.concatenate(labeled).astype(np.int64)
    rest[lab_idx] = False
    return np.sort(lab_idx).astype(np.int64), np.flatnonzero(rest).astype(np.int64), np.sort(val_idx)


def _predefined_fold(folds: tuple[np.ndarray, ...] | None, n_labeled: int, seed: int, n: int) -> np.ndarray | None:
    """A mask of fold `seed` when the labeled set is a predefined fold (STL-10 at 1000 labels)."""
    if not folds or n_labeled != len(folds[0]):
        return None
    if not 0 <= seed < len(folds):
        raise ConfigError(f"seed: at n_labeled={n_labeled} the labeled set is a predefined fold; "
                          f"allowed: 0..{len(folds) - 1}, got {seed}")
    fold = np.zeros(n, bool)
    fold[np.asarray(folds[seed], np.int64)] = True
    return fold


# ---- device-resident data -----------------------------------------------------------------------
class _EpochSampler:
    """Draws batches of indices 0..n-1 from successive random permutations on the device.

    A permutation (global torch RNG of `device`) is consumed in order; when it runs out a new
    one is drawn, so every index appears exactly once per epoch. A batch may straddle two
    epochs (or several, when n < batch). The position is a host-side int, so drawing a batch
    never reads the device. The first permutation is drawn by the first batch, so building
    the data consumes no RNG."""

    def __init__(self, n: int, device: torch.device):
        self.n, self.device = n, device
        self.perm = torch.empty(0, dtype=torch.int64, device=device)
        self.pos = 0  # next unread position in self.perm

    def next(self, batch: int) -> Tensor:
        if self.n == 0:
            raise ValueError("cannot sample from an empty set")
        pieces, need = [], batch
        while need > 0:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.n, device=self.device)
                self.pos = 0
            take = min(need, self.n - self.pos)
            pieces.append(self.perm[self.pos: self.pos + take])
            self.pos += take
            need -= take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm = state["perm"].to(self.device)
        self.pos = int(state["pos"])


@dataclass
class Split:
    """A run's split on the host: sorted indices into its labeled pool (the training set, then,
    when `pooled`, STL-10's unlabeled split with label 0) and the pool's true labels."""
    labeled: np.ndarray
    unlabeled: np.ndarray
    val: np.ndarray
    y_true: np.ndarray
    pooled: bool
    n_extra: int            # unlabeled-only images (STL-10's unlabeled split) outside the pool

    @property
    def n_unlabeled(self) -> int:
        return len(self.unlabeled) + (0 if self.pooled else self.n_extra)

    def images(self, ds: Dataset, idx: np.ndarray) -> np.ndarray:
        """Images of sorted pool indices: the training set, then (pooled) the unlabeled split."""
        n = len(ds.x_train)
        if not self.pooled or idx.size == 0 or idx[-1] < n:
            return ds.x_train[idx]
        return np.concatenate([ds.x_train[idx[idx < n]], ds.x_unlabeled_extra[idx[idx >= n] - n]])


def draw_split(ds: Dataset, n_labeled: int, seed: int, val_size: int, labeled_pool: str = "train") -> Split:
    """`split_labeled` over the run's labeled pool (LABELED_POOLS); every data-dependent error
    of a run's split is a one-line ConfigError raised here, on the host."""
    y_split = ds.y_train if ds.split_labels is None else ds.split_labels
    y_true, extra = ds.y_train, ds.x_unlabeled_extra
    pooled = labeled_pool == "train+unlabeled"
    allowed = LABELED_POOLS if extra is not None else LABELED_POOLS[:1]
    if labeled_pool not in allowed:
        raise ConfigError(f"labeled_pool: '{labeled_pool}' is not one of {', '.join(allowed)} "
                          f"for dataset '{ds.name}'")
    if pooled:                                       # the unlabeled split joins with label 0
        zeros = np.zeros(len(extra), np.int64)
        y_split, y_true = np.concatenate([y_split, zeros]), np.concatenate([y_true, zeros])
    lab, unl, val = split_labeled(y_split, n_labeled, ds.n_classes, seed, val_size, ds.label_folds,
                                  ds.equal_class_draw)
    return Split(lab, unl, val, y_true, pooled, 0 if extra is None else len(extra))


class DeviceData:
    """All images of a run on one device as uint8 NHWC, with the samplers and batch functions.

    Training images (labeled and unlabeled pools) are stored reflect-padded by the dataset's
    augmentation pad, so a batch is one gather; test and val images are stored unpadded."""

    def __init__(self, *, spec: AugmentSpec, n_classes: int, device: torch.device, channels_last: bool,
                 x_labeled: Tensor, y_labeled: Tensor, x_unlabeled: Tensor,
                 x_test: Tensor, y_test: Tensor, x_val: Tensor, y_val: Tensor):
        self.spec, self._n_classes, self.device, self.channels_last = spec, n_classes, device, channels_last
        self.x_labeled, self.y_labeled, self.x_unlabeled = x_labeled, y_labeled, x_unlabeled
        self.x_test, self.y_test, self.x_val, self.y_val = x_test, y_test, x_val, y_val
        self.labeled_sampler = _EpochSampler(len(x_labeled), device)
        self.unlabeled_sampler = _EpochSampler(len(x_unlabeled), device)

    @classmethod
    def build(cls, ds: Dataset, n_labeled: int, seed: int, val_size: int, device: torch.device | str,
              channels_last: bool, labeled_pool: str = "train") -> "DeviceData":
        """Split `ds` (`draw_split`) and copy everything to `device` once."""
        device = torch.device(device)
        sp = draw_split(ds, n_labeled, seed, val_size, labeled_pool)

        def put(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        pad = ds.augment.pad
        x_unl = sp.images(ds, sp.unlabeled)
        if ds.x_unlabeled_extra is not None and not sp.pooled:
            x_unl = np.concatenate([x_unl, ds.x_unlabeled_extra])
        return cls(spec=ds.augment, n_classes=ds.n_classes, device=device, channels_last=channels_last,
                   x_labeled=pad_reflect(put(sp.images(ds, sp.labeled)), pad), y_labeled=put(sp.y_true[sp.labeled]),
                   x_unlabeled=pad_reflect(put(x_unl), pad),
                   x_test=put(ds.x_test), y_test=put(ds.y_test),
                   x_val=put(sp.images(ds, sp.val)), y_val=put(sp.y_true[sp.val]))

    # -- properties ------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def in_channels(self) -> int:
        return int(self.x_test.shape[3])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model input in pixels (unpadded)."""
        return int(self.x_test.shape[1]), int(self.x_test.shape[2])

    @property
    def n_labeled(self) -> int:
        return len(self.x_labeled)

    @property
    def n_unlabeled(self) -> int:
        return len(self.x_unlabeled)

    @property
    def n_val(self) -> int:
        return len(self.x_val)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    # -- training batches ------------------------------------------------------------------------
    def labeled_batch(self, batch: int) -> tuple[Tensor, Tensor]:
        """(x float32 [B, C, H, W] in [-1, 1], y int64 [B]): B labeled images from the epoch
        sampler, each augmented once (Algorithm 1 line 2)."""
        x, y = self._labeled_weak(batch)
        return to_float(x, self.channels_last), y

    def _labeled_weak(self, batch: int) -> tuple[Tensor, Tensor]:
        idx = self.labeled_sampler.next(batch)
        return augment_batch(self.x_labeled, self.spec, index=idx), self.y_labeled[idx]

    def draw(self, views: Views, batch: int, strong=None) -> tuple[Tensor, Tensor, Unlabeled, Probe | None]:
        """One step's named views (views.py): the labeled batch (x, y) of `batch` images, the
        unlabeled views of `views.uratio * batch` images and CTAugment's probe. `strong`
        (strong.py) applies the run's strong augmentation to uint8 images and draws the probe.
        The draws come in a fixed order: labeled indices and flip-and-shift, the labeled
        strong augmentation, the unlabeled indices, the weak views, the strong views, the probe.
        For weak views only this is exactly `labeled_batch` then `unlabeled_batch`."""
        if views.needs_strong and strong is None:
            raise ValueError(f"{views} needs a strong augmentation")
        xl, y = self._labeled_weak(batch)
        x = strong(xl) if views.labeled == "strong" else xl
        u = Unlabeled()
        if views.n_unlabeled:
            self._check_unlabeled()
            idx = self.unlabeled_sampler.next(batch * views.uratio)
            weak = [augment_batch(self.x_unlabeled, self.spec, index=idx) for _ in range(views.weak)]
            hard = [strong(augment_batch(self.x_unlabeled, self.spec, index=idx)) for _ in range(views.strong)]
            u = Unlabeled([to_float(v, self.channels_last) for v in weak], [to_float(v, self.channels_last) for v in hard])
        probe = None
        if views.probe:
            px, policy = strong.probe(xl)
            probe = Probe(to_float(px, self.channels_last), y, policy)
        return to_float(x, self.channels_last), y, u, probe

    def _check_unlabeled(self) -> None:
        if self.n_unlabeled == 0:
            raise ValueError("the unlabeled set is empty (n_labeled + val_size uses every training "
                             "image); use method=supervised")

    def unlabeled_batch(self, batch: int, K: int) -> list[Tensor]:
        """K float32 tensors [B, C, H, W] in [-1, 1]: the same B unlabeled images under K
        independent augmentations (Algorithm 1 lines 3-5)."""
        self._check_unlabeled()
        idx = self.unlabeled_sampler.next(batch)
        return [to_float(augment_batch(self.x_unlabeled, self.spec, index=idx), self.channels_last)
                for _ in range(K)]

    # -- evaluation -------------------------------------------------------------------------------
    def eval_batches(self, split: str, batch: int = 1024) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x float32 [b, C, H, W] in [-1, 1], y int64 [b]) over the whole `split`
        ('test' or 'val') in order, without augmentation."""
        if split == "test":
            x, y = self.x_test, self.y_test
        elif split == "val":
            if self.n_val == 0:
                raise ValueError("there is no 'val' split: val_size is 0")
            x, y = self.x_val, self.y_val
        else:
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        for i in range(0, len(x), batch):
            yield to_float(x[i: i + batch], self.channels_last), y[i: i + batch]

    # -- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Sampler state (tensors and ints only, loadable with torch.load(weights_only=True)).
        With the global RNG state, it makes a resumed run draw the same batches."""
        return {"labeled": self.labeled_sampler.state_dict(),
                "unlabeled": self.unlabeled_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.labeled_sampler.load_state_dict(state["labeled"])
        self.unlabeled_sampler.load_state_dict(state["unlabeled"])
