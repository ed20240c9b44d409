import math

import pytest
import torch

import scorelab as sl
from scorelab.denoisers import (CountingDenoiser, FlowDenoiser, VPDenoiser, eps_to_x0, v_to_x0, x0_to_eps,
                                x0_to_v)


def gaussian_1d_denoiser(mu=0.3, lam=2.0):
    return lambda x, sigma: mu + lam / (lam + torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1)) ** 2) * (x - mu)


def test_score_is_tweedie():
    d = gaussian_1d_denoiser()
    x = torch.randn(5, 3, dtype=torch.float64)
    s = sl.score(d, x, 0.7)
    assert torch.allclose(s, -(x - 0.3) / (2.0 + 0.49))  # ∇ log N(x; μ, λ+σ²)


def test_score_rejects_zero_sigma():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        sl.score(gaussian_1d_denoiser(), torch.zeros(2, 2), 0.0)


def test_parameterisation_round_trips():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 3.0, 20.0], dtype=torch.float64)
    x = x0 + sigma[:, None] * eps
    assert torch.allclose(eps_to_x0(x, eps, sigma), x0)
    assert torch.allclose(x0_to_eps(x, x0, sigma), eps)
    alpha, s = 1 / torch.sqrt(1 + sigma ** 2), sigma / torch.sqrt(1 + sigma ** 2)
    v = alpha[:, None] * eps - s[:, None] * x0  # Salimans & Ho's definition on the VP process
    assert torch.allclose(x0_to_v(x, x0, sigma), v)
    assert torch.allclose(v_to_x0(x, v, sigma), x0)


def _vp_oracle(kind, x0, alphas_cumprod):
    """A 'network' that knows x0 and answers in VP coordinates at (fractional) timestep t."""
    sig = torch.sqrt((1 - alphas_cumprod) / alphas_cumprod)

    def model(x_t, t):
        s_vp = torch.tensor([float(torch.exp(torch.lerp(sig.log()[int(ti)], sig.log()[min(int(ti) + 1, len(sig) - 1)],
                                                                  float(ti - int(ti))))) for ti in t], dtype=x_t.dtype)
        a = 1 / torch.sqrt(1 + s_vp ** 2)
        a_, s_ = a[:, None], (s_vp * a)[:, None]
        eps = (x_t - a_ * x0) / s_
        return {"epsilon": eps, "v_prediction": a_ * eps - s_ * x0, "sample": x0}[kind]
    return model


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_vp_denoiser_recovers_x0(kind):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    x0 = torch.randn(3, 5, dtype=torch.float64)
    den = VPDenoiser(_vp_oracle(kind, x0, ac), alphas_cumprod=ac, prediction=kind)
    for sigma in [0.05, 0.9, 30.0]:
        x = x0 + sigma * torch.randn_like(x0)
        assert torch.allclose(den(x, sigma), x0, atol=1e-9)


def test_vp_sigma_t_round_trip():
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    den = VPDenoiser(lambda x, t: x, alphas_cumprod=ac)
    t = torch.tensor([0.0, 10.5, 500.25, 999.0], dtype=torch.float64)
    assert torch.allclose(den.sigma_to_t(den.t_to_sigma(t)), t, atol=1e-9)
    assert den.sigma_min == pytest.approx(math.sqrt((1 - ac[0]) / ac[0]))


def test_vp_denoiser_bad_arguments():
    with pytest.raises(ValueError, match="prediction"):
        VPDenoiser(lambda x, t: x, alphas_cumprod=[0.9, 0.5], prediction="eps")
    with pytest.raises(ValueError, match="exactly one"):
        VPDenoiser(lambda x, t: x)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        VPDenoiser(lambda x, t: x, alphas_cumprod=[0.5, 0.9])


def test_flow_denoiser_recovers_x0():
    x0 = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.randn(4, 3, dtype=torch.float64)
    sigma = 1.7
    x = x0 + sigma * eps
    den = FlowDenoiser(lambda x_t, t: eps - x0)  # the true rectified-flow velocity
    assert torch.allclose(den(x, sigma), x0)


def test_counting_denoiser():
    c = CountingDenoiser(gaussian_1d_denoiser())
    for _ in range(3):
        c(torch.zeros(7, 2), 1.0)
    assert c.nfe == 3
