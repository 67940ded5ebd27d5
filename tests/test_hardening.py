"""Issue 19: every bad input gets one clear line and exit status 2, nothing is silent, nothing is corrupted.

One test per row of the issue's table (plus the pieces they rest on). Each asserts the exit code, the message,
and that no file was damaged or written where it should not be. The experiments start from an untrained tiny
model with a training record (``train/summary.json`` of ``preset=tiny``), made in-process in a second; CLI runs
are real ``python launch.py`` processes, and the concurrency and kill tests really start and kill processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from posekit.config import ConfigError, validate
from posekit.errors import UserError
from tests.conftest import ROOT, compose, run_cli

LAUNCH = str(ROOT / "launch.py")


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_experiment(tmp_path_factory) -> Path:
    """An experiment root holding ``default/train/{model.pt, summary.json}`` as ``preset=tiny`` training leaves
    them (random weights: these tests are about inputs and files, not accuracy)."""
    from posekit.experiment import Experiment
    from posekit.model.bpnet import build_model
    from posekit.model.io import save_model
    from posekit.skeleton import Skeleton
    from posekit.stages.train import arch_from_config

    root = tmp_path_factory.mktemp("hardening")
    cfg = compose("preset=tiny", f"experiment.root={root}", "stage=train")
    skeleton = Skeleton.from_cfg(cfg.keypoints)
    torch.manual_seed(0)
    exp = Experiment(cfg)
    save_model(exp.trained_model, build_model(arch_from_config(cfg, skeleton)), skeleton=skeleton.name,
               input_shape=[128, 128], source="trained")
    exp.write_summary(exp.dir("train"), "train", artifacts={"model": exp.trained_model})
    return root


@pytest.fixture
def root(base_experiment, tmp_path) -> Path:
    """A private copy of the base experiment root (its experiment is ``<root>/default``)."""
    dest = tmp_path / "root"
    shutil.copytree(base_experiment, dest)
    return dest


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (what a run must not have changed)."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one ``posekit: error:`` line holding every fragment, no traceback."""
    assert proc.returncode == 2, (proc.stdout[-3000:], proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("posekit: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def run_in_process(capsys, *overrides: str) -> str:
    """``run_stage`` on a composed config, expecting the error contract: SystemExit(2); returns the error line."""
    from posekit.stages import run_stage

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_stage(compose(*overrides))
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("posekit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def poison_model(path: Path) -> None:
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    blob["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(blob, path)


# --------------------------------------------------------------------------------------------- row 1: NaN data
def test_non_finite_keypoints_and_boxes_are_dropped_and_counted_at_load(tmp_path, coco_sample, skeleton):
    from posekit.data.annotations import load_coco
    from posekit.data.coco import PoseDataset

    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][1]["keypoints"][0] = float("nan")
    data["annotations"][4]["bbox"][2] = float("inf")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))  # NaN / Infinity literals, which JSON readers accept
    assert "NaN" in ann.read_text() and "Infinity" in ann.read_text()

    ds = PoseDataset(ann, coco_sample, skeleton, (128, 128), compose().codec, train=False)
    assert ds.num_dropped_annotations == 2
    for i in range(len(ds._records)):
        rec = ds._records[i]
        assert np.isfinite(rec["keypoints"]).all() and np.isfinite(rec["centers"]).all()
    item = ds[0]
    assert torch.isfinite(item["heatmaps"]).all() and torch.isfinite(item["pafs"]).all()
    assert load_coco(ann).dropped_annotations == 2  # the evaluator reads it the same way


def test_prune_export_and_eval_refuse_a_model_with_non_finite_weights(root, capsys):
    model = root / "default" / "train" / "model.pt"
    poison_model(model)
    before = sha(model)
    proc = run_cli("stage=prune", "preset=tiny", f"experiment.root={root}", check=False)
    assert_user_error(proc, str(model), "non-finite weights")
    for stage in ("export", "eval"):
        line = run_in_process(capsys, f"stage={stage}", "preset=tiny", f"experiment.root={root}")
        assert "non-finite weights" in line and str(model) in line
    assert sha(model) == before
    assert not any((root / "default" / d).exists() for d in ("prune", "export", "eval"))


# --------------------------------------------------------------------------------------------- row 2: strict config
def test_unknown_keys_are_refused_with_a_suggestion(tmp_path):
    for override, fragment in (("+foo=1", "unknown config key 'foo'"),
                               ("foo=1", "unknown config key 'foo'"),
                               ("+trainer.max_epoch=5", "Did you mean 'trainer.max_epochs'?")):
        proc = run_cli(override, f"experiment.root={tmp_path}", check=False)
        assert_user_error(proc, fragment)
        assert "To append to your config" not in proc.stderr  # Hydra's advice to add a '+' is never given
    assert not any(tmp_path.iterdir())  # refused before anything ran
    # keys a config file or the API adds are refused by validate() too
    with pytest.raises(ConfigError, match="Did you mean 'data.batch_size'"):
        validate(compose("+data.batchsize=2"))


def test_several_options_of_one_group_are_checked_one_by_one():
    from posekit.errors import UserError
    from posekit.schema import check_overrides

    check_overrides(["+callbacks=[lr_monitor,weight_snapshots]", "+callbacks=lr_monitor"])  # every option exists
    with pytest.raises(UserError, match="callbacks has no option 'lr_monitr'.*Did you mean callbacks=lr_monitor"):
        check_overrides(["+callbacks=[lr_monitr,weight_snapshots]"])


# --------------------------------------------------------------------------------------------- row 3: one writer
def test_a_second_run_of_a_stage_stops_at_once_and_a_killed_holders_lock_is_taken_over(tmp_path):
    args = ["preset=tiny", f"experiment.root={tmp_path}", "trainer.max_epochs=4", "trainer.limit_train_batches=6"]
    owner = tmp_path / "default" / "locks" / "train.owner.json"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, LAUNCH, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not owner.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert owner.is_file(), (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGSTOP)  # frozen while it trains, holding the lock: no race with its speed
        assert json.loads(owner.read_text())["pid"] == first.pid
        train = tmp_path / "default" / "train"
        before = tree(train)

        t0 = time.time()
        second = run_cli(*args, check=False)
        assert_user_error(second, "stage train is already running", f"PID {first.pid}", "started")
        assert time.time() - t0 < 60
        assert tree(train) == before  # the second run touched nothing of the first's

        first.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel frees it, the owner record stays
        first.wait(30)
        assert owner.is_file()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    third = run_cli(*args, "train.resume=false", check=False)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking over the lock left by PID {first.pid}" in third.stdout + third.stderr
    assert (train / "model.pt").is_file() and not owner.exists()


# --------------------------------------------------------------------------------------------- row 4: corrupt ckpt
def test_a_corrupt_last_ckpt_is_a_clear_error_and_is_left_as_it_was(root):
    from posekit.preflight import check_resume_checkpoint

    train = root / "default" / "train"
    ckpt = train / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"net.w": torch.zeros(1000)}, "global_step": 3}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # killed while writing
    before = tree(train)
    proc = run_cli("stage=train", "preset=tiny", f"experiment.root={root}", check=False)
    assert_user_error(proc, str(ckpt), "truncated or corrupt", "train.resume=false")
    assert tree(train) == before

    ckpt.write_bytes(b"")
    cfg = compose("stage=train", "preset=tiny", f"experiment.root={root}")
    with pytest.raises(UserError, match="is empty"):
        check_resume_checkpoint("train", cfg)


