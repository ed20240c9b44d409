"""Local and patch-based analytic denoisers: ELS / LS, PSPC and the Wiener locality model.

All three are posterior means under an empirical prior restricted to *neighbourhoods*: each output pixel
(or patch) only sees part of x, and the prior is the set of training patches with that shape. With
x_σ = x0 + σ·ε the weights are w_φ ∝ exp(−‖x_Ω − φ‖² / 2σ²). They are computed with one GEMM per chunk
of training patches (‖x_Ω − φ‖² = ‖x_Ω‖² − 2⟨x_Ω, φ⟩ + ‖φ‖², the ‖x_Ω‖² term cancels in the softmax) and
an exact running-max log-sum-exp (skipped when the patch norms bound the logits, see stream_posterior_mean),
so memory is bounded by `chunk_size`, never by the number of patches.

- ELS: Kamb & Ganguli, "An analytic theory of creativity in convolutional diffusion models" (2024).
- PSPC: Niedoba et al., "Towards a mechanistic explanation of diffusion model generalization" (2025).
- Wiener / locality masks (local_wiener.py): Lukoianov et al., "Locality in image diffusion models emerges from data
  statistics" (2025).
"""
from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import torch

from .._checks import check_data, check_positive_int, check_tensor, sigma_view
from .._io import load_state, save_state
from .empirical import random_subset
from .local_wiener import Wiener  # the Wiener locality model lives beside this file; importable from here too
from .softmax import DEFAULT_CHUNK, SoftmaxSums

__all__ = ["ELS", "PSPC", "Wiener", "PatchSchedule", "patch_index", "position_classes", "stream_posterior_mean"]

DEFAULT_BANK = 2 ** 25   # largest de-duplicated patch bank kept in memory (elements; 256 MB in float64)


# ----------------------------------------------------------------------------------------------------------
# patch-size schedule

class PatchSchedule:
    """Patch size as a function of σ.

    `spec` is an odd int (one size for every σ), a callable σ → odd int, or thresholds: a dict
    {σ_threshold: size} or a list of (σ_threshold, size) pairs. With thresholds t_1 < … < t_k, σ gets the
    size of the largest t_j ≤ σ (the first entry's size below t_1). `calibrate_patch_size` writes such lists.
    """

    def __init__(self, spec, *, name: str = "patch_size"):
        self.name = name
        if isinstance(spec, PatchSchedule):
            spec = spec.spec
        if callable(spec):
            self.kind, self.spec = "callable", spec
            return
        if isinstance(spec, Real) and not isinstance(spec, bool):
            self.kind, self.spec = "int", self._size(spec)
            return
        if isinstance(spec, str):
            spec = self.parse(spec, name=name).spec
            if isinstance(spec, int):
                self.kind, self.spec = "int", spec
                return
        pairs = list(spec.items()) if isinstance(spec, dict) else spec
        try:
            pairs = [(float(t), self._size(p)) for t, p in pairs]
        except (TypeError, ValueError) as e:
            if isinstance(e, ValueError) and "odd" in str(e):
                raise
            raise TypeError(f"{name} must be an odd int, a callable sigma -> int, a dict {{sigma: size}} or a "
                            f"list of (sigma, size) pairs; got {spec!r}") from None
        if not pairs:
            raise ValueError(f"{name} schedule must have at least one (sigma, size) entry")
        if any(not (math.isfinite(t) and t >= 0) for t, _ in pairs):
            raise ValueError(f"{name} thresholds must be finite and >= 0; got {pairs}")
        pairs.sort()
        if any(a[0] == b[0] for a, b in zip(pairs, pairs[1:])):
            raise ValueError(f"{name} thresholds must be distinct; got {pairs}")
        self.kind, self.spec = "steps", pairs

    def _size(self, p) -> int:
        p = check_positive_int(p, name=self.name)
        if p % 2 == 0:
            raise ValueError(f"{self.name} must be odd (patches are centred on a pixel); got {p}")
        return p

    @classmethod
    def parse(cls, text: str, *, name: str = "patch_size") -> "PatchSchedule":
        """From the CLI: "5", "0:3,0.5:5,2:9" (σ_threshold:size pairs) or a JSON file from calibration."""
        text = str(text).strip()
        if Path(text).suffix == ".json":
            path = Path(text)
            if not path.is_file():
                raise FileNotFoundError(f"{name} file {text!r} does not exist")
            obj = json.loads(path.read_text())
            return cls(obj["schedule"] if isinstance(obj, dict) else obj, name=name)
        try:
            if ":" not in text:
                return cls(int(text), name=name)
            return cls([(float(a), int(b)) for a, b in (item.split(":") for item in text.split(","))], name=name)
        except ValueError as e:
            if "odd" in str(e) or ">=" in str(e):
                raise
            raise ValueError(f"{name} must be an odd int, 'sigma:size,sigma:size,...' or a .json file; "
                             f"got {text!r}") from None

    def __call__(self, sigma: float) -> int:
        if self.kind == "int":
            return self.spec
        if self.kind == "callable":
            return self._size(self.spec(float(sigma)))
        size = self.spec[0][1]
        for t, p in self.spec:
            if sigma >= t:
                size = p
        return size

    def sizes(self) -> list[int]:
        return [self.spec] if self.kind == "int" else [p for _, p in self.spec] if self.kind == "steps" else []

    def to_config(self):
        if self.kind == "callable":
            raise ValueError(f"a callable {self.name} cannot be saved; give an int or a list of (sigma, size) "
                             "pairs (e.g. the schedule returned by calibrate_patch_size)")
        return self.spec if self.kind == "int" else [list(p) for p in self.spec]

    def __repr__(self):
        return f"PatchSchedule({self.spec!r})"


