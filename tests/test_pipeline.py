"""The pipeline stage and its step chain (posekit.stages.pipeline, posekit.chain).

Unit tests run the real Pipeline with fake stages (files written the way the real stages write them), so they
check ordering, derived configs, records, skipping, failure handling and locking in seconds. The CLI test runs
the real stages on the tiny preset.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from omegaconf import DictConfig

from posekit import io
from posekit.chain import TRAIN_SECTIONS, ChainLayout, Step, StepRunner, derive, fingerprint, model_key
from posekit.errors import UserError
from posekit.experiment import Experiment
from posekit.export.artifacts import WRITTEN, Artifact
from posekit.model import BpNetLite, save_model
from posekit.stages.pipeline import Pipeline, PipelineError, check_single_process
from tests.conftest import compose, run_cli


# --------------------------------------------------------------------------------------------- fake stages
class FakeStages:
    """Stand-ins for the stage modules: write the files the real ones write (models, export summary.json with
    artifact records, bench.json) and return figures derived from the inputs. ``fail`` holds step keys
    (``"export:int8"``, ``"train"``) that raise instead."""

    def __init__(self, fail: set[str] | None = None):
        self.calls: list[tuple[str, str]] = []
        self.configs: list[DictConfig] = []
        self.fail = fail or set()

    def __call__(self, stage: str, cfg: DictConfig) -> dict:
        exp = Experiment(cfg)
        detail = {
            "train": "", "prune": str(cfg.prune.pth), "retrain": str(cfg.prune.pth),
            "export": str(cfg.precision.name.value), "eval": Path(str(cfg.eval.artifact)).name,
            "bench": ",".join(Path(a).name for a in cfg.bench.artifacts),
        }.get(stage, "")
        self.calls.append((stage, detail))
        self.configs.append(cfg)
        if stage in self.fail or f"{stage}:{detail}" in self.fail:
            raise UserError(f"fake {stage} failure")
        return getattr(self, stage)(cfg, exp)

    @staticmethod
    def _model(path: Path, cfg: DictConfig) -> None:
        save_model(path, BpNetLite(stages=int(cfg.model.stages), width=0.125), input_shape=list(cfg.model.input_shape))

    def train(self, cfg, exp):
        exp.dir("train")
        self._model(exp.trained_model, cfg)
        return {"val/AP": 0.5, WRITTEN: [Artifact.torch_model(exp.trained_model, "trained").to_record()]}

    def prune(self, cfg, exp):
        self._model(exp.pruned_model(), cfg)
        return {"params_ratio": 0.5, "flops_ratio": 0.4,
                WRITTEN: [Artifact.torch_model(exp.pruned_model(), f"pruned-{exp.pth}").to_record()]}

    def retrain(self, cfg, exp):
        self._model(exp.retrained_model(), cfg)
        return {"val/AP": 0.45, WRITTEN: [Artifact.torch_model(exp.retrained_model(), f"retrained-{exp.pth}")
                                          .to_record()]}

    def export(self, cfg, exp):
        src = Path(str(cfg.export.model))
        tag = exp.model_name(src)
        out = exp.dir("export", tag)
        h, w = (int(v) for v in cfg.model.input_shape)
        prec = cfg.precision.name.value
        files = {"fp32": (f"model.{h}.{w}.fp32.onnx", "fp32")}
        if prec == "fp16":
            files["fp16"] = (f"model.{h}.{w}.fp16.onnx", "fp16")
        if prec == "int8":
            files |= {"int8_qdq": (f"model.{h}.{w}.int8.qdq.onnx", "int8"),
                      "int8_cpu": (f"model.{h}.{w}.int8.cpu.onnx", "int8"),
                      "calib_cache": (f"cal.{h}.{w}.bin", "int8")}
        records = {}
        for key, (name, p) in files.items():
            io.write_text(out / name, f"{name} from {cfg.export.model}")
            records[key] = Artifact.from_file(out / name, precision=p, format="onnx", model=tag, source=src)
        exp.write_summary(out, "export", artifacts={k: a.to_record() for k, a in records.items()})
        return {"parity_max_abs": 0.0, "artifacts": len(records), WRITTEN: [a.to_record() for a in records.values()]}

    def eval(self, cfg, exp):
        name = Path(str(cfg.eval.artifact)).name
        ap = 0.3 + 0.1 * ("int8" in name)
        return {"AP": ap, "APm": ap - 0.05, "APl": ap + 0.05}

    def bench(self, cfg, exp):
        rows = [{"artifact": a, "batch": 1, "device": "cpu",
                 "network": {"median_ms": 1.0 + i, "throughput_ips": 1000 / (1.0 + i)},
                 "end_to_end": {"median_ms": 2.0 + i}} for i, a in enumerate(cfg.bench.artifacts)]
        io.write_json(exp.dir("bench") / "bench.json", {"rows": rows, "skipped": {}})
        return {"latency_ms": 1.0, "timings": {"rows": rows, "skipped": {}}}


def tiny_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose("stage=pipeline", "preset=tiny", f"experiment.root={tmp_path}", *overrides)


def run_pipeline(cfg: DictConfig, fake: FakeStages) -> dict:
    return Pipeline(cfg, StepRunner(fake, force=bool(cfg.pipeline.force))).run()


def summary_of(cfg: DictConfig) -> dict:
    return io.read_json(Experiment(cfg).root / "pipeline" / "summary.json")


# --------------------------------------------------------------------------------------------- unit tests
def test_steps_run_in_order_with_derived_configs_and_the_table_lists_every_artifact(tmp_path):
    cfg = tiny_cfg(tmp_path)
    fake = FakeStages()
    result = run_pipeline(cfg, fake)

    stages = [s for s, _ in fake.calls]
    assert stages == ["train", "eval", "prune", "retrain", "eval", "export", "export", "eval", "eval", "eval", "bench"]
    exp = Experiment(cfg)
    by_stage = {s: c for (s, _), c in zip(fake.calls, fake.configs)}
    assert Path(by_stage["prune"].prune.model) == exp.trained_model
    assert Path(by_stage["retrain"].retrain.model) == exp.pruned_model()
    assert Path(by_stage["export"].export.model) == exp.retrained_model()
    evaluated = [d for s, d in fake.calls if s == "eval"]
    assert evaluated == ["model.pt", "model.pt", "model.128.128.fp32.onnx", "model.128.128.int8.qdq.onnx",
                         "model.128.128.int8.cpu.onnx"]
    # the INT8 export rewrites the FP32 ONNX too: it is evaluated once, as the FP32 export's artifact
    # each evaluation has its own folder, also for the two files called model.pt (trained, retrained)
    tags = [c.eval.tag for (s, _), c in zip(fake.calls, fake.configs) if s == "eval"]
    assert tags[:2] == ["trained", "retrained-0.2"] and len(set(tags)) == len(tags)
    summary = summary_of(cfg)
    rows = {(r["model"], r["format"], r["precision"]): r for r in summary["rows"]}
    assert set(rows) == {("trained", "torch", "fp32"), ("pruned-0.2", "torch", "fp32"),
                         ("retrained-0.2", "torch", "fp32"), ("retrained-0.2", "onnx", "fp32"),
                         ("retrained-0.2", "onnx", "int8.qdq"), ("retrained-0.2", "onnx", "int8.cpu")}
    cpu = rows[("retrained-0.2", "onnx", "int8.cpu")]
    assert cpu["AP"] is not None and cpu["latency_ms"] is not None and cpu["params"] > 0 and cpu["gflops"] > 0
    assert rows[("pruned-0.2", "torch", "fp32")]["AP"] is None  # not evaluated by the default steps
    # MAIN_METRIC: AP of the final artifact (the last one evaluated)
    assert summary["final"] == "retrained-0.2/model.128.128.int8.cpu.onnx"
    assert result["AP"] == pytest.approx(cpu["AP"])
    assert summary["status"] == "ok" and all(s["status"] == "ran" for s in summary["steps"])
    md = (exp.root / "pipeline" / "pipeline.md").read_text()
    assert "| model" in md and "int8.cpu" in md and "latency ms" in md


class ReturnedOnly(FakeStages):
    """Stages whose files only their return value names: train writes its model under an unusual name, export
    writes no summary.json and names its ONNX outside the TAO scheme."""

    def train(self, cfg, exp):
        path = exp.dir("train") / "elsewhere.pt"
        self._model(path, cfg)
        return {"val/AP": 0.5, WRITTEN: [Artifact.torch_model(path, "trained").to_record()]}

    def export(self, cfg, exp):
        path = exp.dir("export", "mine") / "custom-name.onnx"
        io.write_text(path, "onnx")
        art = Artifact.from_file(path, precision="fp16", format="onnx", input_shape=[1, 3, 96, 64], model="mine",
                                 source=str(cfg.export.model))
        return {"parity_max_abs": 0.0, WRITTEN: [art.to_record()]}


def test_the_pipeline_passes_on_the_artifacts_stages_return(tmp_path):
    cfg = tiny_cfg(tmp_path, "pipeline.steps=[train,prune,export,eval]", "pipeline.precisions=[fp16]")
    fake = ReturnedOnly()
    run_pipeline(cfg, fake)
    by_stage = {s: c for (s, _), c in zip(fake.calls, fake.configs)}
    trained = Experiment(cfg).train_dir / "elsewhere.pt"
    assert Path(by_stage["prune"].prune.model) == trained  # the path train returned, not train/model.pt
    assert Path(by_stage["eval"].eval.artifact).name == "custom-name.onnx"  # no summary.json, no TAO name
    row = next(r for r in summary_of(cfg)["rows"] if r["kind"] == "export")
    assert (row["model"], row["format"], row["precision"], row["shape"]) == ("mine", "onnx", "fp16", "96x64")
    assert row["label"] == "mine/custom-name.onnx"


def test_a_second_run_skips_done_steps_and_a_change_reruns_only_what_depends_on_it(tmp_path):
    cfg = tiny_cfg(tmp_path)
    run_pipeline(cfg, FakeStages())
    model_mtime = Experiment(cfg).trained_model.stat().st_mtime_ns

    again = FakeStages()
    run_pipeline(cfg, again)
    assert again.calls == []
    assert Experiment(cfg).trained_model.stat().st_mtime_ns == model_mtime
    assert {s["status"] for s in summary_of(cfg)["steps"]} == {"cached"}
    assert summary_of(cfg)["rows"][-1]["latency_ms"] is not None  # figures come back from the records

    bench_only = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "bench.iters=7"), bench_only)
    assert [s for s, _ in bench_only.calls] == ["bench"]

    new_pth = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "prune.pth=0.5"), new_pth)
    stages = [s for s, _ in new_pth.calls]
    assert stages[:2] == ["prune", "retrain"]  # train and its eval are still done
    assert stages.count("export") == 2 and stages[-1] == "bench"


def test_a_failed_step_is_recorded_the_others_still_run_and_a_rerun_retries_it(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(PipelineError, match="export-retrained-0.2-128x128-int8"):
        run_pipeline(cfg, FakeStages(fail={"export:int8"}))
    summary = summary_of(cfg)
    assert summary["status"] == "failed" and "fake export failure" in summary["error"]
    rows = {(r["format"], r["precision"]) for r in summary["rows"]}
    assert ("onnx", "fp32") in rows and ("onnx", "int8.cpu") not in rows
    fp32 = next(r for r in summary["rows"] if r["precision"] == "fp32" and r["format"] == "onnx")
    assert fp32["AP"] is not None and fp32["latency_ms"] is not None  # eval and bench ran for what exists
    record = io.read_json(Experiment(cfg).root / "pipeline" / "steps" / "export-retrained-0.2-128x128-int8.json")
    assert record["status"] == "failed" and "UserError" in record["error"]

    retry = FakeStages()
    run_pipeline(cfg, retry)
    assert ("export", "int8") in retry.calls and ("train", "") not in retry.calls
    assert summary_of(cfg)["status"] == "ok"


def test_a_failed_model_step_blocks_what_needs_it(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(PipelineError):
        run_pipeline(cfg, FakeStages(fail={"train"}))
    steps = {s["id"]: s["status"] for s in summary_of(cfg)["steps"]}
    assert steps["train"] == "failed"
    assert {steps[k] for k in ("prune", "retrain", "export", "bench")} == {"blocked"}


def test_a_chain_without_train_starts_from_the_experiments_models(tmp_path):
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[train,prune,retrain]"), FakeStages())
    exp = Experiment(tiny_cfg(tmp_path))
    fake = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[eval,prune]"), fake)
    # eval: the experiment's latest model; prune: the trained model (as the stage would), already pruned from it
    assert fake.calls == [("eval", "model.pt")] and Path(fake.configs[0].eval.artifact) == exp.retrained_model()
    fake = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[prune]", "prune.pth=0.4"), fake)
    assert fake.calls == [("prune", "0.4")] and Path(fake.configs[0].prune.model) == exp.trained_model


def test_a_deleted_artifact_is_rebuilt(tmp_path):
    cfg = tiny_cfg(tmp_path, "pipeline.steps=[train,prune]")
    run_pipeline(cfg, FakeStages())
    Experiment(cfg).pruned_model().unlink()
    again = FakeStages()
    run_pipeline(cfg, again)
    assert [s for s, _ in again.calls] == ["prune"]


def test_a_changed_config_does_not_resume_old_checkpoints(tmp_path):
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[train]"), FakeStages())
    changed = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[train]", "optim.lr=0.5"), changed)
    assert changed.configs[0].train.resume is False
    crashed = Experiment(tiny_cfg(tmp_path)).root / "pipeline" / "steps" / "train.json"
    rec = io.read_json(crashed)
    io.write_json(crashed, {**rec, "status": "running"})  # killed mid-training with the same config: resume
    resumed = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "pipeline.steps=[train]", "optim.lr=0.5"), resumed)
    assert resumed.configs[0].train.resume is True


def test_fingerprints_ignore_cosmetic_keys_and_inputs():
    base = compose("preset=tiny")
    fp = fingerprint(base, TRAIN_SECTIONS)
    assert fingerprint(compose("preset=tiny", "trainer.enable_progress_bar=true", "data.num_workers=3"),
                       TRAIN_SECTIONS) == fp
    assert fingerprint(compose("preset=tiny", "trainer.max_epochs=2"), TRAIN_SECTIONS) != fp
    assert fingerprint(base, ("prune",)) == fingerprint(derive(base, {"prune.model": "/x.pt"}), ("prune",))
    assert fingerprint(base, ("prune",), upstream=["a"]) != fingerprint(base, ("prune",), upstream=["b"])


def test_sweep_points_share_models_by_upstream_config():
    key = model_key(compose("preset=tiny", "sweep.train_shape=[128,128]"))
    for same in ("prune.pth=0.6", "resolution=160x160", "precision=int8", "bench.iters=9", "eval.max_images=2"):
        assert model_key(compose("preset=tiny", "sweep.train_shape=[128,128]", same)) == key, same
    for other in ("model.stages=3", "model.width=0.25", "trainer.max_epochs=2", "prune.norm=l1"):
        assert model_key(compose("preset=tiny", "sweep.train_shape=[128,128]", other)) != key, other
    # without a shared training shape, each export shape gets its own models
    assert model_key(compose("preset=tiny", "resolution=160x160")) != model_key(compose("preset=tiny"))
    assert key.startswith("s2-w0.125-128x128-")


def test_shared_dir_puts_model_steps_in_the_shared_folder(tmp_path):
    cfg = tiny_cfg(tmp_path / "exp", f"sweep.shared_dir={tmp_path / 'shared'}", "pipeline.steps=[train,prune,export]",
                   "pipeline.precisions=[fp32]")
    fake = FakeStages()
    run_pipeline(cfg, fake)
    layout = ChainLayout.for_config(cfg)
    assert layout.models == tmp_path / "shared" / model_key(cfg) and layout.outputs == Experiment(cfg).root
    assert (layout.models / "train" / "model.pt").is_file() and (layout.models / "prune").is_dir()
    assert list((layout.outputs / "export").glob("*/model.128.128.fp32.onnx"))
    assert not (layout.outputs / "train").exists()


def test_the_lock_lets_only_one_of_two_concurrent_jobs_run_a_step(tmp_path):
    counter, out_file = tmp_path / "calls.txt", tmp_path / "out.txt"
    cfg = compose("preset=tiny")

    def slow_stage(stage, cfg):  # counts its calls and takes long enough for the other job to arrive
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(1.0)
        io.write_text(out_file, "done")
        return {"ok": 1}

    ctx = mp.get_context("fork")  # children inherit the barrier and the closure
    barrier, results = ctx.Barrier(2), ctx.Queue()

    def job() -> None:
        barrier.wait()
        step = Step("shared", "train", cfg, tmp_path, "fp1", lambda r: [out_file])
        results.put(StepRunner(slow_stage).run(step).status)

    procs = [ctx.Process(target=job) for _ in range(2)]
    for p in procs:
        p.start()
    statuses = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    assert statuses == ["cached", "ran"]
    assert counter.read_text() == "x"


def test_a_step_that_replaces_a_rebuilt_file_is_done_afterwards(tmp_path):
    """A file rebuilt with random weights (--bench --rebuild) is not a step's artifact: the step runs again, and
    once it has written the real file the rebuild's mark is gone, so the next run finds the step done."""
    from posekit.chain import rebuilt_sidecar

    out, cfg = tmp_path / "model.pt", compose("preset=tiny")
    step = Step("train", "train", cfg, tmp_path, "fp1", lambda r: [out])
    calls = []

    def stage(stage, cfg):
        calls.append(stage)
        io.write_text(out, "real")
        return {}

    runner = StepRunner(stage)
    assert runner.run(step).status == "ran"
    io.write_text(out, "random weights")
    io.write_json(rebuilt_sidecar(out), {"weights": "random"})  # what a rebuild leaves
    assert runner.run(step).status == "ran" and not rebuilt_sidecar(out).exists()
    assert runner.run(step).status == "cached" and calls == ["train", "train"]


