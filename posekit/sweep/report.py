"""The sweep report: every point in one table (CSV, Markdown, JSON), the Pareto front and one AP-vs-latency plot per
latency target.

    python -m posekit.sweep.report experiments/sweeps/accuracy_latency               # (re)write <sweep>/report/
    python -m posekit.sweep.report experiments/sweeps/accuracy_latency --bench cpu   # time the deferred cpu target
                                                                                     # here, then write the report
    python -m posekit.sweep.report experiments/sweeps/accuracy_latency --bench cpu --rounds 5  # median of 5 rounds

A sweep also writes it when it ends (``SweepReportCallback``, set in ``hydra.callbacks`` by sweeps/sweep/common.yaml).
Rows: :mod:`posekit.sweep.collect` (one per point and latency target; per exported artifact for sweeps timed by the
pipeline's ``bench`` step, whose target is called ``bench``). Outputs (``<sweep dir>/report/``)::

    sweep.csv  sweep.md  sweep.json    every row; the fronts; the wall time; the devices and machines per target
    pareto-<target>.png                one plot per target (pareto.png for a bench-step sweep)

The report holds no time of its own: relaunching a finished sweep rewrites the same bytes.
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
from omegaconf import DictConfig

from posekit import io
from posekit.sweep.collect import BENCH_STEP, collect, find_points, wall_time
from posekit.sweep.plot import finite, label, pareto_figure, save_png
from posekit.table import METRIC_COLUMNS, Column, markdown_table, num

log = logging.getLogger("posekit.sweep")

# --------------------------------------------------------------------------------------------- tables
SWEEP_COLUMNS = [
    Column("point", "point"),
    Column("status", "status"),
    Column("target", "target"),
    Column("stages", "stages", numeric=True),
    num("pth", "pth", ".3g"),
    Column("shape", "shape"),
    Column("precision", "precision"),
    Column("device", "device"),
    *METRIC_COLUMNS,
    Column("throughput_batch", "at batch", numeric=True),
    Column("pareto", "front", lambda v: "yes" if v else ""),
    Column("error", "note"),
]
CSV_KEYS = ["point", "status", "target", "stages", "width", "pth", "shape", "train_shape", "precision", "backend",
            "format", "artifact", "params", "gflops", "AP", "APm", "APl", "AP50", "latency_ms", "e2e_ms",
            "throughput", "throughput_batch", "device", "machine", "point_seconds", "pareto", "error"]


# --------------------------------------------------------------------------------------------- Pareto
def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For ``(latency, AP)`` pairs: True where no other point is at least as fast and at least as accurate (and
    strictly better in one). Of identical points, one is on the front."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front = [False] * len(points)
    best_ap = -math.inf
    for i in order:
        if points[i][1] > best_ap:
            front[i] = True
            best_ap = points[i][1]
    return front


def measured(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows that can be plotted: status ok with a finite AP and latency."""
    return [r for r in rows if r.get("status") == "ok" and finite(r.get("AP")) and finite(r.get("latency_ms"))]


def plot_name(target: str) -> str:
    return "pareto.png" if target == BENCH_STEP else f"pareto-{target}.png"


