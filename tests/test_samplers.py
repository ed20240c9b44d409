"""Samplers against exact references: the Gaussian's closed-form PF-ODE trajectory, measured convergence orders,
one-step closed forms, N(μ, λ) endpoint moments for the stochastic samplers."""
import math

import numpy as np
import pytest
import torch

import scorelab as sl
from scorelab import samplers as S

ODE = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"]


def random_gaussian(d=24, seed=0):
    """Full-rank Gaussian with eigenvalues spread over 3 decades (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.logspace(-2.5, 0.5, d, dtype=torch.float64)
    return sl.Gaussian(0.3 * torch.randn(d, generator=gen, dtype=torch.float64), lam, q)


class FastGaussian:
    """g's denoiser without argument checks (the convergence sweeps make thousands of calls):
    D(x, σ) = μ + U diag(λ/(λ+σ²)) Uᵀ (x − μ), σ a [B] tensor."""

    def __init__(self, g):
        self.mu, self.lam, self.u = g.mean_.reshape(1, -1), g.eigvals_, g.eigvecs_

    def __call__(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1)
        return self.mu + (((x - self.mu) @ self.u) * (self.lam / (self.lam + sigma[:, None] ** 2))) @ self.u.T


@pytest.fixture(scope="module")
def gauss():
    g = random_gaussian()
    x_T = 80.0 * torch.randn(4, g.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = FastGaussian(g)
    for s in (100.0, 1.0, 1e-3):
        torch.testing.assert_close(fast(x_T, torch.full((4,), s, dtype=torch.float64)), g(x_T, s),
                                   rtol=1e-12, atol=1e-12)
    fast.trajectory = g.trajectory
    return fast, x_T


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def measured_order(g, x_T, name, ns, **opts):
    """Slope of −log(error) vs log(NFE) (least squares) at the grid's last non-zero σ (grids cut before the 0)."""
    nfes, errs = [], []
    for n in ns:
        sigmas = sl.schedules.karras(n)[:-1]
        exact = g.trajectory(x_T, sigmas)[-1]
        counted = sl.CountingDenoiser(g)
        out = S.get(name)(counted, x_T.clone(), sigmas, **opts)
        nfes.append(counted.nfe)
        errs.append(rel_err(out, exact))
    return -np.polyfit(np.log(nfes), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("name, opts, band", [
    ("euler", {}, (0.8, 1.3)),
    ("heun", {}, (1.7, 2.5)),
    ("dpmpp_2m", {}, (1.7, 2.5)),
    ("dpmpp_3m", dict(reference_coefficients=False), (2.6, 3.6)),
    ("unipc", dict(order=3, variant="bh1"), (3.2, 4.6)),  # UniP-3 + UniC: order 4
    ("unipc", dict(order=2, variant="bh2"), (2.5, 3.6)),
    ("dpmpp_2m_sde", dict(eta=0.0, solver_type="heun"), (1.7, 2.5)),
])
def test_convergence_order(gauss, name, opts, band):
    g, x_T = gauss
    order, errs = measured_order(g, x_T, name, [24, 48, 96, 192], **opts)
    assert band[0] <= order <= band[1], (order, errs)
    assert errs[-1] < 2e-2


def test_dpmpp_3m_reference_coefficients_are_second_order(gauss):
    """The half-weighted D'' term of the reference codes is exact for linear D only: second order."""
    g, x_T = gauss
    ours, _ = measured_order(g, x_T, "dpmpp_3m", [48, 96, 192, 384], reference_coefficients=False)
    ref, _ = measured_order(g, x_T, "dpmpp_3m", [48, 96, 192, 384])
    assert 1.5 <= ref <= 2.3 and ours >= 2.8, (ref, ours)


def test_dpmpp_3m_default_is_the_more_accurate_at_practical_steps(gauss):
    """Why the reference weighting is the default: at 5-40 steps (grids ending at 0) it is more accurate than
    the third-order weighting on the exact Gaussian problem."""
    g, x_T = gauss
    for n in (5, 10, 20, 40):
        sigmas = sl.schedules.karras(n)
        exact = g.trajectory(x_T, sigmas)[-1]
        default = rel_err(S.dpmpp_3m(g, x_T.clone(), sigmas), exact)
        third = rel_err(S.dpmpp_3m(g, x_T.clone(), sigmas, reference_coefficients=False), exact)
        assert default < third, (n, default, third)


def test_dpmpp_3m_exact_for_quadratic_denoiser():
    """One third-order step with D(λ) quadratic in λ = −log σ (independent of x) is exact:
    x(λ_t) = e^−h x + ∫ e^−(λ_t − λ) D(λ) dλ, the integral by scipy quadrature."""
    from scipy.integrate import quad

    a, b, c = 0.3, -0.7, 1.1
    dfun = lambda lam: a + b * lam + c * lam ** 2
    sig = [math.exp(-v) for v in (0.0, 0.4, 0.9, 1.3)]
    denoiser = lambda x, s: torch.full_like(x, 0.0) + dfun(-math.log(float(s[0])))
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    history = [(s, denoiser(x, torch.tensor([s], dtype=torch.float64))) for s in sig[:2]]
    out = S.dpmpp_3m(denoiser, x, sig[2:], history=history, reference_coefficients=False)
    exact = math.exp(-0.4) * 0.5 + quad(lambda lam: math.exp(-(1.3 - lam)) * dfun(lam), 0.9, 1.3, epsabs=1e-14)[0]
    assert abs(float(out) - exact) < 1e-12


@pytest.mark.parametrize("name", ODE)
def test_ode_samplers_reach_trajectory_endpoint(gauss, name):
    """On grids ending at 0 every ODE sampler converges to the exact PF-ODE endpoint x(0)."""
    g, x_T = gauss
    errs = []
    for n in (32, 128):
        sigmas = sl.schedules.karras(n, sigma_min=1e-4)
        errs.append(rel_err(S.get(name)(g, x_T.clone(), sigmas), g.trajectory(x_T, sigmas)[-1]))
    assert errs[1] < errs[0] / 3 and errs[1] < 3e-2, errs


def test_one_step_closed_forms(gauss):
    """Single steps against their formulas: Euler, Heun, and the DDIM step x' = (σ'/σ) x + (1 − σ'/σ) D that
    DPM-Solver++, UniPC (no corrector on the last step) and dpmpp_2m_sde(eta=0) take first."""
    g, x_T = gauss
    s0, s1 = 80.0, 30.0
    sig = torch.tensor([s0, s1], dtype=torch.float64)
    d0 = g(x_T, s0)
    euler = x_T + (s1 - s0) * (x_T - d0) / s0
    torch.testing.assert_close(S.euler(g, x_T, sig), euler, rtol=0, atol=1e-12)
    heun = x_T + (s1 - s0) * ((x_T - d0) / s0 + (euler - g(euler, s1)) / s1) / 2
    torch.testing.assert_close(S.heun(g, x_T, sig), heun, rtol=0, atol=1e-12)
    ddim = (s1 / s0) * x_T + (1 - s1 / s0) * d0
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"):
        opts = dict(eta=0.0) if name == "dpmpp_2m_sde" else {}
        torch.testing.assert_close(S.get(name)(g, x_T, sig, **opts), ddim, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_last_step_to_zero_returns_denoised(gauss, name):
    """Steps to σ = 0 end on the denoiser's output at the last non-zero σ (the exact λ → ∞ limit)."""
    g, x_T = gauss
    sig = torch.tensor([0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(S.get(name)(g, x_T / 160, sig), g(x_T / 160, 0.5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_callback_keys_nfe_and_nonzero_stop(gauss, name):
    g, x_T = gauss
    sigmas = sl.schedules.karras(6)[:-1]                     # stops at σ_min = 0.002
    seen = []
    counted = sl.CountingDenoiser(g)
    out = S.get(name)(counted, x_T.clone(), sigmas, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert [info["i"] for info in seen] == list(range(5))
    assert all(set(info) == {"i", "x", "sigma", "sigma_next", "denoised", "nfe"} for info in seen)
    assert seen[-1]["sigma_next"] == pytest.approx(0.002, rel=1e-12)
    assert [info["nfe"] for info in seen] == sorted(info["nfe"] for info in seen)
    assert seen[-1]["nfe"] == counted.nfe
    expected = {"heun": 10, "edm_stochastic": 10}.get(name, 5)   # 2 per Heun step; 1 per step otherwise
    assert counted.nfe == expected


@pytest.mark.parametrize("name", list(S.SAMPLERS))
@pytest.mark.parametrize("bad", [[80.0, 80.0, 1.0, 0.0], [80.0, 1.0, 3.0, 0.0], [1.0, 0.5, -0.1]])
def test_rejects_bad_grids(name, bad):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing and non-negative"):
        S.get(name)(lambda x, s: x, x, bad)


def test_bad_arguments_name_themselves():
    x = torch.zeros(2, 3)
    sig = [1.0, 0.0]
    with pytest.raises(TypeError, match="denoiser"):
        S.euler("not callable", x, sig)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        S.euler(lambda x, s: x, [0.0], sig)
    with pytest.raises(ValueError, match="variant"):
        S.unipc(lambda x, s: x, x, sig, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        S.unipc(lambda x, s: x, x, sig, order=4)
    with pytest.raises(ValueError, match="solver_type"):
        S.dpmpp_2m_sde(lambda x, s: x, x, sig, solver_type="rk4")
    with pytest.raises(ValueError, match="solver must be one of"):
        S.get("rk45")
    with pytest.raises(ValueError, match="history sigmas"):
        S.dpmpp_2m(lambda x, s: x, x, [1.0, 0.5], history=[(0.9, x)])   # history σ must exceed sigmas[0]


def test_denoiser_gets_batched_sigma_in_x_dtype():
    calls = []

    def denoiser(x, sigma):
        calls.append(sigma)
        return x * 0

    x = torch.zeros(3, 2, dtype=torch.float32)
    S.heun(denoiser, x, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    assert all(s.shape == (3,) and s.dtype == torch.float32 for s in calls)
    assert [float(s[0]) for s in calls] == [2.0, 1.0, 1.0]


def test_stochastic_with_zero_noise_equal_deterministic(gauss):
    g, x_T = gauss
    sigmas = sl.schedules.karras(12)
    assert torch.equal(S.edm_stochastic(g, x_T, sigmas, S_churn=0.0), S.heun(g, x_T, sigmas))
    assert torch.equal(S.euler_ancestral(g, x_T, sigmas, eta=0.0), S.euler(g, x_T, sigmas))
    torch.testing.assert_close(S.dpmpp_2m_sde(g, x_T, sigmas, eta=0.0), S.dpmpp_2m(g, x_T, sigmas),
                               rtol=0, atol=1e-12)
    # S_churn > 0 outside [S_tmin, S_tmax] adds no noise either
    assert torch.equal(S.edm_stochastic(g, x_T, sigmas, S_churn=40.0, S_tmin=100.0, S_tmax=200.0),
                       S.heun(g, x_T, sigmas))


@pytest.mark.parametrize("name, opts, steps", [
    ("edm_stochastic", dict(S_churn=40.0), 500),
    ("euler_ancestral", dict(eta=1.0), 1000),                  # first order: more steps for a small bias
    ("dpmpp_2m_sde", dict(eta=1.0), 500),
    ("dpmpp_2m_sde", dict(eta=0.5, solver_type="heun"), 500),
])
def test_stochastic_endpoint_moments(name, opts, steps):
    """From x_T ~ N(μ, λ + σ_T²) the endpoint must be N(μ, λ): mean and variance within 5 standard errors."""
    mu, lam, n = 0.7, 0.25, 20_000
    denoiser = lambda x, s: mu + lam / (lam + s[:, None] ** 2) * (x - mu)
    gen = torch.Generator().manual_seed(3)
    sigmas = sl.schedules.karras(steps)
    x = mu + math.sqrt(lam + 80.0 ** 2) * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    out = S.get(name)(denoiser, x, sigmas, generator=gen, **opts)
    assert abs(float(out.mean()) - mu) < 5 * math.sqrt(lam / n)
    assert abs(float(out.var()) - lam) < 5 * lam * math.sqrt(2 / n)
    # and the noise really is used: a different generator gives different samples
    other = S.get(name)(denoiser, x[:10], sigmas[-5:], generator=torch.Generator().manual_seed(4), **opts)
    again = S.get(name)(denoiser, x[:10], sigmas[-5:], generator=torch.Generator().manual_seed(5), **opts)
    assert not torch.equal(other, again)


def test_noise_sampler_is_used():
    """A caller's noise_sampler(σ, σ') replaces torch.randn: zero noise makes euler_ancestral deterministic."""
    x = torch.ones(2, 3, dtype=torch.float64)
    sig = sl.schedules.karras(5)
    seen = []

    def zeros(s, s_next):
        seen.append((s, s_next))
        return torch.zeros_like(x)

    a = S.euler_ancestral(lambda x, s: x * 0, x * 80, sig, noise_sampler=zeros)
    assert len(seen) == 4 and seen[0] == (pytest.approx(80.0), pytest.approx(float(sig[1])))
    d0, d1 = S.ancestral_step(80.0, float(sig[1]))
    assert d0 ** 2 + d1 ** 2 == pytest.approx(float(sig[1]) ** 2)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("name, k", [("dpmpp_2m", 3), ("dpmpp_3m", 4), ("dpmpp_2m_sde", 3)])
def test_history_resumes_a_run_exactly(gauss, name, k):
    """Restarting on sigmas[k:] with the earlier (σ, D) pairs as history reproduces the uninterrupted run."""
    g, x_T = gauss
    sigmas = sl.schedules.karras(10)
    opts = dict(eta=0.0) if name == "dpmpp_2m_sde" else {}
    seen = []
    full = S.get(name)(g, x_T.clone(), sigmas, callback=seen.append, **opts)
    history = [(info["sigma"], info["denoised"]) for info in seen[:k]]
    resumed = S.get(name)(g, seen[k]["x"], sigmas[k:], history=history, **opts)
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-12)
    plain = S.get(name)(g, seen[k]["x"], sigmas[k:], **opts)
    assert not torch.allclose(plain, full, rtol=0, atol=1e-9)


def test_phi_series_matches_recursion():
    for k in (1, 2, 3, 4):
        for z in (-0.49, -0.1, -1e-3, 0.0, 0.3):
            # φ_k(z) = ∫_0^1 e^((1−τ) z) τ^(k−1)/(k−1)! dτ, by quadrature
            from scipy.integrate import quad

            ref = quad(lambda t: math.exp((1 - t) * z) * t ** (k - 1) / math.factorial(k - 1), 0, 1, epsabs=1e-15)[0]
            assert S.phi(k, z) == pytest.approx(ref, rel=1e-12, abs=1e-15)
        assert S.phi(k, -3.0) == pytest.approx(
            quad(lambda t: math.exp((1 - t) * -3.0) * t ** (k - 1) / math.factorial(k - 1), 0, 1)[0], rel=1e-10)
