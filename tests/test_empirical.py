"""Empirical: exact float64 brute-force posterior mean, chunk-size independence, limits, flips, labels, mmap, IO."""

import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab.models.empirical import pack_data, unpack_data


def brute(data, x, sigma):
    """Float64 softmax(−‖x − y_i‖²/2σ²) · y over all points, no tricks."""
    y = data.double().reshape(data.shape[0], -1)
    q = x.double().reshape(x.shape[0], -1)
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    logits = -((q[:, None, :] - y[None]) ** 2).sum(-1) / (2 * s ** 2)
    return (torch.softmax(logits, 1) @ y).reshape(x.shape)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 2, 3, 4, generator=g) * 2


def near_ties(data, sigma, n=12):
    """Queries between two training points whose softmax is far from one-hot at this σ (logit gap O(1))."""
    y0, y1 = data[:n].double(), data[n:2 * n].double()
    u = (y1 - y0)
    t = torch.linspace(-1.5, 1.5, n).view(-1, 1, 1, 1)
    return (y0 + y1) / 2 + t * sigma ** 2 * u / u.flatten(1).pow(2).sum(1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("sigma", [1e-4, 1e-2, 0.3, 1.0, 3.0, 100.0, 1e4])
def test_float64_equals_brute_force(data, sigma):
    g = torch.Generator().manual_seed(1)
    model = sl.Empirical(data.double(), chunk_size=64)
    x = near_ties(data, sigma) if sigma < 0.5 else torch.randn(12, 2, 3, 4, generator=g).double() * sigma
    out = model(x, sigma)
    ref = brute(data, x, sigma)
    assert torch.isfinite(out).all()
    # a float64 softmax over logits of size ‖x−y‖²/2σ² is itself only accurate to ~1e-16·‖x−y‖²/σ²
    tol = 1e-10 + 1e-16 * float(torch.cdist(x.flatten(1), data.double().flatten(1)).max() ** 2) / sigma ** 2
    torch.testing.assert_close(out, ref, rtol=0, atol=max(tol, 1e-10) * 100)


@pytest.mark.parametrize("sigma", [1e-4, 1e-3, 0.05, 1.0, 30.0])
def test_float32_matches_brute_force_including_small_sigma(data, sigma):
    """The float32 GEMM is refined in float64 where its error would matter: near-ties at σ = 1e-4 are exact."""
    x = (near_ties(data, sigma) if sigma < 0.5 else data[:12].double() + sigma * torch.randn(12, 2, 3, 4)).float()
    out = sl.Empirical(data, chunk_size=50)(x, sigma)
    ref = brute(data, x, sigma)  # float64 on the same float32 inputs
    assert out.dtype == torch.float32
    # weights must not be one-hot in this test (otherwise it checks nothing beyond argmin)
    if sigma < 0.5:
        assert (ref.double() - data[:12].double()).abs().amax() > 0.1
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5 * float(data.abs().max()))


def test_limits_nearest_point_and_mean(data):
    model = sl.Empirical(data.double())
    x = data[:5].double() + 1e-3 * torch.randn(5, 2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x, 1e-4), data[:5].double(), rtol=0, atol=0)  # exactly the nearest point
    torch.testing.assert_close(model(x, 0.0), data[:5].double(), rtol=0, atol=0)   # σ = 0: the limit
    far = torch.randn(4, 2, 3, 4, dtype=torch.float64)
    mean = data.double().mean(0, keepdim=True).expand(4, -1, -1, -1)
    torch.testing.assert_close(model(far, 1e8), mean, rtol=0, atol=1e-12)


def test_chunk_size_independent(data):
    x = torch.randn(9, 2, 3, 4, dtype=torch.float64) * 2
    outs = [sl.Empirical(data.double(), chunk_size=c, query_chunk=q)(x, 1.3) for c, q in [(3, 2), (7, 4), (300, 9),
                                                                                          (5000, 1024)]]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-13)


def test_per_sample_sigma(data):
    x = torch.randn(4, 2, 3, 4, dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 2.0, 10.0])
    out = sl.Empirical(data.double())(x, s)
    for i in range(4):
        torch.testing.assert_close(out[i], brute(data, x[i:i + 1], float(s[i]))[0], rtol=0, atol=1e-10)


def test_flip_equals_explicit_mirrored_data(data):
    both = torch.cat([data, data.flip(-1)]).double()
    x = torch.randn(6, 2, 3, 4, dtype=torch.float64) * 2
    for s in (0.3, 2.0):
        torch.testing.assert_close(sl.Empirical(data.double(), flip=True)(x, s), brute(both, x, s), rtol=0, atol=1e-10)


def test_class_conditioning(data):
    labels = torch.arange(300) % 3
    model = sl.Empirical(data.double(), labels=labels, chunk_size=40)
    x = torch.randn(6, 2, 3, 4, dtype=torch.float64)
    q = torch.tensor([0, 1, 2, 2, 1, 0])
    out = model(x, 0.8, class_labels=q)
    for i in range(6):
        torch.testing.assert_close(out[i], brute(data[labels == q[i]], x[i:i + 1], 0.8)[0], rtol=0, atol=1e-10)
    # one training point per class: the class-conditional mean is that point at every σ (no leak from others)
    one = sl.Empirical(data[:3].double(), labels=torch.arange(3))
    far = 1e3 * torch.randn(3, 2, 3, 4, dtype=torch.float64)
    assert torch.equal(one(far, 0.01, class_labels=torch.tensor([2, 0, 1])), data[[2, 0, 1]].double())


