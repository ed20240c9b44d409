"""Data sets as float tensors: images [N, C, H, W] in [-1, 1], vectors [N, d]; labels int64 [N].

    x = sl.data.load("fashion-mnist", split="train")             # [60000, 1, 28, 28]
    x, y = sl.data.load("digits", split="test", labels=True)     # [297, 1, 8, 8], [297]
    x = sl.data.resolve("path/to/images/", size=32)              # a name or a path, as the CLI's --data

uint8 pixels v map to v / 127.5 − 1 (0 → −1, 255 → 1 exactly); float arrays (npy/npz) are taken as given.
`load(..., mmap=True)` on a `.npy` returns an `ArrayDataset` that reads float chunks lazily.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_positive_int
from .arrays import ArrayDataset, as_nchw, check_labels, check_numeric, iter_chunks, load_npy, to_tensor
from .cifar import is_cifar, load_cifar10
from .folder import folder_classes, load_folder
from .idx import IDX_FILES, has_idx, load_idx_split, read_idx
from .toy import GMM_GRID_SPACING, GMM_GRID_STD, TOY, gmm_grid_means, rng_for

__all__ = ["load", "resolve", "info", "DATASETS", "CLASS_NAMES", "ArrayDataset", "iter_chunks", "read_idx",
           "folder_classes", "gmm_grid_means", "GMM_GRID_STD", "GMM_GRID_SPACING", "SYSTEM_FASHION_MNIST"]

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # Debian package dataset-fashion-mnist
SPLITS = ("train", "test")
DIGITS_TRAIN = 1500   # digits: first 1500 images are "train", the remaining 297 "test"
TOY_N = 10_000        # default size of a toy set

_IDX_LIST = ", ".join(f"{stem}.gz" for pair in IDX_FILES.values() for stem in pair)
HOW_FASHION = (f"apt-get install dataset-fashion-mnist, or pass path=DIR containing {_IDX_LIST} "
               f"(or set SCORELAB_DATA=DIR with the files in DIR/fashion-mnist/)")
HOW_MNIST = f"pass path=DIR containing {_IDX_LIST} (gzip or raw), or put them in $SCORELAB_DATA/mnist/"
HOW_CIFAR = ("pass path= the extracted cifar-10-batches-py folder or the cifar-10-python.tar.gz archive, "
             "or put either in $SCORELAB_DATA/")

CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "mnist": [str(k) for k in range(10)],
    "digits": [str(k) for k in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


# -- where the files are --------------------------------------------------------------------------------------------
def _env_dirs(*names: str) -> list[Path]:
    root = os.environ.get("SCORELAB_DATA")
    return [Path(root) / n for n in names] if root else []


def _locate_fashion() -> Path | None:
    for d in _env_dirs("fashion-mnist", "FashionMNIST") + [SYSTEM_FASHION_MNIST]:
        if has_idx(d):
            return d
    return None


def _locate_mnist() -> Path | None:
    return next((d for d in _env_dirs("mnist", "MNIST") if has_idx(d)), None)


def _locate_cifar() -> Path | None:
    return next((d for d in _env_dirs("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz") if is_cifar(d)), None)


def _located(path, locate, what: str, how: str) -> Path:
    if path is not None:
        path = Path(os.fspath(path))
        if not path.exists():
            raise FileNotFoundError(f"{what}: path {str(path)!r} does not exist; {how}")
        return path
    found = locate()
    if found is None:
        raise FileNotFoundError(f"{what} not found: {how}")
    return found


# -- one loader per data set: (split, labels, limit, **options) → (array [N, ...], labels or None) ------------------
def _fashion(split, labels, limit, path=None):
    d = _located(path, _locate_fashion, "Fashion-MNIST", HOW_FASHION)
    return load_idx_split(d, split, labels=labels, how_to_get=HOW_FASHION)


def _mnist(split, labels, limit, path=None):
    d = _located(path, _locate_mnist, "MNIST", HOW_MNIST)
    return load_idx_split(d, split, labels=labels, how_to_get=HOW_MNIST)


def _cifar10(split, labels, limit, path=None):
    p = _located(path, _locate_cifar, "CIFAR-10", HOW_CIFAR)
    return load_cifar10(p, split, labels=labels, how_to_get=HOW_CIFAR)


def _folder(split, labels, limit, path=None, size=None, mode="RGB"):
    if path is None:
        raise ValueError("data set 'folder' needs path=DIR (a folder of PNG/JPEG images)")
    return load_folder(path, split, labels=labels, size=size, mode=mode, limit=limit)


def _npy(split, labels, limit, path=None, key=None, label_key=None, labels_path=None, mmap=False):
    if path is None:
        raise ValueError("data set 'npy' needs path=FILE (.npy or .npz)")
    x, y = load_npy(path, split=split, labels=labels, key=key, label_key=label_key, labels_path=labels_path,
                    mmap=mmap)
    name = f"array in {os.fspath(path)}"
    x = check_numeric(as_nchw(x, name=name), name=name)
    if y is not None:
        y = check_labels(np.asarray(y), x.shape[0], name=f"labels of {os.fspath(path)}")
    return x, y


def _digits(split, labels, limit):
    """scikit-learn's 8×8 digits (UCI optical recognition; 1797 images, pixel values 0..16) → v / 8 − 1."""
    from sklearn.datasets import load_digits

    d = load_digits()
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    x = d.images[part, None].astype(np.float64) / 8.0 - 1.0
    return x, d.target[part].astype(np.int64) if labels else None


