"""``python launch.py stage=retrain``: fine-tune the pruned graph (TAO's ``load_graph: True`` retrain).

Loads ``<experiment>/prune/model.pruned-<pth>.pt`` (or ``retrain.model``) with ``load_model``, which rebuilds
the pruned graph from its pruning history, and trains it with the same data, loss and optimizer recipe as the
train stage. Differences, as TAO's retrain spec: L1 regularization off (``retrain.l1_kernel_reg``, default 0),
its own length (``retrain.max_steps`` / ``retrain.max_epochs``) and a learning-rate scale (``retrain.lr_scale``).
posekit's addition, off by default: ``retrain.lift_bn_inputs`` rescales the kernels whose BatchNorm inputs pruning
left below eps's scale before the first step (posekit/prune/lift.py; what lets pth 0.5 retrain).

Writes ``<experiment>/retrain/pth-<pth>/``: checkpoints, ``model.pt`` (with the pruning history), logs and
``summary.json``. Re-running resumes from its ``last.ckpt``; if the pruned model was re-made since, it
starts over.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from posekit.errors import UserError
from posekit.experiment import Experiment
from posekit.export.artifacts import WRITTEN, Artifact
from posekit.model.io import load_model
from posekit.train.fit import fit
from posekit.train.module import PoseModule, plain
from posekit.train.results import report, stage_metrics

log = logging.getLogger("posekit.train")

MAIN_METRIC = "val/AP"


def run(cfg: DictConfig) -> dict[str, Any]:
    exp = Experiment(cfg)
    source = exp.resolve(
        cfg.retrain.model,
        exp.default_model("retrain")[0],
        "pruned model",
        f"Run `python launch.py stage=prune prune.pth={cfg.prune.pth} experiment.name={cfg.experiment.name}` "
        "first, or pass retrain.model=PATH.",
    )
    try:
        net, info = load_model(source)
        net.train()  # load_model returns eval mode; Lightning keeps a submodule's mode, so BN would stay frozen
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load the pruned model {source}: {e}") from e
    stage_dir = exp.retrain_dir()
    stage_dir.mkdir(parents=True, exist_ok=True)
    lift = _lift_bn_inputs(cfg, exp, net) if float(cfg.retrain.lift_bn_inputs) > 0 else None

    optim = plain(cfg.optim)
    optim["l1_kernel_reg"] = float(cfg.retrain.l1_kernel_reg)
    optim["l1_bn_gamma"] = float(cfg.retrain.l1_bn_gamma)
    max_epochs = int(cfg.retrain.max_epochs if cfg.retrain.max_epochs is not None else cfg.trainer.max_epochs)
    meta = {
        **info["meta"],
        "input_shape": [int(v) for v in cfg.model.input_shape],
        "source": f"retrained-{exp.pth}",
        "pruned_from": str(source),
    }

    def make_module() -> PoseModule:
        return PoseModule(
            info["arch"],
            optim,
            pruning_history=info["pruning_history"],
            meta=meta,
            channels_last=bool(cfg.train.channels_last),
            compile=bool(cfg.train.compile),
            lr_scale=float(cfg.retrain.lr_scale),
            config=plain(cfg),
            net=net,
        )

    max_steps = cfg.retrain.max_steps if cfg.retrain.max_steps is not None else cfg.trainer.max_steps
    # block_order=False: data.synthetic.stream_block is the train stage's start-up device; a retrain (often shorter
    # than an epoch) reads a finished set and shuffles all of it
    result = fit(cfg, stage_dir, make_module, max_epochs=max_epochs, max_steps=int(max_steps),
                 max_time=cfg.retrain.max_time, model_meta=meta, on_arch_change="restart", block_order=False)
    if not result.is_global_zero:
        return {}
    metrics = stage_metrics(result)
    exp.write_summary(
        stage_dir,
        "retrain",
        artifacts={"model": result.model_path, "pruned_model": source, "last_ckpt": result.last_ckpt,
                   "best_ckpt": result.best_ckpt, "logs": stage_dir},
        metrics=metrics,
        figures=result.figures,
        resumed_from=str(result.resumed_from) if result.resumed_from else None,
        lift_bn_inputs=lift,
    )
    report("retrain", result, metrics)
    return {**metrics, WRITTEN: [Artifact.torch_model(result.model_path, f"retrained-{exp.pth}").to_record()]}


def _lift_bn_inputs(cfg: DictConfig, exp: Experiment, net: Any) -> dict[str, Any]:
    """``retrain.lift_bn_inputs``: lift the pruned net's BN inputs above eps (posekit/prune/lift.py) on the first
    ``retrain.lift_images`` calibration images, before the first step. A resumed run loads its checkpoint's
    weights over these, so it keeps the lift it started with."""
    import torch

    from posekit.export.calibration_files import prepare_calibration
    from posekit.prune.lift import lift_bn_inputs

    data, _ = prepare_calibration(cfg, exp)
    images = torch.from_numpy(data.batches()[: int(cfg.retrain.lift_images)])
    # on the CPU: every DDP rank computes the same factors from the same images
    lift = lift_bn_inputs(net, images, floor=float(cfg.retrain.lift_bn_inputs))
    log.info("retrain.lift_bn_inputs=%s: lifted %d of %d BN input channels on %d images",
             cfg.retrain.lift_bn_inputs, lift["lifted_channels"], lift["channels"], len(images))
    return {"floor": float(cfg.retrain.lift_bn_inputs), "images": len(images), **lift}
