"""`scorelab fit KIND --data NAME|PATH --out FILE`: fit any closed-form model and save it.

The models know nothing of the command line: this module holds, for every kind, its options (one table,
`MODEL_OPTIONS`) and how the parsed options build the model through its Python constructor or `fit`."""
from __future__ import annotations

import json
import time

from ..models import model_class
from ..models.cfdm import CFDM
from ..models.empirical import Empirical
from ..models.gaussian import Gaussian
from ..models.gmm import COVARIANCES, GMM
from ..models.knn import INDEXES, KNN
from ..models.local import ELS, PSPC, PatchSchedule
from ..models.local_wiener import Wiener
from . import add_data_args, add_device_args, torch_dtype


def _arg(*flags, **kwargs):
    return flags, kwargs


_LOCAL_OPTIONS = (
    _arg("--patch-size", default="5", metavar="P|SIGMA:P,...|FILE.json",
         help="odd patch size, a schedule 'sigma:size,...' (size for sigma >= threshold) or the JSON written by "
              "calibrate_patch_size (default: 5)"),
    _arg("--no-equivariant", dest="equivariant", action="store_false",
         help="use only the training patches at each pixel's own location (LS)"),
    _arg("--n-data", type=int, default=None, metavar="N",
         help="random subset of N training images (cost grows linearly in N)"),
    _arg("--chunk-size", type=int, default=None, metavar="ELEMENTS",
         help="elements per block of logits (bounds memory; default: 2**18)"),
)


def _border(choices):
    return _arg("--border", default="circular", choices=list(choices),
                help="image border: circular wrap, zero padding (boundary-broken)"
                     + (", valid patches only" if "valid" in choices else ""))


def _device(args) -> dict:
    """device= / dtype= from --device / --dtype, when the parser has them (a bare parser in a test may not)."""
    out = {}
    if getattr(args, "device", None):
        out["device"] = args.device
    if getattr(args, "dtype", None):
        out["dtype"] = torch_dtype(args.dtype)
    return out


def _chunk(args) -> dict:
    return {} if getattr(args, "chunk_size", None) is None else {"chunk_size": args.chunk_size}


def _labels(args) -> dict:
    """labels= for a class-conditional fit (--labels: the data set's labels, read by _run), else nothing."""
    labels = getattr(args, "label_values", None)
    return {} if labels is None else {"labels": labels}


def _build_gaussian(data, args):
    import torch

    return Gaussian.fit(data, rank=args.rank, dtype=torch.float32 if args.float32 else torch.float64,
                        device=getattr(args, "device", None), **_labels(args))


def _build_gmm(data, args):
    return GMM.fit(data, args.n_components, args.covariance, args.rank, max_iter=args.max_iter,
                   reg_covar=args.reg_covar, seed=getattr(args, "seed", 0), progress=True, **_device(args),
                   **_labels(args))


def _build_empirical(data, args):
    return Empirical(data, flip=args.flip, **_chunk(args), **_device(args), **_labels(args))


def _build_knn(data, args):
    return KNN(data, k=args.k, n_random=args.n_random, index=args.index, nprobe=args.nprobe,
               seed=getattr(args, "seed", 0), **_device(args), **_labels(args))


def _build_cfdm(data, args):
    return CFDM(data, args.smoothing, args.n_draws, estimator=args.estimator, k=args.k, n_random=args.n_random,
                sigma_start=args.sigma_start, seed=getattr(args, "seed", 0), **_device(args))


def _build_patches(cls):
    def build(data, args):
        return cls(data, PatchSchedule.parse(args.patch_size), equivariant=args.equivariant,
                   border=args.border, n_data=args.n_data, seed=getattr(args, "seed", 0), **_chunk(args),
                   **_device(args))
    return build


def _build_wiener(data, args):
    return Wiener(data, mode=args.mode, energy=args.energy, n_data=args.n_data, seed=getattr(args, "seed", 0),
                  **_chunk(args), **_device(args))


_LABELS = _arg("--labels", action="store_true",
               help="class-conditional: also fit one model per class of the data set's labels (a named data set "
                    "with labels); sample it with `scorelab sample --class`")

