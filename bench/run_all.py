"""Run every benchmark of bench/ one after the other (one CPU thread each), from the repository root.

    python -m bench.run_all [--quick] [--only peers,teleport] [--skip train] [--dry-run] [--timeout S] [--out DIR]

`make bench` runs the full set (hours: 5k-sample FIDs), `make bench-quick` the --quick set (small sizes; scripts too
slow for it are left out; their records go to bench/results/quick/, so the full results are never overwritten).
Each script writes its own result record; this runner writes the record run_all.json (run_all_quick.json) in
bench/results (or --out) with each script's command, exit status and wall time. `python -m bench.pages --out DIR` renders the records as pages.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import record
from .record import BENCH, RESULTS, ROOT

PACKAGE = __package__ or "bench"   # the scripts are the modules PACKAGE.<module>, files BENCH/<module>.py
QUICK_RESULTS = RESULTS / "quick"   # --quick scripts write here: the full results stay as they are

# name → (module under bench/, full arguments, quick arguments or None = left out of --quick)
PLAN = {
    "gaussian": ("gaussian", [], ["--limit", "10000"]),
    "samplers": ("samplers", [], ["--quick", "--n", "64"]),
    "peers": ("peers", [], ["--quick", "--n", "64", "--unet-n", "8", "--reps", "2"]),
    "explained": ("explained", [], ["--quick", "--n", "128", "--gmm-iter", "10"]),
    "teleport": ("teleport", [], ["--quick", "--n", "64", "--configs", "heun:18,dpmpp_2m:10,unipc:10",
                                  "--skips", "0,0.2,0.3,0.4,auto", "--skip-data", "128"]),
    "empirical": ("empirical", [], None),
    "local": ("local", [], None),
    "metrics-speed": ("metrics", ["speed", "--threads", "1"], None),
    "metrics-unet-fid": ("metrics", ["unet-fid", "--model", "models/fashion-mnist-unet", "--n", "5000"], None),
    "train": ("train", [], ["--steps", "3"]),
}


def relative(path: Path) -> str:
    """`path` relative to the repository root when inside it (commands are run from there)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def plan(quick: bool, only: list[str] | None, skip: list[str], out: Path | None = None) -> list[tuple[str, list[str]]]:
    """[(name, argv after `python`)] to run, in order: `-m bench.<module> args [--out DIR]`."""
    unknown = [n for n in (only or []) + skip if n not in PLAN]
    if unknown:
        raise ValueError(f"--only/--skip names must be among {','.join(PLAN)}; got {','.join(unknown)}")
    out = out if out is not None else (QUICK_RESULTS if quick else None)
    todo = []
    for name, (module, full, short) in PLAN.items():
        if (only and name not in only) or name in skip:
            continue
        args = short if quick else full
        if args is None or not (BENCH / f"{module}.py").exists():
            continue
        todo.append((name, ["-m", f"{PACKAGE}.{module}"] + args + (["--out", relative(out)] if out is not None else [])))
    return todo


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; slow scripts left out (target < 10 minutes)")
    ap.add_argument("--only", default=None, help="comma list of benchmark names")
    ap.add_argument("--skip", default="", help="comma list of benchmark names to leave out")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: none)")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="folder of every record (default: bench/results; --quick: bench/results/quick)")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    skip = [s for s in args.skip.split(",") if s]
    out = Path(args.out) if args.out else RESULTS    # this runner's own record (a quick run's too) stays here
    try:
        todo = plan(args.quick, only, skip, Path(args.out) if args.out else None)
    except ValueError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for name, cmd in todo:
            print(f"{name}: {shlex.join(['python'] + cmd)}")
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    status, t_all = [], time.perf_counter()
    for name, cmd in todo:
        command = shlex.join(["python"] + cmd)
        print(f"== {name}: {command}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run([sys.executable] + cmd, cwd=ROOT, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        status.append(dict(name=name, command=command, returncode=rc, seconds=round(time.perf_counter() - t, 1)))
        print(f"== {name}: exit {rc} in {status[-1]['seconds']:.0f}s", flush=True)
    total = round(time.perf_counter() - t_all, 1)
    if status:
        record.write("run_all_quick" if args.quick else "run_all", status, out=out, quick=args.quick,
                     total_seconds=total, title=f"make bench{'-quick' if args.quick else ''}: every script's exit "
                                                "status and wall time", keys=["name"])
    failed = [s["name"] for s in status if s["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