def test_pipeline_refuses_to_run_as_several_ddp_tasks(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    check_single_process()  # an salloc shell: one process
    monkeypatch.setenv("SLURM_PROCID", "0")  # a task of a 2-task srun step
    with pytest.raises(UserError, match="stage=train"):
        check_single_process()


def test_pth_0_is_the_trained_model_itself_no_prune_and_no_retrain(tmp_path):
    cfg = tiny_cfg(tmp_path, "prune.pth=0")
    fake = FakeStages()
    run_pipeline(cfg, fake)
    stages = [s for s, _ in fake.calls]
    assert "prune" not in stages and "retrain" not in stages and stages.count("export") == 2
    exp = Experiment(cfg)
    assert all(Path(c.export.model) == exp.trained_model for (s, _), c in zip(fake.calls, fake.configs)
               if s == "export")
    summary = summary_of(cfg)
    steps = {s["id"]: s["status"] for s in summary["steps"]}
    assert steps["prune-0.0"] == steps["retrain-0.0"] == "skipped" and summary["status"] == "ok"
    assert {r["model"] for r in summary["rows"]} == {"trained"}  # the model and its exports
    assert not (exp.root / "prune").exists() and not (exp.root / "retrain").exists()
    # an explicit model still runs (pth 0 prunes nothing, but the user asked for that model to be retrained)
    explicit = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "prune.pth=0", "pipeline.steps=[retrain]", f"retrain.model={exp.trained_model}"),
                 explicit)
    assert [s for s, _ in explicit.calls] == ["retrain"]


