"""A schedule as a JSON file with its provenance: what produced it (teacher, solver, NFE, method, data, cost) travels
with the grid, so `scorelab sample --sigmas s.json` and a reader of the file know what they run.

    {"format": "scorelab-schedule", "version": 1, "sigmas": [80.0, ..., 0.0], "provenance": {...}}

σ values are written with Python's shortest round-trip repr, so `load(save(s))` is bit-identical in float64.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .._checks import check_sigmas
from .._io import write_json

__all__ = ["save", "load", "FORMAT"]

FORMAT = "scorelab-schedule"


def _jsonable(value, key: str):
    """Provenance values as JSON: numbers, strings, booleans, None, lists and dicts of those; tensors as lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    raise TypeError(f"provenance {key!r} must be a number, string, boolean, list or dict; got "
                    f"{type(value).__name__}")


def save(sigmas, path, **provenance) -> Path:
    """Write `sigmas` (a valid grid: strictly decreasing, non-negative) and `provenance` (keyword arguments: what
    made it, e.g. teacher="gaussian.safetensors", solver="dpmpp_2m", nfe=6, method="dp", cost=...) to `path` as
    JSON, atomically. Returns the path."""
    grid = check_sigmas(sigmas)
    record = {"format": FORMAT, "version": 1, "sigmas": [float(s) for s in grid],
              "provenance": {k: _jsonable(v, k) for k, v in provenance.items()}}
    path = Path(path)
    write_json(path, record)
    return path


def load(path, *, provenance: bool = False, device=None, dtype=torch.float64):
    """The grid saved by `save` as a float64 tensor (validated as any grid is); with `provenance=True`, the pair
    (sigmas, provenance dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schedule file {str(path)!r} does not exist")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"schedule file {str(path)!r} is not JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("sigmas"), list):
        raise ValueError(f"schedule file {str(path)!r} is not a scorelab schedule (expected a JSON object with "
                         f"\"format\": \"{FORMAT}\" and a \"sigmas\" list, as schedules.save writes)")
    try:
        sigmas = check_sigmas(torch.tensor(record["sigmas"], dtype=torch.float64),
                              name=f"the sigmas of {str(path)!r}")
    except (TypeError, ValueError) as e:
        raise ValueError(f"schedule file {str(path)!r}: {e}") from None
    sigmas = sigmas.to(device=device, dtype=dtype)
    return (sigmas, dict(record.get("provenance") or {})) if provenance else sigmas
