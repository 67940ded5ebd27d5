"""Sweeps (sweeps/sweep/*.yaml) and their report (posekit.sweep.report).

Unit tests build sweep folders by hand (point summaries as the pipeline writes them) to check the report; the
CLI tests run the 2 x 2 tiny sweep for real with the basic and the submitit_local launcher.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posekit import io
from posekit.sweep.report import SweepReportCallback, collect, main, pareto_front, write_report
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
    full = params("accuracy_latency")
    assert set(full) == {"prune.pth", "resolution", "model.stages", "precision"}
    assert len(params("tiny")) == 2 and all(len(v) == 2 for v in params("tiny").values())


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


# --------------------------------------------------------------------------------------------- CLI sweeps
def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The 2 x 2 tiny sweep with the basic launcher (one training shared by the 4 points)."""
    root = tmp_path_factory.mktemp("sweep-basic")
    proc = run_cli("+sweep=tiny", f"experiment.root={root}", timeout=400)
    return root / "sweeps" / "tiny", proc


@pytest.mark.slow
def test_tiny_sweep_with_the_basic_launcher_writes_the_table_and_the_pareto_plot(tiny_sweep):
    sweep, proc = tiny_sweep
    rows = list(csv.DictReader((sweep / "report" / "sweep.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}, rows
    assert {(r["pth"], r["shape"]) for r in rows} == {("0.1", "128x128"), ("0.1", "160x160"), ("0.6", "128x128"),
                                                      ("0.6", "160x160")}
    assert all(float(r["latency_ms"]) > 0 and float(r["AP"]) >= 0 for r in rows)
    assert (sweep / "report" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| point" in (sweep / "report" / "sweep.md").read_text() and "| point" in proc.stdout
    # reuse: one shared model folder, one training, one pruned + retrained model per pth
    shared = [p for p in (sweep / "shared").iterdir() if p.is_dir()]
    assert len(shared) == 1
    assert sorted(p.name for p in (shared[0] / "retrain").iterdir()) == ["pth-0.1", "pth-0.6"]
    assert proc.stdout.count("train: done earlier") + proc.stderr.count("train: done earlier") == 3


@pytest.mark.slow
def test_relaunching_the_sweep_skips_finished_work(tiny_sweep):
    sweep, _ = tiny_sweep
    before = {**_mtimes(sweep / "shared", "*.pt"), **_mtimes(sweep, "steps/*.json")}
    proc = run_cli("+sweep=tiny", f"experiment.root={sweep.parent.parent}", timeout=200)
    after = {**_mtimes(sweep / "shared", "*.pt"), **_mtimes(sweep, "steps/*.json")}
    assert before and after == before  # no model rewritten, no step re-run
    log = proc.stdout + proc.stderr
    assert "running" not in "".join(line for line in log.splitlines() if "posekit.chain" in line)
    assert log.count("done earlier") >= 4 * 6
    assert len(list(csv.DictReader((sweep / "report" / "sweep.csv").open()))) == 4


@pytest.mark.slow
def test_tiny_sweep_with_the_submitit_local_launcher_reuses_the_shared_models(tiny_sweep, tmp_path):
    sweep, _ = tiny_sweep
    shared_models = _mtimes(sweep / "shared", "*.pt")
    run_cli("+sweep=tiny", "hydra/launcher=local", f"experiment.root={tmp_path}",
            f"sweep.shared_dir={sweep / 'shared'}", timeout=400)
    local = tmp_path / "sweeps" / "tiny"
    rows = list(csv.DictReader((local / "report" / "sweep.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}, rows
    assert (local / "report" / "pareto.png").is_file() and (local / ".submitit").is_dir()
    assert _mtimes(sweep / "shared", "*.pt") == shared_models  # trained, pruned, retrained by the first sweep
    assert not (local / "shared").exists()


@pytest.mark.slow
def test_a_failed_point_is_a_failed_row_and_the_sweep_goes_on(tiny_sweep, tmp_path):
    sweep, _ = tiny_sweep
    proc = run_cli("+sweep=tiny", "prune.pth=0.1", "resolution=128x128", "retrain.model=null,missing-model.pt",
                   f"experiment.root={tmp_path}", f"sweep.shared_dir={sweep / 'shared'}", timeout=300)
    assert proc.returncode == 0
    rows = {r["point"]: r for r in csv.DictReader((tmp_path / "sweeps" / "tiny" / "report" / "sweep.csv").open())}
    assert len(rows) == 2
    bad = next(r for p, r in rows.items() if "missing-model.pt" in p)
    good = next(r for p, r in rows.items() if "retrain.model=null" in p)
    assert good["status"] == "ok" and float(good["latency_ms"]) > 0
    assert bad["status"] == "failed" and "missing-model.pt" in bad["error"]
