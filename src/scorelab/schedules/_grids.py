"""Grid builders: 1-D float tensors of σ, strictly decreasing, ending in exactly 0.

Every builder takes `n` (number of steps; the grid has n + 1 entries; 1 <= n <= MAX_STEPS = 100,000, checked
before anything is allocated), `device=` and `dtype=` (float64 by default: step coefficients are computed in
float64 and cast at use).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, check_sigmas

__all__ = ["karras", "exponential", "logsnr_uniform", "kl_optimal", "vp_linear", "vp_cosine", "append_zero", "get",
           "NAMES", "MAX_STEPS"]

# Longest grid a builder makes: far beyond any sampler's use (EDM converges by a few hundred steps), small enough
# that a typo such as n=1_000_000_000 fails at once instead of allocating gigabytes.
MAX_STEPS = 100_000


def _check_steps(n) -> int:
    n = check_positive_int(n, name="n")
    if n > MAX_STEPS:
        raise ValueError(f"n must be <= MAX_STEPS = {MAX_STEPS} (the number of steps of the grid); got {n}")
    return n


def _check_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigma_min must be a finite number > 0; got {sigma_min}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(f"sigma_max must be finite and > sigma_min={sigma_min}; got {sigma_max}")
    return sigma_min, sigma_max


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _finish(sigmas: torch.Tensor, device, dtype, *, n: int, sigma_min: float | None = None,
            sigma_max: float | None = None) -> torch.Tensor:
    """Append the final 0, cast, then check the grid *in the requested dtype*: a range too narrow for n steps (or a
    σ_min that underflows) ties neighbours there, which no sampler accepts; that is an error naming the range."""
    out = append_zero(sigmas).to(device=device, dtype=dtype)
    if out.isfinite().all() and (out >= 0).all() and not (out[1:] < out[:-1]).all():
        if sigma_min is not None and out[-2] == 0:
            raise ValueError(f"sigma_min={sigma_min:g} rounds to 0 in {dtype}; use a larger sigma_min or float64")
        if sigma_min is not None:
            raise ValueError(f"sigma_max={sigma_max:g} is too close to sigma_min={sigma_min:g} for n={n} steps in "
                             f"{dtype}: neighbouring noise levels round to the same value; widen the range, take "
                             "fewer steps or use float64")
        raise ValueError(f"n={n} steps are too many for this range in {dtype}: neighbouring noise levels round to "
                         "the same value")
    return check_sigmas(out).to(device=device, dtype=dtype)


def karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
           device=None, dtype=torch.float64) -> torch.Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5): σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, then 0."""
    n = _check_steps(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if not (rho > 0):
        raise ValueError(f"rho must be > 0; got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    # (1 − r)·hi + r·lo, not hi + r·(lo − hi): exact at both ends even when hi dwarfs lo (small ρ, wide range)
    return _finish(((1 - ramp) * hi + ramp * lo) ** rho, device, dtype, n=n, sigma_min=sigma_min, sigma_max=sigma_max)


def exponential(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, device=None,
                dtype=torch.float64) -> torch.Tensor:
    """Log-uniform σ: σ_i = exp(log σ_max + i/(n−1)·(log σ_min − log σ_max)), then 0."""
    n = _check_steps(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return _finish(torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))), device, dtype,
                   n=n, sigma_min=sigma_min, sigma_max=sigma_max)


def logsnr_uniform(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, device=None,
                   dtype=torch.float64) -> torch.Tensor:
    """Uniform in log-SNR λ = −log σ (DPM-Solver's "logSNR" spacing); in σ-space this is the log-uniform grid."""
    return exponential(n, sigma_min, sigma_max, device=device, dtype=dtype)


