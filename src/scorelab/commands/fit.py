"""`scorelab fit KIND --data NAME|PATH --out FILE`: fit any closed-form model and save it."""
from __future__ import annotations

import json
import time

from . import add_data_args, add_device_args


def register(sub) -> None:
    from ..models import REGISTRY, model_class

    p = sub.add_parser("fit", help="fit a closed-form denoiser to a data set and save it",
                       description="Fit a closed-form denoiser (Gaussian, GMM, empirical, ...) and save it "
                                   "as safetensors with a JSON header.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in REGISTRY:
        try:
            cls = model_class(kind)
        except ValueError:
            continue  # not available in this installation
        doc = (cls.__doc__ or kind).strip().splitlines()[0]
        q = kinds.add_parser(kind, help=doc, description=doc, conflict_handler="resolve")
        add_data_args(q)
        q.add_argument("--out", required=True, metavar="FILE", help="where to write the fitted model (.safetensors)")
        q.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        add_device_args(q)
        cls.add_cli_arguments(q)
        q.set_defaults(func=_run, model_cls=cls)


def _run(args) -> int:
    import torch

    from .. import data as data_mod

    torch.manual_seed(args.seed)
    x = data_mod.resolve(args.data, split=args.split, limit=args.limit)
    t0 = time.perf_counter()
    model = args.model_cls.fit_from_cli(x, args)
    seconds = time.perf_counter() - t0
    model.save(args.out)
    print(json.dumps({"kind": args.model_cls.kind, "data": args.data, "n_samples": int(len(x)),
                      "seconds": round(seconds, 3), "out": args.out}))
    return 0
