"""Specification of data.py: loaders, the official labeled split, and device-resident batches."""

import dataclasses
import importlib.util
import io
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from mixmatch_core.augment import AugmentSpec
from mixmatch_core.config import ConfigError, resolve
from mixmatch_core.data import Dataset, DeviceData, digits_arrays, load_dataset, split_labeled


def one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


# ---- split_labeled -------------------------------------------------------------------------------
def shuffled_labels(per_class=30, n_classes=10, seed=0):
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(n_classes), per_class))


@pytest.mark.parametrize("n_labeled", [10, 50, 100])
@pytest.mark.parametrize("val_size", [0, 20])
def test_split_is_balanced_per_class(n_labeled, val_size):
    y = shuffled_labels()
    lab, unl, val = split_labeled(y, n_labeled, 10, seed=1, val_size=val_size)
    assert np.bincount(y[lab], minlength=10).tolist() == [n_labeled // 10] * 10
    assert np.bincount(y[val], minlength=10).tolist() == [val_size // 10] * 10


@pytest.mark.parametrize("val_size", [0, 20, 7])
def test_split_sets_are_disjoint_and_cover_the_training_set(val_size):
    y = shuffled_labels()
    lab, unl, val = split_labeled(y, 50, 10, seed=2, val_size=val_size)
    assert (len(lab), len(val)) == (50, val_size)
    both = np.concatenate([lab, unl, val])
    assert len(both) == len(y) and np.array_equal(np.sort(both), np.arange(len(y)))
    assert all(a.dtype == np.int64 for a in (lab, unl, val))


def test_val_split_of_imbalanced_labels_is_stratified():
    y = np.repeat([0, 1], [90, 30])
    _, _, val = split_labeled(y, 10, 2, seed=1, val_size=20)
    assert np.bincount(y[val]).tolist() == [15, 5]


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    y = shuffled_labels()
    a = split_labeled(y, 50, 10, seed=1, val_size=10)
    b = split_labeled(y, 50, 10, seed=1, val_size=10)
    c = split_labeled(y, 50, 10, seed=2, val_size=10)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_split_is_the_same_on_every_machine():
    # numpy's legacy RandomState stream is frozen, so this golden value must never change.
    lab, unl, val = split_labeled(np.arange(15) % 3, 3, 3, seed=1, val_size=3)
    assert lab.tolist() == [3, 7, 11]
    assert val.tolist() == [1, 6, 8]
    assert unl.tolist() == [0, 2, 4, 5, 9, 10, 12, 13, 14]


@pytest.mark.parametrize("n_labeled, val_size, field", [
    (310, 0, "n_labeled"),    # more than the 300 training images
    (0, 0, "n_labeled"),      # (a multiple of the class count is a per-dataset rule: config.validate)
    (300, 10, "val_size"),    # val + labeled exceed the training set
])
def test_impossible_split_raises_one_line_config_error(n_labeled, val_size, field):
    with pytest.raises(ConfigError) as e:
        split_labeled(shuffled_labels(), n_labeled, 10, seed=1, val_size=val_size)
    assert one_line_error(e).startswith(field + ":")


def test_split_names_the_class_whose_images_went_to_val_size():
    # val_size 16 over [10, 10, 2] -> 7, 7, 2; the draw's first round wants one image of class 2
    y = np.repeat([0, 1, 2], [10, 10, 2])
    with pytest.raises(ConfigError) as e:
        split_labeled(y, 3, 3, seed=1, val_size=16)
    one_line_error(e, "n_labeled:", "class 2", "only 2", "2 went to val_size")


# create_split.py's labeled draw, re-implemented here from reading the official script (not
# from data.py): np.random.seed(seed); shuffle each class's index list in class order with the
# global numpy RNG; then label i goes to argmax(train_stats - npos / max(npos.max(), 1)) with
# train_stats = class counts / the largest count, taking that class's next shuffled index.
# `stl10`: the script's STL-10 branch, train_stats set to 1 for every class.
def create_split_labeled(y: np.ndarray, size: int, seed: int, stl10: bool = False) -> list[int]:
    nclass = int(y.max()) + 1
    class_id = [np.flatnonzero(y == i).astype(np.int64) for i in range(nclass)]
    train_stats = np.array([len(c) for c in class_id], np.float64)
    train_stats /= train_stats.max()
    if stl10:
        train_stats[:] = 1
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        for i in range(nclass):
            np.random.shuffle(class_id[i])
    finally:
        np.random.set_state(saved)
    npos = np.zeros(nclass, np.int64)
    label = []
    for _ in range(size):
        c = np.argmax(train_stats - npos / max(npos.max(), 1))
        label.append(int(class_id[c][npos[c]]))
        npos[c] += 1
    return sorted(label)


# SVHN's training-set class counts (official class ids: digit 1 first, digit 0 last), / 10.
SVHN_COUNTS_10 = np.array([1386, 1059, 850, 746, 688, 573, 560, 505, 466, 495])


def svhn_like_labels(seed=0):
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(10), SVHN_COUNTS_10))


