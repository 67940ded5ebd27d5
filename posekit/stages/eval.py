"""``stage=eval``: COCO keypoint AP of any artifact on the validation set.

    python launch.py stage=eval                                   # the experiment's latest model
    python launch.py stage=eval eval.artifact=path/model.288.384.int8.onnx runtime.flip=true

Writes ``<experiment>/eval/<tag>/{metrics.json, detections.json, summary.json}``. ``<tag>`` is ``eval.tag``, or
the source tag of the latest model (``trained``, ``pruned-0.2``, ``retrained-0.2``), or for an explicit
artifact its path inside the experiment with ``/`` -> ``-`` (``export-trained-model.288.384.int8``), or its
file name outside it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.errors import MissingArtifactError
from posekit.experiment import Experiment
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.eval")

MAIN_METRIC = "AP"


def artifact_and_tag(exp: Experiment, explicit: str | None) -> tuple[Path, str]:
    """The artifact to run (``explicit`` if given, else the experiment's latest model) and a folder-safe tag."""
    if not explicit:
        return exp.latest_model()
    path = Path(os.path.expanduser(explicit)).resolve()
    if not path.exists():
        raise MissingArtifactError(f"artifact not found: {path}. Check the path given on the command line.")
    try:
        rel = path.relative_to(exp.root)
        tag = "-".join((*rel.parent.parts, rel.stem))
    except ValueError:
        tag = path.stem
    return path, tag


def build_predictor(cfg: DictConfig, artifact: Path, skeleton: Skeleton):
    """Backend for ``artifact`` + the configured preprocessing, test-time augmentation and decoder."""
    from posekit.runtime import Predictor, load_backend

    backend = load_backend(artifact, cfg.runtime)
    return Predictor(backend, skeleton, cfg.codec, cfg.runtime, tuple(cfg.model.input_shape))


def run(cfg: DictConfig) -> dict:
    from posekit.data.paths import resolve_data
    from posekit.evaluate import evaluate

    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    exp = Experiment(cfg)
    artifact, tag = artifact_and_tag(exp, cfg.eval.artifact)
    tag = cfg.eval.tag or tag
    predictor = build_predictor(cfg, artifact, skeleton)
    data = resolve_data(cfg)
    max_images = cfg.eval.max_images if cfg.eval.max_images is not None else cfg.data.val_max_images
    log.info("eval %s (%s, %s mode, input %s) on %s", artifact, predictor.backend.name, predictor.mode,
             predictor.input_hw, data.val_ann)
    metrics, detections = evaluate(
        predictor, data.val_ann, data.val_images, skeleton, max_images=max_images, max_dets=cfg.eval.max_dets,
        progress=True,
    )
    out = exp.dir("eval", tag)
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "detections.json", detections)
    exp.write_summary(
        out,
        "eval",
        artifacts={"model": artifact, "metrics": out / "metrics.json", "detections": out / "detections.json",
                   "val_ann": data.val_ann},
        metrics=metrics,
        tag=tag,
        backend={"name": predictor.backend.name, **predictor.backend.meta},
        runtime={"mode": predictor.mode, "input_hw": list(predictor.input_hw), "scales": predictor.scales,
                 "flip": predictor.flip},
    )
    log.info("eval %s: AP %.4f (%d images) -> %s", tag, metrics["AP"], metrics["images"], out)
    return metrics
