"""Autoguidance sweep on the reference U-Net: D = D_weak + w (D_strong − D_weak) (Karras et al. 2024).

The strong model is the shipped U-Net (or --unet); weak models are earlier stages of it read from git history
(DIR@REV), another network directory, or "gaussian" (the training set's Gaussian). Every run uses the same seeds
as the unguided run of the same solver, so FD differences are paired: the record gives each guided run's
Fréchet distance (classifier features by default: the screening metric; Inception with --features inception),
its difference to the unguided run with a bootstrap 95% interval, and the network evaluations per sample (the
guided denoiser evaluates both networks: `SampleResult.network_nfe`).

Rows are written as they finish; a rerun with the same --out/--name skips rows already there (same weak, w,
solver, n, seed), so an interrupted sweep resumes. Samples are cached on disk ($XDG_CACHE_HOME/scorelab/
autoguidance) so a later --features inception pass does not sample again.

    python -m bench.autoguidance --n 1000 --scales 1.5,2,2.5,3 \\
        --weak models/fashion-mnist-unet@9894fbc,models/fashion-mnist-unet@873d414,gaussian
"""
from __future__ import annotations

import argparse
import time

import torch

import scorelab as sl
from scorelab.metrics.frechet import feature_stats, frechet_distance

from . import record
from .common import add_output_arguments, cached_run, fashion_mnist, load_unet, show, unet_network

SOLVERS = {  # name: (sampler, sampler options); churn settings are EDM's (Karras et al. 2022, Table 5, ImageNet)
    "heun": ("heun", {}),
    "edm_churn": ("edm_stochastic", dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)),
}


BAR = 10.1   # DESIGN.md's FID bar for a reference network: 2 × the 5k train-vs-test Inception FID (5.06)


def summary(rows: list[dict]) -> str:
    """The record's findings, from its rows: each guided Inception row beside its unguided run (FID, network
    evaluations per sample, paired difference with its interval) and the verdict against DESIGN.md's bar."""
    out = []
    for r in sorted((r for r in rows if r.get("features") == "inception" and r["weak"] != "none"),
                    key=lambda r: (-r["n"], r["fd"])):
        b = next((x for x in rows if x.get("features") == "inception" and x["weak"] == "none"
                  and (x["solver"], x["steps"], x["n"], x["seed"]) == (r["solver"], r["steps"], r["n"], r["seed"])),
                 None)
        if b is None:
            continue
        out.append(f"Inception FID ({r['n']:,} {r['solver']}-{r['steps']} samples vs {r['n']:,} test images): "
                   f"unguided {b['fd']:.2f} ({b['network_nfe']} network evaluations per sample), guided by "
                   f"{r['weak']} at w = {r['w']:g} {r['fd']:.2f} ({r['network_nfe']}); difference {r['fd_diff']:+.2f}, "
                   f"paired bootstrap 95% interval [{r['fd_diff_low']:+.2f}, {r['fd_diff_high']:+.2f}] "
                   f"({r.get('n_boot', '?')} rounds). "
                   + (f"This meets DESIGN.md's bar (FID ≤ {BAR})." if r["fd"] <= BAR else
                      f"DESIGN.md's bar (FID ≤ {BAR}) is not met."))
    return " ".join(out)


