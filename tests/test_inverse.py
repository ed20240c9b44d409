"""sl.inverse: operators against dense matrices, exact posteriors against an independent float64 dense computation,
posterior samplers against the exact posterior (ΠGDM with the exact Σ_σ is exact for a Gaussian prior)."""
import math

import pytest
import torch
import torch.nn.functional as F

import scorelab as sl
from scorelab import inverse
from scorelab.inverse import Blur, Downsample, Inpaint, Linear

f64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _operators():
    g = _gen(1)
    mask = torch.rand(1, 4, 5, generator=g) > 0.4
    kernel = torch.rand(3, 2, generator=g, dtype=f64)
    return [
        (Inpaint(mask), (1, 4, 5)),
        (Downsample(2), (2, 4, 6)),
        (Blur(kernel), (2, 5, 6)),                                      # asymmetric, even width
        (Blur(sl.inverse.gaussian_kernel(0.8)), (1, 8, 7)),
        (Blur(torch.full((2, 2), 0.25, dtype=f64)), (1, 4, 4)),         # exact zeros in its spectrum
        (Linear(torch.randn(7, 12, generator=g, dtype=f64), shape=(3, 4)), (3, 4)),
    ]


def _reference_apply(op, x):
    """A computed without the operator's own code path: peers (avg_pool2d, circular conv2d) or indexing."""
    if isinstance(op, Inpaint):
        return x.reshape(x.shape[0], -1)[:, op.mask.flatten()]
    if isinstance(op, Downsample):
        return F.avg_pool2d(x, op.factor)
    if isinstance(op, Blur):
        kh, kw = op.kernel.shape
        c = x.shape[1]
        xp = F.pad(x, (kw - 1 - kw // 2, kw // 2, kh - 1 - kh // 2, kh // 2), mode="circular")
        return F.conv2d(xp, op.kernel.flip(0, 1).expand(c, 1, kh, kw).to(x), groups=c)
    return x.reshape(x.shape[0], -1) @ op.a.T


@pytest.mark.parametrize("k", range(6))
def test_operator_matches_dense_matrix_and_peers(k):
    op, shape = _operators()[k]
    x = torch.randn(3, *shape, generator=_gen(2), dtype=f64)
    mat = op.matrix(shape)
    ax = op.A(x)
    assert tuple(ax.shape[1:]) == op.output_shape(shape)
    assert torch.allclose(ax.reshape(3, -1), x.reshape(3, -1) @ mat.T, atol=1e-12)
    assert torch.allclose(ax.reshape(3, -1), _reference_apply(op, x).reshape(3, -1), atol=1e-12)
    y = torch.randn(3, *op.output_shape(shape), generator=_gen(3), dtype=f64)
    aty = op.AT(y)
    assert aty.shape == x.shape
    assert torch.allclose(aty.reshape(3, -1), y.reshape(3, -1) @ mat, atol=1e-12)
    # adjoint identity <A x, y> = <x, Aᵀ y>
    assert torch.allclose((ax * y).reshape(3, -1).sum(1), (x * aty).reshape(3, -1).sum(1), atol=1e-10)
    # pseudo-inverse and (α I + β A Aᵀ)⁻¹
    assert torch.allclose(op.pinv(y).reshape(3, -1), y.reshape(3, -1) @ torch.linalg.pinv(mat, rtol=1e-8).T,
                          atol=1e-8)
    beta = torch.tensor([0.5, 2.0, 7.0], dtype=f64)
    got = op.gram_solve(y, 0.3, beta).reshape(3, -1)
    for b in range(3):
        want = torch.linalg.solve(0.3 * torch.eye(mat.shape[0], dtype=f64) + beta[b] * mat @ mat.T, y[b].reshape(-1))
        assert torch.allclose(got[b], want, atol=1e-10)
    dense = inverse.Operator.gram_solve(op, y, 0.3, beta)          # the base class's dense fallback
    assert torch.allclose(dense.reshape(3, -1), got, atol=1e-9)
    # float32 inputs stay float32
    assert op.A(x.float()).dtype == torch.float32 and op.AT(y.float()).dtype == torch.float32


def test_blur_tikhonov_pinv_is_the_regularised_solve():
    op, shape = Blur(sl.inverse.gaussian_kernel(1.0, 3)), (1, 5, 5)
    mat = op.matrix(shape)
    y = torch.randn(2, *shape, generator=_gen(4), dtype=f64)
    want = torch.linalg.solve(mat.T @ mat + 0.01 * torch.eye(25, dtype=f64), mat.T @ y.reshape(2, -1).T).T
    assert torch.allclose(op.pinv(y, eps=0.01).reshape(2, -1), want, atol=1e-10)


def test_operator_errors_name_the_argument():
    with pytest.raises(ValueError, match="mask must have the sample shape"):
        Inpaint(torch.ones(1, 4, 4, dtype=torch.bool)).A(torch.zeros(2, 1, 5, 5))
    with pytest.raises(ValueError, match="0/1"):
        Inpaint(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="at least one"):
        Inpaint(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="factor 3 must divide the image size 4×4"):
        Downsample(3).A(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="factor"):
        Downsample(0)
    with pytest.raises(ValueError, match="kernel of size 5×5 is larger"):
        Blur(torch.ones(5, 5)).A(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="kernel must be a 2-D"):
        Blur(torch.ones(3))
    with pytest.raises(ValueError, match=r"y must have shape \[B, 3\]"):
        Linear(torch.ones(3, 4)).AT(torch.zeros(2, 5))
    g = sl.Gaussian(torch.zeros(4), torch.ones(4), torch.eye(4))
    op = Linear(torch.ones(3, 4))
    with pytest.raises(ValueError, match="y must have shape"):
        inverse.exact_posterior(g, op, torch.zeros(5), 0.1)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma_y"):
            inverse.exact_posterior(g, op, torch.zeros(3), bad)
        with pytest.raises(ValueError, match="sigma_y"):
            inverse.sample(g, op, torch.zeros(3), bad, method="pigdm")
    with pytest.raises(TypeError, match="op must be"):
        inverse.exact_posterior(g, torch.ones(3, 4), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        inverse.sample(g, op, torch.zeros(3), 0.1, method="ddrm")
    with pytest.raises(TypeError, match="Gaussian or scorelab.GMM"):
        inverse.exact_posterior(lambda x, s: x, op, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="mask has shape"):
        inverse.exact_posterior(g, Inpaint(torch.ones(5, dtype=torch.bool)), torch.zeros(5), 0.1)


# ------------------------------------------------------------------------------------------- exact posteriors
def _random_gaussian(d, r, residual, seed):
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    lam = torch.rand(r, generator=g, dtype=f64) * 2 + 0.2
    mean = torch.randn(d, generator=g, dtype=f64)
    return sl.Gaussian(mean, lam, q[:, :r], residual_var=residual)


def _dense_posterior(mean, cov, mat, y, sigma_y):
    """Condition the joint Gaussian of (x0, y) on y with torch.linalg.solve (no structure used)."""
    s_yy = mat @ cov @ mat.T + sigma_y ** 2 * torch.eye(mat.shape[0], dtype=f64)
    s_xy = cov @ mat.T
    post_mean = mean + s_xy @ torch.linalg.solve(s_yy, y - mat @ mean)
    post_cov = cov - s_xy @ torch.linalg.solve(s_yy, s_xy.T)
    log_ev = torch.distributions.MultivariateNormal(mat @ mean, s_yy).log_prob(y)
    return post_mean, post_cov, float(log_ev)


def _rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


@pytest.mark.parametrize("r, residual, m, route", [
    (6, 0.0, 4, "observation"),     # full rank, m < d
    (2, 0.0, 4, "eigenbasis"),      # low rank, r ≤ m
    (3, 0.3, 4, "observation"),     # low rank + residual
    (6, 0.0, 8, "eigenbasis"),      # more observations than dimensions
])
def test_gaussian_posterior_matches_dense_joint(r, residual, m, route):
    g = _random_gaussian(6, r, residual, seed=r + m)
    mat = torch.randn(m, 6, generator=_gen(5), dtype=f64)
    y = torch.randn(m, generator=_gen(6), dtype=f64)
    post = inverse.exact_posterior(g, Linear(mat), y, 0.3)
    assert post.route_ == route
    mean, cov, log_ev = _dense_posterior(g.mean_, g.cov_, mat, y, 0.3)
    assert _rel(post.mean_, mean) < 1e-10 and _rel(post.cov_, cov) < 1e-10
    assert abs(post.log_evidence_ - log_ev) < 1e-9 * abs(log_ev)
    if r == 6:  # information form as a second, structure-free check: P = Σ⁻¹ + AᵀA/σ², mean = P⁻¹(Σ⁻¹μ + Aᵀy/σ²)
        prec = torch.linalg.inv(g.cov_) + mat.T @ mat / 0.09
        info_mean = torch.linalg.solve(prec, torch.linalg.solve(g.cov_, g.mean_) + mat.T @ y / 0.09)
        assert _rel(post.mean_, info_mean) < 1e-9 and _rel(post.cov_, torch.linalg.inv(prec)) < 1e-9
        assert torch.allclose(post.log_prob(post.mean_[None] + 0.1),
                              torch.distributions.MultivariateNormal(mean, cov).log_prob(post.mean_[None] + 0.1))


@pytest.mark.parametrize("op", [Inpaint(torch.tensor([[[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]]])),
                                Downsample(2), Blur(sl.inverse.gaussian_kernel(0.7, 3))])
@pytest.mark.parametrize("rank", [None, 3])
def test_image_operators_posterior_equals_dense_matrix_posterior(op, rank):
    data = torch.randn(60, 1, 4, 4, generator=_gen(7), dtype=f64) @ torch.randn(4, 4, generator=_gen(8), dtype=f64)
    g = sl.Gaussian.fit(data, rank=rank)
    shape = (1, 4, 4)
    y = op.A(data[:1]) + 0.1
    post = inverse.exact_posterior(g, op, y, 0.2)
    mat = op.matrix(shape)
    mean, cov, log_ev = _dense_posterior(g.mean_.reshape(-1), g.cov_, mat, y.reshape(-1), 0.2)
    assert post.mean_.shape == shape
    assert _rel(post.mean_.reshape(-1), mean) < 1e-9 and _rel(post.cov_, cov) < 1e-9
    assert abs(post.log_evidence_ - log_ev) < 1e-9 * abs(log_ev)


def _random_gmm(covariance, d=4, K=3, seed=0):
    g = _gen(seed)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=f64)
    means = 2 * torch.randn(K, d, generator=g, dtype=f64)
    if covariance == "diag":
        return sl.GMM(weights, means, covariance="diag", variances=torch.rand(K, d, generator=g, dtype=f64) + 0.1)
    r = d if covariance == "full" else 2
    q = torch.stack([torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))[0][:, :r] for _ in range(K)])
    lam = torch.rand(K, r, generator=g, dtype=f64) + 0.2
    res = torch.full((K,), 0.15, dtype=f64) if r < d else None
    return sl.GMM(weights, means, covariance=covariance, eigvals=lam, eigvecs=q, residual_var=res)


