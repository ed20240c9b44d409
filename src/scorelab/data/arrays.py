"""Arrays to tensors: uint8 → [-1, 1], `.npy` / `.npz` files, and `ArrayDataset`, a lazily converted
(memory-mapped) array read in float chunks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._checks import check_positive_int

IMAGE_KEYS = ("x", "data", "images")
LABEL_KEYS = ("y", "labels")


def to_tensor(a: np.ndarray, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """uint8 pixels v ∈ {0..255} → v / 127.5 − 1 ∈ [-1, 1] (0 → −1, 255 → 1); floats taken as given.

    Computed as (2v − 255) / 255: the numerator is an exact integer, so the result is correctly rounded in `dtype`."""
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:   # read-only buffers (IDX bytes, memory maps): torch must not alias them
        a = a.copy()
    if a.dtype == np.uint8:
        return torch.from_numpy(a).to(device=device, dtype=dtype).mul_(2.0).sub_(255.0).div_(255.0)
    if np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(a).to(device=device, dtype=dtype)
    raise TypeError(f"array dtype must be uint8 (pixels 0..255) or floating; got {a.dtype}")


def as_nchw(a: np.ndarray, *, name: str) -> np.ndarray:
    """uint8 image arrays to [N, C, H, W]: [N, H, W] gains a channel; [N, H, W, C] (C ∈ {1, 3}) is transposed.

    Float arrays and other layouts are returned unchanged (a view, no copy)."""
    if a.dtype != np.uint8:
        return a
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        return a.transpose(0, 3, 1, 2)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape [N, ...]; got {a.shape}")
    return a


def check_numeric(a: np.ndarray, *, name: str) -> np.ndarray:
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must hold uint8 pixels (0..255, scaled to [-1, 1]) or floats (taken as given); "
                        f"got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape [N, ...] with at least 2 dims; got shape {a.shape}")
    return a


def check_labels(y: np.ndarray, n: int, *, name: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"{name} must be a 1-D integer array with {n} entries; got dtype {y.dtype}, shape {y.shape}")
    return y.astype(np.int64)


class ArrayDataset:
    """A [N, *shape] array (typically `np.load(..., mmap_mode="r")`) read lazily as float tensors.

    Supports `len`, `.shape`, `.ndim`, `ds[i]`, `ds[a:b]`, `ds[index_list]` (each returns a tensor in `dtype`
    on `device`, uint8 scaled to [-1, 1]), `ds.chunks(chunk_size)` and `ds.to_tensor()`. With `hflip=True`
    the second half (indices N..2N−1) are the horizontally flipped copies of the first half. Memory is
    bounded by the chunk size, never by N; values are not scanned for NaN."""

    def __init__(self, array: np.ndarray, *, dtype=torch.float32, device=None, hflip: bool = False, name: str = "array"):
        self.array = check_numeric(as_nchw(array, name=name), name=name)
        if hflip and self.array.ndim != 4:
            raise ValueError(f"hflip needs images [N, C, H, W]; {name} has shape {self.array.shape}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.hflip = bool(hflip)
        self.name = name

    # -- tensor-like ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.array.shape[1:]))

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def __len__(self) -> int:
        return self.array.shape[0] * (2 if self.hflip else 1)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        return (f"ArrayDataset(shape={tuple(self.shape)}, source dtype={self.array.dtype}, dtype={self.dtype}, "
                f"device={self.device}, hflip={self.hflip})")

    def to(self, device=None, dtype=None) -> "ArrayDataset":
        """A copy reading into another device/dtype (the array itself is shared, not copied)."""
        out = ArrayDataset.__new__(ArrayDataset)
        out.__dict__.update(self.__dict__)
        out.device = torch.device(device) if device is not None else self.device
        out.dtype = dtype if dtype is not None else self.dtype
        return out

    def _convert(self, a: np.ndarray) -> torch.Tensor:
        return to_tensor(a, dtype=self.dtype, device=self.device)

    def __getitem__(self, index) -> torch.Tensor:
        n_base, n = self.array.shape[0], len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {self.name} with {n} samples")
            return self[i % n: i % n + 1][0]
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1 and (stop <= n_base or start >= n_base):
                flip = start >= n_base
                rows = self.array[start - n_base * flip: max(start, stop) - n_base * flip]
                x = self._convert(rows)
                return x.flip(-1) if flip else x
            index = np.arange(start, stop, step)
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"index must be an int, a slice or a 1-D integer sequence; got {type(index).__name__}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {self.name} with {n} samples")
        idx = idx % n if n else idx
        flip = idx >= n_base
        x = self._convert(self.array[idx % n_base] if n_base else self.array[:0])
        if flip.any():
            f = torch.from_numpy(flip).to(x.device)
            x[f] = x[f].flip(-1)
        return x

    def chunks(self, chunk_size: int = 4096):
        """Yield consecutive float tensors of at most `chunk_size` samples covering the whole data set."""
        chunk_size = check_positive_int(chunk_size, name="chunk_size")
        n_base, n = self.array.shape[0], len(self)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            if start < n_base < stop:  # never mix plain and flipped rows in one slice
                yield self[start:n_base]
                yield self[n_base:stop]
            else:
                yield self[start:stop]

    def to_tensor(self) -> torch.Tensor:
        """The whole data set as one tensor (needs the memory)."""
        return torch.cat(list(self.chunks(65536))) if len(self) else self[0:0]


def iter_chunks(data, chunk_size: int = 4096):
    """Consecutive chunks [≤ chunk_size, *shape] of a tensor or an `ArrayDataset` (memory bounded by the chunk)."""
    chunk_size = check_positive_int(chunk_size, name="chunk_size")
    if isinstance(data, ArrayDataset):
        yield from data.chunks(chunk_size)
    elif isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], chunk_size):
            yield data[start:start + chunk_size]
    else:
        raise TypeError(f"data must be a torch.Tensor or an ArrayDataset; got {type(data).__name__}")


def _first(keys, candidates):
    return next((k for k in candidates if k in keys), None)


def load_npy(path, *, split: str = "train", labels: bool = False, key=None, label_key=None,
             labels_path=None, mmap: bool = False):
    """A `.npy` array or a `.npz` archive → (array [N, ...], labels [N] int64 or None).

    npz: images under `key=`, else x_test for split="test", else the first of x_train, x, data, images (so Keras'
    mnist.npz works); labels under `label_key=`, else y_train / y_test beside x_train / x_test, else y, labels.
    A `.npy` has no labels unless `labels_path=` names a `.npy` of integers. `mmap=True` (`.npy` only) maps the
    file instead of reading it."""
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if split != "train":
            raise ValueError(f"split {split!r} is not available: {path} is a single array (use split='train')")
        try:
            x = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path} is not a readable .npy array ({e})") from None
        y = None
        if labels:
            if labels_path is None:
                raise ValueError(f"labels=True needs labels_path=FILE.npy: {path} holds only images")
            y = np.load(Path(labels_path), allow_pickle=False)
        return x, y
    if suffix == ".npz":
        if mmap:
            raise ValueError(f"mmap=True needs a .npy file; {path} is an .npz archive (save the array with np.save)")
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{path} is not a readable .npz archive ({e})") from None
        with z:
            keys = set(z.files)
            for k in (key, label_key):
                if k is not None and k not in keys:
                    raise ValueError(f"key {k!r} is not in {path}; it holds {sorted(keys)}")
            if key is not None:
                k = key
            elif split == "test":
                k = _first(keys, ("x_test",))
            else:
                k = _first(keys, ("x_train",) + IMAGE_KEYS)
            if k is None:
                want = "x_test" if split == "test" else "one of x_train, x, data, images (or key=)"
                raise ValueError(f"{path} has no images for split {split!r}: expected {want}; it holds {sorted(keys)}")
            x, y = z[k], None
            if labels:
                lk = label_key or _first(keys, ("y" + k[1:],) if k in ("x_train", "x_test") else LABEL_KEYS)
                if lk is None:
                    raise ValueError(f"{path} has no labels for {k!r} (expected y, labels, y_train/y_test, or "
                                     f"label_key=); it holds {sorted(keys)}")
                y = z[lk]
        return x, y
    raise ValueError(f"path must be a .npy or .npz file; got {str(path)!r}")