def target_title(sweep: str, target: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """``accuracy_latency, target gpu: torch on cuda:0 (NVIDIA H200)``: what ran where, from the rows."""
    backends = sorted({str(r.get("backend")) for r in rows if r.get("backend")})
    where = sorted({f"{r.get('device')} ({r.get('machine')})" if r.get("machine") else str(r.get("device"))
                    for r in rows if r.get("device")})
    return f"{sweep}, target {target}: " + (f"{'/'.join(backends)} on " if backends else "") + (
        "; ".join(where) or "not measured")


# --------------------------------------------------------------------------------------------- report
def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep.json`` and one plot per target; returns paths, rows and fronts."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        from posekit.errors import UserError

        raise UserError(f"sweep folder not found: {sweep_dir}. Pass the folder a sweep wrote (its hydra.sweep.dir).")
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    rows = collect(sweep_dir)
    targets = sorted({str(r["target"]) for r in rows if r.get("target")})
    fronts: dict[str, list[dict[str, Any]]] = {}
    plots: dict[str, Path] = {}
    for t in targets:  # one front per target: a GPU millisecond and a CPU millisecond do not compete
        good = measured(r for r in rows if r.get("target") == t)
        for r, f in zip(good, pareto_front([(r["latency_ms"], r["AP"]) for r in good])):
            r["pareto"] = f  # type: ignore[index]
        fronts[t] = sorted((r for r in good if r.get("pareto")), key=lambda r: r["latency_ms"])
        fig, _ = pareto_figure(good, [bool(r.get("pareto")) for r in good],
                               target_title(sweep_dir.name, t, [r for r in rows if r.get("target") == t]))
        plots[t] = save_png(fig, out / plot_name(t))

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = io.write_text(out / "sweep.csv", buf.getvalue())

    points = sorted({r["point"] for r in rows})
    # deferred (latency to be measured on its machine) and n/a (a precision the target does not run) are not errors
    not_ok = sorted({r["point"] for r in rows if r["status"] not in ("ok", "n/a", "deferred")})
    wall = wall_time(sweep_dir)
    summary = {
        "sweep": sweep_dir.name,
        "points": len(points),
        "rows": rows,
        "targets": {t: {
            "plot": plots[t].name,
            "devices": sorted({f"{r.get('device')} ({r.get('machine')})" for r in rows
                               if r.get("target") == t and r.get("device")}),
            "status": {s: sum(1 for r in rows if r.get("target") == t and r["status"] == s)
                       for s in sorted({r["status"] for r in rows if r.get("target") == t})},
            "front": [{"point": r["point"], "precision": r.get("precision"), "latency_ms": r["latency_ms"],
                       "AP": r["AP"]} for r in fronts[t]],
        } for t in targets},
        "wall_time": wall,
        "not_ok": not_ok,
    }
    json_path = io.write_json(out / "sweep.json", summary)
    md_path = io.write_text(out / "sweep.md", markdown(sweep_dir, rows, targets, fronts, plots, wall, not_ok))
    table = markdown_table(rows, SWEEP_COLUMNS)
    return {"csv": csv_path, "markdown": md_path, "json": json_path, "plots": plots,
            "plot": next(iter(plots.values()), None), "rows": rows, "fronts": fronts, "failed": not_ok,
            "wall_time": wall, "table": table}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d} ({seconds:.0f} s)"


def markdown(sweep_dir: Path, rows: list[dict[str, Any]], targets: list[str], fronts: Mapping[str, list],
             plots: Mapping[str, Path], wall: Mapping[str, Any], not_ok: list[str]) -> str:
    """``sweep.md``: what the columns mean, the wall time, every row, then per target its plot and front."""
    n_points = len({r["point"] for r in rows})
    md = [
        f"# Sweep report: `{sweep_dir.name}`",
        "",
        f"{n_points} point(s), {len(rows)} row(s), {len(not_ok)} point(s) not ok"
        f"{': ' + ', '.join(not_ok) if not_ok else ''}. Folder: `{sweep_dir}`. "
        f"Regenerate: `python -m posekit.sweep.report {sweep_dir}`.",
        "",
        "One row per point and latency target. AP: COCO keypoint AP of what the target runs (the PyTorch model at the "
        "point's precision for a torch target, the exported file for ONNX Runtime) on the configured val set. "
        "Latency: median network time per call at batch 1 on the device and machine named in the row (bench "
        "stage); e2e: preprocess + network + decode at batch 1; img/s: network throughput at the batch in 'at "
        "batch'. params / GFLOPs: the PyTorch model at the point's input shape (2 x conv MACs). n/a: the target "
        "does not run that precision (the note says why). front: on the target's Pareto front.",
        "",
        f"Wall time (step records): {wall.get('steps', 0)} steps, their sum {_duration(wall.get('sum_s'))}, first "
        f"start to last end {_duration(wall.get('span_s'))}"
        + "".join(f"; {h}: sum {_duration(w['sum_s'])}, span {_duration(w['span_s'])}"
                  for h, w in wall.get("by_host", {}).items()) + ".",
        "",
        markdown_table(rows, SWEEP_COLUMNS),
        "",
    ]
    for t in targets:
        md += [f"## Target `{t}`: Pareto front (AP vs latency)", "",
               f"![AP vs latency, target {t}]({plots[t].name})", ""]
        md += [markdown_table(fronts[t], SWEEP_COLUMNS[:-2]) if fronts[t] else "_no point has both AP and latency_",
               ""]
    return "\n".join(md)


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
        log.info("sweep report: %s, %s, %s, %s%s", rep["markdown"], rep["csv"], rep["json"],
                 ", ".join(str(p) for p in rep["plots"].values()),
                 f" ({len(rep['failed'])} point(s) not ok: {', '.join(rep['failed'])})" if rep["failed"] else "")


