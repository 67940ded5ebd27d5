"""Latency targets: which artifact of a pipeline run runs where, its AP there and its latency (the ``targets`` step).

A target (``pipeline.targets.<name>``, :class:`~posekit.config.TargetConfig`) is one backend on one device. For each
precision of the run that the target lists, one *measurement* of one artifact::

    backend      artifact                                          AP                             latency
    torch        the chain's PyTorch model (trained, retrained)    eval, torch at the precision   bench
    onnxruntime  the export of the precision (INT8: *.int8.cpu.onnx)  eval of that file            bench

Both halves are the ordinary eval and bench stages with a derived config (``runtime.device``,
``runtime.torch_precision``, ``runtime.cuda_graphs``, ``runtime.ort_threads``, ``bench.batch_sizes``), run through
the step runner (records and locks: a relaunch skips them), and write under the run's output folder::

    targets/<target>/<precision>/eval/<artifact slug>/   metrics.json, detections.json, summary.json
    targets/<target>/<precision>/bench/                  bench.json (one row per batch size, the machine), bench.md

A precision the target does not list is an ``n/a`` entry. A deferred target (``defer: true``) is evaluated but not
timed: ``python -m posekit.sweep.report <sweep dir> --bench <target>`` times it later on the target machine from the
files the run left (:func:`bench_deferred`). The pipeline's ``summary.json`` lists one entry per (target, precision)
(:func:`entry`); the sweep report reads the entries and the ``bench.json`` files they name (:func:`timing`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.chain import (BENCH_SECTIONS, EVAL_SECTIONS, Outcome, Step, StepRunner, derive, digest, fingerprint,
                           rebuilt_sidecar)
from posekit.export.artifacts import Artifact

log = logging.getLogger("posekit.targets")

STATUSES = ("ok", "deferred", "failed", "blocked", "n/a")


@dataclass(frozen=True)
class Plan:
    """One measurement: target ``name`` (its config ``target``) runs ``artifact`` at ``precision``; ``upstream``
    identifies the artifact's content (the steps' fingerprints depend on it)."""

    name: str
    target: DictConfig
    precision: str
    artifact: Artifact
    upstream: str

    @property
    def folder_parts(self) -> tuple[str, str, str]:
        return ("targets", self.name, self.precision)


# --------------------------------------------------------------------------------------------- what runs
def configured(cfg: DictConfig) -> dict[str, DictConfig]:
    """The run's latency targets by name, in name order; a target set to null (``pipeline.targets.gpu=null``)
    is dropped: a sweep config that composes another can leave out one of its targets."""
    targets = cfg.pipeline.get("targets") or {}
    return {name: targets[name] for name in sorted(targets) if targets[name] is not None}


def unsupported(name: str, target: DictConfig, precision: str) -> str | None:
    """Why target ``name`` does not measure ``precision`` (an ``n/a`` entry), or None when it does."""
    if precision in target.precisions:
        return None
    if target.backend == "torch" and precision == "int8":
        why = "the torch backend has no INT8 path; a GPU runs INT8 through TensorRT"
    elif target.backend == "onnxruntime" and precision == "fp16" and str(target.device) == "cpu":
        why = "ONNX Runtime's CPU provider runs FP16 graphs through casts to FP32"
    else:
        why = f"not in pipeline.targets.{name}.precisions"
    return f"{precision} on {name}: {why}"


def pick_artifact(target: DictConfig, precision: str, model: Artifact | None, exported: list[Artifact]
                  ) -> Artifact | str:
    """The artifact a target runs at ``precision``: the PyTorch ``model`` (torch), or the exported ONNX of that
    precision (onnxruntime; INT8: the ONNX Runtime model ``*.int8.cpu.onnx``, not TensorRT's Q/DQ one). A string
    says why there is none."""
    if target.backend == "torch":
        return model if model is not None else "no PyTorch model (the train/prune/retrain step failed or is missing)"
    variant = "cpu" if precision == "int8" else None
    for art in exported:
        if art.path.suffix == ".onnx" and art.precision == precision and art.variant == variant:
            return art
    return f"no exported {precision} ONNX{' (' + variant + ' variant)' if variant else ''}: add export to " \
           "pipeline.steps, before targets"


def content_fingerprint(path: Path) -> str:
    """What a measurement depends on upstream: the artifact's bytes (so a relaunch on another machine, or of a
    folder copied there, still finds its steps done)."""
    return digest({"sha256": io.sha256(path)})


# --------------------------------------------------------------------------------------------- derived configs
def runtime_updates(target: DictConfig, precision: str) -> dict[str, Any]:
    """The ``runtime`` keys a target sets (eval and bench alike)."""
    updates: dict[str, Any] = {"runtime.device": str(target.device), "runtime.ort_threads": int(target.threads),
                               "runtime.cuda_graphs": bool(target.cuda_graphs), "runtime.batch_size": 1}
    if target.backend == "torch":
        updates["runtime.torch_precision"] = precision
    return updates


def eval_config(cfg: DictConfig, plan: Plan, folder: Path) -> DictConfig:
    return derive(cfg, {"stage": "eval", "experiment.dir": str(folder), "eval.artifact": str(plan.artifact.path),
                        "eval.tag": plan.artifact.slug, **runtime_updates(plan.target, plan.precision)})


def bench_config(cfg: DictConfig, plan: Plan, folder: Path) -> DictConfig:
    return derive(cfg, {"stage": "bench", "experiment.dir": str(folder), "bench.artifacts": [str(plan.artifact.path)],
                        "bench.batch_sizes": [int(b) for b in plan.target.batch_sizes],
                        "bench.end_to_end": bool(plan.target.end_to_end),
                        **runtime_updates(plan.target, plan.precision)})


def eval_step(cfg: DictConfig, plan: Plan, outputs: Path) -> Step:
    ecfg = eval_config(cfg, plan, outputs.joinpath(*plan.folder_parts))
    return Step(f"target-{plan.name}-{plan.precision}-eval", "eval", ecfg, outputs,
                fingerprint(ecfg, EVAL_SECTIONS, upstream=[plan.upstream]),
                title=f"{plan.name} target: AP of {plan.artifact.label} at {plan.precision}")


def bench_step(cfg: DictConfig, plan: Plan, outputs: Path) -> Step:
    bcfg = bench_config(cfg, plan, outputs.joinpath(*plan.folder_parts))
    return Step(f"target-{plan.name}-{plan.precision}-bench", "bench", bcfg, outputs,
                fingerprint(bcfg, BENCH_SECTIONS, upstream=[plan.upstream]),
                title=f"{plan.name} target: latency of {plan.artifact.label} at {plan.precision}")


def bench_json(outputs: Path, name: str, precision: str) -> Path:
    return outputs / "targets" / name / precision / "bench" / "bench.json"


def round_json(outputs: Path, name: str, precision: str, k: int) -> Path:
    """Round ``k``'s copy of :func:`bench_json`, while an entry is timed in rounds (:func:`keep_median_round`)."""
    return bench_json(outputs, name, precision).with_name(f"bench.round{k}.json")


