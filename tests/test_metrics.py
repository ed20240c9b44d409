"""Metrics: closed forms, float64 brute force and peer libraries (scipy, scikit-learn, torch.distributions)."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import scorelab as sl
from scorelab.metrics.frechet import (FeatureStats, fd_inf, feature_stats, fid, fid_difference,
                                      frechet_distance)
from scorelab.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from scorelab.metrics.lowdim import energy_distance, gaussian_frechet, gaussian_kl, sliced_wasserstein
from scorelab.metrics.precision_recall import precision_recall


def exact_moments(n, mu, cov, seed):
    """n samples whose sample mean is exactly mu and unbiased sample covariance exactly cov."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mu), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    return mu + z @ torch.linalg.cholesky(cov).T


def random_cov(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64))


# --- Fréchet -------------------------------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(3000, 64, generator=torch.Generator().manual_seed(0)) * 3 + 10
    assert abs(fid(x, x)) < 1e-8


def test_feature_stats_match_float64_cov_with_large_offset():
    x = 1e4 + torch.randn(1000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = feature_stats(x.float(), chunk=128)
    ref = torch.cov(x.float().double().T)
    assert torch.allclose(s.sigma, ref, atol=1e-10, rtol=1e-8)
    assert torch.allclose(s.mu, x.float().double().mean(0), rtol=1e-12)


def test_fd_between_gaussian_feature_sets_equals_closed_form_diagonal():
    d = 12
    a_var = torch.linspace(0.5, 3, d, dtype=torch.float64)
    b_var = torch.linspace(2, 0.2, d, dtype=torch.float64)
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.3, dtype=torch.float64)
    fa = exact_moments(500, mu_a, torch.diag(a_var), 0)
    fb = exact_moments(700, mu_b, torch.diag(b_var), 1)
    closed = float((mu_a - mu_b).square().sum() + (a_var.sqrt() - b_var.sqrt()).square().sum())
    assert fid(fa, fb) == pytest.approx(closed, rel=1e-9)


def test_fd_matches_scipy_sqrtm_for_non_commuting_covariances():
    d = 20
    c1, c2 = random_cov(d, 2), random_cov(d, 3, 2.0)
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    ref = float((mu1 - mu2).square().sum()) + float(np.trace(c1.numpy()) + np.trace(c2.numpy()) - 2 * np.trace(covmean))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    assert fid(FeatureStats(mu1, c1, 10), (mu2, c2)) == pytest.approx(ref, rel=1e-9)


