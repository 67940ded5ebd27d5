"""The one table formatter: rows (dicts) x columns (:class:`Column`: key, header, cell format, alignment).

:func:`markdown_table` writes a pipe table with padded columns, valid Markdown that also reads in a terminal (the
pipeline's final table, the sweep report, bench); :func:`text_table` writes the same cells space-separated without
pipes (console listings such as the export stage's artifacts). Missing values show as ``—``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def _num(fmt: str) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return format(v, fmt)

    return f


def _ap(v: Any) -> str:
    """COCO writes -1 for an area range without ground truth (e.g. APl on small images): show it as n/a."""
    return "n/a" if isinstance(v, (int, float)) and v < 0 else _num(".3f")(v)


def _millions(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:.2f}M"


def _text(v: Any) -> str:
    return "—" if v is None or v == "" else str(v)


@dataclass(frozen=True)
class Column:
    """One column: the row ``key`` it shows, its ``header``, ``fmt`` (value -> cell text) and whether it is
    ``numeric`` (right-aligned)."""

    key: str
    header: str
    fmt: Callable[[Any], str] = _text
    numeric: bool = False


def num(key: str, header: str, fmt: str) -> Column:
    """A numeric column whose cells are ``format(value, fmt)`` (``—`` for None or NaN)."""
    return Column(key, header, _num(fmt), numeric=True)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A pipe table with padded columns (numbers right-aligned): valid Markdown that also reads in a terminal."""
    cells = [[c.fmt(r.get(c.key)) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(
            v.rjust(w) if c.numeric else v.ljust(w) for v, w, c in zip(values, widths, columns)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if c.numeric else ("-" * (w + 2)) for w, c in zip(widths, columns))
    return "\n".join([line([c.header for c in columns]), rule + "|", *(line(r) for r in cells)])


# Columns shared by the pipeline's final table and the sweep report.
METRIC_COLUMNS = [
    Column("AP", "AP", _ap, numeric=True),
    Column("APm", "APm", _ap, numeric=True),
    Column("APl", "APl", _ap, numeric=True),
    Column("params", "params", _millions, numeric=True),
    num("gflops", "GFLOPs", ".2f"),
    num("latency_ms", "latency ms", ".2f"),
    num("e2e_ms", "e2e ms", ".2f"),
    num("throughput", "img/s", ".1f"),
]


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], sep: str = " ") -> str:
    """Padded columns separated by ``sep`` (numbers right-aligned), a header line first, no rule."""
    cells = [[c.fmt(r.get(c.key)) for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return sep.join(v.rjust(w) if c.numeric else v.ljust(w) for v, w, c in zip(values, widths, columns)).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(r) for r in cells)])
