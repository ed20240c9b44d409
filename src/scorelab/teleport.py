"""Analytical teleportation: replace the first, high-noise steps of a sampler by the Gaussian's exact jump.

At high noise the score of the data is close to the score of a Gaussian with the data's mean and covariance, whose
probability-flow ODE has a closed-form solution. So a sampler starting at σ_T can jump analytically to σ_skip
and let the network take the remaining steps:

    x_skip = μ + U diag(√((λ + σ_skip²) / (λ + σ_T²))) Uᵀ (x_T − μ) + √((ρ + σ_skip²) / (ρ + σ_T²)) (I − UUᵀ)(x_T − μ)

Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models and its
Applications" (TMLR 2024), Sec. 5.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_fraction, check_sigma, check_sigmas

__all__ = ["teleport", "skip_index"]


def _scalar_sigma(value, name: str) -> float:
    s = check_sigma(value, name=name)
    if s.numel() != 1:
        raise ValueError(f"{name} must be a single noise level (float or 0-d tensor); got shape {tuple(s.shape)}")
    return float(s)


def teleport(gaussian, x_T: torch.Tensor, sigma_T, sigma_skip) -> torch.Tensor:
    """x at σ_skip on the Gaussian's probability-flow ODE started from x_T at σ_T (the exact jump, formula above).

    `gaussian`: a fitted `scorelab.Gaussian`; `x_T` [B, *shape] at noise level `sigma_T`; 0 <= sigma_skip < sigma_T.
    Returns x_skip with x_T's shape and dtype."""
    sigma_T = _scalar_sigma(sigma_T, "sigma_T")
    sigma_skip = _scalar_sigma(sigma_skip, "sigma_skip")
    if not sigma_skip < sigma_T:
        raise ValueError(f"sigma_skip must be < sigma_T = {sigma_T:.6g} (the jump goes down in noise); "
                         f"got {sigma_skip:.6g}")
    if not hasattr(gaussian, "trajectory"):
        raise TypeError(f"gaussian must be a fitted scorelab.Gaussian (with .trajectory); got {type(gaussian).__name__}")
    sigmas = torch.tensor([sigma_T, sigma_skip], dtype=torch.float64)
    return gaussian.trajectory(x_T, sigmas)[-1]


def skip_index(sigmas, skip=None, sigma_skip=None) -> int:
    """Index k of the grid point the jump lands on: the network then runs on sigmas[k:].

    - `skip` ∈ [0, 1): fraction of the grid's n = len(sigmas) − 1 steps replaced by the jump,
      k = ⌊skip·n + ½⌋ (rounded half up), capped at n − 1 so the network still takes at least one step.
    - `sigma_skip` >= 0: k = the first index with sigmas[k] <= sigma_skip (relative tolerance 1e-6, so a value
      read off a float32 grid lands on that grid point); the user's grid is kept and the jump ends exactly on it.
      sigma_skip >= sigmas[0] gives k = 0 (no jump); a sigma_skip below sigmas[n − 1] is an error (no step left).
    Neither given → 0. Both given → error.
    """
    sigmas = check_sigmas(sigmas)
    n_steps = len(sigmas) - 1
    if skip is not None and sigma_skip is not None:
        raise ValueError(f"give either skip (a fraction of steps) or sigma_skip (a noise level), not both; "
                         f"got skip={skip!r}, sigma_skip={sigma_skip!r}")
    if skip is not None:
        skip = check_fraction(skip, name="skip")
        if skip >= 1:
            raise ValueError(f"skip must be in [0, 1) (the network must take at least one step); got {skip}")
        return min(math.floor(skip * n_steps + 0.5 + 1e-9), n_steps - 1)
    if sigma_skip is not None:
        sigma_skip = _scalar_sigma(sigma_skip, "sigma_skip")
        hits = (sigmas <= sigma_skip * (1 + 1e-6)).nonzero()
        k = int(hits[0]) if len(hits) else n_steps
        if k >= n_steps:
            raise ValueError(f"sigma_skip must be >= sigmas[-2] = {float(sigmas[-2]):.6g} so the network takes at "
                             f"least one step; got {sigma_skip:.6g}")
        return k
    return 0