def test_fd_inf_recovers_the_population_limit():
    # Features from N(μ_a, Σ_a) against the exact population statistics of N(μ_b, Σ_b): FD_N is biased
    # upwards by ~ k/N; the extrapolation removes the bias down to the sampling noise of the 20,000 features.
    d = 32
    c_a, c_b = random_cov(d, 4), random_cov(d, 5)
    mu_a, mu_b = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.1, dtype=torch.float64)
    true = frechet_distance(mu_a, c_a, mu_b, c_b)
    g = torch.Generator().manual_seed(6)
    feats = mu_a + torch.randn(20000, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(c_a).T
    res = fd_inf(feats, FeatureStats(mu_b, c_b, -1), n_points=15, min_n=200, seed=0)
    biased = res.fds[0]  # FD at N = 200
    assert biased - true > 1.0 and res.slope > 0
    assert abs(res.value - true) < 0.1 * (biased - true)
    assert abs(res.value - true) < 0.01 * true


def test_fid_difference_interval_contains_zero_when_equal_and_not_when_shifted():
    g = torch.Generator().manual_seed(7)
    ref = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(2000, 6, generator=g, dtype=torch.float64)  # shared "seeds": paired samples
    a = noise * 1.1
    b_same = noise * 1.1 + 1e-9
    same = fid_difference(a, b_same, ref, n_boot=50, progress=False)
    assert same.low <= 0 <= same.high and not same.significant
    b_worse = noise * 1.1 + 0.2
    worse = fid_difference(a, b_worse, ref, n_boot=50, progress=False)
    assert worse.significant and worse.high < 0
    assert worse.difference == pytest.approx(fid(a, ref) - fid(b_worse, ref), rel=1e-12)


# --- KID -----------------------------------------------------------------------------------------------------

def test_mmd2_matches_float64_brute_force():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    k = lambda u, v: (float(u @ v) / 3 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_for_identical_distributions():
    # Fresh independent samples of one distribution: the mean of the unbiased estimate is 0 within its standard
    # error, while the biased (V-statistic) estimate is clearly positive on the same draws.
    g = torch.Generator().manual_seed(9)
    m, reps, vals, biased = 50, 400, [], []
    for _ in range(reps):
        x, y = torch.rand(m, 4, generator=g, dtype=torch.float64), torch.rand(m, 4, generator=g, dtype=torch.float64)
        vals.append(mmd2_unbiased(x, y))
        biased.append(float(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
                            - 2 * polynomial_kernel(x, y).mean()))
    v, b = torch.tensor(vals), torch.tensor(biased)
    se = float(v.std() / math.sqrt(reps))
    assert abs(float(v.mean())) < 4 * se
    assert float(b.mean()) > 10 * se


def test_kid_linear_kernel_recovers_mean_difference():
    # degree 1: MMD² = ‖μ_a − μ_b‖² / D exactly in expectation
    d = 5
    g = torch.Generator().manual_seed(10)
    shift = torch.tensor([1.0, -0.5, 0.25, 0.0, 2.0], dtype=torch.float64)
    a = torch.randn(4000, d, generator=g, dtype=torch.float64)
    b = torch.randn(4000, d, generator=g, dtype=torch.float64) + shift
    res = kid(a, b, degree=1, n_subsets=20, subset_size=500)
    assert res.mean == pytest.approx(float(shift.square().sum()) / d, rel=0.05)  # sampling error ≈ 1.5%


# --- precision / recall --------------------------------------------------------------------------------------

def test_precision_recall_matches_sklearn_brute_force():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(11)
    real = torch.randn(300, 5, generator=g, dtype=torch.float64)
    fake = torch.randn(250, 5, generator=g, dtype=torch.float64) * 1.3 + 0.4
    k = 3

    def manifold(support, query):
        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(support.numpy()).kneighbors(support.numpy())
        radii = dist[:, k]
        d = scipy.spatial.distance.cdist(query.numpy(), support.numpy())
        return float((d <= radii[None]).any(1).mean())

    res = precision_recall(real, fake, k=k, chunk=64)
    assert res.precision == pytest.approx(manifold(real, fake), abs=1e-12)
    assert res.recall == pytest.approx(manifold(fake, real), abs=1e-12)
    assert 0 < res.precision < 1 and 0 < res.recall < 1  # a non-trivial case
    assert tuple(precision_recall(real, real)) == (1.0, 1.0)
    assert tuple(precision_recall(real, fake + 100)) == (0.0, 0.0)


# --- low-dimensional -----------------------------------------------------------------------------------------

def test_sliced_wasserstein_in_1d_equals_scipy_wasserstein_unequal_sizes():
    g = torch.Generator().manual_seed(12)
    a = torch.randn(37, 1, generator=g, dtype=torch.float64)
    b = torch.randn(53, 1, generator=g, dtype=torch.float64) * 2 + 1
    ref = scipy.stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert sliced_wasserstein(a, b, p=1, n_projections=3) == pytest.approx(ref, rel=1e-12)


def test_sliced_wasserstein_of_a_shift_is_norm_over_sqrt_d():
    # b = a + c: every projection moves by θᵀc, so SW₂² = E(θᵀc)² = ‖c‖²/d
    g = torch.Generator().manual_seed(13)
    a = torch.randn(200, 2, generator=g, dtype=torch.float64)
    c = torch.tensor([0.3, -1.2], dtype=torch.float64)
    sw = sliced_wasserstein(a, a + c, n_projections=4000, chunk=1000)
    assert sw ** 2 == pytest.approx(float(c.square().sum()) / 2, rel=0.03)


def test_energy_distance_matches_scipy_in_1d():
    g = torch.Generator().manual_seed(14)
    a, b = torch.randn(80, 1, generator=g, dtype=torch.float64), torch.rand(60, 1, generator=g, dtype=torch.float64)
    ref = scipy.stats.energy_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert energy_distance(a, b, chunk=16) == pytest.approx(ref, rel=1e-10)


def test_energy_distance_bounds_cost_and_memory(monkeypatch):
    """Sets above max_samples are subsampled (seeded, without replacement: the same value as the exact statistic on
    those subsets); distances are computed in chunk × chunk blocks; above EXACT_DIM dimensions the GEMM form agrees
    with the coordinate-wise sum; progress=True asks for a bar over the blocks."""
    from scorelab.metrics import lowdim

    g = torch.Generator().manual_seed(21)
    a, b = torch.randn(300, 3, generator=g, dtype=torch.float64), torch.randn(250, 3, generator=g, dtype=torch.float64) + 0.5
    gen = torch.Generator().manual_seed(7)
    ia = torch.randperm(300, generator=gen)[:100].sort().values
    ib = torch.randperm(250, generator=gen)[:100].sort().values
    want = energy_distance(a[ia], b[ib], max_samples=None)
    assert energy_distance(a, b, max_samples=100, seed=7) == pytest.approx(want, rel=1e-12)
    assert energy_distance(a, b, max_samples=300) == energy_distance(a, b, max_samples=None)  # nothing to drop

    import scorelab._io

    shapes, bars = [], []
    cdist, progress_bar = torch.cdist, scorelab._io.progress_bar
    monkeypatch.setattr(torch, "cdist", lambda x, y, **kw: shapes.append((len(x), len(y))) or cdist(x, y, **kw))
    monkeypatch.setattr(scorelab._io, "progress_bar", lambda **kw: bars.append(kw) or progress_bar(**kw))
    energy_distance(a, b, chunk=64, progress=True)
    assert max(max(s) for s in shapes) == 64 and len(shapes) == 5 * 4 + 5 * 5 + 4 * 4
    assert [(kw["desc"], kw["total"], kw["enabled"]) for kw in bars] == [("energy distance", len(shapes), True)]
    monkeypatch.undo()

    x, y = torch.randn(120, 64, generator=g, dtype=torch.float64), torch.randn(90, 64, generator=g, dtype=torch.float64)
    fast = energy_distance(x, y + 0.1)
    monkeypatch.setattr(lowdim, "EXACT_DIM", 10_000)
    assert fast == pytest.approx(energy_distance(x, y + 0.1), rel=1e-9)


def test_lowdim_distances_need_the_same_dimension():
    for fn in (energy_distance, sliced_wasserstein):
        with pytest.raises(ValueError, match=r"a and b must have the same dimension.*\(5, 2\).*d = 2.*\(4, 1, 2, 2\).*d = 4"):
            fn(torch.randn(5, 2), torch.randn(4, 1, 2, 2))
    with pytest.raises(ValueError, match="max_samples must be >= 2"):
        energy_distance(torch.randn(5, 2), torch.randn(5, 2), max_samples=1)


def test_fid_warns_below_the_documented_minimum():
    """sl.metrics.fid on fewer than MIN_SAMPLES_PER_DIM·D samples warns (naming the set and the minimum); at or above
    it, and for (μ, Σ) pairs whose sample count is unknown, it does not."""
    import warnings

    from scorelab.metrics.frechet import MIN_SAMPLES_PER_DIM, FIDSampleSizeWarning

    g = torch.Generator().manual_seed(22)
    d = 8
    enough = MIN_SAMPLES_PER_DIM * d
    big, few = torch.randn(enough, d, generator=g), torch.randn(10, d, generator=g)
    with pytest.warns(FIDSampleSizeWarning, match=rf"10 samples in a with 8-dimensional features.*{enough} samples"):
        value = fid(few, big)
    assert value == pytest.approx(frechet_distance(*feature_stats(few)[:2], *feature_stats(big)[:2]), rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid(big, big + 1)
        fid((torch.zeros(d), torch.eye(d)), big)
    assert sl.metrics.fid is fid


def test_gaussian_frechet_and_kl_closed_forms():
    d = 6
    c1, c2 = random_cov(d, 15), random_cov(d, 16, 0.5)
    m1, m2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    peer = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(m1, c1),
                                             torch.distributions.MultivariateNormal(m2, c2))
    assert gaussian_kl((m1, c1), (m2, c2)) == pytest.approx(float(peer), rel=1e-10)
    assert gaussian_kl((m1, c1), (m1, c1)) == pytest.approx(0.0, abs=1e-12)
    # 1-D: W₂² = (m1 − m2)² + (s1 − s2)²
    assert gaussian_frechet(([1.0], [[4.0]]), ([-1.0], [[9.0]])) == pytest.approx(4.0 + 1.0, rel=1e-12)
    covmean = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    ref = float((m1 - m2).square().sum()) + float(np.trace(c1.numpy() + c2.numpy()) - 2 * np.trace(covmean))
    assert gaussian_frechet((m1, c1), (m2, c2)) == pytest.approx(ref, rel=1e-9)


def test_gaussian_metrics_accept_fitted_gaussian():
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(17), dtype=torch.float64) * 2 + 1
    g = sl.Gaussian.fit(x)
    mu, cov = x.mean(0), torch.cov(x.T)
    assert gaussian_frechet(g, (mu, cov)) == pytest.approx(0.0, abs=0.02 * float(cov.trace()))
    assert gaussian_kl(g, (mu, cov)) == pytest.approx(0.0, abs=1e-2)


# --- bad input -----------------------------------------------------------------------------------------------

def test_bad_input_messages():
    a28, a32 = torch.zeros(4, 1, 28, 28), torch.zeros(4, 1, 32, 32)
    with pytest.raises(ValueError, match="same image size"):
        fid(a28, a32)
    with pytest.raises(ValueError, match="same feature dimension"):
        kid(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="needs at least 50"):
        kid(torch.randn(10, 3), torch.randn(100, 3), subset_size=50)
    with pytest.raises(ValueError, match="needs at least 2"):
        fid(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="needs at least 4"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)
    nan = torch.zeros(4, 1, 8, 8)
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fid(nan, torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match="a has 20 samples.*needs at least"):
        fd_inf(torch.randn(20, 2), torch.randn(50, 2), n_points=15, min_n=10)
    with pytest.raises(ValueError, match="paired"):
        fid_difference(torch.randn(10, 2), torch.randn(11, 2), torch.randn(10, 2))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        fid([[1.0]], torch.randn(3, 1))


# --- Inception network path (a handful of images, once) ------------------------------------------------------

def test_preprocess_maps_pixels_to_tf_inception_range():
    from scorelab.metrics.inception import preprocess, quantize

    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).reshape(4, 1, 1, 1).expand(4, 1, 5, 7)
    u = quantize(x)
    assert u[:, 0, 0, 0].tolist() == [0, 128, 255, 191]  # round((x + 1)·127.5)
    inp = preprocess(u)
    assert inp.shape == (4, 3, 299, 299)
    expected = torch.tensor([0, 128, 255, 191], dtype=torch.float32) / 128 - 1
    # constant images stay constant through the bilinear resize (to float32 round-off)
    assert torch.allclose(inp.amin((1, 2, 3)), expected, atol=1e-6)
    assert torch.allclose(inp.amax((1, 2, 3)), expected, atol=1e-6)


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory):
    """A cache directory holding the features of the first 2 digits test images (one network run per module)."""
    from scorelab.metrics.stats import cached_image_features

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SCORELAB_CACHE", str(cache))
    images = sl.data.load("digits", split="test", limit=2)
    feats = cached_image_features(images, batch_size=2, progress=False)
    yield cache, images, feats
    mp.undo()


