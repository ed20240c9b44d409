"""The class-conditional Fashion-MNIST U-Net under classifier-free guidance: per-class accuracy and FD.

    python -m bench.conditional                              # models/fashion-mnist-unet-cond, 100 per class
    python -m bench.conditional --n-per-class 10 --scales 1,3 --model runs/fashion-mnist-unet-cond --out /tmp/x

For each CFG scale w (default 1, 2, 3, 4; `sl.guidance.cfg(net, w)`: D_w = D(·, ∅) + w (D(·, c) − D(·, ∅)), the
null label from class_labels=None) and each class c = 0..9, `--n-per-class` samples are drawn with
`sl.sample(guided, extra_args={"class_labels": c})`, Heun with 18 steps (NFE 35) on the Karras grid σ 80 → 0.002,
seeds 0..n−1 (sample i of every class and every scale starts from the same x_T), and measured with the shipped
classifier models/fashion-mnist-classifier:
  - accuracy: the fraction of class-c samples the classifier labels c;
  - FD: Fréchet distance in the classifier's 128-d penultimate features between the class-c samples and that
    class's 1,000 test images. FD of n samples is biased upwards at small n, so each class also gets the floor
    "FD real": the same statistic for the first n *training* images of class c (what a perfect model would score
    at this n), and "acc real", the classifier's accuracy on class c's test images (what a perfect model's
    samples would score).
With `--particles 1,4` (a list of K) the samples come instead from Feynman–Kac correctors,
`scorelab.smc.sample(smc.cfg(net, w), particles=K)` with DPM-Solver++(2M) SDE on the Karras grid of `--steps` steps
(K = 1 is the plain CFG SDE), seeded by the class; give such a run its own `--name` (e.g. conditional_fkc).
Writes the result record conditional.json (bench/results by default, --out DIR) and one PNG grid per scale
(conditional_w{w}.png: one row per class, the first 10 samples), and prints the tables. One CPU thread by default.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import scorelab as sl
from scorelab import smc
from scorelab._io import atomic_path
from scorelab.images import save_grid
from scorelab.metrics.classifier import default_extractor
from scorelab.metrics.frechet import frechet_distance
from scorelab.metrics.stats import FeatureStats, feature_stats

from . import record
from .common import add_output_arguments, fashion_mnist, show

MODEL = "models/fashion-mnist-unet-cond"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--scales must be comma-separated numbers (e.g. 1,2,3,4); got {text!r}") from None
    if not scales:
        raise ValueError("--scales must name at least one scale")
    return scales


def class_fd(feats: torch.Tensor, ref: FeatureStats) -> float:
    s = feature_stats(feats)
    return frechet_distance(s.mu, s.sigma, ref.mu, ref.sigma)


def generate(net, sha: str, scale: float, n: int, steps: int, batch_size: int,
             particles: int | None = None) -> tuple[torch.Tensor, float, int]:
    """Samples [10, n, 1, 28, 28] at CFG scale `scale` (class c from seeds 0..n−1), seconds, network evaluations.

    Each class's samples are cached (scorelab cache, conditional/: keyed by the network's sha256, scale, class, n,
    steps) with their time and evaluations, so an interrupted run resumes where it stopped."""
    out, seconds, evals = [], 0.0, 0
    folder = record.cache_dir("conditional")
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(10):
        method = f"heun{steps}" if particles is None else f"fkc{particles}_dpmpp2msde{steps}"
        path = folder / f"{sha[:16]}_w{scale:g}_c{c}_n{n}_{method}.pt"
        if path.exists():
            hit = torch.load(path)
        elif particles is not None:
            target = smc.cfg(net, scale)
            t0 = time.perf_counter()
            y = torch.full((n,), c, dtype=torch.long)
            res = smc.sample(target, n, (1, 28, 28), sl.schedules.karras(steps), particles=particles, seed=c,
                             extra_args={"class_labels": y})
            hit = {"images": res.samples.clamp(-1, 1), "seconds": time.perf_counter() - t0,
                   "evals": target.network_evals}
            with atomic_path(path) as tmp:
                torch.save(hit, tmp)
        else:
            guided = sl.guidance.cfg(net, scale)
            t0 = time.perf_counter()
            y = torch.full((n,), c, dtype=torch.long)
            res = sl.sample(guided, n=n, sigmas=sl.schedules.karras(steps), solver="heun", seed=0,
                            batch_size=batch_size, extra_args={"class_labels": y})
            hit = {"images": res.images.clamp(-1, 1), "seconds": time.perf_counter() - t0,
                   "evals": guided.network_evals}
            with atomic_path(path) as tmp:
                torch.save(hit, tmp)
        out.append(hit["images"])
        seconds += hit["seconds"]
        evals += hit["evals"]
    return torch.stack(out), seconds, evals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL, help=f"conditional network directory (default: {MODEL})")
    ap.add_argument("--scales", default="1,2,3,4", help="CFG scales, comma-separated (default: 1,2,3,4)")
    ap.add_argument("--n-per-class", type=int, default=100, help="samples per class and scale (default: 100)")
    ap.add_argument("--steps", type=int, default=18, help="Heun steps (default: 18, NFE 35)")
    ap.add_argument("--particles", default=None, help="Feynman-Kac correctors with these K, comma-separated "
                    "(default: none, plain CFG with Heun)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="conditional", help="record name (default: conditional)")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    try:
        scales = parse_scales(args.scales)
        if args.n_per_class < 2:
            raise ValueError(f"--n-per-class must be >= 2 (FD needs a covariance); got {args.n_per_class}")
        ks = [None] if args.particles is None else [int(v) for v in args.particles.split(",") if v.strip()]
        if args.particles is not None and (not ks or min(ks) < 1):
            raise ValueError(f"--particles must be positive integers, comma-separated; got {args.particles!r}")
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1; got {args.threads}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    net = sl.load_model(args.model)
    if net.n_classes != 10:
        print(f"error: --model must be a 10-class conditional network; {args.model} has n_classes={net.n_classes}",
              file=sys.stderr)
        return 2
    n = args.n_per_class
    sha = sl.nets.model_sha256(args.model)
    clf = default_extractor()
    x_test, y_test = fashion_mnist("test", labels=True, path=args.data_path)
    x_train, y_train = fashion_mnist("train", labels=True, path=args.data_path)
    f_test = clf(x_test)
    pred_test = clf.predict(x_test)
    ref, floor, acc_real = [], [], []
    for c in range(10):
        ref.append(feature_stats(f_test[y_test == c]))
        floor.append(class_fd(clf(x_train[y_train == c][:n]), ref[c]))
        acc_real.append(float((pred_test[y_test == c] == c).double().mean()))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, summary, plots = [], [], []
    for w, k in [(w, k) for w in scales for k in ks]:
        images, seconds, evals = generate(net, sha, w, n, args.steps, args.batch_size, k)
        kcol = {} if k is None else {"K": k}
        accs, fds = [], []
        for c in range(10):
            accs.append(float((clf.predict(images[c]) == c).double().mean()))
            fds.append(class_fd(clf(images[c]), ref[c]))
            rows.append({"scale": w, **kcol, "class": c, "name": CLASSES[c], "accuracy": round(accs[c], 4),
                         "FD": round(fds[c], 3), "FD real": round(floor[c], 3), "acc real": round(acc_real[c], 4)})
        summary.append({"scale": w, **kcol, "mean accuracy": round(sum(accs) / 10, 4), "mean FD": round(sum(fds) / 10, 3),
                        "mean FD real": round(sum(floor) / 10, 3), "samples": 10 * n,
                        "network evals": evals, "per sample": evals // 10 * (k or 1), "seconds": round(seconds, 1)})
        grid = f"{args.name}_w{w:g}.png" if k is None else f"{args.name}_w{w:g}_K{k}.png"
        save_grid(images[:, :10].reshape(-1, 1, 28, 28), out / grid, nrow=min(10, n), scale=2)
        plots.append(grid)
        print(f"scale {w:g}{'' if k is None else f', K = {k}'}: mean accuracy {summary[-1]['mean accuracy']:.3f}, "
              f"mean FD {summary[-1]['mean FD']:.2f} ({seconds:.0f} s)", flush=True)

    fkc = ks != [None]
    sampler = f"Feynman-Kac correctors, DPM-Solver++(2M) SDE {args.steps}" if fkc else f"Heun {args.steps}"
    title = (f"Conditional U-Net with CFG: per-class classifier accuracy and FD (classifier features), {sampler}, "
             f"{n} samples per class")
    notes = (f"{n} samples per class and scale, seeds 0..{n - 1} (the same x_T for every class and scale). FD: "
             "classifier-feature Fréchet distance to the class's 1,000 test images; 'FD real' is the same statistic "
             f"for {n} training images of the class (the small-sample floor), 'acc real' the classifier's accuracy "
             "on the class's test images. Grids: one row per class (0 T-shirt … 9 ankle boot), the first 10 samples."
             + ("" if not fkc else " K: particles per sample of scorelab.smc.sample(smc.cfg(net, w)) (one "
                "population per sample, resampled when ESS < K/2, seed = the class); K = 1 is the plain CFG SDE; "
                "network evals: calls of the networks on the 10 class batches (a batch holds n·K particles); per sample: "
                "network evaluations per returned sample (K × those of one particle)."))
    keys = ["scale", "K", "class"] if fkc else ["scale", "class"]
    columns = ["scale", *(["K"] if fkc else []), "class", "name", "accuracy", "FD", "FD real", "acc real"]
    path = record.write(args.name, rows, out=args.out, title=title, network=record.network(args.model),
                        columns=columns, keys=keys, tables=[{"title": "Mean over the 10 classes", "rows": summary}],
                        plots=plots, notes=notes, samples_per_class=n, steps=args.steps,
                        solver="fkc-dpmpp_2m_sde" if fkc else "heun")
    print(show(summary))
    print()
    print(show(rows, columns=columns))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
