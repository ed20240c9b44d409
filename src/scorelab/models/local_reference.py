"""Slow, obviously-correct loop implementations of the local denoisers in `local.py`.

One Python iteration per output pixel (as in the public reference code of the papers); patches are built
offset by offset. Used by the tests (float64, tiny images) and by bench/local.py as the speed baseline.
"""
from __future__ import annotations

import torch


def _sigmas(sigma, n):
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    return [float(v) for v in (s.expand(n) if s.numel() == 1 else s)]


def patch_at(images: torch.Tensor, i: int, j: int, p: int, border: str) -> torch.Tensor:
    """The P×P patch centred on (i, j) of every image [N, C, H, W] → [N, C·P·P] (channel, row, column order)."""
    n, c, h, w = images.shape
    r = p // 2
    cols = []
    for ch in range(c):
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                u, v = i + di, j + dj
                if border == "circular":
                    cols.append(images[:, ch, u % h, v % w])
                elif 0 <= u < h and 0 <= v < w:
                    cols.append(images[:, ch, u, v])
                else:
                    cols.append(images.new_zeros(n))
    return torch.stack(cols, dim=1)


def padding_pattern(i, j, p, h, w):
    """How many patch rows fall above/below the image and columns left/right of it."""
    r = p // 2
    return max(0, r - i), max(0, i + r - h + 1), max(0, r - j), max(0, j + r - w + 1)


def positions(h, w, p, border):
    if border == "valid":
        r = p // 2
        return [(i, j) for i in range(r, h - r) for j in range(r, w - r)]
    return [(i, j) for i in range(h) for j in range(w)]


def _pool(train, pos, here, p, h, w, equivariant, border, cache):
    """Training patches that pixel/patch `here` is compared with (pools are built once and cached)."""
    if not equivariant:
        return train[here]
    key = padding_pattern(*here, p, h, w) if border == "zero" else "all"
    if key not in cache:
        cache[key] = torch.cat([train[q] for q in pos if key == "all" or padding_pattern(*q, p, h, w) == key])
    return cache[key]


def _posterior(pool, query, sigma):
    d2 = ((pool - query) ** 2).sum(1)
    w = torch.softmax(-d2 / (2 * sigma ** 2), dim=0)
    return w @ pool


def els_loop(data, x, sigma, patch_size, *, equivariant=True, border="circular"):
    """D(x)_p = Σ_φ softmax(−‖x_Ω_p − φ‖²/2σ²) φ_centre, one pixel at a time."""
    b, c, h, w = x.shape
    p, r = patch_size, patch_size // 2
    pos = positions(h, w, p, border)
    train = {q: patch_at(data, *q, p, border) for q in pos}
    centre = [ch * p * p + r * p + r for ch in range(c)]
    out, cache = torch.empty_like(x), {}
    for k, s in enumerate(_sigmas(sigma, b)):
        for (i, j) in pos:
            query = patch_at(x[k:k + 1], i, j, p, border)[0]
            pool = _pool(train, pos, (i, j), p, h, w, equivariant, border, cache)
            out[k, :, i, j] = _posterior(pool, query, s)[centre]
    return out


def pspc_loop(data, x, sigma, patch_size, *, equivariant=True, border="circular"):
    """Posterior mean of every patch, then each pixel = the mean of the predictions of the patches covering it."""
    b, c, h, w = x.shape
    p, r = patch_size, patch_size // 2
    pos = positions(h, w, p, border)
    train = {q: patch_at(data, *q, p, border) for q in pos}
    out, cache = torch.zeros_like(x), {}
    for k, s in enumerate(_sigmas(sigma, b)):
        total = torch.zeros(c, h, w, dtype=x.dtype)
        count = torch.zeros(c, h, w, dtype=x.dtype)
        for (i, j) in pos:
            query = patch_at(x[k:k + 1], i, j, p, border)[0]
            pred = _posterior(_pool(train, pos, (i, j), p, h, w, equivariant, border, cache), query, s).reshape(c, p, p)
            for di in range(-r, r + 1):
                for dj in range(-r, r + 1):
                    u, v = i + di, j + dj
                    if border == "circular":
                        u, v = u % h, v % w
                    elif not (0 <= u < h and 0 <= v < w):
                        continue
                    total[:, u, v] += pred[:, di + r, dj + r]
                    count[:, u, v] += 1
        out[k] = total / count
    return out


def masked_empirical_loop(data, x, sigma, masks):
    """D(x)_p = Σ_n softmax_n(−Σ_{q ∈ mask_p} (x_q − x_n[q])² / 2σ²) x_n[p] on flattened images; masks [d, d]."""
    flat, xf = data.reshape(data.shape[0], -1), x.reshape(x.shape[0], -1)
    out = torch.empty_like(xf)
    for k, s in enumerate(_sigmas(sigma, x.shape[0])):
        for p in range(xf.shape[1]):
            nb = torch.nonzero(masks[p]).flatten()
            d2 = ((flat[:, nb] - xf[k, nb]) ** 2).sum(1)
            out[k, p] = torch.softmax(-d2 / (2 * s ** 2), 0) @ flat[:, p]
    return out.reshape(x.shape)


def empirical_brute(data, x, sigma):
    """The exact empirical denoiser Σ_n softmax_n(−‖x − x_n‖²/2σ²) x_n."""
    flat, xf = data.reshape(data.shape[0], -1), x.reshape(x.shape[0], -1)
    out = torch.stack([torch.softmax(-((flat - xf[k]) ** 2).sum(1) / (2 * s ** 2), 0) @ flat
                       for k, s in enumerate(_sigmas(sigma, x.shape[0]))])
    return out.reshape(x.shape)