# --------------------------------------------------------------------------------------------- deferred targets
def bench_targets(sweep_dir: str | Path, names: Sequence[str], force: bool = False, rebuild: bool = False,
                  rounds: int = 1) -> dict[str, int]:
    """Time the deferred entries of targets ``names`` at every point of the sweep, on this machine (the 2-core VM for
    ``cpu``), from the files the sweep left; returns ``{"measured": n, "done earlier": n, "failed": n}``.

    ``rounds`` > 1: every entry the first round timed is timed again in rounds 2..R, and keeps the round with the
    median latency (:func:`posekit.targets.keep_median_round`). Each round visits every point before the next one
    starts, so the rounds of one entry lie minutes apart and a slow spell of the machine falls on one of them."""
    from posekit.stages.pipeline import run_stage_step
    from posekit.targets import bench_deferred, bench_json, keep_median_round, round_json

    if rounds < 1:
        from posekit.errors import UserError

        raise UserError(f"--rounds {rounds}: need 1 or more")
    sweep_dir = Path(sweep_dir).resolve()
    points = [f for f in find_points(sweep_dir) if (f / "pipeline" / "summary.json").is_file()]
    counts = {"measured": 0, "done earlier": 0, "failed": 0}
    timed: dict[tuple[Path, str], list[str]] = {}  # (point, target) -> the precisions the first round timed
    for k in range(rounds):
        for folder in points:
            for name in names:
                only = None if k == 0 else timed.get((folder, name))
                if k > 0 and not only:
                    continue
                for e in bench_deferred(folder, name, run_stage_step, force=force or k > 0, rebuild=rebuild,
                                        only=only):
                    if k == 0:
                        counts[{"ran": "measured", "cached": "done earlier"}.get(e["step"], "failed")] += 1
                    elif e["step"] != "ran":
                        counts["failed"] += 1
                    if e["step"] == "ran":
                        if k == 0:
                            timed.setdefault((folder, name), []).append(e["precision"])
                        if rounds > 1:
                            io.write_json(round_json(folder, name, e["precision"], k),
                                          io.read_json(bench_json(folder, name, e["precision"])))
                    print(f"{folder.name}: {name} {e['precision']} {e['status']} ({e['step']})"
                          f"{f' round {k + 1}/{rounds}' if rounds > 1 else ''}"
                          f"{' ' + str(e.get('latency_ms')) + ' ms' if e.get('latency_ms') is not None else ''}"
                          f"{' ' + str(e['error']) if e.get('error') else ''}", flush=True)
    if rounds > 1:
        for (folder, name), precisions in timed.items():
            for precision in precisions:
                keep_median_round(folder, name, precision, rounds)
    return counts


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posekit.sweep.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), e.g. experiments/sweeps/tiny")
    parser.add_argument("--out", help="output folder (default: <sweep_dir>/report)")
    parser.add_argument("--bench", action="append", default=[], metavar="TARGET",
                        help="first time the deferred entries of this latency target (e.g. cpu) on this machine, "
                             "from the sweep's exported files (repeatable)")
    parser.add_argument("--force", action="store_true", help="with --bench: time the target's measured entries again")
    parser.add_argument("--rebuild", action="store_true",
                        help="with --bench: where a file is not here (an ONNX export, or a shared model for a "
                             "torch target), time a rebuild of its network with random weights (the sweep recorded "
                             "it; posekit/sweep/rebuild.py)")
    parser.add_argument("--rounds", type=int, default=1, metavar="R",
                        help="with --bench: time each entry in R rounds over the whole sweep and keep the round "
                             "with the median latency (a shared machine's slow spells move single sittings)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    from posekit.errors import UserError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.bench:
            if not Path(args.sweep_dir).is_dir():
                raise UserError(f"sweep folder not found: {args.sweep_dir}")
            counts = bench_targets(args.sweep_dir, args.bench, force=args.force, rebuild=args.rebuild,
                                   rounds=args.rounds)
            print(f"--bench {','.join(args.bench)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
        rep = write_report(args.sweep_dir, args.out)
    except UserError as e:
        print(f"posekit: error: {e}", file=sys.stderr)
        return 2
    print(rep["table"])
    print(f"\nwrote {rep['markdown']}\n      {rep['csv']}\n      {rep['json']}")
    for p in rep["plots"].values():
        print(f"      {p}")
    return 0


__all__ = ["SweepReportCallback", "bench_targets", "collect", "label", "main", "pareto_front", "write_report"]


if __name__ == "__main__":
    sys.exit(main())
