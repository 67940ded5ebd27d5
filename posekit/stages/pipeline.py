"""``python launch.py stage=pipeline``: the whole life cycle in one command, ending with one table.

Runs ``pipeline.steps`` in this process (default ``train eval prune retrain eval export eval bench``), each step
with a config derived from the composed one: prune reads the trained model, retrain the pruned one, export the
latest model once per ``pipeline.precisions``, each ``eval`` evaluates what the step before it produced (every
exported ONNX after export), bench times every artifact. Then it prints and writes the final table::

    <experiment>/pipeline/summary.json     rows (artifact, AP, APm, APl, params, GFLOPs, latency), steps, status
    <experiment>/pipeline/pipeline.md      the same as Markdown
    <experiment>/pipeline/steps/*.json     one record per step (posekit.chain): re-running skips done steps

Inside a Hydra multirun (the sweeps in sweeps/sweep/) the same chain runs per point, with the model steps
(train, prune, retrain) in a folder shared by every point that needs the same models (docs/sweeps.md).

A failed step is recorded and the steps that do not need its output still run; the table shows what failed.
Run mode then exits with status 2; in a multirun the job returns normally, so the sweep goes on and its report
shows the failed row.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from posekit import io
from posekit.errors import UserError
from posekit.experiment import Experiment
from posekit.chain import (
    BENCH_SECTIONS,
    CALIBRATE_SECTIONS,
    EVAL_SECTIONS,
    EXPORT_SECTIONS,
    INFER_SECTIONS,
    PRUNE_SECTIONS,
    RETRAIN_SECTIONS,
    TRAIN_SECTIONS,
    ChainLayout,
    Outcome,
    Step,
    StepRunner,
    artifact_fingerprint,
    derive,
    digest,
    file_fingerprint,
    fingerprint,
    hydra_runtime,
    model_config,
)
from posekit.sweep.report import METRIC_COLUMNS, Column, markdown_table

log = logging.getLogger("posekit.pipeline")

MAIN_METRIC = "AP"  # of the final artifact (the last one evaluated)

# model.<H>.<W>.<precision>[.<variant>].<suffix>  (posekit.export.artifacts)
_EXPORT_NAME = re.compile(r"^model\.(\d+)\.(\d+)\.([a-z0-9]+)(?:\.([A-Za-z0-9_-]+))?\.(onnx|engine|plan)$")
RUNNABLE_SUFFIXES = (".onnx", ".engine", ".plan")


class PipelineError(UserError):
    """Some steps failed; the message names them and where the table is."""


@dataclass
class Artifact:
    """A model file the chain produced and what the pipeline learned about it."""

    label: str  # unique: "trained", "retrained-0.2", "retrained-0.2/model.288.384.int8.cpu.onnx"
    path: Path
    kind: str  # "model" (a PyTorch .pt of train/prune/retrain) | "export"
    model: str  # the PyTorch model it is or was exported from: "trained", "pruned-0.2", "retrained-0.2"
    fingerprint: str  # of the step that wrote it: downstream steps depend on it
    format: str = "torch"  # torch | onnx | engine
    precision: str = "fp32"  # fp32 | fp16 | int8.qdq | int8.cpu ...
    input_shape: tuple[int, int] | None = None
    source: Path | None = None  # the .pt behind an exported artifact (params / FLOPs)
    metrics: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace("/", "."))


# --------------------------------------------------------------------------------------------- result parsing
def _find(result: Any, *keys: str) -> Any:
    """The first of ``keys`` in ``result`` or in its ``metrics`` sub-dict (stages differ in nesting)."""
    if not isinstance(result, dict):
        return None
    for scope in (result, result.get("metrics") if isinstance(result.get("metrics"), dict) else {}):
        for k in keys:
            if scope.get(k) is not None:
                return scope[k]
    return None


def export_summary_records(cfg: DictConfig) -> list[dict[str, Any]]:
    """The artifact records of the export stage's ``summary.json`` for ``cfg`` (its return value has figures only)."""
    from posekit.stages.export import source_and_tag

    exp = Experiment(cfg)
    _, tag = source_and_tag(cfg, exp)
    summary = io.read_json(exp.root / "export" / tag / "summary.json")
    return list(summary.get("artifacts", {}).values())


