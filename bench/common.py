"""Shared pieces of the bench scripts: machine description, result files, the reference U-Net, Fashion-MNIST,
and k-diffusion's `sampling.py` loaded without the rest of its package (which needs torchvision, skimage, ...)."""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
import types
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Where results go: bench/results, or $SCORELAB_BENCH_RESULTS (run_all --quick uses bench/results/quick, so a quick
# run never overwrites the full results the README is generated from).
RESULTS = Path(os.environ.get("SCORELAB_BENCH_RESULTS") or BENCH / "results")
UNET_DIR = ROOT / "models" / "fashion-mnist-unet"


def machine() -> dict:
    """Where a number was measured: cores, threads, torch version, date (UTC)."""
    return dict(cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), platform=platform.platform(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def write_result(name: str, payload: dict, command: str) -> Path:
    """bench/results/<name>.json with the payload, the reproducing command and the machine (atomic write)."""
    from scorelab._io import write_json

    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(command=command, machine=machine(), **payload))
    return path


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    script = os.path.relpath(sys.argv[0], ROOT)
    return " ".join([".venv/bin/python", script] + sys.argv[1:])


def unet_path(explicit: str | None = None) -> tuple[Path, str]:
    """(directory, label) of the reference U-Net: `explicit`, else the shipped models/fashion-mnist-unet.
    `explicit` may name an earlier version of a model committed to this repository, DIR@REV (e.g.
    models/fashion-mnist-unet@873d414): its files are read from git into a cache directory."""
    if explicit and "@" in str(explicit):
        return model_at_revision(*str(explicit).rsplit("@", 1)), str(explicit)
    if explicit:
        return Path(explicit), str(explicit)
    if (UNET_DIR / "model.safetensors").exists():
        return UNET_DIR, "models/fashion-mnist-unet"
    raise FileNotFoundError("no reference U-Net: models/fashion-mnist-unet/model.safetensors is missing (pass --unet)")


def load_unet(explicit: str | None = None, dtype=torch.float32):
    import scorelab as sl

    path, label = unet_path(explicit)
    return sl.load_model(path, dtype=dtype), label


def teleport_row_order(r: dict):
    """Table order of teleport.json rows: solver, steps, plain before warm history, skip ascending, 'auto' last."""
    skip = r["skip"]
    return r["solver"], r["steps"], bool(r["warm_history"]), skip == "auto", 0.0 if skip == "auto" else float(skip)


def model_at_revision(directory: str, rev: str) -> Path:
    """model.safetensors + config.json of repository directory `directory` at git revision `rev`, extracted once
    into ~/.cache/scorelab/models/<rev>/<directory> (atomically: temp file + rename)."""
    import subprocess

    out = Path.home() / ".cache" / "scorelab" / "models" / rev / directory
    for name in ("config.json", "model.safetensors"):
        target = out / name
        if target.exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{directory}/{name}"], capture_output=True)
        if res.returncode != 0:
            raise FileNotFoundError(f"--unet {directory}@{rev}: git cannot read {directory}/{name} at {rev}: "
                                    f"{res.stderr.decode().strip()}")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(res.stdout)
        tmp.replace(target)
    return out


def fashion_mnist(split: str, n: int | None = None) -> torch.Tensor:
    import scorelab as sl

    x = sl.data.load("fashion-mnist", split=split)
    return x if n is None else x[:n]


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


def md_table(rows: list[dict], columns: list[str], digits: int = 4) -> str:
    """A markdown table of `rows` (dicts) restricted to `columns`."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
