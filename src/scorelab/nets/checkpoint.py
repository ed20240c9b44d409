"""Training checkpoints: atomic safetensors files from which a run resumes exactly.

A run directory holds `checkpoint.safetensors` (weights, EMA, Adam state; the JSON header carries the run's
metadata: config, data fingerprint, step, history, stages, init) and `model.safetensors` + `config.json` (the
EMA denoiser `load_model` reads). Each file is written through a temporary file and renamed into place, the
checkpoint last: whatever moment a process is killed, the directory holds a complete, consistent resume point.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .._io import load_state, save_state, write_json

__all__ = ["CHECKPOINT", "MODEL", "CONFIG", "CKPT_KIND", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "remove_stale", "read_init"]

CHECKPOINT, MODEL, CONFIG = "checkpoint.safetensors", "model.safetensors", "config.json"
CKPT_KIND = "edm-train-checkpoint"


def remove_stale(out: Path) -> None:
    """Delete temporary files left by a process killed while writing (their targets are intact)."""
    if out.is_dir():
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


def save_checkpoint(out: Path, model, ema, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Write the EMA model (loadable at any time), config.json, then the resume point, each atomically."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        tensors.update({f"opt/{i}/{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    info = {"steps": meta["step"], "images": meta["step"] * meta["train"]["batch_size"],
            "wall_seconds": round(meta["wall_seconds"], 1),
            "final_loss": meta["history"][-1][1] if meta["history"] else None}
    from . import save_model

    save_model(ema, out / MODEL, extra={"training": info, "init": meta.get("init")})
    write_json(out / CONFIG, {"model": ema.config, "train": meta["train"], "data": meta["data"], "training": info,
                              "stages": meta.get("stages", []), "init": meta.get("init"), "history": meta["history"]})
    save_state(out / CHECKPOINT, tensors, kind=CKPT_KIND, config=meta)     # written last: the resume point


def read_checkpoint(out: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of `out`/checkpoint.safetensors."""
    tensors, _, saved = load_state(out / CHECKPOINT, kind=CKPT_KIND)
    return tensors, saved


def load_checkpoint(tensors: dict, model, ema, opt: torch.optim.Optimizer) -> None:
    """Load weights, EMA and Adam state read by `read_checkpoint` into the run's objects, on the model's device."""
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    state = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/")
            state.setdefault(int(i), {})[name] = v.to(device)
    opt_sd = opt.state_dict()
    opt_sd["state"] = state
    opt.load_state_dict(opt_sd)


def read_init(init, model_cfg: dict) -> tuple[dict, dict]:
    """Weights of the saved model `init` (directory or .safetensors) and the provenance record of the warm start;
    ValueError naming the config field when the saved model is not this run's architecture.

    An unconditional model (n_classes 0) may warm-start a conditional run of the same architecture: the class
    embedding it lacks (every `embed.label.weight`, n_classes + 1 rows) starts at zero, so the conditional net
    equals the unconditional one for every label until trained; all other weights must match exactly."""
    from . import KIND, build, model_file, model_sha256

    path = model_file(init, name="init")
    tensors, _, saved = load_state(path, kind=KIND)
    src = saved["model"]
    widen = int(src.get("n_classes", 0)) == 0 and int(model_cfg.get("n_classes", 0)) > 0
    for key in sorted(set(src) | set(model_cfg)):
        if src.get(key) != model_cfg.get(key) and not (widen and key == "n_classes"):
            raise ValueError(f"init model's config field {key!r} is {src.get(key)!r}; this run's is "
                             f"{model_cfg.get(key)!r} (same arch, net options, data shape and sigma_data needed)")
    record = {"path": str(init), "sha256": model_sha256(path), "training": saved.get("training")}
    if widen:
        target = build(model_cfg).state_dict()
        new = sorted(k for k in target if k not in tensors)
        if not new or any(not k.endswith("embed.label.weight") for k in new):
            raise ValueError(f"init model cannot be widened to n_classes={model_cfg['n_classes']}: weights "
                             f"{new} are missing (only the class embedding may be)")
        tensors = {**tensors, **{k: torch.zeros_like(target[k]) for k in new}}
        record["zero_init"] = new
    return tensors, record
