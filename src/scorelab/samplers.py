"""Samplers for the probability-flow ODE and its stochastic variants, in σ-space (EDM/VE).

Every sampler is a stateless function
`sampler(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, **opts) -> x`:
`x` is given at `sigmas[0]` (i.e. already noise · sigmas[0]); the grid is strictly decreasing and non-negative and
may stop at a non-zero σ (then x at that σ is returned). The ODE is

    dx/dσ = (x − D(x, σ)) / σ                      (Karras et al. 2022, eq. 3)

or, in the log-SNR variable λ = −log σ (σ = e^−λ),  dx/dλ = D(x, λ) − x, whose exact solution over one step
h = λ_next − λ is the exponential-integrator formula behind DPM-Solver++ and UniPC:

    x_next = e^−h x + Σ_k h^(k+1) φ_(k+1)(−h) D^(k)(λ),    φ_1(z) = (e^z − 1)/z,  φ_(k+1)(z) = (φ_k(z) − 1/k!)/z.

The denoiser is called as `denoiser(x, σ, **extra_args)` (the conditioning channel of `scorelab.protocol`, passed
through unchanged, e.g. `extra_args={"class_labels": y}`) with σ as a [B] tensor in x's dtype (k-diffusion's
`sigma * s_in`); step coefficients are
Python floats computed in float64 from the float64 grid. The callback gets
`dict(i, x, sigma, sigma_next, denoised, nfe)`: x and denoised at `sigma` (before the step), nfe = denoiser calls
made so far including step i's.

Randomness (stochastic samplers only) comes from `noise_sampler(sigma, sigma_next) -> tensor like x` if given
(per-sample reproducible noise, as `scorelab.sample` uses), else `torch.randn` with the caller's `generator`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch

from ._checks import check_fraction, check_positive_int, check_sigmas, check_tensor
from .protocol import check_denoiser, check_extra_args

__all__ = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "learned", "edm_stochastic", "euler_ancestral", "dpmpp_2m_sde",
           "SAMPLERS", "TRAITS", "Traits", "get", "traits", "to_d", "phi"]


# ---------------------------------------------------------------------------------------------- shared pieces
class _Calls:
    """Call the denoiser as D(x, σ, **extra_args) with σ as a [B] tensor in x's dtype, counting the calls (NFE)."""

    def __init__(self, denoiser, extra_args=None):
        self.denoiser, self.extra_args, self.nfe = check_denoiser(denoiser), check_extra_args(extra_args), 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x, x.new_full((x.shape[0],), sigma), **self.extra_args)


def _start(denoiser, x, sigmas, extra_args=None):
    """Validate the common arguments: (counted denoiser with its extra_args, x, float64 grid as Python floats)."""
    check_tensor(x, name="x", min_ndim=1)
    grid = check_sigmas(sigmas)
    if grid[0] == 0:
        raise ValueError("sigmas must start at a noise level > 0")
    return _Calls(denoiser, extra_args), x, [float(s) for s in grid]


def _step_log(callback, i, x, sigma, sigma_next, denoised, nfe) -> None:
    if callback is not None:
        callback(dict(i=i, x=x, sigma=sigma, sigma_next=sigma_next, denoised=denoised, nfe=nfe))


def _noise(x, generator, noise_sampler):
    """A function (σ, σ_next) → standard normal noise like x: the caller's `noise_sampler`, else torch.randn."""
    if noise_sampler is not None:
        if not callable(noise_sampler):
            raise TypeError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next); "
                            f"got {type(noise_sampler).__name__}")
        return noise_sampler
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")

    def randn(sigma, sigma_next):
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)

    return randn


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's slope dx/dσ = (x − D(x, σ)) / σ."""
    return (x - denoised) / sigma


