"""Training callbacks: throughput (images/s), validation AP through the real evaluator, per-epoch history.

Each keeps its figures in ``state_dict()`` (plain numbers only), so Lightning stores them in the checkpoint and a
resumed run's summary still covers the epochs before the interruption.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

log = logging.getLogger("posekit.train")

# (network, device) -> AP; called on global rank 0 only.
APEvaluator = Callable[[nn.Module, torch.device], float]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def planned_steps(trainer: Any) -> int | None:
    """The run's planned optimizer steps (``trainer.estimated_stepping_batches``), or None when unbounded."""
    total = trainer.estimated_stepping_batches
    return int(total) if isinstance(total, (int, float)) and math.isfinite(total) and total > 0 else None


def logging_step(trainer: Any) -> bool:
    """Whether Lightning writes this training step's metrics to the loggers: every ``trainer.log_every_n_steps``
    steps, and the step at which the run is told to stop (its ``should_update_logs``, which Lightning's own
    LearningRateMonitor and ThroughputMonitor check; True when the trainer has no such thing, as in unit tests).

    A step-only metric logged on any other step is never written, yet each ``self.log`` call costs the training
    process hundreds of microseconds of Python (about 0.3 ms on the 2-core VM, ``benchmarks.step_overhead``), and
    on a GPU the step waits for that CPU (docs/training.md, "Throughput"). So step-only metrics are logged on these
    steps alone; metrics with an epoch mean (``train/loss``) are logged every step.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


class DeviceScalars:
    """Per-step Python numbers for ``self.log`` without a host-to-device copy.

    Lightning turns a logged Python number into ``torch.tensor(value, device=cuda)``: a blocking copy that waits
    for every kernel queued so far. Logged inside ``training_step`` it stops the CPU from queueing the backward
    pass until the forward pass has run, so CPU and GPU take turns instead of overlapping. ``fill_`` with a
    Python scalar is an ordinary (asynchronous) kernel launch, so each value lives in a reused 0-d device tensor.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, value: float, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.device != device:
            buf = self._buffers[name] = torch.zeros((), device=device)
        return buf.fill_(float(value))


