"""Feature statistics: (μ, Σ) of feature sets, Inception features with their on-disk cache, reference statistics.

Location: $SCORELAB_CACHE, else $XDG_CACHE_HOME/scorelab (~/.cache/scorelab). Every file is written atomically (safetensors + JSON header).

- Features are cached per block of `BLOCK` images, keyed by the sha1 of the block's 8-bit pixels and the
  network's sha1: an interrupted extraction resumes, and the first 5,000 images of a split reuse the blocks
  of the first 10,000.
- Reference statistics (μ, Σ in float64, and n) are cached per data set / split / n / network:
  `stats/<data>-<split>-n<N>-<net12>.safetensors` (`scorelab metrics stats --data fashion-mnist --split test`).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import NamedTuple

import torch

from .._checks import check_tensor
from .._io import load_state, save_state
from .inception import default_extractor
from .pixels import check_images, quantize

__all__ = ["FeatureStats", "feature_stats", "inception_features", "cache_dir", "cached_image_features",
           "reference_features", "reference_stats", "BLOCK"]

BLOCK = 500


class FeatureStats(NamedTuple):
    """Mean [D], covariance [D, D] (float64, unbiased) and sample count of a feature set."""
    mu: torch.Tensor
    sigma: torch.Tensor
    n: int


def check_features(feats, *, name: str, min_samples: int = 2) -> torch.Tensor:
    """Features [N, D], finite, N ≥ min_samples (the message says how many are needed and why)."""
    feats = check_tensor(feats, name=name, min_ndim=2)
    if feats.ndim != 2:
        raise ValueError(f"{name} must be features [N, D] or images [N, C, H, W]; got shape {tuple(feats.shape)}")
    if feats.shape[0] < min_samples:
        raise ValueError(f"{name} has {feats.shape[0]} sample(s); this statistic needs at least {min_samples}")
    return feats


def feature_stats(feats: torch.Tensor, *, chunk: int = 4096) -> FeatureStats:
    """μ and the unbiased covariance Σ of features [N, D] in float64, streamed in chunks of `chunk` rows.

    Sums are taken around a shift (the first chunk's mean) so Σ does not lose digits when ‖μ‖ ≫ spread."""
    feats = check_features(feats, name="features")
    n, d = feats.shape
    shift = feats[:chunk].to(torch.float64).mean(0)
    s = torch.zeros(d, dtype=torch.float64, device=feats.device)
    ss = torch.zeros(d, d, dtype=torch.float64, device=feats.device)
    for i in range(0, n, chunk):
        c = feats[i:i + chunk].to(torch.float64) - shift
        s += c.sum(0)
        ss += c.T @ c
    mu = shift + s / n
    sigma = (ss - torch.outer(s, s) / n) / (n - 1)
    return FeatureStats(mu, (sigma + sigma.T) / 2, n)


def inception_features(images: torch.Tensor, *, batch_size: int = 16, device=None, progress: bool = True,
                       cache: bool = False) -> torch.Tensor:
    """Inception pool3 features [N, 2048] (float32) of images [N, C, H, W] in [−1, 1].

    `cache=True` stores/reuses them on disk keyed by the images' 8-bit content hash (`cached_image_features`)."""
    if cache:
        return cached_image_features(images, batch_size=batch_size, device=device, progress=progress)
    return default_extractor(device, batch_size)(images, progress=progress)


def cache_dir() -> Path:
    """$SCORELAB_CACHE, else $XDG_CACHE_HOME/scorelab, else ~/.cache/scorelab."""
    if os.environ.get("SCORELAB_CACHE"):
        return Path(os.environ["SCORELAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")) / "scorelab"


def _sha1(t: torch.Tensor) -> str:
    t = t.contiguous()
    h = hashlib.sha1(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def cached_image_features(images: torch.Tensor, *, batch_size: int = 16, device=None, progress: bool = True,
                          desc: str = "inception") -> torch.Tensor:
    """Inception features [N, 2048] of images in [−1, 1], computed once per block and cached on disk."""
    from .._io import progress_bar

    pixels = quantize(check_images(images)).cpu()
    net = default_extractor(device, batch_size)
    folder = cache_dir() / "features" / net.sha1_[:12]
    out = []
    blocks = range(0, pixels.shape[0], BLOCK)
    bar = progress_bar(total=pixels.shape[0], desc=desc, unit="img", enabled=progress, leave=False)
    for i in blocks:
        block = pixels[i:i + BLOCK]
        path = folder / f"{_sha1(block)}.safetensors"
        if path.is_file():
            feats = load_state(path, kind="inception-features")[0]["features"]
        else:
            feats = net.from_pixels(block, progress=False)
            save_state(path, {"features": feats}, kind="inception-features",
                       config={"n": int(block.shape[0]), "network_sha1": net.sha1_})
        out.append(feats)
        bar.update(block.shape[0])
    bar.close()
    return torch.cat(out)


def _stats_path(name: str, split: str, n: int, net_sha1: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")[-60:]
    return cache_dir() / "stats" / f"{safe}-{split}-n{n}-{net_sha1[:12]}.safetensors"


def _load_reference(name: str, split: str, n: int | None) -> torch.Tensor:
    from .. import data as data_module

    images = data_module.resolve(name, split=split)
    if n is not None:
        if n > images.shape[0]:
            raise ValueError(f"n={n} exceeds the {images.shape[0]} images of {name!r} split {split!r}")
        images = images[:n]
    if images.ndim != 4:
        raise ValueError(f"data {name!r} must hold images [N, C, H, W] for Inception statistics; "
                         f"got shape {tuple(images.shape)}")
    return images


def reference_features(name: str = "fashion-mnist", split: str = "test", n: int | None = None, *,
                       batch_size: int = 16, device=None, progress: bool = True) -> torch.Tensor:
    """Inception features of the first `n` images (all if None) of a data set split, cached."""
    images = _load_reference(name, split, n)
    return cached_image_features(images, batch_size=batch_size, device=device, progress=progress,
                                 desc=f"inception {name}/{split}")


def reference_stats(name: str = "fashion-mnist", split: str = "test", n: int | None = None, *,
                    batch_size: int = 16, device=None, progress: bool = True):
    """(μ, Σ, n) of the Inception features of a data set split (float64), cached per data/split/n/network."""
    net = default_extractor(device, batch_size)
    images = _load_reference(name, split, n)
    n = int(images.shape[0])
    path = _stats_path(name, split, n, net.sha1_)
    if path.is_file():
        t, _, cfg = load_state(path, kind="reference-stats")
        return FeatureStats(t["mu"], t["sigma"], int(cfg["n"]))
    feats = cached_image_features(images, batch_size=batch_size, device=device, progress=progress,
                                  desc=f"inception {name}/{split}")
    stats = feature_stats(feats)
    save_state(path, {"mu": stats.mu, "sigma": stats.sigma}, kind="reference-stats",
               config={"data": str(name), "split": split, "n": n, "network_sha1": net.sha1_})
    return stats