def _heun_step(model, x, sigma: float, sigma_next: float):
    """(x_next, D(x, σ)): Heun's trapezoidal step, Euler when σ_next = 0 (EDM Algorithm 1, lines 5-8)."""
    denoised = model(x, sigma)
    d = to_d(x, sigma, denoised)
    x_euler = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_euler, denoised
    d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_next))
    return x + (sigma_next - sigma) * (d + d_next) / 2, denoised


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_j z^j / (j + k)!  (φ_1(z) = (e^z − 1)/z, φ_(k+1)(z) = (φ_k(z) − 1/k!)/z, φ_k(0) = 1/k!).

    A power series for |z| < 0.5 (no cancellation at small steps), the recursion otherwise; z may be −inf."""
    if abs(z) < 0.5:
        return sum(z ** j / math.factorial(j + k) for j in range(20))
    if z == -math.inf:
        return 0.0
    out = math.expm1(z) / z
    for j in range(1, k):
        out = (out - 1 / math.factorial(j)) / z
    return out


def _lam(sigma: float) -> float:
    """Log-SNR λ = −log σ (σ = 0 → +inf)."""
    return -math.log(sigma) if sigma > 0 else math.inf


def _history_items(history, sigma0: float):
    """The validated entries (σ_j, D_j, x_j or None) of `history` (see `_check_history`)."""
    if history is None:
        return []
    try:
        items = [(float(h[0]), h[1], h[2] if len(h) == 3 else None) for h in history if 2 <= len(h) <= 3]
        if len(items) != len(history):
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError("history must be a list of (sigma, denoised) pairs or (sigma, denoised, x) triples, oldest "
                        "(largest sigma) first") from None
    if items:
        check_sigmas([s for s, _, _ in items] + [sigma0], name="history sigmas (followed by sigmas[0])")
    for _, d, x in items:
        check_tensor(d, name="history denoised", min_ndim=1)
        if x is not None:
            check_tensor(x, name="history x", min_ndim=1)
    return items


def _check_history(history, sigma0: float):
    """history: [(σ_j, D_j), ...] (or (σ_j, D_j, x_j) triples; x_j is not needed here) at earlier grid points,
    oldest first (σ_j strictly decreasing, all > sigmas[0]). Returned as [(λ_j, D_j)]."""
    return [(_lam(s), d) for s, d, _ in _history_items(history, sigma0)]


def _derivatives(hist, n: int):
    """D and its first n λ-derivatives at the newest point of `hist` [(λ, D)], from the polynomial through the
    last n + 1 points (Newton divided differences, exact for polynomials of degree n)."""
    pts = hist[-(n + 1):]
    lam0, d0 = pts[-1]
    if n == 0:
        return [d0]
    if n == 1:
        (lam1, d1) = pts[0]
        return [d0, (d0 - d1) / (lam0 - lam1)]
    if n == 2:
        (lam2, d2), (lam1, d1) = pts[0], pts[1]
        h1, h2 = lam0 - lam1, lam1 - lam2
        s0, s1 = (d0 - d1) / h1, (d1 - d2) / h2
        d_second = (s0 - s1) * (2 / (h1 + h2))
        return [d0, s0 + d_second * (h1 / 2), d_second]
    raise ValueError(f"order must be <= 3; got {n + 1}")


# ---------------------------------------------------------------------------------------------- ODE samplers
@torch.no_grad()
def euler(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Euler on the probability-flow ODE (Karras et al. 2022, eq. 3):
    x_(i+1) = x_i + (σ_(i+1) − σ_i) (x_i − D(x_i, σ_i)) / σ_i.   NFE = number of steps."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        x = x + (sigma_next - sigma) * to_d(x, sigma, denoised)
    return x


@torch.no_grad()
def heun(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Heun's second-order method (EDM, Karras et al. 2022, Algorithm 1, deterministic):
    d = (x − D(x, σ))/σ,  x' = x + (σ' − σ) d,  d' = (x' − D(x', σ'))/σ',  x_next = x + (σ' − σ)(d + d')/2;
    a step to σ' = 0 is the Euler step (which lands on D(x, σ)). NFE = 2·steps − 1 on a grid ending at 0."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        x_next, denoised = _heun_step(model, x, sigma, sigma_next)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        x = x_next
    return x


@torch.no_grad()
def dpmpp_2m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, history=None):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data prediction, multistep in λ = −log σ:

        h = λ_(i+1) − λ_i,  r = h_(i−1)/h,  D̂ = (1 + 1/(2r)) D_i − 1/(2r) D_(i−1),
        x_(i+1) = (σ_(i+1)/σ_i) x_i + (1 − e^−h) D̂.

    The first step (no D_(i−1)) is first order (D̂ = D_i, DDIM); a step to σ = 0 (λ = ∞) is the exact limit
    x = D_i, as in k-diffusion. `history`: [(σ, D), ...] at earlier grid points (oldest first) used as if
    computed here, so a run on sigmas[k:] can start at second order. NFE = number of steps."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    hist = _check_history(history, sigmas[0])
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        lam, lam_next = _lam(sigma), _lam(sigma_next)
        if sigma_next == 0:
            x = denoised
        else:
            h = lam_next - lam
            d_hat = denoised
            if hist:
                r = (lam - hist[-1][0]) / h
                d_hat = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * hist[-1][1]
            x = (sigma_next / sigma) * x + (-math.expm1(-h)) * d_hat
        hist = (hist + [(lam, denoised)])[-1:]
    return x


@torch.no_grad()
def dpmpp_3m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, history=None,
             reference_coefficients=True):
    """DPM-Solver++(3M), deterministic (Lu et al. 2022, "DPM-Solver++", multistep third order, data prediction):

        x_(i+1) = e^−h x_i + h φ_1(−h) D + h² φ_2(−h) D' + c · h³ φ_3(−h) D'',

    the integral of dx/dλ = D − x with D(λ) the quadratic through the last three (λ_j, D_j):
    D' = s_0 + D''·h_1/2, D'' = 2 (s_0 − s_1)/(h_1 + h_2), s_0 = (D_i − D_(i−1))/h_1, s_1 = (D_(i−1) − D_(i−2))/h_2.
    Default (`reference_coefficients=True`, c = ½): the weighting of the reference implementations (DPM-Solver's
    and diffusers' third-order multistep update, k-diffusion's `sample_dpmpp_3m_sde` at eta = 0); it is exact only
    for linear D, so second order as the steps shrink, but it is the more accurate at practical step counts: on
    the exact Gaussian problem its error at x(0) is 25–80 % below c = 1's at 5, 10, 20 and 40 Karras steps
    (tests/test_samplers.py). `reference_coefficients=False` (c = 1): exact for quadratic D, measured third order.
    Warm-up with first and second order; a step to σ = 0 is x = D_i. `history` as in `dpmpp_2m`.
    NFE = number of steps."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    hist = _check_history(history, sigmas[0])
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        lam = _lam(sigma)
        hist = (hist + [(lam, denoised)])[-3:]
        if sigma_next == 0:
            x = denoised
            continue
        h = _lam(sigma_next) - lam
        derivs = _derivatives(hist, len(hist) - 1)
        if reference_coefficients and len(derivs) == 3:
            derivs[2] = derivs[2] / 2
        x = (sigma_next / sigma) * x
        for k, dk in enumerate(derivs):
            x = x + (h ** (k + 1) * phi(k + 1, -h)) * dk
    return x


