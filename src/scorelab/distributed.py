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
import datetime
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["init", "close", "rank", "world_size", "local_rank", "is_distributed", "barrier", "shard", "block",
           "blocks", "map_rows", "all_reduce", "all_gather", "reduce_softmax", "RankLost", "feature_stats", "sample",
           "DistributedSample", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 600.0   # seconds a collective may wait for the other ranks (SCORELAB_DIST_TIMEOUT overrides)


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 in a single process)."""
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {value!r}") from None


def init(backend: str | None = None, *, timeout: float | None = None) -> bool:
    """Start the process group from torchrun's environment; returns True when running on more than one process.

    backend: "gloo", "nccl" or None ($SCORELAB_DIST_BACKEND if set, else NCCL when this rank has a CUDA device
    (LOCAL_RANK < the number of GPUs), else gloo). timeout: seconds a collective waits
    for the other ranks before failing (default $SCORELAB_DIST_TIMEOUT, else 600): a rank that dies makes the
    others fail within it instead of hanging. Without WORLD_SIZE (or with WORLD_SIZE=1) nothing is started.
    Calling it again, or under a process group the caller started, is a no-op."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1; got {size}")
    if size == 1:
        return False
    r = _env_int("RANK")
    if r is None or not 0 <= r < size:
        raise ValueError(f"environment variable RANK must be in [0, {size}) under WORLD_SIZE={size}; "
                         f"got {os.environ.get('RANK')!r}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"environment variable {name} is not set; launch with torchrun (or set it)")
    if timeout is None:
        timeout = float(os.environ.get("SCORELAB_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if backend is None:
        backend = os.environ.get("SCORELAB_DIST_BACKEND") or None
    if backend is None:
        has_gpu = torch.cuda.is_available() and local_rank() < torch.cuda.device_count()
        backend = "nccl" if has_gpu and dist.is_nccl_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None; got {backend!r}")
    kwargs = {}
    if backend == "nccl":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method="env://", rank=r, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout), **kwargs)
    import atexit

    atexit.register(close)   # a process that exits with the group alive can abort in gloo's threads (SIGABRT)
    return True


def close() -> None:
    """Destroy the process group (if any)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except RuntimeError:   # a group whose peer is gone: nothing left to tear down cleanly
            pass


class RankLost(ConnectionError):
    """Another rank exited or did not answer within the timeout: raised by every collective here, one line."""


def _collective(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:   # gloo/NCCL: a peer closed its connection, or the timeout expired
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RankLost(f"rank {rank()} of {world_size()}: {what} failed, another rank exited or timed out "
                       f"({first})") from None


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist = _dist()
        if dist.get_backend() == "nccl":
            _collective("barrier", dist.barrier, device_ids=[torch.cuda.current_device()])
        else:
            _collective("barrier", dist.barrier)


def shard(items, *, rank_: int | None = None, world_size_: int | None = None) -> list:
    """This rank's share of `items`, round-robin: rank r takes items r, r+W, r+2W, ..."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    return list(items)[r::w]


def block(n: int, *, rank_: int | None = None, world_size_: int | None = None) -> range:
    """This rank's contiguous block of range(n): [n·r/W, n·(r+1)/W) (sizes differ by at most one)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    return range(n * r // w, n * (r + 1) // w)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" \
        else torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """The element-wise sum (op="sum") or maximum (op="max") of `t` over all ranks (a new tensor; `t` itself in a
    single process)."""
    if op not in ("sum", "max"):
        raise ValueError(f"op must be 'sum' or 'max'; got {op!r}")
    if not is_distributed():
        return t
    dist = _dist()
    buf = t.detach().to(_collective_device(), copy=True).contiguous()
    _collective("all_reduce", dist.all_reduce, buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return buf.to(t.device)


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (the same shape on all ranks) stacked in rank order: [W, *t.shape] ([1, ...] alone)."""
    if not is_distributed():
        return t[None]
    dev = _collective_device()
    buf = t.detach().to(dev).contiguous()
    pieces = [torch.empty_like(buf) for _ in range(world_size())]
    _collective("all_gather", _dist().all_gather, pieces, buf)
    return torch.stack(pieces).to(t.device)


def reduce_softmax(m: torch.Tensor, z: torch.Tensor, s: torch.Tensor, *, base2: bool = False):
    """Combine every rank's partial streamed-softmax statistics over disjoint sets of points (running maximum m
    [*rows], z = Σ e^{ℓ−m} [*rows], s = Σ e^{ℓ−m} v [*rows, ...]; `models.softmax.SoftmaxSums`) into those of
    all points: m = max over ranks (one all_reduce), then z and s rescaled by e^{m_r − m} and summed (a second).
    Returns (m, z, s); unchanged in a single process."""
    if not is_distributed():
        return m, z, s
    top = all_reduce(m, "max")
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    scale = torch.exp2(m - safe) if base2 else torch.exp(m - safe)
    z, s = z * scale, s * scale.reshape(*scale.shape, *([1] * (s.ndim - scale.ndim)))
    packed = all_reduce(torch.cat([z.reshape(-1), s.reshape(-1)]), "sum")
    return top, packed[:z.numel()].reshape(z.shape), packed[z.numel():].reshape(s.shape)


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


def blocks(n: int, size: int, *, rank_: int | None = None, world_size_: int | None = None) -> list[range]:
    """This rank's blocks of `size` consecutive rows of range(n), dealt round-robin (blocks r, r+W, ...)."""
    starts = shard(range(0, n, size), rank_=rank_, world_size_=world_size_)
    return [range(a, min(n, a + size)) for a in starts]


def map_rows(fn, x, *, size: int = 500, gather: bool = False):
    """fn (rows [k, ...] → results [k, ...]) over this rank's `blocks` of `size` rows of x; returns this rank's
    results concatenated, or with gather=True all ranks' results in the order of x's rows, on every rank. The
    blocks are those a single process uses when `size` is its block size (500: the Inception feature cache's), so
    results and cache entries do not depend on the world size."""
    n = int(x.shape[0])
    mine = blocks(n, size)
    parts = [fn(x[b.start:b.stop]) for b in mine]
    if not parts:   # fewer blocks than ranks: this rank's result has 0 rows, shaped like block 0's
        parts = [fn(x[:1])[:0]]
    local = torch.cat(parts)
    if not gather or not is_distributed():
        return local
    w = world_size()
    counts = [sum(len(b) for b in blocks(n, size, rank_=q, world_size_=w)) for q in range(w)]
    dev = _collective_device()
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[:local.shape[0]] = local.to(dev)
    pieces = [torch.empty_like(padded) for _ in range(w)]
    _collective("all_gather", _dist().all_gather, pieces, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for q in range(w):
        at = 0
        for b in blocks(n, size, rank_=q, world_size_=w):
            out[b.start:b.stop] = pieces[q][at:at + len(b)].to(local.device)
            at += len(b)
    return out


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
