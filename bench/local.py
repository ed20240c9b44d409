"""Local denoisers (ELS / LS / PSPC) on Fashion-MNIST: speed vs the loop reference, sampling throughput, and
fidelity to the project's trained U-Net (when models/fashion-mnist-unet exists).

    python -m bench.local [--parts speed,sample,wiener,fidelity] [--n-data N] [--threads 1] [--out DIR]

Parts
- speed:    vectorised ELS / bbELS / LS / PSPC vs `models/local_reference.py` (one Python iteration per pixel),
            same inputs in float64: max |difference| and speed-up.
- sample:   images/s for 64 samples, Heun 18 steps (Karras grid), ELS with --n-data training images.
- wiener:   locality-mask sizes per σ and denoising r² of the masked empirical and linear Wiener denoisers.
- fidelity: calibrate ELS's patch size per σ against the U-Net (median per-image r²), then the median r²
            per σ on other held-out images, and for whole Heun-18 trajectories from the same noise; a grid of
            sample pairs (top: ELS, bottom: U-Net, same seeds).
Each part writes its result record, local_<part>.json (the fidelity part: local_<--key>.json, with its patch-size
calibration), + PNG grids, in bench/results by default, and prints its tables. One CPU thread by default.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scorelab._io import progress_bar as tqdm   # drawn only on a terminal

import scorelab as sl
from scorelab.calibration import calibrate_patch_size, per_image_r2
from scorelab.images import save_grid
from scorelab.models import local_reference as ref
from scorelab.models.local import ELS, PSPC

from . import record
from .common import UNET_DIR, add_output_arguments, fashion_mnist, show

DESCRIPTIONS = {
    "speed": dict(title="Local denoisers (ELS, LS, PSPC): vectorised vs the loop reference",
                  notes="Same inputs in float64, σ = 0.5; CPU seconds of this process, best of repeated runs. "
                        "The loop reference "
                        "(scorelab/models/local_reference.py) runs one Python iteration per output pixel.",
                  keys=["model", "patch", "n_data"]),
    "sample": dict(title="ELS sampling throughput (Heun, 18 steps, Karras grid)",
                   columns=["model", "n", "nfe", "seconds", "cpu_seconds", "images_per_s", "images_per_cpu_s"]),
    "wiener": dict(title="Wiener locality masks and denoising r² per σ",
                   notes="Median per-image r² of the denoised against the clean test image (16 images); the mask "
                         "size is the number of pixels (of 784) each output pixel depends on.", keys=["sigma"]),
    "fidelity": dict(notes="ELS with its patch size calibrated per σ against the network (median per-image r²), "
                           "then the median per-image r² per σ on other held-out images, and for whole Heun-18 "
                           "trajectories from the same noise (top row of the grid: ELS, bottom: the network).",
                     keys=["sigma"]),
}


def fidelity_title(unet_label: str) -> str:
    return f"ELS (calibrated patch size) vs {unet_label}: median per-image r² per σ"


def calibration_table(cal: dict) -> dict:
    """The patch-size calibration as a table: r² per σ and patch size, and the best size."""
    rows = [dict(sigma=s, **{f"P={p}": v for p, v in zip(cal["patch_sizes"], r2)}, best=b, best_r2=br)
            for s, r2, b, br in zip(cal["sigmas"], cal["r2"], cal["best"], cal["best_r2"])]
    return dict(title="Patch-size calibration: median per-image r² vs the network", rows=rows, keys=["sigma"])


def timed(fn, repeat=1):
    """Best-of-`repeat` CPU time of this process (one thread): on a shared machine wall time mostly measures
    the other jobs."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return out, best


def part_speed(train, test, args):
    """Vectorised vs loop reference on the same noisy test images, for each training-set size in --speed-data."""
    gen = torch.Generator().manual_seed(0)
    x = test[:args.speed_images].double()
    x = x + 0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    rows = []
    for n_data in args.speed_data:
        rows += speed_rows(train[:n_data].double(), x, args)
    return rows


