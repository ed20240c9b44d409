"""Images as the feature extractors see them, written once: the input check and the 8-bit quantiser shared by
the Inception network (`inception.py`) and the Fashion-MNIST classifier (`classifier.py`).

Both measure what a saved 8-bit PNG would hold: x ∈ [−1, 1] → u = round((x + 1)·127.5) ∈ {0, …, 255}.
"""
from __future__ import annotations

import torch

from .._checks import check_tensor

__all__ = ["check_images", "quantize", "dequantize"]


def check_images(images, *, name: str = "images", shape: tuple | None = None, what: str = "") -> torch.Tensor:
    """Images [N, C, H, W], finite, N ≥ 1 (values are clamped to [−1, 1] later). `shape`: the one (C, H, W) the
    extractor accepts (`what` says why in the message); None: any size with C ∈ {1, 3}."""
    images = check_tensor(images, name=name, min_ndim=1 if shape is not None else 4)
    if shape is not None:
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
            raise ValueError(f"{name} must have shape [N, {', '.join(map(str, shape))}]{f' ({what})' if what else ''}; "
                             f"got {tuple(images.shape)}")
    elif images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape [N, 1 or 3, H, W]; got {tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError(f"{name} must contain at least 1 image; got 0")
    return images


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] floats → uint8 pixel values u = round((x + 1)·127.5), as an 8-bit PNG would store them."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def dequantize(pixels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 pixel values u → u / 127.5 − 1 ∈ [−1, 1] in `dtype` (exact for data that was 8-bit to begin with)."""
    return pixels.to(dtype) / 127.5 - 1