def keep_median_round(outputs: Path, name: str, precision: str, rounds: int) -> dict[str, Any] | None:
    """Make the entry's ``bench.json`` the round whose network latency is the median of its rounds (the lower one
    of the middle two for an even count), with every round's latency under ``rounds``; removes the round copies.
    A median of sittings taken apart in time, not of one sitting's calls: on the 2-core VM the calls of one sitting
    agree within about 10%, but one sitting's median landed at 0.6x to 1.7x the median of five (docs/sweeps.md).
    Returns the ``rounds`` record, or None when no round of the entry was timed."""
    files = [round_json(outputs, name, precision, k) for k in range(rounds)]
    benches = [(k, io.read_json(f)) for k, f in enumerate(files) if f.is_file()]
    timed = [(k, b, ms) for k, b in benches if (ms := timing(b).get("latency_ms")) is not None]  # round order
    if not timed:
        return None
    chosen, bench, _ = sorted(timed, key=lambda t: t[2])[(len(timed) - 1) // 2]
    record = {"latency_ms": [ms for _, _, ms in timed], "chosen": chosen}
    io.write_json(bench_json(outputs, name, precision), {**bench, "rounds": record})
    for f in files:
        f.unlink(missing_ok=True)
    return record


# --------------------------------------------------------------------------------------------- results
def machine_label(machine: Mapping[str, Any], device: str) -> str:
    """``NVIDIA H200`` for a CUDA device, else ``<CPU model> (<n> CPUs)``: the hardware a latency came from."""
    if str(device).startswith("cuda") and machine.get("gpu"):
        return str(machine["gpu"])
    return f"{machine.get('processor') or 'unknown CPU'} ({machine.get('cpu_count')} CPUs)"


def timing(bench: Mapping[str, Any]) -> dict[str, Any]:
    """A target's figures from its ``bench.json`` (one artifact, one row per batch size): network latency (median
    ms per call) and end-to-end latency at the smallest batch, network throughput (images/s) at the largest, the
    device and the machine they were measured on."""
    rows = sorted(bench.get("rows", []), key=lambda r: int(r.get("batch", 1)))
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    device = str(first.get("device", "cpu"))
    return {
        "latency_ms": (first.get("network") or {}).get("median_ms"),
        "latency_rounds": (bench.get("rounds") or {}).get("latency_ms"),  # each round's, when timed in rounds
        "latency_batch": int(first.get("batch", 1)),
        "e2e_ms": (first.get("end_to_end") or {}).get("median_ms"),
        "throughput": (last.get("network") or {}).get("throughput_ips"),
        "throughput_batch": int(last.get("batch", 1)),
        "device": device,
        "machine": machine_label(bench.get("machine") or {}, device),
    }


ACCURACY = ("AP", "APm", "APl", "AP50")


def entry(name: str, target: DictConfig, precision: str, outputs: Path, *, status: str,
          artifact: Artifact | None = None, metrics: Mapping[str, Any] | None = None, error: str | None = None
          ) -> dict[str, Any]:
    """The ``summary.json`` record of one (target, precision): what ran (paths relative to the run's output folder,
    so a copied sweep folder still resolves), its AP, and its timing when ``bench.json`` exists."""
    assert status in STATUSES, status
    bench = bench_json(outputs, name, precision)
    rec: dict[str, Any] = {
        "target": name, "backend": str(target.backend), "device_requested": str(target.device),
        "precision": precision, "status": status, "error": error,
        "artifact": os.path.relpath(artifact.path, outputs) if artifact is not None else None,
        "label": artifact.label if artifact is not None else None,
        **{k: (metrics or {}).get(k) for k in ACCURACY},
        "bench": os.path.relpath(bench, outputs),
        "steps": {"eval": f"target-{name}-{precision}-eval", "bench": f"target-{name}-{precision}-bench"},
    }
    if status == "ok" and bench.is_file():
        rec.update(timing(io.read_json(bench)))
    return rec


# --------------------------------------------------------------------------------------------- running
def measure(run: Callable[[Step], Outcome], cfg: DictConfig, plan: Plan, outputs: Path) -> dict[str, Any]:
    """Evaluate, then (unless deferred) time one plan with ``run`` (the pipeline's step runner); its entry."""
    ev = run(eval_step(cfg, plan, outputs))
    if not ev.ok:
        return entry(plan.name, plan.target, plan.precision, outputs, status="failed", artifact=plan.artifact,
                     error=f"eval: {ev.error}")
    metrics = {k: _metric(ev.result, k) for k in ACCURACY}
    if plan.target.defer:
        log.info("%s target: latency deferred (python -m posekit.sweep.report <sweep dir> --bench %s)", plan.name,
                 plan.name)
        rec = entry(plan.name, plan.target, plan.precision, outputs, status="deferred", artifact=plan.artifact,
                    metrics=metrics)
        model = plan.artifact.path if plan.target.backend == "torch" else plan.artifact.source
        if model is not None:
            from posekit.sweep import rebuild

            try:  # what --rebuild needs to time the network where the file is not (posekit/sweep/rebuild.py)
                rec["rebuild"] = rebuild.record(plan.artifact.path, model)
            except Exception as e:  # noqa: BLE001 - the entry is still timed from the file itself
                log.warning("%s: no rebuild record (%s); --bench needs the file itself", plan.artifact.label, e)
        return rec
    be = run(bench_step(cfg, plan, outputs))
    if not be.ok:
        return entry(plan.name, plan.target, plan.precision, outputs, status="failed", artifact=plan.artifact,
                     metrics=metrics, error=f"bench: {be.error}")
    return entry(plan.name, plan.target, plan.precision, outputs, status="ok", artifact=plan.artifact,
                 metrics=metrics)


def _metric(result: Mapping[str, Any], key: str) -> Any:
    metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    return result.get(key, metrics.get(key))


# --------------------------------------------------------------------------------------------- deferred
def point_config(folder: Path) -> DictConfig:
    """A run's composed config as Hydra saved it (``.hydra/config.yaml``), on the typed schema."""
    from posekit.config import Config

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(folder / ".hydra" / "config.yaml"))
    OmegaConf.set_struct(cfg, True)
    return cfg


