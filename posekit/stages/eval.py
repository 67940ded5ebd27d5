"""``stage=eval``: COCO keypoint AP of any artifact on the validation set.

    python launch.py stage=eval                                   # the experiment's latest model
    python launch.py stage=eval eval.artifact=path/model.288.384.int8.onnx runtime.flip=true

Writes ``<experiment>/eval/<tag>/{metrics.json, detections.json, summary.json}`` (``summary.json`` counts the
unreadable images and dropped non-finite annotations). ``<tag>`` is ``eval.tag``, or
the source tag of the latest model (``trained``, ``pruned-0.2``, ``retrained-0.2``), or for an explicit
artifact its path inside the experiment with ``/`` -> ``-`` (``export-trained-model.288.384.int8``), or its
file name outside it; if that folder holds a result of another setting (input shape, data, runtime...), the
tag gets the setting's hash (``trained-1a2b3c4d``) instead of overwriting it.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.experiment import Experiment
from posekit.runtime.configured import build_predictor
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.eval")

MAIN_METRIC = "AP"

# what makes two evals of one artifact the same setting (their folder is shared; another setting gets its own)
RESULT_SECTIONS = ("eval", "codec", "runtime", "data", "keypoints", "model.input_shape")
RESULT_EXCLUDE = ("data.batch_size", "data.targets_on_device", "data.augment_on_device",
                  "data.decode_on_device", "data.augment", "data.main_person_min_keypoints",
                  "data.main_person_min_area", "data.train_ann",
                  "data.train_images", "runtime.device", "runtime.ort_threads", "runtime.cuda_graphs")


def run(cfg: DictConfig) -> dict:
    from posekit.data.paths import resolve_data
    from posekit.evaluate import evaluate

    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    exp = Experiment(cfg)
    artifact, tag = exp.artifact_and_tag(cfg.eval.artifact)
    tag = cfg.eval.tag or tag
    out, tag = exp.result_folder("eval", tag, RESULT_SECTIONS, RESULT_EXCLUDE)
    predictor = build_predictor(cfg, artifact, skeleton)
    data = resolve_data(cfg, splits=("val",))  # eval reads the val set only
    max_images = cfg.eval.max_images if cfg.eval.max_images is not None else cfg.data.val_max_images
    log.info("eval %s (%s, %s mode, input %s) on %s", artifact, predictor.backend.name, predictor.mode,
             predictor.input_hw, data.val_ann)
    metrics, detections = evaluate(
        predictor, data.val_ann, data.val_images, skeleton, max_images=max_images, max_dets=cfg.eval.max_dets,
        progress=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "metrics.json", metrics)
    io.write_json(out / "detections.json", detections)
    exp.write_summary(
        out,
        "eval",
        artifacts={"model": artifact, "metrics": out / "metrics.json", "detections": out / "detections.json",
                   "val_ann": data.val_ann},
        metrics=metrics,
        tag=tag,
        skipped={"images": metrics["skipped_images"], "annotations": metrics["dropped_annotations"]},
        backend={"name": predictor.backend.name, **predictor.backend.meta},
        runtime={"mode": predictor.mode, "input_hw": list(predictor.input_hw), "scales": predictor.scales,
                 "flip": predictor.flip},
    )
    skipped = metrics["skipped_images"] + metrics["dropped_annotations"]
    log.info("eval %s: AP %.4f (%d images%s) -> %s", tag, metrics["AP"], metrics["images"],
             f"; skipped {metrics['skipped_images']} unreadable image(s) and {metrics['dropped_annotations']} "
             "non-finite annotation(s)" if skipped else "", out)
    return metrics