def _gmm_cov(gmm, k):
    if gmm.covariance == "diag":
        return torch.diag(gmm.variances_[k])
    u, lam = gmm.eigvecs_[k], gmm.eigvals_[k]
    cov = (u * lam) @ u.T
    if u.shape[1] < u.shape[0]:
        cov = cov + gmm.residual_var_[k] * (torch.eye(u.shape[0], dtype=f64) - u @ u.T)
    return cov


@pytest.mark.parametrize("covariance", ["full", "diag", "lowrank"])
def test_gmm_posterior_matches_dense_components_and_weights(covariance):
    gmm = _random_gmm(covariance)
    mat = torch.randn(3, 4, generator=_gen(9), dtype=f64)
    y = torch.tensor([0.5, -1.0, 2.0], dtype=f64)
    post = inverse.exact_posterior(gmm, Linear(mat), y, 0.4)
    logw, means, covs = [], [], []
    for k in range(3):
        mk, ck, lk = _dense_posterior(gmm.means_[k], _gmm_cov(gmm, k), mat, y, 0.4)
        logw.append(math.log(gmm.weights_[k]) + lk)
        means.append(mk)
        covs.append(ck)
        assert _rel(post.components_[k].mean_, mk) < 1e-10 and _rel(post.components_[k].cov_, ck) < 1e-10
    w = torch.softmax(torch.tensor(logw, dtype=f64), 0)
    assert _rel(post.weights_, w) < 1e-10
    assert abs(post.log_evidence_ - float(torch.logsumexp(torch.tensor(logw, dtype=f64), 0))) < 1e-9
    mean = sum(w[k] * means[k] for k in range(3))
    cov = sum(w[k] * (covs[k] + torch.outer(means[k], means[k])) for k in range(3)) - torch.outer(mean, mean)
    assert _rel(post.mean_, mean) < 1e-10 and _rel(post.cov_, cov) < 1e-10


