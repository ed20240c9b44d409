"""iPNDM against exact references: Adams–Bashforth weights, measured orders on the Gaussian's exact PF-ODE,
history (teleportation's warm start) reproducing an uninterrupted run."""
import math

import pytest
import torch

import scorelab as sl
from scorelab import samplers as S
from test_samplers import FastGaussian, measured_order, random_gaussian, rel_err


@pytest.fixture(scope="module")
def gauss():
    g = random_gaussian()
    x_T = 80.0 * torch.randn(4, g.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = FastGaussian(g)
    fast.trajectory = g.trajectory
    return fast, x_T


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_variable_weights_on_equal_steps_are_the_classic_coefficients(p):
    nodes = [10.0 - 0.5 * k for k in range(p)]                    # newest first, step 0.5 (σ decreasing)
    w = S._ab_weights(nodes, 10.0, 10.5)
    assert w == pytest.approx([0.5 * c for c in S._AB[p]], rel=1e-12, abs=1e-14)


def test_variable_weights_integrate_polynomials_exactly():
    nodes = [3.0, 3.7, 5.1, 8.0]
    for deg in range(4):
        w = S._ab_weights(nodes, 3.0, 1.2)
        assert sum(wk * n ** deg for wk, n in zip(w, nodes)) == pytest.approx((1.2 ** (deg + 1) - 3.0 ** (deg + 1))
                                                                            / (deg + 1), rel=1e-12)


@pytest.mark.parametrize("opts, band", [
    (dict(order=1), (0.8, 1.3)),
    (dict(order=4), (1.7, 2.5)),                           # equal-step coefficients on a Karras grid: order 2
    (dict(order=3, variable_step=True), (2.5, 3.6)),
    (dict(order=4, variable_step=True), (3.2, 4.6)),
])
def test_measured_order(gauss, opts, band):
    g, x_T = gauss
    order, errs = measured_order(g, x_T, "ipndm", [24, 48, 96, 192], **opts)
    assert band[0] <= order <= band[1], (order, errs)


def test_few_steps_more_accurate_than_dpmpp_3m(gauss):
    """The reason iPNDM is the few-step default of the literature, on the exact Gaussian problem: at 5–10 steps
    (grids ending at 0) its error at x(0) is below DPM++(3M)'s and below its own variable-step form's."""
    g, x_T = gauss
    for n in (5, 6, 8, 10):
        sigmas = sl.schedules.karras(n)
        exact = g.trajectory(x_T, sigmas)[-1]
        ours = rel_err(S.ipndm(g, x_T.clone(), sigmas), exact)
        assert ours < rel_err(S.dpmpp_3m(g, x_T.clone(), sigmas), exact)
        assert ours < rel_err(S.ipndm(g, x_T.clone(), sigmas, variable_step=True), exact)


@pytest.mark.parametrize("variable_step", [False, True])
def test_history_resumes_a_run_exactly(gauss, variable_step):
    g, x_T = gauss
    sigmas = sl.schedules.karras(10)
    seen = []
    full = S.ipndm(g, x_T.clone(), sigmas, callback=seen.append, variable_step=variable_step)
    k = 5
    history = [(info["sigma"], info["denoised"], info["x"]) for info in seen[:k]]
    resumed = S.ipndm(g, seen[k]["x"], sigmas[k:], history=history, variable_step=variable_step)
    torch.testing.assert_close(resumed, full, rtol=0, atol=1e-12)
    plain = S.ipndm(g, seen[k]["x"], sigmas[k:], variable_step=variable_step)
    assert not torch.allclose(plain, full, rtol=0, atol=1e-9)


def test_history_needs_x(gauss):
    g, x_T = gauss
    with pytest.raises(ValueError, match="ipndm needs history entries"):
        S.ipndm(g, x_T, sl.schedules.karras(4)[1:], history=[(80.0, x_T)])
    with pytest.raises(ValueError, match="order"):
        S.ipndm(g, x_T, sl.schedules.karras(4), order=5)


def test_teleport_warm_history_is_exact_for_the_gaussian():
    """With the data's own Gaussian as the model, a teleported run with warm history equals the run that solved
    the skipped steps itself — up to the difference between the exact jump and the solver's own early steps."""
    g = random_gaussian()
    sigmas = sl.schedules.karras(12)
    warm = sl.sample(g, n=3, shape=(g.dim,), sigmas=sigmas, solver="ipndm", teleport=g, skip=0.4,
                     warm_history=True, dtype=torch.float64)
    cold = sl.sample(g, n=3, shape=(g.dim,), sigmas=sigmas, solver="ipndm", teleport=g, skip=0.4,
                     dtype=torch.float64)
    x_T = sl.initial_noise(3, (g.dim,), 0, dtype=torch.float64) * 80.0
    exact = g.trajectory(x_T, sigmas)[-1]
    assert warm.nfe == cold.nfe == 12 - round(0.4 * 12)
    assert rel_err(warm.images, exact) < rel_err(cold.images, exact)
    assert math.isfinite(rel_err(warm.images, exact))
