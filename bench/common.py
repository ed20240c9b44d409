"""Shared pieces of the bench scripts: the command-line options every script has (--out, --data-path), the
reference U-Net (also at an earlier git revision), Fashion-MNIST, tables for the terminal, and k-diffusion's
`sampling.py` loaded without the rest of its package (which needs torchvision, skimage, ...)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import types
from pathlib import Path

from scorelab.tables import markdown, split_columns

from .record import RESULTS, ROOT, cache_dir

UNET_DIR = ROOT / "models" / "fashion-mnist-unet"


def add_output_arguments(ap, data: bool = True) -> None:
    """--out DIR (where the result record and its plots go; default bench/results) and --data-path DIR (the
    Fashion-MNIST IDX files, when scorelab.data cannot find them itself)."""
    ap.add_argument("--out", default=str(RESULTS), metavar="DIR",
                    help="folder of the result record and its plots (default: the package's bench/results)")
    if data:
        ap.add_argument("--data-path", default=None, metavar="DIR",
                        help="folder with the Fashion-MNIST IDX files (default: found by scorelab.data.load)")


def fashion_mnist(split: str, n: int | None = None, path=None, labels: bool = False):
    """Fashion-MNIST images [N, 1, 28, 28] in [-1, 1] (the first `n`), via `scorelab.data.load` (`path`: --data-path)."""
    import scorelab as sl

    return sl.data.load("fashion-mnist", split=split, limit=n, labels=labels,
                        **({"path": path} if path else {}))


def show(rows: list[dict], columns=None, keys=(), digits: int = 4) -> str:
    """Markdown for the terminal: the rows over `columns` (default: all scalar ones), split into tables of at most 8
    columns that repeat the `keys` (scorelab.tables)."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = [c for c in dict.fromkeys(k for r in rows for k in r)
                   if all(not isinstance(r.get(c), (list, dict)) for r in rows)]
    return "\n\n".join(markdown(rows, group, digits=digits) for group in split_columns(columns, keys))


def unet_path(explicit: str | None = None) -> tuple[Path, str]:
    """(directory, label) of the reference U-Net: `explicit`, else the shipped models/fashion-mnist-unet.
    `explicit` may name an earlier version of a model committed to this repository, DIR@REV (e.g.
    models/fashion-mnist-unet@873d414): its files are read from git into the cache."""
    if explicit and "@" in str(explicit):
        return model_at_revision(*str(explicit).rsplit("@", 1)), str(explicit)
    if explicit:
        return Path(explicit), str(explicit)
    if (UNET_DIR / "model.safetensors").exists():
        return UNET_DIR, "models/fashion-mnist-unet"
    raise FileNotFoundError("no reference U-Net: models/fashion-mnist-unet/model.safetensors is missing (pass --unet)")


def load_unet(explicit: str | None = None, dtype=None):
    """(the U-Net as a σ-space denoiser, its label)."""
    import scorelab as sl

    path, label = unet_path(explicit)
    return sl.load_model(path, **({"dtype": dtype} if dtype is not None else {})), label


def unet_network(explicit: str | None = None) -> dict:
    """The record's "network" of the U-Net `explicit` names (see unet_path)."""
    from .record import network

    path, label = unet_path(explicit)
    return network(path, label)


def teleport_row_order(r: dict):
    """Table order of teleport rows: solver, steps, plain before warm history, skip ascending, 'auto' last."""
    skip = r["skip"]
    return r["solver"], r["steps"], bool(r["warm_history"]), skip == "auto", 0.0 if skip == "auto" else float(skip)


def model_at_revision(directory: str, rev: str) -> Path:
    """model.safetensors + config.json of repository directory `directory` at git revision `rev`, extracted once
    into the cache's models/<rev>/<directory> (atomically)."""
    from scorelab._io import atomic_path

    out = cache_dir("models", rev, directory)
    for name in ("config.json", "model.safetensors"):
        target = out / name
        if target.exists():
            continue
        res = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{directory}/{name}"], capture_output=True)
        if res.returncode != 0:
            raise FileNotFoundError(f"--unet {directory}@{rev}: git cannot read {directory}/{name} at {rev}: "
                                    f"{res.stderr.decode().strip()}")
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(res.stdout)
    return out


def k_diffusion_sampling():
    """k-diffusion's `sampling` module, or None. Its package __init__ imports torchvision, kornia, skimage, ...
    that this machine lacks; `sampling.py` itself needs only torch, scipy, torchdiffeq, torchsde, tqdm and
    `utils.append_dims`, so it is loaded from the installed file with a one-function stand-in for `utils`."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    pkg = types.ModuleType("_kd_bench")
    pkg.__path__ = []
    utils = types.ModuleType("_kd_bench.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules.setdefault("_kd_bench", pkg)
    sys.modules.setdefault("_kd_bench.utils", utils)
    mod_spec = importlib.util.spec_from_file_location("_kd_bench.sampling", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as err:  # torchdiffeq / torchsde missing
        print(f"k-diffusion sampling unavailable: {err}", file=sys.stderr)
        return None
    module.version = _dist_version("k-diffusion")
    return module


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def best_time(fn, reps: int) -> tuple[float, object]:
    """(min wall seconds over `reps` runs, last result)."""
    best, out = float("inf"), None
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def cached_run(folder: str, key: dict, run, fields, prefix: str = ""):
    """(the fields of a sampling run as a dict, whether it came from the cache): the run whose `key` (everything
    that determines its images; the torch version is added) was stored before under the cache's `folder`, else
    `run()` (a `SampleResult`), whose attributes `fields` are stored atomically (`scorelab._io.atomic_path`)."""
    import hashlib
    import json

    import torch

    from scorelab._io import atomic_path

    key = {**key, "torch": str(torch.__version__)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir(folder) / f"{prefix}{digest}.pt"
    if path.exists():
        saved = torch.load(path)
        if saved["key"] == key:
            return saved["run"], True
    res = run()
    values = {f: getattr(res, f) for f in fields}
    with atomic_path(path, ".pt") as tmp:
        torch.save({"key": key, "run": values}, tmp)
    return values, False