# ----------------------------------------------------------------------------------------------------------
# patch geometry: one index map serves unfolding (gather) and overlap-average reconstruction (scatter)

BORDERS = ("circular", "zero", "valid")


def patch_index(height: int, width: int, patch: int, border: str) -> torch.Tensor:
    """[L, P²] flat pixel indices of the P×P patch at each position (row-major offsets); H·W marks a pixel
    outside the image (zero padding). circular: L = H·W, indices wrap; zero: L = H·W; valid: patches fully
    inside the image, L = (H−P+1)(W−P+1), positions are then the patch centres."""
    r = patch // 2
    if border == "valid":
        if patch > height or patch > width:
            raise ValueError(f"patch_size {patch} is larger than the {height}x{width} image (border='valid')")
        ci, cj = torch.arange(r, height - r), torch.arange(r, width - r)
    else:
        ci, cj = torch.arange(height), torch.arange(width)
    off = torch.arange(-r, r + 1)
    rows = ci[:, None] + off[None, :]            # [Li, P]
    cols = cj[:, None] + off[None, :]            # [Lj, P]
    if border == "circular":
        rows, cols = rows % height, cols % width
    ri = rows[:, None, :, None].expand(len(ci), len(cj), patch, patch)
    cj_ = cols[None, :, None, :].expand(len(ci), len(cj), patch, patch)
    inside = (ri >= 0) & (ri < height) & (cj_ >= 0) & (cj_ < width)
    flat = torch.where(inside, ri * width + cj_, torch.full_like(ri, height * width))
    return flat.reshape(len(ci) * len(cj), patch * patch)


def position_classes(height: int, width: int, patch: int, border: str) -> list[torch.Tensor]:
    """Positions that share a training-patch pool in the equivariant model. circular/valid: all positions;
    zero ("boundary-broken" ELS): positions whose patch has the same out-of-image mask (the same number of
    padded rows above/below and columns left/right), so interior pixels are exactly equivariant and border
    pixels only see patches from the same place relative to the border."""
    if border != "zero":
        n = height * width if border == "circular" else (height - patch + 1) * (width - patch + 1)
        return [torch.arange(n)]
    r = patch // 2
    i, j = torch.arange(height), torch.arange(width)
    ki = torch.stack([(r - i).clamp(min=0), (i + r - height + 1).clamp(min=0)], -1)   # padded rows above/below
    kj = torch.stack([(r - j).clamp(min=0), (j + r - width + 1).clamp(min=0)], -1)
    key = torch.cat([ki[:, None, :].expand(height, width, 2), kj[None, :, :].expand(height, width, 2)], -1)
    _, inverse = torch.unique(key.reshape(-1, 4), dim=0, return_inverse=True)
    return [torch.nonzero(inverse == c).flatten() for c in range(int(inverse.max()) + 1)]


