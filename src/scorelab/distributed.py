"""Scale-out on `torch.distributed`: the same calls give the same answers on any number of processes.

Launch with torchrun (one process per core or per GPU); every process runs the same script or command:

    torchrun --nproc-per-node 2 -m scorelab sample --model m.safetensors --num-samples 50000 --save-samples x.npy

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and starts a
process group: gloo on CPU, NCCL when rank r has a GPU (it then uses GPU LOCAL_RANK). In a single process
(no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op and the functions return what the single-process
library returns.

- Sampling (`sample`): the run's batches of `batch_size` consecutive indices are dealt out round-robin (rank r
  runs batches r, r+W, ...). Sample i depends only on (seed, i) (`scorelab.noise`) and every batch holds the
  same indices as in a single-process run, so the images are bit-identical for any world size. Each finished
  batch is written atomically to `<out>.parts-<key>/`; rank 0 assembles `out` once all parts exist; a rerun
  skips the batches already written (resume).
- Statistics (`feature_stats`): float64 Σf and Σfᵀf per rank, one `all_reduce`, the FID statistics (μ, Σ);
  features are computed per rank over blocks of rows dealt round-robin (`map_rows`, optionally gathered for
  KID and precision/recall, which need every feature).
- The exact empirical denoiser and its nearest-neighbour estimator over data sharded across ranks:
  `scorelab.ShardedEmpirical`, `scorelab.ShardedKNN` (`models/sharded.py`), combined with `reduce_softmax`.
- Failures: every collective waits at most the timeout; a lost rank raises `RankLost` (a ConnectionError).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._collectives import (DEFAULT_TIMEOUT, RankLost, all_gather, all_reduce, barrier, block, blocks, close, init,
                           is_distributed, local_rank, map_rows, rank, reduce_softmax, shard, world_size)
from ._collectives import _collective, _collective_device, _dist  # noqa: F401  (used by tests and helpers)

__all__ = ["init", "close", "rank", "world_size", "local_rank", "is_distributed", "barrier", "shard", "block",
           "blocks", "map_rows", "all_reduce", "all_gather", "reduce_softmax", "RankLost", "feature_stats",
           "reference_stats", "sample", "DistributedSample", "DEFAULT_TIMEOUT"]


def feature_stats(feats: torch.Tensor):
    """FID statistics (μ, unbiased Σ in float64, n) of the features of all ranks together, each rank passing its
    own features [N_r, D] (N_r may be 0): float64 Σf and Σfᵀf per rank, around a common shift (rank 0's first
    rows' mean, broadcast), reduced with one all_reduce. Equals `metrics.stats.feature_stats` of the
    concatenated features; in a single process it is that function."""
    from .metrics.stats import FeatureStats, check_features, feature_stats as local_stats

    if not is_distributed():
        return local_stats(feats)
    feats = check_features(feats, name="features", min_samples=0)
    n_r, d = feats.shape
    f64 = feats.to(torch.float64)
    # shift: the mean of the first rows of the lowest rank holding any (keeps Σ's digits when ‖μ‖ ≫ spread)
    head = f64[:4096].mean(0) if n_r else torch.zeros(d, dtype=torch.float64, device=feats.device)
    have = all_reduce(torch.tensor([float(n_r > 0) * (world_size() - rank())], dtype=torch.float64), "max")
    first = world_size() - int(have.item())
    shift = all_reduce(head if rank() == first else torch.zeros_like(head), "sum")
    c = f64 - shift
    packed = torch.cat([torch.tensor([float(n_r)], dtype=torch.float64, device=feats.device), c.sum(0),
                        (c.T @ c).reshape(-1)])
    packed = all_reduce(packed, "sum")
    n = int(packed[0].item())
    if n < 2:
        raise ValueError(f"features has {n} sample(s) over all ranks; this statistic needs at least 2")
    s, ss = packed[1:1 + d], packed[1 + d:].reshape(d, d)
    mu = shift + s / n
    sigma = (ss - torch.outer(s, s) / n) / (n - 1)
    return FeatureStats(mu, (sigma + sigma.T) / 2, n)


def reference_stats(name: str = "fashion-mnist", split: str = "test", n: int | None = None, *, batch_size: int = 16,
                    device=None, progress: bool = True):
    """`metrics.stats.reference_stats` over all ranks: the Inception features of each rank's blocks of `BLOCK`
    images (the feature cache's blocks, so cached features are shared with single-process runs), (μ, Σ)
    all-reduced, the statistics file written once by rank 0 (every rank returns them). The cached file is the
    single-process one: either run reuses the other's. In a single process it is that function."""
    from ._io import load_state, save_state
    from .metrics.inception import default_extractor
    from .metrics.stats import BLOCK, FeatureStats, _load_reference, _stats_path, cached_image_features
    from .metrics.stats import reference_stats as local_stats

    if not is_distributed():
        return local_stats(name, split, n, batch_size=batch_size, device=device, progress=progress)
    net = default_extractor(device, batch_size)
    images = _load_reference(name, split, n)
    n = int(images.shape[0])
    path = _stats_path(name, split, n, net.sha1_)
    everywhere = all_reduce(torch.tensor([float(path.is_file())], dtype=torch.float64), "sum")
    if int(everywhere.item()) == world_size():   # every rank sees the cached file (one decision for all)
        t, _, cfg = load_state(path, kind="reference-stats")
        return FeatureStats(t["mu"], t["sigma"], int(cfg["n"]))
    feats = map_rows(lambda b: cached_image_features(b, batch_size=batch_size, device=device, progress=False),
                     images, size=BLOCK)
    stats = feature_stats(feats)
    if rank() == 0:
        save_state(path, {"mu": stats.mu, "sigma": stats.sigma}, kind="reference-stats",
                   config={"data": str(name), "split": split, "n": n, "network_sha1": net.sha1_})
    barrier()
    return stats


# ----------------------------------------------------------------------------------------------------------
# sampling


@dataclass
class DistributedSample:
    """What `sample()` returns on every rank. `images`: all n images on rank 0 (None elsewhere); `path`: the
    assembled .npy; `shares`: the number of samples each rank is assigned; `resumed`: batches found already
    written; `nfe`: denoiser evaluations per trajectory (as `SampleResult.nfe`)."""

    path: Path
    images: torch.Tensor | None
    world_size: int
    rank: int
    shares: list = field(default_factory=list)
    batches: int = 0
    resumed: int = 0
    nfe: int = 0
    network_nfe: int | None = None
    seconds: float = 0.0
    result: object = None   # rank 0: a SampleResult of the whole run (all images); elsewhere this rank's last


def _run_key(n, seed, batch_size, kwargs) -> str:
    """A short hash of what determines the images (besides the denoiser), naming the folder of parts."""
    def plain(v):
        if isinstance(v, torch.Tensor):
            return hashlib.sha1(v.detach().cpu().double().numpy().tobytes()).hexdigest()
        if isinstance(v, (int, float, str, bool, type(None))):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(u) for u in v]
        if isinstance(v, dict):
            return {str(k): plain(u) for k, u in sorted(v.items())}
        if isinstance(v, (torch.dtype, torch.device)):
            return str(v)
        return getattr(v, "__name__", type(v).__name__)
    shown = {k: plain(v) for k, v in sorted(kwargs.items()) if k not in ("progress", "callback")}   # no effect
    text = json.dumps(dict(n=n, seed=seed, batch_size=batch_size, **shown), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _read_part(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def _slice_args(args, n, idx):
    """Per-sample tensors (first dimension n) of extra_args taken at the rows `idx`; the rest unchanged."""
    if not args:
        return args
    return {k: v[torch.as_tensor(idx, dtype=torch.long, device=v.device)]
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n else v for k, v in args.items()}


def sample(denoiser, n: int, out, *, seed: int = 0, batch_size: int = 64, resume: bool = True,
           **kwargs) -> DistributedSample:
    """`scorelab.sample(denoiser, n, seed=seed, batch_size=batch_size, **kwargs)` over all ranks, written to `out`.

    The run's batches [b·B, (b+1)·B) are dealt out round-robin (rank r runs batches r, r+W, ...); each rank samples
    its batches with `scorelab.sample(..., indices=...)`, so every image is bit-identical to the single-process
    run's, whatever the world size. Every finished batch is written atomically to `<out>.parts-<key>/` (key: a
    hash of n, seed, batch_size and the options); once all batches exist rank 0 writes `out` (a float .npy
    [n, *shape], atomically) and removes the parts. With `resume=True` a rerun skips the batches already written
    (the model must be the same: the key does not cover the denoiser's weights). `kwargs`: any `sample()` option;
    per-sample `extra_args`/`teleport_args` tensors of length n are sliced per batch. Works in a single process
    too (then it is `sample()` with resumable output)."""
    from ._checks import check_positive_int
    from ._io import atomic_path
    from .sample import sample as sample_one

    t0 = time.perf_counter()
    n = check_positive_int(n, name="n")
    batch_size = check_positive_int(batch_size, name="batch_size")
    if "indices" in kwargs:
        raise TypeError("indices is chosen by distributed.sample (each rank's batches); do not pass it")
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"out must be a .npy path; got {str(out)!r}")
    r, w = rank(), world_size()
    parts = out.parent / f"{out.name}.parts-{_run_key(n, seed, batch_size, kwargs)}"
    n_batches = math.ceil(n / batch_size)
    mine = shard(range(n_batches))
    resumed, last, nfe, network_nfe = 0, None, 0, 0
    for b in mine:   # a rank that dies leaves its finished batches (atomic files) for the rerun; no `out` yet
        part = parts / f"{b:07d}.npy"
        idx = list(range(b * batch_size, min(n, (b + 1) * batch_size)))
        if resume and part.is_file():
            arr = _read_part(part)
            if arr is not None and arr.shape[0] == len(idx):
                resumed += 1
                continue
        opts = dict(kwargs)
        for key in ("extra_args", "teleport_args"):
            if opts.get(key):
                opts[key] = _slice_args(opts[key], n, idx)
        last = sample_one(denoiser, n=len(idx), seed=seed, batch_size=batch_size, indices=idx, **opts)
        nfe = max(nfe, last.nfe)
        network_nfe = max(network_nfe, last.network_nfe if last.network_nfe is not None else last.nfe)
        with atomic_path(part, ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, last.images.detach().cpu().numpy())
    counts = all_reduce(torch.tensor([nfe, network_nfe], dtype=torch.float64), "max")
    barrier()
    images = None
    if r == 0:
        missing = [b for b in range(n_batches) if not (parts / f"{b:07d}.npy").is_file()]
        if missing:
            raise RuntimeError(f"{len(missing)} batch file(s) missing under {str(parts)!r} (first: {missing[0]})")
        arrays = []
        for b in range(n_batches):
            arr = _read_part(parts / f"{b:07d}.npy")
            if arr is None:
                raise ValueError(f"batch file {str(parts / f'{b:07d}.npy')!r} is unreadable; delete it and rerun")
            arrays.append(arr)
        full = np.concatenate(arrays)
        with atomic_path(out, ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, full)
        shutil.rmtree(parts, ignore_errors=True)
        images = torch.from_numpy(full)
        if last is None:   # every batch of rank 0 was resumed: one sample for the run's description (grid, NFE)
            opts = {k: v for k, v in kwargs.items() if k not in ("extra_args", "teleport_args")}
            for key in ("extra_args", "teleport_args"):
                if kwargs.get(key):
                    opts[key] = _slice_args(kwargs[key], n, [0])
            last = sample_one(denoiser, n=1, seed=seed, batch_size=batch_size, indices=[0], **opts)
        last = dataclasses.replace(last, images=images, nfe=int(counts[0]), network_nfe=int(counts[1]),
                                   seconds=time.perf_counter() - t0)
    barrier()
    shares = [sum(min(n, (b + 1) * batch_size) - b * batch_size for b in shard(range(n_batches), rank_=q,
                                                                             world_size_=w)) for q in range(w)]
    return DistributedSample(path=out, images=images, world_size=w, rank=r, shares=shares, batches=len(mine),
                             resumed=resumed, nfe=int(counts[0]), network_nfe=int(counts[1]),
                             seconds=time.perf_counter() - t0, result=last)
