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
from dataclasses import dataclass, field

import torch

from ._checks import check_fraction, check_sigma, check_sigmas
from .protocol import check_extra_args
from .samplers import MULTISTEP, traits

__all__ = ["teleport", "skip_index", "Jump", "plan"]


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
      sigma_skip = sigmas[0] gives k = 0 (no jump); a sigma_skip above sigmas[0] (nothing to jump over: the grid
      starts lower) or below sigmas[n − 1] (no step left for the network) is an error.
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
        if sigma_skip > float(sigmas[0]) * (1 + 1e-6):
            raise ValueError(f"sigma_skip must be <= sigmas[0] = {float(sigmas[0]):.6g} (the grid's largest noise "
                             f"level, where the jump starts); got {sigma_skip:.6g}")
        hits = (sigmas <= sigma_skip * (1 + 1e-6)).nonzero()
        k = int(hits[0]) if len(hits) else n_steps
        if k >= n_steps:
            raise ValueError(f"sigma_skip must be >= sigmas[-2] = {float(sigmas[-2]):.6g} so the network takes at "
                             f"least one step; got {sigma_skip:.6g}")
        return k
    return 0



@dataclass(frozen=True)
class Jump:
    """Teleportation as one composable step of a sampling run:

        x_k, sigmas[k:], history = jump(x_T, sigmas)

    x_T at sigmas[0] goes to x(σ_k) by the Gaussian's exact probability-flow solution; the solver then runs on
    sigmas[k:]. With `warm_history`, `history` is [(σ_j, D_G(x(σ_j), σ_j), x(σ_j))] at the (up to)
    `history_points` grid points before k, oldest first, on the same exact path: the values a multistep solver
    would have computed there, so its first network step is already high order. They are closed forms: no
    network evaluation.
    `extra_args` (e.g. `{"class_labels": y}` for a class-conditional Gaussian) go to the Gaussian's
    `trajectory` and denoiser; the call's own `extra_args` (a batch's slice) replace them."""

    gaussian: object
    k: int
    warm_history: bool = False
    history_points: int = 3
    extra_args: dict = field(default_factory=dict)

    def __call__(self, x_T: torch.Tensor, sigmas, extra_args=None):
        cond = self.extra_args if extra_args is None else check_extra_args(extra_args)
        if self.k == 0:
            return x_T, sigmas, None
        path = self.gaussian.trajectory(x_T, sigmas[:self.k + 1], **cond)          # [k + 1, B, *shape], exact
        history = None
        if self.warm_history:
            history = [(float(sigmas[j]), self.gaussian(path[j], float(sigmas[j]), **cond), path[j])
                       for j in range(max(0, self.k - self.history_points), self.k)]
        return path[-1], sigmas[self.k:], history


def plan(gaussian, sigmas, *, skip=None, sigma_skip=None, warm_history: bool = False, solver=None,
         extra_args=None) -> Jump:
    """The `Jump` that replaces the first k = `skip_index(sigmas, skip, sigma_skip)` steps of `sigmas` by the
    exact jump of `gaussian` (a fitted `scorelab.Gaussian`, or anything with its `trajectory`). `warm_history`
    needs a multistep `solver` (`samplers.traits(solver).multistep`) and k >= 1."""
    if not (hasattr(gaussian, "trajectory") and callable(gaussian)):
        raise TypeError(f"teleport must be a fitted scorelab.Gaussian (with .trajectory); "
                        f"got {type(gaussian).__name__}")
    k = skip_index(sigmas, skip=skip, sigma_skip=sigma_skip)
    if warm_history:
        if k == 0:
            raise ValueError("warm_history=True needs a skip that replaces >= 1 step")
        if solver is None or not traits(solver).multistep:
            name = solver if isinstance(solver, str) else getattr(solver, "__name__", solver)
            raise ValueError(f"warm_history=True needs a multistep solver {list(MULTISTEP)}; got {name!r}")
    return Jump(gaussian, k, bool(warm_history), extra_args=check_extra_args(extra_args, name="teleport_args"))
