"""Scale-out on torch.distributed: throughput of 2 processes × 1 thread against 1 process × 1 thread and 1 process ×
2 threads, and the world-size invariance of images, FID and the sharded exact denoiser on 1, 2 and 3 processes.
Writes one result record, distributed.json (bench/results by default, --out DIR).

    python -m bench.distributed                      # everything, about 5 minutes on a quiet 2-core machine
    python -m bench.distributed --parts scaling      # or invariance
    python -m bench.distributed --fresh              # ignore the rows kept from an interrupted run

Workloads, each timed between two barriers after a warm-up (process start, imports and loading are not timed):
  sample     the shipped U-Net (models/fashion-mnist-unet), Heun with 18 steps (35 evaluations per image), the run's
             batches dealt round-robin over the processes (scorelab.distributed.sample)
  inception  Inception-v3 pool features (scorelab.metrics, the installed network, no download) of Fashion-MNIST test
             images, blocks of rows dealt round-robin (scorelab.distributed.map_rows)
  empirical  the exact Empirical denoiser over the 60,000 Fashion-MNIST training images, sharded by rows over the
             processes (scorelab.ShardedEmpirical, memory-mapped .npy), 64 queries per call
Scaling efficiency per core = (throughput of 2 processes × 1 thread / throughput of 1 process × 1 thread) / 2; the
1 process × 2 threads row shows the same ratio for intra-op threads.

Processes are started with torch.multiprocessing (spawn) and torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR
127.0.0.1, a free MASTER_PORT), backend gloo; every launch has a timeout (--timeout) and its processes are killed
when it fails. Each finished measurement is kept in scorelab's cache (distributed/partial.json) until the record is
written, so a rerun after an interruption resumes; the file is removed once the record is written. The 1-minute load average is
recorded before every measurement and at the end: on a shared machine other jobs slow the multi-process rows the
most, and the record's notes say so when the load was high.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from . import record
from .common import UNET_DIR, add_output_arguments, show

TITLE = "Scale-out on torch.distributed: scaling per core and world-size invariance"
LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}   # name → (processes, threads per process)
LAYOUT_NAMES = {"1x1": "1 process × 1 thread", "1x2": "1 process × 2 threads", "2x1": "2 processes × 1 thread"}
UNITS = {"sample": "images/s", "inception": "images/s", "empirical": "queries/s"}
GOAL_EFFICIENCY = 0.9   # per core, sampling and feature extraction at 2 processes
GOALS = {"images": 0.0, "fid_inception": 1e-9, "fd_classifier": 1e-9, "sharded_empirical": 1e-6}
QUIET_SHARE = 0.8   # below this CPU share (of the cores a layout uses) other jobs set the wall clock, not the code
HIGH_LOAD = 0.5   # a 1-minute load average above this (besides the bench's own processes) is "another job running"


# ---------------------------------------------------------------------------------------------- the worker side

CPU_SECONDS = {}   # the CPU time (all threads, all ranks) of the last _timed section, for the result


def _timed(fn):
    """(seconds between two barriers around fn(), its result); CPU_SECONDS["last"]: the CPU seconds all ranks
    spent in it (time.process_time, summed with an all_reduce), which other jobs on the machine do not inflate."""
    import torch

    from scorelab import distributed

    distributed.barrier()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    cpu = time.process_time() - c
    distributed.barrier()
    wall = time.perf_counter() - t
    CPU_SECONDS["last"] = float(distributed.all_reduce(torch.tensor([cpu], dtype=torch.float64), "sum")[0])
    return wall, out


def _fashion(split: str, n: int | None = None):
    import scorelab as sl

    return sl.data.load("fashion-mnist", split=split, limit=n)


def _queries(n: int, sigmas, seed: int = 0):
    """Noised test images: for each σ, x0 + σ·ε of the first n test images (one generator)."""
    import torch

    x0 = _fashion("test", n)
    gen = torch.Generator().manual_seed(seed)
    return [(x0 + s * torch.randn(x0.shape, generator=gen), s) for s in sigmas]


def _task_sample(cfg: dict) -> dict:
    import torch

    import scorelab as sl
    from scorelab import distributed

    net = sl.load_model(cfg["unet"])
    with torch.no_grad():   # warm-up: oneDNN picks its kernels on the first call at this batch size
        net(torch.zeros(cfg["batch_size"], *net.shape_), 1.0)
    out = Path(cfg["dir"]) / "samples.npy"
    secs, run = _timed(lambda: distributed.sample(net, cfg["n"], out, seed=cfg["seed"], batch_size=cfg["batch_size"],
                                                  steps=cfg["steps"], solver="heun", resume=False))
    return dict(items=cfg["n"], seconds=secs, cpu_seconds=CPU_SECONDS["last"], nfe=run.nfe, shares=run.shares)


def _task_inception(cfg: dict) -> dict:
    from scorelab import distributed
    from scorelab.metrics.inception import InceptionFeatures

    net = InceptionFeatures(batch_size=cfg["batch_size"])
    images = _fashion("test", cfg["n"])
    net(images[:cfg["batch_size"]], progress=False)   # warm-up
    secs, feats = _timed(lambda: distributed.map_rows(lambda b: net(b, progress=False), images, size=cfg["block"]))
    return dict(items=cfg["n"], seconds=secs, cpu_seconds=CPU_SECONDS["last"], rows_here=int(feats.shape[0]))


def _task_empirical(cfg: dict) -> dict:
    import scorelab as sl

    model = sl.ShardedEmpirical(cfg["data"])
    queries = _queries(cfg["queries"], cfg["sigmas"])
    model(*queries[0])   # warm-up (pages the block in)
    calls = cfg["calls"]
    secs, _ = _timed(lambda: [model(*queries[c % len(queries)]) for c in range(calls)])
    return dict(items=calls * cfg["queries"], seconds=secs, cpu_seconds=CPU_SECONDS["last"], rows_here=len(model.shard_),
                n_data=model.n_total_)


def _task_invariance(cfg: dict) -> dict:
    """Images, Inception FID, classifier-feature FD and the sharded denoiser on this world size; rank 0 keeps them."""
    import numpy as np
    import torch

    import scorelab as sl
    from scorelab import distributed
    from scorelab.metrics.classifier import default_extractor as classifier
    from scorelab.metrics.frechet import frechet_distance
    from scorelab.metrics.inception import InceptionFeatures

    net = sl.load_model(cfg["unet"])
    out = Path(cfg["dir"]) / "samples.npy"
    distributed.sample(net, cfg["n_images"], out, seed=cfg["seed"], batch_size=cfg["batch_size"], steps=cfg["steps"],
                       solver="heun", resume=False)
    images = torch.from_numpy(np.load(out))   # assembled by rank 0, read by every rank after sample's barrier

    def fd(fn, a, b, size):
        sa, sb = (distributed.feature_stats(distributed.map_rows(fn, x, size=size)) for x in (a, b))
        return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)

    inc = InceptionFeatures(batch_size=cfg["block"])
    fid = fd(lambda b: inc(b, progress=False), images, _fashion("test", cfg["n_ref"]), cfg["block"])
    cls = classifier()
    fd_cls = fd(lambda b: cls(b), _fashion("test", cfg["n_fd"]), _fashion("train", cfg["n_fd"]), cfg["fd_block"])
    model = sl.ShardedEmpirical(cfg["data"])
    queries = _queries(cfg["queries"], cfg["sigmas"], seed=1)
    den = torch.stack([model(x, s) for x, s in queries])
    res = dict(images=images, fid=fid, fd_classifier=fd_cls, den=den, shard=(model.shard_.start, model.shard_.stop))
    if distributed.world_size() == 1:   # the unsharded reference, on the single-process run only
        plain = sl.Empirical(torch.from_numpy(np.load(cfg["data"])))
        res["den_plain"] = torch.stack([plain(x, s) for x, s in queries])
    return res


TASKS = {"sample": _task_sample, "inception": _task_inception, "empirical": _task_empirical,
         "invariance": _task_invariance}


def _worker(local_rank: int, world: int, port: int, threads: int, task: str, cfg: dict, out: str) -> None:
    """One process of a launch: torchrun's environment, `threads` torch threads, the task; rank 0 saves its result."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      SCORELAB_DIST_BACKEND="gloo", OMP_NUM_THREADS=str(threads))
    import torch

    torch.set_num_threads(threads)
    from scorelab import distributed

    distributed.init(timeout=cfg["collective_timeout"])
    try:
        res = TASKS[task](cfg)
        if distributed.rank() == 0:
            torch.save(res, out + ".tmp")
            os.replace(out + ".tmp", out)
    finally:
        distributed.close()


