"""Exponential moving average of a network's weights with a half-life counted in training images
(EDM's `ema_halflife_kimg`, Karras et al. 2022, appendix F), ramped up at the start of a run."""
from __future__ import annotations

import torch

__all__ = ["EMA"]


class EMA:
    """Keeps `model` (a copy of the trained network's architecture) as the EMA of a network's parameters.

    After an update that brings the images seen to `images` with a batch of `batch_size`:
        half-life h = min(halflife_kimg · 1000, rampup · images),   β = 0.5^(batch_size / h),
        θ_ema ← β·θ_ema + (1 − β)·θ.
    Only parameters are averaged; buffers keep the values they were given (e.g. a Gaussian skip's statistics)."""

    def __init__(self, model: torch.nn.Module, *, halflife_kimg: float = 20.0, rampup: float = 0.1):
        self.model = model.requires_grad_(False)
        self.halflife_kimg, self.rampup = float(halflife_kimg), float(rampup)
        self._params = list(model.parameters())

    def beta(self, images: int, batch_size: int) -> float:
        """The decay of the update that brings the images seen to `images`."""
        halflife = min(self.halflife_kimg * 1000, images * self.rampup)
        return 0.5 ** (batch_size / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, net: torch.nn.Module, *, images: int, batch_size: int) -> None:
        params = [p.detach() for p in net.parameters()]
        if len(params) != len(self._params):
            raise ValueError(f"net must have the EMA model's {len(self._params)} parameters; got {len(params)}")
        torch._foreach_lerp_(self._params, params, 1 - self.beta(images, batch_size))
