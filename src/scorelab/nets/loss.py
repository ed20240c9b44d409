"""The EDM training loss (Karras et al. 2022, sec. 5 and eq. 8), as a small object the training loop calls.

    loss = EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)(net, x0, labels=None, generator=g)   # [B, *shape]
    loss.flatten(1).mean(1).mean().backward()

Per element: λ(σ)·(D(x0 + σε, σ) − x0)², λ(σ) = (σ² + σ_d²) / (σ σ_d)², one σ per sample. σ distribution: a
mixture — the first round(B·uniform_fraction) samples of a batch log-uniform on [sigma_min, sigma_max], the rest
log-normal ln σ ~ N(P_mean, P_std²) — so that large σ (≳ 8), which the log-normal alone almost never draws, is
trained too (uniform_fraction = 0 is EDM's loss). With a Gaussian-skip network (nets/precond.py) the same loss
trains F on what the data has beyond its fitted Gaussian: the loss only calls the network.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_fraction
from .precond import edm_loss_weight

__all__ = ["EDMLoss"]


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


class EDMLoss:
    """λ(σ)·(D(x0 + σε, σ, class_labels=labels) − x0)² per element (EDM eq. 8), σ from the log-normal /
    log-uniform mixture above. `label_dropout`: with labels, that fraction of them is replaced by the network's
    "no label" index `net.n_classes` (classifier-free guidance training).

    Random draws, all from `generator` (a CPU generator also serves a CUDA network; the draws then move to x0's
    device), in this order: σ (log-uniform part, then log-normal part, float64), ε (x0's dtype), the label-dropout
    mask. A batch is thus a pure function of the generator's seed, whatever the device."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5, *,
                 uniform_fraction: float = 0.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 label_dropout: float = 0.0):
        if isinstance(P_mean, bool) or not isinstance(P_mean, (int, float)) or not math.isfinite(P_mean):
            raise ValueError(f"P_mean must be a finite number; got {P_mean!r}")
        self.P_mean = float(P_mean)
        self.P_std = _positive(P_std, "P_std")
        self.sigma_data = _positive(sigma_data, "sigma_data")
        self.sigma_min = _positive(sigma_min, "sigma_min")
        self.sigma_max = _positive(sigma_max, "sigma_max")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min={self.sigma_min}; got {self.sigma_max}")
        self.uniform_fraction = check_fraction(uniform_fraction, name="uniform_fraction")
        self.label_dropout = check_fraction(label_dropout, name="label_dropout")

    def __repr__(self) -> str:
        return (f"EDMLoss(P_mean={self.P_mean}, P_std={self.P_std}, sigma_data={self.sigma_data}, "
                f"uniform_fraction={self.uniform_fraction}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "
                f"label_dropout={self.label_dropout})")

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n noise levels (float64, on the generator's device): round(n·uniform_fraction) log-uniform on
        [sigma_min, sigma_max] first, then n − that many log-normal."""
        device = generator.device if generator is not None else None
        n_u = round(n * self.uniform_fraction)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        log_u = lo + (hi - lo) * torch.rand(n_u, generator=generator, dtype=torch.float64, device=device)
        log_n = self.P_mean + self.P_std * torch.randn(n - n_u, generator=generator, dtype=torch.float64,
                                                       device=device)
        return torch.cat([log_u, log_n]).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) = (σ² + σ_d²) / (σ σ_d)² = 1 / c_out(σ)²."""
        return edm_loss_weight(sigma, self.sigma_data)

    def __call__(self, net, x0: torch.Tensor, labels=None, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or not x0.is_floating_point():
            raise TypeError(f"x0 must be a float tensor [B, *shape]; got "
                            f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
        b, device = x0.shape[0], x0.device
        draw_device = generator.device if generator is not None else device
        sigma = self.sample_sigma(b, generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=draw_device).to(device)
        cond = {}
        if labels is not None:
            labels = torch.as_tensor(labels, device=device)
            if labels.shape != (b,):
                raise ValueError(f"labels must have shape [{b}] (one per sample of x0); got {tuple(labels.shape)}")
            drop = (torch.rand(b, generator=generator, device=draw_device) < self.label_dropout).to(device)
            if self.label_dropout > 0:
                if not isinstance(getattr(net, "n_classes", None), int):
                    raise ValueError("label_dropout > 0 needs a network with an int n_classes (its 'no label' index)")
                labels = labels.masked_fill(drop, net.n_classes)
            cond["class_labels"] = labels
        sigma_x = sigma.to(device=device, dtype=x0.dtype)
        x_noisy = x0 + sigma_x.view(-1, *[1] * (x0.ndim - 1)) * noise
        denoised = net(x_noisy, sigma_x, **cond)
        weight = self.weight(sigma).to(device=device, dtype=x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        return weight * (denoised - x0) ** 2
