"""Schedules tuned by the closed form, against exact references: kl_optimal's optimality for Euler on Gaussian
data (an identity and a numerical minimiser), the AYS bound's closed form (Monte Carlo, quadrature) and its
minimiser, the dynamic programme against brute-force enumeration, the tuned grids against the Karras grid on the
exact Gaussian problem, teleportation's NFE accounting, the JSON round trip and the CLI."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scorelab as sl
from scorelab import samplers as S
from scorelab.cli import main
from scorelab.schedules import search
from test_samplers import random_gaussian


def gaussian_1d(c=0.5, mu=0.3):
    return sl.Gaussian(torch.tensor([mu], dtype=torch.float64), torch.tensor([c * c], dtype=torch.float64),
                       torch.eye(1, dtype=torch.float64))


def euler_factor(grid, c):
    """x(0) − μ = factor · (x_T − μ) for Euler on N(μ, c²): the product of the steps' (c² + σσ')/(c² + σ²)."""
    return math.prod((c * c + s * t) / (c * c + s * s) for s, t in zip(grid[:-1], grid[1:]))


# ---------------------------------------------------------------------------------------------- kl_optimal
@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), lo=st.floats(1e-4, 1.0), ratio=st.floats(1.5, 1e5), c=st.floats(0.05, 5.0))
def test_kl_optimal_is_uniform_in_arctan(n, lo, ratio, c):
    hi = lo * ratio
    s = sl.schedules.kl_optimal(n, lo, hi, sigma_data=c)
    assert len(s) == n + 1 and s[-1] == 0 and s[0] == hi and (n == 1 or s[-2] == lo)
    assert (s[1:] < s[:-1]).all()
    if n > 2:
        theta = torch.atan(s[:-1] / c)
        assert torch.allclose(theta[:-1] - theta[1:], (theta[0] - theta[-1]) / (n - 1), rtol=1e-9, atol=1e-12)


def test_euler_on_a_gaussian_is_the_exact_flow_times_the_cosines_of_the_angle_steps():
    c, g = 0.7, gaussian_1d(0.7)
    grid = sl.schedules.karras(7)
    x_T = torch.tensor([[3.0], [-40.0]], dtype=torch.float64)
    x0 = S.euler(g, x_T, grid)
    theta = [math.atan(float(s) / c) for s in grid]
    exact = g.trajectory(x_T, grid)[-1]
    cosines = math.prod(math.cos(a - b) for a, b in zip(theta[:-1], theta[1:]))
    assert torch.allclose(x0 - 0.3, (exact - 0.3) * cosines, rtol=1e-12)
    assert euler_factor([float(s) for s in grid], c) == pytest.approx(
        cosines * math.cos(theta[0]) / math.cos(theta[-1]), rel=1e-12)


def test_kl_optimal_is_the_minimiser_of_eulers_endpoint_error():
    from scipy.optimize import minimize

    c, n, lo, hi = 0.5, 6, 0.002, 80.0

    def loss(u):      # 1 − factor/exact ≥ 0; interior points in log σ (sorted: any order is the same grid)
        grid = [hi] + sorted(np.exp(u).tolist(), reverse=True) + [lo, 0.0]
        return 1 - euler_factor(grid, c) / (1 / math.sqrt(1 + (hi / c) ** 2))

    start = np.log(sl.schedules.karras(n, lo, hi)[1:-2].numpy())
    res = minimize(loss, start, method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-14, maxiter=20000))
    found = np.sort(np.exp(res.x))[::-1]
    assert found == pytest.approx(sl.schedules.kl_optimal(n, lo, hi, sigma_data=c)[1:-2].numpy(), rel=1e-3)
    assert loss(np.log(sl.schedules.kl_optimal(n, lo, hi, sigma_data=c)[1:-2].numpy())) <= res.fun + 1e-12


def test_kl_optimal_rejects_bad_sigma_data():
    with pytest.raises(ValueError, match="sigma_data"):
        sl.schedules.kl_optimal(5, sigma_data=0.0)
    assert "kl_optimal" in sl.schedules.NAMES


# ---------------------------------------------------------------------------------------------- the AYS bound
def test_bound_integrand_matches_monte_carlo_on_one_brownian_path():
    lam, t, hi = 0.6, 0.4, 1.3
    gen = torch.Generator().manual_seed(0)
    n = 2_000_000
    x0 = math.sqrt(lam) * torch.randn(n, generator=gen, dtype=torch.float64)
    x_t = x0 + t * torch.randn(n, generator=gen, dtype=torch.float64)
    x_hi = x_t + math.sqrt(hi ** 2 - t ** 2) * torch.randn(n, generator=gen, dtype=torch.float64)
    mc = float(((lam / (lam + t * t)) * x_t - (lam / (lam + hi * hi)) * x_hi).pow(2).mean())
    a, a_hi = lam / (lam + t * t), lam / (lam + hi * hi)
    assert (a - a_hi) ** 2 * (lam + t * t) + a_hi ** 2 * (hi * hi - t * t) == pytest.approx(mc, rel=5e-3)


def test_bound_interval_matches_adaptive_quadrature():
    from scipy.integrate import quad

    g = random_gaussian(d=6)
    spec = search._spectrum(g)
    lam = g.eigvals_.numpy()
    for hi, lo in [(80.0, 2.0), (1.0, 0.01), (0.05, 0.002)]:
        a_hi = lam / (lam + hi * hi)

        def f(t):
            a = lam / (lam + t * t)
            return float(((a - a_hi) ** 2 * (lam + t * t) + a_hi ** 2 * (hi * hi - t * t)).sum()) / t ** 3

        ref, _ = quad(f, lo, hi, limit=500, epsrel=1e-12)
        assert search._interval_gauss(spec, hi, lo) == pytest.approx(ref, rel=1e-8)


def test_ays_on_a_gaussian_minimises_the_bound():
    g = random_gaussian(d=12)
    grid, info = sl.schedules.optimize(g, solver="dpmpp_2m", nfe=7, method="ays", return_info=True)
    assert len(grid) == 8 and grid[0] == 80.0 and grid[-2] == pytest.approx(0.002) and grid[-1] == 0
    bound = sl.schedules.kl_bound(g, grid)
    assert bound == pytest.approx(info.objective, rel=1e-12)
    for other in (sl.schedules.karras(7), sl.schedules.exponential(7), sl.schedules.kl_optimal(7)):
        assert bound < sl.schedules.kl_bound(g, other)
    for p in range(1, 6):                                        # a local minimum in every coordinate
        for f in (0.97, 1.03):
            moved = grid.clone()
            moved[p] *= f
            assert sl.schedules.kl_bound(g, moved) > bound


def test_sampled_bound_agrees_with_the_closed_form():
    """The bound sampled on Brownian paths of exact Gaussian data (what a GMM, Empirical or a network gets) picks a
    grid whose closed-form bound is within a few per cent of the closed-form optimum."""
    g = random_gaussian(d=8)
    data = g.sample(4000, generator=torch.Generator().manual_seed(3))

    class Plain:                                                # hide the closed form
        def __call__(self, x, sigma):
            return g(x, sigma)

    exact = sl.schedules.optimize(g, solver="euler", nfe=5, method="ays")
    sampled = sl.schedules.optimize(Plain(), solver="euler", nfe=5, method="ays", data=data, n_samples=4000,
                                    candidates=97)
    assert sl.schedules.kl_bound(g, sampled) <= 1.05 * sl.schedules.kl_bound(g, exact)


# ---------------------------------------------------------------------------------------------- dynamic programme
def test_additive_dp_finds_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    m, steps = 9, 4
    cost = rng.uniform(0, 1, (m, m))
    path = search._dp_additive(cost, steps)
    best = min(((0,) + mid + (m - 1,) for mid in itertools.combinations(range(1, m - 1), steps - 1)),
               key=lambda p: sum(cost[a, b] for a, b in zip(p[:-1], p[1:])))
    assert tuple(path) == best


def test_teacher_dp_for_euler_is_the_brute_force_optimum():
    """Euler has no history, so the DP's path must be the cheapest of all paths through the candidate levels
    under the documented cost (weighted squared distance of one Euler step from the exact teacher point)."""
    g = random_gaussian(d=6)
    m, nfe, n = 8, 4, 16
    grid, info = sl.schedules.optimize(g, solver="euler", nfe=nfe, method="dp", candidates=m, n_samples=n, refine=0,
                                       baselines=(), return_info=True)
    levels = search._geometric(80.0, 0.002, m)
    x_T = (80.0 * torch.randn((n, 6), generator=torch.Generator().manual_seed(0))).double()   # as the search draws
    traj = g.trajectory(x_T, torch.tensor(levels + [0.0], dtype=torch.float64))
    c2 = float(traj[-1].var(0).mean())

    def step_cost(j, k):
        x = traj[j] + ((levels[k] if k < m else 0.0) - levels[j]) * (traj[j] - g(traj[j], levels[j])) / levels[j]
        w = 1.0 if k == m else c2 / (c2 + levels[k] ** 2)
        return w * float(((x - traj[k]) ** 2).sum(1).mean())

    best = min(((0,) + mid for mid in itertools.combinations(range(1, m), nfe - 1)),
               key=lambda p: sum(step_cost(a, b) for a, b in zip(p, p[1:] + (m,))))
    assert grid[:-1].tolist() == pytest.approx([levels[i] for i in best], rel=1e-12)
    assert info.details["dp_value"] == pytest.approx(sum(step_cost(a, b) for a, b in zip(best, best[1:] + (m,))),
                                                     rel=1e-9)


@pytest.mark.parametrize("solver, nfe", [("dpmpp_2m", 5), ("ipndm", 6), ("unipc", 5), ("heun", 5)])
def test_tuned_grid_beats_karras_on_the_exact_gaussian_problem(solver, nfe):
    """Searched on one batch of noise, evaluated on another: the exact endpoint error is below the Karras grid's at
    the same NFE."""
    g = random_gaussian(d=16)
    grid = sl.schedules.optimize(g, solver=solver, nfe=nfe, method="dp", n_samples=32, candidates=24)
    karras = sl.schedules.karras(sl.schedules.steps_for_nfe(solver, nfe))
    x_T = 80.0 * torch.randn(64, 16, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    exact = g.trajectory(x_T, torch.tensor([80.0, 0.0], dtype=torch.float64))[-1]
    fn = S.get(solver)

    def error(s):
        return float((fn(g, x_T, s) - exact).pow(2).sum(1).mean().sqrt())

    calls = sl.CountingDenoiser(g)
    fn(calls, x_T, grid)
    assert calls.nfe == nfe
    assert error(grid) < 0.8 * error(karras)


def test_teleported_search_spends_its_budget_on_the_network_only():
    g = random_gaussian(d=10)
    grid, info = sl.schedules.optimize(g, solver="dpmpp_2m", nfe=4, method="dp", teleport=g, sigma_skip=3.0,
                                       n_samples=16, candidates=16, return_info=True)
    assert info.skip == 3 and float(grid[info.skip]) == 3.0 and grid[0] == 80.0
    res = sl.sample(g, n=8, shape=(10,), sigmas=grid, solver="dpmpp_2m", teleport=g, sigma_skip=info.sigma_skip,
                    warm_history=True, dtype=torch.float64, progress=False)
    assert res.network_nfe == 4
    # with the same Gaussian as the model, teleport + the tuned grid is close to the exact solution
    assert info.rms < info.baseline_rms["karras"]


def test_steps_for_nfe_and_bad_arguments():
    assert sl.schedules.steps_for_nfe("heun", 5) == 3 and sl.schedules.steps_for_nfe("dpmpp_2m", 5) == 5
    with pytest.raises(ValueError, match="nfe=4"):
        sl.schedules.steps_for_nfe("heun", 4)
    with pytest.raises(ValueError, match="stochastic"):
        sl.schedules.steps_for_nfe("euler_ancestral", 4)
    g = random_gaussian(d=4)
    with pytest.raises(ValueError, match="method"):
        sl.schedules.optimize(g, method="gits")
    with pytest.raises(ValueError, match="data="):
        sl.schedules.optimize(lambda x, s: x, method="ays", shape=(4,))
    with pytest.raises(ValueError, match="sigma_skip"):
        sl.schedules.optimize(g, teleport=g)
    with pytest.raises(TypeError, match="teacher"):
        sl.schedules.optimize(3)


# ---------------------------------------------------------------------------------------------- files and CLI
def test_save_load_round_trip_is_bit_identical(tmp_path):
    s = sl.schedules.kl_optimal(7, sigma_data=0.37)
    path = sl.schedules.save(s, tmp_path / "s.json", method="dp", nfe=7, baseline_rms={"karras": 0.5},
                             note=torch.tensor([1.5]))
    back, prov = sl.schedules.load(path, provenance=True)
    assert torch.equal(back, s) and prov == {"method": "dp", "nfe": 7, "baseline_rms": {"karras": 0.5},
                                             "note": [1.5]}
    (tmp_path / "bad.json").write_text(json.dumps({"format": "scorelab-schedule", "sigmas": [1.0, 2.0, 0.0]}))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sl.schedules.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a scorelab schedule"):
        sl.schedules.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError):
        sl.schedules.load(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="provenance 'x'"):
        sl.schedules.save(s, tmp_path / "t.json", x=object())


def test_cli_optimize_then_sample_round_trip(tmp_path, capsys):
    g = random_gaussian(d=16)
    g.save(tmp_path / "g.safetensors")
    out = tmp_path / "s.json"
    assert main(["schedule", "optimize", "--model", str(tmp_path / "g.safetensors"), "--solver", "dpmpp_2m",
                 "--nfe", "4", "--n-samples", "16", "--candidates", "16", "--shape", "16", "--out", str(out),
                 "--no-progress", "--dtype", "float64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    sigmas, prov = sl.schedules.load(out, provenance=True)
    assert summary["nfe"] == 4 and prov["solver"] == "dpmpp_2m" and prov["method"] == "dp" and len(sigmas) == 5
    assert main(["schedule", "show", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 4
    assert main(["sample", "--model", str(tmp_path / "g.safetensors"), "--sigmas", str(out), "--solver", "dpmpp_2m",
                 "--n", "4", "--shape", "16", "--out", str(tmp_path / "a.png"), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["nfe"] == 4 and res["schedule"] == str(out)
    assert main(["sample", "--model", str(tmp_path / "g.safetensors"), "--sigmas", str(out), "--steps", "5",
                 "--shape", "16"]) == 2
    assert "--sigmas gives the whole grid" in capsys.readouterr().err
    assert main(["schedule", "optimize", "--model", str(tmp_path / "g.safetensors"), "--nfe", "4", "--shape", "16",
                 "--solver", "heun", "--out", str(out)]) == 2
    assert "nfe=4" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- learned weights
def isotropic_gaussian(d=8, c=0.6):
    mu = torch.linspace(-0.5, 0.5, d, dtype=torch.float64)
    return sl.Gaussian(mu, torch.full((d,), c * c, dtype=torch.float64), torch.eye(d, dtype=torch.float64))


def test_learned_without_weights_is_ddim_and_checks_its_weights():
    g = random_gaussian(d=6)
    x_T = 80.0 * torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = sl.schedules.karras(5)
    x = x_T
    for s0, s1 in zip(grid[:-1].tolist(), grid[1:].tolist()):     # DDIM by hand
        x = (s1 / s0) * x + (1 - s1 / s0) * g(x, s0)
    assert torch.allclose(S.learned(g, x_T, grid), x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="fitted for 2 steps"):
        S.learned(g, x_T, grid, coefficients=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"coefficients\[0\]"):
        S.learned(g, x_T, grid, coefficients=[[1.0, 0.0, 0.0]] * 5)


def test_fitted_weights_reproduce_an_exactly_representable_flow():
    """For an isotropic Gaussian, D = μ + a(x − μ), so x and D span the exact flow μ + r(x − μ): the fitted steps
    are exact at every level and the 4-step solve lands on the exact endpoint."""
    g = isotropic_gaussian()
    grid = sl.schedules.karras(4)
    coefficients, info = sl.schedules.fit_coefficients(g, grid, memory=0, n_samples=16, return_info=True)
    assert max(info["step_rms"][:-1]) < 1e-8 and len(coefficients) == 4
    assert info["step_rms"][-1] < 1e-5        # at σ_min = 0.002, x and D are collinear to 1e-6: the ridge decides
    x_T = 80.0 * torch.randn(32, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = g.trajectory(x_T, torch.tensor([80.0, 0.0], dtype=torch.float64))[-1]
    out = S.learned(g, x_T, grid, coefficients=coefficients)
    assert torch.allclose(out, exact, atol=1e-5)
    assert float((S.dpmpp_2m(g, x_T, grid) - exact).abs().max()) > 1e-3     # a classic solver is not exact here


def test_fitted_weights_beat_ddim_and_hold_on_fresh_noise():
    g = random_gaussian(d=16)
    grid = sl.schedules.karras(5)
    coefficients = sl.schedules.fit_coefficients(g, grid, memory=2, n_samples=64, seed=0)
    x_T = 80.0 * torch.randn(64, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    exact = g.trajectory(x_T, torch.tensor([80.0, 0.0], dtype=torch.float64))[-1]

    def error(x):
        return float((x - exact).pow(2).sum(1).mean().sqrt())

    assert error(S.learned(g, x_T, grid, coefficients=coefficients)) < 0.5 * error(S.learned(g, x_T, grid))


def test_fitted_weights_after_a_teleport_use_the_warm_history():
    g = random_gaussian(d=10)
    grid = torch.tensor([80.0, 20.0, 5.0, 2.0, 0.5, 0.05, 0.0], dtype=torch.float64)
    coefficients, info = sl.schedules.fit_coefficients(g, grid, memory=2, teleport=g, sigma_skip=2.0,
                                                       n_samples=32, return_info=True)
    assert info["skip"] == 3 and len(coefficients) == 3 and len(coefficients[0]) == 4   # x, D and two warm values
    res = sl.sample(g, n=8, shape=(10,), sigmas=grid, solver="learned", coefficients=coefficients, teleport=g,
                    sigma_skip=2.0, warm_history=True, dtype=torch.float64, progress=False)
    assert res.network_nfe == 3


def test_cli_fits_weights_and_samples_with_them(tmp_path, capsys):
    g = random_gaussian(d=16)
    g.save(tmp_path / "g.safetensors")
    out = tmp_path / "s.json"
    assert main(["schedule", "optimize", "--model", str(tmp_path / "g.safetensors"), "--nfe", "4", "--shape", "16",
                 "--n-samples", "16", "--candidates", "16", "--fit-coefficients", "--out", str(out),
                 "--no-progress", "--dtype", "float64"]) == 0
    summary = json.loads(capsys.readouterr().out)
    _, prov = sl.schedules.load(out, provenance=True)
    assert len(prov["coefficients"]) == 4 and summary["learned_rms"] == pytest.approx(prov["coefficients_info"]["rms"])
    args = ["sample", "--model", str(tmp_path / "g.safetensors"), "--sigmas", str(out), "--n", "4", "--shape", "16",
            "--no-progress", "--dtype", "float64", "--save-samples"]
    assert main(args + [str(tmp_path / "a.npy"), "--solver", "learned", "--out", str(tmp_path / "a.png")]) == 0
    assert main(args + [str(tmp_path / "b.npy"), "--solver", "euler", "--out", str(tmp_path / "b.png")]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.abs(a - b).max() > 1e-4          # the fitted weights were used (DDIM = Euler here otherwise)


def test_a_mixture_is_not_taken_for_a_gaussian_and_sampled_bounds_are_cached():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:400], dtype=torch.float64) / 8 - 1
    gmm = sl.GMM.fit(x, n_components=3, covariance="full", seed=0)
    assert not search._is_gaussian(gmm) and search._is_gaussian(sl.Gaussian.fit(x))
    cache = {}
    grid, info = sl.schedules.optimize(gmm, solver="dpmpp_2m", nfe=5, method="ays", data=x, n_samples=64,
                                       candidates=33, cache=cache, return_info=True)
    assert info.evaluations == 64 * 33 and not info.details["closed_form"]
    again, info2 = sl.schedules.optimize(gmm, solver="dpmpp_2m", nfe=7, method="ays", data=x, n_samples=64,
                                         candidates=33, cache=cache, return_info=True)
    assert info2.evaluations == 0 and len(again) == 8
    assert torch.equal(sl.schedules.optimize(gmm, solver="dpmpp_2m", nfe=5, method="ays", data=x, n_samples=64,
                                             candidates=33, cache=cache), grid)
