"""The registry of datasets: one record per dataset, free of torch and numpy.

Owns: every fact about a dataset that more than one module needs: its class count, image size,
augmentation (REFERENCE.md "Data and protocol"; official libml/data.py augment_cifar10/svhn/
stl10), the preset applied to config fields the user leaves unset (REFERENCE.md "lambda_u per
dataset"), how its official labeled split is drawn, the paper's dataset it is compared with,
its cost per step relative to a 32x32 image, where its images come from (the MLflow dataset
input) and its loader. `dataset_info(name)` also answers for a user's `npz:PATH` file.

Adding a dataset: one record here plus its loader (a function `(info, data_dir) -> Dataset`
anywhere importable, optionally with a `download: bool` keyword that a dry run sets to False;
the built-in ones are in mixmatch_core/data.py), and its tests. Loaders
are named by "module:function" and imported only when a run opens its data, so resolving a
config never imports torch or torchvision.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: str                       # "module:function" building the host arrays (data.Dataset)
    n_classes: int | None = 10        # None: read from the data (npz files)
    image_px: int | None = 32         # side of the square images; None: read from the data
    flip: bool | None = True          # random horizontal flip; None: chosen by image size (npz)
    shift_px: int | None = 4          # reflect-pad + random crop, pixels; None: by image size
    preset: dict[str, Any] = field(default_factory=dict)  # config fields the user left unset
    # The official split (create_split.py) is balanced where the classes are: n_labeled must
    # then be a multiple of the class count; SVHN's follows the class frequencies.
    balanced_split: bool = True
    fold_size: int | None = None      # predefined labeled folds of this size (STL-10: 1000)
    folds_file: str = ""              # those folds, relative to data_dir (one line of indices per fold)
    # create_split.py draws as if every class had equal counts (STL-10: its 100,000 unlabeled
    # images join the pool with label 0, and each class still gets n_labeled / 10 labels)
    equal_class_draw: bool = False
    labeled_pool_extra: bool = False  # an unlabeled split that config labeled_pool=train+unlabeled can add
    paper_name: str | None = None     # the paper's dataset our numbers are compared with
    cost_factor: float = 1.0          # step cost relative to a 32x32 image (dry-run estimates)
    source: str = "torchvision"       # MLflow dataset input: torchvision | code | local
    torchvision_class: str = ""       # the torchvision.datasets class a torchvision loader reads
    train_splits: tuple[str, ...] = ("train",)   # the splits that make the training set (SVHN+extra)
    source_uri: str = ""              # for source "code": what produces the images


# Where the labeled set is drawn from (config `labeled_pool`). "train+unlabeled" is what the
# official create_split.py does for STL-10 (stl10-train.tfrecord then stl10-unlabeled.tfrecord):
# the 100,000 unlabeled images join the pool with label 0 ("airplane"), and every class gets
# n_labeled / 10 labels. At 5000 labels, seed 1 (runs/table2.sh's stl10.1@5000) that is the 4500
# training images of classes 1..9 plus 500 class-0 images drawn from 100,500 candidates: 3 true
# airplanes and 497 unlabeled images trained as airplane. The paper's 5.59% was measured so.
LABELED_POOLS = ("train", "train+unlabeled")

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", "mixmatch_core.data:load_digits", image_px=8, flip=False, shift_px=1,  # 8x8: 1 px shift, no flip
        # The embedded CPU setting: 500 steps x 64 labeled images ~ 25 epochs of the 1297
        # training images; the ramp-up is 40% of the run (the paper's 16k of 1M steps would
        # never finish ramping). The 16-wide small CNN: 8x8 images need no more, and it runs
        # ~25 steps/s on one core.
        preset=dict(model="small_cnn16", n_labeled=50, steps=500, eval_every=50, median_of=5, log_every=50,
                    lambda_u=75.0, alpha=0.75, rampup_steps=200, ema_decay=0.99),
        cost_factor=0.1, source="code", source_uri="sklearn.datasets.load_digits"),   # measured
    "cifar10": DatasetInfo("cifar10", "mixmatch_core.data:load_cifar", torchvision_class="CIFAR10",
                           preset=dict(lambda_u=75.0, alpha=0.75), paper_name="cifar10"),
    "cifar100": DatasetInfo("cifar100", "mixmatch_core.data:load_cifar", torchvision_class="CIFAR100",
                            n_classes=100, preset=dict(lambda_u=150.0, alpha=0.75), paper_name="cifar100"),
    # SVHN: shift only, digits are not mirror-symmetric; labels drawn by class frequency.
    "svhn": DatasetInfo("svhn", "mixmatch_core.data:load_svhn", torchvision_class="SVHN", flip=False,
                        preset=dict(lambda_u=250.0, alpha=0.75), balanced_split=False, paper_name="svhn"),
    "svhn_extra": DatasetInfo("svhn_extra", "mixmatch_core.data:load_svhn", torchvision_class="SVHN",
                              train_splits=("train", "extra"), flip=False, preset=dict(lambda_u=250.0, alpha=0.25),
                              balanced_split=False, paper_name="svhn_extra"),
    # STL-10, 96x96: flip + shift up to 12 px; runs/table2.sh --scales=4 (auto would give 5 at
    # 96 px); 9x the pixels of 32x32 (cost estimate). Its ten predefined 1000-image folds are
    # torchvision's stl10_binary/fold_indices.txt.
    "stl10": DatasetInfo("stl10", "mixmatch_core.data:load_stl10", torchvision_class="STL10", image_px=96,
                         shift_px=12, preset=dict(lambda_u=50.0, alpha=0.75, scales=4), fold_size=1000,
                         folds_file="stl10_binary/fold_indices.txt", equal_class_draw=True,
                         labeled_pool_extra=True, paper_name="stl10", cost_factor=9.0),
}
# A user's numpy file `npz:PATH` (x_train, y_train, x_test, y_test): classes and augmentation
# come from the data; compared with the paper when the file is named after a paper dataset.
NPZ = DatasetInfo("npz", "mixmatch_core.data:load_npz", n_classes=None, image_px=None, flip=None, shift_px=None,
                  preset=dict(lambda_u=75.0, alpha=0.75), balanced_split=False, source="local")


def dataset_info(dataset: str) -> DatasetInfo | None:
    """The record of a `Config.dataset` value (a name or `npz:PATH`); None when unknown."""
    if dataset.startswith("npz:"):
        stem = re.sub(r"\.npz$", "", dataset[4:].rsplit("/", 1)[-1])
        paper = DATASETS[stem].paper_name if stem in DATASETS else None
        return replace(NPZ, name=dataset, paper_name=paper)
    return DATASETS.get(dataset)


def allowed() -> str:
    """The allowed `dataset` values, for one-line errors and --help."""
    return ", ".join(DATASETS) + ", npz:PATH"