def rebuilt_marker(outputs: Path, name: str, precision: str) -> Path:
    """Beside ``bench.json``: present when the timed file was rebuilt here (posekit/sweep/rebuild.py)."""
    return bench_json(outputs, name, precision).with_name("rebuilt.json")


def bench_deferred(outputs: Path, name: str, stage_runner: Callable[[str, DictConfig], dict], *,
                   force: bool = False, rebuild: bool = False, only: Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
    """Time the entries of target ``name`` that a run at ``outputs`` (a sweep point) left ``deferred``, on this
    machine, from the files under ``outputs`` (the paths the entries give, relative to it). Writes the bench output
    and a step record as the pipeline would (a second call finds the step done and skips it); returns the updated
    entries, each with ``step`` (ran | cached | failed). The report reads the figures from the files.
    ``rebuild``: a file that is not here (an ONNX export, or a shared model for the torch backend) is re-made from
    the entry's ``rebuild`` record (the same network, random weights: posekit/sweep/rebuild.py) and timed;
    ``rebuilt.json`` beside the bench output says so. ``only``: these precisions alone (default: every one)."""
    from posekit.errors import UserError

    summary = io.read_json(outputs / "pipeline" / "summary.json")
    todo = [e for e in summary.get("targets", []) if e["target"] == name
            and (e["status"] == "deferred" or (force and e["status"] == "ok"))
            and (only is None or e["precision"] in only)]
    if not todo:
        return []
    cfg = point_config(outputs)
    if name not in configured(cfg):
        raise UserError(f"{outputs}: its config has no pipeline.targets.{name}")
    from posekit.sweep import rebuild as rb

    target = derive(configured(cfg)[name], {"defer": False})
    runner = StepRunner(stage_runner, force=force)
    done = []
    for e in todo:
        path = (outputs / e["artifact"]).resolve()
        if not path.is_file() and rebuild and e.get("rebuild"):
            log.info("%s: %s is not here; rebuilding its network with random weights", outputs.name, e["artifact"])
            rb.rebuild(cfg, e["rebuild"], path)  # a model file shared by several points is rebuilt once
        marker = rebuilt_marker(outputs, name, e["precision"])
        sidecar = rebuilt_sidecar(path)
        if sidecar.is_file():
            io.write_json(marker, {"artifact": e["artifact"], **io.read_json(sidecar)})
        else:
            marker.unlink(missing_ok=True)
        if not path.is_file():
            hint = " or time a rebuild of its graph (--rebuild)" if e.get("rebuild") else ""
            raise UserError(f"{outputs}: {e['artifact']} is missing; copy the sweep folder with its exports and "
                            f"shared models{hint}")
        label = str(e.get("label") or path.name)
        art = (Artifact(path, e["precision"], "torch", model=label, source=path) if target.backend == "torch"
               else Artifact(path, e["precision"], "onnx", model=label.split("/")[0]))
        # A rebuild times the network only: end-to-end time includes decoding, whose work depends on the peaks the
        # weights produce, and random weights do not produce a trained network's peaks.
        timed = derive(target, {"end_to_end": False}) if marker.is_file() else target
        plan = Plan(name, timed, e["precision"], art, content_fingerprint(path))
        out = runner.run(bench_step(cfg, plan, outputs))
        metrics = {k: e.get(k) for k in ACCURACY}
        done.append({**entry(name, target, e["precision"], outputs, status="ok" if out.ok else "failed",
                             artifact=art, metrics=metrics, error=None if out.ok else f"bench: {out.error}"),
                     "step": out.status})  # ran | cached (timed by an earlier --bench) | failed
    return done


__all__ = ["Plan", "bench_deferred", "bench_json", "configured", "content_fingerprint", "entry", "keep_median_round",
           "machine_label", "measure", "pick_artifact", "point_config", "rebuilt_marker", "round_json", "timing",
           "unsupported"]