def kl_optimal(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, sigma_data: float = 1.0,
               device=None, dtype=torch.float64) -> torch.Tensor:
    """The grid uniform in θ = arctan(σ/c), c = `sigma_data`: σ_i = c·tan((1 − i/(n−1))·θ_max + i/(n−1)·θ_min),
    then 0 — Align Your Steps' optimum for Gaussian data (Sabour et al. 2024, §3.1), exact here as follows.

    For data N(μ, c²I), one Euler (DDIM) step of the PF-ODE from σ = c·tan α to σ' = c·tan β maps x − μ to
    (c² + σσ')/(c² + σ²)·(x − μ) = cos(α − β)·(cos α / cos β)·(x − μ), where cos α / cos β is the exact flow's
    factor. A grid's solution is therefore the exact one times ∏ cos(Δθ_i): the endpoint error, and the KL of the
    final Gaussian to the data's, shrink as that product grows, and for the fixed total angle θ_max − θ_min the
    product of cosines (log-concave) is largest when every Δθ_i is the same. The last step, σ_min → 0, is fixed by
    σ_min. For a Gaussian with unequal variances, `scorelab.schedules.optimize(..., method="ays")` finds the grid
    numerically. tests/test_schedule_search.py checks both statements against a numerical minimiser."""
    n = _check_steps(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    c = float(sigma_data)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"sigma_data must be a finite number > 0; got {sigma_data}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    theta = (1 - ramp) * math.atan(sigma_max / c) + ramp * math.atan(sigma_min / c)
    sigmas = c * torch.tan(theta)
    sigmas[0], sigmas[-1] = sigma_max, (sigma_min if n > 1 else sigma_max)    # exact ends, not tan∘atan's rounding
    return _finish(sigmas, device, dtype, n=n, sigma_min=sigma_min, sigma_max=sigma_max)


def vp_linear(n: int, beta_min: float = 0.1, beta_d: float = 19.9, eps_s: float = 1e-3, *, device=None,
              dtype=torch.float64) -> torch.Tensor:
    """VP-SDE linear-β schedule (Song et al. 2021) uniform in t ∈ [1, ε_s]:
    σ(t) = sqrt(exp(β_d t²/2 + β_min t) − 1), then 0."""
    n = _check_steps(n)
    if not (beta_min >= 0 and beta_d > 0 and 0 < eps_s < 1):
        raise ValueError(f"need beta_min >= 0, beta_d > 0, 0 < eps_s < 1; got {beta_min}, {beta_d}, {eps_s}")
    t = torch.linspace(1, eps_s, n, dtype=torch.float64) if n > 1 else torch.ones(1, dtype=torch.float64)
    return _finish(torch.sqrt(torch.expm1(beta_d * t ** 2 / 2 + beta_min * t)), device, dtype, n=n)


def vp_cosine(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, s: float = 0.008, *, device=None,
              dtype=torch.float64) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021), uniform in t between t(σ_max) and t(σ_min):
    ᾱ(t) = cos²((t+s)/(1+s)·π/2) / cos²(s/(1+s)·π/2), σ = sqrt((1 − ᾱ)/ᾱ), then 0."""
    n = _check_steps(n)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if not s > 0:
        raise ValueError(f"s must be > 0; got {s}")
    c0 = math.cos(s / (1 + s) * math.pi / 2)

    def t_of(sig):  # invert σ(t): ᾱ = 1/(1+σ²), cos((t+s)/(1+s)·π/2) = c0·sqrt(ᾱ)
        return math.acos(c0 / math.sqrt(1 + sig ** 2)) * 2 / math.pi * (1 + s) - s

    t = torch.linspace(t_of(sigma_max), t_of(sigma_min), n, dtype=torch.float64) if n > 1 else \
        torch.tensor([t_of(sigma_max)], dtype=torch.float64)
    abar = (torch.cos((t + s) / (1 + s) * math.pi / 2) / c0) ** 2
    return _finish(torch.sqrt((1 - abar) / abar), device, dtype, n=n, sigma_min=sigma_min, sigma_max=sigma_max)


NAMES = {"karras": karras, "exponential": exponential, "logsnr_uniform": logsnr_uniform, "kl_optimal": kl_optimal,
         "vp_linear": vp_linear, "vp_cosine": vp_cosine}


def get(name: str, n: int, **kwargs) -> torch.Tensor:
    """Schedule by name (for the CLI): get("karras", 18, sigma_max=80)."""
    if name not in NAMES:
        raise ValueError(f"schedule must be one of {sorted(NAMES)}; got {name!r}")
    return NAMES[name](n, **kwargs)
