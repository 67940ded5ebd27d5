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
from posekit.model.warm import autocast_dtype, warm_passes
from posekit.train.warmup import DeviceWarmup, single_gpu_device


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


# ------------------------------------------------------------------------ train.compile_prefill (a second process)
class _Tiny:
    """A LightningModule around ``_net()`` (its ``net`` is what the prefill compiles), and a callback that stops
    training a few steps after the prefill's outcome is known, so the test never races the process."""

    @staticmethod
    def module():
        import pytorch_lightning as pl

        class Tiny(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = _net()

            def training_step(self, batch, batch_idx):
                heats, pafs = self.net(batch[0])
                return sum(t.float().square().mean() for t in heats + pafs)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=1e-4)

        return Tiny()

    @staticmethod
    def fit(module, callback, steps_after: int = 3):
        import pytorch_lightning as pl
        from torch.utils.data import DataLoader, TensorDataset

        class StopAfterOutcome(pl.Callback):
            known_at: int | None = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if self.known_at is None and {"switched_at_step", "stayed_eager"} & callback.record.keys():
                    self.known_at = trainer.global_step
                if self.known_at is not None and trainer.global_step >= self.known_at + steps_after:
                    trainer.should_stop = True

        data = DataLoader(TensorDataset(torch.rand(8, 3, 64, 64)), batch_size=2)
        trainer = pl.Trainer(accelerator="cpu", max_steps=100_000, max_epochs=-1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[callback, StopAfterOutcome()])
        trainer.fit(module, data)
        return trainer


@pytest.mark.slow
def test_the_prefill_process_compiles_while_training_runs_eager_then_the_net_compiles_in_place(tmp_path):
    """The second process compiles a copy (dynamo's ``eager`` backend here: the mechanism, not Inductor's caches, which
    benchmarks/compile_cache.py measures); training runs eager meanwhile and compiles in place at a batch
    boundary once the process has exited, then trains on."""
    from posekit.train.compile_prefill import CompileAfterPrefill, CompilePrefill

    module = _Tiny.module()
    prefill = CompilePrefill(module.net, pruning_history=None, batch_shape=(2, 3, 64, 64), device="cpu",
                             backend="eager")
    spec_dir = prefill._dir
    callback = CompileAfterPrefill(prefill.start())
    trainer = _Tiny.fit(module, callback)
    rec = callback.record
    assert rec["prefill"]["rc"] == 0 and len(rec["prefill"]["seconds"]) == 1, rec
    assert rec["switched_at_step"] >= 1  # eager steps ran while the process compiled (it takes seconds to start)
    assert "_compiled_call_impl" in module.net.__dict__  # compiled in place: state-dict keys unchanged
    assert all(not k.startswith("_orig_mod") for k in module.net.state_dict())
    assert rec["first_compiled_step_s"] > 0
    assert trainer.global_step == rec["switched_at_step"] + 3  # it trained on, compiled
    assert not spec_dir.exists()  # the copy's file and spec are removed


def test_a_failed_prefill_leaves_the_run_eager_and_says_so(caplog):
    import time
    from types import SimpleNamespace

    from posekit.train.compile_prefill import CompileAfterPrefill, CompilePrefill

    net = _net()
    # 4-channel images into a 3-channel network: the process fails, as a prefill that cannot compile would
    prefill = CompilePrefill(net, pruning_history=None, batch_shape=(2, 4, 64, 64), device="cpu", backend="eager")
    callback = CompileAfterPrefill(prefill.start())
    trainer, module = SimpleNamespace(global_step=7), SimpleNamespace(net=net)
    deadline = time.monotonic() + 300
    while prefill.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    with caplog.at_level("WARNING", logger="posekit.train"):
        callback.on_train_batch_end(trainer, module, None, None, 7)  # the batch boundary after it exited
    rec = callback.record
    assert rec["stayed_eager"] and rec["prefill"]["rc"] != 0, rec
    assert "channels" in rec["prefill"]["error"]  # the process's own error, passed on
    assert "training stays eager" in caplog.text
    assert "_compiled_call_impl" not in net.__dict__
    callback.on_train_batch_end(trainer, module, None, None, 8)  # decided once: no second look, no compile
    assert "_compiled_call_impl" not in net.__dict__ and "switched_at_step" not in rec
