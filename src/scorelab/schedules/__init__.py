"""Noise schedules: 1-D float tensors of σ, strictly decreasing, ending in exactly 0.

- Builders (`karras`, `exponential`, `logsnr_uniform`, `kl_optimal`, `vp_linear`, `vp_cosine`; `get` by name):
  every one takes `n` (number of steps; the grid has n + 1 entries; 1 <= n <= MAX_STEPS = 100,000, checked
  before anything is allocated), `device=` and `dtype=` (float64 by default: step coefficients are computed in
  float64 and cast at use).
- `optimize(teacher, solver=..., nfe=..., method="ays"|"dp")`: a grid tuned to a teacher (closed form for a
  Gaussian; see `scorelab.schedules.search`), `kl_bound` (Align Your Steps' bound of a grid, closed form),
  `steps_for_nfe`; `fit_coefficients(teacher, sigmas)`: per-step weights of `samplers.learned` fitted to the
  teacher on that grid.
- `save(sigmas, path, **provenance)` / `load(path)`: a grid as JSON with what produced it.
"""
from __future__ import annotations

from ._files import load, save
from ._grids import (MAX_STEPS, NAMES, append_zero, exponential, get, karras, kl_optimal, logsnr_uniform,
                     vp_cosine, vp_linear)
from .search import Search, fit_coefficients, kl_bound, optimize, steps_for_nfe

__all__ = ["karras", "exponential", "logsnr_uniform", "kl_optimal", "vp_linear", "vp_cosine", "append_zero", "get",
           "NAMES", "MAX_STEPS", "optimize", "fit_coefficients", "kl_bound", "steps_for_nfe", "Search", "save", "load"]
