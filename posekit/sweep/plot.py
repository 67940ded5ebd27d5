"""The sweep report's AP-vs-latency plot of one latency target: marker = stage count, colour = precision, the Pareto
front drawn as a line, labels placed by adjustText and never overlapping (a label that still would is left out; the
table has every point).

    fig, texts = pareto_figure(rows, front, "gpu: ...")     # rows: dicts with latency_ms, AP, stages, precision
    save_png(fig, path)
"""

from __future__ import annotations

import io as _io
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from posekit import io

STAGE_MARKERS = {2: "o", 3: "s", 4: "^", 5: "D", 6: "v", 7: "P"}
PRECISION_COLOURS = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:purple", "int8": "tab:green"}
LABEL_ALL_UP_TO = 24  # more points than this: only the front is labelled (the others: marker, colour, the table)


def label(row: Mapping[str, Any]) -> str:
    """``s3 pth0.2 288x384 int8``: what tells the points of a sweep apart."""
    parts = [f"s{row['stages']}" if row.get("stages") is not None else None,
             f"pth{row['pth']:.3g}" if isinstance(row.get("pth"), (int, float)) else None,
             row.get("shape"), row.get("precision")]
    return " ".join(str(p) for p in parts if p)


def _colour(precision: str, fallback: dict[str, str]) -> str:
    base = precision.split(".")[0]  # int8.cpu / int8.qdq (bench-step sweeps) are INT8
    return PRECISION_COLOURS.get(base) or fallback.setdefault(precision, f"C{4 + len(fallback)}")


def _marker(stages: Any) -> str:
    return STAGE_MARKERS.get(stages, "X") if isinstance(stages, int) else "X"


def pareto_figure(rows: Sequence[Mapping[str, Any]], front: Sequence[bool], title: str,
                  xlabel: str = "latency (ms, batch 1)"):
    """The figure for ``rows`` (each with finite ``latency_ms`` and ``AP``) and their ``front`` flags; returns
    ``(figure, texts)``, the labels as placed (their window extents do not overlap)."""
    from adjustText import adjust_text
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer for adjustText's measurements
    ax = fig.add_subplot()
    fallback: dict[str, str] = {}
    for r, f in zip(rows, front):
        ax.scatter([r["latency_ms"]], [r["AP"]], marker=_marker(r.get("stages")), s=60 if f else 36,
                   c=_colour(str(r.get("precision")), fallback), edgecolor="black" if f else "0.3",
                   linewidths=1.2 if f else 0.5, alpha=0.9, zorder=3)
    fr = sorted((r for r, f in zip(rows, front) if f), key=lambda r: r["latency_ms"])
    xs = [r["latency_ms"] for r in rows]
    if fr:  # the front: for any latency budget, the best AP reachable (a step: AP holds until the next point)
        ax.step([r["latency_ms"] for r in fr] + [max(xs)], [r["AP"] for r in fr] + [fr[-1]["AP"]], where="post",
                color="crimson", lw=1.6, zorder=2)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 8:  # an order of magnitude apart: log, or the fast ones pile up
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="both", labelsize=8)

    labelled = [i for i, f in enumerate(front) if f or len(rows) <= LABEL_ALL_UP_TO]
    texts = [ax.text(rows[i]["latency_ms"], rows[i]["AP"], label(rows[i]), fontsize=7,
                     color="crimson" if front[i] else "0.25", zorder=2.5,  # over the front line, under markers
                     bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.75))
             for i in labelled]
    if texts:
        _, arrows = adjust_text(texts, x=xs, y=[r["AP"] for r in rows], ax=ax, iter_lim=300,
                                arrowprops=dict(arrowstyle="-", color="0.55", lw=0.5))
        texts = _without_overlaps(fig, texts, arrows, [front[i] for i in labelled])

    handles = [Line2D([], [], ls="", marker=_marker(s), color="0.4", label=f"{s} stages")
               for s in sorted({r.get("stages") for r in rows if isinstance(r.get("stages"), int)})]
    handles += [Line2D([], [], ls="", marker="o", color=_colour(p, fallback), label=p)
                for p in sorted({str(r.get("precision")) for r in rows})]
    if fr:
        handles.append(Line2D([], [], color="crimson", lw=1.6, label="Pareto front"))
    if rows:
        ax.legend(handles=handles, fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no point has both AP and latency yet", ha="center", va="center", transform=ax.transAxes)
    shown = "" if len(labelled) == len(rows) else "; labels: the front (every point is in the table)"
    ax.set_title(textwrap.fill(title + shown, 120), fontsize=10)  # a long sweep name would run off the figure
    ax.set_xlabel(xlabel)
    ax.set_ylabel("AP (COCO keypoints)")
    ax.grid(True, which="both", alpha=0.3)
    return fig, texts


def _without_overlaps(fig, texts: list, arrows: list, keep_first: list[bool]) -> list:
    """Remove labels (and their leader lines) that still overlap a label already kept, front labels first:
    adjustText spreads them, but a crowded corner can defeat it, and a pile of text reads worse than a label
    left out."""
    renderer = fig.canvas.get_renderer()
    order = sorted(range(len(texts)), key=lambda i: not keep_first[i])
    kept, boxes = [], []
    for i in order:
        box = texts[i].get_window_extent(renderer)
        if any(box.overlaps(b) for b in boxes):
            for arrow in [a for a in arrows if getattr(a, "patchA", None) is texts[i]]:
                arrow.remove()
            texts[i].remove()
            continue
        kept.append(texts[i])
        boxes.append(box)
    return kept


def save_png(fig, path: Path) -> Path:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: a rerun writes the same bytes
    return io.write_bytes(path, buf.getvalue())


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["label", "pareto_figure", "save_png"]