def test_retrain_unpruned_gives_pth_0_the_pruned_points_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path, "prune.pth=0", "pipeline.retrain_unpruned=true")
    fake = FakeStages()
    run_pipeline(cfg, fake)
    stages = [s for s, _ in fake.calls]
    assert "prune" not in stages and stages.count("retrain") == 1  # no pruning, but the retraining
    exp = Experiment(cfg)
    retrain = fake.configs[stages.index("retrain")]
    assert Path(retrain.retrain.model) == exp.trained_model  # the unpruned model, retrained as a pruned one is
    assert all(Path(c.export.model) == exp.retrained_model() for s, c in zip(stages, fake.configs) if s == "export")
    steps = {s["id"]: s["status"] for s in summary_of(cfg)["steps"]}
    assert steps["prune-0.0"] == "skipped" and steps["retrain-0.0"] == "ran"
    assert {r["model"] for r in summary_of(cfg)["rows"]} == {"trained", "retrained-0.0"}
    # the key is not part of any step's fingerprint: without it the relaunch finds train done, and goes back to
    # the trained model for export (those steps run again: their input changed)
    again = FakeStages()
    run_pipeline(tiny_cfg(tmp_path, "prune.pth=0"), again)
    assert "train" not in [s for s, _ in again.calls] and "retrain" not in [s for s, _ in again.calls]


