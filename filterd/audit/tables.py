"""Printable HTML tables of the audit report.

Every figure the report charts is in a table too: a regulator's case file is
paper, and bars with tooltips do not print their numbers.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["escape", "html_table"]


def escape(text: object) -> str:
    """``text`` as HTML text or attribute value."""
    return html.escape(str(text), quote=True)


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    numeric: set[int],
    *,
    css_class: str = "",
    wrap: set[int] | None = None,
) -> str:
    """A table; columns in ``numeric`` are right-aligned, ints get thousands separators;
    columns in ``wrap`` (checksums, paths) may break anywhere to fit a printed page."""
    head = "".join(
        f"<th{' class=num' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{_td_class(i, numeric, wrap)}>{escape(_cell(cell))}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td_class(i: int, numeric: set[int], wrap: set[int] | None) -> str:
    if i in numeric:
        return " class=num"
    return " class=wrap" if wrap and i in wrap else ""


def _cell(value: object) -> object:
    # bool is an int: never "1,234"-formatted.
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return value