def _moments_agree(samples, mean, cov, z=5.0):
    """Sample mean and covariance within z standard errors of the exact ones (elementwise)."""
    n = samples.shape[0]
    x = samples.reshape(n, -1).to(f64)
    m_hat = x.mean(0)
    c_hat = torch.cov(x.T)
    var = cov.diagonal()
    assert ((m_hat - mean).abs() <= z * (var / n).sqrt() + 1e-12).all(), (m_hat, mean)
    se_cov = ((torch.outer(var, var) + cov ** 2) / n).sqrt()
    assert ((c_hat - cov).abs() <= z * se_cov + 1e-12).all(), (c_hat, cov)


@pytest.mark.parametrize("which", ["eigenbasis", "observation", "mixture"])
def test_exact_sampling_moments(which):
    mat = torch.randn(3, 5, generator=_gen(10), dtype=f64)
    y = torch.tensor([1.0, 0.0, -1.0], dtype=f64)
    if which == "mixture":
        prior = _random_gmm("lowrank", d=5, seed=3)
    else:
        prior = _random_gaussian(5, 2 if which == "eigenbasis" else 5, 0.0, seed=11)
    post = inverse.exact_posterior(prior, Linear(mat), y, 0.5)
    assert getattr(post, "route_", which) == which
    s = post.sample(20000, generator=_gen(12))
    assert s.shape == (20000, 5) and s.dtype == f64
    _moments_agree(s, post.mean_, post.cov_)
    assert torch.equal(s[:10], post.sample(20000, generator=_gen(12))[:10])   # deterministic with a generator