def test_memory_mapped_data_and_save_reference(tmp_path, data):
    path = tmp_path / "train.npy"
    np.save(path, data.numpy())
    mm = np.load(path, mmap_mode="r")
    model = sl.Empirical(mm, chunk_size=32)
    x = torch.randn(5, 2, 3, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x, 0.7).double(), brute(data, x, 0.7), rtol=0, atol=2e-5 * float(data.abs().max()))
    model.save(tmp_path / "m.safetensors")
    again = sl.models.load(tmp_path / "m.safetensors")
    torch.testing.assert_close(again(x, 0.7), model(x, 0.7), rtol=0, atol=0)


def test_save_load_roundtrip_quantised_exactly(tmp_path):
    codes = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    x = codes.float() / 127.5 - 1  # the [-1, 1] image convention
    tensors, cfg = pack_data(x)
    assert cfg["storage"] == "uint8-table" and torch.equal(unpack_data(tensors, cfg), x)
    model = sl.Empirical(x, flip=True)
    model.save(tmp_path / "e.safetensors")
    again = sl.Empirical.load(tmp_path / "e.safetensors")
    assert torch.equal(again.data_, x) and again.flip
    q = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(again(q, 0.4), model(q, 0.4), rtol=0, atol=0)
    noisy = torch.randn(20, 3)
    _, cfg = pack_data(noisy)
    assert cfg["storage"] == "float32"


def test_bad_input(data):
    with pytest.raises(ValueError, match="NaN"):
        sl.Empirical(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    model = sl.Empirical(data)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 5), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        model(torch.randn(2, 2, 3, 4), -1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        sl.Empirical(data, chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        sl.Empirical(data, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class_labels"):
        model(torch.randn(2, 2, 3, 4), 1.0, class_labels=torch.tensor([0, 1]))


CLI_CASES = [("empirical", ["--flip"], ["--chunk-size", "0"]),
             ("knn", ["--k", "5", "--n-random", "8", "--index", "torch"], ["--k", "41"]),
             ("cfdm", ["--smoothing", "0.2", "--n-draws", "2"], ["--smoothing", "-1"]),
             ("gmm", ["--n-components", "2", "--covariance", "diag", "--max-iter", "3"], ["--n-components", "41"])]


@pytest.mark.parametrize("kind,opts,bad", CLI_CASES)
def test_cli_fit_then_load(tmp_path, data, kind, opts, bad, capsys):
    """`scorelab fit KIND` builds the model from its options (commands/fit.py); the file loads back; bad options
    exit 2."""
    from scorelab.cli import main

    path = tmp_path / "train.npy"
    np.save(path, data[:40].numpy())
    out = tmp_path / f"{kind}.safetensors"
    assert main(["fit", kind, "--data", str(path), "--out", str(out), *opts]) == 0
    model = sl.models.load(out)
    assert model.kind == kind
    x = torch.randn(3, 2, 3, 4)
    assert model(x, 0.5).shape == x.shape and torch.isfinite(model(x, 0.5)).all()
    capsys.readouterr()
    assert main(["fit", kind, "--data", str(path), "--out", str(tmp_path / "bad.safetensors"), *opts, *bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad[0].lstrip("-").replace("-", "_") in err


@pytest.mark.parametrize("base2", [False, True])
def test_streamed_softmax_kernel_equals_softmax_in_one_piece(base2):
    """models.softmax.SoftmaxSums (the one streamed-posterior kernel of Empirical, KNN, GMM, ELS/PSPC, Wiener):
    any chunking, and merging two halves, give softmax(ℓ) @ v computed in one piece in float64 — also for
    logits of size 1e6, where exp alone overflows."""
    from scorelab.models.softmax import SoftmaxSums

    gen = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e6):
        logits = torch.randn(4, 50, generator=gen, dtype=torch.float64) * scale
        values = torch.randn(50, 3, generator=gen, dtype=torch.float64)
        want = torch.softmax(logits * (math.log(2) if base2 else 1.0), dim=1) @ values
        for chunk in (1, 7, 50):
            sums = SoftmaxSums.empty((4,), (3,), base2=base2)
            for a in range(0, 50, chunk):
                w = sums.weights(logits[:, a:a + chunk].clone())
                sums.add(w.sum(1), w @ values[a:a + chunk])
            torch.testing.assert_close(sums.mean(), want, rtol=1e-12, atol=1e-12)
        halves = []
        for part in (slice(0, 20), slice(20, 50)):
            h = SoftmaxSums.empty((4,), (3,), base2=base2)
            w = h.weights(logits[:, part].clone())
            h.add(w.sum(1), w @ values[part])
            halves.append(h)
        torch.testing.assert_close(halves[0].merge(halves[1]).mean(), want, rtol=1e-12, atol=1e-12)
