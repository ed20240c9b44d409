"""Argument validation shared by every module: errors name the argument and what was expected."""
from __future__ import annotations

import math
from numbers import Real

import torch


def _preview(t: torch.Tensor, n: int = 4) -> str:
    vals = [float(v) for v in t.flatten()[:n]]
    tail = ", ..." if t.numel() > n else ""
    return "[" + ", ".join(f"{v:.4g}" for v in vals) + tail + "]"


def check_sigmas(sigmas, *, name: str = "sigmas") -> torch.Tensor:
    """A σ grid: 1-D, at least two entries, finite, non-negative, strictly decreasing.

    Returned as float64 on its own device (coefficients are computed in float64)."""
    if not isinstance(sigmas, torch.Tensor):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D tensor or sequence of floats; got {type(sigmas).__name__}") from None
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{name} must be a 1-D grid with at least 2 entries; got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to(torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite; got {_preview(s)}")
    if (s < 0).any() or not (s[1:] < s[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing and non-negative; got {_preview(s, 6)}")
    return s


def check_sigma(sigma, *, name: str = "sigma", allow_zero: bool = True) -> torch.Tensor:
    """A noise level: Python float, 0-d or 1-d tensor; finite and ≥ 0 (> 0 if not allow_zero)."""
    if isinstance(sigma, Real) and not isinstance(sigma, bool):
        s = torch.tensor(float(sigma), dtype=torch.float64)
    elif isinstance(sigma, torch.Tensor):
        if sigma.ndim > 1:
            raise ValueError(f"{name} must be a float, a 0-d tensor or a [B] tensor; got shape {tuple(sigma.shape)}")
        s = sigma.detach()
    else:
        raise TypeError(f"{name} must be a float or a tensor; got {type(sigma).__name__}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite; got {_preview(s)}")
    if allow_zero and (s < 0).any():
        raise ValueError(f"{name} must be >= 0; got {_preview(s)}")
    if not allow_zero and (s <= 0).any():
        raise ValueError(f"{name} must be > 0; got {_preview(s)}")
    return s


def sigma_view(sigma, x: torch.Tensor, *, name: str = "sigma", allow_zero: bool = True) -> torch.Tensor:
    """σ as a tensor broadcastable against x = [B, *shape]: shape [B or 1, 1, ..., 1], x's dtype and device.

    Accepts a float, a 0-d or [B] tensor, or an already broadcast [B, 1, ..., 1] tensor."""
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 1 and all(n == 1 for n in sigma.shape[1:]):
        sigma = sigma.reshape(-1)
    s = check_sigma(sigma, name=name, allow_zero=allow_zero).to(device=x.device, dtype=x.dtype)
    if s.ndim == 1:
        if s.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{name} has {s.shape[0]} entries but x has batch size {x.shape[0]}")
    return s.reshape(-1, *([1] * (x.ndim - 1))) if x.ndim else s


def check_tensor(x, *, name: str = "x", min_ndim: int = 1, finite: bool = True) -> torch.Tensor:
    """A floating tensor with at least `min_ndim` dims and (optionally) only finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if finite and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_data(data, *, name: str = "data", min_samples: int = 1) -> torch.Tensor:
    """Training data [N, *shape]: a tensor or array, N ≥ min_samples, finite, floating."""
    if not isinstance(data, torch.Tensor):
        try:
            import numpy as np

            data = torch.from_numpy(np.asarray(data))
        except Exception:
            raise TypeError(f"{name} must be a tensor or array of shape [N, ...]; got {type(data).__name__}") from None
    if not data.is_floating_point():
        data = data.to(torch.float32)
    if data.ndim < 2:
        raise ValueError(f"{name} must have shape [N, *shape] with at least 2 dims; got shape {tuple(data.shape)}")
    if data.shape[0] < min_samples:
        raise ValueError(f"{name} must contain at least {min_samples} sample(s); got {data.shape[0]}")
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return data


def check_positive_int(value, *, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return value


def check_fraction(value, *, name: str, low: float = 0.0, high: float = 1.0) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [{low}, {high}]; got {value!r}") from None
    if not (low <= value <= high) or math.isnan(value):
        raise ValueError(f"{name} must be in [{low}, {high}]; got {value}")
    return value


def check_finite(value, *, name: str) -> float:
    """A finite number as a float (not a bool or a string); TypeError/ValueError naming `name` otherwise."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__} {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return out
