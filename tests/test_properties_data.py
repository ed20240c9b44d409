"""Property-based tests (Hypothesis) of the `npy` loader, `sl.data.load("npy", path=...)`.

Random arrays (uint8 pixels, float16/32/64 values, 2-4 dimensions, up to 4×3×5×5), written with np.save (and
np.savez under "x_train"), loaded in float32 or float64 with an optional `limit`: the result equals the documented
transform computed here with numpy — uint8 v → (2v − 255)/255 with [N, H, W] given a channel and [N, H, W, C]
(C ∈ {1, 3}) moved to [N, C, H, W]; floats as given — in the requested dtype. Arrays the loader must refuse (1-D,
integer other than uint8, NaN/inf, labels=True without labels, a `limit` < 1) raise ValueError/TypeError naming
what is wrong.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scorelab as sl

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True, database=None)   # the same examples on every run
FOLDER = tempfile.TemporaryDirectory(prefix="scorelab-npy-")    # one folder for the module (removed at exit)


def _expected(a: np.ndarray, dtype) -> np.ndarray:
    if a.dtype == np.uint8:
        if a.ndim == 3:
            a = a[:, None]
        elif a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        return ((2.0 * a.astype(np.float64) - 255.0) / 255.0).astype(dtype)
    return a.astype(dtype)


@SETTINGS
@given(data=st.data())
def test_npy_loader(data):
    ndim = data.draw(st.integers(2, 4), label="ndim")
    shape = tuple(data.draw(st.integers(1, 5), label=f"dim {i}") for i in range(ndim))
    kind = data.draw(st.sampled_from(["uint8", "float16", "float32", "float64"]), label="array dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    if kind == "uint8":
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if data.draw(st.booleans(), label="channels last"):    # [N, H, W, C] with C = 3 (or 1)
            a = rng.integers(0, 256, size=(shape[0], 4, 5, data.draw(st.sampled_from([1, 3]))), dtype=np.uint8)
    else:
        a = (rng.standard_normal(shape) * 10.0 ** data.draw(st.floats(-3, 3), label="log10 scale")).astype(kind)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    limit = data.draw(st.one_of(st.none(), st.integers(1, 6)), label="limit")
    fmt = data.draw(st.sampled_from(["npy", "npz"]), label="format")
    path = Path(FOLDER.name) / f"a.{fmt}"
    if fmt == "npy":
        np.save(path, a)
    else:
        np.savez(path, x_train=a)
    x = sl.data.load("npy", path=path, dtype=dtype, limit=limit)
    want = _expected(a, np.float64)[:limit]
    assert isinstance(x, torch.Tensor) and x.dtype == dtype and tuple(x.shape) == want.shape
    np.testing.assert_array_equal(x.numpy(), want.astype(np.float32 if dtype == torch.float32 else np.float64))
    if kind == "uint8":
        assert x.min() >= -1 and x.max() <= 1


BAD = {
    "1-D array": (lambda rng: rng.standard_normal(5), ValueError, "shape"),
    "int32 array": (lambda rng: rng.integers(0, 9, size=(3, 4)).astype(np.int32), TypeError, "dtype"),
    "NaN": (lambda rng: np.where(rng.random((3, 4)) < 0.5, np.nan, 1.0), ValueError, "NaN"),
    "inf": (lambda rng: np.full((2, 3), np.inf, dtype=np.float32), ValueError, "infinite"),
}


@SETTINGS
@given(kind=st.sampled_from(sorted(BAD) + ["labels", "limit", "no path"]), seed=st.integers(0, 2 ** 32 - 1))
def test_npy_loader_refuses_bad_input(kind, seed):
    rng = np.random.default_rng(seed)
    path = Path(FOLDER.name) / "bad.npy"
    np.save(path, BAD[kind][0](rng) if kind in BAD else rng.standard_normal((4, 3)))
    if kind in BAD:
        _, error, word = BAD[kind]
        with pytest.raises(error, match=word):
            sl.data.load("npy", path=path)
    elif kind == "labels":
        with pytest.raises(ValueError, match="labels"):
            sl.data.load("npy", path=path, labels=True)
    elif kind == "limit":
        with pytest.raises(ValueError, match="limit"):
            sl.data.load("npy", path=path, limit=int(rng.integers(-5, 1)))
    else:
        with pytest.raises(ValueError, match="path"):
            sl.data.load("npy")