def _toy(name):
    def loader(split, labels, limit, n=TOY_N, seed=0, **params):
        n = check_positive_int(n, name="n")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer; got {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
        for k, v in params.items():
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and np.isfinite(v)):
                raise ValueError(f"{k} must be a finite number >= 0; got {v!r}")
        return TOY[name](n, rng_for(seed, split), **params)
    return loader


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    shape: str                 # per-sample shape ("?" where it depends on the files)
    sizes: str                 # train / test sizes
    has_labels: bool
    options: tuple             # keyword options the loader accepts
    loader: object
    locate: object = None      # () → Path | None, for data sets read from files on this machine
    how: str = ""

    def where(self) -> tuple[bool, str]:
        """(available, where or how to get it)."""
        if self.locate is None:
            return True, self.how
        found = self.locate()
        return (True, str(found)) if found is not None else (False, self.how)


DATASETS = {d.name: d for d in [
    Dataset("fashion-mnist", "Zalando's article images, 10 classes (Xiao et al. 2017)", "[1, 28, 28]",
            "60000 / 10000", True, ("path",), _fashion, _locate_fashion, "apt-get install dataset-fashion-mnist"),
    Dataset("mnist", "handwritten digits, IDX files (LeCun et al. 1998)", "[1, 28, 28]", "60000 / 10000", True,
            ("path",), _mnist, _locate_mnist, "path=DIR with IDX files"),
    Dataset("cifar10", "32×32 colour images, 10 classes (Krizhevsky 2009)", "[3, 32, 32]", "50000 / 10000", True,
            ("path",), _cifar10, _locate_cifar, "path=cifar-10-batches-py or .tar.gz"),
    Dataset("digits", "scikit-learn's 8×8 handwritten digits (UCI)", "[1, 8, 8]", "1500 / 297", True, (),
            _digits, None, "bundled with scikit-learn"),
    Dataset("folder", "PNG/JPEG images under a folder (labels: sub-folders)", "[C, H, W]", "all / test/", True,
            ("path", "size", "mode"), _folder, None, "path=DIR"),
    Dataset("npy", ".npy / .npz array (uint8 scaled, floats as given)", "[...]", "all / npz x_test", True,
            ("path", "key", "label_key", "labels_path", "mmap"), _npy, None, "path=FILE"),
    Dataset("two-moons", "two interleaved half circles, noise 0.05", "[2]", "n (default 10000)", True,
            ("n", "seed", "noise"), _toy("two-moons"), None, "generated"),
    Dataset("swiss-roll", "2-D Swiss roll, noise 0.05", "[2]", "n (default 10000)", False,
            ("n", "seed", "noise"), _toy("swiss-roll"), None, "generated"),
    Dataset("gmm-grid", f"25 Gaussians on a 5×5 grid, spacing {GMM_GRID_SPACING:g}, std {GMM_GRID_STD:g}", "[2]",
            "n (default 10000)", True, ("n", "seed", "std", "spacing"), _toy("gmm-grid"), None, "generated"),
    Dataset("checkerboard", "uniform on the 8 dark squares of a 4×4 board on [-2, 2]²", "[2]", "n (default 10000)",
            False, ("n", "seed"), _toy("checkerboard"), None, "generated"),
]}


