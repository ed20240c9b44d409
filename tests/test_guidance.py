"""Guidance denoisers against closed forms: with two Gaussians that share their covariance, CFG/autoguidance at
scale w is exactly the denoiser (and the PF-ODE) of the Gaussian with mean μ_neg + w (μ_pos − μ_neg)."""
import math

import pytest
import torch

import scorelab as sl
from scorelab.guidance import Guided, autoguidance, cfg

D = 4
SIGMAS = [1e-4, 0.05, 0.7, 3.0, 80.0, 1e4]


def _pair():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))[0]
    lam = torch.tensor([2.0, 1.0, 0.3, 0.05], dtype=torch.float64)
    mu_u = torch.randn(D, generator=gen, dtype=torch.float64)
    mu_c = mu_u + torch.tensor([1.5, -1.0, 0.5, 2.0], dtype=torch.float64)
    return sl.Gaussian(mu_u, lam, u), sl.Gaussian(mu_c, lam, u), (mu_u, mu_c, lam, u)


class TwoClass:
    """A conditional denoiser: class_labels=None → the pooled (unconditional) Gaussian, else the class's."""

    def __init__(self, g_u, g_c):
        self.g_u, self.g_c, self.labels = g_u, g_c, []

    def __call__(self, x, sigma, class_labels=None):
        self.labels.append(None if class_labels is None else class_labels.clone())
        return self.g_u(x, sigma) if class_labels is None else self.g_c(x, sigma)