# ----------------------------------------------------------------------------------------- the launching side

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(task: str, world: int, threads: int, cfg: dict, timeout: float) -> dict:
    """Run `task` on `world` spawned processes of `threads` threads each; rank 0's result. Kills every process
    on failure or after `timeout` seconds (TimeoutError / RuntimeError with the failing rank's message)."""
    import torch
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="scorelab-bench-dist-") as tmp:
        cfg = dict(cfg, dir=tmp)
        out = os.path.join(tmp, "result.pt")
        for attempt in range(2):   # a second port if the first was taken between choosing and binding it
            ctx = mp.start_processes(_worker, args=(world, _free_port(), threads, task, cfg, out), nprocs=world,
                                     join=False, start_method="spawn")
            deadline = time.monotonic() + timeout
            try:
                while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{task} on {world} process(es) did not finish within {timeout:.0f} s")
                break
            except ProcessException as e:
                if attempt == 0 and "address already in use" in str(e).lower():
                    continue
                first = next((ln for ln in reversed(str(e).splitlines()) if ln.strip()), type(e).__name__)
                raise RuntimeError(f"{task} on {world} process(es) failed: {first}") from None
            finally:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                        p.join(5)
        return torch.load(out)


def _load1() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class Progress:
    """Finished measurements kept in the cache's distributed/partial.json (with the settings that determine them)
    until the record is written: a rerun with the same settings skips them."""

    def __init__(self, params: dict, fresh: bool):
        self.path = record.cache_dir("distributed") / "partial.json"
        self.params = params
        self.rows = {}
        if not fresh and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("params") == params:
                self.rows = saved.get("rows", {})
                print(f"resuming: {len(self.rows)} measurement(s) kept in {self.path}", file=sys.stderr)

    def get(self, key: str):
        return self.rows.get(key)

    def put(self, key: str, value) -> None:
        from scorelab._io import write_json

        self.rows[key] = value
        write_json(self.path, {"params": self.params, "rows": self.rows})

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _train_npy() -> Path:
    """The 60,000 Fashion-MNIST training images as a float32 .npy in the cache (written once, atomically)."""
    import numpy as np

    from scorelab._io import atomic_path

    path = record.cache_dir("distributed") / "fashion-mnist-train.npy"
    if not path.is_file():
        with atomic_path(path, ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, _fashion("train").numpy())
    return path


