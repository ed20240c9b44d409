"""Property-based tests (Hypothesis) of the sampling path through the public API: every sampler in
sl.samplers.SAMPLERS, the schedules (karras, exponential, logsnr_uniform, vp_linear, vp_cosine) and sl.sample().

Random tiny sample shapes (d ≤ 16), batch sizes 1-4, float32/float64, σ grids of 1-5 steps with σ in [1e-4, 1e4]
that end in 0 or stop early. Properties: finite output of the right shape and dtype; one callback per step with
i = 0, 1, ... and a non-decreasing NFE; the conditioning channel (extra_args) reaches every denoiser call; the
schedules' documented form (n + 1 entries, strictly decreasing, last exactly 0, endpoints σ_max and σ_min);
sample()'s results do not depend on batch_size. Malformed arguments raise the documented ValueError/TypeError
naming the argument.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scorelab as sl
from scorelab.samplers import SAMPLERS, traits
from scorelab.teleport import skip_index

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True, database=None)   # the same examples on every run

log_sigma = st.floats(-4.0, 4.0)


@st.composite
def sample_shapes(draw):
    """(d,) with d ≤ 16, or (C, H, W) with C·H·W ≤ 16."""
    if draw(st.booleans()):
        return (draw(st.integers(1, 16)),)
    c, h = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    return (c, h, draw(st.integers(1, 16 // (c * h))))


@st.composite
def grids(draw, min_steps=1, max_steps=5, end_in_zero=None):
    """A valid σ grid: strictly decreasing values in [1e-4, 1e4] (neighbours ≥ 0.1% apart, so that they stay
    distinct in float32), then 0 (or, sometimes, stopping early at a σ > 0)."""
    zero = draw(st.booleans()) if end_in_zero is None else end_in_zero
    n = draw(st.integers(min_steps + (0 if zero else 1), max_steps + (0 if zero else 1)))
    logs = [draw(log_sigma)]
    for _ in range(n - 1):
        step = draw(st.floats(1e-3, 3.0))
        if logs[-1] - step < -4.0:
            break
        logs.append(logs[-1] - step)
    if len(logs) < 2 and not zero:
        logs = [logs[0], logs[0] - 1e-3] if logs[0] > -3.9 else [logs[0] + 1e-3, logs[0]]
    return torch.tensor([10.0 ** v for v in logs] + ([0.0] if zero else []), dtype=torch.float64)


def _gaussian(shape, seed):
    """A Gaussian fitted to 24 random correlated samples of `shape` (full rank when d < 24)."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return sl.Gaussian.fit((torch.randn(24, d, generator=g, dtype=torch.float64) @ a).reshape(24, *shape))


class Recording:
    """Wraps a denoiser, checking that every call receives `class_labels` of the batch's length."""

    def __init__(self, inner, shape):
        self.inner, self.shape_, self.calls = inner, shape, 0

    def __call__(self, x, sigma, class_labels=None):
        assert class_labels is not None and class_labels.shape == (x.shape[0],), class_labels
        self.calls += 1
        return self.inner(x, sigma)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@SETTINGS
@given(data=st.data())
def test_sampler(name, data):
    solver = SAMPLERS[name]
    shape = data.draw(sample_shapes(), label="shape")
    b = data.draw(st.integers(1, 4), label="batch")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    denoiser = Recording(_gaussian(shape, seed), shape)
    labels = torch.arange(b)
    g = torch.Generator().manual_seed(seed)
    opts = {"generator": torch.Generator().manual_seed(seed + 1)} if traits(solver).stochastic else {}
    bad = data.draw(st.sampled_from([None] * 4 + ["increasing", "negative", "nan", "single", "2-d", "starts at 0",
                                                  "integer x"]), label="malformed")
    if bad is not None:
        x = torch.randn(b, *shape, generator=g, dtype=dtype)
        sigmas = {"increasing": [1.0, 2.0, 0.0], "negative": [1.0, -0.5], "nan": [1.0, math.nan, 0.0],
                  "single": [1.0], "2-d": [[1.0, 0.0]], "starts at 0": [0.0, 0.0], "integer x": [1.0, 0.0]}[bad]
        if bad == "integer x":
            x = torch.zeros(b, *shape, dtype=torch.long)
        with pytest.raises((ValueError, TypeError), match="x" if bad == "integer x" else "sigmas"):
            solver(denoiser, x, torch.tensor(sigmas, dtype=torch.float64), extra_args={"class_labels": labels},
                   **opts)
        return
    sigmas = data.draw(grids(), label="sigmas")
    x = (float(sigmas[0]) * torch.randn(b, *shape, generator=g, dtype=torch.float64)).to(dtype)
    seen = []
    out = solver(denoiser, x, sigmas.to(dtype), extra_args={"class_labels": labels}, callback=seen.append, **opts)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all(), (sigmas, out)
    assert [info["i"] for info in seen] == list(range(len(sigmas) - 1))
    assert all(a["nfe"] <= b_["nfe"] for a, b_ in zip(seen, seen[1:])) and seen[-1]["nfe"] == denoiser.calls


