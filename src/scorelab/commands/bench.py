"""`scorelab bench [--quick] [--only NAMES] [--skip NAMES]`: run the benchmarks of a source checkout's bench/.

The benchmarks are a package next to the library, not part of it (they need the repository's models and write
bench/results/*.json), so this command finds the checkout's bench/ folder (`--dir`, else $SCORELAB_BENCH, else the
folder beside an editable install's src/, else ./bench) and runs `python -m bench.run_all` from the checkout's root
with the same interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNNER = "run_all.py"


def bench_dir(explicit: str | None = None) -> Path:
    """The bench/ folder holding run_all.py; FileNotFoundError saying where it looked and what to pass."""
    import scorelab

    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        if os.environ.get("SCORELAB_BENCH"):
            candidates.append(Path(os.environ["SCORELAB_BENCH"]))
        candidates += [Path(scorelab.__file__).resolve().parents[2] / "bench", Path.cwd() / "bench"]
    for path in candidates:
        if (path / RUNNER).is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"no bench/{RUNNER} found (looked in {looked}); the benchmarks come with the source "
                            "checkout: pass --dir PATH/TO/scorelab/bench or set SCORELAB_BENCH")


def _run(args) -> int:
    folder = bench_dir(args.dir)
    argv = [sys.executable, "-m", "bench.run_all"]
    argv += ["--quick"] * args.quick + ["--dry-run"] * args.dry_run
    if args.only:
        argv += ["--only", args.only]
    if args.skip:
        argv += ["--skip", args.skip]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    return subprocess.run(argv, cwd=folder.parent).returncode


def register(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmarks (python -m bench.run_all in the source checkout)",
                       description="Run the benchmark scripts one after the other (one CPU thread each); each writes "
                                   "its result record bench/results/NAME.json. The full set takes hours (5k-sample "
                                   "FIDs); --quick is the small set.")
    p.add_argument("--quick", action="store_true", help="small sizes; slow scripts left out")
    p.add_argument("--only", default=None, metavar="NAMES", help="comma-separated benchmark names to run")
    p.add_argument("--skip", default="", metavar="NAMES", help="comma-separated benchmark names to leave out")
    p.add_argument("--dry-run", action="store_true", help="print the plan (names and commands) and exit")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds per script (default: none)")
    p.add_argument("--dir", default=None, metavar="PATH", help="the checkout's bench/ folder (default: found)")
    p.set_defaults(func=_run)
