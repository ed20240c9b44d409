"""scorelab.tables, the one table renderer: exact cells, exact Markdown and HTML, the column limit, splitting."""
import math

import numpy as np
import pytest
import torch

from scorelab.diagnostics import Table
from scorelab.tables import format_value, html, markdown, split_columns


@pytest.mark.parametrize("value, text", [
    (0.123456, "0.1235"), (32142.0, "32142"), (1e-7, "1e-07"), (2.0, "2"), (-0.5, "-0.5"), (1234.5, "1234"),
    (math.nan, "–"), (math.inf, "∞"), (-math.inf, "−∞"), (None, ""), (True, "yes"), (False, "no"), (7, "7"),
    (np.float32(0.25), "0.25"), (np.int64(3), "3"), (torch.tensor(1.5), "1.5"), ([1, 0.5], "[1, 0.5]"),
    ([1, 2, 3, 4, 5], "[5 values]"), ({"a": 1.0}, "a: 1"), ("heun", "heun"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_markdown_exact():
    rows = [dict(solver="heun", nfe=35, fid=1.23456), dict(solver="a|b", fid=None)]
    assert markdown(rows) == ("| solver | nfe | fid |\n|---|---:|---:|\n| heun | 35 | 1.235 |\n| a\\|b |  |  |")
    assert markdown(rows, ["fid"], digits=2, headers={"fid": "FID"}) == "| FID |\n|---:|\n| 1.2 |\n|  |"


def test_markdown_column_limit_and_split():
    rows = [{f"c{i}": i for i in range(10)}]
    with pytest.raises(ValueError, match="at most 8"):
        markdown(rows)
    assert markdown(rows, max_columns=None).splitlines()[0] == "| " + " | ".join(f"c{i}" for i in range(10)) + " |"
    groups = split_columns(list(rows[0]), keys=["c0"])
    assert groups == [["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"], ["c0", "c8", "c9"]]
    assert all(len(markdown(rows, g).splitlines()[0].split("|")) - 2 <= 8 for g in groups)
    assert split_columns(["k", "a"], keys=["k", "missing"]) == [["k", "a"]]
    with pytest.raises(ValueError, match="keys"):
        split_columns(list("abcdefghij"), keys=list("abcdefgh"))


def test_html_escapes_and_formats():
    assert html([dict(a=0.5, b="<i>")], ["a", "b"]) == \
        "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>0.5</td><td>&lt;i&gt;</td></tr></tbody></table>"


def test_library_tables_render_through_it():
    t = Table([dict(sigma=80.0, ev_score=0.999912), dict(sigma=0.002, ev_score=0.5)])
    assert t.to_markdown() == markdown(t, max_columns=None)
    assert t.to_markdown(["sigma"], digits=2) == "| sigma |\n|---:|\n| 80 |\n| 0.002 |"
