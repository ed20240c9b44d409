"""Run every benchmark of bench/ one after the other (one CPU thread each), then regenerate the README's results.

    .venv/bin/python bench/run_all.py [--quick] [--only peers,teleport] [--skip train] [--dry-run] [--timeout S]

`make bench` runs the full set (hours: 5k-sample FIDs), `make bench-quick` the --quick set (small sizes; scripts too
slow for it are left out; their JSON goes to bench/results/quick/, so the full results are never overwritten). Each script writes its own bench/results/<name>.json; this runner records what it ran,
each script's exit status and wall time in bench/results/run_all.json (or run_all_quick.json), then calls
bench/readme_results.py, which rewrites README.md between <!-- RESULTS:BEGIN --> and <!-- RESULTS:END -->.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, RESULTS, ROOT, UNET_DIR, command_line, write_result  # noqa: E402

QUICK_RESULTS = RESULTS / "quick"   # --quick scripts write here: the full results (and the README) stay as they are

# name → (script, full arguments, quick arguments or None = left out of --quick)
PLAN = {
    "gaussian": ("gaussian.py", [], ["--limit", "10000"]),
    "samplers": ("samplers.py", [], ["--quick", "--n", "64"]),
    "peers": ("peers.py", [], ["--quick", "--n", "64", "--unet-n", "8", "--reps", "2"]),
    "explained": ("explained.py", [], ["--quick", "--n", "128", "--gmm-iter", "10"]),
    "teleport": ("teleport.py", [], ["--quick", "--n", "64", "--configs", "heun:18,dpmpp_2m:10,unipc:10",
                                     "--skips", "0,0.2,0.3,0.4,auto", "--skip-data", "128"]),
    "empirical": ("empirical.py", [], None),
    "local": ("local.py", [], None),
    "metrics-speed": ("metrics.py", ["speed", "--threads", "1"], None),
    "metrics-unet-fid": ("metrics.py", ["unet-fid", "--model", str(UNET_DIR), "--n", "5000"], None),
    "train": ("train.py", [], ["--steps", "3"]),
}


def plan(quick: bool, only: list[str] | None, skip: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, argv)] to run, in order."""
    unknown = [n for n in (only or []) + skip if n not in PLAN]
    if unknown:
        raise ValueError(f"--only/--skip names must be among {','.join(PLAN)}; got {','.join(unknown)}")
    out = []
    for name, (script, full, short) in PLAN.items():
        if (only and name not in only) or name in skip:
            continue
        args = short if quick else full
        if args is None or not (BENCH / script).exists():
            continue
        out.append((name, [sys.executable, str(BENCH / script)] + args))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; slow scripts left out (target < 10 minutes)")
    ap.add_argument("--only", default=None, help="comma list of benchmark names")
    ap.add_argument("--skip", default="", help="comma list of benchmark names to leave out")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: none)")
    ap.add_argument("--no-readme", action="store_true", help="do not regenerate the README section")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    skip = [s for s in args.skip.split(",") if s]
    try:
        todo = plan(args.quick, only, skip)
    except ValueError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for name, cmd in todo:
            print(f"{name}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd)}")
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    script_env = dict(env, SCORELAB_BENCH_RESULTS=str(QUICK_RESULTS)) if args.quick else env
    status, t_all = [], time.perf_counter()
    for name, cmd in todo:
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=script_env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        status.append(dict(name=name, command=" ".join(cmd[1:]), returncode=rc,
                           seconds=round(time.perf_counter() - t, 1)))
        print(f"== {name}: exit {rc} in {status[-1]['seconds']:.0f}s", flush=True)
    total = round(time.perf_counter() - t_all, 1)
    write_result("run_all_quick" if args.quick else "run_all",
                 dict(name="run_all", quick=args.quick, total_seconds=total, scripts=status), command_line())
    if not args.no_readme:
        subprocess.run([sys.executable, str(BENCH / "readme_results.py")], cwd=ROOT, env=env)
    failed = [s["name"] for s in status if s["returncode"] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
