"""`scorelab restore --model FILE|DIR --op inpaint|downsample|blur --from-data NAME --index I --out DIR`: solve a
linear inverse problem y = A x0 + σ_y ε with a posterior sampler, writing a PNG grid and a JSON summary."""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import add_device_args, torch_dtype

MASKS = "half (the bottom half hidden) or randomNN (NN% of the pixels hidden at random, NN from 0 to 99, e.g. random70)"


def register(sub) -> None:
    from ..inverse import METHODS

    p = sub.add_parser(
        "restore", help="inpainting, super-resolution, deblurring: posterior samples for y = A x0 + σ_y ε",
        description="Observe an image through a linear operator (inpainting mask, average-pool downsampling or a "
                    "circular blur) plus Gaussian noise σ_y, then draw posterior samples with a prior model: exact "
                    "(a fitted Gaussian/GMM), DPS, ΠGDM, DMPS or SMC (any model). Writes DIR/restore.png (ground "
                    "truth, observation, samples, and the exact posterior mean when the prior is a Gaussian or "
                    "GMM), DIR/summary.json (method, NFE, PSNR/SSIM to the ground truth) and DIR/samples.npy.")
    p.add_argument("--model", required=True, metavar="FILE|DIR",
                   help="a Gaussian/GMM saved by `scorelab fit` (.safetensors) or a trained network (directory)")
    p.add_argument("--op", required=True, choices=["inpaint", "downsample", "blur"], help="measurement operator")
    p.add_argument("--mask", default=None, metavar="half|randomNN",
                   help=f"inpainting mask: {MASKS.replace('%', '%%')} (default: half)")
    p.add_argument("--factor", type=int, default=None, help="downsampling factor (default: 2)")
    p.add_argument("--kernel", default=None, metavar="gaussian:STD|box:K",
                   help="blur kernel: a Gaussian of std STD pixels or a K×K box (default: gaussian:1.5)")
    p.add_argument("--input", default=None, metavar="PNG", help="ground-truth image (resized to the model's shape)")
    p.add_argument("--from-data", default=None, metavar="NAME", help="take the ground truth from a data set")
    p.add_argument("--index", type=int, default=0, help="image index in --from-data (default: 0)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of --from-data (default: test)")
    p.add_argument("--sigma-y", type=float, default=0.05, help="observation noise std σ_y > 0 (default: 0.05)")
    p.add_argument("--method", default="pigdm", choices=list(METHODS), help="posterior sampler (default: pigdm)")
    p.add_argument("--n", type=int, default=8, help="number of posterior samples (default: 8)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps on a Karras grid (default: 50)")
    p.add_argument("--solver", default=None,
                   help="scorelab sampler for pigdm/dmps (default: euler_ancestral); euler/euler_ancestral for dps")
    p.add_argument("--zeta", type=float, default=None, help="DPS step size ζ (default: 1)")
    p.add_argument("--particles", type=int, default=None, help="SMC particles per sample (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mask, the observation noise and the sampler")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_args(p)
    p.set_defaults(func=_run)


def make_mask(spec: str, shape, seed: int = 0):
    """A bool mask of the sample shape [C, H, W] (kept pixels True, shared by the channels): 'half' keeps the top
    half; 'randomNN' hides NN% of the pixels, drawn with `seed`."""
    import torch

    if len(shape) < 2:
        raise ValueError(f"--mask needs image samples [C, H, W]; the model's samples have shape {list(shape)}")
    h, w = shape[-2:]
    if spec == "half":
        keep = torch.zeros(h, w, dtype=torch.bool)
        keep[: h // 2] = True
    else:
        m = re.fullmatch(r"random(\d{1,2})", spec)
        if m is None:
            raise ValueError(f"--mask must be {MASKS}; got {spec!r}")
        hidden = round(int(m.group(1)) / 100 * h * w)
        order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
        keep = torch.ones(h * w, dtype=torch.bool)
        keep[order[:hidden]] = False
        keep = keep.reshape(h, w)
    return keep.expand(*shape).clone()


def make_kernel(spec: str):
    """'gaussian:STD' → a normalised Gaussian kernel; 'box:K' → a K×K box."""
    import torch

    from ..inverse import gaussian_kernel

    kind, _, value = spec.partition(":")
    try:
        if kind == "gaussian":
            return gaussian_kernel(float(value))
        if kind == "box" and int(value) > 0:
            k = int(value)
            return torch.full((k, k), 1.0 / k ** 2, dtype=torch.float64)
    except ValueError:
        pass
    raise ValueError(f"--kernel must be gaussian:STD (STD > 0) or box:K (K >= 1); got {spec!r}")


def _ground_truth(args, shape):
    import numpy as np
    import torch

    if args.input is not None:
        from PIL import Image, UnidentifiedImageError

        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input {str(path)!r} does not exist")
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"--input needs a model of images [C, H, W] with C = 1 or 3; got {list(shape)}")
        try:
            with Image.open(path) as img:
                img = img.convert("L" if shape[0] == 1 else "RGB").resize((shape[2], shape[1]), Image.BILINEAR)
                a = np.asarray(img, dtype=np.float64)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"--input {str(path)!r} is not a readable image ({e})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(a / 127.5 - 1.0)
    from .. import data

    if args.index < 0:
        raise ValueError(f"--index must be >= 0; got {args.index}")
    x = data.load(args.from_data, split=args.split, limit=args.index + 1)
    if args.index >= x.shape[0]:
        raise ValueError(f"--index {args.index} is out of range: {args.from_data} ({args.split}) has "
                         f"{x.shape[0]} images")
    x0 = x[args.index].to(torch.float64)
    if tuple(x0.shape) != tuple(shape):
        raise ValueError(f"--from-data {args.from_data} has images of shape {list(x0.shape)} but the model's "
                         f"samples have shape {list(shape)}")
    return x0


