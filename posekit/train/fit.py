"""``fit``: the Lightning run shared by the train and retrain stages.

Builds the data module, callbacks and Trainer (``posekit.train.trainer``: ``trainer:`` passed through to
``pl.Trainer``) from the config, resumes from ``last.ckpt`` when asked, trains, and exports the best (else last)
weights as a posekit model file. ``fit`` reads as its pieces: seeding, :func:`resolve_validation`,
:func:`run_callbacks`, ``build_trainer``, :func:`resume_from`, then :func:`select_weights`, :func:`run_figures`
and :func:`export_model`. The stages add what differs (where
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, Timer

from posekit.errors import UserError
from posekit.model.io import read_checkpoint, save_model
from posekit.model.warm import autocast_dtype, uncompiled
from posekit.train.callbacks import (
    EpochHistory,
    ProgressLog,
    RankRecord,
    StartupClock,
    ThroughputMeter,
    ValidationAP,
    planned_steps,
    snapshot,
)
from posekit.train.compile_prefill import CompileAfterPrefill, CompilePrefill
from posekit.train.module import PoseModule
from posekit.train.trainer import build_trainer, resolve_precision, runtime_precision
from posekit.train.warmup import DeviceWarmup, JoinDeviceWarmup, single_gpu_device

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


# --------------------------------------------------------------------------------------------- validation
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
    ``train/loss``. ``config.validate`` has checked the values (monitor, cadence).
    """
    t, tr = cfg.train, cfg.trainer  # the values were checked by posekit.config.validate
    every_val = int(tr.check_val_every_n_epoch or 0)
    val_loss = tr.limit_val_batches not in (0, 0.0) and every_val >= 1
    ap = (
        val_loss
        and int(t.val_every_n_epochs or 0) >= 1
        and (t.val_max_images is None or int(t.val_max_images) > 0)
    )
    monitor = str(t.monitor)
    if monitor == "val/AP" and not ap:
        monitor = "val/loss" if val_loss else "train/loss"
    if monitor == "val/loss" and not val_loss:
        monitor = "train/loss"
    if monitor != str(t.monitor):
        log.info("train.monitor=%s is not computed with this config; checkpoints monitor %s", t.monitor, monitor)
    every = {"val/AP": int(t.val_every_n_epochs or 1), "val/loss": every_val, "train/loss": 1}[monitor]
    return Validation(val_loss, ap, monitor, "max" if monitor.endswith("AP") else "min", every)


# --------------------------------------------------------------------------------------------- AP evaluator
def coco_ap_evaluator(
    cfg: DictConfig, datamodule: Any, precision: str
) -> Callable[[torch.nn.Module, torch.device], float]:
    """``(net, device) -> AP``: the real evaluator (decode + pycocotools) on up to ``train.val_max_images``
    val images, through a ``TorchBackend`` over the live network (no copy unless it is compiled)."""
    from posekit.evaluate.coco_eval import evaluate
    from posekit.runtime.backends import TorchBackend
    from posekit.runtime.predictor import Predictor

    input_hw = tuple(int(v) for v in cfg.model.input_shape)
    runtime_cfg = replace(OmegaConf.to_object(cfg.runtime), device="auto", cuda_graphs=False)
    codec_cfg = OmegaConf.to_object(cfg.codec)
    compiled = bool(cfg.train.compile)

    def evaluate_ap(net: torch.nn.Module, device: torch.device) -> float:
        model = snapshot(net) if compiled else net
        backend = TorchBackend(
            model, device=str(device), precision=precision, channels_last=bool(cfg.train.channels_last),
            cuda_graphs=False,
        )
        predictor = Predictor(backend, datamodule.skeleton, codec_cfg, runtime_cfg, input_hw)
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


def resume_from(cfg: DictConfig, ckpt_dir: Path, module: PoseModule, on_arch_change: str) -> Path | None:
    """The ``last.ckpt`` to resume from (``train.resume``), None to start fresh; see :func:`fit` for
    ``on_arch_change``."""
    resume = last_checkpoint(ckpt_dir) if bool(cfg.train.resume) else None
    if resume is None:
        return None
    differs = resumable(resume, module)
    if differs and on_arch_change == "restart":
        log.warning("%s holds another %s: starting over", resume, differs)
        return None
    if differs:
        raise UserError(
            f"cannot resume from {resume}: it was trained with a different {differs} than this run. Start "
            "fresh with train.resume=false (overwrites its checkpoints), or use another experiment.name."
        )
    log.info("resuming from %s", resume)
    return resume


# --------------------------------------------------------------------------------------------- callbacks
@dataclass
class RunCallbacks:
    """posekit's own callbacks of a run (built from runtime objects, so by code, not from config)."""

    startup: StartupClock
    meter: ThroughputMeter
    progress: ProgressLog
    ranks: RankRecord
    ap: ValidationAP | None
    history: EpochHistory
    last: ModelCheckpoint
    best: ModelCheckpoint

    def all(self) -> list[pl.Callback]:
        return [self.startup, self.meter, self.progress, self.ranks, *([self.ap] if self.ap else []), self.history,
                self.last, self.best]


