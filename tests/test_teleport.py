"""scorelab.teleport: the exact jump equals the Gaussian's trajectory; skip_index edge cases."""
import pytest
import torch
from scipy.integrate import solve_ivp

import scorelab as sl
from scorelab.models.gaussian import Gaussian
from scorelab.teleport import skip_index, teleport

F64 = torch.float64


@pytest.fixture
def gauss():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=F64))
    return Gaussian(torch.randn(1, 4, 4, generator=g, dtype=F64), 0.1 + torch.rand(6, generator=g, dtype=F64),
                    q[:, :6], residual_var=0.4)


def test_teleport_equals_trajectory(gauss):
    sigmas = sl.schedules.karras(10)
    x_T = sigmas[0] * torch.randn(3, 1, 4, 4, dtype=F64)
    traj = gauss.trajectory(x_T, sigmas)
    for k in (1, 4, 9, 10):
        torch.testing.assert_close(teleport(gauss, x_T, sigmas[0], sigmas[k]), traj[k], rtol=0, atol=1e-12)
    # `sl.teleport` is callable as the DESIGN.md function even once the submodule scorelab.teleport is imported
    torch.testing.assert_close(sl.teleport(gauss, x_T, sigmas[0], sigmas[4]), traj[4], rtol=0, atol=1e-12)
    assert sl.teleport is teleport and sl.sample is sl.sample.__globals__["sample"]


def test_public_name_in_fresh_interpreter():
    import subprocess
    import sys

    code = ("import torch, scorelab as sl\n"
            "g = sl.Gaussian(torch.zeros(3), torch.ones(3), torch.eye(3))\n"
            "x = torch.ones(1, 3, dtype=torch.float64)\n"
            "print(float(sl.teleport(g, x, 3.0, 0.0).sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert abs(float(out) - 3 * (1 / 10) ** 0.5) < 1e-12       # x·√((1+0)/(1+9))


def test_teleport_matches_scipy_and_composes(gauss):
    x_T = 50.0 * torch.randn(2, 1, 4, 4, dtype=F64)

    def rhs(sigma, y):
        x = torch.from_numpy(y).reshape(x_T.shape)
        return ((x - gauss(x, float(sigma))) / sigma).reshape(-1).numpy()

    ref = solve_ivp(rhs, (50.0, 0.7), x_T.reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-12).y[:, -1]
    out = teleport(gauss, x_T, 50.0, 0.7)
    assert float((out.reshape(-1) - torch.from_numpy(ref)).norm() / torch.from_numpy(ref).norm()) < 1e-6
    # the flow is a group: 50 → 5 → 0.7 equals 50 → 0.7
    torch.testing.assert_close(teleport(gauss, teleport(gauss, x_T, 50.0, 5.0), 5.0, 0.7), out, rtol=1e-12, atol=1e-12)
    assert teleport(gauss, x_T.float(), 50.0, 0.7).dtype == torch.float32


def test_teleport_bad_input(gauss):
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="sigma_skip must be < sigma_T"):
        teleport(gauss, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="sigma_skip must be >= 0"):
        teleport(gauss, x, 1.0, -0.5)
    with pytest.raises(ValueError, match="sigma_T must be a single noise level"):
        teleport(gauss, x, torch.tensor([1.0, 2.0]), 0.5)
    with pytest.raises(TypeError, match="gaussian must be"):
        teleport(object(), x, 1.0, 0.5)


def test_skip_index_fraction():
    sigmas = sl.schedules.karras(10)            # 10 steps
    assert skip_index(sigmas) == 0
    assert skip_index(sigmas, skip=0.0) == 0
    assert skip_index(sigmas, skip=0.2) == 2
    assert skip_index(sigmas, skip=0.25) == 3    # 2.5 rounds half up
    assert skip_index(sigmas, skip=0.35) == 4    # 3.5 (3.4999999999999996 in floating point) rounds half up
    assert skip_index(sigmas, skip=0.99) == 9    # capped: the network still takes the last step
    assert skip_index(sl.schedules.karras(1), skip=0.9) == 0
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="skip must be in"):
            skip_index(sigmas, skip=bad)


def test_skip_index_sigma():
    sigmas = sl.schedules.karras(10)
    assert skip_index(sigmas, sigma_skip=float(sigmas[4])) == 4          # lands exactly on a grid point
    assert skip_index(sigmas, sigma_skip=float(sigmas[4]) * 0.999) == 5  # first σ <= sigma_skip
    assert skip_index(sigmas, sigma_skip=float(sigmas[0])) == 0          # at the grid's start: no jump
    with pytest.raises(ValueError, match=r"sigma_skip must be <= sigmas\[0\]"):
        skip_index(sigmas, sigma_skip=1e3)                               # above the grid: refused, not ignored
    assert skip_index(sigmas.float(), sigma_skip=float(sigmas[3])) == 3  # float32 grid, float64 value
    assert skip_index(sigmas, sigma_skip=float(sigmas[9])) == 9
    with pytest.raises(ValueError, match="sigma_skip must be >= sigmas\\[-2\\]"):
        skip_index(sigmas, sigma_skip=0.0)
    with pytest.raises(ValueError, match="sigma_skip must be >= 0"):
        skip_index(sigmas, sigma_skip=-1.0)
    with pytest.raises(ValueError, match="not both"):
        skip_index(sigmas, skip=0.2, sigma_skip=1.0)
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        skip_index([1.0, 1.0, 0.0], skip=0.2)
    nonzero_end = torch.tensor([10.0, 5.0, 2.0, 1.0])
    assert skip_index(nonzero_end, sigma_skip=3.0) == 2
    with pytest.raises(ValueError, match="sigma_skip must be >= sigmas\\[-2\\]"):
        skip_index(nonzero_end, sigma_skip=1.5)
