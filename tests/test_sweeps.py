"""Sweeps (sweeps/sweep/*.yaml) and their report (posekit.sweep.report).

Unit tests build sweep folders by hand (point summaries as the pipeline writes them) to check the report. The CLI
tests run the accuracy-latency sweep for real at tiny scale (2 stage counts x 2 pth x 1 shape x 2 precisions, both
latency targets, interrupted and relaunched, its CPU target timed later with --bench), then the tiny sweep with the
submitit_local launcher and a failing point on the models it shared.
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posekit import io
from posekit.chain import rebuilt_sidecar
from posekit.sweep.report import SweepReportCallback, collect, label, main, pareto_front, write_report
from tests.conftest import ROOT, compose, run_cli

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps" / "sweep").glob("*.yaml") if p.stem != "common")


# --------------------------------------------------------------------------------------------- sweep configs
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_is_a_multirun_of_the_pipeline_over_valid_keys(name):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if name == "optuna":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                            reason="sweeps/sweep/optuna.yaml needs hydra-optuna-sweeper: pip install -e '.[optuna]'")
    compose(f"+sweep={name}")  # sets POSEKIT_ROOT and registers the schema, as launch.py does
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.stage.value == "pipeline" and cfg.sweep.name == name
    assert cfg.hydra.callbacks.sweep_report._target_ == "posekit.sweep.report.SweepReportCallback"
    params = dict(cfg.hydra.sweeper.params)
    assert params
    # every value of every swept key composes (a typo in a key or a group choice fails here, not on the cluster)
    for key, values in params.items():
        values = str(values)
        if values.startswith(("choice(", "interval(")):  # Optuna's distributions: try the choices / the bounds
            values = values[values.index("(") + 1 : -1]
        for value in values.split(","):
            compose(f"+sweep={name}", f"{key}={value.strip()}")


def test_the_sweeps_named_in_the_issue_sweep_what_they_say():
    def params(name):
        with_hydra = OmegaConf.load(ROOT / "sweeps" / "sweep" / f"{name}.yaml")
        return {k: str(v).split(",") for k, v in with_hydra.hydra.sweeper.params.items()}

    assert params("resolution") == {"resolution": ["224x320", "288x384", "320x448"]}
    assert params("stages") == {"model.stages": ["2", "3", "4"]}
    assert len(params("pth")["prune.pth"]) >= 3
    full = params("accuracy_latency")  # the issue's grid, exactly
    assert full == {"model.stages": ["2", "3", "4"], "prune.pth": ["0", "0.1", "0.2", "0.5"],
                    "resolution": ["224x320", "288x384", "320x448"], "precision": ["fp32", "fp16", "int8"]}
    targets = compose("+sweep=accuracy_latency").pipeline.targets
    assert (targets.gpu.backend, list(targets.gpu.batch_sizes), targets.gpu.cuda_graphs) == ("torch", [1, 64], True)
    assert "fp16" in targets.gpu.precisions and "int8" not in targets.gpu.precisions
    assert (targets.cpu.backend, targets.cpu.device, list(targets.cpu.batch_sizes)) == ("onnxruntime", "cpu", [1])
    assert list(targets.cpu.precisions) == ["fp32", "int8"]
    assert len(params("tiny")) == 2 and all(len(v) == 2 for v in params("tiny").values())


def test_the_cpu_map_is_the_map_on_the_readme_model_with_the_cpu_target_alone():
    from posekit.targets import configured
    from posekit.validation import validate

    grid = {k: str(v).split(",") for k, v in
            OmegaConf.load(ROOT / "sweeps" / "sweep" / "accuracy_latency_cpu.yaml").hydra.sweeper.params.items()}
    assert grid == {"precision": ["fp32", "int8"], "resolution": ["128x128", "160x160", "256x256"],
                    "prune.pth": ["0", "0.2", "0.5"], "model.stages": ["2", "3", "4"]}
    cfg = compose("+sweep=accuracy_latency_cpu")
    validate(cfg)
    targets = configured(cfg)
    assert list(targets) == ["cpu"] and targets["cpu"].defer and targets["cpu"].backend == "onnxruntime"
    assert (cfg.model.width, list(cfg.sweep.train_shape), cfg.trainer.max_steps) == (0.25, [128, 128], 1440)
    assert list(cfg.pipeline.steps) == ["train", "prune", "retrain", "export", "targets"]
    launcher = _launcher("+sweep=accuracy_latency_cpu")
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2


def _launcher(*overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    compose()  # POSEKIT_ROOT + schema, as launch.py
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_takes_its_task_layout_from_the_trainer():
    slurm = _launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert slurm["_target_"].endswith("SlurmLauncher")
    assert (slurm["nodes"], slurm["tasks_per_node"], slurm["gpus_per_node"]) == (2, 4, 4)  # one task per GPU
    assert slurm["max_num_timeout"] > 0 and slurm["signal_delay_s"] > 0  # submitit owns requeueing
    assert any(line.startswith(f"export PYTHONPATH={ROOT}") for line in slurm["setup"])
    local = _launcher("hydra/launcher=local", "+sweep=tiny")
    assert local["_target_"].endswith("LocalLauncher") and local["tasks_per_node"] == 1
    assert local["submitit_folder"].endswith("sweeps/tiny/.submitit/%j")
    # and the way a user checks it composes
    proc = run_cli("hydra/launcher=slurm", "--cfg", "hydra", timeout=60)
    assert "submitit_slurm" in proc.stdout or "SlurmLauncher" in proc.stdout


# --------------------------------------------------------------------------------------------- report units
def write_point(sweep: Path, name: str, *, rows=None, error=None, pth=0.2, shape="128x128", summary=True,
                running=False) -> Path:
    """A point folder as a sweep job leaves it: .hydra/config.yaml, step records and (unless killed)
    pipeline/summary.json with one row per artifact."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    h, w = shape.split("x")
    OmegaConf.save(compose("+sweep=tiny", f"prune.pth={pth}", f"model.input_shape=[{h},{w}]"),
                   folder / ".hydra" / "config.yaml")
    if running:
        io.write_json(folder / "pipeline" / "steps" / "export.json", {"id": "export", "status": "running"})
    if error:
        io.write_json(folder / "pipeline" / "steps" / "retrain-0.2.json",
                      {"id": "retrain-0.2", "status": "failed", "error": error})
    if summary:
        point = {"stages": 2, "width": 0.125, "pth": pth, "shape": shape, "precision": "fp32"}
        io.write_json(folder / "pipeline" / "summary.json", {
            "status": "failed" if error else "ok", "error": error, "point": point,
            "rows": [{"kind": "model", "model": "trained"}] + [{"kind": "export", "format": "onnx", **r}
                                                               for r in rows or []],
        })
    return folder


