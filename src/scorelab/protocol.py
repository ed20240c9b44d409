"""The denoiser contract, written once.

A denoiser is any callable

    D(x, sigma, **cond) -> x0_hat ≈ E[x0 | x0 + σ·ε = x],

- `x`: float tensor [B, *shape] (images [B, C, H, W] in [-1, 1], vectors [B, d]);
- `sigma`: a Python float, a 0-d tensor or a [B] tensor (samplers pass [B] in x's dtype);
- `cond`: the conditioning channel (e.g. `class_labels=` a [B] tensor of ints), passed through unchanged from
  `extra_args` by every sampler, by `sample()` and by teleportation, as k-diffusion's `extra_args` are;
- returns a tensor with x's shape and dtype. The score is (D(x, σ) − x) / σ² (`scorelab.denoisers.score`).

Optional attributes a denoiser may carry, each read through one function here (never by ad-hoc `getattr`):

- `shape_`: the sample shape without the batch (`sample_shape`);
- `sigma_data`: the data's standard deviation (EDM preconditioning);
- `network_evals`: a composite denoiser's running count of evaluations of the models inside it (a guided
  denoiser evaluates two networks per call), read by `network_evals`; without it, one call is one evaluation;
- its device and dtype: a `device`/`dtype` attribute, else those of an `nn.Module`'s parameters or buffers
  (`device_of`, `dtype_of`), so a network on a GPU gets its noise there.

Every scorelab model (analytic or neural) satisfies `Denoiser`; so does a plain function `lambda x, sigma: ...`
when no conditioning is used.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Denoiser", "Cond", "sample_shape", "device_of", "dtype_of", "network_evals", "check_denoiser",
           "check_extra_args", "slice_cond"]

Cond = dict[str, Any]


@runtime_checkable
class Denoiser(Protocol):
    """D(x, σ, **cond) ≈ E[x0 | x0 + σ·ε]; x: [B, *shape]; σ: float, 0-d or [B]; cond: e.g. class_labels=[B]."""

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond: Any) -> Tensor: ...


def check_denoiser(denoiser, *, name: str = "denoiser"):
    """The denoiser itself, after checking it can be called; a TypeError naming `name` otherwise."""
    if not callable(denoiser):
        raise TypeError(f"{name} must be callable as {name}(x, sigma, **cond); got {type(denoiser).__name__}")
    return denoiser


def check_extra_args(extra_args, *, name: str = "extra_args") -> Cond:
    """`extra_args` as a fresh dict of keyword arguments for the denoiser (None → {})."""
    if extra_args is None:
        return {}
    if not isinstance(extra_args, dict) or not all(isinstance(k, str) for k in extra_args):
        raise TypeError(f"{name} must be a dict of keyword arguments for the denoiser (e.g. "
                        f"{{'class_labels': y}}); got {type(extra_args).__name__}")
    reserved = {"x", "sigma"} & set(extra_args)
    if reserved:
        raise ValueError(f"{name} must not contain {sorted(reserved)}: the sampler passes x and sigma itself")
    return dict(extra_args)


def slice_cond(cond: Cond, n: int, index: slice) -> Cond:
    """The conditioning of samples `index` of a run of `n`: per-sample tensors/arrays (first dimension n) are
    sliced with the batch; everything else (scalars, tensors of another length, Python objects) passes as is."""
    out = {}
    for key, value in cond.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
            value = value[index]
        elif hasattr(value, "__array__") and getattr(value, "ndim", 0) >= 1 and len(value) == n:
            value = torch.as_tensor(value[index])
        out[key] = value
    return out


def sample_shape(denoiser, default=None) -> tuple[int, ...] | None:
    """The denoiser's sample shape (`shape_`, without the batch dimension), else `default`."""
    shape = getattr(denoiser, "shape_", None)
    return tuple(int(s) for s in shape) if shape is not None else default


def _first_tensor(denoiser) -> Tensor | None:
    if isinstance(denoiser, torch.nn.Module):
        for t in denoiser.parameters():
            return t
        for t in denoiser.buffers():
            return t
    return None


def device_of(denoiser, default="cpu") -> torch.device:
    """Where the denoiser computes: its `device` attribute if it has one (a torch.device or a string), else the
    device of an `nn.Module`'s first parameter or buffer, else `default`."""
    device = getattr(denoiser, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    t = _first_tensor(denoiser)
    return t.device if t is not None else torch.device(default)


def dtype_of(denoiser, default=torch.float32) -> torch.dtype:
    """The denoiser's floating dtype: its `dtype` attribute, else that of an `nn.Module`'s first floating
    parameter or buffer, else `default`."""
    dtype = getattr(denoiser, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(denoiser, torch.nn.Module):
        for t in list(denoiser.parameters()) + list(denoiser.buffers()):
            if t.is_floating_point():
                return t.dtype
    return default


def network_evals(denoiser) -> int | None:
    """A composite denoiser's running count of its inner models' evaluations (`network_evals` attribute), or None
    for a plain denoiser (one call = one evaluation)."""
    value = getattr(denoiser, "network_evals", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
