"""Wrappers into σ-space, the score, and NFE counting.

A denoiser is any callable `D(x, sigma, **cond) -> x0_hat` on batched tensors, with x_σ = x0 + σ·ε (the contract
is written once, in `scorelab.protocol`). Other
parameterisations (VP ε-/v-/x0-prediction on continuous or discrete timesteps, flow velocity) enter through
the wrappers here, as in k-diffusion. For a VP process x_t = α x0 + s ε with α² + s² = 1 the σ-space
coordinates are σ = s/α and x = x_t/α.
"""
from __future__ import annotations

import torch

from ._checks import sigma_view

__all__ = ["score", "eps_to_x0", "x0_to_eps", "v_to_x0", "x0_to_v", "VPDenoiser", "FlowDenoiser",
           "CountingDenoiser", "sigma_to_vp", "vp_to_sigma"]


def score(denoiser, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
    """∇ log p_σ(x) = (D(x, σ, **cond) − x) / σ² (Tweedie)."""
    s = sigma_view(sigma, x, allow_zero=False)
    return (denoiser(x, sigma, **cond) - x) / s ** 2


def eps_to_x0(x, eps, sigma):
    """x0 = x − σ ε."""
    return x - sigma_view(sigma, x) * eps


def x0_to_eps(x, x0, sigma):
    """ε = (x − x0) / σ."""
    return (x - x0) / sigma_view(sigma, x, allow_zero=False)


def v_to_x0(x, v, sigma):
    """VP v-prediction (v = α ε − s x0) to x0 in σ-space: x0 = (x − σ·sqrt(1+σ²)·v) / (1+σ²)."""
    s = sigma_view(sigma, x)
    return (x - s * torch.sqrt(1 + s ** 2) * v) / (1 + s ** 2)


def x0_to_v(x, x0, sigma):
    """v = α (ε − σ x0), α = 1/sqrt(1+σ²), ε = (x − x0)/σ."""
    s = sigma_view(sigma, x, allow_zero=False)
    return ((x - x0) / s - s * x0) / torch.sqrt(1 + s ** 2)


def sigma_to_vp(sigma):
    """σ → (α, s) of the VP process: α = 1/sqrt(1+σ²), s = σ α."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    alpha = torch.rsqrt(1 + sigma ** 2)
    return alpha, sigma * alpha


def vp_to_sigma(alphas_cumprod):
    """ᾱ → σ = sqrt((1 − ᾱ)/ᾱ)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return torch.sqrt((1 - ac) / ac)


class VPDenoiser:
    """Wrap a VP model `model(x_t, t, **kw)` predicting ε, v or x0 ("epsilon", "v_prediction", "sample").

    Timesteps are discrete (`alphas_cumprod` given: t is found by interpolating log σ between the trained
    timesteps, or rounded to the nearest with `quantize=True`) or continuous (`t_of_sigma(σ) -> t`).
    D(x, σ): x_t = x/sqrt(1+σ²); out = model(x_t, t(σ)); x0 from out as above.
    """

    PREDICTIONS = ("epsilon", "v_prediction", "sample")

    def __init__(self, model, *, alphas_cumprod=None, t_of_sigma=None, prediction: str = "epsilon",
                 quantize: bool = False):
        if prediction not in self.PREDICTIONS:
            raise ValueError(f"prediction must be one of {self.PREDICTIONS}; got {prediction!r}")
        if (alphas_cumprod is None) == (t_of_sigma is None):
            raise ValueError("give exactly one of alphas_cumprod (discrete timesteps) or t_of_sigma (continuous)")
        self.model, self.prediction, self.quantize, self.t_of_sigma = model, prediction, quantize, t_of_sigma
        if alphas_cumprod is not None:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if ac.numel() < 2 or not ((ac > 0) & (ac < 1)).all():
                raise ValueError("alphas_cumprod must be a 1-D array of values in (0, 1) with >= 2 entries")
            self.sigmas = vp_to_sigma(ac)
            if not (self.sigmas[1:] > self.sigmas[:-1]).all():
                raise ValueError("alphas_cumprod must be strictly decreasing in t")
            self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Discrete: fractional timestep by linear interpolation in log σ (clamped to the trained range)."""
        if self.t_of_sigma is not None:
            return torch.as_tensor(self.t_of_sigma(sigma))
        log_sigma = sigma.to(torch.float64).clamp(self.sigmas[0], self.sigmas[-1]).log()
        idx = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[idx - 1], self.log_sigmas[idx]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        t = idx - 1 + w
        return t.round() if self.quantize else t

    def t_to_sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        lo = t.floor().long().clamp(0, len(self.sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.sigmas) - 1)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        s = sigma_view(sigma, x)
        s_flat = s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(-1)
        t = self.sigma_to_t(s_flat)
        x_t = x / torch.sqrt(1 + s ** 2)
        out = self.model(x_t, t.to(x.device, x.dtype if self.t_of_sigma is not None else torch.float32), **kwargs)
        if self.prediction == "epsilon":
            return eps_to_x0(x, out, s)
        if self.prediction == "v_prediction":
            return v_to_x0(x, out, s)
        return out


class FlowDenoiser:
    """Wrap a rectified-flow velocity model `model(x_t, t)` with x_t = (1−t) x0 + t ε, v = ε − x0.

    σ-space: t = σ/(1+σ), x_t = x/(1+σ), and D(x, σ) = x_t − t·v."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, sigma, **kwargs):
        s = sigma_view(sigma, x)
        t = s / (1 + s)
        x_t = x / (1 + s)
        t_flat = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)
        return x_t - t * self.model(x_t, t_flat, **kwargs)


class CountingDenoiser:
    """Counts denoiser calls (NFE): one call = one network evaluation, whatever the batch size."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x, sigma, **kwargs):
        self.nfe += 1
        return self.denoiser(x, sigma, **kwargs)

    def __getattr__(self, name):  # expose the wrapped model's attributes (mean_, sigma_min, ...)
        return getattr(self.__dict__["denoiser"], name)
