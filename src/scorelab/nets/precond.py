"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
Table 1 and eq. 7): the network F_θ is wrapped so that the denoiser

    D(x, σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x, c_noise(σ), y)

with c_skip = σ_d² / (σ² + σ_d²), c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²), c_noise = ln(σ) / 4,
keeps F's input and training target at unit variance for every σ. The loss weight λ(σ) = 1 / c_out(σ)² makes
λ(σ)·‖D − x0‖² = ‖F − F_target‖² (EDM eq. 8).

Gaussian skip (config "skip": "gaussian"): the skip term c_skip·x is replaced by the denoiser of the Gaussian
fitted to the training data, D_G(x, σ) = μ + U diag(λ/(λ+σ²)) Uᵀ(x − μ), so that

    D(x, σ) = D_G(x, σ) + c_out(σ) F_θ(c_in(σ) x, c_noise(σ), y).

F then learns only what the data has beyond its Gaussian: at large σ, where the posterior mean is the Gaussian's
up to O(σ⁻⁴), the zero-initialised F is already right, instead of having to learn μ + Σx/σ² to within the small
margin by which it matters. The training target (x0 − D_G)/c_out still has about unit variance at every σ.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import sigma_view
from ..models.gaussian import gaussian_denoiser

__all__ = ["EDMPrecond", "edm_coefficients", "edm_loss_weight"]

SKIPS = ("edm", "gaussian")   # the skip term: c_skip(σ)·x (EDM) or the fitted Gaussian's denoiser

# c_noise = ln(max(σ, SIGMA_FLOOR)) / 4: finite at σ = 0, where c_out = 0 anyway and D(x, 0) = x exactly.
SIGMA_FLOOR = 1e-8


def edm_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1, computed in float64 (σ may be 0 or very large)."""
    s = sigma.to(torch.float64)
    sd2 = sigma_data ** 2
    c_skip = sd2 / (s ** 2 + sd2)
    c_out = s * sigma_data * torch.rsqrt(s ** 2 + sd2)
    c_in = torch.rsqrt(s ** 2 + sd2)
    c_noise = s.clamp(min=SIGMA_FLOOR).log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ σ_d)² (EDM eq. 8 weighting) = 1 / c_out²."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """σ-space denoiser D(x, σ[, class_labels]) around a raw network `net(x_in, c_noise, class_labels) -> F`.

    `class_labels` (conditional models): ints in [0, n_classes), or n_classes / None for "no label".
    Attributes: `sigma_data`, `shape_` (sample shape without batch), `n_classes` (0 = unconditional), `config`
    (what `scorelab.nets.build` needs to rebuild the same network)."""

    def __init__(self, net: nn.Module, *, sigma_data: float, shape, n_classes: int = 0, config: dict | None = None,
                 skip: str = "edm"):
        super().__init__()
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a finite number > 0; got {sigma_data!r}")
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {SKIPS}; got {skip!r}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.shape_ = tuple(int(s) for s in shape)
        self.n_classes = int(n_classes)
        self.config = dict(config or {})
        self.skip = skip
        if skip == "gaussian":   # filled by set_gaussian (training) or load_state_dict (a saved model)
            d = math.prod(self.shape_)
            self.register_buffer("gauss_mean", torch.zeros(d))
            self.register_buffer("gauss_eigvals", torch.zeros(d))
            self.register_buffer("gauss_eigvecs", torch.eye(d))

    def set_gaussian(self, gaussian) -> "EDMPrecond":
        """Store a fitted full-rank `sl.Gaussian` (mean_, eigvals_, eigvecs_) as the Gaussian skip."""
        if self.skip != "gaussian":
            raise ValueError("set_gaussian needs a model built with skip='gaussian'")
        d = self.gauss_mean.numel()
        if tuple(gaussian.eigvecs_.shape) != (d, d):
            raise ValueError(f"gaussian must be full rank with d = {d}; got eigvecs of shape "
                             f"{tuple(gaussian.eigvecs_.shape)}")
        with torch.no_grad():
            for name, value in (("gauss_mean", gaussian.mean_.reshape(-1)), ("gauss_eigvals", gaussian.eigvals_),
                                ("gauss_eigvecs", gaussian.eigvecs_)):
                buf = getattr(self, name)
                buf.copy_(value.to(buf))
        return self

    def gaussian_denoiser(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """D_G(x, σ) = μ + U diag(λ/(λ+σ²)) Uᵀ(x − μ) in float64 (`models.gaussian.gaussian_denoiser`; σ as a
        [B or 1, 1, ...] view); x itself at σ = 0."""
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        s2 = s.reshape(-1, 1).to(torch.float64) ** 2
        mu, lam, u = (b.to(torch.float64) for b in (self.gauss_mean, self.gauss_eigvals, self.gauss_eigvecs))
        return torch.where(s2 == 0, xf, gaussian_denoiser(xf, s2, mu, lam, u)).reshape(x.shape)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TypeError(f"x must be a floating-point tensor; got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[1:] != self.shape_:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape_))}]; got {tuple(x.shape)}")
        s = sigma_view(sigma, x).to(torch.float64)
        if isinstance(sigma, torch.Tensor) and sigma.requires_grad:   # keep dD/dσ (sigma_view detaches)
            s = sigma.to(torch.float64).reshape(s.shape)
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
        c_noise = c_noise.reshape(-1).expand(x.shape[0])
        if class_labels is not None:
            class_labels = torch.as_tensor(class_labels, device=x.device).long().reshape(-1).expand(x.shape[0])
            if self.n_classes == 0:
                raise ValueError("class_labels given but the model is unconditional (n_classes=0)")
            if (class_labels < 0).any() or (class_labels > self.n_classes).any():
                raise ValueError(f"class_labels must be in [0, {self.n_classes}] ({self.n_classes} = no label); "
                                 "got values outside")
        dt = x.dtype   # the output's dtype; F runs in its weights' dtype (float64 input to a float32 net works)
        wt = next((t.dtype for t in self.net.parameters() if t.is_floating_point()), dt)
        f = self.net((c_in.to(dt) * x).to(wt), c_noise.to(wt), class_labels)
        skip = self.gaussian_denoiser(x, s).to(dt) if self.skip == "gaussian" else c_skip.to(dt) * x
        return skip + c_out.to(dt) * f.to(dt)
