"""``+callbacks=ema``: an exponential moving average of the weights (Lightning's EMAWeightAveraging) through
posekit's own train stage: snapshots, checkpoints and model.pt hold the average, the live training is left alone,
and a resumed run continues the average instead of starting it again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

DECAY = 0.5  # far from 1, so every step's weight shows in the average
# preset=tiny: 3 optimizer steps an epoch; a snapshot after every step
RUN = ("stage=train", "preset=tiny", "callbacks.weight_snapshots.every_n_steps=1")


def _float_state(path: Path) -> dict[str, torch.Tensor]:
    """The floating-point tensors of a posekit model file (weights and BatchNorm statistics), in float64."""
    from posekit.model import load_model

    net, _ = load_model(path)
    return {k: v.double() for k, v in net.state_dict().items() if v.is_floating_point()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _train_then_resume(root: Path, *extra: str) -> tuple[Path, str]:
    """One epoch, then the same command with two epochs (it resumes from last.ckpt); the stage folder and the second
    run's output."""
    run_cli(*RUN, f"experiment.root={root}", *extra)
    second = run_cli(*RUN, f"experiment.root={root}", "trainer.max_epochs=2", *extra)
    return root / "default" / "train", second.stdout + second.stderr


@pytest.mark.slow
def test_ema_is_the_average_of_the_live_weights_across_a_resume_and_leaves_training_alone(tmp_path):
    # the same two runs, without and with the average: the training is deterministic on the CPU, so the first one's
    # snapshots are the live weights the second one averages
    live, _ = _train_then_resume(tmp_path / "live", "+callbacks=weight_snapshots")
    ema, out = _train_then_resume(tmp_path / "ema", "+callbacks=[ema,weight_snapshots]", f"callbacks.ema.decay={DECAY}")
    assert "Restored all states from the checkpoint" in out
    assert "not created with WeightAveraging" not in out  # the average came back from last.ckpt with the weights

    steps = sorted(int(p.stem[5:]) for p in (live / "snapshots").glob("step-*.pt"))
    assert steps == [1, 2, 3, 4, 5, 6]
    expected = None
    for step in steps:
        w = _float_state(live / "snapshots" / f"step-{step:07d}.pt")
        # torch.optim.swa_utils: the first update copies, then a <- decay * a + (1 - decay) * w
        expected = dict(w) if expected is None else {k: DECAY * expected[k] + (1 - DECAY) * w[k] for k in w}
        got = _float_state(ema / "snapshots" / f"step-{step:07d}.pt")
        assert _max_diff(got, expected) < 1e-5, step  # across the resume (3 -> 4) too: it was not restarted
        if step > 1:
            assert _max_diff(got, w) > 1e-3, step  # and it is not the live weights
    assert _max_diff(_float_state(ema / "model.pt"), expected) < 1e-5

    # the averaging never touched the weights being trained: last.ckpt keeps them beside the average
    ckpt = torch.load(ema / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = {k[len("net."):]: v.double() for k, v in ckpt["current_model_state"].items()
               if k.startswith("net.") and v.is_floating_point()}
    assert _max_diff(trained, _float_state(live / "model.pt")) < 1e-6
    assert _max_diff(trained, _float_state(live / "snapshots" / "step-0000006.pt")) < 1e-6
