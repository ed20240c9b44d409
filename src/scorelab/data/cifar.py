"""CIFAR-10 (Krizhevsky 2009) from its python pickle batches: the extracted `cifar-10-batches-py` folder or
the `cifar-10-python.tar.gz` archive, read without extracting.

Each batch is a dict {b"data": uint8 [n, 3072] (1024 red, 1024 green, 1024 blue values, row-major 32×32),
b"labels": [n] ints}. Unpickling is restricted to numpy arrays, so a crafted file cannot run code."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _parse_batch(raw: bytes, where: str):
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"CIFAR-10 batch {where!r} is not a readable pickle batch ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"CIFAR-10 batch {where!r} must hold a dict with data and labels; got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"CIFAR-10 batch {where!r} must have keys 'data' and 'labels'; got {sorted(d)}")
    x, y = np.asarray(d["data"]), np.asarray(d["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR-10 batch {where!r}: data must be uint8 [n, 3072]; got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"CIFAR-10 batch {where!r}: labels must be {x.shape[0]} integers; got {y.dtype} {y.shape}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def batch_dir(path: Path) -> Path | None:
    """The folder holding the batches: `path` itself or `path/cifar-10-batches-py`."""
    for d in (path, path / FOLDER):
        if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
            return d
    return None


def is_cifar(path) -> bool:
    path = Path(path)
    if path.is_dir():
        return batch_dir(path) is not None
    return path.is_file() and path.name.lower().endswith((".tar.gz", ".tgz", ".tar")) and "cifar" in path.name.lower()


def load_cifar10(path, split: str, *, labels: bool, how_to_get: str):
    """(images uint8 [N, 3, 32, 32], labels int64 [N] or None) from a batches folder or the .tar.gz archive."""
    path = Path(os.fspath(path))
    names = BATCHES[split]
    parts = []
    if path.is_dir():
        d = batch_dir(path)
        if d is None:
            raise FileNotFoundError(f"no CIFAR-10 batches (data_batch_1..5, test_batch) in {str(path)!r}: {how_to_get}")
        for name in names:
            f = d / name
            if not f.is_file():
                raise FileNotFoundError(f"CIFAR-10 batch {str(f)!r} is missing: {how_to_get}")
            parts.append(_parse_batch(f.read_bytes(), str(f)))
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    if name not in members:
                        raise FileNotFoundError(f"archive {str(path)!r} has no CIFAR-10 batch {name!r}: {how_to_get}")
                    parts.append(_parse_batch(tar.extractfile(members[name]).read(), f"{path}:{members[name].name}"))
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{str(path)!r} is not a readable CIFAR-10 archive ({e})") from None
    else:
        raise FileNotFoundError(f"CIFAR-10 path {str(path)!r} does not exist: {how_to_get}")
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]) if labels else None
    return x, y
