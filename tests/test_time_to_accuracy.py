"""benchmarks/time_to_accuracy.py on a tiny config: the real `launch.py stage=train` with weight snapshots, the
snapshots evaluated after the run, and a breakdown that adds up against the run's own records. The run trains on
the device data path (data.augment_on_device, on the CPU here): the one end-to-end training of that path."""

from __future__ import annotations

import json

import pytest

from posekit.model.io import load_model


@pytest.mark.slow
def test_time_to_accuracy_breakdown_adds_up_against_the_runs_records(tmp_path):
    from benchmarks.time_to_accuracy import STARTUP_PARTS, main

    report = main(["--out", str(tmp_path), "--preset", "tiny", "--seeds", "0", "--every", "1", "--target", "0",
                   "--val-images", "2", "--final-val-images", "2", "trainer.limit_val_batches=0",
                   "data.augment_on_device=true", "data.targets_on_device=true"])
    assert json.loads((tmp_path / "time_to_accuracy.json").read_text()) == json.loads(json.dumps(report))
    (r,) = report["results"]
    t = r["times"]
    record = json.loads(open(r["record"]).read())
    stage = tmp_path / "runs" / "seed-0" / "tta" / "train"
    summary = json.loads((stage / "summary.json").read_text())
    marks, t_cmd = record["marks"], r["run"]["t_cmd"]
    assert summary["config"]["data"]["augment_on_device"] is True  # trained on the device path, to its planned steps
    assert summary["metrics"]["global_step"] == summary["metrics"]["planned_steps"] > 0
    assert summary["metrics"]["replaced_samples"] == 0

    # the phases are consecutive stretches of one clock: they add up, and each is the run's own marks
    assert sum(t[p] for p in STARTUP_PARTS) == pytest.approx(t["startup_s"], abs=0.01)
    assert t["startup_s"] + t["train_s"] + t["finish_s"] == pytest.approx(t["total_s"], abs=0.01)
    assert t["startup_s"] == pytest.approx(marks["first_step"] - t_cmd, abs=1e-3)
    assert t["train_s"] == pytest.approx(marks["train_end"] - marks["first_step"], abs=1e-3)
    assert t["total_s"] == pytest.approx((stage / "model.pt").stat().st_mtime - t_cmd, abs=1e-3)
    assert t["data_s"] == pytest.approx(record["data"]["resolve_s"], abs=1e-3)
    assert t["startup_without_data_wait_s"] == pytest.approx(t["startup_s"] - t["data_s"], abs=0.01)
    assert all(t[p] >= 0 for p in (*STARTUP_PARTS, "train_s", "finish_s", "exit_s"))
    assert t["snapshot_s"] == pytest.approx(sum(s["save_s"] for s in record["snapshots"]), abs=1e-3)
    assert t["snapshot_s"] <= t["train_s"]

    # cold: the run generated its own data set, in its own cache, started before the imports (posekit.data.early)
    assert list((tmp_path / "runs" / "seed-0" / "cache").rglob("params.json"))
    data = record["data"]
    assert data["generated"] and t["generation_s"] == pytest.approx(data["generate_end"] - data["generate_start"],
                                                                     abs=1e-3) and t["generation_s"] > 0
    assert t_cmd < data["generate_start"] < marks["setup"] and data["generate_end"] <= marks["setup"]

    # one AP point per snapshot, at the snapshot's time, up to the run's last step
    steps = [p["step"] for p in r["curve"]]
    assert steps == [s["step"] for s in record["snapshots"]] == list(range(1, summary["metrics"]["global_step"] + 1))
    walls = [p["wall_s"] for p in r["curve"]]
    assert walls == sorted(walls) and t["startup_s"] <= walls[0] and walls[-1] <= t["startup_s"] + t["train_s"] + 0.01
    for p in r["curve"]:
        load_model(stage / "snapshots" / f"step-{p['step']:07d}.pt")  # each point is a loadable model
        assert 0.0 <= p["AP"] <= 1.0
    # target 0: the first point reaches it; the final model is judged on its own evaluation
    assert r["time_to_target_s"] == walls[0] and r["step_to_target"] == steps[0]
    assert r["passed"] == (r["final_AP"] >= 0 and t["total_s"] <= report["budget_s"])
