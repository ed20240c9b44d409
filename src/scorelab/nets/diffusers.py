"""diffusers interop: a `UNet2DModel` + DDPM/DDIM scheduler as a σ-space denoiser (extra `diffusers`).

A VP model sees x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε on discrete timesteps t; in σ-space σ_t = sqrt((1 − ᾱ_t)/ᾱ_t)
and x = x_t / sqrt(ᾱ_t) (Karras et al. 2022, sec. 2 and Table 1; Song et al. 2021). The wrapper is
`scorelab.denoisers.VPDenoiser` (ε-, v- or sample-prediction; fractional t by log-σ interpolation), so every
scorelab sampler and teleportation run on any diffusers UNet. DDIM with η = 0 (Song, Meng & Ermon 2021) is
exactly Euler on the probability-flow ODE on the σ grid of its timesteps: `ddim_sigmas` gives that grid.
Clipping / thresholding of x0 in the scheduler config are sampler features and are not applied.
"""
from __future__ import annotations

import torch

from ..denoisers import VPDenoiser, vp_to_sigma

__all__ = ["from_diffusers", "DiffusersDenoiser", "ddim_sigmas"]


def _config(scheduler) -> dict:
    cfg = getattr(scheduler, "config", None)
    if cfg is None or not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(f"scheduler must be a diffusers DDPM/DDIM scheduler (with .config and .alphas_cumprod); "
                        f"got {type(scheduler).__name__}")
    return dict(cfg)


class DiffusersDenoiser(VPDenoiser):
    """D(x, σ[, class_labels]) of a diffusers UNet2DModel; `shape_` = (C, H, W) of its samples."""

    def __init__(self, unet, *, alphas_cumprod, prediction: str, quantize: bool = False):
        self.unet = unet

        def model(x_t, t, class_labels=None):
            t = t.to(x_t.dtype) if not self.quantize else t.round().long()
            return self.unet(x_t, t, class_labels=class_labels).sample

        super().__init__(model, alphas_cumprod=alphas_cumprod, prediction=prediction, quantize=quantize)
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.shape_ = (unet.config.in_channels, *size)

    def __call__(self, x, sigma, class_labels=None):
        with torch.no_grad():
            return super().__call__(x, sigma, **({} if class_labels is None else {"class_labels": class_labels}))

    def to(self, device=None, dtype=None):
        self.unet.to(device=device, dtype=dtype)
        return self


def from_diffusers(unet, scheduler, *, quantize: bool = False) -> DiffusersDenoiser:
    """Wrap `unet` (diffusers UNet2DModel, or any module called as unet(x_t, t).sample) with the noise schedule
    and `prediction_type` ("epsilon", "v_prediction", "sample") of `scheduler` (DDPMScheduler, DDIMScheduler,
    ...): D(x, σ) with t(σ) interpolated in log σ between trained timesteps (`quantize=True`: nearest timestep)."""
    cfg = _config(scheduler)
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in VPDenoiser.PREDICTIONS:
        raise ValueError(f"scheduler prediction_type must be one of {VPDenoiser.PREDICTIONS}; got {prediction!r}")
    return DiffusersDenoiser(unet, alphas_cumprod=scheduler.alphas_cumprod, prediction=prediction, quantize=quantize)


def ddim_sigmas(scheduler, num_inference_steps: int) -> torch.Tensor:
    """The σ grid (float64) on which σ-space Euler reproduces diffusers' DDIMScheduler (η = 0) step by step:
    σ(t) for t in `scheduler.timesteps` after `set_timesteps(num_inference_steps)`, then the σ of the last step's
    target, ᾱ = `final_alpha_cumprod` (1 → σ = 0 with `set_alpha_to_one=True`, else ᾱ_0)."""
    cfg = _config(scheduler)
    scheduler.set_timesteps(num_inference_steps)
    ts = scheduler.timesteps.long().cpu()
    jump = cfg["num_train_timesteps"] // num_inference_steps
    prev = ts - jump
    if not torch.equal(prev[:-1], ts[1:]):
        raise ValueError(f"scheduler timestep_spacing={cfg.get('timestep_spacing')!r} with num_inference_steps="
                         f"{num_inference_steps} gives DDIM steps t → t − {jump} that skip the listed timesteps; "
                         "no σ grid reproduces that loop")
    ac = scheduler.alphas_cumprod.to(torch.float64).cpu()
    final = ac[prev[-1]] if prev[-1] >= 0 else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    return torch.cat([vp_to_sigma(ac[ts]), vp_to_sigma(final).reshape(1)])
