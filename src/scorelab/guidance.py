"""Guidance as denoisers: classifier-free guidance, guidance in a σ interval, autoguidance.

Every guided model here is itself a denoiser `D(x, σ, **cond)`, so every sampler, `sample()` and teleportation
apply to it unchanged. All are the same extrapolation between a positive and a negative denoiser,

    D_w(x, σ) = D_neg(x, σ) + w · (D_pos(x, σ) − D_neg(x, σ)),

(w = 1: the positive model alone; w = 0: the negative one), with

- classifier-free guidance (Ho & Salimans 2022): D_pos = D(·, c), D_neg = D(·, ∅) — one conditional model with a
  null label (`class_labels=None`: scorelab's conditional models and networks read it as "no label") or a
  separate unconditional model;
- autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): D_pos the model,
  D_neg a weaker version of it (an earlier or smaller network, or the fitted Gaussian), same conditioning;
- guidance limited to an interval σ_lo < σ ≤ σ_hi (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
  Interval Improves Sample and Distribution Quality"): outside it D_w = D_pos and the negative model is not
  evaluated.

In score terms D_w is the denoiser of p_neg^(1−w) p_pos^w at every σ *of the noised marginals*, which is not the
noised version of the tilted data distribution (Bradley & Nakkiran 2025), except where the two models share
their covariance (two Gaussians differing only in the mean: then D_w is exactly the denoiser of the Gaussian
with mean μ_neg + w (μ_pos − μ_neg); tests/test_guidance.py checks it).

Network evaluations: one call of a guided denoiser is one NFE for the sampler; `network_evals` counts the
evaluations of the underlying models (2 per call inside the interval, 1 outside), and `sample()` reports it as
`SampleResult.network_nfe`.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_finite, sigma_view
from .protocol import check_denoiser, device_of, slice_cond

__all__ = ["Guided", "cfg", "autoguidance"]


def _check_interval(interval):
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise TypeError(f"interval must be a pair (sigma_lo, sigma_hi); got {interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"interval must satisfy 0 <= sigma_lo < sigma_hi; got ({lo}, {hi})")
    return lo, hi


class Guided:
    """D_w = D_neg + w (D_pos − D_neg), a denoiser (module docstring).

    - `positive`, `negative`: denoisers. `negative_cond(cond) -> dict`: the conditioning the negative model
      gets, from the call's (default: the same).
    - `scale` w (any finite number; 1 = no guidance). `interval` (σ_lo, σ_hi): guide only where
      σ_lo < σ ≤ σ_hi, per sample.
    - `network_evals`: evaluations of the two models so far (a batch call counts once per model evaluated)."""

    def __init__(self, positive, negative, scale, *, interval=None, negative_cond=None):
        self.positive = check_denoiser(positive, name="positive")
        self.negative = check_denoiser(negative, name="negative")
        self.scale = check_finite(scale, name="scale")
        self.interval = _check_interval(interval)
        self.negative_cond = negative_cond or (lambda cond: cond)
        self.network_evals = 0

    @property
    def shape_(self):
        return getattr(self.positive, "shape_", None)

    @property
    def device(self):
        return device_of(self.positive)

    def _active(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """[B] bool: which samples are guided (all of them without an interval)."""
        if self.interval is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        s = sigma_view(sigma, x).reshape(-1).expand(x.shape[0])
        lo, hi = self.interval
        return (s > lo) & (s <= hi)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        d_pos = self.positive(x, sigma, **cond)
        self.network_evals += 1
        active = self._active(x, sigma)
        if self.scale == 1 or not bool(active.any()):
            return d_pos
        neg_cond = self.negative_cond(cond)
        if bool(active.all()):
            d_neg = self.negative(x, sigma, **neg_cond)
            self.network_evals += 1
            return d_neg + self.scale * (d_pos - d_neg)
        idx = active.nonzero().reshape(-1)
        s = sigma_view(sigma, x)
        s_sub = s.reshape(-1).expand(x.shape[0])[idx] if s.numel() > 1 else sigma
        d_neg = self.negative(x[idx], s_sub, **slice_cond(neg_cond, x.shape[0], idx))
        self.network_evals += 1
        out = d_pos.clone()
        out[idx] = d_neg + self.scale * (d_pos[idx] - d_neg)
        return out

    def __repr__(self) -> str:
        return (f"Guided(scale={self.scale}, interval={self.interval}, positive={type(self.positive).__name__}, "
                f"negative={type(self.negative).__name__})")


def cfg(denoiser, scale, uncond=None, interval=None, *, key: str = "class_labels", null=None) -> Guided:
    """Classifier-free guidance: D(·, c) extrapolated away from the unconditional model by `scale`.

    The unconditional model is `denoiser` itself called with `key=null` (default `class_labels=None`, which
    scorelab's conditional models and networks read as "no label"), or, when `uncond` is given, that separate
    denoiser called without `key`. `interval`: (σ_lo, σ_hi) to guide only there. Returns a `Guided` denoiser;
    pass the condition through the sampler's `extra_args`, e.g. `sample(cfg(net, 2.0), extra_args={"class_labels":
    y})`."""
    if not isinstance(key, str):
        raise TypeError(f"key must be the name of the conditioning argument (a str); got {type(key).__name__}")
    if uncond is None:
        negative, neg_cond = denoiser, (lambda cond: {**cond, key: null})
    else:
        negative, neg_cond = uncond, (lambda cond: {k: v for k, v in cond.items() if k != key})
    return Guided(denoiser, negative, scale, interval=interval, negative_cond=neg_cond)


def autoguidance(strong, weak, scale, interval=None, *, weak_cond: bool = True) -> Guided:
    """Autoguidance (Karras et al. 2024): D = D_weak + w (D_strong − D_weak), the weak model a degraded version of
    the strong one (fewer training steps, smaller, or the data's Gaussian). `weak_cond=False` calls the weak model
    without the conditioning (e.g. an unconditional Gaussian guiding a conditional network)."""
    neg_cond = (lambda cond: cond) if weak_cond else (lambda cond: {})
    return Guided(strong, weak, scale, interval=interval, negative_cond=neg_cond)