def sweep_point_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """A point of sweeps/sweep/accuracy_latency.yaml at tiny scale, run as a plain pipeline (no Hydra job)."""
    return tiny_cfg(tmp_path, "+sweep=accuracy_latency", "sweep.train_shape=null", "resolution=128x128",
                    "pipeline.targets.gpu.batch_sizes=[1,4]", *overrides)


def test_targets_evaluate_and_time_what_each_target_runs_at_the_points_precision(tmp_path):
    for prec, measured in (("fp16", {"gpu"}), ("int8", {"cpu"}), ("fp32", {"gpu", "cpu"})):
        cfg = sweep_point_cfg(tmp_path / prec, f"precision={prec}")
        fake = FakeStages()
        run_pipeline(cfg, fake)
        root = Experiment(cfg).root
        entries = {e["target"]: e for e in summary_of(cfg)["targets"]}
        assert {t for t, e in entries.items() if e["status"] == "ok"} == measured, (prec, entries)
        assert {t for t, e in entries.items() if e["status"] == "n/a"} == {"gpu", "cpu"} - measured
        in_targets = [(s, c) for (s, _), c in zip(fake.calls, fake.configs)
                      if str(c.experiment.dir).startswith(str(root / "targets"))]
        configs = {(s, Path(str(c.experiment.dir)).relative_to(root).parts[1]): c for s, c in in_targets}
        if "gpu" in measured:  # the PyTorch model, torch backend at the point's precision, CUDA graphs, batch 1 and 4
            ev, be = configs[("eval", "gpu")], configs[("bench", "gpu")]
            assert Path(ev.eval.artifact) == Experiment(cfg).retrained_model() == Path(be.bench.artifacts[0])
            assert ev.runtime.torch_precision == be.runtime.torch_precision == prec
            assert be.runtime.cuda_graphs and list(be.bench.batch_sizes) == [1, 4] and be.runtime.device == "auto"
            gpu = entries["gpu"]
            assert gpu["artifact"] == "retrain/pth-0.2/model.pt" and gpu["latency_ms"] == 1.0 and gpu["device"] == "cpu"
            assert gpu["bench"] == f"targets/gpu/{prec}/bench/bench.json" and (root / gpu["bench"]).is_file()
        if "cpu" in measured:  # the exported ONNX Runtime file (INT8: the .int8.cpu.onnx), on the CPU, batch 1
            be = configs[("bench", "cpu")]
            want = "model.128.128.int8.cpu.onnx" if prec == "int8" else "model.128.128.fp32.onnx"
            assert Path(be.bench.artifacts[0]).name == want == Path(configs[("eval", "cpu")].eval.artifact).name
            assert be.runtime.device == "cpu" and list(be.bench.batch_sizes) == [1]
            cpu = entries["cpu"]
            assert cpu["AP"] == pytest.approx(0.3 + 0.1 * (prec == "int8")) and cpu["params"] > 0
        assert summary_of(cfg)["status"] == "ok"