def fake_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweeps" / "demo"
    (sweep / "shared" / "s2-w0.125-128x128-abc" / ".hydra").mkdir(parents=True)  # never a point
    write_point(sweep, "prune.pth=0.1", pth=0.1, rows=[
        {"precision": "fp32", "AP": 0.50, "APm": 0.4, "APl": 0.6, "latency_ms": 10.0, "throughput": 100.0,
         "params": 2e6, "gflops": 1.5},
        {"precision": "int8.cpu", "AP": 0.48, "APm": 0.4, "APl": 0.5, "latency_ms": 4.0, "throughput": 250.0,
         "params": 2e6, "gflops": 1.5}])
    write_point(sweep, "prune.pth=0.6", pth=0.6, rows=[
        {"precision": "fp32", "AP": 0.30, "APm": 0.2, "APl": 0.4, "latency_ms": 8.0, "throughput": 125.0,
         "params": 1e6, "gflops": 0.7}])
    write_point(sweep, "prune.pth=0.9", pth=0.9, error="MissingArtifactError: pruned model not found")
    write_point(sweep, "prune.pth=0.95", pth=0.95, summary=False, running=True)
    return sweep


def test_report_has_a_row_per_artifact_and_failed_and_unfinished_points_as_rows(tmp_path):
    sweep = fake_sweep(tmp_path)
    rep = write_report(sweep)
    rows = list(csv.DictReader(rep["csv"].open()))
    by = {(r["point"], r["precision"]): r for r in rows}
    assert set(by) == {("prune.pth=0.1", "fp32"), ("prune.pth=0.1", "int8.cpu"), ("prune.pth=0.6", "fp32"),
                       ("prune.pth=0.9", "fp32"), ("prune.pth=0.95", "fp32")}
    assert by[("prune.pth=0.9", "fp32")]["status"] == "failed"
    assert "pruned model not found" in by[("prune.pth=0.9", "fp32")]["error"]
    assert by[("prune.pth=0.95", "fp32")]["status"] == "incomplete"
    assert by[("prune.pth=0.95", "fp32")]["pth"] == "0.95"  # from the point's .hydra/config.yaml
    for col in ("pth", "shape", "stages", "precision", "params", "gflops", "AP", "APm", "APl", "latency_ms",
                "throughput"):
        assert col in rows[0]
    # Pareto: int8.cpu (4 ms, 0.48) and fp32 pth 0.1 (10 ms, 0.50) are on the front; pth 0.6 (8 ms, 0.30) is not
    front = {(r["point"], r["precision"]) for r in rows if r["pareto"] == "True"}
    assert front == {("prune.pth=0.1", "int8.cpu"), ("prune.pth=0.1", "fp32")}
    md = rep["markdown"].read_text()
    assert "| prune.pth=0.9" in md and "failed" in md and "pareto.png" in md
    assert sorted(rep["failed"]) == ["prune.pth=0.9", "prune.pth=0.95"]