def exported_records(result: dict, precision: str | None = None) -> list[dict[str, Any]]:
    """The runnable artifacts (ONNX, engines; not the deploy graph, caches or configs) an export step wrote, of
    ``precision`` when given (an INT8 export also rewrites the FP32 ONNX it starts from: that one belongs to the
    FP32 export)."""
    records = []
    for a in result.get("exported", []) if isinstance(result, dict) else []:
        rec = dict(a) if isinstance(a, dict) else {"path": str(a)}
        p = rec.get("path")
        if not p or not str(p).endswith(RUNNABLE_SUFFIXES) or ".deploy." in Path(p).name:
            continue
        if precision is not None and rec.get("precision") not in (None, precision):
            continue
        records.append(rec)
    return records


def describe_export(path: Path, record: dict[str, Any]) -> tuple[str, str, tuple[int, int] | None]:
    """(format, precision with variant, input (H, W)) from the export record or TAO-style file name."""
    m = _EXPORT_NAME.match(path.name)
    fmt = "onnx" if path.suffix == ".onnx" else "engine"
    if m:
        h, w, prec, variant, _ = m.groups()
        return fmt, f"{prec}.{variant}" if variant else prec, (int(h), int(w))
    shape = record.get("input_shape")
    prec = str(record.get("precision") or "?") + (f".{record['variant']}" if record.get("variant") else "")
    return fmt, prec, tuple(int(v) for v in shape[-2:]) if shape else None


def bench_records(cfg: DictConfig) -> dict[str, Any]:
    """The bench stage's per-artifact rows and skipped artifacts (``<experiment>/bench/bench.json``)."""
    data = io.read_json(Experiment(cfg).root / "bench" / "bench.json")
    return {"rows": data.get("rows", []), "skipped": data.get("skipped", {})}


def timing_by_artifact(timings: dict[str, Any], artifacts: Iterable[Artifact]) -> dict[str, dict[str, Any]]:
    """``{artifact label: {latency_ms, throughput, e2e_ms, device}}`` from the bench rows (one per artifact x batch
    size): latency and end-to-end time at the smallest batch, throughput the best over batch sizes."""
    by_path = {str(Path(a.path).resolve()): a.label for a in artifacts}
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
    """Trainable parameters and GFLOPs (2 x conv MACs at ``input_hw``, batch 1) of a posekit model file."""
    from posekit.model import load_model
    from posekit.prune.report import conv_layers

    model, _ = load_model(path)
    params = sum(p.numel() for p in model.parameters())
    macs = sum(c.macs for c in conv_layers(model, list(input_hw)).values())
    return {"params": params, "gflops": 2 * macs / 1e9}