def _configs(args, data: Path) -> dict:
    common = dict(collective_timeout=float(args.timeout), unet=str(args.unet))
    return {
        "sample": dict(common, n=args.sample_n, batch_size=args.sample_batch, steps=18, seed=0),
        "inception": dict(common, n=args.inception_n, batch_size=16, block=16),
        "empirical": dict(common, data=str(data), queries=64, calls=args.empirical_calls,
                          sigmas=[0.2, 0.5, 1.0, 2.0, 5.0, 10.0]),
        "invariance": dict(common, data=str(data), n_images=10, batch_size=3, steps=18, seed=7, block=4, n_ref=20,
                           n_fd=1000, fd_block=100, queries=16, sigmas=[0.05, 0.5, 5.0]),
    }


def run_scaling(args, cfgs, progress) -> list[dict]:
    rows = []
    for work in args.workloads:
        base = base_cpu = base_seconds = None
        for layout in ("1x1", "1x2", "2x1"):
            procs, threads = LAYOUTS[layout]
            key = f"scaling/{work}/{layout}"
            res = progress.get(key)
            if res is None:
                load = _load1()
                print(f"{work}: {LAYOUT_NAMES[layout]} ...", file=sys.stderr, flush=True)
                # a layout more than 4× slower than one process × one thread (efficiency < 1/8 per core) is
                # stopped: its throughput is then only bounded (below items / limit)
                limit = args.timeout if base_seconds is None else min(args.timeout, 60 + 4 * base_seconds)
                try:
                    out = launch(work, procs, threads, cfgs[work], limit)
                except (TimeoutError, RuntimeError) as e:   # recorded as such (not kept: a rerun measures it)
                    print(f"  {e}", file=sys.stderr)
                    items = cfgs[work]["n"] if work != "empirical" else cfgs[work]["queries"] * cfgs[work]["calls"]
                    bound = items / limit if isinstance(e, TimeoutError) else None
                    rows.append(dict(workload=work, layout=LAYOUT_NAMES[layout], processes=procs, threads=threads,
                                     error=str(e), throughput_below=bound,
                                     efficiency_per_core_below=bound / base / (procs * threads)
                                     if bound and base else None, load_1min=load, load_1min_after=_load1()))
                    continue
                res = dict(items=out["items"], seconds=out["seconds"], cpu_seconds=out.get("cpu_seconds"),
                           load_1min=load, load_1min_after=_load1())
                progress.put(key, res)
            tput = res["items"] / res["seconds"]
            cpu = res.get("cpu_seconds")
            per_cpu = res["items"] / cpu if cpu else None   # items per CPU second: what other jobs do not change
            if layout == "1x1":
                base, base_cpu, base_seconds = tput, per_cpu, res["seconds"]
            elif base is None:   # no single-process baseline (it failed): no ratios
                base, base_cpu = float("nan"), None
            rows.append(dict(workload=work, layout=LAYOUT_NAMES[layout], processes=procs, threads=threads,
                             items=res["items"], seconds=round(res["seconds"], 3), throughput=tput,
                             unit=UNITS[work], speedup=tput / base, efficiency_per_core=tput / base / (procs * threads),
                             cpu_seconds=cpu, cpu_share=cpu / (res["seconds"] * procs * threads) if cpu else None,
                             efficiency_cpu_time=per_cpu / base_cpu if per_cpu and base_cpu else None,
                             load_1min=res["load_1min"], load_1min_after=res["load_1min_after"]))
    return rows


