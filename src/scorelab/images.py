"""Image grids: tensors in [-1, 1] ([B, C, H, W]) to PNG files."""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_tensor
from ._io import atomic_path


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float → uint8 [B, H, W, C]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile [B, C, H, W] images into one uint8 array [H', W', C] with `padding` pixels of white between."""
    check_tensor(x, name="images", min_ndim=4, finite=False)
    b, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels; got shape {tuple(x.shape)}")
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol = math.ceil(b / nrow)
    imgs = to_uint8(x)
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, np.uint8)
    for k in range(b):
        r, q = divmod(k, nrow)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = imgs[k]
    return grid


def add_title(img, title: str, size: int = 12):
    """`img` (a PIL image) below a white band holding `title` in black; the canvas widens (grid centred) when the
    title is wider than the image."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), title, font=font)
    margin = max(2, size // 3)
    band = bottom + 2 * margin
    width = max(img.width, right - left + 2 * margin)
    canvas = Image.new(img.mode, (width, img.height + band), 255 if img.mode == "L" else (255, 255, 255))
    canvas.paste(img, ((width - img.width) // 2, band))
    ImageDraw.Draw(canvas).text(((width - (right - left)) // 2 - left, margin), title, fill=0 if img.mode == "L"
                                else (0, 0, 0), font=font)
    return canvas


def save_grid(x: torch.Tensor, path, nrow: int | None = None, padding: int = 2, scale: int = 1,
              title: str | None = None) -> None:
    """Write a PNG grid of images in [-1, 1], atomically; `scale` enlarges pixels (nearest); `title` is drawn in a
    band above the grid."""
    from PIL import Image

    grid = make_grid(x, nrow=nrow, padding=padding)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if title:
        img = add_title(img, title)
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")


def save_scatter(points: torch.Tensor, path, title: str = "", reference: torch.Tensor | None = None) -> None:
    """2-D samples as a scatter PNG (for toy data), optionally over reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
    p = points.detach().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=3, c="C0", label="samples")
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