def test_a_target_set_to_null_is_dropped_from_the_run(tmp_path):
    cfg = sweep_point_cfg(tmp_path, "precision=fp32", "pipeline.targets.gpu=null")
    fake = FakeStages()
    run_pipeline(cfg, fake)
    assert [e["target"] for e in summary_of(cfg)["targets"]] == ["cpu"]  # no gpu entry, not even n/a
    root = Experiment(cfg).root
    assert not (root / "targets" / "gpu").exists() and (root / "targets" / "cpu" / "fp32" / "bench").is_dir()


def test_a_deferred_target_is_evaluated_now_and_timed_later_from_the_files(tmp_path):
    from posekit.targets import bench_deferred

    cfg = sweep_point_cfg(tmp_path, "precision=int8", "pipeline.targets.cpu.defer=true")
    fake = FakeStages()
    run_pipeline(cfg, fake)
    assert [s for s, _ in fake.calls][-1] == "eval"  # the cpu target's AP, no bench
    cpu = next(e for e in summary_of(cfg)["targets"] if e["target"] == "cpu")
    assert cpu["status"] == "deferred" and cpu["AP"] is not None and cpu.get("latency_ms") is None
    # later, on the target machine: python -m posekit.sweep.report <sweep> --bench cpu does this per point
    root = Experiment(cfg).root
    (root / ".hydra").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")
    later = FakeStages()
    done = bench_deferred(root, "cpu", later)
    assert [s for s, _ in later.calls] == ["bench"] and done[0]["status"] == "ok" and done[0]["latency_ms"] == 1.0
    assert done[0]["step"] == "ran" and bench_deferred(root, "cpu", later)[0]["step"] == "cached"
    assert Path(later.configs[0].bench.artifacts[0]) == root / cpu["artifact"]
    assert io.read_json(root / "pipeline" / "steps" / "target-cpu-int8-bench.json")["status"] == "ok"
    # a relaunch of the point with the target no longer deferred finds that bench done (same fingerprint)
    again = FakeStages()
    run_pipeline(sweep_point_cfg(tmp_path, "precision=int8"), again)
    assert again.calls == []


