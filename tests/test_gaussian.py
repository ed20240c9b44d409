"""scorelab.models.gaussian against exact references: finite differences of log_prob, scipy's ODE solver, numpy's
covariance, eigh of the full covariance, sampling statistics."""
import argparse
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import scorelab as sl
from scorelab.models import load as load_any
from scorelab.models.gaussian import Gaussian

F64 = torch.float64


def random_gaussian(d=16, rank=None, residual_var=0.0, seed=0, zero_eigs=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    r = d if rank is None else rank
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    eigvals = 0.05 + 3 * torch.rand(r, generator=g, dtype=F64)
    if zero_eigs:
        eigvals[-zero_eigs:] = 0
    mean = torch.randn(d, generator=g, dtype=F64)
    return Gaussian(mean.reshape(shape or (d,)), eigvals, q[:, :r], residual_var)


CASES = {
    "full": dict(d=16),
    "lowrank": dict(d=16, rank=5, residual_var=0.3),
    "image": dict(d=16, rank=9, residual_var=0.7, shape=(1, 4, 4)),
}


@pytest.fixture(params=list(CASES))
def gauss(request):
    return random_gaussian(**CASES[request.param])


def test_denoiser_is_tweedie_of_log_prob(gauss):
    """D(x, σ) = x + σ² ∇ log p_σ(x), the gradient by float64 central differences of log_prob."""
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(3, *gauss.shape_, generator=g, dtype=F64)
    d, h = gauss.dim, 1e-5
    for sigma in (0.1, 0.7, 5.0):
        basis = torch.eye(d, dtype=F64).reshape(d, *gauss.shape_)
        grad = torch.stack([(gauss.log_prob(xi + h * basis, sigma) - gauss.log_prob(xi - h * basis, sigma)) / (2 * h)
                            for xi in x]).reshape(x.shape)
        tweedie = x + sigma ** 2 * grad
        torch.testing.assert_close(gauss(x, sigma), tweedie, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(gauss.score(x, sigma), grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(sl.score(gauss, x, sigma), gauss.score(x, sigma), rtol=1e-10, atol=1e-10)


def test_log_prob_matches_dense_multivariate_normal(gauss):
    x = torch.randn(4, *gauss.shape_, dtype=F64, generator=torch.Generator().manual_seed(2))
    sigma = 0.4
    ref = torch.distributions.MultivariateNormal(gauss.mean_.reshape(-1),
                                                 gauss.cov_ + sigma ** 2 * torch.eye(gauss.dim, dtype=F64))
    torch.testing.assert_close(gauss.log_prob(x, sigma), ref.log_prob(x.reshape(4, -1)), rtol=1e-12, atol=1e-10)


def test_batched_sigma_equals_rowwise(gauss):
    x = torch.randn(4, *gauss.shape_, dtype=F64)
    sig = torch.tensor([0.0, 0.1, 1.0, 30.0], dtype=F64)
    rows = torch.cat([gauss(x[i:i + 1], float(s)) for i, s in enumerate(sig)])
    torch.testing.assert_close(gauss(x, sig), rows, rtol=0, atol=1e-14)
    torch.testing.assert_close(gauss(x, sig[2]), gauss(x, 1.0), rtol=0, atol=0)


def _ode_reference(gauss, x_T, grid):
    """scipy DOP853 on dx/dσ = (x − D(x, σ))/σ from grid[0], evaluated at every grid point (float64)."""
    shape = x_T.shape

    def rhs(sigma, y):
        x = torch.from_numpy(y).reshape(shape)
        return ((x - gauss(x, float(sigma))) / sigma).reshape(-1).numpy()

    sol = solve_ivp(rhs, (grid[0], grid[-1]), x_T.reshape(-1).numpy(), method="DOP853", t_eval=grid,
                    rtol=1e-11, atol=1e-12)
    assert sol.success
    return torch.from_numpy(sol.y.T.copy()).reshape(len(grid), *shape)


@pytest.mark.parametrize("grid_kind", ["to_small_sigma", "ends_nonzero"])
def test_trajectory_matches_scipy_ode(gauss, grid_kind):
    x_T = 80.0 * torch.randn(2, *gauss.shape_, dtype=F64, generator=torch.Generator().manual_seed(3))
    if grid_kind == "to_small_sigma":
        grid = sl.schedules.karras(12, sigma_min=1e-3, sigma_max=80.0)[:-1].numpy()     # last σ = 1e-3
    else:
        grid = np.array([80.0, 20.0, 5.0, 2.0, 0.9, 0.5])
    traj = gauss.trajectory(x_T, torch.from_numpy(grid))
    assert traj.shape == (len(grid), *x_T.shape)
    ref = _ode_reference(gauss, x_T, grid)
    for i in range(len(grid)):
        err = (traj[i] - ref[i]).norm() / ref[i].norm()
        assert err < 1e-6, (i, grid[i], float(err))
    torch.testing.assert_close(traj[0], x_T, rtol=0, atol=1e-12)


def test_trajectory_to_zero_is_the_limit():
    gauss = random_gaussian(d=12, rank=6, residual_var=0.2, zero_eigs=2, seed=5)
    x_T = 10 * torch.randn(3, 12, dtype=F64)
    end0 = gauss.trajectory(x_T, torch.tensor([10.0, 1.0, 0.0], dtype=F64))[-1]
    end_small = gauss.trajectory(x_T, torch.tensor([10.0, 1.0, 1e-9], dtype=F64))[-1]
    assert torch.isfinite(end0).all()
    torch.testing.assert_close(end0, end_small, rtol=0, atol=1e-8)
    # the endpoint is a fixed point of D(·, 0): it lies on the data Gaussian's support
    torch.testing.assert_close(gauss(end0, 0.0), end0, rtol=0, atol=1e-12)


def test_fit_recovers_known_gaussian():
    true = random_gaussian(d=8, seed=7)
    n = 20000
    x = true.sample(n, generator=torch.Generator().manual_seed(0))
    fit = Gaussian.fit(x)
    cov = true.cov_
    var = torch.diagonal(cov)
    assert ((fit.mean_ - true.mean_).abs() <= 5 * (var / n).sqrt()).all()
    # sd of a sample covariance entry: sqrt((Σ_ii Σ_jj + Σ_ij²) / n)
    sd = ((torch.outer(var, var) + cov ** 2) / n).sqrt()
    assert ((fit.cov_ - cov).abs() <= 5 * sd).all()
    assert fit.n_samples_ == n and fit.rank_ == 8 and fit.shape_ == (8,)


def test_fit_equals_numpy_mle_cov_and_is_chunk_independent():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1001, 10)) @ rng.normal(size=(10, 10)) + 1e3    # large offset: needs a stable update
    ref_cov = np.cov(x, rowvar=False, bias=True)                          # divisor N (MLE)
    for chunk in (7, 64, 4096):
        g = Gaussian.fit(torch.from_numpy(x), chunk_size=chunk)
        np.testing.assert_allclose(g.mean_.numpy(), x.mean(0), rtol=1e-13)
        np.testing.assert_allclose(g.cov_.numpy(), ref_cov, rtol=1e-9, atol=1e-9 * np.abs(ref_cov).max())
    a = Gaussian.fit(torch.from_numpy(x), chunk_size=13)
    b = Gaussian.fit(torch.from_numpy(x), chunk_size=1000)
    torch.testing.assert_close(a.eigvals_, b.eigvals_, rtol=1e-10, atol=0)
    torch.testing.assert_close(a.eigvecs_, b.eigvecs_, rtol=0, atol=1e-8)     # signs fixed deterministically


def test_fit_numpy_memmap_and_float32_storage(tmp_path):
    rng = np.random.default_rng(1)
    arr = (rng.random(size=(300, 1, 4, 4)) * 255).astype(np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=arr.shape)
    mm[:] = arr
    mm.flush()
    g_mm = Gaussian.fit(np.load(tmp_path / "x.npy", mmap_mode="r"), chunk_size=50)
    g_t = Gaussian.fit(torch.from_numpy(arr.astype(np.float64)))
    torch.testing.assert_close(g_mm.cov_, g_t.cov_, rtol=1e-10, atol=1e-8)
    g32 = Gaussian.fit(torch.from_numpy(arr.astype(np.float64)), dtype=torch.float32)
    assert g32.mean_.dtype == torch.float32 and g32.eigvecs_.dtype == torch.float32
    torch.testing.assert_close(g32.eigvals_.double(), g_t.eigvals_, rtol=1e-6, atol=1e-4)


class LazyRows:
    """A lazily read array-like (like scorelab.data.ArrayDataset): records the largest slice it was asked for."""

    def __init__(self, array):
        self.array, self.shape, self.ndim, self.largest = array, array.shape, array.ndim, 0

    def __getitem__(self, index):
        rows = self.array[index]
        self.largest = max(self.largest, rows.shape[0])
        return torch.from_numpy(rows)


def test_fit_lazy_array_like_reads_bounded_chunks():
    x = np.random.default_rng(4).normal(size=(257, 2, 3))
    lazy = LazyRows(x)
    g = Gaussian.fit(lazy, chunk_size=32)
    assert lazy.largest == 32 and g.shape_ == (2, 3)
    np.testing.assert_allclose(g.cov_.numpy(), np.cov(x.reshape(257, 6), rowvar=False, bias=True), rtol=1e-10,
                               atol=1e-12)


def test_rank_r_fit_keeps_top_eigenpairs():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)))
    full_cov = torch.from_numpy(np.cov(x.numpy(), rowvar=False, bias=True))
    evals, evecs = torch.linalg.eigh(full_cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    g = Gaussian.fit(x, rank=4)
    assert g.rank_ == 4 and g.eigvecs_.shape == (12, 4)
    torch.testing.assert_close(g.eigvals_, evals[:4], rtol=1e-10, atol=0)
    # eigenvectors equal up to sign
    torch.testing.assert_close((g.eigvecs_.T @ evecs[:, :4]).abs(), torch.eye(4, dtype=F64), rtol=0, atol=1e-8)
    assert math.isclose(g.residual_var_, float(evals[4:].mean()), rel_tol=1e-10)
    # isotropic residual preserves the trace
    assert math.isclose(float(torch.trace(g.cov_)), float(torch.trace(full_cov)), rel_tol=1e-10)
    assert (g.eigvals_[:-1] >= g.eigvals_[1:]).all()


def test_sample_statistics_and_reproducibility():
    gauss = random_gaussian(d=6, rank=3, residual_var=0.5, seed=4)
    sigma, n = 0.8, 20000
    x = gauss.sample(n, sigma=sigma, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 6)
    target = gauss.cov_ + sigma ** 2 * torch.eye(6, dtype=F64)
    var = torch.diagonal(target)
    assert ((x.mean(0) - gauss.mean_).abs() <= 5 * (var / n).sqrt()).all()
    emp = torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    sd = ((torch.outer(var, var) + target ** 2) / n).sqrt()
    assert ((emp - target).abs() <= 5 * sd).all()
    again = gauss.sample(n, sigma=sigma, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_save_load_roundtrip(tmp_path, gauss):
    path = tmp_path / "g.safetensors"
    gauss.save(path)
    x = torch.randn(2, *gauss.shape_, dtype=F64)
    for loaded in (Gaussian.load(path), load_any(path)):
        assert isinstance(loaded, Gaussian)
        for name in ("mean_", "eigvals_", "eigvecs_"):
            assert torch.equal(getattr(loaded, name), getattr(gauss, name))
        assert loaded.residual_var_ == gauss.residual_var_ and loaded.shape_ == gauss.shape_
        # equal up to BLAS summation order (a saved tensor is contiguous, the original may be a strided view)
        torch.testing.assert_close(loaded(x, 0.3), gauss(x, 0.3), rtol=1e-14, atol=1e-14)
    g32 = gauss.to(dtype=torch.float32)
    g32.save(path)
    assert Gaussian.load(path).dtype == torch.float32
    with pytest.raises(FileNotFoundError):
        Gaussian.load(tmp_path / "missing.safetensors")


def test_image_shape_and_sigma_limits():
    rng = np.random.default_rng(3)
    data = torch.from_numpy(rng.normal(size=(200, 1, 8, 8))).float()
    g = Gaussian.fit(data)
    assert g.mean_.shape == (1, 8, 8) and g.shape_ == (1, 8, 8)
    x = torch.randn(5, 1, 8, 8)
    out = g(x, 0.5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(g(x, 0.0), x)                                       # full rank: D(x, 0) = x exactly
    torch.testing.assert_close(g(x.double(), 1e6), g.mean_.expand(5, 1, 8, 8), rtol=0, atol=1e-10)
    assert g.trajectory(x, sl.schedules.karras(4)).shape == (5, 5, 1, 8, 8)


def test_zero_eigenvalues_at_sigma_zero_is_projection_without_nan():
    gauss = random_gaussian(d=10, zero_eigs=3, seed=6)         # full rank basis, 3 zero variances
    x = torch.randn(4, 10, dtype=F64)
    d0 = gauss(x, 0.0)
    assert torch.isfinite(d0).all()
    u, lam = gauss.eigvecs_, gauss.eigvals_
    p = u[:, lam > 0] @ u[:, lam > 0].T
    torch.testing.assert_close(d0, gauss.mean_ + (x - gauss.mean_) @ p, rtol=0, atol=1e-12)
    on_support = gauss.sample(4)
    torch.testing.assert_close(gauss(on_support, 0.0), on_support, rtol=0, atol=1e-12)
    torch.testing.assert_close(gauss(x, 1e-7), d0, rtol=0, atol=1e-10)      # continuous at σ → 0
    assert torch.isfinite(gauss(x, torch.tensor([0.0, 0.0, 1.0, 1e-300], dtype=F64))).all()
    with pytest.raises(ValueError, match="sigma must be > 0 for log_prob"):
        gauss.log_prob(x, 0.0)
    with pytest.raises(ValueError, match="sigma must be > 0 for score"):
        gauss.score(x, 0.0)
    assert torch.isfinite(gauss.log_prob(x, 1e-3)).all()


def test_to_dtype_and_input_dtype():
    gauss = random_gaussian(d=16, rank=5, residual_var=0.3)
    x = torch.randn(3, 16)
    g32 = gauss.to(dtype=torch.float32)
    assert g32.dtype == torch.float32 and gauss.dtype == F64                # a copy
    torch.testing.assert_close(g32(x, 0.5), gauss(x, 0.5), rtol=1e-5, atol=1e-5)
    assert gauss(x, 0.5).dtype == torch.float32                            # computed in float64, returned in x's
    torch.testing.assert_close(gauss(x, 0.5), gauss(x.double(), 0.5).float(), rtol=0, atol=0)


def test_cli_options_build_the_fitted_model():
    """`scorelab fit gaussian` options (held by commands/fit.py, not the model) give Gaussian.fit's model."""
    from scorelab.commands.fit import add_model_arguments, build_model

    parser = argparse.ArgumentParser()
    add_model_arguments("gaussian", parser)
    data = torch.randn(50, 2, 3)
    g = build_model("gaussian", data, parser.parse_args(["--rank", "3", "--float32"]))
    assert g.rank_ == 3 and g.dtype == torch.float32 and g.shape_ == (2, 3)
    torch.testing.assert_close(g.eigvals_, Gaussian.fit(data, rank=3).eigvals_.float(), rtol=0, atol=0)
    g = build_model("gaussian", data, parser.parse_args([]))
    assert g.rank_ == 6 and g.dtype == F64
    assert not hasattr(Gaussian, "add_cli_arguments") and not hasattr(Gaussian, "fit_from_cli")


@pytest.mark.parametrize("data, kwargs, match", [
    (torch.full((5, 3), float("nan")), {}, "data contains NaN"),
    (torch.zeros(0, 3), {}, "at least 1 sample"),
    (torch.zeros(10), {}, r"data must have shape \[N, \*shape\]"),
    (torch.randn(10, 3), dict(rank=4), "rank must be <= d = 3"),
    (torch.randn(10, 3), dict(rank=0), "rank must be >= 1"),
    (torch.randn(10, 3), dict(chunk_size=0), "chunk_size must be >= 1"),
    (torch.randn(10, 3), dict(eps=-1.0), "eps must be"),
])
def test_fit_bad_input(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Gaussian.fit(data, **kwargs)


def test_call_bad_input():
    g = Gaussian.fit(torch.randn(20, 1, 2, 2))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 2, 2\].*\(1, 2, 2\)"):
        g(torch.randn(3, 4), 0.1)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        g(torch.randn(3, 1, 2, 2), -0.1)
    with pytest.raises(ValueError, match="sigma has 2 entries but x has batch size 3"):
        g(torch.randn(3, 1, 2, 2), torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        g(np.zeros((3, 1, 2, 2)), 0.1)
    with pytest.raises(ValueError, match="x_T must have shape"):
        g.trajectory(torch.randn(3, 5), [1.0, 0.0])
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        g.trajectory(torch.randn(3, 1, 2, 2), [1.0, 2.0, 0.0])


def test_constructor_validation():
    q = torch.linalg.qr(torch.randn(4, 4, dtype=F64))[0]
    with pytest.raises(ValueError, match="eigvals must be >= 0"):
        Gaussian(torch.zeros(4), torch.tensor([1.0, -1.0]), q[:, :2])
    with pytest.raises(ValueError, match="orthonormal"):
        Gaussian(torch.zeros(4), torch.ones(2), 2 * q[:, :2])
    with pytest.raises(ValueError, match=r"eigvecs must have shape \[d, r\] with d = mean.numel\(\) = 4"):
        Gaussian(torch.zeros(4), torch.ones(2), q[:3, :2])
    with pytest.raises(ValueError, match=r"eigvals must have shape \[r\] = \[2\]"):
        Gaussian(torch.zeros(4), torch.ones(3), q[:, :2])
    with pytest.raises(ValueError, match="residual_var must be"):
        Gaussian(torch.zeros(4), torch.ones(2), q[:, :2], residual_var=-1.0)
    with pytest.raises(ValueError, match="mean contains NaN"):
        Gaussian(torch.full((4,), float("nan")), torch.ones(2), q[:, :2])


def test_one_closed_form_for_gaussian_precond_and_wiener():
    """The Gaussian skip of EDMPrecond, Wiener's linear mode and Gaussian itself are one function
    (models.gaussian.gaussian_denoiser), equal to the dense solve μ + Σ(Σ + σ²I)⁻¹(x − μ) in float64."""
    from scorelab.models.gaussian import gaussian_denoiser
    from scorelab.models.local import Wiener
    from scorelab.nets.precond import EDMPrecond

    gen = torch.Generator().manual_seed(3)
    data = torch.randn(200, 1, 3, 3, generator=gen, dtype=F64) * torch.linspace(0.2, 2, 9, dtype=F64).reshape(1, 1, 3, 3)
    x = torch.randn(5, 1, 3, 3, generator=gen, dtype=F64)
    sigma = torch.tensor([0.0, 0.1, 0.7, 3.0, 40.0], dtype=F64)
    g = Gaussian.fit(data)
    flat = data.reshape(200, 9)
    mu, cov = flat.mean(0), torch.cov(flat.T, correction=0)
    dense = torch.stack([mu + cov @ torch.linalg.solve(cov + s ** 2 * torch.eye(9, dtype=F64), xi - mu)
                         for xi, s in zip(x.reshape(5, 9), sigma)]).reshape(x.shape)
    precond = EDMPrecond(torch.nn.Identity(), sigma_data=0.5, shape=(1, 3, 3), skip="gaussian").double().set_gaussian(g)
    wiener = Wiener(data, mode="linear")
    for out in (g(x, sigma), precond.gaussian_denoiser(x, sigma.reshape(-1, 1, 1, 1)), wiener(x, sigma),
                gaussian_denoiser(x.reshape(5, 9), sigma.reshape(-1, 1) ** 2, mu, g.eigvals_, g.eigvecs_).reshape(x.shape)):
        torch.testing.assert_close(out, dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sigma", [0.0, 0.3, 5.0])
def test_one_sigma_for_a_large_batch_uses_the_matrix_and_agrees(case, sigma):
    """With one σ for a batch larger than d, eigen_apply applies c I + U diag(g − c) Uᵀ as one d × d matrix; it
    equals the dense float64 solve μ + Σ(Σ + σ²I)⁻¹(x − μ) (σ = 0: the projection onto the support), and the
    per-row σ path of the same batch."""
    from scorelab.models.gaussian import eigen_apply

    g = random_gaussian(**CASES[case])
    d = g.dim
    x = torch.randn(8 * d, *g.shape_, generator=torch.Generator().manual_seed(4), dtype=F64)
    cov = g.cov_
    lhs = cov + sigma ** 2 * torch.eye(d, dtype=F64)
    z = x.reshape(8 * d, d) - g.mean_.reshape(1, -1)
    want = g.mean_.reshape(1, -1) + z @ torch.linalg.lstsq(lhs, cov).solution.T if sigma > 0 else None
    out = g(x, torch.full((8 * d,), sigma, dtype=F64)).reshape(8 * d, d)
    if want is not None:
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    gain = torch.rand(1, g.eigvals_.numel(), dtype=F64)
    factored = eigen_apply(z[:2], g.eigvecs_, gain, 0.4 if g._has_residual else None)     # two products (B = 2)
    # one matrix (B = 8d), except at rank 5 of 16, where the two products stay cheaper
    matrix = eigen_apply(z, g.eigvecs_, gain, 0.4 if g._has_residual else None)[:2]
    torch.testing.assert_close(matrix, factored, rtol=1e-12, atol=1e-12)
    rows = torch.full((8 * d,), sigma, dtype=F64)
    rows[0] = sigma + 1.0                          # σ differs in one row: the per-row path for the whole batch
    torch.testing.assert_close(g(x, rows)[1:].reshape(-1, d), out[1:], rtol=1e-10, atol=1e-10)
