"""The result record: the one format of bench/results/*.json, written by `write` and nothing else.

    {"name", "title", "command": "python -m bench.x --args ...", "revision": git sha of HEAD (+ "-dirty"),
     "date": ISO-8601 UTC, "torch", "threads",
     "machine": {"cores", "cpu", "load_at_start": [1, 5, 15-min load], "platform", "device"},
     "network": {"path", "sha256"} (optional), "columns": [≤ 8 names shown by default] (optional),
     "rows": [{column: value}, ...], ...keys of the script (e.g. "tables", "plots")}

Optional keys that `bench.pages` reads: "tables" (more tables: [{"title", "rows", "columns"?, "keys"?}]), "keys"
(the columns that name a row, repeated when a wide table is split), "plots" (PNG files beside the record, paths
relative to its folder), "notes" (a paragraph of prose).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# read when the first bench module is imported, i.e. when the script starts, before it loads the machine itself
LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

MACHINE_KEYS = ("cores", "cpu", "load_at_start", "platform", "device")
REQUIRED = ("name", "title", "command", "revision", "date", "torch", "threads", "machine", "rows")
MAX_COLUMNS = 8


def results_dir(out=None) -> Path:
    """The folder results go to: `out` (a script's --out) or bench/results."""
    return Path(out) if out else RESULTS


def cache_dir(*parts: str) -> Path:
    """A folder under scorelab's cache ($SCORELAB_CACHE, else $XDG_CACHE_HOME/scorelab, else ~/.cache/scorelab)."""
    from scorelab.metrics.stats import cache_dir as root

    return root().joinpath(*parts)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor(), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device=None) -> str:
    """'cpu', or the CUDA device's name for a CUDA `device`."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def machine(device=None) -> dict:
    return dict(cores=os.cpu_count(), cpu=cpu_model(), load_at_start=LOAD_AT_START, platform=platform.platform(),
                device=device_name(device))


def revision() -> str | None:
    """HEAD's sha, with "-dirty" when tracked files differ from it; None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def command_line(argv=None, module: str | None = None) -> str:
    """`python -m bench.<script> <arguments>`: the command that runs this script again from the repository root."""
    argv = sys.argv if argv is None else argv
    if module is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None and spec.name.startswith("bench.") else \
            "bench." + Path(argv[0]).stem
    return shlex.join(["python", "-m", module, *argv[1:]])


def network(path, label: str | None = None) -> dict:
    """{"path", "sha256"} of a network directory (the label given, else the path relative to the repository)."""
    import scorelab as sl

    path = Path(path)
    if label is None:
        resolved = path.resolve()
        label = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)
    return {"path": label, "sha256": sl.nets.model_sha256(path)}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check(record) -> list[str]:
    """What is wrong with a record (an empty list: nothing)."""
    if not isinstance(record, dict):
        return [f"a record is a JSON object; got {type(record).__name__}"]
    problems = [f"missing {k!r}" for k in REQUIRED if k not in record]
    command = record.get("command")
    if not (isinstance(command, str) and command.startswith("python -m bench.")):
        problems.append(f"command must start with 'python -m bench.'; got {command!r}")
    m = record.get("machine")
    if not isinstance(m, dict) or any(k not in m for k in MACHINE_KEYS):
        problems.append(f"machine must have the keys {', '.join(MACHINE_KEYS)}; got {m!r}")
    rows = record.get("rows")
    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
        problems.append("rows must be a non-empty list of objects")
    columns = record.get("columns")
    if columns is not None:
        known = set().union(*(r.keys() for r in rows)) if isinstance(rows, list) and rows and \
            all(isinstance(r, dict) for r in rows) else set()
        if not isinstance(columns, list) or not 0 < len(columns) <= MAX_COLUMNS:
            problems.append(f"columns must list 1 to {MAX_COLUMNS} names; got {columns!r}")
        elif any(c not in known for c in columns):
            problems.append(f"columns not in rows: {[c for c in columns if c not in known]}")
    net = record.get("network")
    if net is not None and not (isinstance(net, dict) and {"path", "sha256"} <= set(net)):
        problems.append(f"network must be {{'path', 'sha256'}}; got {net!r}")
    for t in record.get("tables", []):
        if not (isinstance(t, dict) and t.get("title") and isinstance(t.get("rows"), list) and t["rows"]):
            problems.append("each of tables needs a title and non-empty rows")
    return problems


def build(name: str, rows, *, title: str, command: str | None = None, network: dict | None = None,
          columns=None, device=None, **extra) -> dict:
    """The record (see the module's docstring) of `rows` measured now on this machine; ValueError if malformed."""
    import torch

    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a file stem such as 'teleport'; got {name!r}")
    clash = [k for k in extra if k in REQUIRED + ("network", "columns")]
    if clash:
        raise ValueError(f"extra keys may not replace the record's own: {clash}")
    record = dict(name=name, title=title, command=command or command_line(), revision=revision(), date=now(),
                  torch=torch.__version__, threads=torch.get_num_threads(), machine=machine(device))
    if network is not None:
        record["network"] = network
    if columns is not None:
        record["columns"] = list(columns)
    record["rows"] = list(rows)
    record.update(extra)
    problems = check(record)
    if problems:
        raise ValueError(f"record {name!r}: " + "; ".join(problems))
    return record


def write(name: str, rows, *, out=None, **fields) -> Path:
    """Write the record of `rows` to OUT/<name>.json (OUT: --out, default bench/results), atomically (a reader
    never sees half a file); return the path. `fields`: title=, command=, network=, columns=, device=, and any
    other keys the script needs."""
    from scorelab._io import write_json

    path = results_dir(out) / f"{name}.json"
    write_json(path, build(name, rows, **fields))
    return path


def read(path) -> dict:
    import json

    return json.loads(Path(path).read_text())


def read_all(folder=None) -> dict[str, dict]:
    """name → record of every *.json in `folder` (default bench/results), sorted by name."""
    return {p.stem: read(p) for p in sorted(results_dir(folder).glob("*.json"))}