def run_invariance(args, cfgs, progress) -> list[dict]:
    import torch

    results = {}
    for world in (1, 2, 3):
        key = f"invariance/w{world}"
        res = progress.get(key)
        if res is None:
            print(f"invariance: {world} process(es) ...", file=sys.stderr, flush=True)
            out = launch("invariance", world, 1, cfgs["invariance"], args.timeout)
            store = record.cache_dir("distributed") / f"invariance-w{world}.pt"   # tensors beside the progress file
            store.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, store)
            res = {"path": str(store)}
            progress.put(key, res)
        results[world] = torch.load(res["path"])
    one = results[1]
    cfg = cfgs["invariance"]
    rows = []
    for world, res in results.items():
        den_ref = one["den_plain"]
        checks = [
            ("images", f"{cfg['n_images']} U-Net Heun-18 images, batches of {cfg['batch_size']}: max |Δ| vs 1 process",
             (res["images"] - one["images"]).abs().max().item(), None),
            ("fid_inception", f"Inception FID, these images vs {cfg['n_ref']} test images: |ΔFID| / FID vs 1 process",
             abs(res["fid"] - one["fid"]) / abs(one["fid"]), res["fid"]),
            ("fd_classifier", f"classifier-feature FD, {cfg['n_fd']} test vs {cfg['n_fd']} train images: "
                              f"|ΔFD| / FD vs 1 process",
             abs(res["fd_classifier"] - one["fd_classifier"]) / abs(one["fd_classifier"]), res["fd_classifier"]),
            ("sharded_empirical", f"ShardedEmpirical (60,000 rows), {cfg['queries']} queries at σ "
                                  f"{', '.join(map(str, cfg['sigmas']))}: max |Δ| / max |D| vs Empirical",
             ((res["den"] - den_ref).abs().max() / den_ref.abs().max()).item(), None),
        ]
        for name, what, diff, value in checks:
            rows.append(dict(check=name, processes=world, difference=diff, goal=GOALS[name],
                             met=bool(diff <= GOALS[name]), value=value, what=what,
                             shard_rows=list(res["shard"]) if name == "sharded_empirical" else None))
    return rows


