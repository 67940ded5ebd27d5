"""The LightningModule shared by the train and retrain stages.

It holds the network as ``self.net`` and saves only plain containers as hyperparameters (``arch``,
``pruning_history``, ``meta``, ``optim``, ...), so its checkpoints load with ``torch.load(weights_only=True)``
and ``posekit.model.load_model`` reads them directly (state-dict keys ``net.*``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from posekit.config import GuardConfig, TrainConfig
from posekit.data.images import normalize_tensor
from posekit.model.bpnet import BpNetLite, build_model
from posekit.train.callbacks import DeviceScalars, logging_step, planned_steps
from posekit.train.guard import StepGuard
from posekit.train.loss import add_l1_subgradient, bn_scales, conv_kernels, l1_penalty, pose_loss
from posekit.train.optim import build_optimizer


def plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain dicts/lists/str (what ``weights_only=True`` can unpickle); others as given."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    return obj


def build_network(
    arch: Mapping[str, Any], pruning_history: Sequence | None = None, head_init: str = TrainConfig.head_init
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
        head_init: str = TrainConfig.head_init,
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
        self.l1_kernels = str(optim.get("l1_kernels", "all"))
        self.l1_ramp = float(optim.get("l1_ramp", 0.0))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()
        # The step guard (clipping, skipped non-finite/exploding steps, the per-step record); built with the
        # optimizer, when the planned step count (for the warm-up's length) is known.
        self.guard: StepGuard | None = None
        self._guard_state: dict[str, Any] | None = None
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's (micro-)batch losses
        self._batch_size = 1
        self._params: list[torch.Tensor] | None = None
        self.replaced_samples: torch.Tensor | int = 0  # training samples replaced because their image was unreadable
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
        # The step's loss goes to the guard, which logs it (train/loss, with its epoch mean) once it knows the step
        # is kept: a non-finite or exploding step must not turn the epoch mean, which checkpoints and
        # summary.json use, into NaN. The L1 terms are added to the gradients in on_before_optimizer_step.
        self._step_losses.append(loss.detach())
        self._batch_size = int(batch["image"].shape[0])
        if "replaced" in batch:  # samples the loader passed over for unreadable images; summed on the device
            self.replaced_samples = self.replaced_samples + batch["replaced"].detach().sum()
        # The per-stage terms and the learning rate are logged only on the steps Lightning writes (logging_step:
        # each call costs CPU the GPU waits for).
        if logging_step(self.trainer):
            bs = self._batch_size
            self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False, batch_size=bs)
            group = self.trainer.optimizers[0].param_groups[0]
            lr = self._scalars("lr", group["lr"] / group.get("lr_mult", 1.0), loss.device)  # no host->device sync
            self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _trainable(self) -> list[torch.Tensor]:
        if self._params is None:  # listed once, not every step
            self._params = [p for p in self.net.parameters() if p.requires_grad]
        return self._params

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The step guard, then the L1 regularizers. Lightning calls this once per optimizer step, after the
        backward pass (and after unscaling under fp16), before the update.

        1. Guard (:mod:`posekit.train.guard`): the loss gradient's global norm decides whether the update is applied
           (non-finite or exploding: every gradient set to None, so the optimizer and its moments leave the step
           out); kept steps are clipped to the guard's bound (``optim.guard.clip_factor`` x the running median,
           and ``optim.grad_clip`` if set). ``train/grad_norm`` logs the pre-clip norm, ``train/skipped_steps`` the
           running count.
        2. L1 (``optim.l1_kernel_reg`` on the conv kernels ``optim.l1_kernels`` names, ``optim.l1_bn_gamma`` on
           the BN scales), applied as their subgradient ``factor * sign(W)`` added to the gradients: the gradient autograd would give for
           ``factor * sum|W|`` in the loss (TAO's formulation), as a few fused ``_foreach`` kernels instead of an abs
           and a sum per tensor forward and backward. Added after clipping: the regularizer's pull is bounded by
           construction, and the clip is there for the data term.
        """
        params = self._trainable()
        with_grad = [p for p in params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        losses, self._step_losses = self._step_losses, []
        if not grads or not losses:
            return
        loss = torch.stack(losses).float().mean()
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        log = logging_step(self.trainer)
        if self.guard is not None:
            loss_value, norm_value = torch.stack([loss, norm]).tolist()  # the one host sync of the step
            verdict = self.guard.check(int(self.trainer.global_step), loss_value, norm_value)
            if verdict.skip:
                for p in params:
                    p.grad = None
                self.print(
                    f"step {self.trainer.global_step}: update skipped ({verdict.reason}: loss {loss_value:.4g}, "
                    f"gradient norm {norm_value:.4g}, running median {verdict.median})"
                )
                self.log("train/skipped_steps", self._scalars("skipped", self.guard.skipped, norm.device),
                         on_step=True, on_epoch=False, batch_size=1)
                return
            if verdict.reason and self.guard.spike_run == self.guard.spike_patience + 1:
                self.print(
                    f"step {self.trainer.global_step}: the gradient norm stayed above "
                    f"{self.guard.spike_factor:g}x its running median for {self.guard.spike_run} steps "
                    f"({norm_value:.4g} against {verdict.median:.4g}): applying clipped updates from here"
                )
            if verdict.max_norm is not None:
                torch.nn.utils.clip_grads_with_norm_(with_grad, verdict.max_norm, norm)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=self._batch_size)
        if log:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
            if self.guard is not None:
                self.log("train/skipped_steps", self._scalars("skipped", self.guard.skipped, norm.device),
                         on_step=True, on_epoch=False, batch_size=1)
        self._add_l1(log)

    def _add_l1(self, log: bool) -> None:
        if self.l1_factor <= 0 and self.l1_gamma <= 0:
            return
        if self._l1_groups is None:  # the network's tensors, listed once rather than walking its modules every step
            self._l1_groups = [
                (name, factor, tensors)
                for name, factor, tensors in (
                    ("train/l1", self.l1_factor, conv_kernels(self.net, self.l1_kernels)),
                    ("train/l1_bn_gamma", self.l1_gamma, bn_scales(self.net)),
                )
                if factor > 0
            ]
        ramp = self._l1_ramp_factor()
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
        """Share of the planned optimizer steps done: a function of the step alone, never of the clock."""
        total = planned_steps(self.trainer)
        return min(1.0, max(0.0, self.trainer.global_step / total)) if total else 0.0

    def _l1_ramp_factor(self) -> float:
        """``optim.l1_ramp``: the L1 factors rise linearly from 0 over that share of the planned steps (0: full from
        the first step, as TAO). Letting the network find its features before the regularizers pull is meant
        against the all-background plateau that strong L1 from step 0 can hold a short run on."""
        if self.l1_ramp <= 0:
            return 1.0
        return min(1.0, self._progress() / self.l1_ramp)

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.guard is not None:
            checkpoint["posekit_guard"] = self.guard.state_dict()
        checkpoint["posekit_replaced_samples"] = int(self.replaced_samples)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.replaced_samples = int(checkpoint.get("posekit_replaced_samples", 0))
        self._guard_state = checkpoint.get("posekit_guard")
        if self.guard is not None and self._guard_state is not None:
            self.guard.load_state_dict(self._guard_state)

    def configure_optimizers(self) -> dict[str, Any]:
        total = planned_steps(self.trainer)
        if total is None:  # the schedules are fractions of the whole run, so the run must have a known length
            raise ValueError(
                f"cannot build the learning-rate schedule: {self.trainer.estimated_stepping_batches} optimizer steps. "
                "Set trainer.max_steps (or trainer.max_epochs >= 1)."
            )
        optim = self.hparams["optim"]
        opt, sched = build_optimizer(self.net, optim, total, self.hparams["lr_scale"])
        self.guard = build_guard(optim, total)
        if self._guard_state is not None:  # on_load_checkpoint ran before the optimizer existed
            self.guard.load_state_dict(self._guard_state)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def build_guard(optim: Mapping[str, Any], total_steps: int) -> StepGuard:
    """The step guard from ``optim.grad_clip`` and ``optim.guard.*``; the loss-spike figure starts after the
    warm-up (``optim.warmup`` of the planned steps)."""
    guard = GuardConfig(**dict(optim.get("guard") or {}))  # keys left out take GuardConfig's defaults
    return StepGuard(
        clip=optim.get("grad_clip"),
        clip_factor=float(guard.clip_factor),
        spike_factor=float(guard.spike_factor),
        window=int(guard.window),
        min_history=int(guard.min_history),
        max_consecutive=int(guard.max_consecutive),
        spike_patience=int(guard.spike_patience),
        warmup_steps=int(round(float(optim.get("warmup", 0.0)) * total_steps)),
    )