# ------------------------------------------------------------------------------------------- approximate samplers
def _problem(d=4, m=2, r=None, residual=0.0, seed=0):
    g = _random_gaussian(d, r or d, residual, seed=seed)
    mat = torch.randn(m, d, generator=_gen(seed + 100), dtype=f64)
    y = mat @ g.sample(1, generator=_gen(seed + 200))[0] + 0.2 * torch.randn(m, generator=_gen(seed + 300), dtype=f64)
    return g, Linear(mat), y


@pytest.mark.parametrize("r, residual", [(4, 0.0), (2, 0.5)])
def test_pigdm_with_exact_sigma_is_the_exact_posterior_denoiser(r, residual):
    g, op, y = _problem(r=r, residual=residual)
    post = inverse.exact_posterior(g, op, y, 0.2).to_gaussian()
    guided = inverse.PosteriorDenoiser(g, op, y, 0.2, likelihood="pigdm", r2=g)
    x = torch.randn(5, 4, generator=_gen(13), dtype=f64) * 3
    for sigma in (0.01, 0.3, 2.0, 80.0):
        got = guided(x, torch.full((5,), sigma, dtype=f64))
        assert torch.allclose(got, post(x, sigma), rtol=1e-8, atol=1e-10), sigma
        # the posterior score ∇ log p(x_σ | y) = ∇ log p_σ(x_σ) + ∇ log p(y | x_σ)
        assert torch.allclose((got - x) / sigma ** 2, post.score(x, sigma), rtol=1e-7, atol=1e-9)
    assert guided.calls == guided.grad_calls == 4