# --------------------------------------------------------------------------------------------- the pipeline
class Pipeline:
    """Plans and runs ``cfg.pipeline.steps``; ``runner`` is injectable (tests run it with fake stages)."""

    def __init__(self, cfg: DictConfig, runner: StepRunner | None = None):
        self.cfg = cfg
        self.layout = ChainLayout.for_config(cfg)
        self.runner = runner or StepRunner(force=bool(cfg.pipeline.force))
        self.model_cfg = derive(model_config(cfg), {"experiment.dir": str(self.layout.models)})
        self.out_cfg = derive(cfg, {"experiment.dir": str(self.layout.outputs)})
        self.model: Artifact | None = None  # latest PyTorch model of the chain
        self.current: list[Artifact] = []  # what the last producing step made: the next eval's inputs
        self.artifacts: dict[str, Artifact] = {}
        self.outcomes: list[Outcome] = []
        self.failed_inputs: set[str] = set()  # producing steps that failed: what they would have made is missing

    # ------------------------------------------------------------------ running
    def run(self) -> dict[str, Any]:
        steps = list(self.cfg.pipeline.steps)
        log.info("pipeline: %s; models in %s, outputs in %s", " -> ".join(steps), self.layout.models,
                 self.layout.outputs)
        for i, name in enumerate(steps, 1):
            print(f"\n=== pipeline step {i}/{len(steps)}: {name} ===", flush=True)
            handler = getattr(self, f"_step_{name}", None)
            if handler is None:
                self._blocked(name, name, f"stage {name!r} cannot run inside a pipeline")
                continue
            handler()
        return self.finish()

    def _run(self, step: Step) -> Outcome:
        out = self.runner.run(step)
        self.outcomes.append(out)
        return out

    def _blocked(self, step_id: str, stage: str, why: str) -> None:
        log.warning("%s: not run (%s)", step_id, why)
        self.outcomes.append(Outcome(step_id, stage, "blocked", error=why))

    def _input_model(self, stage: str, explicit: str | None) -> Artifact | None:
        """The model a step starts from: an explicit ``<stage>.model`` path wins; else the chain's latest model;
        else what the stage itself would read from the experiment (prune: the trained model, retrain: the pruned
        one, export and eval: the latest of retrained > pruned > trained)."""
        if explicit:
            p = Path(os.path.expanduser(explicit)).resolve()
            tag = p.stem if p.stem != "model" else f"{p.parent.name}-model"  # .../pth-0.2/model.pt -> pth-0.2-model
            return Artifact(tag, p, "model", tag, file_fingerprint(p))
        if self.model is not None:
            return self.model
        if self.failed_inputs:
            self._blocked(stage, stage, f"its input was not produced ({', '.join(sorted(self.failed_inputs))})")
            return None
        exp = Experiment(self.model_cfg)
        defaults = {"prune": (exp.trained_model, "trained"), "retrain": (exp.pruned_model(), f"pruned-{exp.pth}")}
        try:
            path, tag = defaults[stage] if stage in defaults else exp.latest_model()
        except UserError as e:
            self._blocked(stage, stage, str(e))
            return None
        if not path.is_file():
            self._blocked(stage, stage, f"{path} not found: add the step that makes it to pipeline.steps")
            return None
        return Artifact(tag, path, "model", tag, artifact_fingerprint(path, self.layout.models))

    def _add_model(self, label: str, path: Path, fp: str) -> None:
        # torch models run (eval, bench) at the torch backend's precision
        art = Artifact(label, path, "model", label, fp, precision=str(self.cfg.runtime.torch_precision),
                       input_shape=self._eval_hw())
        self.artifacts[label] = art
        self.model = art
        self.current = [art]

    def _eval_hw(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.cfg.model.input_shape)  # type: ignore[return-value]

    def _producer_failed(self, stage: str, out: Outcome) -> None:
        self.failed_inputs.add(out.step_id)
        self.model = None if stage in ("train", "prune", "retrain") else self.model
        self.current = []

    # ------------------------------------------------------------------ model steps (shared in a sweep)
    def _step_train(self) -> None:
        cfg = derive(self.model_cfg, {"stage": "train"})
        fp = fingerprint(cfg, TRAIN_SECTIONS)
        path = Experiment(cfg).trained_model
        out = self._run(Step("train", "train", cfg, self.layout.models, fp, lambda r: [path], title="train"))
        if out.ok:
            self._add_model("trained", path, fp)
        else:
            self._producer_failed("train", out)

    def _step_prune(self) -> None:
        src = self._input_model("prune", self.cfg.prune.model)
        if src is None:
            return self._producer_failed("prune", self.outcomes[-1])
        cfg = derive(self.model_cfg, {"stage": "prune", "prune.model": str(src.path)})
        exp = Experiment(cfg)
        fp = fingerprint(cfg, PRUNE_SECTIONS, upstream=[src.fingerprint])
        path, label = exp.pruned_model(), f"pruned-{exp.pth}"
        out = self._run(Step(f"prune-{exp.pth}", "prune", cfg, self.layout.models, fp, lambda r: [path],
                             title=f"prune {src.label} at pth {exp.pth}"))
        if out.ok:
            self._add_model(label, path, fp)
        else:
            self._producer_failed("prune", out)

    def _step_retrain(self) -> None:
        src = self._input_model("retrain", self.cfg.retrain.model)
        if src is None:
            return self._producer_failed("retrain", self.outcomes[-1])
        cfg = derive(self.model_cfg, {"stage": "retrain", "retrain.model": str(src.path)})
        exp = Experiment(cfg)
        fp = fingerprint(cfg, RETRAIN_SECTIONS, upstream=[src.fingerprint])
        path = exp.retrained_model()
        out = self._run(Step(f"retrain-{exp.pth}", "retrain", cfg, self.layout.models, fp, lambda r: [path],
                             title=f"retrain {src.label}"))
        if out.ok:
            self._add_model(f"retrained-{exp.pth}", path, fp)
        else:
            self._producer_failed("retrain", out)

    # ------------------------------------------------------------------ output steps (per point in a sweep)
    def _precisions(self) -> list[str]:
        precs = self.cfg.pipeline.precisions
        if precs is None:
            name = self.cfg.precision.name
            return [getattr(name, "value", str(name))]
        return [str(p) for p in precs]

    def _step_export(self) -> None:
        src = self._input_model("export", self.cfg.export.model)
        if src is None:
            return self._producer_failed("export", self.outcomes[-1])
        hw = self._eval_hw()
        produced: list[Artifact] = []
        for prec in self._precisions():
            cfg = derive(self.out_cfg, {"stage": "export", "export.model": str(src.path), "precision.name": prec})
            fp = fingerprint(cfg, EXPORT_SECTIONS, upstream=[src.fingerprint])
            step = Step(f"export-{src.label}-{hw[0]}x{hw[1]}-{prec}", "export", cfg, self.layout.outputs, fp,
                        outputs=lambda r, p=prec: [rec["path"] for rec in exported_records(r, p)],
                        enrich=lambda r, c=cfg: {**r, "exported": export_summary_records(c)},
                        title=f"export {src.label} {hw[0]}x{hw[1]} {prec}")
            out = self._run(step)
            if not out.ok:
                self.failed_inputs.add(out.step_id)
                continue
            records = exported_records(out.result, prec)
            if not records:
                out.status, out.error = "failed", "export returned no runnable artifact (ONNX/engine)"
                self.failed_inputs.add(out.step_id)
                continue
            for rec in records:
                path = Path(rec["path"])
                fmt, precision, shape = describe_export(path, rec)
                art = Artifact(f"{src.label}/{path.name}", path, "export", src.label, digest([fp, path.name]),
                               format=fmt, precision=precision, input_shape=shape or hw, source=src.path)
                self.artifacts[art.label] = art
                produced.append(art)
        self.current = produced

    def _step_calibrate(self) -> None:
        cfg = derive(self.out_cfg, {"stage": "calibrate"})
        hw = self._eval_hw()
        self._run(Step(f"calibrate-{hw[0]}x{hw[1]}", "calibrate", cfg, self.layout.outputs,
                       fingerprint(cfg, CALIBRATE_SECTIONS), title=f"calibrate {hw[0]}x{hw[1]}"))

    def _step_eval(self) -> None:
        targets = self.current
        if not targets and not self.failed_inputs:  # eval as the first step: the experiment's latest model
            src = self._input_model("eval", None)
            targets = [src] if src is not None else []
            if src is not None:
                self.artifacts.setdefault(src.label, src)
        if not targets:
            if self.failed_inputs:
                self._blocked("eval", "eval", f"nothing to evaluate: {', '.join(sorted(self.failed_inputs))} failed")
            return
        for art in targets:
            # Tagged by the artifact's label: in a sweep the models live outside this experiment, where every
            # stage's file is `model.pt` and the path would give them all the same eval folder.
            cfg = derive(self.out_cfg, {"stage": "eval", "eval.artifact": str(art.path), "eval.tag": art.slug})
            fp = fingerprint(cfg, EVAL_SECTIONS, upstream=[art.fingerprint])
            out = self._run(Step(f"eval-{art.slug}", "eval", cfg, self.layout.outputs, fp,
                                 title=f"eval {art.label}"))
            if out.ok:
                art.metrics.update({k: _find(out.result, k) for k in ("AP", "APm", "APl", "AP50", "AP75")})
            else:
                art.errors.append(f"eval: {out.error}")

    def _step_bench(self) -> None:
        # time what has an accuracy to pair with (every row of the final table that has AP), else everything
        targets = [a for a in self.artifacts.values() if a.metrics.get("AP") is not None] or list(
            self.artifacts.values())
        if not targets:
            return self._blocked("bench", "bench", "no artifact to time")
        cfg = derive(self.out_cfg, {"stage": "bench", "bench.artifacts": [str(a.path) for a in targets]})
        fp = fingerprint(cfg, BENCH_SECTIONS, upstream=[a.fingerprint for a in targets])
        out = self._run(Step("bench", "bench", cfg, self.layout.outputs, fp,
                             enrich=lambda r: {**r, "timings": bench_records(cfg)},
                             title=f"bench {len(targets)} artifact(s)"))
        if not out.ok:
            for a in targets:
                a.errors.append(f"bench: {out.error}")
            return
        for lbl, t in timing_by_artifact(out.result.get("timings", {}), targets).items():
            if "error" in t:
                self.artifacts[lbl].errors.append(t["error"])
            else:
                self.artifacts[lbl].timing.update(t)

    def _step_infer(self) -> None:
        final = self.final_artifact() or self.model
        if final is None:
            return self._blocked("infer", "infer", "no artifact to run")
        cfg = derive(self.out_cfg, {"stage": "infer", "infer.artifact": str(final.path)})
        self._run(Step(f"infer-{final.slug}", "infer", cfg, self.layout.outputs,
                       fingerprint(cfg, INFER_SECTIONS, upstream=[final.fingerprint]), title=f"infer {final.label}"))

    # ------------------------------------------------------------------ the table
    def final_artifact(self) -> Artifact | None:
        evaluated = [a for a in self.artifacts.values() if a.metrics.get("AP") is not None]
        return evaluated[-1] if evaluated else None

    def rows(self) -> list[dict[str, Any]]:
        stats_cache: dict[tuple[str, tuple[int, int]], dict[str, Any]] = {}
        rows = []
        for a in self.artifacts.values():
            src, hw = a.source or a.path, a.input_shape or self._eval_hw()
            key = (str(src), tuple(hw))
            if key not in stats_cache:
                try:
                    stats_cache[key] = model_stats(Path(src), hw)
                except Exception as e:  # a table without params beats no table
                    log.warning("params/FLOPs of %s: %s", src, e)
                    stats_cache[key] = {}
            rows.append({
                "kind": a.kind,
                "artifact": str(a.path),
                "label": a.label,
                "model": a.model,
                "format": a.format,
                "precision": a.precision,
                "shape": f"{hw[0]}x{hw[1]}",
                **stats_cache[key],
                **{k: a.metrics.get(k) for k in ("AP", "APm", "APl", "AP50", "AP75")},
                "latency_ms": a.timing.get("latency_ms"),
                "e2e_ms": a.timing.get("e2e_ms"),
                "throughput": a.timing.get("throughput"),
                "device": a.timing.get("device"),
                "error": "; ".join(a.errors) or None,
            })
        return rows

    def point(self) -> dict[str, Any]:
        """What identifies this run among a sweep's points."""
        hw = self._eval_hw()
        train_hw = [int(v) for v in self.model_cfg.model.input_shape]
        return {
            "stages": int(self.cfg.model.stages),
            "width": float(self.cfg.model.width),
            "pth": float(self.cfg.prune.pth),
            "shape": f"{hw[0]}x{hw[1]}",
            "train_shape": f"{train_hw[0]}x{train_hw[1]}",
            "precision": ",".join(self._precisions()),
        }

    def finish(self) -> dict[str, Any]:
        rows = self.rows()
        final = self.final_artifact()
        failed = [o for o in self.outcomes if o.status in ("failed", "blocked")]
        error = "; ".join(f"{o.step_id}: {o.error}" for o in failed) or None
        ap = final.metrics.get("AP") if final else None
        hc = hydra_runtime()
        folder = self.layout.outputs / "pipeline"
        summary = {
            "status": "failed" if failed else "ok",
            "error": error,
            "final": final.label if final else None,
            "AP": ap,
            "point": self.point(),
            "rows": rows,
            "steps": [o.as_dict() for o in self.outcomes],
            "layout": {"models": str(self.layout.models), "outputs": str(self.layout.outputs),
                       "sweep_dir": str(self.layout.sweep_dir) if self.layout.sweep_dir else None},
            "overrides": hc["overrides"] if hc else None,
        }
        table = format_rows(rows) if rows else "(no artifact was produced)"
        md = [
            f"# Pipeline: `{self.layout.outputs.name}`",
            "",
            f"Steps: {' -> '.join(self.cfg.pipeline.steps)}. Models: `{self.layout.models}`.",
            "",
            table,
            "",
            "params / GFLOPs: the PyTorch model behind each artifact at its input shape (GFLOPs = 2 x conv MACs, "
            "batch 1). AP: COCO keypoint AP on the configured val set. Latency: bench stage, batch 1.",
            "",
            "## Steps",
            "",
            markdown_table([o.as_dict() for o in self.outcomes], STEP_COLUMNS),
            "",
        ]
        io.write_text(folder / "pipeline.md", "\n".join(md))
        # summary.json last: it marks the run as finished (the sweep report reads it)
        Experiment(self.out_cfg).write_summary(folder, "pipeline", artifacts={a.label: a.path for a in
                                                                               self.artifacts.values()},
                                               metrics={"AP": ap}, **summary)
        print(f"\n{table}\n", flush=True)
        print(f"pipeline: {summary['status']}; table: {folder / 'pipeline.md'}", flush=True)
        # no AP (a failed point): None, which Hydra sweepers take as "no value" (Optuna marks the trial failed;
        # a NaN would make optuna 2.x raise and end the search)
        result = {"AP": ap, "status": summary["status"], "final": summary["final"]}
        if failed and not (hc and hc["multirun"]):
            raise PipelineError(
                f"pipeline finished with {len(failed)} failed or blocked step(s): "
                f"{', '.join(o.step_id for o in failed)}. First error: {failed[0].error}. "
                f"Table: {folder / 'pipeline.md'}; step records: {folder / 'steps'}/"
            )
        return result