# kind → (its options, build(data, args) -> fitted model). `--data`, `--out`, `--seed`, `--device`, `--dtype`
# are common to every kind; a model that draws random numbers takes `--seed` as its seed.
MODEL_OPTIONS = {
    "gaussian": ((
        _arg("--rank", type=int, default=None, metavar="R",
             help="keep the top R eigenpairs; the rest become one isotropic residual variance (default: full rank)"),
        _arg("--float32", action="store_true",
             help="store the fitted model in float32 (statistics are always accumulated in float64)"),
        _LABELS,
    ), _build_gaussian),
    "gmm": ((
        _arg("--n-components", type=int, default=10, help="mixture components K (default: 10)"),
        _arg("--covariance", default="full", choices=COVARIANCES, help="covariance family"),
        _arg("--rank", type=int, default=None, help="rank for --covariance lowrank"),
        _arg("--max-iter", type=int, default=100, help="EM iterations (default: 100)"),
        _arg("--reg-covar", type=float, default=1e-6, help="added to every variance (default 1e-6)"),
        _LABELS,
    ), _build_gmm),
    "empirical": ((
        _arg("--chunk-size", type=int, default=None, help="data rows per GEMM (default: 4096)"),
        _arg("--flip", action="store_true", help="add horizontally mirrored training images"),
        _LABELS,
    ), _build_empirical),
    "knn": ((
        _arg("--k", type=int, default=64, help="nearest neighbours per query (default: 64)"),
        _arg("--n-random", type=int, default=256, help="uniform tail draws (default: 256)"),
        _arg("--index", default="auto", choices=INDEXES,
             help="neighbour search (default: auto)"),
        _arg("--nprobe", type=int, default=16, help="IVF lists searched per query (default: 16)"),
        _LABELS,
    ), _build_knn),
    "cfdm": ((
        _arg("--smoothing", type=float, required=True, help="smoothing scale λ >= 0"),
        _arg("--n-draws", type=int, default=8, help="Monte-Carlo draws of z (default: 8)"),
        _arg("--estimator", default="exact", choices=["exact", "knn"],
             help="posterior mean per draw: exact (streamed) or nearest-neighbour"),
        _arg("--k", type=int, default=64, help="neighbours for --estimator knn (default: 64)"),
        _arg("--n-random", type=int, default=256, help="tail draws for --estimator knn"),
        _arg("--sigma-start", type=float, default=1.0, help="σ where sampling starts (default: 1)"),
    ), _build_cfdm),
    "els": ((*_LOCAL_OPTIONS, _border(ELS.borders)), _build_patches(ELS)),
    "pspc": ((*_LOCAL_OPTIONS, _border(PSPC.borders)), _build_patches(PSPC)),
    "wiener": ((
        _arg("--mode", default="masked", choices=Wiener.MODES,
             help="masked empirical denoiser (default) or the linear Wiener filter"),
        _arg("--energy", type=float, default=0.9,
             help="fraction of each filter row's squared weight kept in the locality mask"),
        _arg("--n-data", type=int, default=None, metavar="N",
             help="random subset of N images for the masked empirical denoiser"),
        _arg("--chunk-size", type=int, default=None, help="elements per block (default: 2**18)"),
    ), _build_wiener),
}


def add_model_arguments(kind: str, parser) -> None:
    """Add the options of model `kind` (see `MODEL_OPTIONS`) to an argparse parser."""
    for flags, kwargs in MODEL_OPTIONS[kind][0]:
        parser.add_argument(*flags, **kwargs)


def build_model(kind: str, data, args):
    """The model `kind` fitted to `data` with the parsed options `args`."""
    return MODEL_OPTIONS[kind][1](data, args)


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit a closed-form denoiser to a data set and save it",
                       description="Fit a closed-form denoiser (Gaussian, GMM, empirical, ...) and save it "
                                   "as safetensors with a JSON header.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in MODEL_OPTIONS:
        doc = (model_class(kind).__doc__ or kind).strip().splitlines()[0]
        q = kinds.add_parser(kind, help=doc, description=doc)
        add_data_args(q)
        q.add_argument("--out", required=True, metavar="FILE", help="where to write the fitted model (.safetensors)")
        q.add_argument("--seed", type=int, default=0,
                       help="random seed: torch's global seed and the model's own (default: 0)")
        add_device_args(q)
        add_model_arguments(kind, q)
        q.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from .. import data as data_mod
    from .. import distributed

    # under torchrun: fitting is one pass over the data (or storing it), not sharded; rank 0 fits and writes,
    # the other ranks leave at once (a sharded exact denoiser is sl.ShardedEmpirical over the data's .npy)
    if distributed.init() and distributed.rank() != 0:
        return 0
    torch.manual_seed(args.seed)
    if getattr(args, "labels", False):
        if args.data not in data_mod.DATASETS:
            raise ValueError(f"--labels needs a named data set with class labels (e.g. fashion-mnist, digits); "
                             f"got --data {args.data!r}")
        try:
            x, args.label_values = data_mod.load(args.data, args.split, limit=args.limit, labels=True)
        except ValueError as e:
            if "no labels" not in str(e):
                raise
            raise ValueError(f"--labels: data set {args.data!r} has no class labels") from None
    else:
        x = data_mod.resolve(args.data, split=args.split, limit=args.limit)
    t0 = time.perf_counter()
    model = build_model(args.kind, x, args)
    seconds = time.perf_counter() - t0
    model.save(args.out)
    print(json.dumps({"kind": args.kind, "data": args.data, "n_samples": int(len(x)),
                      "seconds": round(seconds, 3), "out": args.out}))
    return 0