def test_pareto_plot_is_a_png_with_the_points(tmp_path):
    from matplotlib.image import imread

    rep = write_report(fake_sweep(tmp_path))
    assert rep["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(rep["plot"])
    assert img.shape[0] > 300 and img.shape[1] > 400 and img.std() > 0


def test_pareto_front_matches_a_brute_force_check():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.choice([1.0, 2.0, 3.0, rng.random() * 5]), rng.choice([0.1, 0.5, rng.random()]))
               for _ in range(rng.randint(1, 12))]
        expected = [not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts) for p in pts]
        got = pareto_front(pts)
        # identical points: the brute force keeps every copy, pareto_front one; compare the sets of points
        assert {p for p, g in zip(pts, got) if g} == {p for p, e in zip(pts, expected) if e}


def test_report_command_and_callback_regenerate_the_report(tmp_path, capsys):
    sweep = fake_sweep(tmp_path)
    assert main([str(sweep)]) == 0
    assert "prune.pth=0.6" in capsys.readouterr().out
    (sweep / "report" / "sweep.csv").unlink()
    SweepReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "report" / "sweep.csv").is_file()
    assert main([str(tmp_path / "nope")]) == 2


def test_collect_ignores_shared_models_and_report_folders(tmp_path):
    sweep = fake_sweep(tmp_path)
    write_report(sweep)
    assert {r["point"] for r in collect(sweep)} == {"prune.pth=0.1", "prune.pth=0.6", "prune.pth=0.9",
                                                   "prune.pth=0.95"}