def test_rounds_keep_the_median_round_of_each_deferred_entry(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from posekit.sweep.report import bench_targets
    from posekit.targets import bench_json, timing

    cfg = sweep_point_cfg(tmp_path, "precision=int8", "pipeline.targets.cpu.defer=true",
                          "pipeline.targets.gpu=null")
    run_pipeline(cfg, FakeStages())
    root = Experiment(cfg).root
    (root / ".hydra").mkdir()
    OmegaConf.save(cfg, root / ".hydra" / "config.yaml")

    latencies = iter([3.0, 1.0, 2.0, 5.0])  # the rounds' network latencies, in the order they are timed

    class Slow(FakeStages):
        def bench(self, cfg, exp):
            ms = next(latencies)
            rows = [{"artifact": cfg.bench.artifacts[0], "batch": 1, "device": "cpu",
                     "network": {"median_ms": ms, "throughput_ips": 1000 / ms}}]
            io.write_json(exp.dir("bench") / "bench.json", {"rows": rows, "skipped": {}})
            return {"latency_ms": ms}

    timer = Slow()
    monkeypatch.setattr("posekit.stages.pipeline.run_stage_step", timer)
    counts = bench_targets(root.parent, ["cpu"], rounds=3)
    assert counts == {"measured": 1, "done earlier": 0, "failed": 0}
    assert [s for s, _ in timer.calls] == ["bench"] * 3  # the one deferred entry (cpu int8), three times
    kept = io.read_json(bench_json(root, "cpu", "int8"))
    assert kept["rounds"] == {"latency_ms": [3.0, 1.0, 2.0], "chosen": 2}  # the median round, not the last
    assert timing(kept)["latency_ms"] == 2.0 and timing(kept)["latency_rounds"] == [3.0, 1.0, 2.0]
    assert sorted(p.name for p in bench_json(root, "cpu", "int8").parent.glob("bench*.json")) == ["bench.json"]
    # done: a later --bench without --force times nothing, whatever the rounds
    assert bench_targets(root.parent, ["cpu"], rounds=3) == {"measured": 0, "done earlier": 1, "failed": 0}
    assert len(timer.calls) == 3


# --------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_tiny_pipeline_through_the_cli_prints_the_final_table_and_resumes(tmp_path):
    args = ("stage=pipeline", "preset=tiny", f"experiment.root={tmp_path}")
    proc = run_cli(*args, timeout=400)
    exp_dir = tmp_path / "default"
    summary = io.read_json(exp_dir / "pipeline" / "summary.json")
    assert summary["status"] == "ok", summary["error"]
    table = proc.stdout[proc.stdout.rindex("| model"):]
    for col in ("AP", "APm", "APl", "params", "GFLOPs", "latency ms"):
        assert col in table.splitlines()[0]
    rows = {(r["model"], r["format"], r["precision"]): r for r in summary["rows"]}
    for key in [("trained", "torch", "fp32"), ("retrained-0.2", "torch", "fp32"), ("retrained-0.2", "onnx", "fp32"),
                ("retrained-0.2", "onnx", "int8.cpu")]:
        assert key in rows, key
        assert isinstance(rows[key]["AP"], float) and rows[key]["latency_ms"] > 0 and rows[key]["params"] > 0, key
        assert f"| {key[0]}" in table
    assert summary["final"].endswith(".int8.cpu.onnx")
    assert (exp_dir / "pipeline" / "pipeline.md").read_text().count("| retrained-0.2") >= 3

    ckpt = exp_dir / "train" / "model.pt"
    mtime = ckpt.stat().st_mtime_ns
    again = run_cli(*args, timeout=120)
    assert ckpt.stat().st_mtime_ns == mtime
    assert again.stdout.count("| model") == 1 and "pipeline: ok" in again.stdout
    steps = io.read_json(exp_dir / "pipeline" / "summary.json")["steps"]
    assert steps and {s["status"] for s in steps} == {"cached"}
    assert json.loads(json.dumps(steps))[0]["id"] == "train"
    assert "done earlier" in again.stdout + again.stderr
    assert os.listdir(exp_dir / "pipeline" / "locks")  # lock files stay (flock): harmless, reused next time
