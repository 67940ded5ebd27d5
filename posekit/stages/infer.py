"""``stage=infer``: run any artifact on an image, a folder of images or a video.

    python launch.py stage=infer infer.input=photos/                    # the experiment's latest model
    python launch.py stage=infer infer.input=clip.mp4 infer.artifact=model.288.384.fp16.onnx

Writes to ``infer.output`` (default ``<experiment>/infer/<input name>/``):
  * ``detections.json``: COCO keypoint results (dataset-order keypoints, original-image pixels, as eval writes)
    and ``images.json``: their ``image_id`` -> ``file_name`` (for a video: ``frame``), ``height``, ``width``;
  * overlays (``infer.draw``): ``overlays/<image>.jpg``, or ``<video name>.mp4`` (mp4v) for a video;
  * ``summary.json`` with counts, timings, the files that could not be read (skipped and reported) and, for a
    video, the frames its header declares vs. those read (a truncated video says so: ``skipped.frames``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from posekit import io
from posekit.codec.decode import People
from posekit.data.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from posekit.errors import MissingArtifactError, UserError
from posekit.experiment import Experiment
from posekit.skeleton import Skeleton
from posekit.runtime.configured import build_predictor

log = logging.getLogger("posekit.infer")

MAIN_METRIC = None  # inference has nothing to optimize

RESULT_SECTIONS = ("infer", "codec", "runtime", "keypoints", "model.input_shape")  # one output folder per setting


def input_files(src: Path) -> tuple[str, list[Path]]:
    """("images" | "video", files) for an image, a folder of images or a video."""
    suffix = src.suffix.lower()
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"infer.input={src}: the folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        return "images", files
    if suffix in VIDEO_SUFFIXES:
        return "video", [src]
    if suffix in IMAGE_SUFFIXES:
        return "images", [src]
    raise UserError(
        f"infer.input={src}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) "
        "or a folder"
    )


class _Writer:
    """Collects detections and writes overlays for one run."""

    def __init__(self, out: Path, skeleton: Skeleton, draw: bool, min_score: float):
        self.out, self.skeleton, self.draw, self.min_score = out, skeleton, draw, min_score
        self.detections: list[dict] = []
        self.images: list[dict] = []
        self.people = 0

    def add(self, image_id: int, image: np.ndarray, people: People, **info: Any) -> np.ndarray | None:
        from posekit.evaluate import people_to_coco
        from posekit.viz import draw_people

        people = people.select(people.scores >= self.min_score)
        self.people += len(people)
        self.images.append({"id": image_id, **info, "height": int(image.shape[0]), "width": int(image.shape[1])})
        self.detections.extend(people_to_coco(people, image_id, self.skeleton))
        return draw_people(image, people, self.skeleton) if self.draw else None


def _names(files: list[Path]) -> list[str]:
    """Overlay file names: ``<stem>.jpg``, or ``<name>.jpg`` where two inputs share a stem."""
    stems = [p.stem for p in files]
    return [f"{p.stem}.jpg" if stems.count(p.stem) == 1 else f"{p.name}.jpg" for p in files]


def _run_images(predictor, files: list[Path], writer: _Writer) -> list[str]:
    """Run the image files through ``writer`` (detections, overlays); returns the files that could not be read."""
    from posekit.runtime.image_loop import predict_images

    names = dict(zip(files, _names(files)))
    ids = {p: i for i, p in enumerate(files)}

    def write(path: Path, img: np.ndarray, people: People) -> None:
        overlay = writer.add(ids[path], img, people, file_name=path.name)
        if overlay is not None:
            with io.atomic_path(writer.out / "overlays" / names[path]) as tmp:
                if not cv2.imwrite(str(tmp), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]):
                    raise UserError(f"could not write {tmp}")

    return predict_images(predictor, files, write, desc="infer").skipped


def _frame_batches(cap: cv2.VideoCapture, n: int) -> Iterator[list[np.ndarray]]:
    """RGB frames of an open capture, ``n`` at a time."""
    while True:
        batch = []
        while len(batch) < n:
            ok, bgr = cap.read()
            if not ok:
                break
            batch.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if batch:
            yield batch
        if len(batch) < n:
            return


def _run_video(predictor, src: Path, writer: _Writer) -> dict[str, Any]:
    """Run every frame; returns ``{"declared_frames", "frames", "missing_frames"}``: a file that ends (or breaks)
    before the length its header declares is reported, never passed off as complete."""
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise UserError(f"cannot open video {src}: missing codec or not a video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    frame_id, video = 0, None
    with contextlib.ExitStack() as stack:  # unwinds last-in first-out: the video is closed before its rename
        stack.callback(cap.release)
        tmp = stack.enter_context(io.atomic_path(writer.out / f"{src.stem}.mp4")) if writer.draw else None
        bar = stack.enter_context(tqdm(total=declared or None, desc="infer", unit="frame", dynamic_ncols=True))
        for frames in _frame_batches(cap, predictor.chunk):
            for rgb, people in zip(frames, predictor.predict_many(frames)):
                overlay = writer.add(frame_id, rgb, people, frame=frame_id)
                if overlay is not None:
                    if video is None:
                        h, w = overlay.shape[:2]
                        video = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        stack.callback(video.release)
                        if not video.isOpened():
                            raise UserError("this OpenCV build cannot write mp4v videos; use infer.draw=false")
                    video.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                frame_id += 1
            bar.update(len(frames))
        if frame_id == 0:
            raise UserError(f"video {src} has no readable frames")
    missing = max(0, declared - frame_id)
    if missing:
        log.warning("video %s ended after %d of the %d frames its header declares: %d frame(s) missing "
                    "(truncated or corrupt file)", src, frame_id, declared, missing)
    return {"declared_frames": declared or None, "frames": frame_id, "missing_frames": missing}


def run(cfg: DictConfig) -> dict:
    if not cfg.infer.input:
        raise UserError("infer.input is not set: pass infer.input=path/to/image|folder|video")
    src = Path(os.path.expanduser(str(cfg.infer.input))).resolve()
    if not src.exists():
        raise MissingArtifactError(f"infer.input not found: {src}")
    kind, files = input_files(src)
    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    exp = Experiment(cfg)
    artifact, tag = exp.artifact_and_tag(cfg.infer.artifact)
    name = src.name if src.is_dir() else src.stem
    if cfg.infer.output:  # checked before any work: results that cannot be written are lost
        out = io.ensure_writable(Path(os.path.expanduser(str(cfg.infer.output))).resolve(), "infer.output")
    else:  # never over the result of another setting
        out, _ = exp.result_folder("infer", name, RESULT_SECTIONS, ("runtime.device", "runtime.ort_threads"))
        out.mkdir(parents=True, exist_ok=True)
    predictor = build_predictor(cfg, artifact, skeleton)
    writer = _Writer(out, skeleton, bool(cfg.infer.draw), float(cfg.infer.min_score))
    log.info("infer %s with %s (%s) -> %s", src, artifact, predictor.backend.name, out)
    video: dict[str, Any] = {}
    skipped: list[str] = []
    if kind == "video":
        video = _run_video(predictor, src, writer)
    else:
        skipped = _run_images(predictor, files, writer)
    if not writer.images:
        raise UserError(f"infer.input={src}: none of its {len(files)} image(s) could be read (see the warnings above)")
    io.write_json(out / "detections.json", writer.detections)
    io.write_json(out / "images.json", writer.images)
    n = len(writer.images)
    missing = int(video.get("missing_frames") or 0)
    metrics = {"images": n, "people": writer.people, "skipped": len(skipped) + missing}
    if skipped:
        log.warning("infer: %d file(s) could not be read and were skipped: %s", len(skipped), ", ".join(skipped))
    exp.write_summary(
        out,
        "infer",
        artifacts={"model": artifact, "input": src, "detections": out / "detections.json",
                   "overlays": (out / f"{src.stem}.mp4" if kind == "video" else out / "overlays") if cfg.infer.draw
                   else None},
        metrics=metrics,
        tag=tag,
        skipped={"images": len(skipped), "frames": missing},
        skipped_files=skipped,
        video=video or None,
        backend={"name": predictor.backend.name, **predictor.backend.meta},
    )
    log.info("infer: %d %s, %d people -> %s", n, "frames" if kind == "video" else "images", writer.people, out)
    return metrics
