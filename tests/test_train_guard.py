"""Robust training: gradient clipping, the step guard (skipped non-finite / exploding updates), a schedule that is a
function of the step alone, and a killed-and-resumed run that follows the uninterrupted run's learning rates.

None of these tests depends on the machine's speed: runs are bounded in steps, and the one wall-clock setting
(``trainer.max_time``) is exercised precisely to show that it does not change the schedule.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from posekit.errors import UserError
from posekit.train.guard import RunningMedian, StepGuard, TrainingDiverged
from posekit.train.module import PoseModule

from tests.conftest import ROOT

ARCH = dict(stages=2, num_heatmaps=3, num_pafs=2, width=0.125)


def optim(**extra):
    base = dict(name="adamw", lr=1e-3, weight_decay=0.0, schedule="cosine", warmup=0.1, min_lr=1e-6,
                stagewise_lr=False, l1_kernel_reg=0.0, l1_bn_gamma=0.0, grad_clip=None,
                guard=dict(clip_factor=0.0, spike_factor=0.0, window=20, min_history=5, max_consecutive=3))
    base.update(extra)
    return base


class Batches(Dataset):
    """Random 32x32 images with random targets; items listed in ``poison`` have a NaN target (a non-finite loss)."""

    def __init__(self, n: int, poison: frozenset[int] = frozenset()):
        self.n, self.poison = n, poison

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        heat = torch.rand(3, 4, 4, generator=g)
        if i in self.poison:
            heat[0, 0, 0] = float("nan")
        return {"image": torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8), "heatmaps": heat,
                "pafs": torch.rand(2, 4, 4, generator=g), "mask": torch.ones(1, 4, 4)}


def fit_tiny(tmp_path: Path, module: PoseModule, data: Dataset, callbacks=(), max_steps: int | None = None):
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=max_steps or len(data), accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1, callbacks=list(callbacks), default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(data, batch_size=1))
    return trainer


# --------------------------------------------------------------------------------------------- the guard, alone
def test_running_median_over_a_window():
    m = RunningMedian(3)
    for v in (5.0, 1.0, 3.0):
        m.add(v)
    assert m.median == 3.0
    m.add(10.0)  # 5 leaves the window: {1, 3, 10}
    assert m.median == 3.0 and len(m) == 3
    m.add(11.0)  # {3, 10, 11}
    assert m.median == 10.0


def test_guard_skips_non_finite_and_spikes_and_stops_after_too_many_non_finite_in_a_row():
    g = StepGuard(clip=1.0, spike_factor=5.0, window=10, min_history=3, max_consecutive=2,
                  clip_factor=0.0, spike_patience=20)
    for step in range(3):
        assert not g.check(step, loss=10.0, norm=2.0).skip
    v = g.check(3, loss=10.0, norm=9.0)  # 4.5x the median: kept (and clipped by the caller)
    assert not v.skip
    v = g.check(4, loss=10.0, norm=11.0)  # 5.5x the median of {2, 2, 2, 9}: a spike
    assert v.skip and v.reason == "spike" and v.median == 2.0
    v = g.check(5, loss=float("nan"), norm=3.0)
    assert v.skip and v.reason == "non-finite"
    v = g.check(6, loss=1.0, norm=float("inf"))
    assert v.skip and g.skipped == 3 and g.consecutive == 2
    with pytest.raises(TrainingDiverged, match="3 optimizer steps in a row") as e:
        g.check(7, loss=float("inf"), norm=1.0)
    assert isinstance(e.value, UserError) and "weights_only" not in str(e.value)
    assert "optim.lr" in str(e.value)  # says what to change


def test_a_spike_that_outlasts_the_patience_is_applied_clipped_and_the_median_follows_it():
    # seed 2 of preset=gpu (docs/training.md, "A spike that persists"): the norm jumped 16x and stayed there; skipped
    # steps leave the weights as they are, so skipping every one of them could only end in TrainingDiverged
    g = StepGuard(clip_factor=3.0, spike_factor=10.0, window=20, min_history=5, spike_patience=3,
                  max_consecutive=2)
    for step in range(10):
        g.check(step, loss=100.0, norm=1.0)
    verdicts = [g.check(10 + k, loss=200.0, norm=16.0) for k in range(30)]
    assert [v.skip for v in verdicts[:4]] == [True, True, True, False]  # patience 3, then applied
    assert all(v.reason == "spike" for v in verdicts[:3])
    applied = verdicts[3:]
    assert all(not v.skip for v in applied)  # no TrainingDiverged, although max_consecutive is 2
    assert applied[0].reason == "persistent spike" and applied[0].max_norm == pytest.approx(3.0)  # 3 x the old median
    # the kept norms join the median: once they are the majority of the window the level is the new normal
    assert applied[-1].median == pytest.approx(16.0) and applied[-1].reason == ""
    assert g.summary()["skipped_steps"] == 3
    assert 0 < g.summary()["persistent_spike_steps"] < 27
    # an isolated spike later is skipped again: the streak counter starts over
    assert not g.check(100, loss=100.0, norm=16.0).skip
    assert g.check(101, loss=100.0, norm=500.0).skip


def test_the_relative_clip_bound_follows_the_running_median_and_the_absolute_one_caps_it():
    g = StepGuard(clip_factor=3.0, min_history=3, window=10,
                  spike_factor=0.0, max_consecutive=20, spike_patience=20)
    assert [g.check(s, 1.0, 2.0).max_norm for s in range(3)] == [None, None, None]  # no history yet: no bound
    assert g.check(3, 1.0, 4.0).max_norm == pytest.approx(6.0)  # 3 x median {2, 2, 2}
    capped = StepGuard(clip=5.0, clip_factor=3.0, min_history=3, window=10,
                  spike_factor=0.0, max_consecutive=20, spike_patience=20)
    assert capped.check(0, 1.0, 2.0).max_norm == 5.0  # the absolute bound holds from the first step
    for s in range(1, 4):
        capped.check(s, 1.0, 2.0)
    assert capped.check(4, 1.0, 2.0).max_norm == 5.0  # min(5, 3 x 2)


def test_guard_summary_finds_loss_spikes_after_the_warm_up():
    g = StepGuard(window=10, min_history=5, warmup_steps=20,
                  clip_factor=0.0, spike_factor=0.0, max_consecutive=20, spike_patience=20)
    losses = [100.0 - i for i in range(40)]
    losses[10] = 1000.0  # in the warm-up: not counted
    losses[30] = 4 * losses[29]  # after it: 4x the running median
    for step, loss in enumerate(losses):
        g.check(step, loss=loss, norm=1.0)
    s = g.summary()
    assert s["loss_spikes"] == 1 and s["max_loss_ratio_step"] == 30
    assert s["max_loss_ratio"] == pytest.approx(losses[30] / 75.5, rel=1e-4)  # median of steps 20..29: 80..71
    assert s["skipped_steps"] == 0 and s["loss_ratio_after_step"] == 20


def test_guard_state_survives_a_checkpoint():
    g = StepGuard(window=10, min_history=2, clip_factor=0.0, spike_factor=0.0, max_consecutive=20,
                  spike_patience=20)
    for step in range(5):
        g.check(step, loss=float(step), norm=1.0 + step)
    h = StepGuard(window=10, min_history=2, clip_factor=0.0, spike_factor=0.0, max_consecutive=20,
                  spike_patience=20)
    h.load_state_dict(json.loads(json.dumps(g.state_dict())))  # plain numbers only (weights_only checkpoints)
    assert h.steps == g.steps and h.norms.median == g.norms.median


# --------------------------------------------------------------------------------------------- in a real fit
def test_the_clip_value_reaches_the_optimizer_step(tmp_path, monkeypatch):
    """optim.grad_clip: the gradient the optimizer steps with has at most that norm, and the logged pre-clip norm is
    the larger, unclipped one."""
    clip = 0.5
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self, closure=None):
        def then_record():  # Lightning's closure: forward, backward, then on_before_optimizer_step (the guard)
            loss = closure()
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))))
            return loss

        return step(self, then_record)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    module = PoseModule(ARCH, optim(grad_clip=clip), head_init="tao")
    fit_tiny(tmp_path, module, Batches(6))
    pre_clip = [r[2] for r in module.guard.steps]
    assert len(seen) == 6 and min(pre_clip) > 10 * clip  # the summed loss's gradient is far above 0.5
    assert max(seen) <= clip * (1 + 1e-4)
    assert module.guard.summary()["clipped_steps"] == 6

    free = PoseModule(ARCH, optim(grad_clip=None), head_init="tao")
    seen.clear()
    fit_tiny(tmp_path, free, Batches(6))
    assert min(seen) > 10 * clip  # without the clip the optimizer gets the raw gradient


def test_a_non_finite_loss_is_skipped_counted_and_training_goes_on(tmp_path):
    module = PoseModule(ARCH, optim(), head_init="tao")
    trainer = fit_tiny(tmp_path, module, Batches(8, poison=frozenset({3})))
    assert trainer.global_step == 8  # the schedule counted the skipped step too
    s = module.guard.summary()
    assert s["skipped_steps"] == 1 and s["skipped"][0][0] == 3
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    # the kept steps' mean loss: the epoch mean that checkpoints and summary.json use is not NaN
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    # the skipped step left the optimizer's state alone: AdamW counted 7 updates, not 8
    state = next(iter(trainer.optimizers[0].state.values()))
    assert int(state["step"]) == 7


def test_consecutive_non_finite_steps_stop_the_run_with_a_clear_error(tmp_path):
    module = PoseModule(ARCH, optim(), head_init="tao")  # max_consecutive=3
    with pytest.raises(TrainingDiverged, match="4 optimizer steps in a row were skipped as non-finite"):
        fit_tiny(tmp_path, module, Batches(10, poison=frozenset({2, 3, 4, 5, 6})))


# --------------------------------------------------------------------------------------------- kill and resume
TINY = ("stage=train", "preset=tiny", "trainer.max_epochs=100", "trainer.max_steps=40",
        "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=0", "train.val_every_n_epochs=0",
        "train.checkpoint_every_n_steps=5", "trainer.log_every_n_steps=1", "data.synthetic.num_train=40",
        "train.progress_every_n_steps=10")


def _launch(root: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *TINY, f"experiment.root={root}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lr_by_step(train_dir: Path) -> dict[int, float]:
    """train/lr per step from every (resumed) run's CSV log; a later run's value for a step wins."""
    out: dict[int, float] = {}
    for f in sorted((train_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with f.open() as fh:
            for row in csv.DictReader(fh):
                if row.get("train/lr"):
                    out[int(row["step"])] = float(row["train/lr"])
    return out


@pytest.mark.slow
def test_a_killed_and_resumed_run_follows_the_uninterrupted_learning_rate_curve(tmp_path):
    """SIGKILL after the first step checkpoint, then the same command again: the learning rate at every step equals
    an uninterrupted run's. The uninterrupted run has a (distant) time cap and the killed one none, and a third run
    is cut short by a tiny cap: the cap stops a run early (and its summary says so) but never changes the rate at a
    step."""
    whole = _launch(tmp_path / "whole", "trainer.max_time=00:01:00:00")
    out = whole.communicate(timeout=900)[0]
    assert whole.returncode == 0, out
    # output to a pipe, not a terminal: a progress line every train.progress_every_n_steps steps
    progress = re.findall(r"step (\d+)/40  loss [\d.]+  \d+ images/s  ETA \d\d:\d\d:\d\d", out)
    assert progress == ["10", "20", "30", "40"], out[-3000:]
    reference = _lr_by_step(tmp_path / "whole" / "default" / "train")
    assert sorted(reference) == list(range(40))

    killed = _launch(tmp_path / "killed")
    ckpt = tmp_path / "killed" / "default" / "train" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 5 <= step_at_kill < 40

    again = _launch(tmp_path / "killed")
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out
    summary = json.loads((tmp_path / "killed" / "default" / "train" / "summary.json").read_text())
    assert summary["metrics"]["global_step"] == 40 and summary["figures"]["stopped_early"] is None
    resumed = _lr_by_step(tmp_path / "killed" / "default" / "train")
    common = sorted(set(resumed) & set(reference))
    assert len(common) >= 39 and max(common) == 39
    for step in common:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6), step

    capped = _launch(tmp_path / "capped", "trainer.max_time=00:00:00:01")
    out = capped.communicate(timeout=900)[0]
    assert capped.returncode == 0, out
    s = json.loads((tmp_path / "capped" / "default" / "train" / "summary.json").read_text())
    if s["metrics"]["global_step"] < 40:  # a machine fast enough to finish 40 steps in 1 s shows nothing here
        assert s["figures"]["stopped_early"] == "max_time" and "planned" in out
        cut = _lr_by_step(tmp_path / "capped" / "default" / "train")
        for step in cut:
            assert cut[step] == pytest.approx(reference[step], rel=1e-6), step


# --------------------------------------------------------------------------------------------- honest summaries
@pytest.mark.slow
def test_the_train_summary_counts_samples_replaced_for_an_unreadable_image(tmp_path, coco_sample):
    """The loader replaces a sample whose image cannot be read by the next readable one; the workers' own counters
    are out of the training process's sight, so every batch carries the count and summary.json has the total."""
    import shutil

    from tests.conftest import run_cli

    data = tmp_path / "coco"
    shutil.copytree(coco_sample, data)
    (data / "000000196141.jpg").write_bytes(b"not a jpeg")  # 4 of the sample's 12 training samples
    ann = data / "test_coco.json"
    run_cli("stage=train", "preset=tiny", "data=coco", f"data.train_ann={ann}", f"data.train_images={data}",
            f"data.val_ann={ann}", f"data.val_images={data}", f"experiment.root={tmp_path}",
            "trainer.limit_train_batches=1.0", "trainer.limit_val_batches=0", "train.val_every_n_epochs=0")
    s = json.loads((tmp_path / "default" / "train" / "summary.json").read_text())
    assert s["figures"]["data"]["train_samples"] == 12 and s["figures"]["data"]["train_images"] == 4
    assert s["metrics"]["replaced_samples"] == 4 and s["metrics"]["dropped_annotations"] == 0
    assert s["metrics"]["global_step"] == 3  # one epoch of 12 samples in batches of 4: nothing lost