def speed_rows(data, x, args):
    rows = []
    cases = [("ELS", ELS, ref.els_loop, dict(equivariant=True, border="circular")),
             ("bbELS (zero border)", ELS, ref.els_loop, dict(equivariant=True, border="zero")),
             ("LS", ELS, ref.els_loop, dict(equivariant=False, border="circular")),
             ("PSPC", PSPC, ref.pspc_loop, dict(equivariant=True, border="circular"))]
    for name, cls, loop, kw in tqdm(cases, desc="speed"):
        model = cls(data, args.speed_patch, **kw)
        fast, t_fast = timed(lambda: model(x, 0.5), repeat=5)
        slow, t_slow = timed(lambda: loop(data, x, 0.5, args.speed_patch, **kw), repeat=3)
        rows.append(dict(model=name, patch=args.speed_patch, n_data=data.shape[0], images=x.shape[0],
                         vectorised_s=round(t_fast, 3), loop_s=round(t_slow, 2), speedup=round(t_slow / t_fast, 1),
                         max_abs_diff=float((fast - slow).abs().max())))
    return rows


def heun_with_log(denoiser, n, seed, sigmas, shape=(1, 28, 28)):
    out = sl.sample(denoiser, n=n, shape=shape, sigmas=sigmas, solver="heun", seed=seed, batch_size=n,
                    progress=True)
    return out.images, out.nfe


def part_sample(train, args):
    model = ELS(train, args.sample_patch, n_data=args.n_data, border=args.border)
    sigmas = sl.schedules.karras(18)
    t0, c0 = time.perf_counter(), time.process_time()
    images, nfe = heun_with_log(model, args.sample_n, 0, sigmas)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    path = record.results_dir(args.out) / "local_els_samples.png"
    save_grid(images, path, nrow=8, scale=2)
    row = dict(model=repr(model), n=args.sample_n, steps=18, nfe=nfe, seconds=round(seconds, 1),
               cpu_seconds=round(cpu_seconds, 1), images_per_s=round(args.sample_n / seconds, 4),
               images_per_cpu_s=round(args.sample_n / cpu_seconds, 4))
    return [row], [path.name]


def part_wiener(train, test, args):
    """Locality masks of the Wiener filter (size per σ) and denoising r² against the clean images."""
    w = sl.Wiener(train[:args.wiener_data], energy=args.energy)
    held = test[:16]
    gen = torch.Generator().manual_seed(2)
    rows = []
    for s in tqdm([0.1, 0.5, 2.0, 10.0], desc="wiener"):
        masks = w.masks(s)
        x = held + s * torch.randn(held.shape, generator=gen)
        (masked, cpu) = timed(lambda: w(x, s))
        rows.append(dict(sigma=s, median_mask_pixels=float(masks.sum(1).float().median()),
                         r2_masked=float(torch.quantile(per_image_r2(masked, held), 0.5)),
                         r2_linear=float(torch.quantile(per_image_r2(w.linear(x, s), held), 0.5)),
                         cpu_s_16_images=round(cpu, 2)))
    return rows