def target_point(sweep: Path, name: str, *, stages: int, pth: float, precision: str, entries: list[dict],
                 bench: dict[str, float] | None = None, failed_bench: str | None = None) -> Path:
    """A point of a targets sweep: summary.json with target entries, and a bench.json per target in ``bench``
    ({target: batch-1 median ms}) as the bench stage writes it (rows per batch size, the machine)."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    point = {"stages": stages, "width": 0.125, "pth": pth, "shape": "128x128", "precision": precision}
    for t, ms in (bench or {}).items():
        io.write_json(folder / "targets" / t / precision / "bench" / "bench.json", {
            "machine": {"processor": "Test CPU", "cpu_count": 2, **({"gpu": "Test GPU"} if t == "gpu" else {})},
            "rows": [{"batch": b, "device": "cuda:0" if t == "gpu" else "cpu",
                      "network": {"median_ms": ms * b, "throughput_ips": 1e3 / ms * (1 + 0.1 * b)},
                      "end_to_end": {"median_ms": ms * b + 1}} for b in ((1, 64) if t == "gpu" else (1,))]})
    if failed_bench:
        io.write_json(folder / "pipeline" / "steps" / f"target-cpu-{precision}-bench.json",
                      {"id": f"target-cpu-{precision}-bench", "status": "failed", "error": failed_bench})
    full = [{"backend": "torch" if e["target"] == "gpu" else "onnxruntime", "precision": precision, "error": None,
             "artifact": "x", "bench": f"targets/{e['target']}/{precision}/bench/bench.json",
             "steps": {"bench": f"target-{e['target']}-{precision}-bench"}, **e} for e in entries]
    io.write_json(folder / "pipeline" / "summary.json", {"status": "ok", "point": point, "rows": [], "targets": full})
    return folder


def test_a_targets_sweep_has_a_row_per_point_and_target_and_a_front_and_plot_per_target(tmp_path):
    sweep = tmp_path / "al"
    target_point(sweep, "a", stages=2, pth=0.0, precision="fp32", bench={"gpu": 2.0, "cpu": 20.0},
                 entries=[{"target": "gpu", "status": "ok", "AP": 0.5}, {"target": "cpu", "status": "ok", "AP": 0.5}])
    target_point(sweep, "b", stages=3, pth=0.2, precision="fp16", bench={"gpu": 1.5},
                 entries=[{"target": "gpu", "status": "ok", "AP": 0.4}, {"target": "cpu", "status": "n/a",
                                                                          "error": "fp16 on cpu: ..."}])
    target_point(sweep, "c", stages=2, pth=0.5, precision="int8", bench={"cpu": 8.0},  # timed later (--bench)
                 entries=[{"target": "gpu", "status": "n/a"}, {"target": "cpu", "status": "deferred", "AP": 0.45}])
    target_point(sweep, "d", stages=3, pth=0.5, precision="int8", failed_bench="UserError: boom",
                 entries=[{"target": "gpu", "status": "n/a"}, {"target": "cpu", "status": "deferred", "AP": 0.3}])
    target_point(sweep, "e", stages=3, pth=0.1, precision="fp32",
                 entries=[{"target": "gpu", "status": "ok", "AP": 0.1}, {"target": "cpu", "status": "deferred",
                                                                         "AP": 0.6}])
    rep = write_report(sweep)
    by = {(r["point"], r["target"]): r for r in csv.DictReader(rep["csv"].open())}
    assert len(by) == 10
    assert {k: r["status"] for k, r in by.items()} == {
        ("a", "gpu"): "ok", ("a", "cpu"): "ok", ("b", "gpu"): "ok", ("b", "cpu"): "n/a", ("c", "gpu"): "n/a",
        ("c", "cpu"): "ok", ("d", "gpu"): "n/a", ("d", "cpu"): "failed", ("e", "gpu"): "failed",
        ("e", "cpu"): "deferred"}
    assert "boom" in by[("d", "cpu")]["error"] and "--bench cpu" in by[("e", "cpu")]["error"]
    assert (by[("a", "gpu")]["device"], by[("a", "gpu")]["machine"]) == ("cuda:0", "Test GPU")
    assert by[("a", "cpu")]["machine"] == "Test CPU (2 CPUs)"
    assert float(by[("a", "gpu")]["throughput"]) == pytest.approx(1e3 / 2.0 * 7.4)  # at the largest batch
    assert by[("a", "gpu")]["throughput_batch"] == "64" and float(by[("a", "gpu")]["latency_ms"]) == 2.0
    # one front per target: gpu b (1.5 ms, 0.40) and a (2.0 ms, 0.50); cpu c (8 ms, 0.45) and a (20 ms, 0.50)
    assert {k for k, r in by.items() if r["pareto"] == "True"} == {("a", "gpu"), ("b", "gpu"), ("a", "cpu"),
                                                                  ("c", "cpu")}
    assert sorted(rep["plots"]) == ["cpu", "gpu"] and all(p.name == f"pareto-{t}.png" for t, p in rep["plots"].items())
    summary = io.read_json(rep["json"])
    assert [f["point"] for f in summary["targets"]["gpu"]["front"]] == ["b", "a"]
    assert summary["targets"]["cpu"]["status"] == {"deferred": 1, "failed": 1, "n/a": 1, "ok": 2}
    assert summary["not_ok"] == ["d", "e"]  # deferred and n/a are not failures
    md = rep["markdown"].read_text()
    assert "pareto-gpu.png" in md and "pareto-cpu.png" in md and "Wall time" in md


def test_plot_labels_do_not_overlap_even_when_points_crowd(tmp_path):
    from posekit.sweep.plot import pareto_figure, save_png

    rng = random.Random(1)
    rows = [{"stages": s, "pth": pth, "shape": shape, "precision": prec,
             "latency_ms": 10 * s * k * (1 - pth) * (0.5 if prec == "int8" else 1) * rng.uniform(0.97, 1.03),
             "AP": 0.5 + 0.02 * s - 0.2 * pth ** 2 + 0.03 * k + rng.uniform(-0.01, 0.01)}
            for s, pth, (shape, k), prec in itertools.product(
                (2, 3, 4), (0, 0.1, 0.2, 0.5), (("224x320", 0.7), ("288x384", 1.0), ("320x448", 1.3)),
                ("fp32", "int8"))]
    for subset in (rows, rows[:20]):  # 72 points: the front labelled; 20: every point
        front = pareto_front([(r["latency_ms"], r["AP"]) for r in subset])
        fig, texts = pareto_figure(subset, front, "crowded")
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in texts]
        assert not [(a, b) for a, b in itertools.combinations(range(len(boxes)), 2) if boxes[a].overlaps(boxes[b])]
        labels = {t.get_text() for t in texts}
        assert all(label(r) in labels for r, f in zip(subset, front) if f), "every front point keeps its label"
        assert len(texts) >= (sum(front) if len(subset) > 24 else 0.8 * len(subset))
        assert save_png(fig, tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------- CLI sweeps
def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


# sweeps/sweep/accuracy_latency.yaml at tiny scale: 2 stage counts x 2 pth (0: the trained model) x 1 shape x 2
# precisions, both targets; the CPU target deferred and timed afterwards with --bench, as on the GPU machine
AL_TINY = ("+sweep=accuracy_latency", "preset=tiny", "sweep.train_shape=[128,128]", "model.stages=2,3",
           "prune.pth=0,0.6", "resolution=128x128", "precision=fp32,int8", "pipeline.targets.gpu.batch_sizes=[1,4]",
           "pipeline.targets.cpu.defer=true")
REPORT_FILES = ("sweep.csv", "sweep.md", "sweep.json", "pareto-gpu.png", "pareto-cpu.png")
# One torch thread: on a 2-core machine shared with other jobs, torch's OpenMP threads oversubscribe and a tiny
# model's call can take 100x longer; this test checks what the sweep writes, not how fast (ONNX Runtime's own pool
# is not affected).
AL_ENV = {"OMP_NUM_THREADS": "1"}


def _points_done(sweep: Path) -> list[Path]:
    return [p.parent.parent for p in sweep.glob("*/pipeline/summary.json") if p.parent.parent.name != "shared"]


def _interrupted_launch(root: Path, after: int, timeout: float = 400) -> None:
    """Launch the tiny accuracy-latency sweep and kill it (SIGKILL, its whole process group) once ``after`` points
    have finished: what a pre-empted or Ctrl-C'd launch leaves behind."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **AL_ENV}
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *AL_TINY, f"experiment.root={root}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while len(_points_done(root / "sweeps" / "accuracy_latency")) < after:
            assert proc.poll() is None, f"the sweep ended (rc {proc.returncode}) before {after} points were done"
            assert time.time() < deadline, "the sweep took too long"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def al_sweep(tmp_path_factory):
    """The tiny accuracy-latency sweep, run as it would be on the GPU machine and then the VM: (1) a launch killed
    after 4 of its 8 points, (2) the relaunch, which finishes it (two points at a time), (3) ``--bench cpu --rounds
    3`` times the deferred CPU target from the exported files, (4) a relaunch of the finished sweep. Returns what
    each step left to compare."""
    root = tmp_path_factory.mktemp("sweep-al")
    sweep = root / "sweeps" / "accuracy_latency"
    _interrupted_launch(root, after=4)
    finished = _points_done(sweep)
    records_after_kill = _mtimes(sweep, "pipeline/steps/*.json")
    # the relaunch runs the points left in a pool of two processes (hydra/launcher=parallel: joblib); the launcher
    # is not part of the point folders' names, so it finds the same folders
    relaunch = run_cli(*AL_TINY, f"experiment.root={root}", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
                       timeout=400, env=AL_ENV)
    records_after_relaunch = _mtimes(sweep, "pipeline/steps/*.json")
    assert main([str(sweep), "--bench", "cpu", "--rounds", "3"]) == 0  # each entry timed 3 times, median kept
    report_after_bench = {f: (sweep / "report" / f).read_bytes() for f in REPORT_FILES}
    models = _mtimes(sweep / "shared", "*.pt")
    last = run_cli(*AL_TINY, f"experiment.root={root}", timeout=200, env=AL_ENV)
    return {"sweep": sweep, "finished_first": finished, "records_after_kill": records_after_kill,
            "relaunch": relaunch, "records_after_relaunch": records_after_relaunch,
            "report_after_bench": report_after_bench, "models_before_last": models, "last": last}