def test_pigdm_exact_sampling_matches_exact_posterior_moments():
    g, op, y = _problem(r=4, seed=2)
    exact = inverse.exact_posterior(g, op, y, 0.2)
    out = inverse.sample(g, op, y, 0.2, method="pigdm", r2=g, n=400, solver="heun",
                         sigmas=sl.schedules.karras(40, sigma_max=80.0), seed=1)
    assert out.samples.shape == (400, 4) and out.nfe == 79 and out.nfe_grad == 79
    _moments_agree(out.samples, exact.mean_, exact.cov_, z=4.5)
    # stochastic sampler too (the default euler_ancestral), more steps for its first-order error
    out = inverse.sample(g, op, y, 0.2, method="pigdm", r2=g, n=400, sigmas=sl.schedules.karras(150), seed=2)
    _moments_agree(out.samples, exact.mean_, exact.cov_, z=4.5)


def test_dmps_is_exact_under_a_flat_prior():
    """DMPS assumes x0 | x_σ ~ N(x_σ, σ² I): exact in the limit of a prior with huge variance."""
    d = 3
    g = sl.Gaussian(torch.zeros(d, dtype=f64), torch.full((d,), 1e8, dtype=f64), torch.eye(d, dtype=f64))
    mat = torch.randn(2, d, generator=_gen(14), dtype=f64)
    y = torch.tensor([0.3, -0.7], dtype=f64)
    post = inverse.exact_posterior(g, Linear(mat), y, 0.1).to_gaussian()
    guided = inverse.PosteriorDenoiser(g, Linear(mat), y, 0.1, likelihood="dmps")
    x = torch.randn(4, d, generator=_gen(15), dtype=f64)
    for sigma in (0.05, 1.0, 10.0):
        assert torch.allclose(guided(x, sigma), post(x, sigma), rtol=1e-5, atol=1e-6)
    assert guided.grad_calls == 0 and guided.calls == 3


def test_pigdm_isotropic_r2_formula():
    """Default ΠGDM: r_σ² = σ² σ_d² / (σ² + σ_d²); with the Gaussian prior N(0, σ_d² I) that is exact."""
    d, sd = 3, 0.7
    g = sl.Gaussian(torch.zeros(d, dtype=f64), torch.full((d,), sd ** 2, dtype=f64), torch.eye(d, dtype=f64))
    mat = torch.randn(2, d, generator=_gen(16), dtype=f64)
    y = torch.tensor([0.3, -0.7], dtype=f64)
    post = inverse.exact_posterior(g, Linear(mat), y, 0.1).to_gaussian()
    guided = inverse.PosteriorDenoiser(g, Linear(mat), y, 0.1, sigma_data=sd)
    x = torch.randn(4, d, generator=_gen(17), dtype=f64)
    for sigma in (0.05, 1.0, 10.0):
        assert torch.allclose(guided(x, sigma), post(x, sigma), rtol=1e-9, atol=1e-12)
    callable_r2 = inverse.PosteriorDenoiser(g, Linear(mat), y, 0.1, r2=lambda s: s ** 2 * sd ** 2 / (s ** 2 + sd ** 2))
    assert torch.allclose(callable_r2(x, 1.0), post(x, 1.0), rtol=1e-9)


def test_dps_single_step_closed_form_and_zero_zeta_is_unconditional():
    g, op, y = _problem(seed=4)
    sigma = 3.0
    out = inverse.sample(g, op, y, 0.2, method="dps", n=3, sigmas=[sigma, 0.0], solver="euler", zeta=0.7, seed=5)
    x_t = sigma * sl.initial_noise(3, (4,), 5, dtype=f64)
    den = g(x_t, sigma)
    r = y - den @ op.a.T
    jac = g.cov_ @ torch.linalg.inv(g.cov_ + sigma ** 2 * torch.eye(4, dtype=f64))     # ∂D/∂x (symmetric)
    grad = -(r / r.norm(dim=1, keepdim=True)) @ op.a @ jac.T                            # ∇‖y − A D(x)‖
    assert torch.allclose(out.samples, den - 0.7 * math.sqrt(1 + sigma ** 2) * grad, atol=1e-10)
    assert out.nfe == out.nfe_grad == 1
    sigmas = sl.schedules.karras(10)
    plain = sl.samplers.euler_ancestral(g, 80.0 * sl.initial_noise(4, (4,), 6, dtype=f64), sigmas,
                                        generator=_gen(6))
    dps0 = inverse.sample(g, op, y, 0.2, method="dps", n=4, sigmas=sigmas, zeta=0.0, seed=6)
    assert torch.allclose(dps0.samples, plain, atol=1e-12)


