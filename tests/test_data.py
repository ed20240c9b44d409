"""scorelab.data loaders and `scorelab data`: every format on small files written here, values checked exactly."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import scorelab as sl
import scorelab.cli as cli
from scorelab import data as D

FASHION = Path("/usr/share/datasets/fashion-mnist")


def unit(a) -> torch.Tensor:
    """The exact expected mapping of uint8 pixels, computed in float64: v / 127.5 − 1."""
    return torch.from_numpy(np.asarray(a, dtype=np.float64) / 127.5 - 1.0).float()


# -- IDX ------------------------------------------------------------------------------------------------------------
def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return (bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            + np.ascontiguousarray(a, dtype=dt).tobytes())


def write_idx_dir(d: Path, n_train=5, n_test=3, gz=True, h=4, w=6, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        y = rng.integers(0, 10, n).astype(np.uint8)
        img, lab = D.IDX_FILES[split]
        for stem, arr in ((img, x), (lab, y)):
            raw = idx_bytes(arr)
            if gz:
                (d / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (d / stem).write_bytes(raw)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist_format_exact_values_and_labels(tmp_path, gz):
    ref = write_idx_dir(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = D.load("mnist", split, labels=True, path=tmp_path)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (ref[split][0].shape[0], 1, 4, 6)
        assert torch.equal(x, unit(ref[split][0][:, None]))
        assert torch.equal(y, torch.from_numpy(ref[split][1].astype(np.int64)))
    assert D.load("mnist", path=tmp_path)[0, 0, 0, 0] == -1.0 and D.load("mnist", path=tmp_path)[0, 0, 0, 1] == 1.0


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_every_type_code(tmp_path, code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * (1 if code == 0x08 else -1)).astype(dtype)
    if code == 0x08:
        a = a.astype(np.uint8)
    (tmp_path / "a.idx").write_bytes(idx_bytes(a, code))
    b = D.read_idx(tmp_path / "a.idx")
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 4) and np.array_equal(a, b)


def test_idx_truncated_bad_magic_and_damaged_gzip(tmp_path):
    raw = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"short.*truncated.*need 64 bytes, file has 59"):
        D.read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\0")
    with pytest.raises(ValueError, match=r"long.*longer than its header says"):
        D.read_idx(tmp_path / "long")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(ValueError, match=r"magic.*bad magic number 0x1234"):
        D.read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\0\0\x07" + raw[3:])
    with pytest.raises(ValueError, match="bad magic"):
        D.read_idx(tmp_path / "code")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(ValueError, match=r"cut\.gz.*damaged or truncated gzip"):
        D.read_idx(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError, match="nothere"):
        D.read_idx(tmp_path / "nothere")


def test_idx_truncated_data_set_names_file(tmp_path):
    write_idx_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        D.load("mnist", path=tmp_path)


def test_idx_label_count_mismatch_and_dot_names(tmp_path):
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(np.full((4, 2, 2), 255, np.uint8)))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(idx_bytes(np.arange(3, dtype=np.uint8)))
    assert torch.equal(D.load("mnist", path=tmp_path), torch.ones(4, 1, 2, 2))
    with pytest.raises(ValueError, match="must hold 4 integer labels"):
        D.load("mnist", path=tmp_path, labels=True)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        D.load("mnist", "test", path=tmp_path)


def test_fashion_mnist_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("SCORELAB_DATA", raising=False)
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist, or pass path=DIR containing "
                                                "train-images-idx3-ubyte.gz"):
        D.load("fashion-mnist")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        D.load("fashion-mnist", path=tmp_path / "elsewhere")
    row = next(r for r in D.info() if r["name"] == "fashion-mnist")
    assert row["available"] is False and "dataset-fashion-mnist" in row["where"]
    # $SCORELAB_DATA/fashion-mnist/ is found
    ref = write_idx_dir(tmp_path / "fashion-mnist")
    monkeypatch.setenv("SCORELAB_DATA", str(tmp_path))
    x, y = D.load("fashion-mnist", "test", labels=True)
    assert torch.equal(x, unit(ref["test"][0][:, None])) and torch.equal(y, torch.from_numpy(ref["test"][1]).long())
    assert next(r for r in D.info() if r["name"] == "fashion-mnist")["available"] is True


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = sl.data.load("fashion-mnist", split=split, labels=True)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert x.min() == -1.0 and x.max() == 1.0
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), n // 10))  # balanced classes
    assert y.min() == 0 and y.max() == 9


# -- CIFAR-10 -------------------------------------------------------------------------------------------------------
def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"f.png"] * n}


def write_cifar(root: Path, n=3):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_batch(n, k)
        (d / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return d, batches


def check_cifar(x, y, batches, names):
    data = np.concatenate([batches[b][b"data"] for b in names])
    assert x.shape == (data.shape[0], 3, 32, 32)
    # layout: data[i, c·1024 + h·32 + w] = pixel (c, h, w)
    i, c, h, w = 1, 2, 5, 7
    assert x[i, c, h, w] == float(data[i, c * 1024 + h * 32 + w]) / 127.5 - 1.0
    assert torch.equal(x, unit(data.reshape(-1, 3, 32, 32)))
    assert y.tolist() == sum((batches[b][b"labels"] for b in names), [])


def test_cifar10_folder_and_archive(tmp_path):
    d, batches = write_cifar(tmp_path)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    for path in (d, tmp_path):        # the batches folder, or its parent
        x, y = D.load("cifar10", labels=True, path=path)
        check_cifar(x, y, batches, train)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    x, y = D.load("cifar10", "test", labels=True, path=archive)
    check_cifar(x, y, batches, ["test_batch"])
    x2, y2 = D.resolve(str(archive), split="test", labels=True)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert D.resolve(d, limit=4).shape == (4, 3, 32, 32)


def test_cifar10_refuses_code_and_reports_missing_batch(tmp_path):
    d, _ = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (d / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match="test_batch.*refusing to unpickle"):
        D.load("cifar10", "test", path=d)
    (d / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.load("cifar10", path=d)


# -- image folders --------------------------------------------------------------------------------------------------
def make_folder(root: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for rel in ("cats/b.png", "cats/a.png", "dogs/z.png", "dogs/sub/c.png"):
        a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / rel)
        arrays[rel] = a
    g = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(g, mode="L").save(root / "dogs" / "gray.png")
    arrays["dogs/gray.png"] = np.repeat(g[..., None], 3, -1)     # L → RGB replicates the channel
    return arrays


def test_folder_rgb_sorted_labels_exact(tmp_path):
    arrays = make_folder(tmp_path)
    order = ["cats/a.png", "cats/b.png", "dogs/gray.png", "dogs/sub/c.png", "dogs/z.png"]
    x, y = D.load("folder", labels=True, path=tmp_path)
    assert x.shape == (5, 3, 6, 5)
    assert torch.equal(x, unit(np.stack([arrays[k] for k in order]).transpose(0, 3, 1, 2)))
    assert y.tolist() == [0, 0, 1, 1, 1] and D.folder_classes(tmp_path) == ["cats", "dogs"]
    assert torch.equal(D.load("folder", path=tmp_path, limit=2), x[:2])


def test_folder_grayscale_matches_pil(tmp_path):
    from PIL import Image

    arrays = make_folder(tmp_path)
    x = D.load("folder", path=tmp_path, mode="L")
    expected = np.asarray(Image.fromarray(arrays["cats/a.png"]).convert("L"))
    assert x.shape == (5, 1, 6, 5) and torch.equal(x[0, 0], unit(expected))


def test_folder_centre_crop_and_resize(tmp_path):
    from PIL import Image

    a = np.zeros((20, 40, 3), np.uint8)    # 40 wide, 20 high: bands 0 | 200 | 255 by column
    a[:, 10:30], a[:, 30:] = 200, 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    Image.fromarray(a.transpose(1, 0, 2)).save(tmp_path / "tall.png")   # 20 wide, 40 high
    x = D.load("folder", path=tmp_path, size=8)
    assert x.shape == (2, 3, 8, 8)
    # tall: centre 20×20 is rows 10..29 = 200 everywhere; wide: centre columns 10..29 = 200
    assert torch.equal(x, torch.full_like(x, 200 / 127.5 - 1))
    y = D.load("folder", path=tmp_path, size=(4, 8))          # aspect 1:2 → the wide image is kept whole
    assert y.shape == (2, 3, 4, 8)
    assert torch.equal(y[1, :, :, 0], torch.full((3, 4), -1.0)) and torch.equal(y[1, :, :, -1], torch.ones(3, 4))


def test_folder_errors(tmp_path):
    from PIL import Image

    make_folder(tmp_path)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "cats" / "odd.jpg")
    with pytest.raises(ValueError, match=r"odd\.jpg.*has size 7x7.*pass size="):
        D.load("folder", path=tmp_path)
    assert D.load("folder", path=tmp_path, size=4).shape == (6, 3, 4, 4)      # JPEG read, all resized
    (tmp_path / "loose.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"loose\.png.*corrupt or unreadable"):
        D.load("folder", path=tmp_path, size=4)
    (tmp_path / "loose.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match=r"labels=True needs every image inside a class sub-folder.*loose\.png"):
        D.load("folder", path=tmp_path, size=4, labels=True)
    with pytest.raises(ValueError, match="size must be"):
        D.load("folder", path=tmp_path, size=0)
    with pytest.raises(ValueError, match="mode must be"):
        D.load("folder", path=tmp_path, mode="CMYK")
    with pytest.raises(ValueError, match="no test/ sub-folder"):
        D.load("folder", "test", path=tmp_path)
    with pytest.raises(ValueError, match="holds no png"):
        (tmp_path / "empty").mkdir()
        D.load("folder", path=tmp_path / "empty")


def test_folder_train_test_layout(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "test" / "x")
    assert D.load("folder", "train", path=tmp_path).shape[0] == 5
    assert D.load("folder", "test", path=tmp_path).shape[0] == 5


# -- npy / npz ------------------------------------------------------------------------------------------------------
def test_npy_uint8_layouts_and_floats(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "hw.npy", a)
    assert torch.equal(D.load("npy", path=tmp_path / "hw.npy"), unit(a[:, None]))
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "hwc.npy", rgb)
    assert torch.equal(D.load("npy", path=tmp_path / "hwc.npy"), unit(rgb.transpose(0, 3, 1, 2)))
    f = np.random.default_rng(2).standard_normal((7, 3)) * 5          # floats: taken as given
    np.save(tmp_path / "f.npy", f)
    assert torch.equal(D.load("npy", path=tmp_path / "f.npy", dtype=torch.float64), torch.from_numpy(f))
    np.save(tmp_path / "i.npy", np.arange(6).reshape(3, 2).astype(np.int16))
    with pytest.raises(TypeError, match="uint8.*or floats.*int16"):
        D.load("npy", path=tmp_path / "i.npy")
    f[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", f)
    with pytest.raises(ValueError, match="NaN"):
        D.load("npy", path=tmp_path / "nan.npy")
    with pytest.raises(ValueError, match="labels_path"):
        D.load("npy", path=tmp_path / "hw.npy", labels=True)
    np.save(tmp_path / "y.npy", np.arange(4))
    x, y = D.load("npy", path=tmp_path / "hw.npy", labels=True, labels_path=tmp_path / "y.npy")
    assert y.tolist() == [0, 1, 2, 3]


def test_npz_keys_and_keras_layout(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(5))
    got, y = D.load("npy", path=tmp_path / "a.npz", labels=True)
    assert torch.equal(got, unit(x[:, None])) and y.tolist() == list(range(5))
    np.savez(tmp_path / "k.npz", x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.array([7, 8]))
    xt, yt = D.resolve(str(tmp_path / "k.npz"), split="test", labels=True)
    assert torch.equal(xt, unit(x[:2, None])) and yt.tolist() == [7, 8]
    assert D.resolve(tmp_path / "k.npz").shape == (5, 1, 4, 4)
    np.savez(tmp_path / "c.npz", foo=x)
    assert D.load("npy", path=tmp_path / "c.npz", key="foo").shape == (5, 1, 4, 4)
    with pytest.raises(ValueError, match=r"no images.*\['foo'\]"):
        D.load("npy", path=tmp_path / "c.npz")
    with pytest.raises(ValueError, match="mmap=True needs a .npy"):
        D.load("npy", path=tmp_path / "c.npz", key="foo", mmap=True)


@pytest.mark.parametrize("hflip", [False, True])
def test_mmap_array_dataset_chunks_equal_full(tmp_path, hflip):
    a = np.random.default_rng(0).integers(0, 256, (23, 2, 3, 5), dtype=np.uint8)
    np.save(tmp_path / "big.npy", a)
    full = D.load("npy", path=tmp_path / "big.npy", hflip=hflip)
    ds = D.load("npy", path=tmp_path / "big.npy", mmap=True, hflip=hflip)
    assert isinstance(ds, D.ArrayDataset) and isinstance(ds.array, np.memmap)
    assert len(ds) == full.shape[0] == 23 * (2 if hflip else 1) and ds.shape == full.shape
    chunks = list(ds.chunks(5))
    assert all(c.shape[0] <= 5 for c in chunks) and torch.equal(torch.cat(chunks), full)
    assert torch.equal(torch.cat(list(D.iter_chunks(ds, 7))), full)
    assert torch.equal(ds.to_tensor(), full)
    assert torch.equal(ds[3:11], full[3:11]) and torch.equal(ds[-1], full[-1])
    idx = [len(ds) - 1, 0, 4, 4]
    assert torch.equal(ds[idx], full[idx]) and torch.equal(ds[torch.tensor(idx)], full[idx])
    assert ds.to(dtype=torch.float64)[0:2].dtype == torch.float64
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_mmap_limit_and_labels(tmp_path):
    a = np.random.default_rng(0).standard_normal((9, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", a)
    np.save(tmp_path / "y.npy", np.arange(9))
    ds, y = D.load("npy", path=tmp_path / "v.npy", mmap=True, limit=4, labels=True, labels_path=tmp_path / "y.npy")
    assert len(ds) == 4 and torch.equal(ds[0:4], torch.from_numpy(a[:4])) and y.tolist() == [0, 1, 2, 3]
    chunk = ds[0:2]
    chunk += 1.0                     # a chunk is a private copy, never a view of the read-only map
    assert torch.equal(ds[0:2], torch.from_numpy(a[:2]))
    rgb = np.random.default_rng(1).integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)   # [N, H, W, C] on disk
    np.save(tmp_path / "nhwc.npy", rgb)
    ds = D.load("npy", path=tmp_path / "nhwc.npy", mmap=True, limit=5)
    assert ds.shape == (5, 3, 4, 5) and torch.equal(ds.to_tensor(), unit(rgb[:5].transpose(0, 3, 1, 2)))


def test_iter_chunks_tensor():
    x = torch.arange(10.0).reshape(5, 2)
    assert [c.shape[0] for c in D.iter_chunks(x, 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="chunk_size"):
        list(D.iter_chunks(x, 0))
    with pytest.raises(TypeError, match="data must be"):
        list(D.iter_chunks([1, 2], 2))


# -- digits and toy sets --------------------------------------------------------------------------------------------
def test_digits_split_and_scaling():
    from sklearn.datasets import load_digits

    ref = load_digits()
    x, y = D.load("digits", "train", labels=True)
    xt, yt = D.load("digits", "test", labels=True)
    assert x.shape == (1500, 1, 8, 8) and xt.shape == (297, 1, 8, 8)
    expected = torch.from_numpy(ref.images[:, None] / 8.0 - 1.0).float()
    assert torch.equal(torch.cat([x, xt]), expected) and x.min() == -1 and x.max() == 1
    assert torch.equal(torch.cat([y, yt]), torch.from_numpy(ref.target).long())


@pytest.mark.parametrize("name", ["two-moons", "swiss-roll", "gmm-grid", "checkerboard"])
def test_toy_deterministic_by_seed(name):
    a = D.load(name, n=500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, D.load(name, n=500, seed=3))
    assert not torch.equal(a, D.load(name, n=500, seed=4))
    assert not torch.equal(a, D.load(name, "test", n=500, seed=3))
    assert torch.equal(D.load(name, n=500, seed=3, dtype=torch.float64).float(), a)


def test_toy_geometry_exact():
    x, y = D.load("two-moons", n=1001, noise=0.0, labels=True, dtype=torch.float64)
    assert (y == 0).sum() == 501 and (y == 1).sum() == 500
    c = torch.tensor([0.5, 0.25], dtype=torch.float64)
    centre = torch.where(y[:, None] == 0, -c, torch.tensor([1.0, 0.5], dtype=torch.float64) - c)
    torch.testing.assert_close((x - centre).norm(dim=1), torch.ones(1001, dtype=torch.float64), rtol=0, atol=1e-12)
    r = D.load("swiss-roll", n=500, noise=0.0, dtype=torch.float64)
    t = 10 * r.norm(dim=1)                                           # |x| = t / 10, angle ≡ t (mod 2π)
    assert t.min() >= 1.5 * np.pi - 1e-9 and t.max() <= 4.5 * np.pi + 1e-9
    torch.testing.assert_close(torch.stack([t.cos(), t.sin()], 1) * t[:, None] / 10, r, rtol=0, atol=1e-12)
    b = D.load("checkerboard", n=2000, dtype=torch.float64)
    assert b.abs().max() <= 2 and (b.floor().sum(1) % 2 == 0).all()
    g, k = D.load("gmm-grid", n=4000, labels=True, dtype=torch.float64)
    means = torch.from_numpy(D.gmm_grid_means())
    assert torch.equal(torch.cdist(g, means).argmin(1), k)           # 5σ from any other component
    z = (g - means[k]) / D.GMM_GRID_STD                              # standardised residuals ~ N(0, I)
    assert abs(z.mean()) < 0.1 and abs(z.var() - 1) < 0.1
    with pytest.raises(ValueError, match="'swiss-roll' has no labels"):
        D.load("swiss-roll", labels=True)


# -- common options and resolve -------------------------------------------------------------------------------------
def test_common_options():
    x, y = D.load("digits", "test", labels=True, limit=3, hflip=True, dtype=torch.float64)
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.float64 and y.tolist() == y[:3].tolist() * 2
    assert torch.equal(x[3:], x[:3].flip(-1))
    assert D.load("two-moons", n=10, limit=50).shape == (10, 2)               # limit beyond N: all
    with pytest.raises(ValueError, match="hflip needs images"):
        D.load("two-moons", n=10, hflip=True)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        D.load("digits", dtype=torch.int32)
    with pytest.raises(TypeError, match=r"does not accept option\(s\) size; it accepts n, seed"):
        D.load("checkerboard", size=3)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        D.load("digits", "val")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        D.load("digits", limit=0)
    with pytest.raises(ValueError, match=r"data set name must be one of \['checkerboard'"):
        D.load("imagenet")
    with pytest.raises(ValueError, match="needs path="):
        D.load("folder")


def test_resolve_by_kind(tmp_path):
    ref = write_idx_dir(tmp_path / "idx")
    assert torch.equal(D.resolve(str(tmp_path / "idx"), split="test"), unit(ref["test"][0][:, None]))
    make_folder(tmp_path / "imgs")
    assert D.resolve(tmp_path / "imgs", size=3).shape == (5, 3, 3, 3)
    assert D.resolve("digits", limit=2).shape == (2, 1, 8, 8)
    (tmp_path / "m.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown format"):
        D.resolve(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.resolve(str(tmp_path / "nope.npy"))
    with pytest.raises(ValueError, match=r"one of \[.*'two-moons'\] or an existing path"):
        D.resolve("nonsense")


# -- CLI --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def run(monkeypatch):
    """`scorelab.cli.main` with the data sub-command alone (independent of the other commands' state)."""
    monkeypatch.setattr(cli, "COMMANDS", ["data"])
    return cli.main


def test_cli_list_and_show(run, tmp_path, capsys):
    from PIL import Image

    assert run(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "| fashion-mnist" in out and "| two-moons" in out
    assert run(["data", "show", "digits", "--split", "test", "--n", "16", "--out", str(tmp_path / "d.png")]) == 0
    with Image.open(tmp_path / "d.png") as im:
        assert im.format == "PNG" and im.size == (4 * 8 * 7 + 5 * 2 * 7,) * 2   # 4×4 grid, 8 px ×7, padding 2 ×7
    assert run(["data", "show", "two-moons", "--n", "300", "--out", str(tmp_path / "m.png")]) == 0
    with Image.open(tmp_path / "m.png") as im:
        assert im.format == "PNG"
    make_folder(tmp_path / "imgs")
    assert run(["data", "show", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()


def test_cli_export_roundtrip(run, tmp_path):
    ref = write_idx_dir(tmp_path / "idx")
    out = tmp_path / "e.npz"
    assert run(["data", "export", str(tmp_path / "idx"), "--labels", "--uint8", "--out", str(out)]) == 0
    with np.load(out) as z:
        assert np.array_equal(z["x"], ref["train"][0][:, None]) and np.array_equal(z["y"], ref["train"][1])
    assert run(["data", "export", "gmm-grid", "--n", "50", "--seed", "1", "--out", str(tmp_path / "g.npy")]) == 0
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "g.npy")), D.load("gmm-grid", n=50, seed=1))


def test_cli_bad_input_exits_2(run, tmp_path, capsys):
    assert run(["data", "show", "nonsense", "--out", str(tmp_path / "x.png")]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert run(["data", "show", "digits", "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert run(["data", "show", "digits", "--seed", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert run(["data", "export", "digits", "--labels", "--out", str(tmp_path / "x.npy")]) == 2
    make_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    assert run(["data", "show", str(tmp_path / "imgs"), "--out", str(tmp_path / "x.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.npy").exists()
    with pytest.raises(SystemExit) as e:
        run(["data", "show", "--help"])
    assert e.value.code == 0
