"""Warm the GPU up while the data set is still being prepared (``train.warmup_device``, posekit's addition).

Why: on a cold start the first optimizer step of ``preset=gpu`` took 12.5-13.1 s on an H100 (docs/results.md,
"Time to AP 0.80"): cuDNN autotuning every convolution (``trainer.benchmark``), loading the CUDA kernels, and, with
``train.compile``, compiling. All of it waited until the synthetic set was generated and indexed, although none of
it needs the data. This module runs the same work on a copy of the network in a background thread while the data
module waits for its data: forward and backward passes at the training batch shape, memory format and autocast
dtype, on random images. The autotuning results, the loaded kernels and the compiled graphs are kept per process
(per shape and dtype; Inductor's caches per graph), so the real first step finds them.

What it must not do, and does not: change the run. The copy is taken before training starts and dropped after,
with the gradients and BatchNorm statistics its passes wrote; the real network never runs in it. The random images
come from their own generator, so the global RNG streams (initial weights, augmentation, shuffling) are untouched.
The thread is joined before the first real step (:class:`JoinDeviceWarmup`), so the two never share the GPU. A
failure in it is logged and the run goes on: the first step then pays as it did before. The thread is a daemon: a
run that fails before training (a bad data path) reports at once and does not wait for it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from posekit.data.stream import one_process
from posekit.model.warm import uncompiled, warm_passes

log = logging.getLogger("posekit.train")


class DeviceWarmup:
    """:func:`warm_passes` in a background thread; :meth:`join` waits for it and returns its record."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        # the copy is taken now, in the caller's thread, before training moves the weights to the device
        self._net = uncompiled(copy.deepcopy(net))
        self._kwargs = kwargs
        self.record: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="posekit-device-warmup", daemon=True)

    def start(self) -> DeviceWarmup:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.record = warm_passes(self._net, copy_net=False, **self._kwargs)
        except Exception as e:  # noqa: BLE001 - a failed warm-up costs time, never the run
            self.record = {"error": f"{type(e).__name__}: {e}"}
            log.warning("train.warmup_device: the warm-up failed (%s); the first step will tune and compile", e)
        finally:
            self._net = None
            self.record["wall_s"] = round(time.perf_counter() - self._t0, 3)

    def join(self) -> dict[str, Any]:
        """Wait for the warm-up; ``{"passes", "seconds", "device", "wall_s", "waited_s"}`` (or ``"error"``)."""
        t = time.perf_counter()
        self._thread.join()
        self.record["waited_s"] = round(time.perf_counter() - t, 3)  # what it cost on the critical path
        return self.record


class JoinDeviceWarmup(pl.Callback):
    """Joins the warm-up at ``on_train_start``: after the data module's set-up (the wait the warm-up hides in),
    before the first real step."""

    def __init__(self, warmup: DeviceWarmup) -> None:
        self.warmup = warmup

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rec = self.warmup.join()
        if "error" not in rec:
            log.info(
                "device warm-up: %d passes (%s s) in %.1f s beside the data set-up; the first step waited %.1f s for it",
                rec["passes"], ", ".join(f"{s:.1f}" for s in rec["seconds"]), rec["wall_s"], rec["waited_s"],
            )  # fmt: skip


def single_gpu_device(trainer_cfg: Any) -> torch.device | None:
    """The one CUDA device a run trains on, or None: no CUDA, not a GPU accelerator, or more than one device
    (under DDP each rank would have to warm its own device; the warm-up is for the one-GPU start-up)."""
    from posekit.train.trainer import resolve_accelerator

    if not torch.cuda.is_available() or resolve_accelerator(trainer_cfg) not in ("gpu", "cuda"):
        return None
    if not one_process(trainer_cfg):
        return None
    devices = trainer_cfg.get("devices", 1)
    return torch.device("cuda", 0 if isinstance(devices, (int, str)) else int(list(devices)[0]))