def _own_eval(folder: Path, target: str, precision: str) -> dict:
    """The point's own eval output for a target, found on disk (not through the report or the summary)."""
    found = list((folder / "targets" / target / precision / "eval").glob("*/metrics.json"))
    assert len(found) == 1, found
    return io.read_json(found[0])


def _own_bench(folder: Path, target: str, precision: str) -> dict:
    return io.read_json(folder / "targets" / target / precision / "bench" / "bench.json")


@pytest.mark.slow
def test_accuracy_latency_sweep_report_matches_the_points_own_eval_and_bench_outputs(al_sweep):
    sweep = al_sweep["sweep"]
    rows = list(csv.DictReader((sweep / "report" / "sweep.csv").open()))
    points = {f"model.stages={s},precision={p},prune.pth={t},resolution=128x128"
              for s, t, p in itertools.product((2, 3), ("0", "0.6"), ("fp32", "int8"))}
    assert {r["point"] for r in rows} == points and len(rows) == 16  # every point, once per target
    by = {(r["point"], r["target"]): r for r in rows}
    for (point, target), r in by.items():
        stages, prec, pth = int(point.split(",")[0][-1]), r["precision"], float(r["pth"])
        assert (int(r["stages"]), r["shape"]) == (stages, "128x128") and f"precision={prec}" in point
        if target == "gpu" and prec == "int8":
            assert r["status"] == "n/a" and "no INT8" in r["error"], r
            continue
        assert r["status"] == "ok", r
        folder = sweep / point
        ev, bench = _own_eval(folder, target, prec), _own_bench(folder, target, prec)
        assert float(r["AP"]) == pytest.approx(ev["AP"]) and float(r["APm"]) == pytest.approx(ev["APm"])
        by_batch = {row["batch"]: row for row in bench["rows"]}
        assert sorted(by_batch) == ([1, 4] if target == "gpu" else [1])
        assert float(r["latency_ms"]) == pytest.approx(by_batch[1]["network"]["median_ms"])
        if target == "gpu":  # the cpu target times the network only (no dataset needed on the VM)
            assert float(r["e2e_ms"]) == pytest.approx(by_batch[1]["end_to_end"]["median_ms"])
        else:
            assert r["e2e_ms"] == "" and "end_to_end" not in by_batch[1]
            rounds = bench["rounds"]["latency_ms"]  # --rounds 3: the kept round is the median one
            assert len(rounds) == 3 and by_batch[1]["network"]["median_ms"] == sorted(rounds)[1]
            assert not list((folder / "targets" / target / prec / "bench").glob("bench.round*.json"))
        assert float(r["throughput"]) == pytest.approx(by_batch[max(by_batch)]["network"]["throughput_ips"])
        # the device each latency came from: torch "gpu" target on this CPU-only machine says cpu, and the machine
        assert r["device"] == by_batch[1]["device"] == "cpu" and r["machine"].endswith(f"({os.cpu_count()} CPUs)")
        backend = by_batch[1]["backend"]
        assert backend == ("torch" if target == "gpu" else "onnxruntime")
        artifact = Path(by_batch[1]["artifact"])
        if target == "gpu":  # the PyTorch model: pth 0 is the trained model itself
            want = ("train", "model.pt") if pth == 0 else ("retrain", "pth-0.6", "model.pt")
            assert artifact.parts[-len(want):] == want and artifact.parts[-len(want) - 1].startswith(f"s{stages}-")
            assert by_batch[1]["precision"] == prec
        else:  # the exported file of the point's precision; INT8: the ONNX Runtime model
            assert artifact.name == f"model.128.128.{prec}{'.cpu' if prec == 'int8' else ''}.onnx"
            assert artifact.parent.name == ("train" if pth == 0 else "pth-0.6")  # export/<model's folder>/
    # the fronts, recomputed by brute force from the points' own files
    report = io.read_json(sweep / "report" / "sweep.json")
    for target in ("gpu", "cpu"):
        pts = {p: (_own_bench(sweep / p, target, by[(p, target)]["precision"])["rows"][0]["network"]["median_ms"],
                   _own_eval(sweep / p, target, by[(p, target)]["precision"])["AP"])
               for p in points if by[(p, target)]["status"] == "ok"}
        brute = {p for p, (lat, ap) in pts.items()
                 if not any(q != p and lq <= lat and aq >= ap and (lq, aq) != (lat, ap) for q, (lq, aq) in pts.items())}
        reported = {r["point"] for r in rows if r["target"] == target and r["pareto"] == "True"}
        ties = {p for p in brute for q in brute if q != p and pts[q] == pts[p]}  # identical points: one is kept
        assert reported <= brute and brute - reported <= ties and reported, (target, reported, brute)
        assert {f["point"] for f in report["targets"][target]["front"]} == reported
        assert (sweep / "report" / f"pareto-{target}.png").read_bytes()[:4] == b"\x89PNG"
    # the wall time is the step records' own
    records = [io.read_json(p) for p in sweep.rglob("pipeline/steps/*.json")]
    assert report["wall_time"]["sum_s"] == pytest.approx(sum(r.get("seconds", 0) for r in records), abs=0.2)
    assert report["wall_time"]["span_s"] > 0 and "Wall time" in (sweep / "report" / "sweep.md").read_text()


