"""``fit``: the Lightning run shared by the train and retrain stages.

Builds the data module, callbacks, loggers and Trainer from the config, resumes from ``last.ckpt`` when asked,
trains, and exports the best (else last) weights as a posekit model file. The stages add what differs (where
the network comes from, the stage folder, the summary).

Checkpoints (``<stage dir>/checkpoints``):
  * ``last.ckpt``: every epoch (or every ``train.checkpoint_every_n_steps`` steps), what a killed run resumes
    from. A separate ``ModelCheckpoint`` without a monitor writes it: Lightning 2.6's ``save_last`` on a
    monitored callback only refreshes ``last.ckpt`` when that callback also saves a top-k file, so it would go
    stale on epochs where the monitored value does not improve.
  * ``best.ckpt`` (``best-epochNNN.ckpt`` when ``train.save_top_k > 1``): by ``train.monitor``, checked on the
    epochs where that value is computed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, Timer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from posekit.config import ConfigError
from posekit.errors import UserError
from posekit.model.io import read_checkpoint, save_model
from posekit.train.callbacks import (
    EpochHistory,
    ProgressLog,
    StartupClock,
    ThroughputMeter,
    ValidationAP,
    planned_steps,
    snapshot,
)
from posekit.train.module import PoseModule

log = logging.getLogger("posekit.train")

LAST = "last"


@dataclass
class FitResult:
    """What a finished fit leaves (on global rank 0; other ranks get ``is_global_zero=False`` and nothing else)."""

    is_global_zero: bool
    model_path: Path | None = None
    weights: str | None = None  # "best" | "last": which checkpoint model.pt was written from
    last_ckpt: Path | None = None
    best_ckpt: Path | None = None
    monitor: str | None = None
    resumed_from: Path | None = None
    global_step: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- trainer settings
def resolve_accelerator(trainer_cfg: DictConfig) -> str:
    acc = str(trainer_cfg.accelerator)
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return acc


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions run natively (about 2x fp32 on such CPUs); without them oneDNN
    emulates bf16 and mixed precision is slower than fp32."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch API: absent = no
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``trainer.precision=auto``: bf16-mixed on a GPU with bf16 (Ampere+; else 16-mixed with loss scaling);
    on a CPU bf16-mixed where the CPU computes bf16 natively, else 32-true."""
    prec = str(trainer_cfg.precision)
    if prec != "auto":
        return prec
    if resolve_accelerator(trainer_cfg) in ("gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def runtime_precision(trainer_precision: str) -> str:
    """The torch backend precision validation AP runs at: the training autocast dtype."""
    if trainer_precision.startswith("bf16"):
        return "bf16"
    if trainer_precision.startswith("16"):
        return "fp16"
    return "fp32"


def slurm_plugins() -> list[Any]:
    """Under an srun-launched SLURM job: ``SLURMEnvironment(auto_requeue=False)``.

    submitit (``hydra/launcher=slurm``) installs its own pre-emption handler and requeues the job; Lightning's
    auto-requeue would race it for the same signal, so submitit owns requeueing and the re-run job resumes from
    ``last.ckpt`` (``train.resume=true``). Interactive allocations (``salloc`` shells) are left to Lightning's
    own process launcher, as ``SLURMEnvironment.detect()`` decides.
    """
    if "SLURM_JOB_ID" not in os.environ or "SLURM_NTASKS" not in os.environ:
        return []
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


@dataclass
class Validation:
    """Resolved validation settings: whether val loss / AP run, and what checkpoints monitor."""

    loss: bool
    ap: bool
    monitor: str
    mode: str
    every_n_epochs: int  # the epochs on which ``monitor`` is available (1 for train/loss)


def resolve_validation(cfg: DictConfig) -> Validation:
    """Validation on/off and the checkpoint monitor, with the fallbacks ``train.monitor`` documents.

    ``val/AP`` needs validation (``trainer.limit_val_batches`` > 0) and ``train.val_every_n_epochs`` >= 1 and
    ``train.val_max_images`` != 0; else the monitor falls back to ``val/loss`` (if validation runs) or
    ``train/loss``.
    """
    t, tr = cfg.train, cfg.trainer
    every_val = int(tr.check_val_every_n_epoch or 0)
    val_loss = tr.limit_val_batches not in (0, 0.0) and every_val >= 1
    ap = (
        val_loss
        and int(t.val_every_n_epochs or 0) >= 1
        and (t.val_max_images is None or int(t.val_max_images) > 0)
    )
    if ap and int(t.val_every_n_epochs) % every_val:
        raise ConfigError(
            f"train.val_every_n_epochs={t.val_every_n_epochs} must be a multiple of "
            f"trainer.check_val_every_n_epoch={every_val} (AP is computed during validation). "
            f"E.g. train.val_every_n_epochs={every_val * max(1, int(t.val_every_n_epochs) // every_val)}."
        )
    monitor = str(t.monitor)
    allowed = ("val/AP", "val/loss", "train/loss")
    if monitor not in allowed:
        raise ConfigError(f"train.monitor={monitor!r}: allowed values are {list(allowed)}")
    if monitor == "val/AP" and not ap:
        monitor = "val/loss" if val_loss else "train/loss"
    if monitor == "val/loss" and not val_loss:
        monitor = "train/loss"
    if monitor != str(t.monitor):
        log.info("train.monitor=%s is not computed with this config; checkpoints monitor %s", t.monitor, monitor)
    every = {"val/AP": int(t.val_every_n_epochs or 1), "val/loss": every_val, "train/loss": 1}[monitor]
    return Validation(val_loss, ap, monitor, "max" if monitor.endswith("AP") else "min", every)


# --------------------------------------------------------------------------------------------- AP evaluator
def coco_ap_evaluator(cfg: DictConfig, datamodule: Any, precision: str) -> Callable[[torch.nn.Module, torch.device], float]:
    """``(net, device) -> AP``: the real evaluator (decode + pycocotools) on up to ``train.val_max_images``
    val images, through a ``TorchBackend`` over the live network (no copy unless it is compiled)."""
    from posekit.evaluate.coco_eval import evaluate
    from posekit.runtime.backends import TorchBackend
    from posekit.runtime.predictor import Predictor

    input_hw = tuple(int(v) for v in cfg.model.input_shape)
    runtime_cfg = OmegaConf.merge(cfg.runtime, {"device": "auto", "cuda_graphs": False})
    compiled = bool(cfg.train.compile)

    def evaluate_ap(net: torch.nn.Module, device: torch.device) -> float:
        model = snapshot(net) if compiled else net
        backend = TorchBackend(
            model, device=str(device), precision=precision, channels_last=bool(cfg.train.channels_last),
            cuda_graphs=False,
        )
        predictor = Predictor(backend, datamodule.skeleton, cfg.codec, runtime_cfg, input_hw)
        metrics, _ = evaluate(
            predictor,
            datamodule.paths.val_ann,
            datamodule.paths.val_images,
            datamodule.skeleton,
            max_images=cfg.train.val_max_images,
            max_dets=int(cfg.eval.max_dets),
            progress=False,
        )
        ap = float(metrics.get("AP", -1.0))
        return ap if ap >= 0 else 0.0  # COCO's -1 (undefined: no ground truth) counts as nothing found

    return evaluate_ap


def run_length(trainer: pl.Trainer, global_step: int) -> dict[str, Any]:
    """The planned and the run optimizer steps, and whether (and why) the run stopped before the plan:
    ``trainer.max_time`` is a safety cap, so a run it cuts short is reported, never silently accepted."""
    planned = planned_steps(trainer)
    out: dict[str, Any] = {"planned_steps": planned, "stopped_early": None}
    if planned is not None and global_step < planned:
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        capped = timer is not None and (timer.time_remaining("train") or 0.0) <= 0
        out["stopped_early"] = "max_time" if capped else "interrupted"
        log.warning(
            "training stopped at step %d of the %d planned (%s): the schedule did not complete",
            global_step, planned, "trainer.max_time reached" if capped else "interrupted",
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- resume
def last_checkpoint(ckpt_dir: Path) -> Path | None:
    p = ckpt_dir / f"{LAST}.ckpt"
    return p if p.is_file() else None


def resumable(ckpt: Path, module: PoseModule) -> str | None:
    """None if ``ckpt`` holds the same network as ``module``; else what differs (architecture or pruned graph)."""
    blob = read_checkpoint(ckpt, hint="Move it away to start over, or run with train.resume=false.")
    hp = blob.get("hyper_parameters", {})
    if hp.get("arch") != module.hparams["arch"]:
        return "architecture (model.*)"
    if (hp.get("pruning_history") or None) != (module.hparams["pruning_history"] or None):
        return "pruned graph (pruning history)"
    return None


# --------------------------------------------------------------------------------------------- fit
def fit(
    cfg: DictConfig,
    stage_dir: Path,
    make_module: Callable[[], PoseModule],
    *,
    max_epochs: int,
    max_steps: int | None = None,
    max_time: str | None = None,
    model_meta: dict[str, Any] | None = None,
    on_arch_change: str = "error",
    extra_callbacks: Sequence[pl.Callback] = (),
) -> FitResult:
    """Train ``make_module()`` on ``PoseDataModule(cfg)``; write checkpoints, logs and ``model.pt`` under
    ``stage_dir``.

    The seed is set before the module is built, so initial weights, augmentation and shuffling repeat.
    ``model_meta`` is stored in ``model.pt`` next to the network (skeleton, input shape, source...).
    ``max_steps`` (default ``trainer.max_steps``) and ``max_epochs`` set the run's length, hence its schedule.
    ``max_time`` ("DD:HH:MM:SS", default ``trainer.max_time``) is a safety cap only: the schedule follows the
    steps, and a run the cap cuts short says so (``figures["stopped_early"]`` and a warning).
    ``extra_callbacks`` join posekit's own (diagnostics, benchmarks).
    ``on_arch_change``: what to do when ``last.ckpt`` holds another network than ``make_module()`` builds:
    ``"error"`` (train: a changed ``model.*`` in an existing experiment is most likely a mistake, and starting
    over would overwrite that run's checkpoints) or ``"restart"`` (retrain: the pruned model was re-made, the old
    fine-tuning is obsolete).
    """
    from posekit.data.datamodule import PoseDataModule

    startup = StartupClock()
    max_steps = int(cfg.trainer.max_steps if max_steps is None else max_steps)
    if max_epochs < 1 and max_steps < 1:
        raise ConfigError("nothing to train: set trainer.max_steps >= 1 (or retrain.max_steps) or trainer.max_epochs")
    pl.seed_everything(int(cfg.seed), workers=True)
    val = resolve_validation(cfg)
    datamodule = PoseDataModule(cfg)
    module = make_module()

    tr = cfg.trainer
    precision = resolve_precision(tr)
    ckpt_dir = stage_dir / "checkpoints"

    meter = ThroughputMeter()
    ap_cb = (
        ValidationAP(coco_ap_evaluator(cfg, datamodule, runtime_precision(precision)), int(cfg.train.val_every_n_epochs))
        if val.ap
        else None
    )
    history = EpochHistory(meter, ap_cb)
    every_steps = int(cfg.train.checkpoint_every_n_steps or 0)
    last_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=LAST,
        monitor=None,
        save_top_k=1,
        every_n_train_steps=every_steps or None,
        every_n_epochs=None if every_steps else 1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    top_k = int(cfg.train.save_top_k)
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best" if top_k == 1 else "best-epoch{epoch:03d}",
        monitor=val.monitor,
        mode=val.mode,
        save_top_k=top_k,
        every_n_epochs=val.every_n_epochs,
        save_on_train_epoch_end=val.monitor == "train/loss",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    progress = ProgressLog(int(cfg.train.progress_every_n_steps), enabled=not bool(tr.enable_progress_bar))
    callbacks = [startup, meter, progress, *([ap_cb] if ap_cb else []), history, last_cb, best_cb, *extra_callbacks]
    loggers = [
        CSVLogger(save_dir=str(stage_dir), name="csv"),
        TensorBoardLogger(save_dir=str(stage_dir), name="tensorboard", default_hp_metric=False),
    ]
    trainer = pl.Trainer(
        accelerator=resolve_accelerator(tr),
        devices=tr.devices,
        num_nodes=int(tr.num_nodes),
        strategy=tr.strategy,
        precision=precision,
        max_epochs=max_epochs,
        max_steps=max_steps,
        max_time=max_time if max_time is not None else tr.max_time,
        limit_train_batches=tr.limit_train_batches,
        limit_val_batches=tr.limit_val_batches if val.loss else 0,
        check_val_every_n_epoch=int(tr.check_val_every_n_epoch) if val.loss else 1,
        num_sanity_val_steps=int(tr.num_sanity_val_steps) if val.loss else 0,
        log_every_n_steps=int(tr.log_every_n_steps),
        accumulate_grad_batches=int(tr.accumulate_grad_batches),
        deterministic=bool(tr.deterministic),
        benchmark=tr.benchmark,
        sync_batchnorm=bool(tr.sync_batchnorm),
        enable_progress_bar=bool(tr.enable_progress_bar),
        profiler=cfg.debug.profiler,
        callbacks=callbacks,
        logger=loggers,
        plugins=slurm_plugins(),
        default_root_dir=str(stage_dir),
    )

    resume = last_checkpoint(ckpt_dir) if bool(cfg.train.resume) else None
    if resume is not None:
        differs = resumable(resume, module)
        if differs and on_arch_change == "restart":
            log.warning("%s holds another %s: starting over", resume, differs)
            resume = None
        elif differs:
            raise UserError(
                f"cannot resume from {resume}: it was trained with a different {differs} than this run. Start "
                "fresh with train.resume=false (overwrites its checkpoints), or use another experiment.name."
            )
        else:
            log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)

    # every rank takes part in the sum (a collective), before the other ranks return
    replaced = trainer.strategy.reduce(
        torch.as_tensor(module.replaced_samples, dtype=torch.float64, device=module.device), reduce_op="sum"
    )
    result = FitResult(
        is_global_zero=trainer.is_global_zero,
        monitor=val.monitor,
        resumed_from=resume,
        global_step=int(trainer.global_step),
    )
    if not trainer.is_global_zero:
        return result

    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    last = Path(last_cb.best_model_path) if last_cb.best_model_path else last_checkpoint(ckpt_dir)
    result.best_ckpt = best if best is not None and best.is_file() else None
    result.last_ckpt = last if last is not None and last.is_file() else None
    source = result.best_ckpt or result.last_ckpt
    if val.monitor == "val/AP" and best_cb.best_model_score is not None and float(best_cb.best_model_score) <= 0:
        # AP never rose above 0, so "best" is merely the first evaluated epoch: the last weights are better.
        log.info("val/AP stayed at 0: model.pt takes the last weights, not %s", result.best_ckpt)
        source = result.last_ckpt or source
    if source is None:
        raise UserError(f"training produced no checkpoint in {ckpt_dir} (0 steps run?); check trainer.* limits")
    result.weights = "best" if source == result.best_ckpt else "last"

    figures = history.summary()
    if ap_cb is not None and ap_cb.best is not None:
        figures["best_val_AP"] = ap_cb.best
    figures["global_step"] = result.global_step
    figures["startup"] = startup.phases()
    figures["monitor"] = val.monitor
    figures["best_monitor_value"] = float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
    figures.update(run_length(trainer, result.global_step))
    train_set = datamodule.train_set
    figures["data"] = {  # what the loader dropped or skipped: nothing silent (docs/errors.md)
        "train_images": getattr(train_set, "num_images", None),
        "train_samples": len(train_set) if train_set is not None else None,
        "dropped_annotations": getattr(train_set, "num_dropped_annotations", 0),
        "replaced_samples": int(replaced.item()),  # samples whose image was unreadable, replaced by the next one
    }
    if module.guard is not None:
        figures["guard"] = module.guard.summary()
    result.figures = figures

    # model.pt from the selected checkpoint's weights (rebuilt on the CPU, uncompiled). The checked read refuses
    # non-finite weights: the guard keeps such updates out, and this is the last line before an artifact that
    # other stages trust (model.pt is then not written).
    state = read_checkpoint(source, hint="model.pt was not written.")["state_dict"]
    net = snapshot(module.net).cpu()
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    meta = {
        **(model_meta or {}),
        "weights": result.weights,
        "checkpoint": source.name,
        "epochs": figures["epochs"],
        "best_val_AP": figures.get("best_val_AP"),
    }
    result.model_path = save_model(
        stage_dir / "model.pt", net, pruning_history=module.hparams["pruning_history"], **meta
    )
    log.info("wrote %s (%s weights)", result.model_path, result.weights)
    return result