def test_samplers_deterministic_count_nfe_and_pass_extra_args():
    g, op, y = _problem(seed=6)
    seen = []

    def denoiser(x, sigma, class_labels=None):
        seen.append(class_labels)
        return g(x, sigma)

    sigmas = sl.schedules.karras(6)
    labels = torch.arange(3)
    for method, nfe, grad in (("pigdm", 6, 6), ("dmps", 6, 0), ("dps", 6, 6)):
        a = inverse.sample(denoiser, op, y, 0.2, method=method, n=3, sigmas=sigmas, seed=3, shape=(4,),
                           extra_args={"class_labels": labels}, dtype=f64)
        b = inverse.sample(g, op, y, 0.2, method=method, n=3, sigmas=sigmas, seed=3)
        c = inverse.sample(g, op, y, 0.2, method=method, n=3, sigmas=sigmas, seed=4)
        assert torch.equal(a.samples, b.samples) and not torch.equal(b.samples, c.samples)
        assert (a.nfe, a.nfe_grad) == (nfe, grad) and a.summary()["nfe"] == nfe
        assert torch.isfinite(a.samples).all()
    assert all(s is labels for s in seen)
    x32 = inverse.sample(g, op, y, 0.2, method="pigdm", n=2, sigmas=sigmas, dtype=torch.float32)
    assert x32.samples.dtype == torch.float32
    ex = inverse.sample(g, op, y, 0.2, n=5, seed=1)
    assert ex.nfe == 0 and torch.equal(ex.samples, inverse.sample(g, op, y, 0.2, n=5, seed=1).samples)


def test_smc_method_dispatches_or_says_what_is_missing():
    g, op, y = _problem(seed=7)
    try:
        from scorelab import smc
    except ImportError:
        smc = None
    if getattr(smc, "posterior_sample", None) is None:
        with pytest.raises(NotImplementedError, match="scorelab.smc"):
            inverse.sample(g, op, y, 0.2, method="smc", n=2)
        return
    sigmas = sl.schedules.karras(8)
    out = inverse.sample(g, op, y, 0.2, method="smc", n=3, sigmas=sigmas, seed=2, particles=4, dtype=f64)
    ref = smc.posterior_sample(g, op, y, 0.2, n=3, sigmas=sigmas, seed=2, particles=4, dtype=f64)
    assert torch.equal(out.samples, ref.samples) and out.nfe == ref.nfe and out.options["cost"] == ref.cost


def test_image_sampling_infers_the_shape_from_y():
    data = torch.randn(40, 1, 4, 4, generator=_gen(18), dtype=f64)
    g = sl.Gaussian.fit(data)
    op = Downsample(2)
    y = op.A(data[:1])[0]
    out = inverse.sample(lambda x, s: g(x, s), op, y, 0.1, method="dmps", n=2, sigmas=sl.schedules.karras(5))
    assert out.samples.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="y must have shape"):
        inverse.sample(g, op, torch.zeros(1, 3, 3), 0.1, method="dmps", n=2)


# ------------------------------------------------------------------------------------------- image quality
def test_psnr_and_ssim():
    x = torch.rand(2, 1, 8, 8, generator=_gen(19), dtype=f64) * 2 - 1
    noisy = x + 0.1 * torch.randn(x.shape, generator=_gen(20), dtype=f64)
    mse = (noisy - x).pow(2).reshape(2, -1).mean(1)
    assert torch.allclose(inverse.psnr(noisy, x), 10 * torch.log10(4 / mse))
    assert torch.allclose(inverse.ssim(x, x), torch.ones(2, dtype=f64))
    # brute force: every 7×7 window position (8×8 images: the window shrinks to 7), Wang et al. eq. 13
    w = sl.inverse.gaussian_kernel(1.5, 7)
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    vals = []
    for i in range(2):
        for j in range(2):
            a, b = noisy[0, 0, i:i + 7, j:j + 7], x[0, 0, i:i + 7, j:j + 7]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cab = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    assert torch.allclose(inverse.ssim(noisy, x)[0], torch.stack(vals).mean(), atol=1e-12)