def _graph(path: Path) -> tuple[list[str], list[tuple]]:
    """An ONNX file's graph without its values: operator types in order, and each initializer's shape and type."""
    import onnx

    g = onnx.load(str(path)).graph
    return [n.op_type for n in g.node], sorted((tuple(t.dims), t.data_type) for t in g.initializer)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_file_that_did_not_travel_is_timed_on_a_rebuild_of_its_graph(al_sweep, tmp_path, precision):
    """The sweep records, for each deferred cpu entry, what its network is. A copy of a pruned point without its
    exported files (what travels from the GPU machine to the VM): --bench cpu refuses without --rebuild, and with
    it re-makes the file with random weights, which has the exported file's graph (operators, initializer shapes
    and types), times it, and the report says so."""
    import shutil

    from posekit.stages.pipeline import run_stage_step
    from posekit.targets import bench_deferred

    sweep = al_sweep["sweep"]
    original = sweep / f"model.stages=3,precision={precision},prune.pth=0.6,resolution=128x128"
    copy = tmp_path / "accuracy_latency" / original.name
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("*.onnx", "targets"))
    for rec in copy.glob("pipeline/steps/target-*-bench.json"):
        rec.unlink()  # as if never timed
    entries = [e for e in io.read_json(copy / "pipeline" / "summary.json")["targets"] if e["target"] == "cpu"]
    assert [e["precision"] for e in entries] == [precision] and entries[0]["rebuild"]["convs"]
    if precision == "int8":
        assert entries[0]["rebuild"]["int8_variant"] in ("cpu-u8s8", "cpu-u8s7")
    with pytest.raises(Exception, match="--rebuild"):
        bench_deferred(copy, "cpu", run_stage_step)
    done = bench_deferred(copy, "cpu", run_stage_step, rebuild=True)
    assert [e["status"] for e in done] == ["ok"]
    rebuilt, exported = copy / entries[0]["artifact"], original / entries[0]["artifact"]
    assert _graph(rebuilt) == _graph(exported)
    assert rebuilt.read_bytes() != exported.read_bytes()  # random weights: not the file itself
    marker = io.read_json(copy / "targets" / "cpu" / precision / "bench" / "rebuilt.json")
    assert marker["weights"] == "random" and marker["artifact"] == entries[0]["artifact"]
    rows = [r for r in collect(copy.parent) if r["target"] == "cpu"]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and "rebuild" in rows[0]["error"]
    assert rows[0]["latency_ms"] > 0


