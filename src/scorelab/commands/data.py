"""`scorelab data list | show | export`: the registered data sets, a PNG preview, an array export."""
from __future__ import annotations

import math


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list, preview or export data sets",
                              description="Data sets: `list` what is registered and available, `show` a PNG grid "
                                          "(images) or scatter (2-D toy sets), `export` to .npy/.npz.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    q = sub.add_parser("list", help="table of data sets: shape, sizes, available here or how to get them")
    q.set_defaults(func=run_list)

    q = sub.add_parser("show", help="write a PNG grid of images, or a scatter plot of a 2-D toy set")
    _add_source_args(q)
    q.add_argument("--n", type=int, default=None, metavar="N",
                   help="images in the grid (default 64) or points in the scatter (default 2000)")
    q.add_argument("--scale", type=int, default=None, help="pixel enlargement of the grid (default: auto)")
    q.add_argument("--out", required=True, metavar="FILE.png", help="output PNG")
    q.set_defaults(func=run_show)

    q = sub.add_parser("export", help="write a data set to .npy (images/vectors) or .npz (x and y)")
    _add_source_args(q)
    q.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N samples")
    q.add_argument("--n", type=int, default=None, metavar="N", help="toy sets: number of points (default 10000)")
    q.add_argument("--labels", action="store_true", help="also write labels (needs --out FILE.npz: keys x, y)")
    q.add_argument("--uint8", action="store_true", help="store images as uint8 0..255 (round((x + 1) * 127.5); exact for 8-bit sources)")
    q.add_argument("--out", required=True, metavar="FILE.npy|FILE.npz", help="output array file")
    q.set_defaults(func=run_export)


def _add_source_args(q) -> None:
    q.add_argument("name", metavar="NAME|PATH", help="data set name (see `scorelab data list`) or a path")
    q.add_argument("--split", default="train", choices=["train", "test"], help="data split (default: train)")
    q.add_argument("--path", default=None, help="files of mnist / cifar10 / folder / npy / fashion-mnist")
    q.add_argument("--size", type=int, default=None, help="folder: resize images to SIZE×SIZE (centre crop)")
    q.add_argument("--seed", type=int, default=None, help="toy sets: random seed (default 0)")


def _options(args, n=None) -> dict:
    from ..data import DATASETS
    from ..data.toy import TOY

    kw = {}
    if args.path is not None:
        if args.name not in DATASETS:
            raise ValueError(f"--path is for registered names; {args.name!r} is already a path")
        kw["path"] = args.path
    if args.size is not None:
        kw["size"] = args.size
    if args.name in TOY:
        if n is not None:
            kw["n"] = n
        if args.seed is not None:
            kw["seed"] = args.seed
    elif args.seed is not None:
        raise ValueError(f"--seed applies to the toy sets {sorted(TOY)}; got {args.name!r}")
    return kw


def run_list(args) -> int:
    from ..data import info

    from ..tables import markdown

    rows = [{"name": r["name"], "shape": r["shape"], "train / test": r["sizes"], "labels": bool(r["labels"]),
             "available": bool(r["available"]), "where / how to get": r["where"]} for r in info()]
    print(markdown(rows))
    return 0


def run_show(args) -> int:
    from ..data import resolve
    from ..data.toy import TOY
    from ..images import save_grid, save_scatter

    toy = args.name in TOY
    n = args.n if args.n is not None else (2000 if toy else 64)
    if n < 1:
        raise ValueError(f"--n must be >= 1; got {n}")
    x = resolve(args.name, split=args.split, limit=n, **_options(args, n=n))
    if x.ndim == 2 and x.shape[1] == 2:
        save_scatter(x, args.out, title=f"{args.name} ({args.split}, n={x.shape[0]})")
    elif x.ndim == 4:
        scale = args.scale or max(1, round(56 / x.shape[-2]))
        save_grid(x, args.out, nrow=max(1, math.ceil(math.sqrt(x.shape[0]))), scale=scale)
    else:
        raise ValueError(f"show draws images [N, C, H, W] or 2-D points [N, 2]; {args.name!r} has shape "
                         f"{tuple(x.shape)}")
    print(f"wrote {args.out} ({x.shape[0]} samples of shape {tuple(x.shape[1:])})")
    return 0


def run_export(args) -> int:
    import numpy as np
    import torch

    from .._io import atomic_path
    from ..data import resolve

    out = str(args.out)
    if not out.endswith((".npy", ".npz")):
        raise ValueError(f"--out must end in .npy or .npz; got {out!r}")
    if args.labels and not out.endswith(".npz"):
        raise ValueError(f"--labels needs --out FILE.npz (keys x, y); got {out!r}")
    got = resolve(args.name, split=args.split, limit=args.limit, labels=args.labels, **_options(args, n=args.n))
    x, y = got if args.labels else (got, None)
    if args.uint8:
        if x.ndim != 4:
            raise ValueError(f"--uint8 is for images [N, C, H, W]; {args.name!r} has shape {tuple(x.shape)}")
        a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    else:
        a = x.to(torch.float32).numpy()
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        if out.endswith(".npz"):
            np.savez(f, **({"x": a, "y": y.numpy()} if y is not None else {"x": a}))
        else:
            np.save(f, a)
    print(f"wrote {out} (x {a.dtype} {a.shape}" + (f", y int64 {tuple(y.shape)})" if y is not None else ")"))
    return 0
