"""``python launch.py stage=train``: train BpNetLite from scratch on the configured data (docs/training.md).

Writes ``<experiment>/train/``: ``checkpoints/{last,best}.ckpt``, ``model.pt`` (best weights, else last),
``csv/``, ``tensorboard/`` and ``summary.json``. Re-running resumes from ``last.ckpt`` (``train.resume``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from posekit.experiment import Experiment
from posekit.export.artifacts import WRITTEN, Artifact
from posekit.skeleton import Skeleton
from posekit.train.fit import fit
from posekit.train.module import PoseModule, plain
from posekit.train.results import report, stage_metrics

log = logging.getLogger("posekit.train")

MAIN_METRIC = "val/AP"


def arch_from_config(cfg: DictConfig, skeleton: Skeleton) -> dict[str, Any]:
    """``BpNetLite.arch`` for ``cfg.model`` with the skeleton's output channel counts."""
    arch = {
        "stages": int(cfg.model.stages),
        "num_heatmaps": skeleton.num_heatmaps,
        "num_pafs": skeleton.num_pafs,
        "width": float(cfg.model.width),
    }
    if cfg.model.refinement_bn:  # recorded only when on (BpNetLite.arch), so TAO-architecture records stay as they were
        arch["refinement_bn"] = True
    return arch


def module_factory(cfg: DictConfig) -> tuple[Callable[[], PoseModule], dict[str, Any]]:
    """``(make_module, meta)``: a fresh ``PoseModule`` of ``cfg.model`` with the ``cfg.optim`` recipe (built after
    ``fit`` seeds the run), and the facts ``model.pt`` records."""
    skeleton = Skeleton.from_cfg(cfg.keypoints)
    arch = arch_from_config(cfg, skeleton)
    meta = {"skeleton": skeleton.name, "input_shape": [int(v) for v in cfg.model.input_shape], "source": "trained"}

    def make_module() -> PoseModule:
        return PoseModule(
            arch,
            plain(cfg.optim),
            meta=meta,
            channels_last=bool(cfg.train.channels_last),
            compile=bool(cfg.train.compile),
            head_init=str(cfg.train.head_init),
            config=plain(cfg),
        )

    return make_module, meta


def run(cfg: DictConfig) -> dict[str, Any]:
    exp = Experiment(cfg)
    stage_dir = exp.dir("train")
    make_module, meta = module_factory(cfg)
    result = fit(cfg, stage_dir, make_module, max_epochs=int(cfg.trainer.max_epochs), model_meta=meta)
    if not result.is_global_zero:
        return {}
    metrics = stage_metrics(result)
    exp.write_summary(
        stage_dir,
        "train",
        artifacts={"model": result.model_path, "last_ckpt": result.last_ckpt, "best_ckpt": result.best_ckpt,
                   "logs": stage_dir},
        metrics=metrics,
        figures=result.figures,
        resumed_from=str(result.resumed_from) if result.resumed_from else None,
    )
    report("train", result, metrics)
    return {**metrics, WRITTEN: [Artifact.torch_model(result.model_path, "trained").to_record()]}
