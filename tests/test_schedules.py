import math

import pytest
import torch

import scorelab as sl
from scorelab._checks import check_sigmas

BUILDERS = ["karras", "exponential", "logsnr_uniform", "vp_linear", "vp_cosine"]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("n", [1, 2, 18])
def test_valid_grid(name, n):
    s = sl.schedules.get(name, n)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[-1] == 0 and (s[1:] < s[:-1]).all()
    check_sigmas(s)


def test_karras_endpoints_and_formula():
    s = sl.schedules.karras(18, 0.002, 80.0, 7.0)
    assert math.isclose(s[0], 80.0, rel_tol=1e-12) and math.isclose(s[-2], 0.002, rel_tol=1e-12)
    # EDM eq. 5 at i = 9 of 17
    i, n = 9, 18
    ref = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(s[i], ref, rel_tol=1e-12)


def test_exponential_is_log_uniform():
    s = sl.schedules.exponential(10, 0.01, 100.0)[:-1]
    d = torch.diff(s.log())
    assert torch.allclose(d, d[0].expand_as(d), rtol=1e-12)
    assert torch.equal(sl.schedules.logsnr_uniform(10, 0.01, 100.0), sl.schedules.exponential(10, 0.01, 100.0))


def test_vp_linear_matches_sde_formula():
    s = sl.schedules.vp_linear(4, beta_min=0.1, beta_d=19.9, eps_s=1e-3)
    t = 1.0
    assert math.isclose(s[0], math.sqrt(math.exp(19.9 * t * t / 2 + 0.1 * t) - 1), rel_tol=1e-12)


def test_vp_cosine_hits_requested_range():
    s = sl.schedules.vp_cosine(10, sigma_min=0.01, sigma_max=50.0)
    assert math.isclose(s[0], 50.0, rel_tol=1e-9) and math.isclose(s[-2], 0.01, rel_tol=1e-9)


def test_device_dtype():
    s = sl.schedules.karras(5, dtype=torch.float32, device="cpu")
    assert s.dtype == torch.float32


@pytest.mark.parametrize("kwargs, msg", [
    (dict(n=0), "n must be"), (dict(n=5, sigma_min=-1), "sigma_min"), (dict(n=5, sigma_min=10, sigma_max=1), "sigma_max"),
    (dict(n=5, rho=0), "rho"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sl.schedules.karras(**kwargs)


def test_unknown_name():
    with pytest.raises(ValueError, match="schedule must be one of"):
        sl.schedules.get("linear", 5)


@pytest.mark.parametrize("grid", [[80.0, 80.0, 0.0], [1.0, 2.0, 0.0], [1.0, -0.5], [float("nan"), 0.0], [1.0]])
def test_check_sigmas_rejects(grid):
    with pytest.raises(ValueError, match="sigmas"):
        check_sigmas(torch.tensor(grid))


def test_karras_keeps_sigma_min_when_sigma_max_dwarfs_it():
    """(1 − r)·σ_max^(1/ρ) + r·σ_min^(1/ρ): at small ρ and a wide range, hi + r·(lo − hi) rounded σ_min to 0."""
    s = sl.schedules.karras(2, sigma_min=1.0, sigma_max=1e8, rho=0.5)
    assert s.tolist() == [1e8, 1.0, 0.0]
    s = sl.schedules.karras(40, sigma_min=1e-4, sigma_max=1e4, rho=0.5)
    assert s[0] == 1e4 and math.isclose(s[-2], 1e-4, rel_tol=1e-12) and (s[1:] < s[:-1]).all()


@pytest.mark.parametrize("name, n, sigma_min, sigma_max, dtype", [
    ("karras", 10, 1.0, 1.000001, torch.float32), ("exponential", 10, 1.0, 1.000001, torch.float32),
    ("karras", 1000, 1.0, 1.0 + 1e-12, torch.float64), ("vp_cosine", 22, 1e-3, 1e-3 * (1 + 2.3e-9), torch.float64)])
def test_range_too_narrow_for_the_dtype_names_the_range(name, n, sigma_min, sigma_max, dtype):
    """Neighbours that round to one value in `dtype` (checked after the cast, not before) are refused, naming the
    range and n, not a `sigmas` argument the caller never passed; a wider range or fewer steps work."""
    with pytest.raises(ValueError, match=rf"^sigma_max={sigma_max:g} is too close to sigma_min={sigma_min:g} for "
                                         rf"n={n} steps in {dtype}"):
        sl.schedules.NAMES[name](n, sigma_min=sigma_min, sigma_max=sigma_max, dtype=dtype)
    s = sl.schedules.NAMES[name](n, sigma_min=sigma_min, sigma_max=sigma_min * 2, dtype=dtype)
    assert s.dtype == dtype and (s[1:] < s[:-1]).all()


def test_sigma_min_underflowing_the_dtype_is_named():
    with pytest.raises(ValueError, match=r"^sigma_min=1e-50 rounds to 0 in torch.float32"):
        sl.schedules.karras(5, sigma_min=1e-50, sigma_max=1.0, dtype=torch.float32)