# ------------------------------------------------------------------------------------------------ schedules
SIGMA_SCHEDULES = ["karras", "exponential", "logsnr_uniform", "vp_cosine"]


def _check_grid(s, n, dtype):
    assert s.shape == (n + 1,) and s.dtype == dtype and s[-1] == 0
    assert torch.isfinite(s).all() and (s[1:] < s[:-1]).all(), s


@pytest.mark.parametrize("name", SIGMA_SCHEDULES)
@SETTINGS
@given(data=st.data())
def test_sigma_range_schedule(name, data):
    fn = sl.schedules.NAMES[name]
    n = data.draw(st.integers(1, 64), label="n")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    lo = 10.0 ** data.draw(log_sigma, label="log10 sigma_min")
    hi = lo * 10.0 ** data.draw(st.floats(1e-9, 8.0), label="log10 sigma_max/sigma_min")
    if name == "vp_cosine" and hi > 1e3:   # beyond ~1e3 the cosine's t(σ_max) rounds to 1 (σ = ∞)
        hi, lo = 1e3, min(lo, 1e3 / 1.2)
    extra = {"rho": data.draw(st.floats(0.5, 10.0), label="rho")} if name == "karras" else {}
    bad = data.draw(st.sampled_from([None] * 4 + ["n", "n type", "sigma_min", "sigma_max", "rho"]), label="malformed")
    if bad == "rho" and name != "karras":
        bad = None
    if bad is not None:
        kwargs = {"n": n, "sigma_min": lo, "sigma_max": hi, **extra}
        kwargs.update({"n": {"n": 0, "n type": 2.5}.get(bad, n), "sigma_min": -lo if bad == "sigma_min" else lo,
                       "sigma_max": lo / 2 if bad == "sigma_max" else hi})
        if bad == "rho":
            kwargs["rho"] = 0.0
        with pytest.raises((ValueError, TypeError), match="n" if bad == "n type" else bad):
            fn(kwargs.pop("n"), **kwargs)
        return
    try:
        s = fn(n, sigma_min=lo, sigma_max=hi, dtype=dtype, **extra)
    except ValueError as e:            # a range too narrow for n steps in dtype: refused by the arguments' names
        assert "sigma_max" in str(e) and f"n={n}" in str(e), e
        return
    _check_grid(s, n, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    if name == "vp_cosine":             # σ = sqrt((1 − ᾱ)/ᾱ): 1 − ᾱ ≈ σ² carries a float64 error of ~ε/σ²
        tol = max(tol, 4 * 2.2e-16 / lo ** 2)
    assert math.isclose(float(s[0]), hi, rel_tol=tol), (float(s[0]), hi)
    if n > 1:
        assert math.isclose(float(s[-2]), lo, rel_tol=tol), (float(s[-2]), lo)


def test_karras_small_rho_wide_range():
    """Found by test_sigma_range_schedule: karras forms hi + ramp·(lo − hi) with hi = σ_max^(1/ρ) = 1e16, which
    rounds lo = σ_min^(1/ρ) = 1 away: the grid [1e8, 0, 0] is refused with 'sigmas must be strictly decreasing'
    (an argument the caller never passed). (1 − ramp)·hi + ramp·lo keeps σ_min exact."""
    s = sl.schedules.karras(2, sigma_min=1.0, sigma_max=1e8, rho=0.5)
    assert float(s[1]) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("name, n, sigma_min, sigma_max, dtype", [
    ("karras", 10, 1.0, 1.000001, torch.float32), ("exponential", 10, 1.0, 1.000001, torch.float32),
    ("karras", 1000, 1.0, 1.0 + 1e-12, torch.float64), ("vp_cosine", 22, 1e-3, 1e-3 * (1 + 2.3e-9), torch.float64)])
def test_narrow_sigma_range(name, n, sigma_min, sigma_max, dtype):
    """Found by test_sigma_range_schedule: the schedules check the grid in float64 and then cast, so in float32
    karras(10, sigma_min=1, sigma_max=1.000001) returns two equal neighbours (1.0000008344650269 twice), a grid every
    sampler refuses; in float64 a narrower range is refused with 'sigmas must be strictly decreasing', naming an
    argument the caller never passed. Expected: a grid strictly decreasing in dtype, or a ValueError naming n or
    sigma_max."""
    try:
        s = sl.schedules.NAMES[name](n, sigma_min=sigma_min, sigma_max=sigma_max, dtype=dtype)
    except ValueError as e:
        assert "sigma_max" in str(e) or str(e).startswith("n "), e
        return
    assert (s[1:] < s[:-1]).all(), s


@SETTINGS
@given(n=st.integers(1, 64), beta_min=st.floats(0.0, 1.0), beta_d=st.floats(0.1, 50.0),
       eps_s=st.floats(1e-5, 0.5), dtype=st.sampled_from([torch.float32, torch.float64]),
       bad=st.sampled_from([None] * 4 + ["beta_min", "beta_d", "eps_s"]))
def test_vp_linear_schedule(n, beta_min, beta_d, eps_s, dtype, bad):
    if bad is not None:
        kwargs = {"beta_min": beta_min, "beta_d": beta_d, "eps_s": eps_s, bad: -1.0}
        with pytest.raises(ValueError, match=bad):
            sl.schedules.vp_linear(n, **kwargs)
        return
    s = sl.schedules.vp_linear(n, beta_min=beta_min, beta_d=beta_d, eps_s=eps_s, dtype=dtype)
    _check_grid(s, n, dtype)
    expected = math.sqrt(math.expm1(beta_d / 2 + beta_min))            # σ(t = 1)
    assert math.isclose(float(s[0]), expected, rel_tol=1e-5 if dtype == torch.float32 else 1e-12)


# ------------------------------------------------------------------------------------------------ sample()
@SETTINGS
@given(data=st.data())
def test_sample(data):
    shape = data.draw(sample_shapes(), label="shape")
    n = data.draw(st.integers(1, 4), label="n")
    solver = data.draw(st.sampled_from(sorted(SAMPLERS)), label="solver")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    g = _gaussian(shape, seed % 1000)
    denoiser = Recording(g, shape)
    labels = torch.arange(n)
    bad = data.draw(st.sampled_from([None] * 5 + ["n", "batch_size", "seed", "shape", "dtype", "solver", "skip",
                                                  "sigmas"]), label="malformed")
    if bad is not None:
        kwargs = dict(n=n, shape=shape, sigmas=sl.schedules.karras(2), solver=solver, seed=seed)
        kwargs.update({"n": dict(n=0), "batch_size": dict(batch_size=0), "seed": dict(seed=-1),
                       "shape": dict(shape=(0, 2)), "dtype": dict(dtype=torch.long), "solver": dict(solver="rk45"),
                       "skip": dict(teleport=g, skip=1.0), "sigmas": dict(sigmas=[1.0, 2.0, 0.0])}[bad])
        with pytest.raises((ValueError, TypeError), match="shape" if bad == "shape" else bad):
            sl.sample(denoiser, extra_args={"class_labels": labels}, **kwargs)
        return
    sigmas = data.draw(grids(end_in_zero=True), label="sigmas")
    teleport = {}
    if data.draw(st.booleans(), label="teleport") and len(sigmas) > 2:
        if data.draw(st.booleans(), label="skip as a fraction"):
            teleport = dict(teleport=g, skip=data.draw(st.floats(0.0, 0.99), label="skip"))
        else:                                   # a noise level in [sigmas[-2], sigmas[0]], on the grid or between
            lo, hi = math.log(float(sigmas[-2])), math.log(float(sigmas[0]))
            teleport = dict(teleport=g, sigma_skip=math.exp(lo + (hi - lo) * data.draw(st.floats(0.0, 1.0))))
        k = skip_index(sigmas, skip=teleport.get("skip"), sigma_skip=teleport.get("sigma_skip"))
        if traits(solver).multistep and k > 0:
            teleport["warm_history"] = data.draw(st.booleans(), label="warm_history")
    batch_sizes = data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=2), label="batch sizes")
    outs = [sl.sample(denoiser, n=n, shape=shape, sigmas=sigmas, solver=solver, seed=seed, dtype=dtype,
                      batch_size=bs, extra_args={"class_labels": labels}, **teleport) for bs in batch_sizes]
    for out in outs:
        assert out.images.shape == (n, *shape) and out.images.dtype == dtype
        assert torch.isfinite(out.images).all(), (sigmas, teleport, out.images)
        assert isinstance(out.nfe, int) and 1 <= out.nfe <= 3 * (len(sigmas) - 1)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = 1.0 + float(sigmas[0])
    assert (outs[0].images - outs[1].images).abs().max() <= tol * scale, "results depend on batch_size"