def gather_patches(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W], index [L, P²] → patches [B, L, C·P²] (channel-major), zeros outside the image."""
    b, c = x.shape[:2]
    flat = torch.cat([x.reshape(b, c, -1), x.new_zeros(b, c, 1)], dim=-1)
    return flat[:, :, index].permute(0, 2, 1, 3).reshape(b, index.shape[0], -1)


def scatter_mean(patches: torch.Tensor, index: torch.Tensor, shape) -> torch.Tensor:
    """Overlap-average reconstruction: patches [B, L, C·P²] → image [B, C, H, W], each pixel the mean of the
    patch predictions that cover it (padded pixels are dropped)."""
    c, h, w = shape
    b, n_pos, k = patches.shape[0], index.shape[0], index.shape[1]
    vals = patches.reshape(b, n_pos, c, k).permute(0, 2, 1, 3).reshape(b, c, -1)
    out = patches.new_zeros(b, c, h * w + 1).index_add_(2, index.reshape(-1), vals)
    count = torch.bincount(index.reshape(-1), minlength=h * w + 1).to(patches)
    return (out[..., :-1] / count[:-1]).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------------------
# the streamed posterior mean

_LOG_FLOOR = {torch.float64: -600.0, torch.float32: -60.0, torch.float16: -8.0, torch.bfloat16: -60.0}
LOG2E = 1.4426950408889634  # log₂ e: the logits are computed in base 2 (see stream_posterior_mean)
ROW_BLOCK = 256  # query rows per block: enough for an efficient GEMM, few enough that a chunk spans many patches


def augment(phi: torch.Tensor, log_count: torch.Tensor | None = None) -> torch.Tensor:
    """Training patches [G, M, D] → [G, M, D+2] = [φ, ‖φ‖², log multiplicity] (the GEMM side of the logits)."""
    lc = phi.new_zeros(*phi.shape[:-1], 1) if log_count is None else log_count[..., None].to(phi)
    return torch.cat([phi, (phi * phi).sum(-1, keepdim=True), lc], dim=-1)


def stream_posterior_mean(queries, inv_var, chunks, *, phi_bound=None) -> torch.Tensor:
    """Σ_m c_m e^{−‖q − φ_m‖²/2σ²} v_m / Σ_m c_m e^{−‖q − φ_m‖²/2σ²} for every query row, streamed over chunks.

    queries [G, R, D]; inv_var [G or 1, R] = 1/σ² per row; chunks: iterable of (augment(φ, log c) [G, M, D+2],
    v [G, M, K]) with multiplicities c (1 unless the bank was de-duplicated); v may be a transposed view
    (column-major: the faster layout for the second GEMM). The logits ℓ_m = ⟨q, φ_m⟩/σ² − ‖φ_m‖²/2σ² + log c_m
    (the row constant −‖q‖²/2σ² cancels) are one GEMM of log₂e·[q/σ², −1/2σ², 1] with the augmented patches,
    i.e. they come out in base 2, e^ℓ = 2^{ℓ·log₂e}, because torch's float64 exp2 is ~3× faster than exp.

    phi_bound = (max ‖φ_m‖, max log c_m) over all chunks, when known, bounds every logit:
    |ℓ_m| ≤ (‖q‖ + max ‖φ‖)²/2σ² + max log c, from 0 ≤ ‖q − φ‖² ≤ (‖q‖ + ‖φ‖)². When that is ≤ |floor| for
    every row (σ not small against the patch norms) the weights e^ℓ are used as they are: they can neither
    overflow nor be denormal, so each chunk is a GEMM, an exp2, a sum and a GEMM (`_unshifted`). Otherwise
    (`_running_max`) a running max keeps the log-sum-exp exact as σ → 0 and raises weights below e^floor of
    a row's largest to e^floor (floor = −600 in float64, −60 in float32). Returns [G, R, K]."""
    g, r, _ = queries.shape
    iv = inv_var.expand(g, r)[..., None]
    q_aug = torch.cat([queries * iv, -0.5 * iv, torch.ones_like(iv)], dim=-1).mul_(LOG2E)   # [G, R, D+2]
    floor = _LOG_FLOOR.get(queries.dtype, -60.0)
    if phi_bound is not None and queries.dtype in (torch.float32, torch.float64):  # half: M·e^|floor| overflows
        phi_norm, log_count = phi_bound
        max_logit = (queries.norm(dim=-1) + phi_norm).square_().mul_(iv[..., 0] / 2).add_(log_count)
        if float(max_logit.amax()) <= -floor:
            return _unshifted(q_aug, chunks)
    return _running_max(q_aug, chunks, floor * LOG2E)