# ------------------------------------------------------------------------------------------- CLI
def test_restore_cli_round_trip_on_digits(tmp_path, capsys):
    import json

    import numpy as np

    from scorelab import cli

    g = sl.Gaussian.fit(sl.data.load("digits"))
    g.save(tmp_path / "g.safetensors")
    common = ["restore", "--model", str(tmp_path / "g.safetensors"), "--from-data", "digits", "--index", "3",
              "--sigma-y", "0.05", "--n", "4", "--seed", "2", "--no-progress"]
    assert cli.main([*common, "--op", "inpaint", "--mask", "random70", "--method", "exact",
                     "--out", str(tmp_path / "exact")]) == 0
    summary = json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert (tmp_path / "exact" / "restore.png").stat().st_size > 0 and summary["nfe"] == 0
    # the same problem in Python: mask, observation noise and posterior draws all follow --seed
    from scorelab.commands.restore import make_mask

    x0 = sl.data.load("digits", split="test")[3].to(f64)
    op = Inpaint(make_mask("random70", (1, 8, 8), 2))
    assert op.m == 64 - round(0.7 * 64)
    ax = op.A(x0[None])
    y = ax + 0.05 * torch.randn(ax.shape, generator=_gen(2), dtype=f64)
    want = inverse.sample(g, op, y, 0.05, n=4, seed=2).samples
    assert np.allclose(np.load(tmp_path / "exact" / "samples.npy"), want.numpy(), atol=1e-12)
    mean = inverse.exact_posterior(g, op, y, 0.05).mean_
    assert np.allclose(np.load(tmp_path / "exact" / "exact_mean.npy"), mean.numpy(), atol=1e-12)
    assert abs(summary["exact_mean_quality"]["psnr"] - float(inverse.psnr(mean[None], x0))) < 1e-9
    assert summary["exact_mean_quality"]["psnr"] > 15       # the posterior mean restores the digit

    assert cli.main([*common, "--op", "downsample", "--factor", "2", "--method", "pigdm", "--steps", "8",
                     "--out", str(tmp_path / "pigdm")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == "pigdm" and summary["nfe"] == summary["nfe_grad"] == 8
    assert np.load(tmp_path / "pigdm" / "samples.npy").shape == (4, 1, 8, 8)

    for bad, needle in ((["--op", "downsample", "--factor", "3"], "factor 3 must divide the image size 8×8"),
                        (["--op", "inpaint", "--mask", "random999"], "--mask must be"),
                        (["--op", "blur", "--kernel", "gauss:2"], "--kernel must be"),
                        (["--op", "inpaint", "--sigma-y", "-1"], "--sigma-y must be > 0"),
                        (["--op", "downsample", "--mask", "half"], "--mask applies to --op inpaint only"),
                        (["--op", "inpaint", "--method", "pigdm", "--zeta", "2"], "--zeta applies to --method dps"),
                        (["--op", "inpaint", "--method", "dps", "--particles", "4"],
                         "--particles applies to --method smc")):
        assert cli.main([*common, *bad, "--out", str(tmp_path / "bad")]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("scorelab restore: error:"), lines
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method", ["pigdm", "dps"])
@pytest.mark.parametrize("kind", ["gmm", "empirical", "knn"])
def test_gradient_methods_run_through_streamed_softmax_models(kind, method):
    """ΠGDM and DPS differentiate through the denoiser: the streamed softmax of GMM/Empirical/KNN must allow it
    (its in-place exp broke autograd)."""
    x = sl.data.load("digits")[:200]
    prior = {"gmm": lambda: sl.GMM.fit(x, n_components=2, covariance="diag", max_iter=3),
             "empirical": lambda: sl.Empirical(x),
             "knn": lambda: sl.KNN(x, k=8, n_random=16, index="torch")}[kind]()
    op = sl.inverse.Inpaint(torch.arange(64).reshape(1, 8, 8) < 32)
    y = op.A(x[:1])
    res = sl.inverse.sample(prior, op, y, 0.05, method=method, n=2, sigmas=sl.schedules.karras(4))
    assert res.images.shape == (2, 1, 8, 8) and torch.isfinite(res.images).all()
