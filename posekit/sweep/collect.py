"""A sweep folder -> rows for the report: one per (point, latency target), or per exported artifact for sweeps timed by
the pipeline's own ``bench`` step; and the sweep's wall time from its step records.

Rows come from each point's ``pipeline/summary.json`` (written by the pipeline stage, even when a step failed) and,
for the latency, from the ``bench.json`` each target entry names (relative to the point), so a bench run later with
``--bench`` (posekit.targets.bench_deferred) is merged by reading its file. A point without a summary (killed,
still running) is an ``incomplete`` row; a failed point shows its first error. Nothing here runs a stage.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from posekit import io
from posekit.targets import rebuilt_marker, timing

log = logging.getLogger("posekit.sweep")

NOT_POINTS = {"shared", "report", ".submitit"}
BENCH_STEP = "bench"  # the target name of rows timed by the pipeline's bench step (sweeps without targets)


# --------------------------------------------------------------------------------------------- points
def is_point(folder: Path) -> bool:
    return folder.is_dir() and folder.name not in NOT_POINTS and not folder.name.startswith(".") and (
        (folder / ".hydra").is_dir() or (folder / "pipeline").is_dir()
    )


def find_points(sweep_dir: Path) -> list[Path]:
    """Point folders under ``sweep_dir`` (Hydra job folders: ``.hydra/`` or ``pipeline/`` inside), at any depth
    (an override value with a ``/`` nests the folder)."""
    found: list[Path] = []
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


def _records(folder: Path) -> list[dict[str, Any]]:
    out = []
    for rec_path in sorted((folder / "pipeline" / "steps").glob("*.json")):
        try:
            out.append(io.read_json(rec_path))
        except ValueError:
            continue
    return out


def _first_error(folder: Path) -> tuple[str | None, bool]:
    """(first failed step's error, whether a step is still recorded as running) from the step records."""
    running, error = False, None
    for rec in _records(folder):
        running |= rec.get("status") == "running"
        if rec.get("status") == "failed" and error is None:
            error = f"{rec.get('id')}: {rec.get('error')}"
    return error, running


def point_seconds(folder: Path) -> float:
    """Seconds the point's own steps took (export, eval, targets; the shared model steps are counted apart)."""
    return round(sum(float(r.get("seconds") or 0) for r in _records(folder)), 2)


# --------------------------------------------------------------------------------------------- rows
def _target_row(name: str, folder: Path, point: Mapping[str, Any], e: Mapping[str, Any], sweep_dir: Path
                ) -> dict[str, Any]:
    """A target entry of the point's summary, its latency read from the ``bench.json`` it names (the file a later
    ``--bench`` writes too); a failed bench step's record makes it ``failed``."""
    row = {**point, "point": name, "target": e["target"], "backend": e.get("backend"), "precision": e["precision"],
           "format": "torch" if e.get("backend") == "torch" else "onnx", "artifact": e.get("artifact"),
           "status": e["status"], "error": e.get("error"),
           **{k: e.get(k) for k in ("params", "gflops", "AP", "APm", "APl", "AP50")}}
    if e["status"] not in ("ok", "deferred"):
        return row
    bench = folder / e["bench"]
    rec_path = folder / "pipeline" / "steps" / f"{(e.get('steps') or {}).get('bench', '')}.json"
    rec = io.read_json(rec_path) if rec_path.is_file() else {}
    if rec.get("status") == "failed":
        row.update(status="failed", error=f"bench: {rec.get('error')}")
    elif bench.is_file():
        row.update(timing(io.read_json(bench)), status="ok", error=None)
        if rebuilt_marker(folder, e["target"], e["precision"]).is_file():
            row["error"] = "latency of a rebuild: the point's network with random weights (its file was not here)"
    elif e["status"] == "ok":
        row.update(status="failed", error=f"{e['bench']} is missing")
    else:
        row["error"] = f"latency deferred: python -m posekit.sweep.report {sweep_dir} --bench {e['target']}"
    return row


def point_rows(folder: Path, sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per latency target entry of the point, else one per exported artifact (bench-step sweeps); one
    ``failed``/``incomplete`` row when it has neither."""
    name = str(folder.relative_to(sweep_dir))
    summary_path = folder / "pipeline" / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = io.read_json(summary_path)
        except ValueError:
            summary = None
    seconds = {"point_seconds": point_seconds(folder)}
    if summary is None:
        error, running = _first_error(folder)
        status = "failed" if error and not running else "incomplete"
        return [{"point": name, "status": status, **_point_config(folder), **seconds, "error": error or (
            "still running or killed (no pipeline/summary.json)" if running else "no pipeline/summary.json")}]
    point = {**summary.get("point", {}), **seconds}
    failure = summary.get("error")
    if summary.get("targets"):
        return [_target_row(name, folder, point, e, sweep_dir) for e in summary["targets"]]
    rows = [r for r in summary.get("rows", []) if r.get("kind") == "export"]
    if not rows:
        return [{"point": name, "status": "failed" if failure else "incomplete", **point,
                 "error": failure or "no exported artifact"}]
    out = []
    for r in rows:
        status = "ok" if r.get("AP") is not None else "failed"
        out.append({**point, **r, "point": name, "status": status, "target": BENCH_STEP,
                    "error": r.get("error") or (None if status == "ok" else failure)})
    return out


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of the sweep, sorted by target, stage count, pth, shape, precision."""
    sweep_dir = Path(sweep_dir)
    rows = [row for folder in find_points(sweep_dir) for row in point_rows(folder, sweep_dir)]

    def key(r: Mapping[str, Any]) -> tuple:
        return (str(r.get("target")), r.get("stages") or 0, r.get("pth") or 0, str(r.get("shape")),
                str(r.get("precision")), str(r.get("format")), r["point"])

    return sorted(rows, key=key)


# --------------------------------------------------------------------------------------------- wall time
def wall_time(sweep_dir: str | Path) -> dict[str, Any]:
    """The sweep's time from its step records (points' and shared models'), per host and in all: ``sum_s`` (the
    steps' own seconds) and ``span_s`` (first step's start to last step's end, so it includes start-up, skipped
    work and any gap between an interrupted launch and its relaunch)."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for rec_path in sorted(Path(sweep_dir).rglob("pipeline/steps/*.json")):
        try:
            rec = io.read_json(rec_path)
        except ValueError:
            continue
        if rec.get("status") in ("ok", "failed") and rec.get("started") and rec.get("finished"):
            by_host.setdefault(str(rec.get("host")), []).append(rec)

    def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
        if not recs:
            return {"steps": 0, "sum_s": 0.0, "span_s": None, "first_start": None, "last_finish": None}
        start = min(r["started"] for r in recs)
        finish = max(r["finished"] for r in recs)
        span = (_dt.datetime.fromisoformat(finish) - _dt.datetime.fromisoformat(start)).total_seconds()
        return {"steps": len(recs), "sum_s": round(sum(float(r.get("seconds") or 0) for r in recs), 1),
                "span_s": span, "first_start": start, "last_finish": finish}

    return {**summarize([r for recs in by_host.values() for r in recs]),
            "by_host": {h: summarize(recs) for h, recs in sorted(by_host.items())}}


__all__ = ["BENCH_STEP", "collect", "find_points", "is_point", "point_rows", "point_seconds", "wall_time"]