def part_fidelity(train, test, args):
    unet_path = Path(args.unet)
    if not unet_path.exists():
        print(f"\n(fidelity skipped: {unet_path} not found)")
        return None
    net = sl.load_model(unet_path)
    unet = lambda x, s: net(x.float(), s)  # noqa: E731
    if args.els_data == "first":    # the images `scorelab train --limit N` trains on
        els = ELS(train[:args.n_data], 3, border=args.border)
    else:                            # a random subset (seed 0) of the whole split
        els = ELS(train, 3, n_data=args.n_data, border=args.border)
    grid = sl.schedules.karras(18)[:-1]
    sig = [float(s) for s in grid[::args.sigma_stride]]
    suffix = "" if args.key == "fidelity" else "_" + args.key.removeprefix("fidelity_")
    stem = "local" + suffix
    cal = calibrate_patch_size(els, unet, test[:args.cal_images], sig, patch_sizes=args.patch_sizes)
    model = els.with_patch_size(cal.schedule)
    held = test[args.cal_images:args.cal_images + args.eval_images]
    gen = torch.Generator().manual_seed(1)
    per_sigma = []
    for s in tqdm([float(v) for v in grid], desc="r2 per sigma"):
        x = held + s * torch.randn(held.shape, generator=gen)
        r2 = per_image_r2(model(x, s), unet(x, s))
        per_sigma.append(dict(sigma=s, patch=model.schedule(s), median_r2=float(torch.quantile(r2, 0.5))))
    sigmas = sl.schedules.karras(18)
    a, _ = heun_with_log(model, args.traj_n, 7, sigmas)
    b, _ = heun_with_log(unet, args.traj_n, 7, sigmas)
    traj_r2 = per_image_r2(a, b)
    pairs = record.results_dir(args.out) / (stem + "_els_vs_unet.png")
    save_grid(torch.cat([a[:8], b[:8]]), pairs, nrow=min(8, len(a)), scale=2)
    print(f"\nWhole Heun-18 trajectories from the same noise ({args.traj_n} seeds): median per-image r² of the "
          f"final samples = {float(torch.quantile(traj_r2, 0.5)):.3f}")
    network = record.network(unet_path)
    calibration = cal.to_dict()
    return per_sigma, dict(
        network=network, title=fidelity_title(network["path"]), n_data=model.data_.shape[0],
        els_data=args.els_data, border=args.border,
        calibration={k: calibration[k] for k in ("metric", "patch_sizes", "schedule")},
        trajectory_median_r2=float(torch.quantile(traj_r2, 0.5)), trajectory_r2=[float(v) for v in traj_r2],
        plots=[pairs.name], tables=[calibration_table(calibration)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="speed,sample,wiener,fidelity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-data", type=int, default=256, help="training images for sampling and fidelity")
    ap.add_argument("--border", default="zero", choices=["circular", "zero"])
    ap.add_argument("--els-data", default="subset", choices=["subset", "first"],
                    help="fidelity: ELS's training images, a random --n-data subset of the train split (seed 0) or "
                         "its first --n-data images (those a network trained with --limit N saw)")
    ap.add_argument("--speed-data", type=lambda t: [int(v) for v in t.split(",")], default=[50, 200],
                    help="training-set sizes of the speed comparison, comma-separated (default: 50,200)")
    ap.add_argument("--speed-images", type=int, default=2)
    ap.add_argument("--speed-patch", type=int, default=5)
    ap.add_argument("--sample-n", type=int, default=64)
    ap.add_argument("--sample-patch", type=int, default=5)
    ap.add_argument("--wiener-data", type=int, default=1000)
    ap.add_argument("--energy", type=float, default=0.9)
    ap.add_argument("--cal-images", type=int, default=8)
    ap.add_argument("--eval-images", type=int, default=16)
    ap.add_argument("--traj-n", type=int, default=16)
    ap.add_argument("--sigma-stride", type=int, default=2, help="calibrate on every k-th σ of the Karras-18 grid")
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[3, 5, 7, 9, 11, 15, 21])
    ap.add_argument("--unet", default=str(UNET_DIR),
                    help="reference network directory (default: the shipped models/fashion-mnist-unet)")
    ap.add_argument("--key", default="fidelity",
                    help="name of the fidelity part's record, local_KEY.json, e.g. fidelity_conv for another "
                         "reference network; its sample pairs get the same suffix (default: %(default)s)")
    add_output_arguments(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in DESCRIPTIONS]
    if unknown:
        ap.error(f"--parts must be among {','.join(DESCRIPTIONS)}; got {','.join(unknown)}")

    train = fashion_mnist("train", None, args.data_path)
    test = fashion_mnist("test", None, args.data_path)

    def write(name, part, rows, **fields):
        d = {**DESCRIPTIONS[part], **fields}
        print(f"\n### {d['title']}\n\n" + show(rows, d.get("columns"), keys=d.get("keys", ())))
        for t in d.get("tables", []):
            print(f"\n{t['title']}\n\n" + show(t["rows"], keys=t.get("keys", ())))
        print(f"wrote {record.write(name, rows, out=args.out, **d)}")

    if "speed" in parts:
        write("local_speed", "speed", part_speed(train, test, args))
    if "sample" in parts:
        rows, plots = part_sample(train, args)
        write("local_sample", "sample", rows, plots=plots)
    if "wiener" in parts:
        write("local_wiener", "wiener", part_wiener(train, test, args), n_data=args.wiener_data,
              energy=args.energy)
    if "fidelity" in parts:
        fid = part_fidelity(train, test, args)
        if fid is not None:
            rows, fields = fid
            write(f"local_{args.key}", "fidelity", rows, **fields)


if __name__ == "__main__":
    main()