def _unshifted(q_aug, chunks) -> torch.Tensor:
    """Σ_m 2^{ℓ_m} v_m / Σ_m 2^{ℓ_m} with the base-2 logits ℓ = q_aug · φ_aug, for logits known to lie within
    ±|floor| (in nats): no max, no shift, no rescaling. The weights are then normal numbers and the sums cannot
    overflow (float64: e^600·M·|v| < 1e308 for M·|v| < 1e47; float32: e^60·M·|v| < 3e38 for M·|v| < 3e12,
    and |v| ≤ max ‖φ‖ ≤ σ·√(2·60) there)."""
    acc = total = buf = None
    for phi_aug, val in chunks:
        buf, logits = _logits(q_aug, phi_aug, buf)
        w = logits.exp2_()
        s, part = w.sum(-1, keepdim=True), _matmul(w, val)                                # [G, R, 1], [G, R, K]
        acc, total = (part, s) if acc is None else (acc.add_(part), total.add_(s))
    return acc / total


def _running_max(q_aug, chunks, floor) -> torch.Tensor:
    """Σ_m 2^{ℓ_m − m} v_m / Σ_m 2^{ℓ_m − m} with m the running max of the base-2 logits ℓ = q_aug · φ_aug
    (`softmax.SoftmaxSums`): exact for any σ (no overflow as σ → 0, no row summing to zero). Weights below
    2^floor of a row's largest are raised to 2^floor, which keeps every product normal (denormal arithmetic is
    ~10× slower) and changes a row by at most M·2^floor relative (≤ 1e-17 in float32 for M ≤ 1e9)."""
    sums = buf = None
    for phi_aug, val in chunks:
        buf, logits = _logits(q_aug, phi_aug, buf)
        if sums is None:
            sums = SoftmaxSums.empty(logits.shape[:2], val.shape[2:], dtype=logits.dtype, device=logits.device,
                                     base2=True)
        w = sums.weights(logits, floor=floor)
        sums.add(w.sum(-1), _matmul(w, val))
    return sums.mean()


def _logits(q_aug, phi_aug, buf):
    """q_aug [G, R, D+2] · φ_augᵀ → [G, R, M], written into `buf` (grown when too small and returned with the
    logits): one buffer serves every chunk, so it stays in cache."""
    g, r, _ = q_aug.shape
    n = g * r * phi_aug.shape[1]
    if buf is None or buf.numel() < n:
        buf = q_aug.new_empty(n)
    return buf, _matmul(q_aug, phi_aug.transpose(1, 2), out=buf[:n].view(g, r, -1))


def _matmul(a, b, out=None):
    """Batched a @ b (into out); with one group a plain mm (bmm copies a transposed right operand, mm hands it
    to BLAS as is)."""
    if a.shape[0] == 1:
        return torch.mm(a[0], b[0], out=None if out is None else out[0])[None]
    return torch.bmm(a, b, out=out)


