"""The device warm-up (``train.warmup_device``): it runs real forward and backward passes on a copy, and leaves
the run alone: the network's weights, BatchNorm statistics and gradients, and the global RNG streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from posekit.model import BpNetLite
from posekit.train import warmup as warmup_mod
from posekit.train.warmup import DeviceWarmup, autocast_dtype, single_gpu_device, warm_passes


def _net() -> BpNetLite:
    torch.manual_seed(0)
    return BpNetLite(stages=2, num_heatmaps=7, num_pafs=10, width=0.125)


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_warm_passes_leave_the_network_and_the_rng_streams_alone():
    net = _net()
    before, rng = _state(net), _rng_states()
    record = warm_passes(net, (2, 3, 64, 64), "cpu", channels_last=True, passes=2, seed=3)
    assert record["passes"] == 2 and len(record["seconds"]) == 2 and all(s > 0 for s in record["seconds"])
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and BN running statistics (num_batches_tracked too)
        assert torch.equal(v, after[k]), k
    assert all(p.grad is None for p in net.parameters())
    torch_state, np_state, py_state = _rng_states()
    assert torch.equal(torch_state, rng[0]) and np.array_equal(np_state, rng[1]) and py_state == rng[2]


def test_warm_passes_run_backward_through_the_copy():
    net = _net()
    seen = []
    # a module backward hook on the last conv: deepcopy copies it with the module, so it fires in the copy's backward
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.register_full_backward_hook(lambda mod, gin, gout: seen.append(gout[0].abs().sum().item()))
    warm_passes(net, (1, 3, 32, 32), "cpu", passes=2)
    assert len(seen) == 2 and all(v > 0 for v in seen)


def test_the_background_warmup_joins_with_a_record_and_a_failure_does_not_raise():
    net = _net()
    before = _state(net)
    rec = DeviceWarmup(net, batch_shape=(1, 3, 32, 32), device="cpu", passes=1).start().join()
    assert rec["passes"] == 1 and rec["wall_s"] >= rec["seconds"][0] and rec["waited_s"] >= 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    bad = DeviceWarmup(net, batch_shape=(1, 5, 32, 32), device="cpu").start().join()  # 5 channels: the conv refuses
    assert "error" in bad and "wall_s" in bad


def test_autocast_dtype_follows_the_lightning_precision():
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("16-mixed") is torch.float16
    assert autocast_dtype("32-true") is None


@pytest.mark.parametrize(
    "trainer, expected",
    [
        ({"accelerator": "gpu", "devices": 1}, torch.device("cuda", 0)),
        ({"accelerator": "gpu", "devices": "1"}, torch.device("cuda", 0)),
        ({"accelerator": "gpu", "devices": [1]}, torch.device("cuda", 1)),
        ({"accelerator": "gpu", "devices": 2}, None),  # DDP: each rank would need its own warm-up
        ({"accelerator": "gpu", "devices": "auto"}, None),
        ({"accelerator": "gpu", "devices": 1, "num_nodes": 2}, None),
        ({"accelerator": "cpu", "devices": 1}, None),
    ],
)
def test_only_one_gpu_runs_warm_up(monkeypatch, trainer, expected):
    monkeypatch.setattr(warmup_mod.torch.cuda, "is_available", lambda: True)
    assert single_gpu_device(OmegaConf.create(trainer)) == expected


def test_no_warmup_without_cuda(monkeypatch):
    monkeypatch.setattr(warmup_mod.torch.cuda, "is_available", lambda: False)
    assert single_gpu_device(OmegaConf.create({"accelerator": "auto", "devices": 1})) is None


def test_the_warmup_sets_cudnn_benchmark_before_its_first_pass(monkeypatch):
    """trainer.benchmark reaches cuDNN before the warm-up's first convolution: the Trainer, which sets the same flag,
    may be built only after the thread has started."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []
    net = _net()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda mod, inp: seen.append(torch.backends.cudnn.benchmark))
    warm_passes(net, (1, 3, 32, 32), "cpu", passes=1, cudnn_benchmark=True)
    assert seen == [True]
    warm_passes(net, (1, 3, 32, 32), "cpu", passes=1, cudnn_benchmark=None)  # None: left as it is
    assert seen == [True, True]