def notes(scaling, load_start, load_end) -> str:
    text = ("Throughput of each workload in three layouts on this machine, each timed between barriers after a "
            "warm-up; efficiency per core = (throughput / throughput of 1 process × 1 thread) / cores used. "
            "cpu_share = CPU seconds the bench's processes got / (wall seconds × cores used): 1 when nothing else "
            "runs; efficiency_cpu_time = (items per CPU second) / (the same for 1 process × 1 thread), the parallel "
            "overhead that costs CPU (communication, spinning threads), which other jobs slow down much less than "
            "the wall-clock efficiency; it does not see a process sleeping at a barrier (uneven work), which only the "
            "wall clock of a quiet machine shows. "
            f"Goal: ≥ {GOAL_EFFICIENCY} per core for sampling and Inception features at 2 processes. Invariance: "
            "images compared bit for bit, FID/FD as relative differences, the sharded exact denoiser against the "
            "unsharded Empirical of the single-process run; 3 processes give uneven shares of the batches. The "
            "Inception FID compares 10 images with 20 (N < D = 2048: rank-deficient covariances, whose matrix square "
            "root amplifies the last-bit differences that another summation order makes); the classifier-feature "
            "FD (N = 1,000 > D = 128) is the well-posed case, as is any FID with more images than feature "
            "dimensions.")
    loads = [v for v in [*(load_start or [])[:1], *(load_end or [])[:1]] +
             [r.get("load_1min") for r in scaling] if v is not None]
    if loads:
        busy = max(loads)
        if busy > HIGH_LOAD:
            shares = [r["cpu_share"] for r in scaling if r.get("cpu_share") is not None]
            text += (f" The machine was shared while this ran: the 1-minute load average reached {busy:.2f} "
                     f"(at start {load_start[0]:.2f}, at end {load_end[0]:.2f}) with this bench's own processes"
                     + (f", which got {min(shares):.0%}–{max(shares):.0%} of the cores they asked for" if shares
                        else "") +
                     ". The wall-clock throughputs and efficiencies then measure the other jobs more than the code "
                     f"(the goal is judged only where the 1-process and the 2-process runs both got ≥ {QUIET_SHARE:.0%} of "
                     "their cores); the "
                     "CPU-time efficiencies still hold. Rerun the same command on a quiet machine.")
        else:
            text += f" The machine was quiet (1-minute load average ≤ {busy:.2f} before each measurement)."
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="scaling,invariance", help="comma-separated: scaling, invariance")
    ap.add_argument("--workloads", default="sample,inception,empirical",
                    help="scaling workloads, comma-separated (default: sample,inception,empirical)")
    ap.add_argument("--unet", default=str(UNET_DIR), metavar="DIR", help="the U-Net (default: the shipped one)")
    ap.add_argument("--sample-n", type=int, default=32, help="images sampled per layout (default: 32)")
    ap.add_argument("--sample-batch", type=int, default=8, help="sampling batch size (default: 8)")
    ap.add_argument("--inception-n", type=int, default=96, help="images through Inception per layout (default: 96)")
    ap.add_argument("--empirical-calls", type=int, default=24,
                    help="denoiser calls of 64 queries per layout (default: 24)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds one launch may take before its processes are killed and the measurement is "
                         "recorded as failed (default: 300)")
    ap.add_argument("--fresh", action="store_true", help="ignore measurements kept from an interrupted run")
    add_output_arguments(ap, data=False)
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("scaling", "invariance")]
    if bad or not parts:
        ap.error(f"--parts takes scaling and/or invariance; got {args.parts!r}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in UNITS for w in args.workloads):
        ap.error(f"--workloads takes sample, inception, empirical; got {','.join(args.workloads)!r}")
    for name in ("sample_n", "sample_batch", "inception_n", "empirical_calls"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.timeout > 0:
        ap.error("--timeout must be > 0")

    load_start = record.LOAD_AT_START
    data = _train_npy()
    cfgs = _configs(args, data)
    params = {"parts": parts, "workloads": args.workloads, **{k: v for k, v in cfgs.items()}}
    params["out"] = str(record.results_dir(args.out).resolve())
    progress = Progress(json.loads(json.dumps(params, default=str)), args.fresh)
    t0 = time.perf_counter()
    scaling = run_scaling(args, cfgs, progress) if "scaling" in parts else []
    try:
        invariance = run_invariance(args, cfgs, progress) if "invariance" in parts else []
    except (TimeoutError, RuntimeError) as e:
        print(f"python -m bench.distributed: error: {e}; the finished measurements are kept, rerun the same "
              f"command to resume", file=sys.stderr)
        return 1
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    summary = {}
    for work in args.workloads if scaling else []:
        two = next(r for r in scaling if r["workload"] == work and r["processes"] == 2)
        one = next(r for r in scaling if r["workload"] == work and r["processes"] == 1 and r["threads"] == 1)
        eff = two.get("efficiency_per_core")
        shares = [r.get("cpu_share") for r in (one, two)]
        quiet = all(v is not None and v >= QUIET_SHARE for v in shares)   # the wall clock measured the code
        summary[work] = dict(efficiency_per_core=eff, cpu_share=two.get("cpu_share"),
                             efficiency_cpu_time=two.get("efficiency_cpu_time"), wall_clock_valid=quiet,
                             goal_met=bool(eff >= GOAL_EFFICIENCY) if work != "empirical" and eff is not None
                             and quiet else None)
    if invariance:
        summary["invariance_met"] = all(r["met"] for r in invariance)
    rows = scaling or invariance
    tables = [dict(title="World-size invariance (1, 2 and 3 processes)", rows=invariance,
                   columns=["check", "processes", "difference", "goal", "met", "value", "what"])] \
        if scaling and invariance else []
    columns = ["workload", "layout", "throughput", "unit", "efficiency_per_core", "cpu_share", "efficiency_cpu_time",
               "load_1min"] \
        if scaling else ["check", "processes", "difference", "goal", "met", "value", "what"]
    path = record.write("distributed", rows, out=args.out, title=TITLE, columns=columns, keys=["workload", "layout"]
                        if scaling else ["check", "processes"], tables=tables, load_at_end=load_end,
                        goal_efficiency_per_core=GOAL_EFFICIENCY, summary=summary,
                        network=record.network(args.unet), wall_seconds=round(time.perf_counter() - t0, 1),
                        notes=notes(scaling, load_start, load_end))
    progress.done()
    if scaling:
        print(show(scaling, columns=columns, keys=["workload", "layout"]))
    if invariance:
        print(show(invariance, columns=["check", "processes", "difference", "goal", "met"], keys=["check"]))
    print(json.dumps(summary))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
