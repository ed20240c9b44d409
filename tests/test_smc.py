"""Feynman–Kac correctors against closed forms.

- The weight rate G of every target is checked against the Feynman–Kac PDE itself: with Gaussian experts,
  G_full = (σ Δp̃ − ∂_σ p̃)/p̃ = −∂_σ φ + σ (Δφ + ‖∇φ‖²) from exact log-densities (autograd for ∇ and Δ, a central
  difference in σ); it must differ from smc's rate by a constant in x (the dropped Laplacian constants).
- K = 1 is exactly the SDE sampler (DPM-Solver++(2M) SDE, ancestral Euler) on the guided denoiser (same draws).
- Systematic resampling: the expected counts are M·w exactly (integrated over the uniform in closed form).
- Leave-one-out selection: the law of the drawn particle, enumerated exactly over all particle sets, is off by
  1/K of the correction with plain weights and by second order or less with leave-one-out weights.
- Sampling targets with closed forms: CFG's geometric tilt of two Gaussians that share nothing special (class
  covariance Σ_c, unconditional Σ_u = Σ_c + B with B ⪰ 0 in another eigenbasis, so Λ_u ⪯ Λ_c and the tilt's
  precision γΛ_c + (1−γ)Λ_u ⪰ Λ_c ≻ 0 for every γ ≥ 1); the annealed Gaussian (covariance Σ/β); the product of
  two Gaussians; the linear-Gaussian posterior. W₂ is the closed form between Gaussians, from sample moments.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scorelab as sl
from scorelab import smc
from scorelab.guidance import Guided

F64 = torch.float64


def _rot(d, gen):
    return torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))[0]


def _gaussian(mu, cov):
    e, v = torch.linalg.eigh((cov + cov.T) / 2)
    return sl.Gaussian(mu, e, v)


def class_models(d, seed=0):
    """(class Gaussian, unconditional Gaussian, (μ_c, Σ_c, μ_u, Σ_u)) with Σ_u = Σ_c + V diag(b) Vᵀ."""
    gen = torch.Generator().manual_seed(seed)
    u, v = _rot(d, gen), _rot(d, gen)
    lam = torch.exp(torch.linspace(math.log(2.0), math.log(0.05), d, dtype=F64))
    b = torch.exp(torch.linspace(0.0, math.log(0.2), d, dtype=F64))
    mu_c = 0.5 * torch.randn(d, generator=gen, dtype=F64)
    mu_u = mu_c + 0.5 * torch.randn(d, generator=gen, dtype=F64)
    cov_c = (u * lam) @ u.T
    cov_u = cov_c + (v * b) @ v.T
    return _gaussian(mu_c, cov_c), _gaussian(mu_u, cov_u), (mu_c, cov_c, mu_u, cov_u)


def geometric_tilt(gamma, mu_c, cov_c, mu_u, cov_u):
    """p_c^γ p_u^(1−γ): precision Λ = γΛ_c + (1−γ)Λ_u, mean Λ⁻¹(γΛ_c μ_c + (1−γ)Λ_u μ_u)."""
    lc, lu = torch.linalg.inv(cov_c), torch.linalg.inv(cov_u)
    prec = gamma * lc + (1 - gamma) * lu
    assert torch.linalg.eigvalsh(prec).min() > 0          # positive definite, as the module docstring argues
    cov = torch.linalg.inv(prec)
    return cov @ (gamma * lc @ mu_c + (1 - gamma) * lu @ mu_u), (cov + cov.T) / 2


def product_gaussian(mu1, cov1, mu2, cov2):
    l1, l2 = torch.linalg.inv(cov1), torch.linalg.inv(cov2)
    cov = torch.linalg.inv(l1 + l2)
    return cov @ (l1 @ mu1 + l2 @ mu2), (cov + cov.T) / 2


def w2(x, mu, cov):
    """W₂ between N(sample mean, sample covariance) and N(μ, Σ)."""
    x = x.reshape(x.shape[0], -1).to(F64)
    return math.sqrt(max(sl.metrics.gaussian_frechet((x.mean(0), torch.cov(x.T)), (mu, cov)), 0.0))


class Mask:
    """A(x) = x[:, idx]; Aᵀ puts r back at idx (zeros elsewhere): A Aᵀ = I."""

    def __init__(self, idx, d):
        self.idx, self.d = torch.as_tensor(idx), d

    def A(self, x):
        return x[:, self.idx]

    def AT(self, r):
        out = r.new_zeros(r.shape[0], self.d)
        out[:, self.idx] = r
        return out


# ---------------------------------------------------------------------------------------------- exact pieces
def _full_rate(log_density, x, sigma, h=1e-5):
    """−∂_σ φ + σ (Δφ + ‖∇φ‖²) per sample from an exact log-density φ(x, σ) (autograd; central difference in σ)."""
    out = []
    for xi in x:
        xi = xi.detach().clone().requires_grad_(True)
        phi = log_density(xi[None], sigma)[0]
        (grad,) = torch.autograd.grad(phi, xi, create_graph=True)
        lap = sum(torch.autograd.grad(grad[j], xi, retain_graph=True)[0][j] for j in range(xi.numel()))
        dsig = (log_density(xi[None].detach(), sigma + h)[0] - log_density(xi[None].detach(), sigma - h)[0]) / (2 * h)
        out.append(float((-dsig + sigma * (lap + grad.pow(2).sum())).detach()))
    return torch.tensor(out, dtype=F64)


def _targets():
    g_c, g_u, _ = class_models(3)
    gen = torch.Generator().manual_seed(5)
    g2 = _gaussian(torch.randn(3, generator=gen, dtype=F64), (lambda a: a @ a.T + 0.3 * torch.eye(3, dtype=F64))(
        torch.randn(3, 3, generator=gen, dtype=F64)))
    op, y, sy = Mask([0, 2], 3), torch.tensor([0.4, -0.7], dtype=F64), 0.3

    def lik(x, s):
        return -((y - op.A(x)) ** 2).sum(-1) / (2 * (sy ** 2 + s ** 2))

    return [
        ("cfg", smc.cfg(g_c, 2.5, uncond=g_u), lambda x, s: 2.5 * g_c.log_prob(x, s) - 1.5 * g_u.log_prob(x, s)),
        ("anneal", smc.anneal(g_c, 1.7), lambda x, s: 1.7 * g_c.log_prob(x, s)),
        ("product", smc.product(g_c, g2), lambda x, s: g_c.log_prob(x, s) + g2.log_prob(x, s)),
        ("posterior", smc.posterior(g_c, op, y, sy), lambda x, s: g_c.log_prob(x, s) + lik(x, s)),
    ]


@pytest.mark.parametrize("name, target, log_density", _targets(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("sigma", [0.07, 0.6, 4.0])
def test_weight_rate_is_the_feynman_kac_potential(name, target, log_density, sigma):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * (1 + sigma)
    denoised, rate = target.evaluate(x, sigma)
    full = _full_rate(log_density, x, sigma)
    diff = full - rate
    assert float((diff - diff.mean()).abs().max()) < 1e-5 * (1 + float(full.abs().max()))
    # and the drift's denoiser is x + σ² ∇φ
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(xg, sigma).sum(), xg)
    torch.testing.assert_close(denoised, x + sigma ** 2 * grad, rtol=1e-9, atol=1e-9)


def test_special_cases_of_the_rate():
    """CFG: γ(γ−1)‖D_c − D_u‖²/σ³; annealing: β(β−1)‖D − x‖²/σ³; product: 2⟨D₁ − x, D₂ − x⟩/σ³."""
    g_c, g_u, _ = class_models(4)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    s = 0.8
    _, r = smc.cfg(g_c, 3.0, uncond=g_u).evaluate(x, s)
    torch.testing.assert_close(r, 6.0 * ((g_c(x, s) - g_u(x, s)) ** 2).sum(-1) / s ** 3)
    _, r = smc.anneal(g_c, 2.0).evaluate(x, s)
    torch.testing.assert_close(r, 2.0 * ((g_c(x, s) - x) ** 2).sum(-1) / s ** 3)
    _, r = smc.product(g_c, g_u).evaluate(x, s)
    torch.testing.assert_close(r, 2 * ((g_c(x, s) - x) * (g_u(x, s) - x)).sum(-1) / s ** 3)


@pytest.mark.parametrize("solver, eta", [("euler_ancestral", 1.0), ("dpmpp_2m_sde", 1.0), ("dpmpp_2m_sde", 0.5)])
def test_one_particle_is_the_sde_sampler_on_the_guided_denoiser(solver, eta):
    g_c, g_u, _ = class_models(3)
    sigmas = sl.schedules.karras(12)
    gen = torch.Generator().manual_seed(7)
    x_t = torch.randn(5, 3, generator=gen, dtype=F64) * float(sigmas[0])
    want = sl.samplers.get(solver)(Guided(g_c, g_u, 2.0), x_t, sigmas, generator=gen, eta=eta)
    got = smc.sample(smc.cfg(g_c, 2.0, uncond=g_u), 5, (3,), sigmas, particles=1, dtype=F64, solver=solver,
                     eta=eta, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got.samples, want, rtol=1e-10, atol=1e-10)
    assert got.nfe == 2 * 12 and got.network_nfe == 2 * 12 and got.cost == 24


def _exact_expected_counts(w, m):
    """E_u[count_k] for systematic resampling, integrating the piecewise-constant counts over u ∈ [0, 1)."""
    cdf = torch.cumsum(w, 0)
    breaks = torch.unique(torch.cat([torch.tensor([0.0, 1.0], dtype=F64), torch.frac(m * cdf)]))
    breaks = breaks[(breaks >= 0) & (breaks <= 1)]
    lw = w.log()[None]
    total = torch.zeros_like(w)
    for a, b in zip(breaks[:-1], breaks[1:]):
        if b > a:
            idx = smc.systematic_resample(lw, u=torch.tensor([(a + b) / 2]), n_out=m)[0]
            total += (b - a) * torch.bincount(idx, minlength=len(w)).to(F64)
    return total


@pytest.mark.parametrize("m", [8, 5, 16])
def test_systematic_resampling_is_unbiased_exactly(m):
    gen = torch.Generator().manual_seed(m)
    w = torch.rand(8, generator=gen, dtype=F64) ** 3
    w = w / w.sum()
    torch.testing.assert_close(_exact_expected_counts(w, m), m * w, rtol=0, atol=1e-12)
    idx = smc.systematic_resample(w.log()[None].repeat(200, 1), generator=gen, n_out=m)
    counts = torch.stack([torch.bincount(r, minlength=8) for r in idx]).to(F64)
    assert ((counts >= torch.floor(m * w) - 1e-9) & (counts <= torch.ceil(m * w) + 1e-9)).all()


def test_ess_bounds():
    k = 8
    assert float(smc.ess(torch.zeros(1, k))) == pytest.approx(k)
    one_hot = torch.full((1, k), -math.inf)
    one_hot[0, 3] = 0.0
    assert float(smc.ess(one_hot)) == pytest.approx(1.0)
    lw = torch.randn(100, k, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    e = smc.ess(lw)
    assert ((e >= 1 - 1e-12) & (e <= k + 1e-12)).all()
    w = torch.softmax(lw, -1)
    torch.testing.assert_close(e, 1 / (w ** 2).sum(-1))


def _selected_law_error(k, eps, selection):
    """Exact P(the drawn particle is in state 1) − p(1) by enumerating all 2^K particle sets: states {0, 1} drawn
    from q = (½, ½), weights w = (1 − ε, 1 + ε), target p(1) = (1 + ε)/2."""
    import itertools
    total = 0.0
    for states in itertools.product([0, 1], repeat=k):
        lw = torch.log(torch.tensor([1 + eps if s else 1 - eps for s in states], dtype=F64))[None]
        prob = torch.softmax(smc.leave_one_out(lw) if selection == "loo" else lw, -1)[0]
        total += 0.5 ** k * float(sum(prob[i] for i in range(k) if states[i]))
    return total - (1 + eps) / 2


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leave_one_out_selection_is_exact_to_first_order(k):
    for eps in (0.1, 0.05):
        plain, loo = _selected_law_error(k, eps, "plain"), _selected_law_error(k, eps, "loo")
        assert plain == pytest.approx(-eps / (2 * k) * (1 - eps ** 2), rel=0.2)    # 1/K of the correction ε/2
        assert abs(loo) < 0.05 * abs(plain)
    # second order or better: halving ε divides the error by ≥ 4 (measured: 8)
    assert abs(_selected_law_error(k, 0.1, "loo")) > 4 * abs(_selected_law_error(k, 0.05, "loo"))


def test_leave_one_out_special_rows():
    w = torch.tensor([[1.0, 3.0]], dtype=F64)
    torch.testing.assert_close(torch.softmax(smc.leave_one_out(w.log()), -1), w ** 2 / (w ** 2).sum())
    one = torch.tensor([[-math.inf, 0.3, -math.inf]], dtype=F64)
    torch.testing.assert_close(torch.softmax(smc.leave_one_out(one), -1), torch.tensor([[0.0, 1.0, 0.0]], dtype=F64))
    assert (smc.leave_one_out(torch.randn(4, 1)) == 0).all()
    big = smc.leave_one_out(torch.tensor([[0.0, 800.0, 1.0]], dtype=F64))           # S − w_k without cancellation
    torch.testing.assert_close(big, torch.tensor([[-800.0, 800 - math.log(math.e + 1), -799.0]], dtype=F64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=12), st.floats(-100, 100))
def test_leave_one_out_probabilities(log_w, shift):
    lw = torch.tensor([log_w], dtype=F64)
    p = torch.softmax(smc.leave_one_out(lw), -1)
    assert torch.isfinite(p).all() and float(p.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(torch.softmax(smc.leave_one_out(lw + shift), -1), p)    # scale-free
    order = lw[0].argsort()
    assert (p[0, order].diff() >= -1e-12).all()                   # a larger weight is never drawn less often


# ---------------------------------------------------------------------------------------------- sampling targets
SIGMAS = sl.schedules.karras(128)


@pytest.fixture(scope="module")
def cfg_runs():
    """d = 2, γ = 3: plain CFG (Heun ODE on the guided denoiser) and FKC with K = 1 and K = 8."""
    g_c, g_u, params = class_models(2)
    mu, cov = geometric_tilt(3.0, *params)
    n = 2000
    x_t = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * float(SIGMAS[0])
    ode = sl.samplers.heun(Guided(g_c, g_u, 3.0), x_t, SIGMAS)
    target = smc.cfg(g_c, 3.0, uncond=g_u)
    out = dict(ode=w2(ode, mu, cov))
    for k, pop in ((1, "sample"), (8, "sample"), (8, "batch")):
        r = smc.sample(target, n, (2,), SIGMAS, particles=k, population=pop, ess_threshold=1.0, dtype=F64, seed=3)
        out[k, pop] = (w2(r.samples, mu, cov), r)
    r = smc.sample(target, n, (2,), sl.schedules.karras(256), particles=8, ess_threshold=1.0, eta=10.0,
                   selection="loo", dtype=F64, seed=3)
    out["loo"] = w2(r.samples, mu, cov)
    return out


def test_fkc_corrects_cfg_towards_the_geometric_tilt(cfg_runs):
    plain = cfg_runs["ode"]
    sde, _ = cfg_runs[1, "sample"]
    per_sample, r = cfg_runs[8, "sample"]
    pooled, _ = cfg_runs[8, "batch"]
    assert plain > 0.15 and sde > 0.1                 # CFG misses the tilt (Bradley & Nakkiran 2025)
    assert per_sample < 0.35 * plain and per_sample < 0.5 * sde    # measured: 0.048 vs 0.229 (Heun), 0.128 (SDE)
    assert pooled < 0.25 * plain                                     # measured: 0.032
    assert cfg_runs["loo"] < 0.15 * plain           # eta = 10, 256 steps, leave-one-out selection; measured: 0.022
    assert r.ess.shape == (len(SIGMAS) - 1, 2000) and ((r.ess >= 1 - 1e-9) & (r.ess <= 8 + 1e-9)).all()
    assert r.resampled[:-1].float().mean() > 0.5 and not r.resampled[-1].any()
    assert r.nfe == 2 * 128 and r.cost == 8 * 2 * 128


def _plain_and_fkc(target, n, seed, **kw):
    """(the SDE alone: one particle, no weights; FKC with K = 8 in one population resampled at every step)."""
    plain = smc.sample(target, n, sigmas=SIGMAS, particles=1, dtype=F64, seed=seed, **kw)
    fkc = smc.sample(target, n, sigmas=SIGMAS, particles=8, population="batch", ess_threshold=1.0, dtype=F64,
                     seed=seed, **kw)
    return plain.samples, fkc.samples


def test_annealed_gaussian_has_covariance_sigma_over_beta():
    mu, cov, beta = torch.tensor([0.5, -0.5], dtype=F64), torch.diag(torch.tensor([1.0, 0.1], dtype=F64)), 0.5
    plain, fkc = _plain_and_fkc(smc.anneal(_gaussian(mu, cov), beta), 1000, 4, shape=(2,))
    plain, fkc = w2(plain, mu, cov / beta), w2(fkc, mu, cov / beta)
    assert plain > 1.0 and fkc < 0.2 * plain


def test_product_of_two_gaussian_experts():
    mu1, cov1 = torch.tensor([1.5, 0.0], dtype=F64), torch.diag(torch.tensor([0.3, 2.0], dtype=F64))
    mu2, cov2 = torch.tensor([-1.5, 0.0], dtype=F64), torch.diag(torch.tensor([2.0, 0.3], dtype=F64))
    mu, cov = product_gaussian(mu1, cov1, mu2, cov2)
    plain, fkc = _plain_and_fkc(smc.product(_gaussian(mu1, cov1), _gaussian(mu2, cov2)), 1000, 5, shape=(2,))
    plain, fkc = w2(plain, mu, cov), w2(fkc, mu, cov)
    assert plain > 0.2 and fkc < 0.3 * plain


def test_linear_gaussian_posterior():
    g, _, (mu0, cov0, _, _) = class_models(3, seed=4)
    op, sigma_y = Mask([0, 2], 3), 0.05
    y = torch.tensor([1.5, -1.2], dtype=F64)
    a = op.A(torch.eye(3, dtype=F64)).T                        # [2, 3]
    gain = cov0 @ a.T @ torch.linalg.inv(a @ cov0 @ a.T + sigma_y ** 2 * torch.eye(2, dtype=F64))
    mu, cov = mu0 + gain @ (y - a @ mu0), cov0 - gain @ a @ cov0
    plain = smc.posterior_sample(g, op, y, sigma_y, n=1000, sigmas=SIGMAS, particles=1, dtype=F64, seed=6)
    fkc = smc.posterior_sample(g, op, y, sigma_y, n=1000, sigmas=SIGMAS, particles=8, population="batch",
                               ess_threshold=1.0, dtype=F64, seed=6)
    plain, fkc = w2(plain.samples, mu, cov), w2(fkc.samples, mu, cov)
    assert plain > 1.0 and fkc < 0.3 * plain


# ---------------------------------------------------------------------------------------------- plumbing
def test_seeds_device_conditioning_and_counts():
    g_c, g_u, _ = class_models(2)
    seen = []

    class Labelled:
        def __call__(self, x, sigma, class_labels=None):
            seen.append(None if class_labels is None else class_labels.clone())
            return g_u(x, sigma) if class_labels is None else g_c(x, sigma)

    labels = torch.tensor([1, 2, 3])
    kw = dict(particles=4, extra_args={"class_labels": labels}, dtype=F64)
    a = smc.sample(smc.cfg(Labelled(), 2.0), 3, (2,), sl.schedules.karras(6), seed=1, device="cpu", **kw)
    b = smc.sample(smc.cfg(Labelled(), 2.0), 3, (2,), sl.schedules.karras(6), seed=1, **kw)
    c = smc.sample(smc.cfg(Labelled(), 2.0), 3, (2,), sl.schedules.karras(6), seed=2, **kw)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.samples.device.type == "cpu" and a.samples.dtype == F64 and a.samples.shape == (3, 2)
    assert torch.equal(seen[0], labels.repeat_interleave(4)) and seen[1] is None
    guided = Guided(g_c, g_u, 2.0)                               # a composite expert: 2 network evals per call
    r = smc.sample(guided, 2, (2,), sl.schedules.karras(5), particles=3, dtype=F64)
    assert r.nfe == 5 and r.network_nfe == 10 and r.cost == 30
    with pytest.raises(ValueError, match="population='batch'"):
        smc.sample(smc.cfg(Labelled(), 2.0), 3, (2,), population="batch", **kw)


def test_bad_input_is_named():
    g_c, g_u, _ = class_models(2)
    op, y = Mask([0], 2), torch.tensor([0.5], dtype=F64)
    cases = [
        (lambda: smc.posterior(g_c, op, y, 0.0), ValueError, "sigma_y"),
        (lambda: smc.posterior(g_c, object(), y, 0.1), TypeError, "op must have"),
        (lambda: smc.posterior_sample(g_c, op, torch.zeros(3, dtype=F64), 0.1, n=2, sigmas=[1.0, 0.0]),
         ValueError, "y must have"),
        (lambda: smc.anneal(g_c, 0.0), ValueError, "beta"),
        (lambda: smc.Tilt([g_c, g_u], [1.0, -1.0]), ValueError, "sum to > 0"),
        (lambda: smc.Tilt([g_c], [1.0, 2.0]), ValueError, "exponents"),
        (lambda: smc.product(g_c), ValueError, "two experts"),
        (lambda: smc.sample(g_c, 2, (2,), particles=0), ValueError, "particles"),
        (lambda: smc.sample(g_c, 2, (2,), ess_threshold=1.5), ValueError, "ess_threshold"),
        (lambda: smc.sample(g_c, 2, (2,), population="all"), ValueError, "population"),
        (lambda: smc.sample(g_c, 2, (2,), resample_window=(2.0, 1.0)), ValueError, "resample_window"),
        (lambda: smc.sample(g_c, 2, (2,), sigmas=[1.0, 2.0, 0.0]), ValueError, "sigmas"),
        (lambda: smc.sample(g_c, 2, (2,), eta=-1), ValueError, "eta"),
        (lambda: smc.sample(g_c, 2, (2,), solver="heun"), ValueError, "solver"),
        (lambda: smc.sample(g_c, 2, (2,), selection="best"), ValueError, "selection"),
        (lambda: smc.leave_one_out(torch.zeros(4)), ValueError, "log_weights"),
        (lambda: smc.sample(42, 2, (2,)), TypeError, "target"),
        (lambda: smc.systematic_resample(torch.zeros(4)), ValueError, "log_weights"),
        (lambda: smc.systematic_resample(torch.zeros(2, 4), u=torch.tensor([0.5, 1.0])), ValueError, "u must"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
