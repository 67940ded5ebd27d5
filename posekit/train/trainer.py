"""The ``pl.Trainer`` of a train/retrain run, from the config (the lightning-hydra-template way).

``trainer:`` (``conf/trainer/*.yaml``, typed by ``posekit.config.TrainerConfig``) holds ``pl.Trainer``'s keyword
arguments and is passed through as is; posekit only resolves what it documents as its own: ``accelerator`` and
``precision`` "auto", the run's length (train and retrain differ), and validation turned off when it would not
run (``posekit.train.fit.resolve_validation``). ``callbacks:`` holds extra Lightning callbacks declared in config
(``_target_`` nodes, e.g. ``+callbacks=lr_monitor``); posekit's own callbacks need runtime objects (the AP
evaluator, the checkpoint folder, the resolved monitor) and are built by ``fit``. ``debug.profiler`` is the
benchmark-only profiler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger


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


def trainer_kwargs(
    cfg: DictConfig, *, max_epochs: int, max_steps: int, max_time: str | None, validate: bool
) -> dict[str, Any]:
    """``pl.Trainer``'s keyword arguments: ``cfg.trainer`` passed through, with posekit's resolutions on top."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    kwargs.update(
        accelerator=resolve_accelerator(cfg.trainer),
        precision=resolve_precision(cfg.trainer),
        max_epochs=max_epochs,
        max_steps=max_steps,
        max_time=max_time if max_time is not None else kwargs["max_time"],
        profiler=cfg.debug.profiler,
    )
    if not validate:
        kwargs.update(limit_val_batches=0, check_val_every_n_epoch=1, num_sanity_val_steps=0)
    return kwargs


def config_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks declared under ``callbacks:`` (each a ``_target_`` node), in key order."""
    from hydra.utils import instantiate

    nodes = cfg.get("callbacks") or {}
    return [instantiate(nodes[name]) for name in sorted(nodes) if nodes[name] is not None]


def build_loggers(stage_dir: Path) -> list[Any]:
    """CSV (``<stage dir>/csv``) and TensorBoard (``<stage dir>/tensorboard``) logs."""
    return [
        CSVLogger(save_dir=str(stage_dir), name="csv"),
        TensorBoardLogger(save_dir=str(stage_dir), name="tensorboard", default_hp_metric=False),
    ]


def build_trainer(
    cfg: DictConfig, stage_dir: Path, callbacks: list[pl.Callback], *, max_epochs: int, max_steps: int,
    max_time: str | None, validate: bool,
) -> pl.Trainer:
    """The run's ``pl.Trainer``: config arguments, posekit's and the config's callbacks, loggers, SLURM."""
    return pl.Trainer(
        **trainer_kwargs(cfg, max_epochs=max_epochs, max_steps=max_steps, max_time=max_time, validate=validate),
        callbacks=[*callbacks, *config_callbacks(cfg)],
        logger=build_loggers(stage_dir),
        plugins=slurm_plugins(),
        default_root_dir=str(stage_dir),
    )