def parse_list(text: str, kind=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list; got {text!r}")
    return [kind(t) for t in items]


def load_weak(spec: str, data_path=None):
    """The weak denoiser named by `spec`: "gaussian" (fitted to the training set) or a network directory (DIR or
    DIR@REV)."""
    if spec == "gaussian":
        return sl.Gaussian.fit(fashion_mnist("train", None, data_path))
    return load_unet(spec)[0]


def row_key(r: dict) -> tuple:
    return (r.get("features", "classifier"), r["weak"], float(r["w"]), r["solver"], int(r["steps"]), int(r["n"]),
            int(r["seed"]))


FIELDS = ("images", "nfe", "network_nfe", "seconds")


class _NotCached(Exception):
    pass


def _raise_not_cached():
    raise _NotCached


def cached_samples(key: dict, run, chunk: int | None = None, only=None):
    """Images, NFE and seconds of a run from the cache (keyed by everything that determines them), else drawn.

    `run(indices)` draws the samples `indices` (a range; sample i always from the generator of (seed, i), so a
    chunk's images equal the same rows of the whole run). A run cached whole (as earlier passes stored it) is read
    as it is; otherwise the run is drawn and cached in chunks of `chunk` samples (default: whole), so a stopped
    pass loses at most one chunk and several processes can share the chunks. `only`: draw (or find) only these
    chunk numbers and return None (a sampling-only share of the work)."""
    n = int(key["n"])
    try:
        return cached_run("autoguidance", key, _raise_not_cached, FIELDS)[0]
    except _NotCached:
        pass
    if chunk is None or chunk >= n:
        if only is not None:
            only = [c for c in only if c == 0]
            if not only:
                return None
        out = cached_run("autoguidance", key, lambda: run(range(n)), FIELDS)[0]
        return None if only is not None else out
    starts = list(range(0, n, chunk))
    parts = []
    for c in (only if only is not None else range(len(starts))):
        lo, hi = starts[c], min(starts[c] + chunk, n)
        parts.append(cached_run("autoguidance", {**key, "lo": lo, "hi": hi}, lambda: run(range(lo, hi)), FIELDS)[0])
    if only is not None:
        return None
    return dict(images=torch.cat([p["images"] for p in parts]), nfe=parts[0]["nfe"],
                network_nfe=parts[0]["network_nfe"], seconds=sum(p["seconds"] for p in parts))


def features(images, kind: str):
    if kind == "classifier":
        return sl.metrics.classifier_features(images.clamp(-1, 1))
    if kind == "pixels":
        return images.reshape(images.shape[0], -1).double()
    from scorelab.metrics.stats import cached_image_features

    return cached_image_features(images.clamp(-1, 1), desc="inception")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="samples per run (default %(default)s)")
    ap.add_argument("--weak", default="models/fashion-mnist-unet@9894fbc,models/fashion-mnist-unet@873d414",
                    help="weak models, comma-separated: DIR, DIR@REV or gaussian (default %(default)s)")
    ap.add_argument("--scales", default="1.5,2,2.5,3", help="guidance scales w (default %(default)s)")
    ap.add_argument("--solvers", default="heun", help=f"comma-separated, of {sorted(SOLVERS)} (default %(default)s)")
    ap.add_argument("--steps", type=int, default=18, help="Karras grid steps (default %(default)s: Heun-18, 35 NFE)")
    ap.add_argument("--features", choices=["classifier", "inception", "pixels"], default="classifier")
    ap.add_argument("--n-boot", type=int, default=100, help="bootstrap rounds of each paired FD difference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unet", default=None, help="the strong network (default: models/fashion-mnist-unet)")
    ap.add_argument("--name", default="autoguidance", help="record name: OUT/NAME.json (default %(default)s)")
    ap.add_argument("--chunk", type=int, default=500,
                    help="samples per cached chunk of a run (default %(default)s): a stop loses at most one chunk")
    ap.add_argument("--sample-only", action="store_true",
                    help="only fill the sample cache, guided runs first and each run's chunks last to first (so "
                         "that it meets a concurrent full pass of the same command in the middle); no record")
    ap.add_argument("--front", action="store_true",
                    help="with --sample-only: each run's chunks first to last (a second filler meets the first)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    weak_specs, scales = parse_list(args.weak), parse_list(args.scales, float)
    solvers = parse_list(args.solvers)
    if args.chunk < 1:
        ap.error(f"--chunk must be >= 1; got {args.chunk}")
    bad = [s for s in solvers if s not in SOLVERS]
    if bad:
        ap.error(f"--solvers: unknown {bad}; choose from {sorted(SOLVERS)}")

    strong, strong_label = load_unet(args.unet)
    network = unet_network(args.unet)
    sigmas = sl.schedules.karras(args.steps)
    if args.sample_only:
        return fill_cache(args, strong, network, weak_specs, scales, solvers, sigmas, front=args.front)
    ref = features(fashion_mnist("test", args.n, args.data_path), args.features)
    out_path = record.results_dir(args.out) / f"{args.name}.json"
    old = record.read(out_path) if out_path.exists() else None
    rows = list((old or {}).get("rows", []))   # rows of every feature kind stay; a pass adds its own
    done = {row_key(r) for r in rows}
    commands = list(dict.fromkeys((old or {}).get("commands", [(old or {}).get("command")] if old else [])
                                  + [record.command_line()]))   # every pass that added rows to this record
    t_all = time.perf_counter()

    def save():
        for r in rows:   # the interval as one readable column (the record keeps its ends as numbers too)
            r["fd_diff_ci"] = "" if r["weak"] == "none" else f"[{r['fd_diff_low']:+.3g}, {r['fd_diff_high']:+.3g}]"
        order = sorted(rows, key=lambda r: (r.get("features", "classifier"), r["solver"], r["n"],
                                            r["weak"] != "none", r["weak"], r["w"]))
        record.write(args.name, order,
                     out=args.out, title="Autoguidance of the reference U-Net: paired FD per weak model and scale",
                     network=network, columns=["features", "n", "weak", "w", "network_nfe", "fd", "fd_diff",
                                               "fd_diff_ci"],
                     keys=["features", "n", "weak", "w"],
                     features=sorted({r.get("features", "classifier") for r in rows}), strong=strong_label,
                     commands=commands,
                     notes="fd: Fréchet distance to the first n test images in the named features; fd_diff: guided "
                           "minus unguided (same seeds), with its paired bootstrap 95% interval (fd_diff_ci; its "
                           "ends: fd_diff_low, fd_diff_high); network_nfe: network evaluations per sample (both "
                           "networks counted). " + summary(rows))

    for solver in solvers:
        base_key = dict(unet=network["sha256"], solver=solver, steps=args.steps, n=args.n, seed=args.seed)

        def run(denoiser):
            return sampling(args, denoiser, sigmas, solver)

        base = cached_samples({**base_key, "weak": "none", "w": 1.0}, run(strong), args.chunk)
        base_feats = features(base["images"], args.features)
        base_row = dict(solver=solver, steps=args.steps, weak="none", w=1.0, n=args.n, seed=args.seed,
                        features=args.features, nfe=base["nfe"], network_nfe=base["network_nfe"],
                        fd=frechet_distance(*_moments(base_feats), *_moments(ref)),
                        fd_diff=0.0, fd_diff_low=0.0, fd_diff_high=0.0, seconds=round(base["seconds"], 1))
        if row_key(base_row) not in done:
            rows.append(base_row)
            done.add(row_key(base_row))
            save()
        for spec in weak_specs:
            weak = None
            for w in scales:
                key = (args.features, spec, float(w), solver, args.steps, args.n, args.seed)
                if key in done:
                    continue
                weak = weak if weak is not None else load_weak(spec, args.data_path)
                res = cached_samples({**base_key, "weak": spec, "w": float(w)},
                                     run(sl.guidance.autoguidance(strong, weak, w)), args.chunk)
                f = features(res["images"], args.features)
                d = sl.metrics.fid_difference(f, base_feats, ref, n_boot=args.n_boot, progress=False)
                rows.append(dict(solver=solver, steps=args.steps, weak=spec, w=float(w), n=args.n, seed=args.seed,
                                 features=args.features, nfe=res["nfe"], network_nfe=res["network_nfe"],
                                 fd=d.fid_a, fd_diff=d.difference, fd_diff_low=d.low, fd_diff_high=d.high,
                                 n_boot=args.n_boot,
                                 seconds=round(res["seconds"], 1)))
                done.add(key)
                save()
                print(show(rows[-1:], keys=["solver", "weak", "w"]), flush=True)
    print(show(rows, columns=["solver", "weak", "w", "network_nfe", "fd", "fd_diff", "fd_diff_low", "fd_diff_high"]))
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


def sampling(args, denoiser, sigmas, solver: str):
    """run(indices) for cached_samples: the samples `indices` of the run of `denoiser` with `solver`."""
    sampler, opts = SOLVERS[solver]

    def run(indices):
        return sl.sample(denoiser, n=len(indices), indices=list(indices), sigmas=sigmas, solver=sampler,
                         seed=args.seed, batch_size=args.batch_size, progress=True, **opts)
    return run


def fill_cache(args, strong, network, weak_specs, scales, solvers, sigmas, front: bool = False) -> int:
    """--sample-only: draw every run's chunks into the cache, guided runs first, each run's chunks last to first
    (`front`: first to last)."""
    n_chunks = -(-args.n // args.chunk)
    for solver in solvers:
        base_key = dict(unet=network["sha256"], solver=solver, steps=args.steps, n=args.n, seed=args.seed)
        runs = [(spec, float(w)) for spec in weak_specs for w in scales] + [("none", 1.0)]
        for spec, w in runs:
            if spec == "none":
                denoiser = strong
            else:
                denoiser = sl.guidance.autoguidance(strong, load_weak(spec, args.data_path), w)
            cached_samples({**base_key, "weak": spec, "w": w}, sampling(args, denoiser, sigmas, solver), args.chunk,
                           only=range(n_chunks) if front else range(n_chunks - 1, -1, -1))
            print(f"cached: {solver} weak={spec} w={w} n={args.n}", flush=True)
    return 0


def _moments(f):
    s = feature_stats(f)
    return s.mu, s.sigma


if __name__ == "__main__":
    raise SystemExit(main())
