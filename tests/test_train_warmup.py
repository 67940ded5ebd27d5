"""The device warm-up (``train.warmup_device``): it runs real forward and backward passes on a copy, and leaves
the run alone: the network's weights, BatchNorm statistics and gradients, and the global RNG streams."""

from __future__ import annotations

import random
import threading

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


# ------------------------------------------------------------------ train.compile: compiled beside training
@pytest.fixture
def eager_compile(monkeypatch):
    """``nn.Module.compile`` with dynamo's eager backend (no C++ toolchain, seconds), gated by ``gate`` and logged
    in ``calls`` (the module's class name)."""
    calls, gate = [], threading.Event()
    gate.set()
    original = torch.nn.Module.compile

    def compile_(self, *args, **kwargs):
        calls.append(type(self).__name__)
        assert gate.wait(30)
        return original(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    return calls, gate


def test_a_compiling_warmup_runs_an_eager_pass_and_signals_it_before_the_compile(eager_compile):
    calls, _ = eager_compile
    order = []
    net = _net()
    rec = warm_passes(net, (1, 3, 32, 32), "cpu", compile=True, passes=2,
                      on_eager=lambda: order.append(("eager ready", len(calls))))
    assert order == [("eager ready", 0)] and calls == ["BpNetLite"]  # the signal comes before the compile
    assert len(rec["eager_seconds"]) == 1 and len(rec["seconds"]) == 2
    assert "_compiled_call_impl" not in net.__dict__  # the copy compiled, not the network


class _Trainer:
    global_step = 0


class _Module:
    def __init__(self) -> None:
        self.net = _net()


def test_training_starts_eager_and_switches_to_the_compiled_network_once_the_copy_is_compiled(eager_compile):
    """The first step waits for the eager pass only; the real network is compiled in place at the first batch
    boundary after the copy's compile, and the record says after how many eager steps."""
    from posekit.train.warmup import JoinDeviceWarmup

    calls, gate = eager_compile
    gate.clear()  # the copy's compile blocks until released
    pl_module, trainer = _Module(), _Trainer()
    warmup = DeviceWarmup(pl_module.net, batch_shape=(1, 3, 32, 32), device="cpu", compile=True, passes=1).start()
    join = JoinDeviceWarmup(warmup)
    join.on_train_start(trainer, pl_module)  # returns although the compile has not finished
    assert warmup.eager_ready.is_set() and not warmup.done()
    trainer.global_step = 3
    join.on_train_batch_start(trainer, pl_module, None, 0)
    assert "_compiled_call_impl" not in pl_module.net.__dict__  # still eager
    gate.set()
    warmup.join()
    trainer.global_step = 4
    join.on_train_batch_start(trainer, pl_module, None, 0)
    assert "_compiled_call_impl" in pl_module.net.__dict__ and calls == ["BpNetLite", "BpNetLite"]
    assert warmup.record["eager_steps"] == 4 and "error" not in warmup.record
    out = pl_module.net(torch.zeros(1, 3, 32, 32))  # the compiled network runs
    assert len(out) > 0
    join.on_train_batch_start(trainer, pl_module, None, 0)  # once only
    assert calls == ["BpNetLite", "BpNetLite"]


@pytest.mark.parametrize("fails_in, compiled", [("compile", False), ("eager", True)])
def test_a_failed_warmup_leaves_the_run_eager_only_when_the_compile_failed(monkeypatch, fails_in, compiled):
    """A compile that failed on the copy would fail on the network: it stays eager. An eager pass that failed
    (say, out of memory) says nothing about the compile: the network is compiled at the switch, as without the
    warm-up."""
    from posekit.train.warmup import JoinDeviceWarmup

    def compile_(self, *args, **kwargs):
        if fails_in == "compile":
            raise RuntimeError("no compiler")
        self.__dict__["_compiled_call_impl"] = self._call_impl  # stand-in: marks the network compiled

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    pl_module, trainer = _Module(), _Trainer()
    shape = (1, 5, 32, 32) if fails_in == "eager" else (1, 3, 32, 32)  # 5 channels: the eager pass fails
    warmup = DeviceWarmup(pl_module.net, batch_shape=shape, device="cpu", compile=True, passes=1).start()
    join = JoinDeviceWarmup(warmup)
    join.on_train_start(trainer, pl_module)
    warmup.join()
    join.on_train_batch_start(trainer, pl_module, None, 0)
    assert warmup.record["error_in"] == fails_in
    assert ("_compiled_call_impl" in pl_module.net.__dict__) is compiled


def test_fit_trains_eager_while_the_copy_compiles(tmp_path, monkeypatch, eager_compile):
    """The wiring in fit(): with train.compile on a warm-up device (the CPU stands in for the one GPU), the network
    is eager when training starts and compiled after the copy; the summary records the switch."""
    import importlib
    import json

    from posekit.stages import run_stage
    from tests.conftest import compose

    fit_mod = importlib.import_module("posekit.train.fit")  # the module (posekit.train re-exports the function)

    calls, _ = eager_compile
    seen = []
    monkeypatch.setattr(fit_mod, "single_gpu_device", lambda trainer_cfg: torch.device("cpu"))
    original = warmup_mod.JoinDeviceWarmup.on_train_start

    def on_start(self, trainer, pl_module):
        seen.append("_compiled_call_impl" in pl_module.net.__dict__)
        return original(self, trainer, pl_module)

    monkeypatch.setattr(warmup_mod.JoinDeviceWarmup, "on_train_start", on_start)
    root = tmp_path / "exp"
    run_stage(compose("stage=train", "preset=tiny", f"experiment.root={root}", "experiment.name=c", "train.compile=true",
                      f"data.synthetic.cache_dir={tmp_path / 'cache'}", "data.synthetic.workers=1",
                      "trainer.limit_val_batches=0", "trainer.limit_train_batches=6", "trainer.max_epochs=2"))
    summary = json.loads((root / "c" / "train" / "summary.json").read_text())
    rec = summary["figures"]["device_warmup"]
    assert seen == [False]  # eager at the start, although train.compile is on
    assert "error" not in rec and len(rec["eager_seconds"]) == 1 and 0 <= rec["eager_steps"] <= 12
    # PoseModule's own (lazy: nothing is compiled before a forward, and fit() takes it back), the copy, the switch
    assert calls == ["BpNetLite"] * 3