@pytest.mark.slow
def test_a_deferred_gpu_entry_is_timed_on_a_rebuilt_model_without_end_to_end(al_sweep, tmp_path):
    """A point copied without the shared models (a later lease), its gpu entry deferred as the map defers it: the
    model is rebuilt beside the copy, the network is timed at the target's batch sizes, and there is no end-to-end
    figure (decoding depends on the peaks the weights produce)."""
    import shutil

    from posekit.stages.pipeline import run_stage_step
    from posekit.sweep import rebuild
    from posekit.targets import bench_deferred

    original = al_sweep["sweep"] / "model.stages=3,precision=fp32,prune.pth=0.6,resolution=128x128"
    copy = tmp_path / "accuracy_latency" / original.name
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("targets"))
    for rec in copy.glob("pipeline/steps/target-gpu-*-bench.json"):
        rec.unlink()
    summary = io.read_json(copy / "pipeline" / "summary.json")
    gpu = next(e for e in summary["targets"] if e["target"] == "gpu")
    model = (original / gpu["artifact"]).resolve()
    gpu.update(status="deferred", rebuild=rebuild.record(model, model))  # what a deferred gpu target records
    io.write_json(copy / "pipeline" / "summary.json", summary)
    assert not (copy / gpu["artifact"]).exists()  # ../shared did not come with the copy
    done = bench_deferred(copy, "gpu", run_stage_step, rebuild=True)
    assert [e["status"] for e in done] == ["ok"] and rebuilt_sidecar(copy / gpu["artifact"]).is_file()
    rows = io.read_json(copy / "targets" / "gpu" / "fp32" / "bench" / "bench.json")["rows"]
    assert sorted(r["batch"] for r in rows) == [1, 4] and all("end_to_end" not in r for r in rows)
    assert all(r["network"]["median_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_a_rebuilt_model_file_has_the_pruned_models_parameter_shapes(al_sweep, tmp_path):
    """The torch backend's rebuild (a deferred gpu target timed in a later session, without the shared models): a
    posekit model file that load_model reads, with the retrained model's parameter shapes and metadata, and a
    sidecar that marks it."""
    import torch

    from posekit.model import load_model
    from posekit.sweep import rebuild

    model = next((al_sweep["sweep"] / "shared").glob("s3-*/retrain/pth-0.6/model.pt"))
    rec = rebuild.record(model, model)
    out = rebuild.rebuild(compose("preset=tiny"), rec, tmp_path / "model.pt")
    (net, info), (orig, orig_info) = load_model(out), load_model(model)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in orig.state_dict().items()}
    assert info["meta"]["rebuilt"] is True and info["meta"]["skeleton"] == orig_info["meta"]["skeleton"]
    assert io.read_json(rebuilt_sidecar(out))["weights"] == "random"
    # a step record that lists the rebuilt file is not done: a relaunch trains again instead of evaluating it
    from posekit.chain import is_done

    assert is_done({"status": "ok", "fingerprint": "f", "artifacts": [str(model)]}, "f")
    assert not is_done({"status": "ok", "fingerprint": "f", "artifacts": [str(out)]}, "f")
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), orig.state_dict().values()))