def checkpoint_callbacks(cfg: DictConfig, val: Validation, ckpt_dir: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``last.ckpt`` (every epoch or ``train.checkpoint_every_n_steps``) and ``best.ckpt`` by the monitor."""
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
    return last_cb, best_cb


def run_callbacks(
    cfg: DictConfig, val: Validation, datamodule: Any, precision: str, ckpt_dir: Path, startup: StartupClock
) -> RunCallbacks:
    meter = ThroughputMeter()
    ap_cb = None
    if val.ap:
        evaluator = coco_ap_evaluator(cfg, datamodule, runtime_precision(precision))
        ap_cb = ValidationAP(evaluator, int(cfg.train.val_every_n_epochs))
    last_cb, best_cb = checkpoint_callbacks(cfg, val, ckpt_dir)
    progress = ProgressLog(int(cfg.train.progress_every_n_steps), enabled=not bool(cfg.trainer.enable_progress_bar))
    return RunCallbacks(startup, meter, progress, RankRecord(), ap_cb, EpochHistory(meter, ap_cb), last_cb, best_cb)


# --------------------------------------------------------------------------------------------- after training
def select_weights(result: FitResult, cbs: RunCallbacks, val: Validation, ckpt_dir: Path) -> Path:
    """The checkpoint model.pt is written from: best by the monitor, else the last (fills ``result``)."""
    best_cb, last_cb = cbs.best, cbs.last
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
    return source


def run_figures(
    trainer: pl.Trainer, module: PoseModule, datamodule: Any, cbs: RunCallbacks, val: Validation,
    global_step: int, replaced: int, rank_records: list[dict[str, Any]],
) -> dict[str, Any]:
    """summary.json's figures of the run: epochs, best AP, start-up, run length, data, ranks, guard."""
    figures = cbs.history.summary()
    if cbs.ap is not None and cbs.ap.best is not None:
        figures["best_val_AP"] = cbs.ap.best
    figures["global_step"] = global_step
    figures["startup"] = cbs.startup.phases()
    figures["monitor"] = val.monitor
    score = cbs.best.best_model_score
    figures["best_monitor_value"] = float(score) if score is not None else None
    figures.update(run_length(trainer, global_step))
    figures["data"] = {  # what the loader dropped or skipped: nothing silent (docs/errors.md)
        **datamodule.train_counts(),
        "replaced_samples": replaced,  # samples whose image was unreadable, replaced by the next one
        "streamed": datamodule.streamed is not None,  # trained on the synthetic set while it was generated
    }
    figures["ranks"] = rank_records  # per process: batches, images, sampled indices (RankRecord)
    if module.guard is not None:
        figures["guard"] = module.guard.summary()
    return figures


def export_model(
    stage_dir: Path, module: PoseModule, source: Path, result: FitResult, model_meta: dict[str, Any] | None
) -> Path:
    """``model.pt`` from the selected checkpoint's weights (rebuilt on the CPU, uncompiled). The checked read
    refuses non-finite weights: the guard keeps such updates out, and this is the last line before an artifact
    that other stages trust (model.pt is then not written)."""
    state = read_checkpoint(source, hint="model.pt was not written.")["state_dict"]
    net = snapshot(module.net).cpu()
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    meta = {
        **(model_meta or {}),
        "weights": result.weights,
        "checkpoint": source.name,
        "epochs": result.figures["epochs"],
        "best_val_AP": result.figures.get("best_val_AP"),
    }
    path = save_model(stage_dir / "model.pt", net, pruning_history=module.hparams["pruning_history"], **meta)
    log.info("wrote %s (%s weights)", path, result.weights)
    return path


# --------------------------------------------------------------------------------------------- device warm-up
def start_device_warmup(cfg: DictConfig, module: PoseModule, precision: str, compile: bool) -> DeviceWarmup | None:
    """``train.warmup_device`` on a one-GPU run: tune and load (and with ``compile``, compile) on a copy of the
    network while the data module waits for its data (posekit/train/warmup.py); None where it does not apply."""
    device = single_gpu_device(cfg.trainer) if bool(cfg.train.warmup_device) else None
    if device is None:
        return None
    h, w = (int(v) for v in cfg.model.input_shape)
    return DeviceWarmup(
        module.net,
        batch_shape=(int(cfg.data.batch_size), 3, h, w),
        device=device,
        autocast_dtype=autocast_dtype(precision),
        channels_last=bool(cfg.train.channels_last),
        compile=compile,
        seed=int(cfg.seed),
        cudnn_benchmark=cfg.trainer.get("benchmark"),
    ).start()


def start_compile_prefill(cfg: DictConfig, module: PoseModule, precision: str) -> CompileAfterPrefill | None:
    """``train.compile_prefill``: the network is compiled in a separate process while training starts eager, and
    compiled in place from Inductor's caches when that process is done (posekit/train/compile_prefill.py); None
    where it does not apply (it needs ``train.compile`` and one GPU). Undoes the module's own in-place compile, which
    would compile at the first step."""
    device = single_gpu_device(cfg.trainer) if cfg.train.compile and cfg.train.compile_prefill else None
    if device is None:
        return None
    uncompiled(module.net)  # the net runs eager for now
    h, w = (int(v) for v in cfg.model.input_shape)
    prefill = CompilePrefill(
        module.net,
        pruning_history=module.hparams.get("pruning_history"),
        batch_shape=(int(cfg.data.batch_size), 3, h, w),
        device=device,
        autocast_dtype=autocast_dtype(precision),
        channels_last=bool(cfg.train.channels_last),
        cudnn_benchmark=cfg.trainer.get("benchmark"),
    ).start()
    return CompileAfterPrefill(prefill)


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
    block_order: bool = True,
) -> FitResult:
    """Train ``make_module()`` on ``PoseDataModule(cfg)``; write checkpoints, logs and ``model.pt`` under
    ``stage_dir``. ``cfg`` has passed ``posekit.config.validate`` (the run's length, validation cadence...).

    The seed is set before the module is built, so initial weights, augmentation and shuffling repeat.
    ``model_meta`` is stored in ``model.pt`` next to the network (skeleton, input shape, source...).
    ``max_steps`` (default ``trainer.max_steps``) and ``max_epochs`` set the run's length, hence its schedule.
    ``max_time`` ("DD:HH:MM:SS", default ``trainer.max_time``) is a safety cap only: the schedule follows the
    steps, and a run the cap cuts short says so (``figures["stopped_early"]`` and a warning).
    ``extra_callbacks`` join posekit's own (diagnostics, benchmarks).
    ``block_order``: whether ``data.synthetic.stream_block`` applies (the train stage; posekit/data/stream.py).
    ``on_arch_change``: what to do when ``last.ckpt`` holds another network than ``make_module()`` builds:
    ``"error"`` (train: a changed ``model.*`` in an existing experiment is most likely a mistake, and starting
    over would overwrite that run's checkpoints) or ``"restart"`` (retrain: the pruned model was re-made, the old
    fine-tuning is obsolete).
    """
    from posekit.data.datamodule import PoseDataModule

    startup = StartupClock()
    max_steps = int(cfg.trainer.max_steps if max_steps is None else max_steps)
    pl.seed_everything(int(cfg.seed), workers=True)
    val = resolve_validation(cfg)
    datamodule = PoseDataModule(cfg, block_order=block_order)
    if datamodule.streamed is not None and val.loss:
        log.info("validation during training reads the finished synthetic set: the first validation (the sanity "
                 "check at the start, if on) waits for the generator; trainer.limit_val_batches=0 trains without it")
    module = make_module()
    ckpt_dir = stage_dir / "checkpoints"
    precision = resolve_precision(cfg.trainer)
    prefill = start_compile_prefill(cfg, module, precision)
    # the warm-up compiles the copy unless the prefill process does
    warmup = start_device_warmup(cfg, module, precision, compile=bool(cfg.train.compile) and prefill is None)
    cbs = run_callbacks(cfg, val, datamodule, precision, ckpt_dir, startup)
    trainer = build_trainer(cfg, stage_dir, [*cbs.all(), *([JoinDeviceWarmup(warmup)] if warmup else []),
                                             *([prefill] if prefill else []), *extra_callbacks],
                            max_epochs=max_epochs, max_steps=max_steps, max_time=max_time, validate=val.loss)

    resume = resume_from(cfg, ckpt_dir, module, on_arch_change)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)

    # every rank takes part in the sum (a collective), before the other ranks return
    replaced = trainer.strategy.reduce(
        torch.as_tensor(module.replaced_samples, dtype=torch.float64, device=module.device), reduce_op="sum"
    )
    rank_records = cbs.ranks.gather(trainer)  # a collective too
    result = FitResult(
        is_global_zero=trainer.is_global_zero,
        monitor=val.monitor,
        resumed_from=resume,
        global_step=int(trainer.global_step),
    )
    if not trainer.is_global_zero:
        return result
    source = select_weights(result, cbs, val, ckpt_dir)
    result.figures = run_figures(trainer, module, datamodule, cbs, val, result.global_step, int(replaced.item()),
                                 rank_records)
    if warmup is not None:
        result.figures["device_warmup"] = warmup.record
    if prefill is not None:
        result.figures["compile_prefill"] = prefill.record
    result.model_path = export_model(stage_dir, module, source, result, model_meta)
    return result
