"""The pipeline's final table: one :class:`Entry` per artifact (what a step wrote plus the figures later steps
found for it) -> rows -> the Markdown the pipeline prints and writes (``pipeline.md``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posekit.export.artifacts import Artifact, file_format
from posekit.table import METRIC_COLUMNS, Column, markdown_table, num

log = logging.getLogger("posekit.pipeline")

ACCURACY_KEYS = ("AP", "APm", "APl", "AP50", "AP75")

PIPELINE_COLUMNS = [
    Column("model", "model"),
    Column("format", "format"),
    Column("precision", "precision"),
    Column("shape", "input"),
    *METRIC_COLUMNS,
]
TARGET_COLUMNS = [
    Column("target", "target"),
    Column("backend", "backend"),
    Column("precision", "precision"),
    Column("label", "artifact"),
    Column("status", "status"),
    num("AP", "AP", ".3f"),
    Column("device", "device"),
    num("latency_ms", "latency ms", ".2f"),
    num("throughput", "img/s", ".1f"),
    Column("throughput_batch", "at batch", numeric=True),
    Column("error", "note"),
]
STEP_COLUMNS = [
    Column("id", "step"),
    Column("status", "status"),
    Column("seconds", "seconds", lambda v: f"{v:.1f}", numeric=True),
    Column("error", "error"),
]


@dataclass
class Entry:
    """An artifact of the chain and what the pipeline learned about it. ``kind``: ``model`` (a PyTorch .pt of
    train/prune/retrain) or ``export``; ``fingerprint``: of the step that wrote it (downstream steps depend on it);
    ``input_hw``: the (H, W) it runs at."""

    artifact: Artifact
    kind: str
    fingerprint: str
    input_hw: tuple[int, int]
    metrics: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def label(self) -> str:
        return self.artifact.label

    @property
    def slug(self) -> str:
        return self.artifact.slug

    def row(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The table row: identity, ``stats`` (params, GFLOPs), accuracy, timing and errors."""
        a, (h, w) = self.artifact, self.input_hw
        return {
            "kind": self.kind,
            "artifact": str(a.path),
            "label": a.label,
            "model": a.model,
            "format": file_format(a.path),
            "precision": a.display_precision,
            "shape": f"{h}x{w}",
            **stats,
            **{k: self.metrics.get(k) for k in ACCURACY_KEYS},
            "latency_ms": self.timing.get("latency_ms"),
            "e2e_ms": self.timing.get("e2e_ms"),
            "throughput": self.timing.get("throughput"),
            "device": self.timing.get("device"),
            "error": "; ".join(self.errors) or None,
        }


def find_metric(result: Any, *keys: str) -> Any:
    """The first of ``keys`` in a stage's ``result`` or in its ``metrics`` sub-dict (stages differ in nesting)."""
    if not isinstance(result, dict):
        return None
    for scope in (result, result.get("metrics") if isinstance(result.get("metrics"), dict) else {}):
        for k in keys:
            if scope.get(k) is not None:
                return scope[k]
    return None


def timing_by_label(timings: dict[str, Any], entries: Iterable[Entry]) -> dict[str, dict[str, Any]]:
    """``{entry label: {latency_ms, throughput, e2e_ms, device}}`` from the bench stage's rows (one per artifact x
    batch size): latency and end-to-end time at the smallest batch, throughput the best over batch sizes;
    ``{label: {"error": ...}}`` for an artifact the bench skipped."""
    by_path = {str(Path(e.path).resolve()): e.label for e in entries}
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(timings.get("rows", []), key=lambda r: r.get("batch", 1)):
        lbl = by_path.get(str(Path(str(row.get("artifact", ""))).resolve()))
        if lbl is None:
            continue
        net, e2e = row.get("network") or {}, row.get("end_to_end") or {}
        t = out.setdefault(lbl, {"latency_ms": net.get("median_ms"), "e2e_ms": e2e.get("median_ms"),
                                 "device": row.get("device"), "throughput": None})
        thr = net.get("throughput_ips")
        if isinstance(thr, (int, float)) and (t["throughput"] is None or thr > t["throughput"]):
            t["throughput"] = thr
    for path, why in timings.get("skipped", {}).items():
        lbl = by_path.get(str(Path(path).resolve()))
        if lbl is not None:
            out[lbl] = {"error": f"bench: {why}"}
    return out


def model_stats(path: Path, input_hw: tuple[int, int]) -> dict[str, Any]:
    """``{"params": trainable parameters, "gflops": 2 x conv MACs at input_hw, batch 1}`` of a posekit model file."""
    from posekit.model import load_model
    from posekit.model.bpnet import count_parameters
    from posekit.prune.report import conv_layers

    model, _ = load_model(path)
    macs = sum(c.macs for c in conv_layers(model, list(input_hw)).values())
    return {"params": count_parameters(model)["trainable"], "gflops": 2 * macs / 1e9}


def table_rows(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """One row per entry; params and GFLOPs of the PyTorch model behind it (computed once per model and shape;
    left out, with a warning, when the model cannot be read: a table without them beats no table)."""
    stats_cache: dict[tuple[str, tuple[int, int]], dict[str, Any]] = {}
    rows = []
    for e in entries:
        src = e.artifact.source or e.path
        key = (str(src), tuple(e.input_hw))
        if key not in stats_cache:
            try:
                stats_cache[key] = model_stats(Path(src), e.input_hw)
            except Exception as err:
                log.warning("params/FLOPs of %s: %s", src, err)
                stats_cache[key] = {}
        rows.append(e.row(stats_cache[key]))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The final table (Markdown) of :func:`table_rows`."""
    return markdown_table(rows, PIPELINE_COLUMNS)


def format_targets(entries: list[dict[str, Any]]) -> str:
    """The latency targets' entries (:func:`posekit.targets.entry`) as Markdown, one line per (target, precision)."""
    return markdown_table(entries, TARGET_COLUMNS)


def pipeline_markdown(name: str, steps: list[str], models: Path, table: str, outcomes: list[dict[str, Any]]) -> str:
    """``pipeline.md``: the final ``table``, what its columns mean, and one line per step (``outcomes``)."""
    return "\n".join([
        f"# Pipeline: `{name}`",
        "",
        f"Steps: {' -> '.join(steps)}. Models: `{models}`.",
        "",
        table,
        "",
        "params / GFLOPs: the PyTorch model behind each artifact at its input shape (GFLOPs = 2 x conv MACs, "
        "batch 1). AP: COCO keypoint AP on the configured val set. Latency: bench stage, batch 1.",
        "",
        "## Steps",
        "",
        markdown_table(outcomes, STEP_COLUMNS),
        "",
    ])