# --------------------------------------------------------------------------------------------- row 5: bad files
def test_bad_model_onnx_and_json_files_are_user_errors(root, tmp_path, capsys, coco_sample):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save(Evil(), evil)
    proc = run_cli("stage=prune", "preset=tiny", f"experiment.root={root}", f"prune.model={evil}", check=False)
    assert_user_error(proc, str(evil), "refused", "never loads")
    assert "weights_only=False" not in proc.stderr and "set to `False`" not in proc.stderr
    assert not marker.exists()  # the pickle's code never ran

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    debug = run_cli("stage=eval", "preset=tiny", f"experiment.root={root}", f"eval.artifact={empty}",
                    check=False, env={"POSEKIT_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # POSEKIT_DEBUG=1: the traceback too
    assert f"posekit: error: model file {empty} is empty" in debug.stderr

    line = run_in_process(capsys, "stage=retrain", "preset=tiny", f"experiment.root={root}", f"retrain.model={evil}")
    assert "refused" in line and "weights_only" not in line
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    line = run_in_process(capsys, "stage=eval", "preset=tiny", f"experiment.root={root}", f"eval.artifact={junk}")
    assert f"cannot load ONNX model {junk}" in line
    bad_json = tmp_path / "val.json"
    bad_json.write_text('{"images": [1, 2,')
    line = run_in_process(capsys, "stage=eval", "preset=tiny", f"experiment.root={root}", "data=coco",
                          f"data.val_ann={bad_json}", f"data.val_images={coco_sample}")
    assert f"{bad_json} is not valid JSON (line 1" in line
    assert not (root / "default" / "eval").exists() or not any((root / "default" / "eval").rglob("summary.json"))


# --------------------------------------------------------------------------------------------- row 6: ranges
def test_numeric_knobs_out_of_range_are_refused_before_any_work(tmp_path):
    for override, fragment in (("data.batch_size=0", "data.batch_size=0: must be >= 1"),
                               ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
                               ("precision.calibration.num_images=0", "must be >= 1 (INT8 calibration images)"),
                               ("bench.batch_sizes=[1,0]", "bench.batch_sizes=[1, 0]"),
                               ("data.augment.flip_prob=1.5", "must be in [0, 1]")):
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            validate(compose(override))
    proc = run_cli("stage=export", "precision=int8", "precision.calibration.num_images=0", "preset=tiny",
                   f"experiment.root={tmp_path}", check=False)
    assert_user_error(proc, "precision.calibration.num_images=0")
    assert "IndexError" not in proc.stderr and not (tmp_path / "default" / "export").exists()


# --------------------------------------------------------------------------------------------- row 7: kills
KILLABLE = """
import contextlib, os, runpy, sys, time
import posekit.io as io
_atomic = io.atomic_path

@contextlib.contextmanager
def paused(path):  # the file is written in full under its temporary name; then we wait to be killed
    with _atomic(path) as tmp:
        yield tmp
        if str(path).endswith(os.environ["PAUSE_ON"]):
            with open(os.environ["PAUSE_MARK"], "w") as f:
                f.write(str(tmp))
            time.sleep(600)

io.atomic_path = paused
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_killed_int8_export_leaves_nothing_bench_or_eval_would_use(root, tmp_path, capsys):
    from posekit.io import stale_temp_files

    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    mark = tmp_path / "paused"
    env = {**os.environ, "PAUSE_ON": ".int8.qdq.onnx", "PAUSE_MARK": str(mark), "PYTHONPATH": str(ROOT)}
    export = root / "default" / "export" / "trained"
    proc = subprocess.Popen([sys.executable, str(script), LAUNCH, "stage=export", "precision=int8", "preset=tiny",
                             f"experiment.root={root}"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not mark.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert mark.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "export never paused"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    temp = Path(mark.read_text())
    assert temp.is_file() and temp.stat().st_size > 0  # a hidden, full-size leftover
    assert (export / "model.128.128.fp32.onnx").is_file() and not (export / "summary.json").exists()
    assert stale_temp_files(root) == [temp]

    bench = run_cli("stage=bench", "preset=tiny", f"experiment.root={root}", "bench.end_to_end=false", check=False)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert not temp.exists()  # the next run removed the dead run's temporary file
    rows = json.loads((root / "default" / "bench" / "bench.json").read_text())["rows"]
    assert [Path(r["artifact"]).name for r in rows] == ["model.pt"]  # not the unfinished export's ONNX files
    assert "unfinished exports" in bench.stdout + bench.stderr

    line = run_in_process(capsys, "stage=eval", "preset=tiny", f"experiment.root={root}",
                          f"eval.artifact={export / 'model.128.128.fp32.onnx'}")
    assert "not part of a finished export" in line


def test_temp_files_of_dead_writers_only_are_stale(tmp_path):
    from posekit.io import HOST_ID, atomic_path, remove_stale_temp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f".model.tmp-{os.getpid()}-{HOST_ID}-abcd1234.onnx"
    gone = tmp_path / "sub" / f".model.tmp-{dead.pid}-{HOST_ID}-abcd1234.onnx"
    gone.parent.mkdir()
    for p in (mine, gone):
        p.write_bytes(b"x" * 1000)
    with atomic_path(tmp_path / "model.onnx") as tmp:
        assert tmp.name.startswith(f".model.tmp-{os.getpid()}-{HOST_ID}-") and tmp.suffix == ".onnx"
        assert remove_stale_temp(tmp_path) == [gone]  # a live writer's files (ours) stay
        tmp.write_bytes(b"y")
    assert mine.exists() and not gone.exists() and (tmp_path / "model.onnx").read_bytes() == b"y"


# --------------------------------------------------------------------------------------------- row 8: read-only
def _read_only_command(folder: Path, command: list[str]) -> list[str] | None:
    """``command`` run with ``folder`` mounted read-only (a private mount namespace), or None if not possible."""
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {folder} {folder} && ! touch "
                            f"{folder}/.probe"], capture_output=True)
    if probe.returncode != 0:
        return None
    quoted = " ".join(f"'{c}'" for c in command)
    return ["unshare", "-rm", "sh", "-c", f"mount --bind -o ro {folder} {folder} && exec {quoted}"]


def test_a_read_only_experiment_folder_fails_before_any_work(root):
    exp = root / "default"
    before = tree(exp)
    command = _read_only_command(exp, [sys.executable, LAUNCH, "stage=eval", "preset=tiny", f"experiment.root={root}"])
    if command is None:
        if os.geteuid() == 0:
            pytest.skip("no way to make a read-only folder here (unshare/mount not permitted)")
        exp.chmod(0o555)
        command = [sys.executable, LAUNCH, "stage=eval", "preset=tiny", f"experiment.root={root}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        exp.chmod(0o755)
    assert_user_error(proc, f"the experiment folder {exp} is not writable", "nothing was run")
    assert "Average Precision" not in proc.stdout  # refused before evaluating a single image
    assert tree(exp) == before


# --------------------------------------------------------------------------------------------- row 9: eval inputs
def test_eval_needs_only_the_val_set_and_counts_what_it_skipped(root, tmp_path, coco_sample):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["annotations"][0]["keypoints"][3] = float("nan")
    data["images"].append(dict(data["images"][0], id=999, file_name="missing.jpg"))
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps(data))
    proc = run_cli("stage=eval", "preset=tiny", f"experiment.root={root}", "data=coco", f"data.val_ann={ann}",
                   f"data.val_images={coco_sample}", "eval.tag=coco", check=False)  # no data.root, no train set
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((root / "default" / "eval" / "coco" / "summary.json").read_text())
    assert summary["skipped"] == {"images": 1, "annotations": 1}
    assert summary["metrics"]["images"] == 4 and summary["config"]["data"]["name"] == "coco"


# --------------------------------------------------------------------------------------------- row 10: memory
def test_later_stages_use_the_trained_settings_and_never_overwrite_another_setting(root):
    eval_dir = root / "default" / "eval"
    plain = run_cli("stage=eval", f"experiment.root={root}", check=False)  # no preset: as after the README's job
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "using the settings the model was trained with" in plain.stdout
    assert "model.input_shape=[128, 128]" in plain.stdout
    summary = json.loads((eval_dir / "trained" / "summary.json").read_text())
    assert summary["config"]["model"]["input_shape"] == [128, 128]
    assert summary["config"]["data"]["synthetic"]["num_val"] == 8 and summary["metrics"]["images"] == 8
    assert summary["config"]["experiment"]["inherited_from"].endswith("train/summary.json")
    first = tree(eval_dir / "trained")

    other = run_cli("stage=eval", f"experiment.root={root}", "resolution=160x160", check=False)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "model.input_shape=[160, 160] from the command line" in other.stdout + other.stderr
    assert tree(eval_dir / "trained") == first  # the earlier result of another setting is untouched
    moved = [p for p in eval_dir.iterdir() if p.name.startswith("trained-")]
    assert len(moved) == 1
    assert json.loads((moved[0] / "summary.json").read_text())["runtime"]["input_hw"] == [160, 160]


# --------------------------------------------------------------------------------------------- row 11: no silence
def test_an_extreme_pth_is_warned_about_and_recorded(root):
    proc = run_cli("stage=prune", "preset=tiny", "prune.pth=5", f"experiment.root={root}", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "above the range TAO documents (0.05..3.0)" in out and "cut to its minimum" in out
    summary = json.loads((root / "default" / "prune" / "summary.json").read_text())
    assert summary["warnings"] and "prune.pth=5.0" in summary["warnings"][0]


def _truncated_video(path: Path, frames: int = 20) -> tuple[int, int] | None:
    """An MJPG AVI of ``frames`` frames cut short; ``(declared, readable)`` frames as OpenCV sees it."""
    import cv2

    full = path.with_name("full.avi")
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = full.read_bytes()
    for fraction in (0.6, 0.7, 0.8, 0.5, 0.9):
        path.write_bytes(data[: int(len(data) * fraction)])
        cap = cv2.VideoCapture(str(path))
        declared, read = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0
        while cap.isOpened() and cap.read()[0]:
            read += 1
        cap.release()
        if declared == frames and 0 < read < frames:
            return declared, read
    return None


def test_a_truncated_video_says_how_many_frames_are_missing(root, tmp_path):
    from posekit.stages import run_stage

    video = tmp_path / "clip.avi"
    counts = _truncated_video(video)
    if counts is None:
        pytest.skip("this OpenCV build reads no truncated MJPG AVI")
    declared, read = counts
    run_stage(compose("stage=infer", "preset=tiny", f"experiment.root={root}", f"infer.input={video}",
                      "infer.draw=false"))
    summary = json.loads((root / "default" / "infer" / "clip" / "summary.json").read_text())
    assert summary["metrics"]["images"] == read
    assert summary["skipped"] == {"images": 0, "frames": declared - read}
    assert summary["video"] == {"declared_frames": declared, "frames": read, "missing_frames": declared - read}


@pytest.mark.parametrize(
    "values, finite",
    [
        (None, True),
        (3, True),
        (2.5, True),
        ([1, 2.0, 3], True),
        ([], True),
        ([[1.0, 2.0], [3, 4]], True),
        ([1e308, 1e308], True),  # finite values whose sum overflows: still finite
        ([1.0, float("nan")], False),
        ([float("inf"), 1.0], False),
        ([float("inf"), float("-inf")], False),  # their sum is NaN; each is non-finite
        ([[1.0], [float("nan")]], False),
        ([1, "2"], False),
        ([1, True], False),  # a bool where a number belongs
        ([np.float64(1.5), np.float64("nan")], False),  # numpy scalars take the element-wise path
        ([np.float64(1.5), 2], True),
        (True, False),
        ("1.0", False),
        ({"x": 1}, False),
    ],
)
def test_the_finiteness_check_of_annotation_numbers(values, finite):
    from posekit.data.annotations import _finite

    assert _finite(values) is finite
