"""Markdown pages of the result records, for the documentation site.

    python -m bench.pages --out docs/results [--results bench/results]

Writes OUT/index.md (every record: title, date, machine, network) and OUT/<name>.md per record: its title, the
command in a code block, machine, revision and date, its notes, its tables (at most 8 columns each: a wide table
is split into several that repeat the columns naming a row), its other values, and its plots, copied next to the
page. Records that break the schema (bench.record.check) stop the run with the file named.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from scorelab.tables import MAX_COLUMNS, markdown, split_columns

from . import record

# keys of a record that the page shows in their own place (not among "other values")
SHOWN = set(record.REQUIRED) | {"network", "columns", "keys", "notes", "tables", "plots", "commands", "provenance"}


def readable(value) -> bool:
    """A value that fits in a table cell: a scalar or a short flat list."""
    if isinstance(value, (list, tuple)):
        return len(value) <= 4 and all(not isinstance(v, (list, tuple, dict)) for v in value)
    return not isinstance(value, dict)


def default_columns(rows: list[dict]) -> list[str]:
    """Every column whose values all fit in a cell, in first-seen order."""
    seen = dict.fromkeys(k for r in rows for k in r)
    return [c for c in seen if all(readable(r.get(c)) for r in rows)]


def render_table(rows: list[dict], columns=None, keys=()) -> str:
    """Markdown of `rows`: `columns` (default: the readable ones), in tables of at most 8 columns that each start
    with the `keys` (default: the first column)."""
    columns = list(columns or default_columns(rows))
    if not columns:
        return "_(no column fits in a table; see the JSON)_"
    keys = [k for k in keys if k in columns] or columns[:1]
    if len(columns) <= MAX_COLUMNS:
        return markdown(rows, columns)
    return "\n\n".join(markdown(rows, group) for group in split_columns(columns, keys, MAX_COLUMNS))


def machine_text(rec: dict) -> str:
    m = rec.get("machine") or {}
    parts = [f"{m['cores']} cores" if m.get("cores") else None, m.get("cpu"),
             m.get("device") if m.get("device") not in (None, "cpu") else None,
             f"torch {rec['torch']}" if rec.get("torch") else None,
             f"{rec['threads']} thread{'s' if rec['threads'] != 1 else ''}" if rec.get("threads") else None]
    return ", ".join(p for p in parts if p) or "not recorded"


def network_text(rec: dict) -> str:
    net = rec.get("network")
    if not net:
        return "—"
    return f"`{net['path']}`" + (f" (sha256 `{net['sha256'][:12]}…`)" if net.get("sha256") else "")


def date_text(rec: dict) -> str:
    return (rec.get("date") or "not recorded").replace("T", " ").replace("Z", " UTC")


def plot_source(rec_folder: Path, path: str) -> Path | None:
    """A plot named by a record: beside the record, else relative to the repository root."""
    for base in (rec_folder, record.ROOT):
        if (base / path).is_file():
            return base / path
    return None


def plot_names(records: dict[str, dict]) -> dict[tuple[str, str], str]:
    """(record, plot path) → file name beside the pages: the plot's own name, prefixed by the record's name where
    two records' plots share a name (e.g. every model's samples_heun18.png)."""
    names = [(n, p, Path(p).name) for n, rec in records.items() for p in rec.get("plots", [])]
    count: dict = {}
    for _, _, base in names:
        count[base] = count.get(base, 0) + 1
    return {(n, p): base if count[base] == 1 else f"{n}-{base}" for n, p, base in names}


def page(name: str, rec: dict, plots: list[str]) -> str:
    """The Markdown page of one record; `plots`: the file names of its plots beside the page."""
    commands = rec.get("commands") or [rec["command"]]
    lines = [f"# {rec['title']}", ""]
    if len(commands) > 1:
        lines += [f"Built up by {len(commands)} runs (each replaced the rows it ran):", ""]
    lines += ["```bash", *commands, "```", "",
              f"**Machine:** {machine_text(rec)}  ", f"**Revision:** `{rec.get('revision') or 'not recorded'}`  ",
              f"**Date:** {date_text(rec)}  ", f"**Network:** {network_text(rec)}", ""]
    if rec.get("notes"):
        lines += [rec["notes"], ""]
    if rec.get("provenance"):
        lines += [f"*{rec['provenance']}*", ""]
    lines += ["## Results", "", render_table(rec["rows"], rec.get("columns"), rec.get("keys", ())), ""]
    for t in rec.get("tables", []):
        lines += [f"## {t['title']}", "", render_table(t["rows"], t.get("columns"), t.get("keys", ())), ""]
    other = [{"name": k, "value": v} for k, v in rec.items()
             if k not in SHOWN and "load" not in k and readable(v) and v is not None]
    if other:
        lines += ["## Other values", "", markdown(other), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += [f"The full record, with every column: `bench/results/{name}.json`.", ""]
    return "\n".join(lines)


def index(records: dict[str, dict]) -> str:
    rows = [{"result": f"[{rec['title']}]({name}.md)", "date": date_text(rec).split(" ")[0],
             "machine": machine_text(rec), "network": network_text(rec)} for name, rec in records.items()]
    return "\n".join(["# Benchmark results", "",
                      "Generated by `python -m bench.pages` from the result records in `bench/results/`; each page "
                      "names the command that produced it (run from the repository root), the machine and the "
                      "date. `make bench` reruns them all (hours), `make bench-quick` a small version.", "",
                      markdown(rows), ""])


def build(results, out) -> list[Path]:
    """Write the pages of every record in `results` to `out`; return the files written."""
    results, out = Path(results), Path(out)
    records = record.read_all(results)
    bad = {name: problems for name, rec in records.items() if (problems := record.check(rec))}
    if bad:
        raise ValueError("malformed result records: " + "; ".join(f"{results / (n + '.json')}: {', '.join(p)}"
                                                                   for n, p in bad.items()))
    out.mkdir(parents=True, exist_ok=True)
    written, names = [], plot_names(records)
    for name, rec in records.items():
        plots = []
        for p in rec.get("plots", []):
            src = plot_source(results, p)
            if src is None:
                raise ValueError(f"{results / (name + '.json')}: plot {p!r} not found beside it or in the repository")
            shutil.copyfile(src, out / names[name, p])
            plots.append(names[name, p])
            written.append(out / names[name, p])
        (out / f"{name}.md").write_text(page(name, rec, plots))
        written.append(out / f"{name}.md")
    (out / "index.md").write_text(index(records))
    written.append(out / "index.md")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, metavar="DIR", help="folder of the pages (e.g. docs/results)")
    ap.add_argument("--results", default=str(record.RESULTS), metavar="DIR",
                    help="folder of the result records (default: the package's bench/results)")
    args = ap.parse_args(argv)
    try:
        written = build(args.results, args.out)
    except (ValueError, OSError) as err:
        print(f"bench.pages: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sum(p.suffix == '.md' for p in written)} pages and "
          f"{sum(p.suffix == '.png' for p in written)} plots to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