@pytest.mark.parametrize("labels", ["cifar_like", "svhn_like"])
@pytest.mark.parametrize("size", [250, 1000, 4000, 255])
@pytest.mark.parametrize("seed", [1, 3, 5])
def test_split_selects_the_images_create_split_selects(labels, size, seed):
    # So on data in the official order and class ids, seed 3 is table4.sh's split, and so on.
    y = shuffled_labels(per_class=500) if labels == "cifar_like" else svhn_like_labels()
    lab, unl, val = split_labeled(y, size, 10, seed=seed)
    assert lab.tolist() == create_split_labeled(y, size, seed)
    assert len(val) == 0 and np.array_equal(np.sort(np.concatenate([lab, unl])), np.arange(len(y)))


CIFAR10_NPZ = "/work/shared/datasets/cifar10.npz"


@pytest.mark.skipif(not os.path.isfile(CIFAR10_NPZ), reason=f"real CIFAR-10 not at {CIFAR10_NPZ}")
@pytest.mark.parametrize("size", [250, 4000])
def test_split_seed_3_on_real_cifar10_labels_is_create_splits_draw_and_balanced(size):
    # This copy's images are in a fixed shuffled order (its README), so these are not the
    # official images; through torchvision (the official batch order) they are.
    with np.load(CIFAR10_NPZ, allow_pickle=False) as f:
        y = f["y_train"].astype(np.int64)
    lab, _, _ = split_labeled(y, size, 10, seed=3)
    assert lab.tolist() == create_split_labeled(y, size, 3)
    assert np.bincount(y[lab], minlength=10).tolist() == [size // 10] * 10


@pytest.mark.parametrize("size", [250, 500, 1000, 2000, 4000])
def test_split_of_balanced_classes_is_balanced_as_create_split_draws_it(size):
    lab, _, _ = split_labeled(shuffled_labels(per_class=500), size, 10, seed=1)
    assert np.bincount(shuffled_labels(per_class=500)[lab]).tolist() == [size // 10] * 10


def test_split_of_skewed_classes_follows_the_class_frequencies():
    y = svhn_like_labels()
    lab, _, _ = split_labeled(y, 1000, 10, seed=1)
    got = np.bincount(y[lab], minlength=10)
    want = 1000 * SVHN_COUNTS_10 / SVHN_COUNTS_10.sum()
    assert np.abs(got - want).max() <= 1.5 and got.sum() == 1000
    assert got.tolist() != [100] * 10


def test_split_with_every_image_labeled_leaves_no_unlabeled_image():
    # fully_supervised/fs_*.py train on the whole training set
    y = svhn_like_labels()
    lab, unl, val = split_labeled(y, len(y), 10, seed=1)
    assert np.array_equal(lab, np.arange(len(y))) and len(unl) == 0 and len(val) == 0
    lab, unl, val = split_labeled(y, len(y) - 50, 10, seed=1, val_size=50)
    assert len(lab) == len(y) - 50 and len(unl) == 0 and len(val) == 50


FOLDS = tuple(np.arange(i, 100, 10)[:6] for i in range(10))   # ten disjoint 6-image folds


def test_split_at_the_fold_size_is_the_predefined_fold_of_the_seed():
    y = np.arange(100) % 5
    for seed in (0, 1, 3, 9):
        lab, unl, val = split_labeled(y, 6, 5, seed=seed, folds=FOLDS)
        assert lab.tolist() == sorted(FOLDS[seed].tolist())
        assert len(unl) == 94 and not set(lab) & set(unl)


def test_split_at_the_fold_size_takes_val_images_outside_the_fold():
    lab, unl, val = split_labeled(np.arange(100) % 5, 6, 5, seed=2, val_size=10, folds=FOLDS)
    assert lab.tolist() == sorted(FOLDS[2].tolist()) and len(val) == 10 and not set(val) & set(lab)
    assert len(unl) == 84


@pytest.mark.parametrize("seed", [10, -1])
def test_split_at_the_fold_size_with_a_seed_outside_the_folds_is_one_line_naming_seed(seed):
    with pytest.raises(ConfigError) as e:
        split_labeled(np.arange(100) % 5, 6, 5, seed=seed, folds=FOLDS)
    assert one_line_error(e, "allowed: 0..9").startswith("seed:")


def test_split_at_other_sizes_ignores_the_folds():
    y = np.arange(100) % 5
    lab, _, _ = split_labeled(y, 10, 5, seed=1, folds=FOLDS)
    assert lab.tolist() == create_split_labeled(y, 10, 1)


# ---- loaders -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "unused")


def test_digits_has_a_fixed_1297_500_uint8_split(digits):
    assert digits.x_train.shape == (1297, 8, 8, 1) and digits.x_test.shape == (500, 8, 8, 1)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int64
    assert digits.n_classes == 10 and digits.augment == AugmentSpec(flip=False, pad=1)
    assert digits.x_train.max() == 255 and digits.x_train.min() == 0
    # Golden values: the same split on every machine; stratified (48..51 test images per class).
    assert digits.y_test[:12].tolist() == [3, 5, 7, 3, 6, 9, 2, 6, 0, 8, 7, 7]
    assert int(digits.x_test.sum(dtype=np.int64)) == 2475048
    assert np.bincount(digits.y_test).tolist() == [50, 51, 49, 51, 50, 51, 50, 50, 48, 50]


def test_digits_are_read_bit_identical_to_scikit_learns_loader():
    from sklearn.datasets import load_digits
    images, target = digits_arrays()
    d = load_digits()
    assert images.dtype == d.images.dtype and np.array_equal(images, d.images)
    assert np.array_equal(target, d.target)


def test_digits_fall_back_to_scikit_learn_where_its_file_is_not_found(monkeypatch):
    from sklearn.datasets import load_digits
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    images, target = digits_arrays()
    assert np.array_equal(images, load_digits().images) and np.array_equal(target, load_digits().target)


def test_loading_digits_imports_no_scikit_learn():
    code = ("import sys; from mixmatch_core.data import load_dataset; load_dataset('digits', 'unused'); "
            "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def write_npz(path, **overrides):
    arrays = dict(x_train=np.random.RandomState(0).randint(0, 256, (20, 32, 32, 3)).astype(np.uint8),
                  y_train=np.arange(20) % 4, x_test=np.zeros((6, 32, 32, 3), np.uint8),
                  y_test=np.arange(6) % 5)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


def test_a_loader_without_a_download_parameter_still_loads(tmp_path, monkeypatch):
    """A dataset record's loader may be written as loader(info, data_dir), without `download`."""
    import mixmatch_core.data as data
    real = data.load_npz
    monkeypatch.setattr(data, "load_npz", lambda info, data_dir: real(info, data_dir))
    assert len(load_dataset(write_npz(tmp_path / "toy.npz"), "unused", download=False).y_train) > 0


def test_npz_loads_uint8_nhwc_with_classes_from_the_max_label(tmp_path):
    ds = load_dataset(write_npz(tmp_path / "toy.npz"), "unused")
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (6, 32, 32, 3)
    assert ds.y_train.dtype == np.int64 and ds.n_classes == 5   # max label 4 (test) + 1
    assert ds.augment == AugmentSpec(flip=True, pad=4)          # 32x32: CIFAR-like


def test_npz_grayscale_gets_a_channel_axis_and_small_images_shift_only(tmp_path):
    path = write_npz(tmp_path / "g.npz", x_train=np.zeros((20, 8, 8), np.uint8),
                     x_test=np.zeros((6, 8, 8), np.uint8))
    ds = load_dataset(path, "unused")
    assert ds.x_train.shape == (20, 8, 8, 1) and ds.x_test.shape == (6, 8, 8, 1)
    assert ds.augment == AugmentSpec(flip=False, pad=1)


@pytest.mark.parametrize("overrides, fragment", [
    (dict(y_test=None), "lacks key(s) y_test"),
    (dict(x_train=None, y_test=None), "lacks key(s) x_train, y_test"),
    (dict(x_train=np.zeros((20, 32, 32, 3), np.float32)), "must be uint8"),
    (dict(y_train=np.arange(19)), "has 20 images but y_train has 19"),
    (dict(y_train=np.linspace(0, 1, 20)), "integer labels"),
    (dict(x_test=np.zeros((6, 16, 16, 3), np.uint8)), "test images are"),
    (dict(x_test=np.zeros((6, 32), np.uint8)), "x_test must be"),
])
def test_bad_npz_raises_one_line_config_error_naming_the_file(tmp_path, overrides, fragment):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ConfigError) as e:
        load_dataset(path, "unused")
    one_line_error(e, "dataset:", str(tmp_path / "bad.npz"), fragment)


def test_missing_npz_file_raises_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_dataset(f"npz:{tmp_path}/nope.npz", "unused")
    one_line_error(e, f"{tmp_path}/nope.npz", "does not exist")


def test_file_that_is_not_npz_raises_one_line_config_error(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ConfigError) as e:
        load_dataset(f"npz:{tmp_path}/junk.npz", "unused")
    one_line_error(e, "junk.npz", "cannot be read")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "svhn_extra", "stl10"])
