"""`mixmatch data cifar10-npz --out PATH [--from DIR]`: the `npz:` file of CIFAR-10 that
experiments/cpu_cifar10*.yaml read, made from CIFAR-10's own python release.

Owns: finding the release (the extracted `cifar-10-batches-py/` folder or the
`cifar-10-python.tar.gz` tarball in --from, else torchvision's download into --data-dir),
reading its pickled batches (each a dict of `data`, N x 3072 uint8 as 1024 red, 1024 green,
1024 blue values per image in row-major order, and `labels`), and writing the keys that
mixmatch_core.data.load_npz reads (x_train, y_train, x_test, y_test: uint8 [N, 32, 32, 3]
images and uint8 labels; plus `classes`, the label names) in the release's image order.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .errors import ArgumentParser, die

FOLDER, TARBALL = "cifar-10-batches-py", "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH, META = "test_batch", "batches.meta"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="mixmatch data", description="Make the data files a config can name.")
    sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    c = sub.add_parser("cifar10-npz", help="CIFAR-10's python release as an npz file (dataset=npz:PATH)",
                       description="Write CIFAR-10 as an npz file for dataset=npz:PATH (x_train, y_train, x_test, "
                                   "y_test), from the python release (cifar-10-python.tar.gz, or its extracted "
                                   "cifar-10-batches-py/ folder) in --from, or downloaded by torchvision.")
    c.add_argument("--out", required=True, metavar="PATH", help="the npz file to write, e.g. data/cifar10.npz")
    c.add_argument("--from", dest="source", metavar="DIR",
                   help=f"a folder holding {TARBALL} or {FOLDER}/ (or that folder itself); "
                        "default: download with torchvision into --data-dir")
    c.add_argument("--data-dir", default="data", metavar="DIR",
                   help="where torchvision downloads the release when --from is not given (default data)")
    return p


def _read_members(read, names) -> dict:
    """`read(name)` -> the bytes of one file of the release; the unpickled batches by name."""
    # The release's own format (what torchvision reads too): pickled dicts with bytes keys.
    return {n: pickle.loads(read(n), encoding="bytes") for n in names}


def read_release(source: Path) -> dict[str, dict]:
    """The release's batches, from a folder that is or holds `cifar-10-batches-py/`, or holds
    the tarball. Raises FileNotFoundError naming what was looked for."""
    names = (*TRAIN_BATCHES, TEST_BATCH, META)
    for folder in (source, source / FOLDER):
        if all((folder / n).is_file() for n in names):
            return _read_members(lambda n: (folder / n).read_bytes(), names)
    if (source / TARBALL).is_file():
        with tarfile.open(source / TARBALL, "r:gz") as tar:
            return _read_members(lambda n: tar.extractfile(f"{FOLDER}/{n}").read(), names)
    raise FileNotFoundError(f"--from: '{source}' holds neither {FOLDER}/ (with {', '.join(names)}) nor {TARBALL}")


def to_arrays(batches: dict[str, dict]) -> dict[str, np.ndarray]:
    """load_npz's keys: images [N, 32, 32, 3] uint8 (the release stores [N, 3, 32, 32] flat),
    labels uint8, the batches in order (data_batch_1..5, then test_batch)."""
    def split(names):
        x = np.concatenate([np.asarray(batches[n][b"data"], np.uint8).reshape(-1, 3, 32, 32) for n in names])
        y = np.concatenate([np.asarray(batches[n][b"labels"], np.uint8) for n in names])
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y
    x_train, y_train = split(TRAIN_BATCHES)
    x_test, y_test = split((TEST_BATCH,))
    classes = np.asarray([c.decode() for c in batches[META][b"label_names"]])
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    """Compressed npz, written to a temporary file in the same folder and then renamed, so an
    interrupted run leaves no partial file at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def download(data_dir: str) -> Path:
    """torchvision's download and checksum of the release into data_dir; its extracted folder."""
    import torchvision.datasets as tvd   # lazy: only the download needs torchvision
    try:
        for train in (True, False):
            tvd.CIFAR10(root=data_dir, train=train, download=True)
    except (OSError, RuntimeError, tarfile.TarError):
        die(f"--data-dir: cannot download CIFAR-10 into '{data_dir}' (offline?); "
            f"download {TARBALL} yourself and give its folder with --from")
    return Path(data_dir) / FOLDER


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        die(f"--out: '{out}' must end in .npz (dataset=npz:PATH names it)")
    source = Path(args.source) if args.source else download(args.data_dir)
    try:
        arrays = to_arrays(read_release(source))
    except FileNotFoundError as e:
        die(str(e))
    except (OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, tarfile.TarError) as e:
        die(f"--from: '{source}' is not CIFAR-10's python release ({type(e).__name__}: {e})")
    try:
        write_npz(arrays, out)
    except OSError as e:
        die(f"--out: cannot write '{out}' ({e.strerror or e})")
    print(f"{out}: {len(arrays['y_train'])} training and {len(arrays['y_test'])} test images; "
          f"train with dataset=npz:{out}")
    return 0
