"""Tables of rows (dicts) as Markdown or HTML: the one renderer of the repository.

Used by `diagnostics.Table.to_markdown`, `PatchCalibration.table`, the HTML report, the CLI, and bench/ (its
scripts' printed tables and the generated result pages). Numbers are formatted by `format_value`: floats to
`digits` significant digits (large ones in full, NaN as "–"), booleans as yes/no, None as an empty cell, short
lists inline and long ones by their length. A Markdown table shows at most `max_columns` columns (8 by default):
`split_columns` cuts a wide table into several that repeat its key columns.
"""
from __future__ import annotations

import html as _html
import math
import numbers

__all__ = ["format_value", "markdown", "html", "split_columns", "MAX_COLUMNS"]

MAX_COLUMNS = 8


def format_value(value, digits: int = 4) -> str:
    """One cell's text: 0.123456 → '0.1235', 32142.0 → '32142', 1e-7 → '1e-07', nan → '–', True → 'yes'."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:   # 0-d tensor or numpy scalar
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if 10 ** digits <= abs(v) < 1e12:
            return f"{v:.0f}"
        return f"{v:.{digits}g}"
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(not isinstance(v, (list, tuple, dict)) for v in value):
            return "[" + ", ".join(format_value(v, digits) for v in value) + "]"
        return f"[{len(value)} values]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, digits)}" for k, v in value.items())
    return str(value)


def _columns(rows, columns) -> list[str]:
    if columns is not None:
        return list(columns)
    out: dict = {}
    for r in rows:
        out.update(dict.fromkeys(r))
    return list(out)


def markdown(rows, columns=None, *, digits: int = 4, headers: dict | None = None,
             max_columns: int | None = MAX_COLUMNS) -> str:
    """A Markdown table of `rows` (dicts; a missing key is an empty cell) over `columns` (default: every key, in
    first-seen order). `headers` renames columns for display. More than `max_columns` columns is a ValueError
    (split the table with `split_columns`; None: no limit)."""
    rows = list(rows)
    columns = _columns(rows, columns)
    if not columns:
        raise ValueError("columns must name at least one column (or rows must have keys)")
    if max_columns is not None and len(columns) > max_columns:
        raise ValueError(f"columns: at most {max_columns} per table; got {len(columns)} ({', '.join(columns)}); "
                         "split the table with scorelab.tables.split_columns")
    headers = headers or {}

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    numeric = [all(isinstance(r.get(c), numbers.Real) or r.get(c) is None for r in rows) and
               any(isinstance(r.get(c), numbers.Real) and not isinstance(r.get(c), bool) for r in rows)
               for c in columns]
    lines = ["| " + " | ".join(cell(str(headers.get(c, c))) for c in columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(cell(format_value(r.get(c), digits)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def html(rows, columns=None, *, digits: int = 4) -> str:
    """The same table as HTML (`<table>` with a header row), cells formatted by `format_value` and escaped."""
    rows = list(rows)
    columns = _columns(rows, columns)
    head = "".join(f"<th>{_html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(format_value(r.get(c), digits))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def split_columns(columns, keys=(), max_columns: int = MAX_COLUMNS) -> list[list[str]]:
    """Cut `columns` into groups of at most `max_columns`, each starting with the `keys` (the columns that name a
    row, e.g. solver and steps), so a wide table reads as several narrow ones."""
    columns, keys = list(columns), [k for k in keys if k in columns]
    if len(keys) >= max_columns:
        raise ValueError(f"keys: fewer than max_columns={max_columns} needed; got {len(keys)}")
    rest = [c for c in columns if c not in keys]
    if not rest:
        return [keys]
    width = max_columns - len(keys)
    return [keys + rest[i:i + width] for i in range(0, len(rest), width)]
