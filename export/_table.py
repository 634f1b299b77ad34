"""Fixed-width text tables for `model-export`'s reports."""

from __future__ import annotations

from collections.abc import Collection, Sequence

_GAP = "  "


def format_columns(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Collection[int] = (),
    groups: Sequence[tuple[int, int, str]] = (),
) -> list[str]:
    """A fixed-width text table: a line of group titles (if any), the header line, the rows.

    Each column is as wide as its widest cell or header, columns are separated by two spaces,
    cells are right-aligned except those of the columns in `left`; a group ``(start, end,
    title)`` centres `title` over columns start..end-1. Pure; every row has len(headers) cells.
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return _GAP.join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = []
    if groups:
        parts, col = [], 0
        for start, end, title in groups:
            if start > col:
                parts.append(" " * (sum(widths[col:start]) + len(_GAP) * (start - col - 1)))
            span = sum(widths[start:end]) + len(_GAP) * (end - start - 1)
            parts.append(title.center(span, "-") if len(title) + 2 <= span else title)
            col = end
        out.append(_GAP.join(parts).rstrip())
    out.append(line(headers))
    out += [line(r) for r in rows]
    return out