def _run(args) -> int:
    import numpy as np
    import torch

    from .. import inverse, schedules
    from .._io import atomic_path, write_json
    from ..images import save_grid
    from ..models.gaussian import Gaussian
    from ..models.gmm import GMM
    from .sample import load_denoiser

    applies = {"--mask": ("mask", "--op", "inpaint"), "--factor": ("factor", "--op", "downsample"),
               "--kernel": ("kernel", "--op", "blur"), "--zeta": ("zeta", "--method", "dps"),
               "--particles": ("particles", "--method", "smc")}
    for flag, (attr, owner, value) in applies.items():         # an option that does not apply is refused
        if getattr(args, attr) is not None and getattr(args, owner[2:]) != value:
            raise ValueError(f"{flag} applies to {owner} {value} only; got {owner} {getattr(args, owner[2:])}")
    args.mask = "half" if args.mask is None else args.mask
    args.factor = 2 if args.factor is None else args.factor
    args.kernel = "gaussian:1.5" if args.kernel is None else args.kernel
    args.zeta = 1.0 if args.zeta is None else args.zeta
    args.particles = 8 if args.particles is None else args.particles
    for name, value in (("--n", args.n), ("--steps", args.steps), ("--particles", args.particles)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if not args.sigma_y > 0:
        raise ValueError(f"--sigma-y must be > 0 (the observation noise std); got {args.sigma_y}")
    if (args.input is None) == (args.from_data is None):
        raise ValueError("give exactly one of --input PNG and --from-data NAME")
    model = load_denoiser(args.model, device=args.device)
    shape = getattr(model, "shape_", None)
    if shape is None:
        raise ValueError(f"--model {args.model!r} records no sample shape")
    shape = tuple(shape)
    x0 = _ground_truth(args, shape)
    if args.op == "inpaint":
        op = inverse.Inpaint(make_mask(args.mask, shape, args.seed))
    elif args.op == "downsample":
        op = inverse.Downsample(args.factor)
    else:
        op = inverse.Blur(make_kernel(args.kernel))
    op.output_shape(shape)                                            # size errors before any work
    noise_gen = torch.Generator().manual_seed(args.seed)
    ax = op.A(x0[None])
    y = ax + args.sigma_y * torch.randn(ax.shape, generator=noise_gen, dtype=torch.float64)
    analytic = isinstance(model, (Gaussian, GMM))
    if args.method == "exact" and not analytic:
        raise ValueError("--method exact needs a Gaussian or GMM prior (scorelab fit gaussian|gmm)")
    dtype = torch.float64 if analytic else torch_dtype(args.dtype)
    opts = {}
    if args.method == "dps":
        opts["zeta"] = args.zeta
    if args.method == "smc":
        opts["particles"] = args.particles
    if args.method != "exact":
        opts["sigmas"] = schedules.karras(args.steps)
    if args.solver is not None:
        if args.method not in ("dps", "pigdm", "dmps"):
            raise ValueError(f"--solver applies to --method dps, pigdm or dmps; got --method {args.method}")
        opts["solver"] = args.solver
    bar = None
    if args.method in ("dps", "pigdm", "dmps") and not args.no_progress:
        from .._io import progress_bar

        bar = progress_bar(total=args.steps, desc=f"restore {args.method}", unit="step")
        opts["callback"] = lambda info: bar.update(1)
    try:
        result = inverse.sample(model, op, y, args.sigma_y, args.method, n=args.n, seed=args.seed,
                                device=args.device, dtype=dtype, **opts)
    except NotImplementedError as e:
        raise ValueError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    samples = result.samples.detach().to("cpu", torch.float64)
    exact_mean = None
    if analytic:
        exact_mean = inverse.exact_posterior(model, op, y, args.sigma_y).mean_.to("cpu", torch.float64)
    observation = y[0] if isinstance(op, inverse.Blur) else op.pinv(y)[0]
    rows = [x0, observation.reshape(shape), *samples] + ([exact_mean] if exact_mean is not None else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = torch.stack(rows).float()
    if grid.ndim == 4:
        save_grid(grid, out / "restore.png", nrow=len(rows) if len(rows) <= 12 else 10,
                  scale=4 if shape[-1] <= 32 else 1)
    with atomic_path(out / "samples.npy", ".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, samples.numpy())

    def quality(x):
        x = x.reshape(-1, *shape)
        q = {"psnr": float(inverse.psnr(x, x0).mean())}
        if len(shape) == 3:
            q["ssim"] = float(inverse.ssim(x, x0).mean())
        return q

    summary = dict(model=str(args.model), op=repr(op), sigma_y=args.sigma_y, **result.summary(),
                   ground_truth=args.input or f"{args.from_data}[{args.split}][{args.index}]",
                   samples_quality=quality(samples), sample_mean_quality=quality(samples.mean(0)),
                   exact_mean_quality=quality(exact_mean) if exact_mean is not None else None,
                   device=args.device, dtype=str(dtype).removeprefix("torch."),
                   grid=str(out / "restore.png") if grid.ndim == 4 else None)
    if exact_mean is not None:
        with atomic_path(out / "exact_mean.npy", ".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, exact_mean.numpy())
    write_json(out / "summary.json", summary)
    print(json.dumps(summary))
    return 0
