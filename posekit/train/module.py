"""The LightningModule shared by the train and retrain stages.

It holds the network as ``self.net`` and saves only plain containers as hyperparameters (``arch``,
``pruning_history``, ``meta``, ``optim``, ...), so its checkpoints load with ``torch.load(weights_only=True)``
and ``posekit.model.load_model`` reads them directly (state-dict keys ``net.*``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import Timer

from posekit.data.images import normalize_tensor
from posekit.model.bpnet import BpNetLite, build_model
from posekit.train.callbacks import DeviceScalars, logging_step
from posekit.train.loss import add_l1_subgradient, bn_scales, conv_kernels, l1_penalty, pose_loss
from posekit.train.optim import build_optimizer


def plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain dicts/lists/str (what ``weights_only=True`` can unpickle); others as given."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    return obj


def build_network(
    arch: Mapping[str, Any], pruning_history: Sequence | None = None, head_init: str = "tao"
) -> BpNetLite:
    """A fresh (randomly initialized) network of ``arch`` with ``head_init`` heads (``BpNetLite.init_heads``),
    pruned by ``pruning_history`` if given."""
    net = build_model(arch)  # heads already initialized the TAO way
    if head_init != "tao":
        net.init_heads(head_init)
    if pruning_history:
        from posekit.prune.history import apply_pruning_history

        apply_pruning_history(net, pruning_history)
    return net


class PoseModule(pl.LightningModule):
    """BpNetLite + TAO's loss + an optimizer recipe.

    Args:
        arch: ``BpNetLite.arch`` (stages, num_heatmaps, num_pafs, width).
        optim: the ``optim`` config section as a plain dict (``posekit.config.OptimConfig``).
        pruning_history: Torch-Pruning history of a pruned network (retrain), replayed on construction.
        meta: free-form facts saved with the model (skeleton name, input shape, ...).
        channels_last: run the network in NHWC memory format (faster convolutions on GPUs).
        compile: ``self.net.compile()`` (in place, so state-dict keys stay ``net.*``).
        lr_scale: multiplies ``optim.lr`` and ``optim.min_lr`` (retrain).
        head_init: ``kaiming`` | ``tao``, for a network built here (``BpNetLite.init_heads``); ignored with ``net``.
        config: the resolved run config, stored for provenance only.
        net: an already-built network (retrain passes the loaded pruned model); not a hyperparameter.

    Batches are dicts: ``image`` (B, 3, H, W), ``heatmaps`` (B, J+1, h, w), ``pafs`` (B, 2L, h, w),
    ``mask`` (B, 1, h, w).
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        optim: Mapping[str, Any],
        pruning_history: Sequence | None = None,
        meta: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        lr_scale: float = 1.0,
        head_init: str = "tao",
        config: Mapping[str, Any] | None = None,
        net: BpNetLite | None = None,
    ):
        super().__init__()
        arch, optim, pruning_history, meta, config = map(plain, (arch, optim, pruning_history, meta, config))
        self.save_hyperparameters(
            {
                "arch": dict(arch),
                "optim": dict(optim),
                "pruning_history": pruning_history,
                "meta": dict(meta or {}),
                "channels_last": bool(channels_last),
                "compile": bool(compile),
                "lr_scale": float(lr_scale),
                "head_init": str(head_init),
                "config": config,
            }
        )
        self.net = net if net is not None else build_network(arch, pruning_history, head_init)
        self.l1_factor = float(optim.get("l1_kernel_reg", 0.0))
        self.l1_gamma = float(optim.get("l1_bn_gamma", 0.0))
        self.l1_ramp = float(optim.get("l1_ramp", 0.0))
        self._clock: Callable[[], float] | None = None  # the time box's share used (set with the optimizer)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()
        # Seconds of the time budget spent before the first step had ended (cuDNN autotuning), summed over resumed
        # runs; the schedule's clock leaves them out (_time_fraction).
        self._startup_s = 0.0
        self._elapsed_at_start: float | None = None
        self._stepping = False
        self._scalars = DeviceScalars()
        self._l1_groups: list[tuple[str, float, list[torch.Tensor]]] | None = None  # (log name, factor, tensors)

    # ------------------------------------------------------------------ forward / loss
    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x (B, 3, H, W): uint8 RGB as the loader ships it (normalized here, on the device) or already normalized
        float -> per-stage heatmaps (B, J+1, h, w) and PAFs (B, 2L, h, w)."""
        return self.net(normalize_tensor(x).contiguous(memory_format=self.memory_format))

    def _loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        heats, pafs = self(batch["image"])
        return pose_loss(heats, pafs, batch["heatmaps"], batch["pafs"], batch["mask"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self._loss(batch)
        bs = batch["image"].shape[0]
        # train/loss is the data term (comparable with val/loss across recipes); the L1 terms are added to the
        # gradients in on_before_optimizer_step and logged there. Its epoch mean needs every step; the per-stage
        # terms and the learning rate are logged only on the steps Lightning writes (logging_step: each call costs
        # CPU the GPU waits for).
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        if logging_step(self.trainer):
            self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False, batch_size=bs)
            group = self.trainer.optimizers[0].param_groups[0]
            lr = self._scalars("lr", group["lr"] / group.get("lr_mult", 1.0), loss.device)  # no host->device sync
            self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The L1 regularizers (``optim.l1_kernel_reg`` on every conv kernel, ``optim.l1_bn_gamma`` on the BN
        scales), applied as their subgradient ``factor * sign(W)`` added to the gradients.

        That is the gradient autograd would give for ``factor * sum|W|`` added to the loss (TAO's formulation), so
        the optimizer, gradient clipping and accumulation see the same numbers; Lightning calls this hook once per
        optimizer step, after unscaling. Done here, it is a few fused ``_foreach`` kernels instead of an
        abs and a sum per tensor in the forward pass and their gradients in the backward pass.
        """
        if self.l1_factor <= 0 and self.l1_gamma <= 0:
            return
        if self._l1_groups is None:  # the network's tensors, listed once rather than walking its modules every step
            self._l1_groups = [
                (name, factor, tensors)
                for name, factor, tensors in (
                    ("train/l1", self.l1_factor, conv_kernels(self.net)),
                    ("train/l1_bn_gamma", self.l1_gamma, bn_scales(self.net)),
                )
                if factor > 0
            ]
        ramp = self._l1_ramp_factor()
        log = logging_step(self.trainer)
        for name, factor, tensors in self._l1_groups:
            if log:  # the penalty itself is only for the logs: computed on the steps Lightning writes
                self.log(name, ramp * factor * l1_penalty(tensors), on_step=True, on_epoch=False, batch_size=1)
            add_l1_subgradient(tensors, ramp * factor)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, parts = self._loss(batch)
        bs = batch["image"].shape[0]
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bs)
        last = len(parts) // 2
        self.log_dict(
            {f"val/stage{last}/{k}": parts[f"stage{last}/{k}"] for k in ("heat", "paf")},
            on_epoch=True,
            sync_dist=True,
            batch_size=bs,
        )

    def _progress(self) -> float:
        """Share of the run done: steps / planned steps, or the time box's share when that is further."""
        total = self.trainer.estimated_stepping_batches
        p = self.trainer.global_step / total if isinstance(total, int) and total > 0 else 0.0
        if self._clock is not None:
            p = max(p, self._clock())
        return min(1.0, max(0.0, p))

    def _l1_ramp_factor(self) -> float:
        """``optim.l1_ramp``: the L1 factors rise linearly from 0 over that share of the run (0: full from the first
        step, as TAO). Letting the network find its features before the regularizers pull is meant against the
        all-background plateau that strong L1 from step 0 can hold a short run on."""
        if self.l1_ramp <= 0:
            return 1.0
        return min(1.0, self._progress() / self.l1_ramp)

    # ------------------------------------------------------------------ optimizer
    def _timer(self) -> Timer | None:
        return next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)

    def _time_fraction(self) -> Callable[[], float] | None:
        """Share of ``trainer.max_time`` used by training steps so far: (elapsed - start-up) / (budget - start-up).

        Lightning's Timer counts from ``on_train_start`` (after the loader workers and the first batch) and keeps its
        elapsed time across resumes. Start-up here is what the box spends before the first step has finished: that
        step autotunes every convolution (``cudnn.benchmark``) and, with ``train.compile``, compiles.
        Counted in, those seconds would consume a short warm-up before the optimizer had taken a few steps, and the
        next steps would run at the peak learning rate (the likely cause of the 3.5 min H200 run's all-background
        plateau). Like :class:`ThroughputMeter`, the clock starts when the first step ends.
        """
        timer = self._timer()
        if timer is None:
            return None

        def fraction() -> float:
            if not self._stepping:
                return 0.0
            elapsed = timer.time_elapsed("train") - self._startup_s
            budget = elapsed + (timer.time_remaining("train") or 0.0)
            return elapsed / budget if budget > 0 else 0.0

        return fraction

    def on_train_start(self) -> None:
        timer = self._timer()
        self._elapsed_at_start = timer.time_elapsed("train") if timer is not None else None
        self._stepping = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._stepping:  # the first step of this process has ended: everything before it was start-up
            timer = self._timer()
            if timer is not None and self._elapsed_at_start is not None:
                self._startup_s += max(0.0, timer.time_elapsed("train") - self._elapsed_at_start)
            self._stepping = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["posekit_startup_s"] = float(self._startup_s)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._startup_s = float(checkpoint.get("posekit_startup_s", 0.0))

    def configure_optimizers(self) -> dict[str, Any]:
        total = self.trainer.estimated_stepping_batches
        if not isinstance(total, int) or total <= 0:
            # The schedules are fractions of the whole run, so the run must have a known length.
            raise ValueError(
                f"cannot build the learning-rate schedule: {total} optimizer steps. "
                "Set trainer.max_epochs (>= 1) or trainer.max_steps."
            )
        self._clock = self._time_fraction()
        opt, sched = build_optimizer(self.net, self.hparams["optim"], total, self.hparams["lr_scale"], self._clock)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
