"""Teleportation on the Fashion-MNIST U-Net: skip the first part of the trajectory with the Gaussian's exact jump
(Wang & Vastola 2024, "The unreasonable effectiveness of Gaussian score approximations") and measure what it costs.

    python -m bench.teleport                      # 5,000 samples, Inception FID, bootstrap intervals
    python -m bench.teleport --quick              # 256 samples, no FID: proxy only (see below)
    python -m bench.teleport --features pixels    # Fréchet distance on raw pixels instead of Inception
    python -m bench.teleport --features classifier  # ... in the shipped Fashion-MNIST classifier's features

For each solver/step count (Heun 18, 35; DPM++2M 10, 20; UniPC 10, 20 on Karras grids, σ 0.002 … 80) and each
skip ∈ {0, 0.1, …, 0.5, auto} (fraction of steps replaced by `sl.teleport`; `auto` = `diagnostics.suggest_skip`
at score-space EV ≥ 0.99 on held-out test images), the same seeds (paired: sample i starts from the same x_T in
every run) are sampled with `sl.sample(net, teleport=g, skip=...)`; the multistep solvers also run with
`warm_history=True`. Reported per run: NFE, wall time, and
  - FID vs the test split (features: Inception by default) and the paired bootstrap 95% interval of
    FID(skip) − FID(no skip) (`sl.metrics.fid_difference`, DESIGN.md "Measuring FID differences honestly");
  - always, the proxy RMS = sqrt(mean (x_skip − x_0)²) per pixel (images in [−1, 1]) between each skipped run and the
    unskipped run from the same seeds. It is a distance between sample sets, NOT a quality measure: a skipped run
    can differ from the unskipped one and be as good.
Goal (issue 7): ≥ 30% of NFE skipped with FID within +2% of the unskipped run, for every solver.
Writes the result record teleport.json (+ teleport.png, metric vs NFE; bench/results by default, --out DIR,
--name NAME) and prints its tables. One CPU thread.
`--update` merges into the existing record (the rows run now — solver, steps, skip, warm history — are replaced, the
others kept), so the sweep can be run a few rows at a time, on several processes or sessions; each solver's
unskipped run is cached on disk (the scorelab cache's teleport/ folder), so only the first pass pays for it:

    python -m bench.teleport --features classifier --configs unipc:10 --update --compile
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import scorelab as sl
from scorelab._io import atomic_path

from . import record
from .common import (add_output_arguments, cached_run, fashion_mnist, load_unet, show, teleport_row_order,
                     unet_network)

CONFIGS = "heun:18,heun:35,dpmpp_2m:10,dpmpp_2m:20,unipc:10,unipc:20"
SKIPS = "0,0.1,0.2,0.3,0.4,0.5,auto"


def parse_configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        solver, _, steps = item.partition(":")
        if not steps.isdigit():
            raise ValueError(f"--configs items must be solver:steps (e.g. heun:18); got {item!r}")
        out.append((solver.strip(), int(steps)))
    return out


def parse_skips(text: str) -> list:
    """Skip fractions and/or 'auto'; 0 (the unskipped reference run) is always first."""
    try:
        skips = [s.strip() if s.strip() == "auto" else float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--skips must be fractions in [0, 1) or 'auto', comma-separated; got {text!r}") from None
    return [0.0] + [s for s in skips if s != 0]


def parse_headline(text: str) -> set:
    """'heun:18:0.3,unipc:10:auto:warm' → {(solver, steps, skip as str, warm)} (skip as parse_skips gives it)."""
    out = set()
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) not in (3, 4) or not parts[1].isdigit() or (len(parts) == 4 and parts[3] != "warm"):
            raise ValueError(f"--inception items must be solver:steps:skip[:warm]; got {item!r}")
        skip = parts[2] if parts[2] == "auto" else str(float(parts[2]))
        out.add((parts[0], int(parts[1]), skip, len(parts) == 4))
    return out


_INCEPTION: dict = {}
# Settings that must agree for runs to share one table (paired seeds, the same network and reference).
SHARED = ("n", "features", "seed", "threshold", "grid", "quick")
# The record's default columns (the rest stay in the JSON) and the columns that name a row.
COLUMNS = ["solver", "steps", "skip", "warm_history", "nfe", "fid", "fid_diff_low", "fid_diff_high"]
KEYS = ["solver", "steps", "skip", "warm_history"]


def row_key(r: dict) -> tuple:
    """A run's identity in the table: solver, steps, skip, warm history."""
    return r["solver"], r["steps"], str(r["skip"]), bool(r["warm_history"])


