"""``python launch.py stage=pipeline``: the whole life cycle in one command, ending with one table.

Runs ``pipeline.steps`` in this process (default ``train eval prune retrain eval export eval bench``), each step
with a config derived from the composed one: prune reads the trained model, retrain the pruned one, export the
latest model once per ``pipeline.precisions``, each ``eval`` evaluates what the step before it produced (every
exported ONNX after export), bench times every artifact, ``targets`` evaluates and times what each latency target
of ``pipeline.targets`` runs (posekit/targets.py). ``prune.pth=0`` means no pruning: prune and retrain are skipped
and the trained model goes on. Then it prints and writes the final table::

    <experiment>/pipeline/summary.json     rows (artifact, AP, APm, APl, params, GFLOPs, latency), targets, steps,
                                           status
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
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from posekit import io
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
from posekit.errors import UserError
from posekit.experiment import Experiment
from posekit.export.artifacts import WRITTEN, Artifact, written
from posekit.pipeline_table import (
    ACCURACY_KEYS,
    Entry,
    find_metric,
    format_rows,
    format_targets,
    pipeline_markdown,
    table_rows,
    timing_by_label,
)

log = logging.getLogger("posekit.pipeline")

MAIN_METRIC = "AP"  # of the final artifact (the last one evaluated)
MODEL_STAGES = ("train", "prune", "retrain")


class PipelineError(UserError):
    """Some steps failed; the message names them and where the table is."""


# --------------------------------------------------------------------------------------------- the pipeline
class Pipeline:
    """Plans and runs ``cfg.pipeline.steps``; ``runner`` is injectable (tests run it with fake stages)."""

    def __init__(self, cfg: DictConfig, runner: StepRunner | None = None):
        self.cfg = cfg
        self.layout = ChainLayout.for_config(cfg)
        self.runner = runner or StepRunner(run_stage_step, force=bool(cfg.pipeline.force))
        self.model_cfg = derive(model_config(cfg), {"experiment.dir": str(self.layout.models)})
        self.out_cfg = derive(cfg, {"experiment.dir": str(self.layout.outputs)})
        self.model: Entry | None = None  # latest PyTorch model of the chain
        self.current: list[Entry] = []  # what the last producing step made: the next eval's inputs
        self.artifacts: dict[str, Entry] = {}  # by label
        self.outcomes: list[Outcome] = []
        self.failed_inputs: set[str] = set()  # producing steps that failed: what they would have made is missing
        self.target_entries: list[dict[str, Any]] = []  # one per (latency target, precision): posekit.targets.entry

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

    def _not_needed(self, step_id: str, stage: str, why: str) -> None:
        log.info("%s: skipped (%s)", step_id, why)
        self.outcomes.append(Outcome(step_id, stage, "skipped", title=why))

    def _unpruned(self, stage: str) -> bool:
        """``prune.pth=0`` keeps every filter (posekit/prune/threshold.py): the pruned model would equal the trained
        one and retraining it would only train longer, so both steps are skipped and the trained model goes on
        (a point at pth 0 of a sweep is the trained model itself). An explicit ``<stage>.model`` still runs, and
        so does retrain with ``pipeline.retrain_unpruned`` (the control: the same schedule as the pruned points)."""
        if stage == "retrain" and self.cfg.pipeline.retrain_unpruned:
            return False
        return float(self.cfg.prune.pth) == 0 and not self.cfg[stage].model

    def _input_model(self, stage: str, explicit: str | None) -> Entry | None:
        """The model a step starts from: an explicit ``<stage>.model`` path wins; else the chain's latest model;
        else what the stage itself reads from the experiment (:meth:`Experiment.default_model`)."""
        exp = Experiment(self.model_cfg)
        if explicit:
            p = Path(os.path.expanduser(explicit)).resolve()
            return self._model_entry(Artifact(p, "fp32", "torch", model=exp.model_name(p), source=p),
                                     file_fingerprint(p))
        if self.model is not None:
            return self.model
        if self.failed_inputs:
            self._blocked(stage, stage, f"its input was not produced ({', '.join(sorted(self.failed_inputs))})")
            return None
        try:
            path, name = exp.default_model(stage)
        except UserError as e:
            self._blocked(stage, stage, str(e))
            return None
        if not path.is_file():
            self._blocked(stage, stage, f"{path} not found: add the step that makes it to pipeline.steps")
            return None
        return self._model_entry(Artifact(path, "fp32", "torch", model=name, source=path),
                                 artifact_fingerprint(path, self.layout.models))

    def _model_entry(self, artifact: Artifact, fp: str) -> Entry:
        # torch models run (eval, bench) at the torch backend's precision and the configured input shape
        artifact.precision = str(self.cfg.runtime.torch_precision)
        return Entry(artifact, "model", fp, self._eval_hw())

    def _run_model_step(self, step_id: str, stage: str, cfg: DictConfig, fp: str, expected: Path, name: str,
                        title: str) -> None:
        """Run a model step (train, prune, retrain) and make the model it returned the chain's latest. ``expected``
        (the file the stage writes, named ``name``) stands in for a result that lists nothing: a step recorded
        before stages returned what they wrote, or a stage that returned without writing (then the step fails)."""
        def outputs(result: dict) -> list[Path]:
            return _written_paths(result) or [expected]

        out = self._run(Step(step_id, stage, cfg, self.layout.models, fp, outputs, title=title))
        if not out.ok:
            return self._producer_failed(stage, out)
        models = written(out.result) or [Artifact(expected, "fp32", "torch", model=name, source=expected)]
        entry = self._model_entry(models[0], fp)
        self.artifacts[entry.label] = entry
        self.model = entry
        self.current = [entry]

    def _eval_hw(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.cfg.model.input_shape)  # type: ignore[return-value]

    def _producer_failed(self, stage: str, out: Outcome) -> None:
        self.failed_inputs.add(out.step_id)
        self.model = None if stage in MODEL_STAGES else self.model
        self.current = []

    # ------------------------------------------------------------------ model steps (shared in a sweep)
    def _step_train(self) -> None:
        cfg = derive(self.model_cfg, {"stage": "train"})
        fp = fingerprint(cfg, TRAIN_SECTIONS)
        self._run_model_step("train", "train", cfg, fp, Experiment(cfg).trained_model, "trained", "train")

    def _step_prune(self) -> None:
        if self._unpruned("prune"):
            return self._not_needed("prune-0.0", "prune", "prune.pth=0: no pruning, the trained model goes on")
        src = self._input_model("prune", self.cfg.prune.model)
        if src is None:
            return self._producer_failed("prune", self.outcomes[-1])
        cfg = derive(self.model_cfg, {"stage": "prune", "prune.model": str(src.path)})
        exp = Experiment(cfg)
        fp = fingerprint(cfg, PRUNE_SECTIONS, upstream=[src.fingerprint])
        self._run_model_step(f"prune-{exp.pth}", "prune", cfg, fp, exp.pruned_model(), f"pruned-{exp.pth}",
                             f"prune {src.label} at pth {exp.pth}")

    def _step_retrain(self) -> None:
        if self._unpruned("retrain"):
            return self._not_needed("retrain-0.0", "retrain", "prune.pth=0: nothing pruned, nothing to retrain")
        src = self._input_model("retrain", self.cfg.retrain.model)
        if src is None:
            return self._producer_failed("retrain", self.outcomes[-1])
        cfg = derive(self.model_cfg, {"stage": "retrain", "retrain.model": str(src.path)})
        exp = Experiment(cfg)
        fp = fingerprint(cfg, RETRAIN_SECTIONS, upstream=[src.fingerprint])
        self._run_model_step(f"retrain-{exp.pth}", "retrain", cfg, fp, exp.retrained_model(),
                             f"retrained-{exp.pth}", f"retrain {src.label}")

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
        produced: list[Entry] = []
        for prec in self._precisions():
            cfg = derive(self.out_cfg, {"stage": "export", "export.model": str(src.path), "precision.name": prec})
            fp = fingerprint(cfg, EXPORT_SECTIONS, upstream=[src.fingerprint])
            step = Step(f"export-{src.label}-{hw[0]}x{hw[1]}-{prec}", "export", cfg, self.layout.outputs, fp,
                        outputs=lambda r, p=prec: [a.path for a in runnable(r, p)],
                        title=f"export {src.label} {hw[0]}x{hw[1]} {prec}")
            out = self._run(step)
            if not out.ok:
                self.failed_inputs.add(out.step_id)
                continue
            exported = runnable(out.result, prec)
            if not exported:
                out.status, out.error = "failed", "export returned no runnable artifact (ONNX/engine)"
                self.failed_inputs.add(out.step_id)
                continue
            for art in exported:
                entry = Entry(art, "export", digest([fp, art.path.name]), art.input_hw or hw)
                self.artifacts[entry.label] = entry
                produced.append(entry)
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
                art.metrics.update({k: find_metric(out.result, k) for k in ACCURACY_KEYS})
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
        out = self._run(Step("bench", "bench", cfg, self.layout.outputs, fp, title=f"bench {len(targets)} artifact(s)"))
        if not out.ok:
            for a in targets:
                a.errors.append(f"bench: {out.error}")
            return
        for lbl, t in timing_by_label(out.result.get("timings", {}), targets).items():
            if "error" in t:
                self.artifacts[lbl].errors.append(t["error"])
            else:
                self.artifacts[lbl].timing.update(t)

    def _step_targets(self) -> None:
        """AP and latency of what each latency target runs, at each precision of this run (posekit/targets.py)."""
        from posekit import targets as tg

        exported = [e.artifact for e in self.artifacts.values() if e.kind == "export"]
        model = self.model.artifact if self.model is not None else None
        outputs = self.layout.outputs
        for name, target in tg.configured(self.cfg).items():
            for prec in self._precisions():
                why = tg.unsupported(name, target, prec)
                if why is not None:
                    self.target_entries.append(tg.entry(name, target, prec, outputs, status="n/a", error=why))
                    continue
                art = tg.pick_artifact(target, prec, model, exported)
                if isinstance(art, str):
                    self._blocked(f"target-{name}-{prec}", "targets", art)
                    self.target_entries.append(tg.entry(name, target, prec, outputs, status="blocked", error=art))
                    continue
                plan = tg.Plan(name, target, prec, art, tg.content_fingerprint(art.path))
                rec = tg.measure(self._run, self.out_cfg, plan, outputs)
                if art.label in self.artifacts and self.artifacts[art.label].kind == "export":
                    # the file's AP, whatever runs it: the pipeline's table shows it too
                    self.artifacts[art.label].metrics.update({k: rec.get(k) for k in ACCURACY_KEYS if k in rec})
                self.target_entries.append(rec)

    def _step_infer(self) -> None:
        final = self.final_artifact() or self.model
        if final is None:
            return self._blocked("infer", "infer", "no artifact to run")
        cfg = derive(self.out_cfg, {"stage": "infer", "infer.artifact": str(final.path)})
        self._run(Step(f"infer-{final.slug}", "infer", cfg, self.layout.outputs,
                       fingerprint(cfg, INFER_SECTIONS, upstream=[final.fingerprint]), title=f"infer {final.label}"))

    # ------------------------------------------------------------------ the table
    def final_artifact(self) -> Entry | None:
        evaluated = [a for a in self.artifacts.values() if a.metrics.get("AP") is not None]
        return evaluated[-1] if evaluated else None

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
        rows = table_rows(self.artifacts.values())
        final = self.final_artifact()
        failed = [o for o in self.outcomes if o.status in ("failed", "blocked")]
        error = "; ".join(f"{o.step_id}: {o.error}" for o in failed) or None
        ap = final.metrics.get("AP") if final else None
        stats = {r["label"]: r for r in rows}
        for e in self.target_entries:  # params/GFLOPs of the model behind what the target ran, at this input shape
            e.update({k: stats.get(e["label"], {}).get(k) for k in ("params", "gflops")})
        measured = [e for e in self.target_entries if e.get("AP") is not None]
        if ap is None and measured:  # a chain whose only evals are the targets' (sweeps/sweep/accuracy_latency.yaml)
            ap = measured[-1]["AP"]
        hc = hydra_runtime()
        folder = self.layout.outputs / "pipeline"
        summary = {
            "status": "failed" if failed else "ok",
            "error": error,
            "final": final.label if final else None,
            "AP": ap,
            "point": self.point(),
            "rows": rows,
            "targets": self.target_entries,
            "steps": [o.as_dict() for o in self.outcomes],
            "layout": {"models": str(self.layout.models), "outputs": str(self.layout.outputs),
                       "sweep_dir": str(self.layout.sweep_dir) if self.layout.sweep_dir else None},
            "overrides": hc["overrides"] if hc else None,
        }
        table = format_rows(rows) if rows else "(no artifact was produced)"
        if self.target_entries:
            table += "\n\nLatency targets (pipeline.targets):\n\n" + format_targets(self.target_entries)
        md = pipeline_markdown(self.layout.outputs.name, list(self.cfg.pipeline.steps), self.layout.models, table,
                               [o.as_dict() for o in self.outcomes])
        io.write_text(folder / "pipeline.md", md)
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


def _written_paths(result: dict) -> list[Path]:
    """The files a model step's result says it wrote (a step whose files are gone is not done)."""
    return [a.path for a in written(result)]


def runnable(result: dict, precision: str) -> list[Artifact]:
    """The runnable artifacts (ONNX, engines; not the deploy graph, caches or configs) an export step wrote, of
    ``precision`` (an INT8 export also rewrites the FP32 ONNX it starts from: that one belongs to the FP32 export).
    Step records of posekit versions whose export returned figures only list them under ``exported``."""
    artifacts = written(result) or written({WRITTEN: result.get("exported", [])})
    return [a for a in artifacts if a.runnable and a.precision == precision]


def run_stage_step(stage: str, cfg: DictConfig) -> dict:
    """Validate, prepare (lock the step's stage in its folder, waiting for a holder; clean; check the checkpoint
    to resume from) and run one stage; returns its result. No settings are inherited: the chain derives every
    step's config."""
    from posekit.config import validate
    from posekit.preflight import prepared
    from posekit.stages import stage_module

    validate(cfg)
    with prepared(stage, cfg, wait=True) as ready:
        return stage_module(stage).run(ready) or {}


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