@pytest.mark.slow
def test_pth_0_points_reuse_the_trained_model_and_the_models_are_shared(al_sweep):
    sweep = al_sweep["sweep"]
    shared = sorted(p.name for p in (sweep / "shared").iterdir() if p.is_dir())
    assert [s[:2] for s in shared] == ["s2", "s3"]  # one training per stage count
    for s in shared:
        models = sweep / "shared" / s
        assert sorted(p.name for p in (models / "retrain").iterdir()) == ["pth-0.6"]  # no retrain at pth 0
        assert sorted(p.name for p in (models / "prune").glob("*.pt")) == ["model.pruned-0.6.pt"]
    for point in sweep.glob("*prune.pth=0,*"):
        steps = {s["id"]: s["status"] for s in io.read_json(point / "pipeline" / "summary.json")["steps"]}
        assert steps["prune-0.0"] == steps["retrain-0.0"] == "skipped"
        assert (point / "export" / "train").is_dir() and not (point / "export" / "pth-0.0").exists()


@pytest.mark.slow
def test_a_relaunch_after_an_interruption_skips_the_finished_points_and_gives_the_same_report(al_sweep):
    sweep, before, after = al_sweep["sweep"], al_sweep["records_after_kill"], al_sweep["records_after_relaunch"]
    finished = al_sweep["finished_first"]
    assert 4 <= len(finished) < 8  # the first launch was killed with points left to do
    for point in finished:  # every step of a finished point was skipped: its records were not rewritten
        mine = {p: t for p, t in before.items() if p.startswith(str(point) + os.sep)}
        assert mine and all(after[p] == t for p, t in mine.items()), point
    rerun = [p for p in after if before.get(p) != after[p]]
    assert rerun and not any(p.startswith(str(f) + os.sep) for p in rerun for f in finished)
    log = al_sweep["relaunch"].stdout + al_sweep["relaunch"].stderr
    assert log.count(": running") == len(rerun)  # the relaunch ran exactly the steps it had not finished
    # the relaunch of the finished sweep: nothing runs, nothing is rewritten, the report is byte for byte the same
    last = al_sweep["last"].stdout + al_sweep["last"].stderr
    assert ": running" not in last and last.count("done earlier") >= 8 * 3
    assert _mtimes(sweep / "shared", "*.pt") == al_sweep["models_before_last"]
    assert {f: (sweep / "report" / f).read_bytes() for f in REPORT_FILES} == al_sweep["report_after_bench"]


@pytest.mark.slow
def test_tiny_sweep_with_the_submitit_local_launcher_reuses_the_shared_models(al_sweep, tmp_path):
    shared = al_sweep["sweep"] / "shared"  # the tiny sweep's s2 model is the accuracy-latency sweep's
    shared_models = _mtimes(shared, "*.pt")
    run_cli("+sweep=tiny", "hydra/launcher=local", "prune.pth=0.6", f"experiment.root={tmp_path}",
            f"sweep.shared_dir={shared}", timeout=400)
    local = tmp_path / "sweeps" / "tiny"
    rows = list(csv.DictReader((local / "report" / "sweep.csv").open()))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}, rows
    assert {(r["pth"], r["shape"], r["target"]) for r in rows} == {("0.6", "128x128", "bench"),
                                                                   ("0.6", "160x160", "bench")}
    assert all(float(r["latency_ms"]) > 0 and float(r["AP"]) >= 0 for r in rows)
    assert (local / "report" / "pareto.png").read_bytes()[:4] == b"\x89PNG"  # a bench-step sweep: one plot
    assert (local / ".submitit").is_dir()
    assert _mtimes(shared, "*.pt") == shared_models  # trained, pruned, retrained by the first sweep
    assert not (local / "shared").exists()


@pytest.mark.slow
def test_a_failed_point_is_a_failed_row_and_the_sweep_goes_on(al_sweep, tmp_path):
    shared = al_sweep["sweep"] / "shared"
    proc = run_cli("+sweep=tiny", "prune.pth=0.6", "resolution=128x128", "retrain.model=null,missing-model.pt",
                   f"experiment.root={tmp_path}", f"sweep.shared_dir={shared}", timeout=300)
    assert proc.returncode == 0
    rows = {r["point"]: r for r in csv.DictReader((tmp_path / "sweeps" / "tiny" / "report" / "sweep.csv").open())}
    assert len(rows) == 2
    bad = next(r for p, r in rows.items() if "missing-model.pt" in p)
    good = next(r for p, r in rows.items() if "retrain.model=null" in p)
    assert good["status"] == "ok" and float(good["latency_ms"]) > 0
    assert bad["status"] == "failed" and "missing-model.pt" in bad["error"]