def carry_inception(old_rows: list[dict], new_rows: list[dict]) -> None:
    """Rerun rows keep the Inception FID measured on their first run (same network, seeds and grid: the same
    images up to float rounding) unless this run measured it again (--inception)."""
    before = {row_key(r): r for r in old_rows}
    for r in new_rows:
        prev = before.get(row_key(r), {})
        if "inception_fid" in prev and "inception_fid" not in r:
            r.update({k: v for k, v in prev.items() if k.startswith("inception_")})


def merge(old: dict, new: dict) -> dict:
    """`new` plus the rows of `old` that were not run now (a row is a solver, steps, skip and warm_history; the
    unskipped run of a solver is always rerun, and its images, from the same seeds, are the same);
    ValueError naming a differing setting."""
    sha = lambda d: (d.get("network") or {}).get("sha256")  # noqa: E731
    for key, a, b in [(k, old.get(k), new.get(k)) for k in SHARED] + [("network", sha(old), sha(new))]:
        if a != b:
            raise ValueError(f"--update: setting {key!r} differs from the existing results ({a!r} vs {b!r}); "
                             "rerun those solvers or write elsewhere (--out, --name)")
    done = {row_key(r) for r in new["rows"]}
    kept = [r for r in old["rows"] if row_key(r) not in done]
    carry_inception(old["rows"], new["rows"])
    commands = old.get("commands") or [old.get("command")]
    return {**new, "rows": sorted(kept + new["rows"], key=teleport_row_order),
            "commands": commands + [new.get("command") or record.command_line()],
            "total_seconds": round(old.get("total_seconds", 0) + new["total_seconds"], 1)}


def inception_row(row: dict, images, base_images, ref) -> None:
    """Inception FID of a run (and, for a skipped run, the paired bootstrap interval of its difference to the
    unskipped run of the same seeds); features cached on disk, and in memory for the base run."""
    from scorelab.metrics.stats import cached_image_features

    def feats(x):
        if id(x) not in _INCEPTION:
            _INCEPTION[id(x)] = (x, cached_image_features(x.clamp(-1, 1), desc="inception"))
        return _INCEPTION[id(x)][1]

    f = feats(images)
    row["inception_fid"] = sl.metrics.fid(f, ref)
    if images is not base_images:
        d = sl.metrics.fid_difference(f, feats(base_images), ref, n_boot=100, progress=False)
        row.update(inception_fid_diff=d.difference, inception_fid_diff_low=d.low, inception_fid_diff_high=d.high)


def cached_base_run(run, key: dict):
    """The unskipped run of a solver (images, NFE, seconds) from the cache's teleport/ folder when an earlier run had
    the same `key` (network sha256, solver, steps, n, seed, batch size, compile, torch version), else `run()`,
    stored atomically (`common.cached_run`). Every `--update` pass needs the unskipped run for its paired
    differences; this makes it free after the first time."""
    from types import SimpleNamespace

    fields, cached = cached_run("teleport", key, run, ("images", "nfe", "seconds", "skip_index", "sigma_skip"),
                                prefix="base-")
    return SimpleNamespace(**fields, cached=cached)


def features_of(images, kind: str):
    """Features for the Fréchet distance: Inception (cached on disk by scorelab.metrics), raw pixels, the penultimate
    layer of the shipped Fashion-MNIST classifier (models/fashion-mnist-classifier, ~1,500 img/s), or None."""
    if kind == "none":
        return None
    if kind == "pixels":
        return images.reshape(images.shape[0], -1).double()
    if kind == "classifier":
        return sl.metrics.classifier_features(images.clamp(-1, 1))
    return sl.metrics.inception_features(images.clamp(-1, 1), progress=True)


def fd(feats, ref_stats):
    from scorelab.metrics.frechet import feature_stats, frechet_distance

    s = feature_stats(feats)
    return frechet_distance(s.mu, s.sigma, ref_stats.mu, ref_stats.sigma)


def verdicts(rows: list[dict], has_fid: bool, tolerance: float = 0.02, target: float = 0.30) -> list[dict]:
    """Per solver/steps: the largest NFE saving whose FID is within +tolerance of the unskipped run (FID) — or,
    without FID, only the NFE saving each skip gives (the goal then cannot be judged)."""
    out = []
    for key in sorted({(r["solver"], r["steps"]) for r in rows}):
        group = [r for r in rows if (r["solver"], r["steps"]) == key]
        base = next(r for r in group if r["skip"] == 0 and not r["warm_history"])
        best = None
        for r in group:
            if has_fid and r.get("fid") is not None and r["fid"] <= base["fid"] * (1 + tolerance):
                if best is None or r["nfe_saved"] > best["nfe_saved"]:
                    best = r
        entry = dict(solver=key[0], steps=key[1], nfe=base["nfe"])
        if has_fid:
            entry.update(best_skip=best["skip"], best_warm=best["warm_history"], nfe_saved=best["nfe_saved"],
                         fid=best["fid"], fid_base=base["fid"],
                         goal_met=bool(best["nfe_saved"] >= target))
        else:
            entry.update(goal_met=None, note="no FID measured: proxy only")
        out.append(entry)
    return out


