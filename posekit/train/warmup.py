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
Without ``train.compile`` the thread is joined before the first real step (:class:`JoinDeviceWarmup`), so the
two never share the GPU.

With ``train.compile`` the compile is taken off the critical path too. It took about 40 s on an H100 (run 21,
docs/results.md), longer than the data set-up it hid behind, so the first step waited for it. Now the copy runs one
eager pass first (cuDNN tuning and kernel loading, which eager and compiled steps share), and the first real step
waits only for that. Training then runs the eager network while the copy compiles; when the copy's compiled passes
are done, :class:`JoinDeviceWarmup` compiles the real network in place at the next batch boundary, and its first
compiled step finds Inductor's caches filled (1-3 s instead of 40). The maths is the same either way; the eager
steps are slower (about 15%), not different. A failure in the thread is logged and the run goes on: the first step
then pays as it did before, or the run stays eager if the compile failed. The thread is a daemon: a run that fails
before training (a bad data path) reports at once and does not wait for it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from posekit.data.stream import one_process

log = logging.getLogger("posekit.train")


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a network output (tensors, lists and tuples of them, nested)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def warm_passes(
    net: nn.Module,
    batch_shape: tuple[int, int, int, int],
    device: torch.device | str,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    passes: int = 2,
    seed: int = 0,
    copy_net: bool = True,
    cudnn_benchmark: bool | None = None,
    on_eager: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``passes`` forward and backward passes of a copy of ``net`` on random uint8 images.

    Args:
        net: the network as training will run it (its weights are copied, never written).
        batch_shape: (B, 3, H, W) of a training batch.
        device: where the copy runs (the training device).
        autocast_dtype: the autocast dtype of the training step (bf16-mixed: torch.bfloat16), None for fp32.
        channels_last: the training memory format.
        compile: ``torch.compile`` the copy as ``train.compile`` compiles the real network, after one eager pass
            (which tunes cuDNN and loads the kernels, for the eager steps that run while this compiles).
        passes: forward + backward passes (the first tunes and compiles; the second checks it is done).
        seed: the random images' own generator.
        copy_net: False when ``net`` is already a private copy (:class:`DeviceWarmup` takes it in the caller's
            thread); it is then moved and its gradients filled.
        cudnn_benchmark: ``trainer.benchmark``, set here before the first pass (None: left as it is). The Trainer
            sets the same flag when it is built, but the thread may reach its first convolution before that, and
            a pass without it would tune nothing.
        on_eager: called once the network can run eager at speed: after the eager pass with ``compile``, else
            after the last pass.

    Returns:
        ``{"passes", "seconds": [per pass], "device"}``, and with ``compile`` ``"eager_seconds"``: the eager
        pass before the compiled ones.
    """
    from posekit.data.images import normalize_tensor

    device = torch.device(device)
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    work = copy.deepcopy(net) if copy_net else net
    work.__dict__.pop("_compiled_call_impl", None)  # nn.Module.compile() of the original: the copy compiles its own
    work.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    work.to(memory_format=memory_format)
    work.train()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randint(0, 256, batch_shape, generator=gen, dtype=torch.uint8).to(device)

    def one_pass() -> float:
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = work(normalize_tensor(images).contiguous(memory_format=memory_format))
            loss = sum(o.float().square().mean() for o in _tensors(out))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return round(time.perf_counter() - t, 3)

    record: dict[str, Any] = {"passes": passes, "device": str(device)}
    if compile:
        record["eager_seconds"] = [one_pass()]
        if on_eager is not None:
            on_eager()
        work.compile()
    record["seconds"] = [one_pass() for _ in range(passes)]
    if on_eager is not None and not compile:
        on_eager()
    del work, images
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the copy's memory back (training may be running beside it)
    return record


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (``bf16-mixed`` -> bfloat16, ``16-mixed`` -> float16)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


class DeviceWarmup:
    """:func:`warm_passes` in a background thread. :meth:`join_eager` waits until eager steps run at speed,
    :meth:`join` for the whole warm-up; both return its record. ``compile=True``: the compile runs after the eager
    pass, beside training (:class:`JoinDeviceWarmup` switches the real network over when it is done)."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        # the copy is taken now, in the caller's thread, before training moves the weights to the device
        self._net = copy.deepcopy(net)
        self._net.__dict__.pop("_compiled_call_impl", None)  # shared with the original by deepcopy: drop it
        self._kwargs = kwargs
        self.compiles = bool(kwargs.get("compile", False))
        self.record: dict[str, Any] = {}
        self.eager_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="posekit-device-warmup", daemon=True)

    def start(self) -> DeviceWarmup:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _eager_done(self) -> None:
        self.record["eager_wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.eager_ready.set()

    def _run(self) -> None:
        try:
            self.record.update(warm_passes(self._net, copy_net=False, on_eager=self._eager_done, **self._kwargs))
        except Exception as e:  # noqa: BLE001 - a failed warm-up costs time, never the run
            self.record["error"] = f"{type(e).__name__}: {e}"
            # in the copy's compile: the real network would most likely fail the same way, so it stays eager
            self.record["error_in"] = "compile" if self.eager_ready.is_set() else "eager"
            log.warning("train.warmup_device: the warm-up failed (%s); %s", e,
                        "the network stays eager" if self.eager_ready.is_set() else "the first step will tune"
                        + (" and compile" if self.compiles else ""))
        finally:
            self._net = None
            self.record["wall_s"] = round(time.perf_counter() - self._t0, 3)
            self.eager_ready.set()

    def done(self) -> bool:
        return not self._thread.is_alive() and self._thread.ident is not None

    def join_eager(self) -> dict[str, Any]:
        """Wait until eager steps run at speed (the eager pass; without ``compile`` the whole warm-up); the record
        gains ``waited_s``, what that cost on the critical path."""
        t = time.perf_counter()
        self.eager_ready.wait()
        self.record["waited_s"] = round(time.perf_counter() - t, 3)
        return self.record

    def join(self) -> dict[str, Any]:
        """Wait for the whole warm-up; ``{"passes", "seconds", "device", "wall_s", "waited_s"}`` (or ``"error"``)."""
        t = time.perf_counter()
        self._thread.join()
        self.record.setdefault("waited_s", round(time.perf_counter() - t, 3))
        return self.record


class JoinDeviceWarmup(pl.Callback):
    """Joins the warm-up at ``on_train_start``: after the data module's set-up (the wait the warm-up hides in),
    before the first real step. With a compiling warm-up it waits only for the eager pass, and compiles the real
    network in place (``net.compile()``) at the first batch boundary after the copy's compile has finished."""

    def __init__(self, warmup: DeviceWarmup) -> None:
        self.warmup = warmup
        self._t_start = 0.0
        self.switched = not warmup.compiles

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_start = time.perf_counter()
        if not self.warmup.compiles:
            rec = self.warmup.join()
            if "error" not in rec:
                log.info(
                    "device warm-up: %d passes (%s s) in %.1f s beside the data set-up; the first step waited %.1f s",
                    rec["passes"], ", ".join(f"{s:.1f}" for s in rec["seconds"]), rec["wall_s"], rec["waited_s"],
                )  # fmt: skip
            return
        rec = self.warmup.join_eager()
        if "eager_seconds" in rec:
            log.info("device warm-up: eager pass %.1f s (%.1f s after the start); the first step waited %.1f s for it; "
                     "training starts eager while the copy compiles", rec["eager_seconds"][0], rec["eager_wall_s"],
                     rec["waited_s"])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.switched or not self.warmup.done():
            return
        self.switched = True
        rec = self.warmup.record
        rec["eager_steps"] = int(trainer.global_step)
        rec["eager_train_s"] = round(time.perf_counter() - self._t_start, 3)
        if rec.get("error_in") == "compile":
            log.warning("train.compile: the network stays eager (the warm-up's compile failed: %s)", rec["error"])
            return
        pl_module.net.compile()  # in place; the first compiled step finds the copy's kernels in Inductor's caches
        if "error" in rec:  # the eager pass failed: compile now, on the critical path, as without the warm-up
            log.info("train.compile: compiling at step %d (the warm-up failed before its compile)", trainer.global_step)
        else:
            log.info("train.compile: compiled in the background in %.1f s (passes %s s); the network runs compiled "
                     "from step %d", rec["wall_s"], ", ".join(f"{s:.1f}" for s in rec["seconds"]), trainer.global_step)


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
