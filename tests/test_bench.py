"""bench stage: the CLI on CPU (ONNX artifacts, several batch sizes, network-only and end-to-end), the default
artifact discovery and the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posekit.export.onnx_export import export_onnx
from posekit.runtime.timing import summarize, time_calls
from posekit.stages.bench import default_artifacts
from tests.conftest import compose, run_cli
from tests.test_export import tiny_final_stage


def test_summary_statistics_of_known_samples():
    # 1..11 ms: the median is the 6th sample; p90 sits at rank 0.9 * 10 = 9 (0-based), i.e. exactly 10 ms
    s = summarize([7.0, 1.0, 11.0, 3.0, 5.0, 2.0, 9.0, 4.0, 10.0, 6.0, 8.0], batch=4)
    assert s == {"median_ms": 6.0, "p90_ms": 10.0, "mean_ms": 6.0, "min_ms": 1.0,
                 "throughput_ips": round(4 * 1000 / 6.0, 2), "iters": 11}
    # an even count: the median is the mean of the middle two; p90 interpolates 0.5 of the way from 4 to 100 ms
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0, 3.0], batch=1)
    assert (s["median_ms"], s["p90_ms"], s["throughput_ips"]) == (3.0, 52.0, round(1000 / 3.0, 2))


def test_time_calls_warms_up_then_times_each_call_with_the_clock():
    now = [0.0]
    durations = iter([0.5, 0.25, 0.002, 0.004, 0.008])  # seconds: two warm-up calls, then three timed ones
    calls = []

    def fn():
        calls.append(1)
        now[0] += next(durations)

    samples = time_calls(fn, warmup=2, iters=3, clock=lambda: now[0])
    assert len(calls) == 5
    assert samples == pytest.approx([2.0, 4.0, 8.0])  # ms of the timed calls only: the warm-up is not in them


def test_default_artifacts_are_the_exported_models(tmp_path):
    cfg = compose(f"experiment.root={tmp_path}", "stage=bench")
    from posekit.experiment import Experiment

    from posekit.export.artifacts import artifact_record

    exp = Experiment(cfg)
    folder = exp.dir("export", "trained")
    names = ("model.128.128.fp32.onnx", "model.128.128.int8.cpu.onnx", "model.128.128.deploy.onnx",
             "model.128.128.fp16.engine", "cal.128.128.bin")
    for name in names:
        (folder / name).write_bytes(b"x")
    records = {n: artifact_record(folder / n, precision="fp32", format="onnx") for n in names}
    exp.write_summary(folder, "export", artifacts=records)
    (folder / "model.128.128.int8.qdq.onnx").write_bytes(b"y")  # a killed export's file: no record lists it
    found = [p.name for p in default_artifacts(exp)]
    assert sorted(found) == ["model.128.128.fp16.engine", "model.128.128.fp32.onnx", "model.128.128.int8.cpu.onnx"]


def test_rows_are_labelled_so_that_two_model_pt_files_differ(tmp_path):
    from posekit.experiment import Experiment
    from posekit.stages.bench import artifact_label

    exp = Experiment(compose(f"experiment.root={tmp_path}", "stage=bench"))
    labels = [artifact_label(p, exp) for p in (
        exp.root / "export" / "retrained-0.2" / "model.128.128.fp32.onnx",
        exp.root / "train" / "model.pt",
        exp.root / "retrain" / "pth-0.2" / "model.pt",
        tmp_path / "shared" / "s2-w0.25-128x128-abc" / "train" / "model.pt",  # a sweep's shared model
    )]
    assert labels == ["retrained-0.2/model.128.128.fp32.onnx", "train/model.pt", "retrain/pth-0.2/model.pt",
                      "train/model.pt"]


@pytest.mark.slow
def test_bench_cli_on_cpu(tmp_path, coco_sample):
    onnx_a = export_onnx(tiny_final_stage(), tmp_path / "model.128.128.fp32.onnx", (128, 128))
    onnx_b = export_onnx(tiny_final_stage(), tmp_path / "model.128.128.nhwc.onnx", (128, 128),
                         data_format="channels_last", dynamic_batch=True)
    root = tmp_path / "exp"
    proc = run_cli("stage=bench", "preset=tiny", f"experiment.root={root}", f"bench.artifacts=[{onnx_a},{onnx_b}]",
                   "bench.batch_sizes=[1,2]", f"bench.images={coco_sample}", "runtime.ort_threads=1")
    out = root / "default" / "bench"
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert [(Path(r["artifact"]).name, r["batch"]) for r in rows] == [
        (onnx_a.name, 1), (onnx_a.name, 2), (onnx_b.name, 1), (onnx_b.name, 2)]
    for r in rows:
        assert r["backend"] == "onnxruntime" and r["device"] == "cpu" and r["input_hw"] == [128, 128]
        for part in ("network", "end_to_end"):
            stats = r[part]
            assert stats["iters"] == 3  # preset=tiny: 1 warm-up + 3 timed calls
            assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
            assert stats["throughput_ips"] == pytest.approx(r["batch"] * 1e3 / stats["median_ms"], rel=1e-2)
        assert set(r["end_to_end"]["breakdown_median_ms"]) == {"preprocess_ms", "network_ms", "decode_ms"}
    table = (out / "bench.md").read_text()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert [c[0] for c in cells].count(f"{tmp_path.name}/{onnx_a.name}") == 2 and "e2e median ms" in table
    first = next(line for line in table.splitlines() if onnx_a.name in line)
    split = [float(v) for v in first.strip("| ").split(" | ")[-1].split(" / ")]  # pre / net / decode
    parts = rows[0]["end_to_end"]["breakdown_median_ms"]
    assert split == pytest.approx([parts[k] for k in ("preprocess_ms", "network_ms", "decode_ms")], abs=6e-3)
    assert "net median ms" in proc.stdout  # the table is printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["latency_ms"] == rows[0]["network"]["median_ms"]


# --------------------------------------------------------------------------------------------- GPU run driver
def test_gpu_driver_picks_the_candidate_within_the_given_bounds(tmp_path, monkeypatch):
    """``gpu_pipeline --candidate --max-kept --min-ap``: the recipe carried on is the one within both bounds (pth 0.2
    keeps at most ``max_kept`` of the parameters, trained AP at least ``min_ap``), else the one within the pruning
    bound, else the best trained AP, which alone decides without bounds; its figures come from each candidate's
    pipeline summary."""
    import json

    from benchmarks import gpu_pipeline as drv

    def write(name: str, ap: float | None, params_pruned: int) -> None:
        rows = [{"kind": "model", "label": "trained", "AP": ap, "params": 300},
                {"kind": "model", "label": "pruned-0.2", "AP": 0.0, "params": params_pruned},
                {"kind": "artifact", "label": "pruned-0.2", "AP": 0.5, "params": 1}]
        (tmp_path / name / "pipeline").mkdir(parents=True)
        (tmp_path / name / "pipeline" / "summary.json").write_text(json.dumps({"rows": rows}))

    monkeypatch.setattr(drv, "EXP", tmp_path)
    write("a", 0.75, 150)  # accurate, prunes too little
    write("b", 0.40, 90)   # prunes enough, inaccurate
    write("c", 0.72, 99)   # both
    figs = [drv.candidate_figures(n) for n in ("a", "b", "c")]
    assert figs[0] == {"name": "a", "trained_AP": 0.75, "pruned_AP": 0.0, "kept": 0.5}
    bounds = {"max_kept": 1 / 3, "min_ap": 0.70}
    assert drv.choose(figs, **bounds) == 2
    assert drv.choose(figs[:2], **bounds) == 1  # the pruning bound first
    assert drv.choose(figs) == 0  # no bounds: the best trained AP
    crashed = drv.candidate_figures("missing")  # a candidate that crashed has no figures
    assert drv.choose([crashed, figs[0]], **bounds) == 1 and drv.choose([crashed, figs[0]]) == 1


def test_gpu_driver_candidates_phase_returns_the_chosen_overrides_for_the_rest_of_the_run(tmp_path, monkeypatch):
    """``gpu_pipeline --candidate A --candidate B``: both train side by side on the run's recipe; the phase hands back
    the chosen candidate's overrides (the driver adds them to the recipe of every later phase) and compares its
    model under TAO's pruning criterion with them, leaving the recipe it was given as it was."""
    import json

    from benchmarks import gpu_pipeline as drv

    monkeypatch.setattr(drv, "EXP", tmp_path)
    for name, ap, trained in (("gpu-c0", 0.5, None), ("gpu-c1", 0.8, "c1/model.pt")):
        rows = [{"kind": "model", "label": "trained", "AP": ap, "params": 300},
                {"kind": "model", "label": "pruned-0.2", "AP": 0.1, "params": 90}]
        (tmp_path / name / "pipeline").mkdir(parents=True)
        (tmp_path / name / "pipeline" / "summary.json").write_text(
            json.dumps({"rows": rows, "artifacts": {"trained": trained} if trained else {}}))
    together, single = [], []
    monkeypatch.setattr(drv, "launch_together",
                        lambda recipe, runs, log, deadline=None: together.append((list(recipe), runs)) or [0, 0])
    monkeypatch.setattr(drv, "launch", lambda recipe, *o, log, deadline=None: single.append([*recipe, *o]) or 0)
    recipe = drv.recipe_for("gpu")
    before = list(recipe)
    result: dict = {}
    name, chosen = drv.phase_candidates(recipe, result, [["optim.lr=1"], ["optim.lr=2"]], [], min_ap=0.7)
    assert (name, chosen, result["chosen"]) == ("gpu-c1", ["optim.lr=2"], 1)
    assert recipe == before and together[0][0] == before
    assert [r[-1] for r in together[0][1]] == ["optim.lr=1", "optim.lr=2"]
    assert single[0][:len(before) + 1] == [*before, "optim.lr=2"] and "prune.model=c1/model.pt" in single[0]