def plot(rows, metric, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["solver"], r["steps"], r["warm_history"]) for r in rows}):
        group = sorted((r for r in rows if (r["solver"], r["steps"], r["warm_history"]) == key
                        and r.get(metric) is not None), key=lambda r: r["nfe"])
        if not group:
            continue
        name = f"{key[0]} {key[1]}" + (" warm" if key[2] else "")
        ax.plot([r["nfe"] for r in group], [r[metric] for r in group], "o-" if not key[2] else "s--", label=name,
                ms=4)
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 samples, features none (proxy only) unless given")
    ap.add_argument("--n", type=int, default=None, help="samples per run (default 5000; --quick 256)")
    ap.add_argument("--configs", default=CONFIGS, help="solver:steps list (default %(default)s)")
    ap.add_argument("--skips", default=SKIPS, help="skip fractions and/or auto (default %(default)s)")
    ap.add_argument("--no-warm", action="store_true", help="do not add warm_history runs for multistep solvers")
    ap.add_argument("--features", choices=["inception", "pixels", "classifier", "none"], default=None,
                    help="Fréchet-distance features (default inception; --quick: none)")
    ap.add_argument("--n-boot", type=int, default=100, help="bootstrap rounds of FID differences (0: none)")
    ap.add_argument("--skip-data", type=int, default=512, help="held-out test images for skip='auto'")
    ap.add_argument("--threshold", type=float, default=0.99, help="score-space EV threshold for skip='auto'")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="teleport", help="record name: OUT/NAME.json and OUT/NAME.png (default %(default)s)")
    add_output_arguments(ap)
    ap.add_argument("--update", action="store_true",
                    help="merge into OUT/NAME.json: replace the rows run now (solver, steps, skip, warm), keep the others")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the U-Net's raw network (about 1.3x faster on this CPU after a minute of compiling; "
                         "outputs equal to float32 rounding); use a --batch-size that divides --n")
    ap.add_argument("--inception", default="", metavar="RUNS",
                    help="headline runs that also get Inception FID, solver:steps:skip[:warm] comma-separated (e.g. "
                         "heun:18:0.3,heun:18:auto); their unskipped run is measured too. Features are cached "
                         "on disk by image content, so runs shared with bench.metrics cost nothing twice")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (256 if args.quick else 5000)
    features = args.features or ("none" if args.quick else "inception")
    configs, skips = parse_configs(args.configs), parse_skips(args.skips)

    net, unet_label = load_unet(args.unet)
    network = unet_network(args.unet)
    unet_sha = network["sha256"]
    if args.compile:
        # the raw network, where σ enters as a tensor (c_noise), not a float: one graph serves every σ
        net.net = torch.compile(net.net, dynamic=False)
        with torch.no_grad():  # compile now, so that no run's wall time includes it
            sl.sample(net, n=args.batch_size, sigmas=sl.schedules.karras(2), solver="heun",
                      batch_size=args.batch_size, progress=False)
    train, test = fashion_mnist("train", None, args.data_path), fashion_mnist("test", None, args.data_path)
    g = sl.Gaussian.fit(train)
    skip_data = test[-args.skip_data:]
    ref_feats = ref_stats = None
    if features != "none":
        from scorelab.metrics.frechet import feature_stats

        ref_feats = features_of(test[:n], features)
        ref_stats = feature_stats(ref_feats)

    headline = parse_headline(args.inception)
    ref_inception = None
    if headline:
        from scorelab.metrics.stats import reference_features

        ref_inception = reference_features("fashion-mnist", "test", n)

    rows = []
    t_all = time.perf_counter()
    for solver, steps in configs:
        sigmas = sl.schedules.karras(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0)
        auto = sl.diagnostics.suggest_skip(net, g, skip_data, sigmas, threshold=args.threshold, progress=False)
        runs = [(s, False) for s in skips]
        if sl.samplers.traits(solver).multistep and not args.no_warm:
            runs += [(s, True) for s in skips if s != 0]
        base_images = base_feats = None
        for skip, warm in runs:
            kw = dict(sigma_skip=auto.sigma_skip) if skip == "auto" else dict(skip=skip)
            if skip == "auto" and auto.sigma_skip is None:
                kw = dict(skip=0.0)
            run = lambda: sl.sample(net, n=n, sigmas=sigmas, solver=solver, seed=args.seed, teleport=g,  # noqa: E731
                                    warm_history=warm, batch_size=args.batch_size, progress=False, **kw)
            with torch.no_grad():
                if skip == 0 and not warm:    # the unskipped run: the same images every time, cached on disk
                    res = cached_base_run(run, dict(unet_sha256=unet_sha, solver=solver, steps=steps, n=n,
                                                    seed=args.seed, batch_size=args.batch_size, compile=args.compile))
                else:
                    res = run()
            row = dict(solver=solver, steps=steps, skip=skip, warm_history=warm, skip_index=res.skip_index,
                       sigma_skip=res.sigma_skip, nfe=res.nfe, seconds=round(res.seconds, 3), n=n)
            if getattr(res, "cached", False):
                row["cached"] = True      # images (and seconds) of an earlier run with the same key
            feats = features_of(res.images, features)
            if base_images is None:
                base_images, base_feats, base_nfe = res.images, feats, res.nfe
            row["nfe_saved"] = 1 - res.nfe / base_nfe
            row["proxy_rms"] = float((res.images.double() - base_images.double()).square().mean().sqrt())
            if feats is not None:
                row["fid"] = fd(feats, ref_stats)
                if args.n_boot and (skip != 0 or warm):
                    d = sl.metrics.fid_difference(feats, base_feats, ref_feats, n_boot=args.n_boot, progress=False)
                    row.update(fid_diff=d.difference, fid_diff_low=d.low, fid_diff_high=d.high,
                               fid_diff_significant=d.significant)
            if (solver, steps, str(skip), warm) in headline or (
                    base_images is res.images and any(h[:2] == (solver, steps) for h in headline)):
                inception_row(row, res.images, base_images, ref_inception)
            rows.append(row)
            print(f"{solver} {steps} skip={skip} warm={warm}: NFE {res.nfe}, {res.seconds:.1f}s, "
                  f"proxy RMS {row['proxy_rms']:.4f}" + (f", FD {row['fid']:.3f}" if "fid" in row else ""),
                  file=sys.stderr, flush=True)

    has_fid = features != "none"
    metric_name = {"inception": "FID (Inception)", "pixels": "FD on raw pixels",
                   "classifier": "FD in Fashion-MNIST classifier features", "none": None}[features]
    out = record.results_dir(args.out)
    png = out / f"{args.name}.png"
    result = dict(
        quick=args.quick, n=n, features=features, metric=metric_name, n_boot=args.n_boot, threads=args.threads,
        seed=args.seed, threshold=args.threshold, grid="karras(steps, sigma_min=0.002, sigma_max=80, rho=7)",
        total_seconds=round(time.perf_counter() - t_all, 1), plots=[png.name], rows=rows, network=network,
        command=record.command_line())
    existing = out / f"{args.name}.json"
    if args.update and existing.exists():
        result = merge(record.read(existing), result)
    result.pop("verdicts", None)
    rows = result.pop("rows")
    verdict = verdicts(rows, has_fid)
    description = describe(has_fid, metric_name, verdict)
    print(f"## Teleportation on the U-Net ({unet_label}), n = {n}, features: {features}\n")
    print(show(rows, description["columns"], keys=KEYS))
    print("\n" + show(verdict))
    plot(rows, "fid" if has_fid else "proxy_rms", png,
         metric_name if has_fid else "proxy: RMS distance to the unskipped run (not FID)")
    keep = {k: v for k, v in result.items() if k not in ("name", "title", "columns", "keys", "tables", "notes")
            and k not in record.REQUIRED}
    record.write(args.name, rows, out=out, **description, **keep)


def describe(has_fid: bool, metric: str | None, verdict: list[dict]) -> dict:
    """The record's title, columns, notes and verdict table."""
    columns = COLUMNS if has_fid else KEYS + ["nfe", "nfe_saved", "seconds", "proxy_rms"]
    return dict(
        title="Teleportation on the Fashion-MNIST U-Net: NFE saved vs FID",
        columns=columns, keys=KEYS,
        notes=("Each solver's runs use the same seeds (paired). `fid`: Fréchet distance to the test split "
               f"({metric}); `fid_diff_low`/`fid_diff_high`: paired bootstrap 95% interval of FID(skip) − FID(no "
               "skip) (an interval containing 0 is no measurable difference). Further columns (proxy RMS, σ_skip, "
               "wall time, Inception FID of headline runs) are in the JSON." if has_fid else
               "No FID in this run: `proxy_rms` is the RMS pixel distance of each skipped run to the unskipped run "
               "from the same seeds — how much the samples move, not whether they got worse."),
        tables=[dict(title="Verdict per solver: the largest NFE saving with FID within +2% (goal ≥ 30%)",
                     rows=verdict, keys=["solver", "steps"])])


if __name__ == "__main__":
    main()