@torch.no_grad()
def unipc(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, order=2, variant="bh2",
          corrector=True, lower_order_final=True, history=None):
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), data prediction, in λ = −log σ.

    With h = λ_t − λ_s, r_m = (λ_(s_m) − λ_s)/h for earlier points and r_p = 1, D_m = (D(s_m) − D(s))/r_m,
    B(h) = −h ("bh1") or e^−h − 1 ("bh2"), the order conditions Σ_m a_m r_m^(k−1) = −h φ_(k+1)(−h) k!/B(h):

        UniP-p:  x̃_t = e^−h x_s + (1 − e^−h) D(s) − B(h) Σ_(m<p) a_m D_m               (solve with k = 1..p−1)
        UniC-p:  x_t = e^−h x_s + (1 − e^−h) D(s) − B(h) [Σ_(m<p) a^c_m D_m + a^c_p (D(x̃_t, t) − D(s))]  (k = 1..p)

    When the a's solve every condition, B(h) cancels; as in the reference code, UniP-2 uses a_1 = ½ and UniC-1
    uses a^c_1 = ½ instead (still second order), which is where "bh1" and "bh2" differ. UniC-p raises the order
    to p + 1 (measured: 4 for order=3, 3 for order=2 on grids ending at σ > 0).
    The corrector reuses D(x̃_t, t), which the next step needs anyway, so it costs no NFE; it is applied after
    every step except the last (`corrector=False` turns it off). Order p = min(`order`, points available) during
    warm-up and, with `lower_order_final`, p ≤ steps left. A step to σ = 0 is x = D(s). `history` as in
    `dpmpp_2m`. NFE = number of steps. Default order=2, "bh2" (as diffusers): on Fashion-MNIST's Gaussian it is
    far more accurate at 5–10 steps than order=3, "bh1" (RMSE 0.11 vs 1.8 at 5 steps, bench/peers.py)."""
    order = check_positive_int(order, name="order")
    if order > 3:
        raise ValueError(f"order must be 1, 2 or 3; got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2'; got {variant!r}")
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    hist = _check_history(history, sigmas[0])
    n_steps = len(sigmas) - 1
    hist = (hist + [(_lam(sigmas[0]), model(x, sigmas[0]))])[-order:]
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        lam, denoised = hist[-1]
        if sigma_next == 0:
            _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
            x = denoised
            continue
        last = i == n_steps - 1
        p = min(order, len(hist), n_steps - i) if lower_order_final else min(order, len(hist))
        lam_next = _lam(sigma_next)
        h = lam_next - lam
        b_h = -h if variant == "bh1" else math.expm1(-h)
        rks = [(lam_m - lam) / h for lam_m, _ in hist[-p:-1]][::-1] + [1.0]       # newest history first, then 1
        diffs = [(d_m - denoised) / rk for (_, d_m), rk in zip(hist[-p:-1][::-1], rks)]
        b = [-h * phi(k + 1, -h) * math.factorial(k) / b_h for k in range(1, p + 1)]
        base = (sigma_next / sigma) * x + (-math.expm1(-h)) * denoised
        x_pred = base
        if p > 1:
            a = [0.5] if p == 2 else _solve([[rk ** (k - 1) for rk in rks[:-1]] for k in range(1, p)], b[:-1])
            x_pred = base - b_h * sum(a_m * d_m for a_m, d_m in zip(a, diffs))
        denoised_next = None if last else model(x_pred, sigma_next)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        if corrector and not last:
            a_c = [0.5] if p == 1 else _solve([[rk ** (k - 1) for rk in rks] for k in range(1, p + 1)], b)
            res = a_c[-1] * (denoised_next - denoised)
            for a_m, d_m in zip(a_c[:-1], diffs):
                res = res + a_m * d_m
            x = base - b_h * res
        else:
            x = x_pred
        if not last:
            hist = (hist + [(lam_next, denoised_next)])[-order:]
    return x


def _solve(rows, rhs):
    """Solve the small Vandermonde system rows · a = rhs in float64 (Python floats in, list out)."""
    a = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return [float(v) for v in a]


# Adams–Bashforth coefficients for equal steps, newest derivative first (orders 1-4).
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def _ab_weights(nodes, a: float, b: float):
    """∫_a^b ℓ_k(s) ds for the Lagrange basis ℓ_k on `nodes` (newest first): the variable-step Adams–Bashforth
    weights, exact when the slope is a polynomial of degree len(nodes) − 1 in σ (computed in float64)."""
    weights = []
    for k, nk in enumerate(nodes):
        others = [nj for j, nj in enumerate(nodes) if j != k]
        poly = [1.0]                                                  # coefficients, lowest power first
        for nj in others:
            poly = [(poly[i] if i < len(poly) else 0.0) * -nj + (poly[i - 1] if i > 0 else 0.0)
                    for i in range(len(poly) + 1)]
        denom = math.prod(nk - nj for nj in others)
        weights.append(sum(c * (b ** (i + 1) - a ** (i + 1)) / (i + 1) for i, c in enumerate(poly)) / denom)
    return weights


@torch.no_grad()
def ipndm(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, order=4, variable_step=False,
          history=None):
    """iPNDM (improved pseudo-numerical method; Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
    Exponential Integrator", and the fast-ODE-solver literature): explicit Adams–Bashforth on the PF-ODE in σ,
    d_i = (x_i − D(x_i, σ_i)) / σ_i, with lower-order warm start,

        p = min(order, i + 1):  x_(i+1) = x_i + (σ_(i+1) − σ_i) Σ_(k<p) c^p_k d_(i−k),
        c¹ = (1),  c² = (3, −1)/2,  c³ = (23, −16, 5)/12,  c⁴ = (55, −59, 37, −9)/24,

    the equal-step coefficients applied on any grid, as the published iPNDM does. On a non-uniform grid (Karras
    ρ = 7) that makes it second order as the steps shrink (measured 2.0 on the exact Gaussian problem), yet it is
    the most accurate of the multistep solvers at 5–10 steps there (tests/test_ipndm.py). `variable_step=True`
    uses the exact Adams–Bashforth weights of the actual grid (∫ of the Lagrange polynomial through the last p
    slopes; k-diffusion's `ipndm_v`): order p as the steps shrink (measured 3.6 for p = 4, the warm start
    included), less accurate at very few steps. `history`: earlier
    (σ_j, D_j, x_j) triples, oldest first (teleportation's warm history supplies them), used as if computed here.
    NFE = number of steps."""
    order = check_positive_int(order, name="order")
    if order > 4:
        raise ValueError(f"order must be 1, 2, 3 or 4; got {order}")
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    past = []                                                         # [(σ_j, d_j)], newest last
    for s, d, xj in _history_items(history, sigmas[0]):
        if xj is None:
            raise ValueError("ipndm needs history entries (sigma, denoised, x): the slope (x − D)/σ needs x")
        past.append((s, to_d(xj, s, d)))
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        past = (past + [(sigma, to_d(x, sigma, denoised))])[-order:]
        slopes = [d for _, d in reversed(past)]                       # newest first
        if variable_step:
            weights = _ab_weights([s for s, _ in reversed(past)], sigma, sigma_next)
        else:
            weights = [(sigma_next - sigma) * c for c in _AB[len(slopes)]]
        for w, d in zip(weights, slopes):
            x = x + w * d
    return x


@torch.no_grad()
def learned(denoiser, x, sigmas, *, coefficients=None, extra_args=None, callback=None, generator=None,
            history=None):
    """A multistep solver whose step weights were fitted to a teacher (`scorelab.schedules.fit_coefficients`,
    in the spirit of S4S/GAS: per-step coefficients learned from teacher trajectories), for this grid only:

        x_(i+1) = c_i[0] · x_i + Σ_(m≥0) c_i[1 + m] · D_(i−m),

    D_(i−m) the denoiser at the m-th earlier point (`history` entries (σ, D[, x]), oldest first, extend the run's
    own, as teleportation's warm history does). `coefficients`: one sequence per step of `sigmas` (len(sigmas) − 1
    of them); step i may use at most the i + len(history) earlier values. DDIM is c_i = (σ_(i+1)/σ_i,
    1 − σ_(i+1)/σ_i), which is what `coefficients=None` runs (nothing learned: first order). NFE = number of
    steps."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    past = [d for _, d, _ in _history_items(history, sigmas[0])]
    if coefficients is None:
        coefficients = [(s1 / s0, 1 - s1 / s0) for s0, s1 in pairwise(sigmas)]
    try:
        coefficients = [[float(c) for c in step] for step in coefficients]
    except (TypeError, ValueError):
        raise TypeError("coefficients must be a sequence of sequences of numbers, one per step") from None
    if len(coefficients) != len(sigmas) - 1:
        raise ValueError(f"coefficients were fitted for {len(coefficients)} steps but sigmas has "
                         f"{len(sigmas) - 1}: use the grid they were fitted on")
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        past.append(denoised)
        c = coefficients[i]
        if not 2 <= len(c) <= len(past) + 1 or not all(math.isfinite(v) for v in c):
            raise ValueError(f"coefficients[{i}] must hold 2 to {len(past) + 1} finite numbers (x and the newest "
                             f"denoiser values); got {c}")
        x_next = c[0] * x
        for m, cm in enumerate(c[1:]):
            x_next = x_next + cm * past[-1 - m]
        x = x_next
        past = past[-4:]
    return x


# ---------------------------------------------------------------------------------------------- stochastic samplers
@torch.no_grad()
def edm_stochastic(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, noise_sampler=None,
                   S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0):
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2): with N = steps,
    γ = min(S_churn/N, √2 − 1) if S_tmin ≤ σ ≤ S_tmax else 0,  σ̂ = σ(1 + γ),
    x̂ = x + √(σ̂² − σ²) S_noise ε,  then a Heun step from (x̂, σ̂) to σ_next (Euler when σ_next = 0).
    Noise is drawn only on steps with γ > 0, so S_churn = 0 is exactly `heun`."""
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    for name, v in (("S_churn", S_churn), ("S_noise", S_noise)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {v}")
    noise = _noise(x, generator, noise_sampler)
    n = len(sigmas) - 1
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= S_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * S_noise * noise(sigma, sigma_next)
        x_next, denoised = _heun_step(model, x, sigma_hat, sigma_next)
        _step_log(callback, i, x, sigma_hat, sigma_next, denoised, model.nfe)
        x = x_next
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step (VE form, as k-diffusion):
    σ_up = min(σ', η √(σ'² (σ² − σ'²) / σ²)),  σ_down = √(σ'² − σ_up²), so σ_down² + σ_up² = σ'²."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    return math.sqrt(sigma_next ** 2 - sigma_up ** 2), sigma_up


@torch.no_grad()
def euler_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, noise_sampler=None,
                    eta=1.0, s_noise=1.0):
    """Ancestral Euler (Ho et al. 2020 ancestral sampling in σ-space, as k-diffusion's `sample_euler_ancestral`):
    an Euler step to σ_down, then fresh noise of std σ_up:  x' = x + (σ_down − σ) d + s_noise σ_up ε
    (`ancestral_step`). eta = 0 is exactly `euler`; eta = 1 is DDPM-like."""
    eta = check_fraction(eta, name="eta", high=math.inf)
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    noise = _noise(x, generator, noise_sampler)
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * to_d(x, sigma, denoised)
        if sigma_up > 0:
            x = x + noise(sigma, sigma_next) * (s_noise * sigma_up)
    return x


@torch.no_grad()
def dpmpp_2m_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, noise_sampler=None,
                 eta=1.0, s_noise=1.0, solver_type="midpoint", history=None):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", SDE variant; as k-diffusion's `sample_dpmpp_2m_sde`):
    with h = λ' − λ, η h = eta·h,

        x' = (σ'/σ) e^−ηh x + (1 − e^−(1+η)h) D_i + correction + σ' √(1 − e^−2ηh) s_noise ε,
        correction = ½ (1 − e^−(1+η)h) (D_i − D_(i−1))/r            ("midpoint"),
                     (1 − (1 − e^−(1+η)h)/((1+η)h)) (D_i − D_(i−1))/r  ("heun"),   r = h_(i−1)/h.

    eta = 0 with "midpoint" is exactly `dpmpp_2m`. A step to σ = 0 is x = D_i. `history` as in `dpmpp_2m`."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun'; got {solver_type!r}")
    eta = check_fraction(eta, name="eta", high=math.inf)
    model, x, sigmas = _start(denoiser, x, sigmas, extra_args)
    hist = _check_history(history, sigmas[0])
    noise = _noise(x, generator, noise_sampler)
    for i, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        denoised = model(x, sigma)
        _step_log(callback, i, x, sigma, sigma_next, denoised, model.nfe)
        lam = _lam(sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = _lam(sigma_next) - lam
            eta_h = eta * h
            one_minus = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + one_minus * denoised
            if hist:
                r = (lam - hist[-1][0]) / h
                c = 0.5 * one_minus if solver_type == "midpoint" else 1 - one_minus / (h + eta_h)
                x = x + (c / r) * (denoised - hist[-1][1])
            if eta_h > 0:
                x = x + noise(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        hist = (hist + [(lam, denoised)])[-1:]
    return x


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Traits:
    """What a caller needs to know about a solver, declared once here (nowhere else decides it):
    `stochastic`: draws step noise (takes `noise_sampler=`/`generator=`); `multistep`: reuses earlier denoiser
    values (takes `history=`, so teleportation can warm it); `order`: convergence order of the deterministic
    solver at its default options (measured in tests/test_samplers.py; stochastic solvers: strong order of the
    noise-free limit)."""

    stochastic: bool
    multistep: bool
    order: int


TRAITS = {
    "euler": Traits(stochastic=False, multistep=False, order=1),
    "heun": Traits(stochastic=False, multistep=False, order=2),
    "dpmpp_2m": Traits(stochastic=False, multistep=True, order=2),
    "dpmpp_3m": Traits(stochastic=False, multistep=True, order=2),   # reference weighting (the default)
    "unipc": Traits(stochastic=False, multistep=True, order=3),
    "ipndm": Traits(stochastic=False, multistep=True, order=2),   # equal-step coefficients on Karras grids
    "learned": Traits(stochastic=False, multistep=True, order=1),  # fitted weights: no order as steps shrink
    "edm_stochastic": Traits(stochastic=True, multistep=False, order=2),
    "euler_ancestral": Traits(stochastic=True, multistep=False, order=1),
    "dpmpp_2m_sde": Traits(stochastic=True, multistep=True, order=2),
}
SAMPLERS = {f.__name__: f for f in (euler, heun, dpmpp_2m, dpmpp_3m, unipc, ipndm, learned, edm_stochastic,
                                    euler_ancestral, dpmpp_2m_sde)}
STOCHASTIC = tuple(name for name, t in TRAITS.items() if t.stochastic)
MULTISTEP = tuple(name for name, t in TRAITS.items() if t.multistep)


def get(name: str):
    """The sampler function called `name` (see SAMPLERS)."""
    if name not in SAMPLERS:
        raise ValueError(f"solver must be one of {sorted(SAMPLERS)}; got {name!r}")
    return SAMPLERS[name]


def traits(solver) -> Traits:
    """The `Traits` of a solver given by name or as one of this module's functions. A caller's own sampler
    function may declare them as an attribute `solver.traits = Traits(...)`; without it, it is taken to be
    deterministic and single-step."""
    if isinstance(solver, str):
        get(solver)
        return TRAITS[solver]
    if not callable(solver):
        raise TypeError(f"solver must be a sampler name or function; got {type(solver).__name__}")
    declared = getattr(solver, "traits", None)
    if isinstance(declared, Traits):
        return declared
    name = getattr(solver, "__name__", None)
    if name in TRAITS and SAMPLERS.get(name) is solver:
        return TRAITS[name]
    return Traits(stochastic=False, multistep=False, order=1)