def _chunk_counts(g: int, rows: int, per_image: int, chunk_size: int) -> tuple[int, int]:
    """Rows per query block (≤ ROW_BLOCK) and training images per chunk so that
    G·rows·images·per_image ≤ chunk_size."""
    per_image = max(per_image, 1)
    row_block = max(1, min(rows, ROW_BLOCK, chunk_size // (g * per_image)))
    images = max(1, chunk_size // (g * row_block * per_image))
    return row_block, images


# ----------------------------------------------------------------------------------------------------------
# shared machinery of ELS and PSPC

def _check_image_data(data, n_data, seed, name="data"):
    data = check_data(data, name=name)
    if data.ndim != 4:
        raise ValueError(f"{name} must be images [N, C, H, W]; got shape {tuple(data.shape)}")
    return random_subset(data, n_data, seed)


class _PatchPosterior:
    """Base of ELS and PSPC: data_, a patch schedule, border handling and the streamed computation."""

    kind = ""
    borders = BORDERS
    values = "center"  # which part of a training patch is averaged: its centre pixel or the whole patch

    def __init__(self, data, patch_size=3, *, equivariant: bool = True, border: str = "circular",
                 n_data: int | None = None, seed: int = 0, chunk_size: int = DEFAULT_CHUNK, dedup: bool = True,
                 bank_limit: int = DEFAULT_BANK, dtype=None, device=None):
        if border not in self.borders:
            raise ValueError(f"border must be one of {self.borders}; got {border!r}")
        if not isinstance(equivariant, bool):
            raise TypeError(f"equivariant must be True or False; got {equivariant!r}")
        self.schedule = PatchSchedule(patch_size)
        self.equivariant, self.border = equivariant, border
        self.chunk_size = check_positive_int(chunk_size, name="chunk_size")
        self.bank_limit = check_positive_int(bank_limit, name="bank_limit")
        self.dedup = bool(dedup)
        self.n_data, self.seed = n_data, seed
        data = _check_image_data(data, n_data, seed)
        self.data_ = data.to(device=device, dtype=dtype if dtype is not None else data.dtype)
        self._cache = {}  # patch geometry per size and de-duplicated banks per (size, pool)
        for p in self.schedule.sizes():
            self._geometry(p)  # validates sizes against the image (border='valid')

    @classmethod
    def fit(cls, data, patch_size=3, **kwargs):
        """Same as the constructor (the model is non-parametric: the fitted state is the data)."""
        return cls(data, patch_size, **kwargs)

    @property
    def shape(self) -> tuple:
        return tuple(self.data_.shape[1:])

    shape_ = shape  # read by sl.sample for the sample shape

    @property
    def patch_size(self):
        return self.schedule.spec

    def _geometry(self, p):
        key = (p, self.border)
        if key not in self._cache:
            _, h, w = self.shape
            idx = patch_index(h, w, p, self.border)
            classes = position_classes(h, w, p, self.border) if self.equivariant else None
            self._cache[key] = (idx.to(self.data_.device), classes)
        return self._cache[key]

    # --- the denoiser
    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        check_tensor(x, name="x", min_ndim=4)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.shape))}]; got {tuple(x.shape)}")
        s = sigma_view(sigma, x).reshape(-1).expand(x.shape[0])
        xd = x.to(self.data_)
        out = xd.clone()  # σ = 0: the observation is clean, D(x, 0) = x
        sizes = {}
        for v in torch.unique(s).tolist():
            if v > 0:
                sizes.setdefault(self.schedule(v), []).append(v)
        for p, vals in sizes.items():
            sel = torch.isin(s, torch.tensor(vals, dtype=s.dtype, device=s.device))
            out[sel] = self._denoise(xd[sel], s[sel].to(self.data_), p)
        return out.to(x.dtype)

    def _denoise(self, x, s, p):
        idx, classes = self._geometry(p)
        q = gather_patches(x, idx)                                   # [B, L, D]
        b, n_pos, _ = q.shape
        inv_var = 1.0 / s ** 2                                       # [B]
        if self.equivariant:
            k = self._value_width(p)
            out = q.new_empty(b, n_pos, k)
            for c, pos in enumerate(classes):
                res = self._run(q[:, pos].reshape(1, -1, q.shape[-1]),
                                inv_var.repeat_interleave(len(pos))[None], idx[pos], p, grouped=False, pool=c)
                out[:, pos] = res.reshape(b, len(pos), k)
        else:
            out = self._run(q.transpose(0, 1), inv_var[None], idx, p, grouped=True).transpose(0, 1)
        return self._assemble(out, idx, p)

    def _run(self, queries, inv_var, idx, p, *, grouped, pool=None):
        """Row-blocked, chunk-streamed posterior mean of the patch values for one pool of positions."""
        g, rows, _ = queries.shape
        center = self._value_columns(p)
        bank = self._location_bank(idx, p) if grouped else self._bank(idx, p, pool)
        if bank is not None:
            phi_aug, values, phi_bound = bank
            row_block, per = _chunk_counts(g, rows, 1, self.chunk_size)

            def chunks():
                for a in range(0, phi_aug.shape[1], per):
                    yield phi_aug[:, a:a + per], values[:, a:a + per]
        else:
            row_block, n_img = _chunk_counts(g, rows, 1 if grouped else idx.shape[0], self.chunk_size)
            phi_bound = (self._max_abs() * math.sqrt(queries.shape[-1]), 0.0)  # ‖φ‖ ≤ √D·max|x|, c = 1

            def chunks():
                for a in range(0, self.data_.shape[0], n_img):
                    phi = gather_patches(self.data_[a:a + n_img], idx)  # [n, L', D]
                    phi = phi.transpose(0, 1) if grouped else phi.reshape(1, -1, phi.shape[-1])
                    yield augment(phi), (phi if center is None else phi[..., center])

        parts = []
        for r0 in range(0, rows, row_block):
            parts.append(stream_posterior_mean(queries[:, r0:r0 + row_block], inv_var[:, r0:r0 + row_block],
                                               chunks(), phi_bound=phi_bound))
        return torch.cat(parts, dim=1)

    def _max_abs(self) -> float:
        """max |x| over the training data (cached): bounds the norm of every training patch."""
        if "max_abs" not in self._cache:
            self._cache["max_abs"] = float(self.data_.abs().amax())
        return self._cache["max_abs"]

    def _location_bank(self, idx, p):
        """LS: the training patches at each location, unfolded once and cached under the same conditions as
        `_bank` (no de-duplication: every location keeps its own N patches, so the groups stay batched):
        (augment(φ) [L, N, D+2], values [L, N, K], (max ‖φ‖, 0))."""
        n_el = self.data_.shape[0] * idx.shape[0] * (idx.shape[1] * self.shape[0] + 2)
        if not self.dedup or n_el > self.bank_limit:
            return None
        key = ("locations", p, self.border)
        if key not in self._cache:
            phi = gather_patches(self.data_, idx).transpose(0, 1)                  # [L, N, D]
            center = self._value_columns(p)
            phi_aug = augment(phi)
            self._cache[key] = (phi_aug, (phi if center is None else phi[..., center]).contiguous(),
                                (float(phi_aug[..., -2].amax().sqrt()), 0.0))
        return self._cache[key]

    def _bank(self, idx, p, pool):
        """The pool's distinct training patches with their multiplicities (exact: a patch seen c times enters the
        softmax with weight c), built once per (size, class) when it holds at most `bank_limit` elements:
        (augment(φ, log c) [1, M, D+2], values [1, M, K], (max ‖φ‖, max log c)). The values are kept
        column-major: chunks of them are the right operand of the second GEMM, which MKL runs up to 1.5× faster
        in that layout than row-major for K = 25 (a 5×5 patch)."""
        n_el = self.data_.shape[0] * idx.shape[0] * (idx.shape[1] * self.shape[0] + 2)
        if not self.dedup or n_el > self.bank_limit:
            return None
        key = ("bank", p, self.border, pool)
        if key not in self._cache:
            phi = gather_patches(self.data_, idx).reshape(-1, idx.shape[1] * self.shape[0])
            uniq, counts = torch.unique(phi, dim=0, return_counts=True)
            center = self._value_columns(p)
            values = uniq if center is None else uniq[:, center]
            phi_aug = augment(uniq[None], counts.to(uniq).log()[None])
            phi_bound = (float(phi_aug[..., -2].amax().sqrt()), float(phi_aug[..., -1].amax()))
            self._cache[key] = (phi_aug, values.T.contiguous().T[None], phi_bound)
        return self._cache[key]

    def _value_columns(self, p):
        if self.values == "patch":
            return None
        c, r = self.shape[0], p // 2
        return [ch * p * p + r * p + r for ch in range(c)]

    def _value_width(self, p):
        return self.shape[0] * p * p if self.values == "patch" else self.shape[0]

    def _assemble(self, out, idx, p):
        raise NotImplementedError

    # --- conveniences
    def score(self, x, sigma):
        """(D(x, σ) − x) / σ²."""
        return (self(x, sigma) - x) / sigma_view(sigma, x, allow_zero=False) ** 2

    def with_patch_size(self, patch_size):
        """A copy sharing data_ with another patch size or schedule (used by calibrate_patch_size)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.schedule = PatchSchedule(patch_size)
        new._cache = dict(self._cache)
        for p in new.schedule.sizes():
            new._geometry(p)
        return new

    def to(self, device=None, dtype=None):
        new = self.with_patch_size(self.schedule)
        new.data_ = self.data_.to(device=device, dtype=dtype)
        new._cache = {}
        return new

    def _config(self):
        return dict(patch_size=self.schedule.to_config(), equivariant=self.equivariant, border=self.border,
                    n_data=self.n_data, seed=self.seed, chunk_size=self.chunk_size, dedup=self.dedup,
                    bank_limit=self.bank_limit)

    def save(self, path) -> None:
        save_state(path, {"data": self.data_}, kind=self.kind, config=self._config())

    @classmethod
    def load(cls, path, device=None):
        tensors, _, cfg = load_state(path, kind=cls.kind, device=device)
        ps = cfg["patch_size"]
        ps = ps if isinstance(ps, int) else [tuple(t) for t in ps]
        return cls(tensors["data"], ps, equivariant=cfg["equivariant"], border=cfg["border"],
                   chunk_size=cfg["chunk_size"], seed=cfg.get("seed", 0), dedup=cfg.get("dedup", True),
                   bank_limit=cfg.get("bank_limit", DEFAULT_BANK))._restore(cfg)

    def _restore(self, cfg):
        self.n_data = cfg.get("n_data")
        return self

    def __repr__(self):
        return (f"{type(self).__name__}(n={self.data_.shape[0]}, shape={self.shape}, patch_size="
                f"{self.schedule.spec!r}, equivariant={self.equivariant}, border={self.border!r})")


class ELS(_PatchPosterior):
    """(Equivariant) local score machine (Kamb & Ganguli 2024).

    D(x, σ)_p = Σ_φ w_φ φ_centre,  w_φ ∝ exp(−‖x_{Ω_p} − φ‖² / 2σ²),
    Ω_p the P×P patch around pixel p. ELS (`equivariant=True`): φ ranges over the training patches at every
    location; LS (`equivariant=False`): only at p's location. `border="circular"` wraps around (exactly
    translation-equivariant); `border="zero"` zero-pads and, in the equivariant model, breaks equivariance at
    the border: a pixel whose patch leaves the image sees only training patches with the same padding.
    `patch_size`: odd int, callable σ → int, or {σ_threshold: size}. `n_data`: random subset of the data
    (cost ∝ n_data · (H·W)² · P² per image). Patch = the full image (LS, or border="zero" with P ≥ 2H−1)
    is the empirical denoiser. `ELS.fit(data, patch_size, ...)` is the same as the constructor.
    """

    kind = "els"
    borders = ("circular", "zero")
    values = "center"

    def _assemble(self, out, idx, p):
        c, h, w = self.shape
        return out.transpose(1, 2).reshape(out.shape[0], c, h, w)


class PSPC(_PatchPosterior):
    """Patch-set posterior composite (Niedoba et al. 2025): patch posterior means, overlap-averaged.

    For every P×P patch Ω of x: E[φ | x_Ω] = Σ_φ w_φ φ,  w_φ ∝ exp(−‖x_Ω − φ‖² / 2σ²), φ over the training
    patches (every location if `equivariant`, else Ω's own location); D(x, σ)_p = mean over the patches Ω ∋ p
    of E[φ | x_Ω] at p. `border`: "circular" (wrap), "zero" (zero-padded, boundary-broken pools as in ELS)
    or "valid" (only patches inside the image). Patch = full image with border="valid" is the empirical
    denoiser. `PSPC.fit(data, patch_size, ...)` is the same as the constructor.
    """

    kind = "pspc"
    borders = BORDERS
    values = "patch"

    def _assemble(self, out, idx, p):
        return scatter_mean(out, idx, self.shape)