PIPELINE_COLUMNS = [
    Column("model", "model"),
    Column("format", "format"),
    Column("precision", "precision"),
    Column("shape", "input"),
    *METRIC_COLUMNS,
]
STEP_COLUMNS = [
    Column("id", "step"),
    Column("status", "status"),
    Column("seconds", "seconds", lambda v: f"{v:.1f}", numeric=True),
    Column("error", "error"),
]


def format_rows(rows: list[dict[str, Any]]) -> str:
    return markdown_table(rows, PIPELINE_COLUMNS)


def check_single_process() -> None:
    """The pipeline takes file locks and runs steps one after another: one process per job. DDP jobs (several
    SLURM tasks) would deadlock on the locks, so they must use the train stage directly."""
    env = os.environ
    # tasks of this srun step (an salloc shell has SLURM_NTASKS but no SLURM_PROCID: it is one process)
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1) if "SLURM_PROCID" in env else 1
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if ntasks > 1 or world > 1:
        raise UserError(
            f"stage=pipeline runs in one process per job, but this job has SLURM_NTASKS={ntasks}, "
            f"WORLD_SIZE={world}. Launch multi-GPU training with stage=train (hydra/launcher=slurm sets "
            "tasks_per_node to trainer.devices); run pipelines and sweeps with trainer.devices=1 (docs/slurm.md)."
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    check_single_process()
    return Pipeline(cfg).run()