@pytest.mark.parametrize("w", [0.0, 1.0, 1.5, 3.0, -0.5])
def test_cfg_is_the_shifted_gaussian(w):
    g_u, g_c, (mu_u, mu_c, lam, u) = _pair()
    tilt = sl.Gaussian(mu_u + w * (mu_c - mu_u), lam, u)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    two = TwoClass(g_u, g_c)
    one_model = cfg(two, w)
    two_models = cfg(g_c, w, uncond=g_u)
    y = torch.zeros(5, dtype=torch.long)
    for s in SIGMAS:
        want = tilt(x, s)
        torch.testing.assert_close(one_model(x, s, class_labels=y), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(two_models(x, s), want, rtol=1e-12, atol=1e-12)
        assert torch.isfinite(one_model(x, s, class_labels=y)).all()


def test_cfg_negative_gets_the_null_label_and_positive_the_label():
    g_u, g_c, _ = _pair()
    two = TwoClass(g_u, g_c)
    y = torch.tensor([3, 1])
    cfg(two, 2.0)(torch.zeros(2, D, dtype=torch.float64), 1.0, class_labels=y)
    assert torch.equal(two.labels[0], y) and two.labels[1] is None
    seen = []
    cfg(lambda x, s, class_labels=None: seen.append(class_labels) or x, 2.0, null=10)(torch.zeros(2, D), 1.0,
                                                                                        class_labels=y)
    assert torch.equal(seen[0], y) and seen[1] == 10


def test_guided_sampling_follows_the_tilted_gaussians_exact_trajectory():
    g_u, g_c, (mu_u, mu_c, lam, u) = _pair()
    w = 2.5
    tilt = sl.Gaussian(mu_u + w * (mu_c - mu_u), lam, u)
    sigmas = sl.schedules.karras(40, sigma_min=0.002, sigma_max=80.0).double()
    r = sl.sample(cfg(TwoClass(g_u, g_c), w), n=6, shape=(D,), sigmas=sigmas, solver="dpmpp_3m", seed=3,
                  dtype=torch.float64, extra_args={"class_labels": torch.zeros(6, dtype=torch.long)})
    x_T = sl.initial_noise(6, (D,), 3, dtype=torch.float64) * 80.0
    exact = tilt.trajectory(x_T, sigmas)[-1]
    same_solver = sl.sample(tilt, n=6, shape=(D,), sigmas=sigmas, solver="dpmpp_3m", seed=3, dtype=torch.float64)
    torch.testing.assert_close(r.images, same_solver.images, rtol=0, atol=1e-10)   # the same ODE, step by step
    torch.testing.assert_close(r.images, exact, rtol=0, atol=5e-3)                 # and the ODE's exact solution
    assert r.nfe == 40 and r.network_nfe == 80


def test_interval_guides_only_inside_and_saves_evaluations():
    g_u, g_c, _ = _pair()
    g = cfg(g_c, 2.0, uncond=g_u, interval=(0.5, 5.0))
    x = torch.randn(3, D, dtype=torch.float64)
    full = cfg(g_c, 2.0, uncond=g_u)
    torch.testing.assert_close(g(x, 1.0), full(x, 1.0))
    torch.testing.assert_close(g(x, 5.0), full(x, 5.0))                         # σ_hi is inside
    torch.testing.assert_close(g(x, 0.5), g_c(x, 0.5))                          # σ_lo is outside
    torch.testing.assert_close(g(x, 10.0), g_c(x, 10.0))
    per_sample = torch.tensor([0.1, 1.0, 9.0], dtype=torch.float64)             # one of three inside
    out = g(x, per_sample)
    torch.testing.assert_close(out[1], full(x[1:2], 1.0)[0])
    torch.testing.assert_close(out[[0, 2]], g_c(x[[0, 2]], per_sample[[0, 2]]))
    g.network_evals = 0
    g(x, 10.0)
    assert g.network_evals == 1
    g(x, 1.0)
    assert g.network_evals == 3
    sigmas = sl.schedules.karras(10)
    inside = sum(1 for s in sigmas[:-1] if 0.5 < float(s) <= 5.0)
    r = sl.sample(cfg(g_c, 2.0, uncond=g_u, interval=(0.5, 5.0)), n=2, shape=(D,), sigmas=sigmas, solver="euler",
                  dtype=torch.float64)
    assert r.nfe == 10 and r.network_nfe == 10 + inside


def test_interval_slices_conditioning_for_the_guided_samples():
    seen = []

    def model(x, sigma, class_labels=None, tag=None):
        seen.append((None if class_labels is None else class_labels.tolist(), tag))
        return x * 0

    g = cfg(model, 2.0, interval=(0.5, 5.0))
    g(torch.zeros(3, D), torch.tensor([0.1, 1.0, 2.0]), class_labels=torch.tensor([7, 8, 9]), tag="t")
    assert seen == [([7, 8, 9], "t"), (None, "t")]


def test_autoguidance_formula_with_the_gaussian_as_weak_model():
    g_u, g_c, _ = _pair()
    x = torch.randn(4, D, dtype=torch.float64)
    for s in SIGMAS:
        torch.testing.assert_close(autoguidance(g_c, g_u, 2.0)(x, s), g_u(x, s) + 2.0 * (g_c(x, s) - g_u(x, s)))
    seen = []

    def strong(x, sigma, class_labels=None):
        seen.append(class_labels)
        return x

    autoguidance(strong, lambda x, s: x * 0, 2.0, weak_cond=False)(x, 1.0, class_labels=torch.ones(4))
    assert len(seen) == 1                     # the weak model was called without class_labels (else TypeError)


def test_scale_one_costs_one_evaluation():
    g_u, g_c, _ = _pair()
    g = autoguidance(g_c, g_u, 1.0)
    torch.testing.assert_close(g(torch.ones(2, D, dtype=torch.float64), 1.0), g_c(torch.ones(2, D,
                                                                                           dtype=torch.float64), 1.0))
    assert g.network_evals == 1


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(scale=math.nan), ValueError, "scale"),
    (dict(scale="x"), TypeError, "scale"),
    (dict(scale=2.0, interval=(5.0, 1.0)), ValueError, "interval"),
    (dict(scale=2.0, interval=(-1.0, 1.0)), ValueError, "interval"),
    (dict(scale=2.0, interval=3.0), TypeError, "interval"),
])
def test_bad_arguments_are_named(kwargs, err, match):
    with pytest.raises(err, match=match):
        Guided(lambda x, s: x, lambda x, s: x, **kwargs)


def test_non_callable_models_are_refused():
    with pytest.raises(TypeError, match="negative"):
        Guided(lambda x, s: x, 3, 2.0)
