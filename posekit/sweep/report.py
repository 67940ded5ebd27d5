"""The sweep report: every point's exported artifacts in one table (CSV + Markdown) and an AP-vs-latency Pareto plot.

    python -m posekit.sweep.report experiments/sweeps/accuracy_latency      # (re)write <sweep>/report/*

A sweep also writes it when it ends (``SweepReportCallback``, set in ``hydra.callbacks`` by sweeps/sweep/*.yaml).
Rows come from each point's ``pipeline/summary.json`` (written by the pipeline stage, even when a step failed);
a point without one (killed, still running) shows as ``incomplete``; a failed point shows its error. Nothing here
needs the stages: the report reads files only.

Outputs (``<sweep dir>/report/``): ``sweep.csv``, ``sweep.md``, ``pareto.png``.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.table import METRIC_COLUMNS, Column, markdown_table, num

log = logging.getLogger("posekit.sweep")

NOT_POINTS = {"shared", "report", ".submitit"}


# --------------------------------------------------------------------------------------------- tables
SWEEP_COLUMNS = [
    Column("point", "point"),
    Column("status", "status"),
    Column("stages", "stages", numeric=True),
    num("pth", "pth", ".3g"),
    Column("shape", "shape"),
    Column("precision", "precision"),
    Column("format", "format"),
    *METRIC_COLUMNS,
    Column("error", "error"),
]
CSV_KEYS = ["point", "status", "stages", "width", "pth", "shape", "train_shape", "precision", "format", "artifact",
            "params", "gflops", "AP", "APm", "APl", "AP50", "latency_ms", "e2e_ms", "throughput", "device", "error"]


# --------------------------------------------------------------------------------------------- collecting
def is_point(folder: Path) -> bool:
    return folder.is_dir() and folder.name not in NOT_POINTS and not folder.name.startswith(".") and (
        (folder / ".hydra").is_dir() or (folder / "pipeline").is_dir()
    )


def find_points(sweep_dir: Path) -> list[Path]:
    """Point folders under ``sweep_dir`` (Hydra job folders: ``.hydra/`` or ``pipeline/`` inside), at any depth
    (an override value with a ``/`` nests the folder)."""
    found = []
    for folder in sorted(p for p in sweep_dir.rglob("*") if p.is_dir()):
        parts = folder.relative_to(sweep_dir).parts
        if any(p in NOT_POINTS or p.startswith(".") for p in parts) or any(
            folder.is_relative_to(f) for f in found
        ):
            continue
        if is_point(folder):
            found.append(folder)
    return found


def _point_config(folder: Path) -> dict[str, Any]:
    """stages/width/pth/shape/precision of a point from its Hydra config (for points that left no summary)."""
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = OmegaConf.load(path)
        shape = OmegaConf.select(cfg, "model.input_shape")
        precs = OmegaConf.select(cfg, "pipeline.precisions") or [OmegaConf.select(cfg, "precision.name")]
        return {
            "stages": OmegaConf.select(cfg, "model.stages"),
            "width": OmegaConf.select(cfg, "model.width"),
            "pth": OmegaConf.select(cfg, "prune.pth"),
            "shape": "x".join(str(v) for v in shape) if shape is not None else None,
            "precision": ",".join(str(p) for p in precs),
        }
    except Exception as e:  # an unreadable config must not hide the other points
        log.warning("cannot read %s: %s", path, e)
        return {}


def _first_error(folder: Path) -> tuple[str | None, bool]:
    """(first failed step's error, whether a step is still recorded as running) from the step records."""
    running, error = False, None
    for rec_path in sorted((folder / "pipeline" / "steps").glob("*.json")):
        try:
            rec = io.read_json(rec_path)
        except ValueError:
            continue
        running |= rec.get("status") == "running"
        if rec.get("status") == "failed" and error is None:
            error = f"{rec.get('id')}: {rec.get('error')}"
    return error, running


def point_rows(folder: Path, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per exported artifact of the point; one ``failed``/``incomplete`` row when it has none."""
    name = str(folder.relative_to(sweep_dir))
    summary_path = folder / "pipeline" / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = io.read_json(summary_path)
        except ValueError:
            summary = None
    if summary is None:
        error, running = _first_error(folder)
        status = "failed" if error and not running else "incomplete"
        return [{"point": name, "status": status, **_point_config(folder), "error": error or (
            "still running or killed (no pipeline/summary.json)" if running else "no pipeline/summary.json")}]
    point = summary.get("point", {})
    rows = [r for r in summary.get("rows", []) if r.get("kind") == "export"]
    failure = summary.get("error")
    if not rows:
        return [{"point": name, "status": "failed" if failure else "incomplete", **point,
                 "error": failure or "no exported artifact"}]
    out = []
    for r in rows:
        status = "ok" if r.get("AP") is not None else "failed"
        out.append({**point, **r, "point": name, "status": status,
                    "error": r.get("error") or (None if status == "ok" else failure)})
    return out


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    rows = [row for folder in find_points(sweep_dir) for row in point_rows(folder, sweep_dir)]

    def key(r: Mapping[str, Any]) -> tuple:
        return (r.get("stages") or 0, r.get("pth") or 0, str(r.get("shape")), str(r.get("precision")),
                str(r.get("format")), r["point"])

    return sorted(rows, key=key)


# --------------------------------------------------------------------------------------------- Pareto
def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For ``(latency, AP)`` pairs: True where no other point is at least as fast and at least as accurate (and
    strictly better in one)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front = [False] * len(points)
    best_ap = -math.inf
    for i in order:
        if points[i][1] > best_ap:
            front[i] = True
            best_ap = points[i][1]
    return front


def label(row: Mapping[str, Any]) -> str:
    """``s3 pth0.2 288x384 int8.cpu``: what tells the points of a sweep apart."""
    parts = [f"s{row['stages']}" if row.get("stages") is not None else None,
             f"pth{row['pth']:.3g}" if isinstance(row.get("pth"), (int, float)) else None,
             row.get("shape"), row.get("precision")]
    return " ".join(str(p) for p in parts if p)


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """AP vs latency for every measured row, the Pareto front marked and joined, each point labelled."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    good = [r for r in rows if _finite(r.get("AP")) and _finite(r.get("latency_ms"))]
    fig = Figure(figsize=(9, 6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    front = pareto_front([(r["latency_ms"], r["AP"]) for r in good])
    # marker: precision; colour: stage count (the two things a reader compares first)
    precisions = sorted({str(r.get("precision")) for r in good})
    markers = dict(zip(precisions, "osD^v<>pP*"))
    stage_counts = sorted({r.get("stages") for r in good}, key=lambda s: (s is None, s))
    colours = {s: f"C{i}" for i, s in enumerate(stage_counts)}
    for prec in precisions:
        sel = [r for r in good if str(r.get("precision")) == prec]
        ax.scatter([r["latency_ms"] for r in sel], [r["AP"] for r in sel], marker=markers[prec], s=36,
                   c=[colours[r.get("stages")] for r in sel], edgecolor="0.2", alpha=0.85, label=prec, zorder=2)
    if len(stage_counts) > 1:
        for s in stage_counts:
            ax.scatter([], [], marker="s", c=colours[s], label=f"{s} stages")
    fr = sorted((r for r, f in zip(good, front) if f), key=lambda r: r["latency_ms"])
    if fr:
        ax.step([r["latency_ms"] for r in fr], [r["AP"] for r in fr], where="post", color="crimson", lw=1.5,
                zorder=1, label="Pareto front")
        ax.scatter([r["latency_ms"] for r in fr], [r["AP"] for r in fr], s=90, facecolor="none", edgecolor="crimson",
                   lw=1.8, zorder=3)
    for i, (r, f) in enumerate(zip(good, front)):  # alternate label offsets: neighbours overlap less
        ax.annotate(label(r), (r["latency_ms"], r["AP"]), xytext=(5, 4 if i % 2 else -9), textcoords="offset points",
                    fontsize=7 if len(good) <= 30 else 5, color="crimson" if f else "0.25")
    missing = len(rows) - len(good)
    ax.set_title(title + (f"  ({missing} row(s) without AP or latency not shown)" if missing else ""), fontsize=10)
    ax.set_xlabel("latency (ms, batch 1)")
    ax.set_ylabel("AP (COCO keypoints)")
    ax.grid(True, alpha=0.3)
    if good:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no point has both AP and latency yet", ha="center", va="center", transform=ax.transAxes)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return io.write_bytes(path, buf.getvalue())


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# --------------------------------------------------------------------------------------------- report
def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``sweep.csv``, ``sweep.md`` and ``pareto.png`` for ``sweep_dir``; returns paths and counts."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        from posekit.errors import UserError

        raise UserError(f"sweep folder not found: {sweep_dir}. Pass the folder a sweep wrote (its hydra.sweep.dir).")
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    rows = collect(sweep_dir)
    good = [r for r in rows if _finite(r.get("AP")) and _finite(r.get("latency_ms"))]
    front = pareto_front([(r["latency_ms"], r["AP"]) for r in good])
    for r, f in zip(good, front):
        r["pareto"] = f

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_KEYS, "pareto"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = io.write_text(out / "sweep.csv", buf.getvalue())

    n_points = len({r["point"] for r in rows})
    failed = sorted({r["point"] for r in rows if r["status"] != "ok"})
    title = f"sweep {sweep_dir.name}: {n_points} point(s), {len(rows)} artifact row(s), {len(failed)} not ok"
    table = markdown_table(rows, SWEEP_COLUMNS)
    front_rows = [r for r in good if r.get("pareto")]
    md = [
        f"# Sweep report: `{sweep_dir.name}`",
        "",
        f"{title}. Folder: `{sweep_dir}`. Regenerate: `python -m posekit.sweep.report {sweep_dir}`.",
        "",
        "AP: COCO keypoint AP of the exported artifact on the configured val set (eval stage). Latency: the bench "
        "stage's network latency at batch 1 on the machine that ran the point; throughput at the bench stage's "
        "batch size. params / GFLOPs: the source PyTorch model at the point's input shape (2 x conv MACs).",
        "",
        table,
        "",
        "## Pareto front (AP vs latency)",
        "",
        "![AP vs latency](pareto.png)",
        "",
        markdown_table(sorted(front_rows, key=lambda r: r["latency_ms"]), SWEEP_COLUMNS[:-1]) if front_rows
        else "_no point has both AP and latency_",
        "",
    ]
    md_path = io.write_text(out / "sweep.md", "\n".join(md))
    png_path = plot_pareto(rows, out / "pareto.png", f"{sweep_dir.name}: AP vs latency")
    return {"csv": csv_path, "markdown": md_path, "plot": png_path, "rows": rows, "failed": failed, "table": table}


class SweepReportCallback(Callback):
    """Writes the report when a multirun ends (basic and submitit launchers alike; configured in the sweep yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            rep = write_report(sweep_dir)
        except Exception as e:  # the sweep's results are on disk either way; say how to retry
            log.error("sweep report failed (%s); retry with: python -m posekit.sweep.report %s", e, sweep_dir)
            return
        print(f"\n{rep['table']}\n")
        log.info("sweep report: %s, %s, %s%s", rep["markdown"], rep["csv"], rep["plot"],
                 f" ({len(rep['failed'])} point(s) not ok: {', '.join(rep['failed'])})" if rep["failed"] else "")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posekit.sweep.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. experiments/sweeps/tiny")
    parser.add_argument("--out", help="output folder (default: <sweep_dir>/report)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    from posekit.errors import UserError

    try:
        rep = write_report(args.sweep_dir, args.out)
    except UserError as e:
        print(f"posekit: error: {e}", file=sys.stderr)
        return 2
    print(rep["table"])
    print(f"\nwrote {rep['markdown']}\n      {rep['csv']}\n      {rep['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