def test_torchvision_download_failure_is_a_one_line_config_error(tmp_path, monkeypatch, name):
    def offline(*args, **kwargs):  # never touch the network, even on a connected machine
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConfigError) as e:
        load_dataset(name, str(tmp_path))
    one_line_error(e, f"dataset: cannot download '{name}' into '{tmp_path}'", "npz:PATH")


def test_unknown_dataset_raises_config_error():
    with pytest.raises(ConfigError) as e:
        load_dataset("mnist", "unused")
    one_line_error(e, "dataset: unknown 'mnist'")


# Fakes of torchvision's SVHN and STL10 classes: small synthetic arrays in their formats (uint8
# NCHW images; SVHN labels with digit 0 as class 0 as torchvision gives them; STL-10's
# stl10_binary/fold_indices.txt of 0-based indices into the training images), no download.
class FakeSVHN:
    sizes = {"train": 300, "extra": 200, "test": 50}

    def __init__(self, root, split, download):
        n = self.sizes[split]
        rs = np.random.RandomState(len(split))
        digits = np.repeat(np.arange(10), np.maximum(1, (SVHN_COUNTS_10 * n) // SVHN_COUNTS_10.sum()))
        self.labels = rs.permutation(np.resize(np.roll(digits, 1), n))      # digit 1 most frequent
        self.data = rs.randint(0, 256, (n, 3, 32, 32)).astype(np.uint8)


class FakeSTL10:
    def __init__(self, root, split, download):
        n = {"train": 100, "test": 40, "unlabeled": 60}[split]
        self.data = np.full((n, 3, 96, 96), {"train": 1, "test": 2, "unlabeled": 3}[split], np.uint8)
        self.labels = np.arange(n) % 10 if split != "unlabeled" else np.full(n, -1)


@pytest.fixture
def fake_tv(monkeypatch, tmp_path):
    import torchvision.datasets as tvd
    monkeypatch.setattr(tvd, "SVHN", FakeSVHN)
    monkeypatch.setattr(tvd, "STL10", FakeSTL10)
    (tmp_path / "stl10_binary").mkdir()
    (tmp_path / "stl10_binary" / "fold_indices.txt").write_text(
        "\n".join(" ".join(map(str, f)) for f in FOLDS) + "\n")
    return tmp_path


class FakeCIFAR10:
    def __init__(self, root, train, download):
        n = 50 if train else 20
        self.data, self.targets = np.zeros((n, 32, 32, 3), np.uint8), list(np.arange(n) % 10)


def _recording(base, built: list):
    """`base` that appends its torchvision name to `built` when constructed."""
    class Recording(base):
        def __init__(self, *args, **kwargs):
            built.append(base.__name__.removeprefix("Fake"))
            super().__init__(*args, **kwargs)
    return Recording


@pytest.mark.parametrize("name, wanted", [("cifar10", "CIFAR10"), ("svhn", "SVHN"), ("stl10", "STL10")])
def test_a_record_under_a_new_name_loads_what_its_record_says_not_stl10(fake_tv, monkeypatch, name, wanted):
    """The record names the loader and its facts; the name is only a key. A copy of a record
    under a name no loader has heard of loads the same torchvision dataset (it once fell into
    the STL-10 branch of a loader that switched on the name)."""
    import torchvision.datasets as tvd
    from mixmatch_core import datasets
    built = []
    for base in (FakeCIFAR10, FakeSVHN, FakeSTL10):
        monkeypatch.setattr(tvd, base.__name__.removeprefix("Fake"), _recording(base, built))
    monkeypatch.setitem(datasets.DATASETS, "mnist", dataclasses.replace(datasets.DATASETS[name], name="mnist"))
    ds = load_dataset("mnist", str(fake_tv))
    assert set(built) == {wanted} and ds.name == "mnist"
    assert (ds.label_folds is not None) == (wanted == "STL10")


@pytest.mark.parametrize("name, n_train", [("svhn", 300), ("svhn_extra", 500)])
def test_svhn_splits_on_the_official_class_ids(fake_tv, name, n_train):
    ds = load_dataset(name, str(fake_tv))
    assert len(ds.y_train) == n_train and ds.split_labels is not None
    # the official ids: the .mat label minus 1, i.e. digit 1 -> 0, ..., digit 0 -> 9
    mat = np.where(ds.y_train == 0, 10, ds.y_train)
    assert np.array_equal(ds.split_labels, mat - 1)
    d = DeviceData.build(ds, n_labeled=25, seed=3, val_size=0, device="cpu", channels_last=False)
    want = create_split_labeled(ds.split_labels, 25, 3)
    assert torch.equal(d.y_labeled, torch.from_numpy(ds.y_train[want]))        # labels stay digits
    assert torch.equal(d.x_labeled[:, 4:-4, 4:-4], torch.from_numpy(ds.x_train[want]))  # unpadded
    # the class order matters: drawn on torchvision's ids the same seed picks other images
    assert split_labeled(ds.y_train, 25, 10, seed=3)[0].tolist() != want


def test_stl10_at_the_fold_size_labels_the_fold_of_the_seed(fake_tv):
    ds = load_dataset("stl10", str(fake_tv))
    assert len(ds.label_folds) == 10 and ds.x_unlabeled_extra.shape == (60, 96, 96, 3)
    d = DeviceData.build(ds, n_labeled=6, seed=4, val_size=0, device="cpu", channels_last=False)
    assert torch.equal(d.y_labeled, torch.from_numpy(ds.y_train[np.sort(FOLDS[4])]))
    assert (d.n_labeled, d.n_unlabeled) == (6, 94 + 60)


def test_stl10_with_every_labeled_image_keeps_the_unlabeled_split_as_the_unlabeled_pool(fake_tv):
    ds = load_dataset("stl10", str(fake_tv))
    d = DeviceData.build(ds, n_labeled=100, seed=1, val_size=0, device="cpu", channels_last=False)
    assert (d.n_labeled, d.n_unlabeled) == (100, 60)
    assert (d.x_unlabeled == 3).all()   # only images of the 'unlabeled' split


def test_stl10_train_plus_unlabeled_pool_draws_as_create_split_with_label_0(fake_tv):
    ds = load_dataset("stl10", str(fake_tv))
    d = DeviceData.build(ds, n_labeled=50, seed=1, val_size=0, device="cpu", channels_last=False,
                         labeled_pool="train+unlabeled")
    y_pool = np.concatenate([ds.y_train, np.zeros(60, np.int64)])     # the tfrecords' order and labels
    want = create_split_labeled(y_pool, 50, 1, stl10=True)
    x_pool = np.concatenate([ds.x_train, ds.x_unlabeled_extra])
    assert torch.equal(d.y_labeled, torch.from_numpy(y_pool[want]))
    assert torch.equal(d.x_labeled[:, 12:-12, 12:-12], torch.from_numpy(x_pool[want]))
    assert np.bincount(y_pool[want]).tolist() == [5] * 10                  # equal shares, not frequencies
    from_unlabeled = (d.x_labeled[:, 12, 12, 0] == 3)
    assert from_unlabeled.any() and (d.y_labeled[from_unlabeled] == 0).all()
    assert (d.n_labeled, d.n_unlabeled) == (50, 160 - 50)


def test_stl10_labeled_pool_train_is_unchanged_and_folds_ignore_the_pool(fake_tv):
    ds = load_dataset("stl10", str(fake_tv))
    a = DeviceData.build(ds, n_labeled=50, seed=4, val_size=0, device="cpu", channels_last=False)
    assert torch.equal(a.y_labeled, torch.from_numpy(ds.y_train[create_split_labeled(ds.y_train, 50, 4)]))
    assert (a.n_labeled, a.n_unlabeled) == (50, 50 + 60)
    b = DeviceData.build(ds, n_labeled=6, seed=4, val_size=0, device="cpu", channels_last=False,
                         labeled_pool="train+unlabeled")                  # at the fold size: the fold
    assert torch.equal(b.y_labeled, torch.from_numpy(ds.y_train[np.sort(FOLDS[4])]))


def test_official_stl10_5000_label_split_has_497_unlabeled_images_as_class_0():
    """runs/table2.sh's stl10.1@5000: 500 per class from train (500 per class) + 100,000
    unlabeled images with label 0, seed 1. Whatever the training set's order, classes 1..9 are
    all their training images and class 0 draws 500 of its 100,500 candidates."""
    y_train = np.random.RandomState(0).permutation(np.repeat(np.arange(10), 500))
    y_pool = np.concatenate([y_train, np.zeros(100_000, np.int64)])
    lab, unl, _ = split_labeled(y_pool, 5000, 10, seed=1, equal_class_draw=True)
    assert np.bincount(y_pool[lab]).tolist() == [500] * 10
    assert int((lab >= 5000).sum()) == 497 and len(unl) == 100_000


def test_labeled_pool_is_one_line_naming_the_field_and_allowed_values():
    with pytest.raises(ConfigError, match=r"^labeled_pool: 'train\+unlabeled' needs dataset stl10 .*allowed for "
                                          r"'cifar10': train$"):
        resolve({"labeled_pool": "train+unlabeled"})
    with pytest.raises(ConfigError, match=r"^labeled_pool: 'all' is not one of train, train\+unlabeled$"):
        resolve({"dataset": "stl10", "labeled_pool": "all"})
    with pytest.raises(ConfigError, match=r"^labeled_pool: 'train\+unlabeled' is not one of train for dataset"):
        DeviceData.build(id_dataset(), 20, 1, 0, "cpu", False, labeled_pool="train+unlabeled")


def test_stl10_without_its_fold_file_is_one_line_naming_the_file(fake_tv):
    (fake_tv / "stl10_binary" / "fold_indices.txt").unlink()
    with pytest.raises(ConfigError) as e:
        load_dataset("stl10", str(fake_tv))
    one_line_error(e, "fold_indices.txt")


# ---- DeviceData ----------------------------------------------------------------------------------
def id_dataset(n=100, n_classes=5, hw=6, channels=3, spec=AugmentSpec(True, 2), extra=0):
    """Image i is constant with value i, so any crop/flip of it still says which image it is."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, hw, hw, channels)).copy()
    y = np.arange(n, dtype=np.int64) % n_classes
    x_extra = None
    if extra:
        x_extra = np.broadcast_to(np.arange(n, n + extra, dtype=np.uint8)[:, None, None, None],
                                  (extra, hw, hw, channels)).copy()
    return Dataset("ids", x, y, x[:30].copy(), y[:30].copy(), n_classes, spec, x_unlabeled_extra=x_extra)


def ids_of(x_float):
    """Image ids from float [-1, 1] NCHW batches of `id_dataset` images."""
    return torch.round((x_float[:, 0, 0, 0] + 1) * 127.5).long()


@pytest.fixture
def data():
    torch.manual_seed(0)
    return DeviceData.build(id_dataset(), n_labeled=20, seed=1, val_size=10, device="cpu", channels_last=True)


def test_device_data_properties(data):
    assert (data.n_classes, data.in_channels, data.image_size) == (5, 3, (6, 6))
    assert (data.n_labeled, data.n_unlabeled, data.n_val, data.n_test) == (20, 70, 10, 30)
    assert data.x_labeled.dtype == torch.uint8 and data.x_labeled.shape == (20, 10, 10, 3)  # padded by 2


def test_labeled_batch_is_float_nchw_in_range_with_matching_labels(data):
    x, y = data.labeled_batch(8)
    assert x.shape == (8, 3, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ids_of(x) % 5)


def test_unlabeled_batch_gives_k_augmentations_of_the_same_images(data):
    us = data.unlabeled_batch(8, K=3)
    assert len(us) == 3 and all(u.shape == (8, 3, 6, 6) and u.dtype == torch.float32 for u in us)
    assert all(torch.equal(ids_of(u), ids_of(us[0])) for u in us)


def test_pools_are_disjoint_and_unlabeled_excludes_labeled_and_val(data):
    lab = set(ids_of(data.labeled_batch(20)[0]).tolist())
    unl = set(ids_of(data.unlabeled_batch(70, K=1)[0]).tolist())
    val = set(ids_of(next(data.eval_batches("val"))[0]).tolist())
    assert len(lab) == 20 and len(unl) == 70 and len(val) == 10
    assert lab | unl | val == set(range(100)) and not (lab & unl or lab & val or unl & val)


@pytest.mark.parametrize("batch", [5, 7, 20, 50])
def test_sampler_draws_every_labeled_image_once_per_epoch(data, batch):
    n_batches = -(-60 // batch)  # enough for 3 epochs of 20
    ids = torch.cat([ids_of(data.labeled_batch(batch)[0]) for _ in range(n_batches)])
    epochs = ids[:60].reshape(3, 20)
    assert all(len(set(e.tolist())) == 20 for e in epochs)
    assert set(epochs[0].tolist()) == set(epochs[1].tolist())


def test_state_dict_round_trip_reproduces_the_next_batches(data):
    data.labeled_batch(7), data.unlabeled_batch(9, K=2)  # mid-epoch
    buf = io.BytesIO()
    torch.save(data.state_dict(), buf)
    rng = torch.get_rng_state()
    expected = [data.labeled_batch(7)[0], *data.unlabeled_batch(9, K=2), data.labeled_batch(30)[0]]

    resumed = DeviceData.build(id_dataset(), n_labeled=20, seed=1, val_size=10, device="cpu", channels_last=True)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    torch.set_rng_state(rng)
    got = [resumed.labeled_batch(7)[0], *resumed.unlabeled_batch(9, K=2), resumed.labeled_batch(30)[0]]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_eval_batches_cover_the_split_in_order_without_augmentation(data):
    batches = list(data.eval_batches("test", batch=8))
    assert [len(y) for _, y in batches] == [8, 8, 8, 6]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(ids_of(x), torch.arange(30))
    assert torch.equal(x, x[:, :, :1, :1].expand_as(x))  # constant images: no shift artefacts


def test_eval_batches_reject_a_missing_val_split():
    d = DeviceData.build(id_dataset(), n_labeled=20, seed=1, val_size=0, device="cpu", channels_last=False)
    with pytest.raises(ValueError):
        next(d.eval_batches("val"))


def test_channels_last_false_gives_contiguous_batches():
    d = DeviceData.build(id_dataset(), n_labeled=20, seed=1, val_size=0, device="cpu", channels_last=False)
    assert d.labeled_batch(4)[0].is_contiguous()
    assert next(d.eval_batches("test"))[0].is_contiguous()


def test_extra_unlabeled_images_join_only_the_unlabeled_pool():
    d = DeviceData.build(id_dataset(n=50, extra=40), n_labeled=10, seed=1, val_size=0, device="cpu",
                         channels_last=False)
    assert (d.n_labeled, d.n_unlabeled) == (10, 80)
    assert set(ids_of(d.unlabeled_batch(80, K=1)[0]).tolist()) >= set(range(50, 90))


def test_digits_device_data_batches(digits):
    d = DeviceData.build(digits, n_labeled=50, seed=1, val_size=0, device="cpu", channels_last=False)
    x, y = d.labeled_batch(64)  # batch larger than the labeled set: spans epochs
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,)
    assert d.n_unlabeled == 1297 - 50 and d.image_size == (8, 8)