def info() -> list[dict]:
    """One dict per registered data set: name, description, shape, sizes, labels, available, where."""
    rows = []
    for d in DATASETS.values():
        available, where = d.where()
        rows.append(dict(name=d.name, description=d.description, shape=d.shape, sizes=d.sizes, labels=d.has_labels,
                         available=available, where=where))
    return rows


def _check_dtype(dtype):
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32); got {dtype!r}")
    return dtype


def load(name: str, split: str = "train", *, labels: bool = False, limit: int | None = None, hflip: bool = False,
         device=None, dtype=torch.float32, **options):
    """Load a registered data set (see `DATASETS` / `scorelab data list`).

    Returns x (float tensor in `dtype` on `device`), or (x, y) with int64 labels y if `labels=True`.
    `limit=N` keeps the first N samples (all if fewer); `hflip=True` then appends the horizontally flipped copies
    (2N samples, labels repeated). With `mmap=True` (npy) x is an `ArrayDataset` (len, slicing, `.chunks()`)
    read lazily from the memory-mapped file. Data-set options (path=, size=, n=, seed=, ...) go in `options`."""
    if name not in DATASETS:
        raise ValueError(f"data set name must be one of {sorted(DATASETS)}; got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    spec = DATASETS[name]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepts = ", ".join(spec.options) or "no options"
        raise TypeError(f"data set {name!r} does not accept option(s) {', '.join(unknown)}; it accepts {accepts}")
    if labels and not spec.has_labels:
        raise ValueError(f"data set {name!r} has no labels; use labels=False")
    if limit is not None:
        limit = check_positive_int(limit, name="limit")
    dtype = _check_dtype(dtype)
    x, y = spec.loader(split, bool(labels), limit, **options)
    if limit is not None:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    where = f"data set {name!r}" + (f" at {os.fspath(options['path'])!r}" if options.get("path") is not None else "")
    if labels and y is None:
        raise ValueError(f"{where} has no labels")
    if isinstance(x, np.memmap) or (isinstance(x, np.ndarray) and isinstance(x.base, np.memmap)):
        x = ArrayDataset(x, dtype=dtype, device=device, hflip=hflip, name=where)
        y_t = torch.from_numpy(np.concatenate([y, y]) if hflip else y).to(device) if y is not None else None
        return (x, y_t) if labels else x
    if x.dtype != np.uint8 and not np.isfinite(x).all():   # uint8 pixels are finite by construction
        raise ValueError(f"{where} contains NaN or infinite values")
    x = to_tensor(x, dtype=dtype, device=device)
    if hflip:
        if x.ndim != 4:
            raise ValueError(f"hflip needs images [N, C, H, W]; {where} has shape {tuple(x.shape)}")
        x = torch.cat([x, x.flip(-1)])
        y = np.concatenate([y, y]) if y is not None else None
    if labels:
        return x, torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=torch.int64)
    return x


def resolve(spec, split: str = "train", limit: int | None = None, **kw):
    """A registered name or a path → `load(...)`, as the CLI's `--data NAME|PATH`.

    Names win over same-named relative paths (write ./digits for the folder). Paths: .npy/.npz → "npy";
    a CIFAR-10 .tar.gz or a folder with data_batch_1/test_batch → "cifar10"; a folder with IDX files →
    "mnist" (MNIST layout, e.g. Fashion-MNIST elsewhere); any other folder → "folder" (images)."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data must be a data set name or a path; got {type(spec).__name__}")
    if isinstance(spec, str) and spec in DATASETS:
        return load(spec, split, limit=limit, **kw)
    path = Path(os.fspath(spec))
    if path.is_file():
        if path.suffix.lower() in (".npy", ".npz"):
            kind = "npy"
        elif is_cifar(path):
            kind = "cifar10"
        else:
            raise ValueError(f"data file {str(path)!r} has an unknown format: expected .npy, .npz or a CIFAR-10 "
                             f"cifar-10-python.tar.gz")
    elif path.is_dir():
        kind = "mnist" if has_idx(path) else "cifar10" if is_cifar(path) else "folder"
    elif os.sep in str(spec) or path.suffix:
        raise FileNotFoundError(f"data path {str(path)!r} does not exist")
    else:
        raise ValueError(f"data must be one of {sorted(DATASETS)} or an existing path (.npy, .npz, a folder of "
                         f"images, IDX files or CIFAR-10 batches); got {str(spec)!r}")
    return load(kind, split, limit=limit, path=path, **kw)