def test_inception_features_on_a_few_images(inception_cache, monkeypatch):
    from scorelab.metrics.stats import cached_image_features

    cache, images, f = inception_cache
    monkeypatch.setenv("SCORELAB_CACHE", str(cache))
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # pool3 after ReLU
    assert (f[0] - f[1]).abs().max() > 1e-3  # different images → different features
    assert 0.05 < float(f.mean()) < 2  # the scale of Inception pool3 features
    assert len(list((cache / "features").rglob("*.safetensors"))) == 1
    # the cache answers for the same 8-bit content: a sub-quantum perturbation does not run the network
    assert torch.equal(cached_image_features(images + 1e-4, progress=False), f)


def test_grayscale_and_rgb_copies_give_the_same_network_input():
    from scorelab.metrics.inception import preprocess, quantize

    g = torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(18)) * 2 - 1
    assert torch.equal(preprocess(quantize(g)), preprocess(quantize(g.expand(2, 3, 9, 9))))


# --- command line --------------------------------------------------------------------------------------------

def test_cli_metrics_fid_and_lowdim_match_python(tmp_path, capsys):
    import json

    from scorelab.cli import main

    test = sl.data.load("digits", split="test", limit=120)
    samples = (test[:80] + 0.1 * torch.randn(80, 1, 8, 8, generator=torch.Generator().manual_seed(19))).clamp(-1, 1)
    np.save(tmp_path / "s.npy", samples.numpy())
    assert main(["metrics", "fid", "--samples", str(tmp_path / "s.npy"), "--data", "digits", "--split", "test",
                 "--limit", "120", "--features", "pixels", "--kid", "--kid-subsets", "10", "--pr", "--fd-inf",
                 "--plot", str(tmp_path / "p.png"),
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    a, b = samples.reshape(80, -1).double(), test.reshape(120, -1).double()
    assert r["fid"] == pytest.approx(fid(a, b), rel=1e-9)
    assert r["kid"] == pytest.approx(kid(a, b, subset_size=80, n_subsets=10).mean, rel=1e-9)
    assert (r["precision"], r["recall"]) == pytest.approx(tuple(precision_recall(b, a)))
    assert (tmp_path / "p.png").stat().st_size > 1000
    capsys.readouterr()
    # 8×8 digits against 2-D two-moons: one line, exit 2
    assert main(["metrics", "fid", "--samples", str(tmp_path / "s.npy"), "--data", "two-moons"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image size" in err[0]
    moons = sl.data.load("two-moons")[:200]
    np.save(tmp_path / "m.npy", moons.numpy())
    assert main(["metrics", "lowdim", "--samples", str(tmp_path / "m.npy"), "--data", "two-moons", "--limit", "300",
                 "--json", str(tmp_path / "l.json")]) == 0
    lo = json.loads((tmp_path / "l.json").read_text())
    assert lo["energy_distance"] == pytest.approx(energy_distance(moons, sl.data.load("two-moons", limit=300)), rel=1e-9)


def test_cli_metrics_stats_caches_reference_statistics(inception_cache, monkeypatch, capsys):
    import json

    from scorelab.cli import main
    from scorelab.metrics.stats import reference_stats

    cache, images, feats = inception_cache
    monkeypatch.setenv("SCORELAB_CACHE", str(cache))
    # the 2 images' feature block is cached already: no network run, only the statistics are computed and saved
    assert main(["metrics", "stats", "--data", "digits", "--split", "test", "--limit", "2", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 2 and out["path"].startswith(str(cache)) and out["network_sha1"].startswith("a16e4d89")
    s = reference_stats("digits", "test", 2)  # read back from the stats file
    assert s.n == 2 and s.sigma.dtype == torch.float64
    assert torch.allclose(s.mu, feats.double().mean(0)) and torch.allclose(s.sigma, torch.cov(feats.double().T))
