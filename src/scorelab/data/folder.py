"""A folder of PNG/JPEG images (searched recursively, sorted paths) → uint8 [N, C, H, W].

`size=s` or `(h, w)`: centre-crop to the target aspect ratio (a square for an int), then resize with PIL's
bilinear filter, which antialiases when shrinking. Labels are the sorted names of the first-level sub-folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg")


def image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively, hidden files and folders skipped, in sorted (reproducible) order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def folder_classes(root) -> list[str]:
    """Class names of a labelled image folder: its sub-folders holding images, sorted; label k = classes[k]."""
    root = Path(root)
    return sorted({f.relative_to(root).parts[0] for f in image_files(root) if len(f.relative_to(root).parts) > 1})


def check_size(size):
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size must be a positive int or a pair (height, width) of positive ints; got {size!r}")
    return int(size[0]), int(size[1])


def _centre_crop_resize(img, size):
    """Crop the largest centred box with the aspect ratio h:w, then resize it to (h, w) bilinearly."""
    from PIL import Image

    h, w = size
    W, H = img.size
    if W * h > H * w:                         # too wide: crop width
        cw, ch = H * w / h, H
    else:                                     # too tall: crop height
        cw, ch = W, W * h / w
    left, top = round((W - cw) / 2), round((H - ch) / 2)
    img = img.crop((left, top, left + round(cw), top + round(ch)))   # crop first: no pixel outside the box leaks in
    return img.resize((w, h), Image.BILINEAR)


def load_folder(path, split: str = "train", *, labels: bool = False, size=None, mode: str = "RGB", limit=None):
    """(images uint8 [N, C, H, W], labels int64 [N] or None) from the image files under `path`.

    If `path/<split>` is a folder it is used (ImageFolder train/test layout); otherwise split must be "train".
    Without `size=`, every image must already have the same size. C = 3 for mode "RGB", 1 for "L"."""
    from PIL import Image, UnidentifiedImageError

    root = Path(os.fspath(path))
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    if (root / split).is_dir():
        root = root / split
    elif split != "train":
        raise ValueError(f"split {split!r} is not available: {str(root)!r} has no {split}/ sub-folder")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
    size = check_size(size)
    files = image_files(root)
    if not files:
        raise ValueError(f"image folder {str(root)!r} holds no {'/'.join(e[1:] for e in EXTENSIONS)} files")
    y = None
    if labels:
        parts = [f.relative_to(root).parts for f in files]
        loose = [f for f, p in zip(files, parts) if len(p) == 1]
        if loose:
            raise ValueError(f"labels=True needs every image inside a class sub-folder of {str(root)!r}; "
                             f"{str(loose[0])!r} is not")
        classes = sorted({p[0] for p in parts})
        y = np.array([classes.index(p[0]) for p in parts], dtype=np.int64)
    if limit is not None:
        files = files[:limit]
        y = y[:limit] if y is not None else None
    out = None
    from .._io import progress_bar

    for k, f in enumerate(progress_bar(files, desc="images", unit="img", enabled=len(files) >= 2000)):
        try:
            with Image.open(f) as img:
                img.load()
                img = img.convert(mode)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"image {str(f)!r} is corrupt or unreadable ({e})") from None
        if size is not None:
            img = _centre_crop_resize(img, size)
        a = np.asarray(img, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(files), *a.shape), np.uint8)
        elif a.shape != out.shape[1:]:
            raise ValueError(f"image {str(f)!r} has size {a.shape[2]}x{a.shape[1]} but {str(files[0])!r} has "
                             f"{out.shape[3]}x{out.shape[2]}; pass size= to resize all images")
        out[k] = a
    return out, y
