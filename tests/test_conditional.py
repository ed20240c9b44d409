"""Class-conditional analytic models: the model of class c equals the model fitted on class c's rows, row by row
in a mixed batch; None is the pooled model; the Gaussian's exact PF-ODE (teleportation) holds per class."""
import pytest
import torch

import scorelab as sl


@pytest.fixture(scope="module")
def labelled():
    x, y = sl.data.load("digits", labels=True)
    return x[:600].double(), torch.as_tensor(y[:600])


def test_conditional_gaussian_is_the_per_class_fit(labelled, tmp_path):
    x, y = labelled
    g = sl.Gaussian.fit(x, labels=y, rank=20)
    assert g.conditional and g.classes_ == tuple(range(10))
    per_class = {c: sl.Gaussian.fit(x[y == c], rank=20) for c in range(10)}
    pooled = sl.Gaussian.fit(x, rank=20)
    x_t = x[:30] + 0.7 * torch.randn(30, *x.shape[1:], generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64)
    labels = torch.arange(30) % 10
    sigma = torch.linspace(0.1, 5.0, 30, dtype=torch.float64)
    out = g(x_t, sigma, class_labels=labels)
    for i in range(30):
        want = per_class[int(labels[i])](x_t[i:i + 1], sigma[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g(x_t, 0.7), pooled(x_t, 0.7))                      # None: the pooled model
    torch.testing.assert_close(g(x_t, 0.7, class_labels=3), per_class[3](x_t, 0.7))  # one int for all rows
    torch.testing.assert_close(g.score(x_t, 2.0, class_labels=labels),
                               (g(x_t, 2.0, class_labels=labels) - x_t) / 4.0)
    lp = g.log_prob(x_t, 1.0, class_labels=labels)
    torch.testing.assert_close(lp[:1], per_class[0].log_prob(x_t[:1], 1.0))
    g.save(tmp_path / "g.safetensors")
    back = sl.Gaussian.load(tmp_path / "g.safetensors")
    assert back.classes_ == g.classes_
    torch.testing.assert_close(back(x_t, sigma, class_labels=labels), out)


def test_conditional_trajectory_and_teleport_are_exact_per_class(labelled):
    x, y = labelled
    g = sl.Gaussian.fit(x, labels=y)
    sigmas = sl.schedules.karras(8).double()
    x_T = torch.randn(6, *x.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    labels = torch.tensor([0, 5, 5, 9, 0, 2])
    path = g.trajectory(x_T, sigmas, class_labels=labels)
    for i in range(6):
        torch.testing.assert_close(path[:, i], g.class_models_[int(labels[i])].trajectory(x_T[i:i + 1], sigmas)[:, 0])
    # sampling the class-conditional Gaussian with itself as teleport, warm history: exact jump, per class
    fine = sl.schedules.karras(60).double()
    kw = dict(n=6, shape=g.shape_, sigmas=fine, solver="dpmpp_2m", dtype=torch.float64, teleport=g,
              extra_args={"class_labels": labels}, teleport_args={"class_labels": labels}, skip=0.5)
    warm = sl.sample(g, warm_history=True, batch_size=4, **kw)
    x0 = sl.initial_noise(6, g.shape_, 0, dtype=torch.float64) * float(fine[0])
    exact = g.trajectory(x0, fine, class_labels=labels)[-1]
    err = float((warm.images - exact).norm() / exact.norm())
    pooled_jump = sl.sample(g, warm_history=True, batch_size=4, **{**kw, "teleport_args": None})
    assert err < 0.01 < float((pooled_jump.images - exact).norm() / exact.norm())
    torch.testing.assert_close(sl.sample(g, warm_history=True, batch_size=6, **kw).images, warm.images)


def test_conditional_sample_draws_from_each_class(labelled):
    x, y = labelled
    g = sl.Gaussian.fit(x, labels=y)
    draws = g.sample(4000, generator=torch.Generator().manual_seed(0), class_labels=7)
    torch.testing.assert_close(draws.mean(0), g.class_models_[7].mean_, rtol=0, atol=0.25)
    mixed = g.sample(10, generator=torch.Generator().manual_seed(0), class_labels=torch.arange(10))
    assert mixed.shape == (10, *g.shape_) and torch.isfinite(mixed).all()


def test_bad_labels_are_named(labelled):
    x, y = labelled
    with pytest.raises(ValueError, match="labels must have shape"):
        sl.Gaussian.fit(x, labels=y[:10])
    with pytest.raises(ValueError, match="labels must be >= 0"):
        sl.Gaussian.fit(x[:3], labels=[0, -1, 1])
    with pytest.raises(TypeError, match="labels must be integers"):
        sl.Gaussian.fit(x[:3], labels=[0.5, 1.0, 2.0])
    g = sl.Gaussian.fit(x, labels=y)
    with pytest.raises(ValueError, match="fitted classes"):
        g(x[:2], 1.0, class_labels=torch.tensor([3, 11]))
    with pytest.raises(ValueError, match=r"class_labels must be one int or \[B\]"):
        g(x[:2], 1.0, class_labels=torch.tensor([3, 1, 2]))
    with pytest.raises(TypeError, match="class_labels must be integers"):
        g(x[:2], 1.0, class_labels=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="fitted without labels"):
        sl.Gaussian.fit(x)(x[:2], 1.0, class_labels=1)


def _noisy(x, n=24, sigma=0.8, seed=2):
    return x[:n] + sigma * torch.randn(n, *x.shape[1:], generator=torch.Generator().manual_seed(seed),
                                       dtype=x.dtype)


def test_conditional_empirical_is_empirical_on_the_class_subset(labelled):
    x, y = labelled
    emp = sl.Empirical(x, labels=y)
    x_t, labels = _noisy(x), torch.arange(24) % 10
    sigma = torch.linspace(0.05, 3.0, 24, dtype=torch.float64)
    out = emp(x_t, sigma, class_labels=labels)
    for c in range(10):
        rows = labels == c
        torch.testing.assert_close(out[rows], sl.Empirical(x[y == c])(x_t[rows], sigma[rows]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(emp(x_t, 0.5), sl.Empirical(x)(x_t, 0.5), rtol=1e-9, atol=1e-9)


def test_conditional_knn_is_knn_on_the_class_subset(labelled, tmp_path):
    x, y = labelled
    knn = sl.KNN(x, k=8, n_random=0, index="torch", labels=y)
    x_t, labels = _noisy(x), torch.arange(24) % 10
    out = knn(x_t, 0.6, class_labels=labels)
    for c in range(10):
        rows = labels == c
        torch.testing.assert_close(out[rows], sl.KNN(x[y == c], k=8, n_random=0, index="torch")(x_t[rows], 0.6))
    torch.testing.assert_close(knn(x_t, 0.6), sl.KNN(x, k=8, n_random=0, index="torch")(x_t, 0.6))
    knn.save(tmp_path / "k.safetensors")
    torch.testing.assert_close(sl.KNN.load(tmp_path / "k.safetensors")(x_t, 0.6, class_labels=labels), out)
    with pytest.raises(ValueError, match="k must be <= the size of every class"):
        sl.KNN(x[:40], k=8, labels=torch.arange(40) % 10)


def test_conditional_gmm_is_the_per_class_fit(labelled, tmp_path):
    x, y = labelled
    opts = dict(n_components=2, covariance="diag", max_iter=20, seed=0)
    gmm = sl.GMM.fit(x, labels=y, **opts)
    x_t, labels = _noisy(x), torch.arange(24) % 10
    out = gmm(x_t, 0.9, class_labels=labels)
    for c in (0, 4, 9):
        rows = labels == c
        torch.testing.assert_close(out[rows], sl.GMM.fit(x[y == c], **opts)(x_t[rows], 0.9))
    lp = gmm.log_prob(x_t, 0.9, class_labels=labels)
    assert lp.shape == (24,) and torch.isfinite(lp).all()
    assert gmm.sample(5, class_labels=3, generator=torch.Generator().manual_seed(0)).shape == (5, *x.shape[1:])
    gmm.save(tmp_path / "g.safetensors")
    back = sl.GMM.load(tmp_path / "g.safetensors")
    assert back.classes_ == tuple(range(10))
    torch.testing.assert_close(back(x_t, 0.9, class_labels=labels), out)
    torch.testing.assert_close(back(x_t, 0.9), gmm(x_t, 0.9))


def test_cfg_on_conditional_analytic_models(labelled):
    """CFG works on any conditional analytic model through the null label (class_labels=None = pooled)."""
    x, y = labelled
    g = sl.Gaussian.fit(x, labels=y, rank=16)
    guided = sl.guidance.cfg(g, 2.0)
    x_t, labels = _noisy(x, 10), torch.arange(10)
    torch.testing.assert_close(guided(x_t, 1.0, class_labels=labels),
                               g(x_t, 1.0) + 2.0 * (g(x_t, 1.0, class_labels=labels) - g(x_t, 1.0)))


@pytest.mark.parametrize("make", [lambda x, y: sl.Empirical(x), lambda x, y: sl.KNN(x, k=4, index="torch"),
                                  lambda x, y: sl.GMM.fit(x, n_components=2, covariance="diag", max_iter=3),
                                  lambda x, y: sl.CFDM(x, smoothing=0.1, n_draws=2)],
                         ids=["empirical", "knn", "gmm", "cfdm"])
def test_query_of_another_shape_with_the_same_size_is_refused(labelled, make):
    """x [B, 4, 16] holds as many numbers as [B, 1, 8, 8] but is not an image of the data's shape."""
    x, y = labelled
    model = make(x[:50], y[:50])
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\]"):
        model(torch.randn(2, 4, 16, dtype=x.dtype), 1.0)