def test_gpu_driver_loader_phase_runs_each_variant_as_a_train_stage_the_cli_accepts(monkeypatch):
    """``gpu_pipeline --phase loader --loader-variants``: every variant for the first worker configuration (the
    references, fed from memory and profiled, only there), the levers for the others; each run is a train stage
    whose overrides compose, with the variant's longer box where it compiles."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from benchmarks import gpu_pipeline as drv

    runs = drv.loader_runs(drv.parse_loader_configs("7:5e-3,14:0"), ("plain", "memory", "nice", "compile",
                                                                    "memory-compile"))
    assert runs == [(7, 5e-3, "plain"), (7, 5e-3, "memory"), (7, 5e-3, "nice"), (7, 5e-3, "compile"),
                    (7, 5e-3, "memory-compile"), (14, 0.0, "plain"), (14, 0.0, "nice"), (14, 0.0, "compile")]
    with pytest.raises(SystemExit, match="unknown"):
        drv.loader_runs(drv.parse_loader_configs("7:0"), ("plain", "faster"))

    calls, recipe = [], drv.recipe_for("gpu")
    monkeypatch.setattr(drv, "speed_baselines", lambda recipe, result: None)
    monkeypatch.setattr(drv, "launch", lambda recipe, *overrides, log, deadline=None: calls.append(overrides) or 0)
    drv.phase_loader(recipe, {}, [], configs=((7, 5e-3),), seconds=30, variants=("plain", "nice", "compile"))
    parsed = [{o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(c))} for c in calls]
    assert [p["experiment.name"] for p in parsed] == ["loader-w7-l10.005", "loader-w7-l10.005-nice",
                                                      "loader-w7-l10.005-compile"]
    assert [p["trainer.max_time"] for p in parsed] == ["00:00:00:30", "00:00:00:30", "00:00:03:00"]
    assert parsed[1]["debug.worker_nice"] == 10 and parsed[2]["train.compile"] is True
    for c in calls:  # the overrides compose into a valid config after the recipe the driver runs the GPU with
        compose(*recipe, *c)


def test_gpu_driver_benches_the_pipeline_models_on_twenty_person_frames(tmp_path, monkeypatch):
    """The driver's crowd bench (end to end, single stream, 20 people) times the trained and the retrained
    torch models that experiment's pipeline recorded, in an experiment of its own, and evaluates the retrained one;
    the commands it builds parse as the CLI would parse them."""
    import json

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from benchmarks import gpu_pipeline as drv

    trained, retrained = tmp_path / "s=1,x" / "train" / "model.pt", tmp_path / "retrain" / "pth-0.2" / "model.pt"
    (tmp_path / "gpu" / "pipeline").mkdir(parents=True)
    (tmp_path / "gpu" / "pipeline" / "summary.json").write_text(json.dumps(
        {"artifacts": {"trained": str(trained), "pruned-0.2": "p.pt", "retrained-0.2": str(retrained)}}))
    monkeypatch.setattr(drv, "EXP", tmp_path)
    calls, recipes, recipe = [], [], drv.recipe_for("gpu", ["trainer.max_time=00:00:02:00"])
    monkeypatch.setattr(drv, "launch", lambda r, *overrides, log, deadline=None:
                        recipes.append(r) or calls.append(overrides) or 0)
    drv.crowd_bench(recipe, [], name="gpu")
    assert recipes == [recipe, recipe]  # every command carries the run's recipe
    assert [c[0] for c in calls] == ["stage=bench", "stage=eval"]
    parsed = [{o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(list(c))} for c in calls]
    assert parsed[0]["scene"] == "crowd20" and parsed[0]["experiment.name"] == "gpu-crowd20"
    assert parsed[0]["bench.artifacts"] == [str(trained), str(retrained)]
    assert parsed[1]["eval.artifact"] == str(retrained)
    calls.clear()
    drv.crowd_bench(recipe, [], name="missing")  # no pipeline yet: nothing to time
    assert calls == []


# --------------------------------------------------------------------------------------------- decoder benchmark
def test_decode_benchmark_finds_the_people_from_host_arrays_and_from_tensors():
    """``benchmarks.decode``: ideal maps of 5 people decode back to about 5 people (its scenes may overlap
    people), the same number whether the decoder gets numpy arrays (the host path) or torch tensors (``--device``:
    what a CUDA backend's maps go through, here with tensors on the CPU)."""
    from benchmarks.decode import bench
    from posekit.skeleton import Skeleton

    skeleton = Skeleton.default()
    rows = [bench(1, 5, (288, 384), scenes=4, repeats=1, skeleton=skeleton, device=d) for d in ("host", "cpu")]
    assert rows[0]["decoded"] == rows[1]["decoded"] >= 4
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in rows)


def test_step_overhead_benchmark_times_the_three_ways():
    """``benchmarks.step_overhead``: the same tiny step under Lightning with posekit's logging, with logging
    off, and without Lightning; each a positive ms figure."""
    from benchmarks.step_overhead import main

    out = main(["--steps", "30", "--repeats", "1", "--log-every", "5"])
    assert set(out) == {"lightning, posekit's logging", "lightning, no logging", "no lightning"}
    assert all(v > 0 for v in out.values())
