"""The collectives behind `scorelab.distributed` (process group, rank, world size, all_reduce, all_gather, the
streamed-softmax merge, row sharding): torch.distributed with timeouts and one-line `RankLost` errors, no-ops in a
single process. They import nothing else of scorelab, so any module may call them (`diagnostics`, `models`);
users reach them as `scorelab.distributed.*`."""
from __future__ import annotations

import datetime
import math
import os

import torch

__all__ = ["init", "close", "rank", "world_size", "local_rank", "is_distributed", "barrier", "shard", "block",
           "blocks", "map_rows", "all_reduce", "all_gather", "reduce_softmax", "RankLost", "DEFAULT_TIMEOUT"]

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