class ThroughputMeter(Callback):
    """Training images per second over all ranks, logged as ``train/images_per_s`` (running, per step).

    The clock starts when the first batch of an epoch ends, so data-loader start-up and the first (slow,
    autotuning / compiling) step are excluded; the rate is images after that over the wall time after that.
    """

    def __init__(self) -> None:
        self.epochs: list[float] = []  # final rate of each finished epoch
        self._t0: float | None = None
        self._images = 0
        self._scalars = DeviceScalars()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._images = None, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:
            _sync(pl_module.device)
            self._t0 = time.perf_counter()
            return
        self._images += int(batch["image"].shape[0]) * trainer.world_size
        rate = self.rate
        if rate is not None and logging_step(trainer):
            value = self._scalars("rate", rate, pl_module.device)
            pl_module.log("train/images_per_s", value, on_step=True, on_epoch=False, prog_bar=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        rate = self.rate
        if rate is not None:
            self.epochs.append(rate)

    @property
    def rate(self) -> float | None:
        if self._t0 is None or self._images == 0:
            return None
        return self._images / max(time.perf_counter() - self._t0, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = [float(v) for v in state_dict.get("epochs", [])]


class StartupClock(Callback):
    """Where a launch's seconds go before training runs at speed, logged once and kept for ``summary.json``.

    Phases, from ``t0`` (when ``fit()`` began): ``data_s`` building the datasets (annotations, main-person
    selection; generating the synthetic set on first use), ``trainer_s`` up to ``on_train_start`` (model to the
    device, strategy, optimizer, and Lightning creating the data iterator, which starts the loader workers),
    ``first_batch_s`` waiting for the first batch, ``first_step_s`` the first optimizer step (cuDNN autotuning,
    compilation). Lightning's ``max_time`` clock (a safety cap) starts at ``on_train_start``, so only the last two
    count against it.
    """

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0
        self.marks: dict[str, float] = {}

    def _mark(self, name: str) -> None:
        if name not in self.marks:  # called on every batch: no clock read once the mark is set
            self.marks[name] = time.perf_counter()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._mark("setup")  # Lightning calls the datamodule's setup() first

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("train_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._mark("first_batch")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if "first_step" in self.marks:
            return
        _sync(pl_module.device)
        self._mark("first_step")
        phases = self.phases()
        log.info(
            "start-up %.1f s: datasets %.1f s, trainer and loader workers %.1f s, first batch %.1f s, first step %.1f s",
            sum(phases.values()), *phases.values(),
        )  # fmt: skip

    def phases(self) -> dict[str, float]:
        """Seconds per phase (the phases reached so far; a missing mark counts as 0)."""
        names = ("setup", "train_start", "first_batch", "first_step")
        keys = ("data_s", "trainer_s", "first_batch_s", "first_step_s")
        out, prev = {}, self.t0
        for name, key in zip(names, keys):
            t = self.marks.get(name, prev)
            out[key] = round(max(0.0, t - prev), 3)
            prev = t
        return out


class ProgressLog(Callback):
    """A plain log line every ``every`` optimizer steps: step / planned, loss, images/s and ETA.

    For runs whose output goes to a file (SLURM, ``nohup``, CI): Lightning's progress bar redraws one terminal line
    and shows nothing useful there. ``enabled``: the trainer's progress bar is off; lines are also written when
    standard output is not a terminal.
    """

    def __init__(self, every: int, enabled: bool = False) -> None:
        self.every = int(every)
        self.enabled = enabled or not sys.stdout.isatty()
        self._t0: float | None = None
        self._step0 = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._step0 = time.perf_counter(), int(trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if not self.enabled or self.every <= 0 or step % self.every or not trainer.is_global_zero or self._t0 is None:
            return
        planned = planned_steps(trainer)
        elapsed = time.perf_counter() - self._t0
        done = step - self._step0
        rate = done * int(batch["image"].shape[0]) * trainer.world_size / elapsed if elapsed > 0 else 0.0
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        eta = (planned - step) * elapsed / done if planned and done > 0 else None
        log.info(
            "step %d%s  loss %s  %.0f images/s  ETA %s", step, f"/{planned}" if planned else "",
            f"{float(loss):.4g}" if loss is not None else "-", rate,
            "-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta)),
        )  # fmt: skip


class ValidationAP(Callback):
    """COCO keypoint AP of the live network on the val images, logged as ``val/AP``.

    Runs at the end of validation on epochs where ``(epoch + 1) % every_n_epochs == 0`` (never during the
    sanity check). Only global rank 0 evaluates; the value is broadcast so every rank logs the same number and
    ``ModelCheckpoint(monitor="val/AP")`` decides identically everywhere.
    """

    def __init__(self, evaluate: APEvaluator, every_n_epochs: int) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.evaluate = evaluate
        self.every_n_epochs = every_n_epochs
        self.history: list[tuple[int, float]] = []  # (epoch, AP)

    def due(self, epoch: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.due(trainer.current_epoch):
            return
        ap = float("nan")
        if trainer.is_global_zero:
            t0 = time.perf_counter()
            ap = float(self.evaluate(pl_module.net, pl_module.device))
            log.info("epoch %d: val/AP %.4f (%.1f s)", trainer.current_epoch, ap, time.perf_counter() - t0)
        ap = float(trainer.strategy.broadcast(ap, src=0))
        self.history.append((int(trainer.current_epoch), ap))
        pl_module.log("val/AP", ap, prog_bar=True, on_epoch=True, sync_dist=False)

    @property
    def best(self) -> float | None:
        values = [ap for _, ap in self.history if not math.isnan(ap)]
        return max(values) if values else None

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[e, ap] for e, ap in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(e), float(ap)) for e, ap in state_dict.get("history", [])]


class EpochHistory(Callback):
    """One record per finished epoch: train/val loss, val AP (when computed), images/s and wall time."""

    def __init__(self, meter: ThroughputMeter | None = None, ap: ValidationAP | None = None) -> None:
        self.meter = meter
        self.ap = ap
        self.records: list[dict[str, float | int | None]] = []
        self.wall_s = 0.0  # training wall time summed over (resumed) runs
        self._t0 = 0.0
        self._validated = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._validated = False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._t0
        self.wall_s += elapsed
        m = trainer.callback_metrics
        epoch = int(trainer.current_epoch)

        def value(key: str) -> float | None:
            v = m.get(key)
            return float(v) if v is not None else None

        ap = None
        if self.ap is not None and self.ap.history and self.ap.history[-1][0] == epoch:
            ap = self.ap.history[-1][1]
        rate = self.meter.epochs[-1] if self.meter is not None and self.meter.epochs else None
        self.records.append(
            {
                "epoch": epoch,
                "train_loss": value("train/loss_epoch"),
                "val_loss": value("val/loss") if self._validated else None,
                "val_AP": ap,
                "images_per_s": rate,
                "wall_s": elapsed,
            }
        )

    def summary(self) -> dict[str, Any]:
        """Figures for summary.json: first/final epoch train loss, best val/AP, median images/s, epochs, time."""
        losses = [r["train_loss"] for r in self.records if r["train_loss"] is not None]
        rates = sorted(r["images_per_s"] for r in self.records if r["images_per_s"] is not None)
        aps = [r["val_AP"] for r in self.records if r["val_AP"] is not None and not math.isnan(r["val_AP"])]
        return {
            "epochs": len(self.records),
            "first_epoch_train_loss": losses[0] if losses else None,
            "final_train_loss": losses[-1] if losses else None,
            "best_val_AP": max(aps) if aps else None,
            "final_val_AP": aps[-1] if aps else None,
            "images_per_s": rates[len(rates) // 2] if rates else None,
            "train_wall_s": self.wall_s,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records], "wall_s": self.wall_s}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.records = [dict(r) for r in state_dict.get("records", [])]
        self.wall_s = float(state_dict.get("wall_s", 0.0))


class RankRecord(Callback):
    """What this process trained on, for the summary's ``ranks`` list (one entry per global rank, see ``gather``):
    ``global_rank``, ``world_size``, ``cluster_environment`` (who set the ranks: ``SLURMEnvironment`` under
    srun, ``LightningEnvironment`` when Lightning started the processes itself), ``batches`` and ``images`` of
    this run (a resumed run counts its own), and ``first_epoch_indices``: the dataset indices the rank's
    ``DistributedSampler`` handed out for the batches it trained in this run's first epoch (recorded only under
    a distributed sampler of at most ``max_indices`` entries; reading a ``RandomSampler`` would draw from the RNG
    and change the run).
    """

    def __init__(self, max_indices: int = 4096) -> None:
        self.max_indices = max_indices
        self.batches = 0
        self.images = 0
        self._epoch_indices: list[int] | None = None
        self.first_epoch_indices: list[int] | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.utils.data import DistributedSampler

        sampler = getattr(trainer.train_dataloader, "sampler", None)
        first = self.first_epoch_indices is None and self._epoch_indices is None
        if first and isinstance(sampler, DistributedSampler) and len(sampler) <= self.max_indices:
            self._epoch_indices = [int(i) for i in sampler]  # deterministic: (seed, epoch, rank), no RNG draw

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches += 1
        self.images += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_indices is not None and self.first_epoch_indices is None:
            self.first_epoch_indices = self._epoch_indices[: self.images]  # the batch sampler takes them in order

    def record(self, trainer: pl.Trainer) -> dict[str, Any]:
        env = getattr(trainer.strategy, "cluster_environment", None)
        return {"global_rank": int(trainer.global_rank), "world_size": int(trainer.world_size),
                "cluster_environment": type(env).__name__ if env is not None else None,
                "batches": self.batches, "images": self.images, "first_epoch_indices": self.first_epoch_indices}

    def gather(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        """Every rank's ``record`` (a collective: all ranks must call it), ordered by global rank."""
        mine = self.record(trainer)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return [mine]
        records: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(records, mine)
        return sorted(records, key=lambda r: r["global_rank"])


def snapshot(net: nn.Module) -> nn.Module:
    """An independent fp32 eval-mode copy of ``net`` for evaluation (never mutates the training weights;
    a ``net.compile()``-d module copies uncompiled)."""
    return copy.deepcopy(net).float().eval()
