"""`mixmatch data cifar10-npz`: CIFAR-10's python release (pickled batches of [N, 3072] uint8
rows, 1024 red then 1024 green then 1024 blue values per image) becomes the npz file that
dataset=npz:PATH loads, image for image and label for label. Offline: a tiny fake release."""
import pickle
import tarfile

import numpy as np
import pytest

from mixmatch_cli import main
from mixmatch_core.data import load_dataset

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture
def release(tmp_path):
    """cifar-10-batches-py/ with 2 images per batch; returns (folder's parent, images HWC, labels)."""
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(12) % 10
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate(BATCHES):
        rows = [np.concatenate([img[..., c].ravel() for c in range(3)]) for img in images[2 * i:2 * i + 2]]
        (folder / name).write_bytes(pickle.dumps({b"data": np.stack(rows), b"labels": labels[2 * i:2 * i + 2].tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return tmp_path, images, labels


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def assert_is_the_release(out, images, labels):
    ds = load_dataset(f"npz:{out}", "unused")
    assert np.array_equal(ds.x_train, images[:10]) and np.array_equal(ds.y_train, labels[:10])
    assert np.array_equal(ds.x_test, images[10:]) and np.array_equal(ds.y_test, labels[10:])
    with np.load(out) as f:
        assert f["classes"].tolist() == CLASSES and f["x_train"].dtype == np.uint8


@pytest.mark.parametrize("given", ["parent", "folder", "tarball"])
def test_the_npz_holds_the_releases_images_and_labels_in_its_order(release, capsys, given):
    root, images, labels = release
    source = {"parent": root, "folder": root / "cifar-10-batches-py", "tarball": root / "tar"}[given]
    if given == "tarball":
        source.mkdir()
        with tarfile.open(source / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    out = root / "out" / "cifar10.npz"
    code, io = run(["data", "cifar10-npz", "--out", str(out), "--from", str(source)], capsys)
    assert code == 0 and f"dataset=npz:{out}" in io.out
    assert_is_the_release(out, images, labels)


def test_a_folder_without_the_release_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c.npz"
    code, io = run(["data", "cifar10-npz", "--out", str(out), "--from", str(tmp_path)], capsys)
    assert code == 2 and io.err.count("\n") == 1 and "cifar-10-python.tar.gz" in io.err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_offline_without_from_is_one_line_saying_to_give_the_tarball(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):  # never touch the network, even on a connected machine
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    out = tmp_path / "c.npz"
    code, io = run(["data", "cifar10-npz", "--out", str(out), "--data-dir", str(tmp_path / "dl")], capsys)
    assert code == 2 and io.err.count("\n") == 1 and "--from" in io.err and not out.exists()
