"""Smoothed closed-form diffusion model (σ-CFDM; Scarvelis, Sáez de Ocáriz Borde & Solomon, "Closed-Form
Diffusion Models", TMLR 2025), in σ-space.

The closed-form score of the training set, s(x, σ) = (D(x, σ) − x)/σ² with D the empirical denoiser, is
smoothed by averaging it over Gaussian perturbations of its input, z ~ N(0, λ² I) (λ = `smoothing`):

    s̃(x, σ) = E_z[s(x + z, σ)]   ⇒   D̃(x, σ) = E_z[D(x + z, σ)] = Σ_i E_z[w_i(x + z, σ)] y_i

(E[z] = 0). The output is a barycentre of training points with averaged softmax weights, so samples are new
combinations of nearby training points rather than copies. The expectation is a Monte-Carlo average over
`n_draws` standard-normal draws fixed at construction (so D̃ is a deterministic function); each D(x + z, σ) is
exact (`Empirical`) or the nearest-neighbour estimate (`KNN`, estimator="knn"). λ = 0 gives the empirical
denoiser itself, which reproduces training points.

Sampling (`sample`) starts at an intermediate σ_start from exact draws of the unsmoothed noised mixture
x = y_j + σ_start ε (j uniform) and integrates the probability-flow ODE with D̃ down to 0.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive_int, sigma_view
from .._io import load_state, save_state
from .empirical import Empirical, as_rows, check_query, pack_data, unpack_data

__all__ = ["CFDM"]


class CFDM:
    """Smoothed closed-form diffusion model: D̃(x, σ) = mean over n_draws fixed z_m of D(x + λ z_m, σ).

    smoothing: λ ≥ 0 (0: the memorising empirical denoiser). estimator: "exact" (streamed `Empirical`) or
    "knn" (`KNN` with `k`, `n_random`, `index`). sigma_start: default start of `sample`.
    `CFDM.fit(data, smoothing, ...)` is the same as the constructor (a non-parametric model)."""

    kind = "cfdm"

    def __init__(self, data, smoothing: float, n_draws: int = 8, *, estimator: str = "exact", k: int = 64,
                 n_random: int = 256, index: str = "auto", sigma_start: float = 1.0, chunk_size: int = 4096,
                 seed: int = 0, dtype=None, device=None):
        try:
            smoothing = float(smoothing)
        except (TypeError, ValueError):
            raise TypeError(f"smoothing must be a number >= 0; got {smoothing!r}") from None
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0 (0 = no smoothing); got {smoothing}")
        self.smoothing = smoothing
        self.n_draws = check_positive_int(n_draws, name="n_draws")
        if estimator not in ("exact", "knn"):
            raise ValueError(f"estimator must be 'exact' or 'knn'; got {estimator!r}")
        self.estimator = estimator
        sigma_start = float(sigma_start)
        if not (math.isfinite(sigma_start) and sigma_start > 0):
            raise ValueError(f"sigma_start must be a finite number > 0; got {sigma_start}")
        self.sigma_start = sigma_start
        self.seed = int(seed)
        rows = as_rows(data)
        if rows.tensor is None:
            raise TypeError("CFDM needs the data in memory (a tensor or array); got a streamed data set")
        self.shape_ = rows.shape
        data = rows.tensor.reshape(rows.n, *rows.shape)
        self.knn_kwargs = dict(k=k, n_random=n_random, index=index)
        if estimator == "exact":
            self.denoiser_ = Empirical(data, chunk_size=chunk_size, dtype=dtype, device=device)
        else:
            from .knn import KNN

            self.denoiser_ = KNN(data, k=k, n_random=n_random, index=index, chunk_size=chunk_size, seed=seed,
                                 dtype=dtype, device=device)
        self.chunk_size = chunk_size
        self.dtype, self.device = self.denoiser_.dtype, self.denoiser_.device
        g = torch.Generator().manual_seed(self.seed)
        self.draws_ = torch.randn(self.n_draws, *self.shape_, generator=g, dtype=torch.float64).to(
            device=self.device, dtype=self.dtype)

    @classmethod
    def fit(cls, data, *args, **kwargs) -> "CFDM":
        """Same as the constructor (a non-parametric model: fitting stores the data)."""
        return cls(data, *args, **kwargs)

    @property
    def data_(self) -> torch.Tensor:
        return self.denoiser_.data_

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        check_query(x, math.prod(self.shape_), self.shape_)
        if self.smoothing == 0:
            return self.denoiser_(x, sigma)
        s = sigma_view(sigma, x).reshape(-1)
        B, M = x.shape[0], self.n_draws
        xz = x.to(self.dtype)[:, None] + self.smoothing * self.draws_.to(x.device)[None]  # [B, M, *shape]
        s = s.expand(B)[:, None].expand(B, M).reshape(-1)
        out = self.denoiser_(xz.reshape(B * M, *self.shape_), s)
        return out.reshape(B, M, *self.shape_).to(torch.float64).mean(1).to(x.dtype)

    def sample(self, n: int, *, steps: int = 20, sigma_start: float | None = None, sigma_min: float = 0.002,
               solver: str = "heun", generator: torch.Generator | None = None, return_start: bool = False):
        """n samples: exact draws x = y_j + σ_start ε of the unsmoothed mixture at σ_start, then the PF-ODE
        with D̃ on a Karras grid of `steps` steps from σ_start to 0 (`scorelab.samplers.<solver>`)."""
        from .. import samplers, schedules

        n = check_positive_int(n, name="n")
        sigma_start = self.sigma_start if sigma_start is None else float(sigma_start)
        if not (math.isfinite(sigma_start) and sigma_start > sigma_min):
            raise ValueError(f"sigma_start must be a finite number > sigma_min={sigma_min}; got {sigma_start}")
        g = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        j = torch.randint(0, self.data_.shape[0], (n,), generator=g)
        eps = torch.randn(n, *self.shape_, generator=g, dtype=torch.float64)
        x = (self.data_[j.to(self.device)].to(torch.float64) + sigma_start * eps.to(self.device)).to(self.dtype)
        sigmas = schedules.karras(steps, sigma_min=sigma_min, sigma_max=sigma_start)
        out = samplers.get(solver)(self, x, sigmas)
        return (out, x) if return_start else out

    # -- protocol ----------------------------------------------------------------------------------------------
    def _kwargs(self) -> dict:
        return dict(smoothing=self.smoothing, n_draws=self.n_draws, estimator=self.estimator,
                    sigma_start=self.sigma_start, chunk_size=self.chunk_size, seed=self.seed, **self.knn_kwargs)

    def to(self, device=None, dtype=None) -> "CFDM":
        return type(self)(self.data_, **self._kwargs(), dtype=dtype or self.dtype, device=device or self.device)

    def save(self, path) -> None:
        """Stores the training data losslessly (see `Empirical.save`); the draws are re-made from the seed."""
        tensors, data_cfg = pack_data(self.data_)
        save_state(path, tensors, kind=self.kind,
                   config={"data": data_cfg, **self._kwargs(), "dtype": str(self.dtype).split(".")[-1]})

    @classmethod
    def load(cls, path, device=None) -> "CFDM":
        tensors, _, cfg = load_state(path, kind=cls.kind)
        data = unpack_data(tensors, cfg.pop("data"))
        dtype = getattr(torch, cfg.pop("dtype"))
        return cls(data, **cfg, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"CFDM(smoothing={self.smoothing}, n_draws={self.n_draws}, estimator={self.estimator!r})"
