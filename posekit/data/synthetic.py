"""The embedded synthetic dataset: rendered multi-person scenes in COCO person-keypoints format.

Nothing is downloaded: :func:`ensure_synthetic` renders the train and val splits from ``seed`` and the
``data.synthetic.*`` parameters on first use and caches them under a folder named by a hash of every generating
parameter (plus :data:`GENERATOR_VERSION`), so a changed parameter makes a new dataset and an unchanged one is
reused. Generation runs in a temporary folder that is renamed into place when complete (a killed run never
leaves half a dataset) under a file lock (concurrent ranks wait for one generator).

Each image is rendered from its own seed ``(seed, split, index)``, so the result is identical whatever the
number of processes. A scene holds:

* a cluttered background (gradient, low-frequency colour noise, random shapes) and limb-like distractor strokes;
* optionally a *crowd*: a cluster of small people annotated as one ``iscrowd=1`` region (RLE);
* ``min_people..max_people`` articulated people (torso polygon, tapered limbs, head ellipse with eyes, ears and
  nose) posed by a kinematic model (standing, walking, arms up, crouching, free), scaled, rotated and placed at
  random, drawn back to front so they occlude each other. Annotated people are only placed where a bottom-up
  decoder can recover them: torso in the frame, every labeled joint linked to it, and no joint close to the same
  joint of another annotated person (:func:`_recoverable`, :func:`_separated`);
* optionally a drawn but unannotated person (``num_keypoints = 0``), which the loss masks out like COCO's.

Keypoints are written in pixel-index coordinates (pixel k's centre is at k, the posekit convention) exactly where
the joints are drawn: ``v = 2`` visible, ``v = 1`` covered by a person drawn later, ``v = 0`` (and x = y = 0)
outside the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from posekit.errors import UserError
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")

# Bump when the renderer changes what it draws or writes: cached datasets of older versions are not reused.
GENERATOR_VERSION = 3
JPEG_QUALITY = 90
VAL_MAX_PEOPLE = 20  # COCO keypoint eval keeps 20 detections per image: more GT people would cap recall
SPLITS = ("train", "val")
_IMAGES_PER_PROCESS = 64  # at least this many images per generating process (process start-up costs ~0.1 s)
_POLYGON_TOLERANCE = 1.0  # px: Douglas-Peucker tolerance of the segmentation polygons (people >= 100 px)
_SHIFT = 4  # cv2 drawing with 4 fractional bits: coordinates are placed to 1/16 px
_ONE = 1 << _SHIFT

# The joints the renderer draws (COCO-17 names); a skeleton's dataset_joints must be among them.
RENDERED_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


# ============================================================================================== public API
def default_cache_dir() -> Path:
    """``$POSEKIT_CACHE/synthetic`` if set, else ``~/.cache/posekit/synthetic``."""
    root = os.environ.get("POSEKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "posekit") / "synthetic"


def generation_params(syn_cfg: Any, skeleton: Skeleton) -> dict:
    """Every parameter that changes the generated files (the cache key). ``syn_cfg``: a ``SyntheticConfig``."""
    missing = [n for n in skeleton.dataset_joints if n not in RENDERED_JOINTS]
    if missing:
        raise UserError(
            f"the synthetic dataset renders the COCO-17 joints {list(RENDERED_JOINTS)}; keypoints="
            f"{skeleton.name} asks for {missing}. Use data=coco with your own annotations for this skeleton."
        )
    h, w = (int(v) for v in syn_cfg.image_size)
    lo, hi = (float(v) for v in syn_cfg.person_height)
    params = {
        "version": GENERATOR_VERSION,
        "seed": int(syn_cfg.seed),
        "num_train": int(syn_cfg.num_train),
        "num_val": int(syn_cfg.num_val),
        "image_size": [h, w],
        "min_people": int(syn_cfg.min_people),
        "max_people": int(syn_cfg.max_people),
        "person_height": [lo, hi],
        "crowd_prob": float(syn_cfg.crowd_prob),
        "unannotated_prob": float(syn_cfg.unannotated_prob),
        "distractors": int(syn_cfg.distractors),
        "dataset_joints": list(skeleton.dataset_joints),
        "category": skeleton.coco_category(),
    }
    problems = []
    if h < 32 or w < 32:
        problems.append(f"data.synthetic.image_size={[h, w]}: need [H, W] >= 32")
    if not 1 <= params["min_people"] <= params["max_people"]:
        problems.append("data.synthetic.min_people/max_people: need 1 <= min_people <= max_people")
    if not 0 < lo <= hi <= 1.5:
        problems.append(f"data.synthetic.person_height={[lo, hi]}: need 0 < low <= high (fractions of image height)")
    if params["num_train"] < 1 or params["num_val"] < 1:
        problems.append("data.synthetic.num_train/num_val: need >= 1")
    if problems:
        raise UserError("; ".join(problems))
    return params


def dataset_dir(params: Mapping, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of the dataset ``params`` describes: ``<cache>/synthetic-<hash>``."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"synthetic-{digest}"


def ensure_synthetic(syn_cfg: Any, skeleton: Skeleton, workers: int | None = None) -> dict[str, Path]:
    """The synthetic dataset described by ``syn_cfg`` (a ``SyntheticConfig``), generated on first use.

    Args:
        syn_cfg: ``cfg.data.synthetic``.
        skeleton: gives the dataset joint order and the COCO category.
        workers: generating processes; default ``syn_cfg.workers`` (0 = all cores).

    Returns:
        ``{"train_ann", "train_images", "val_ann", "val_images"}`` -> absolute paths.
    """
    params = generation_params(syn_cfg, skeleton)
    root = dataset_dir(params, getattr(syn_cfg, "cache_dir", None))
    if not _complete(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(root.with_name(root.name + ".lock")):
            if not _complete(root):  # another process may have finished it while we waited
                if workers is None:
                    workers = int(getattr(syn_cfg, "workers", 0) or 0)
                _generate(params, root, workers)
    return {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }


def render_image(params: Mapping, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """Render one image of a split: ((H, W, 3) uint8 RGB, its annotations without ``id`` / ``image_id``).

    Deterministic in ``(params["seed"], split, index)``.
    """
    rng = np.random.default_rng([int(params["seed"]), SPLITS.index(split), int(index)])
    h, w = params["image_size"]
    max_people = params["max_people"] if split == "train" else min(params["max_people"], VAL_MAX_PEOPLE)
    scene = _Scene(rng, h, w, params)
    img = scene.render(
        num_people=int(rng.integers(min(params["min_people"], max_people), max_people + 1)),
        max_total=max_people if split == "val" else None,
    )
    return img, scene.annotations(params["dataset_joints"])


# ============================================================================================== generation
def _complete(root: Path) -> bool:
    return (root / "params.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``) so concurrent processes (DDP ranks) generate once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the dataset whole
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _generate(params: dict, root: Path, workers: int) -> None:
    # Leftovers of killed generations of this dataset (we hold the lock, so nobody else is writing them).
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    counts = {"train": params["num_train"], "val": params["num_val"]}
    jobs = [(s, i) for s in SPLITS for i in range(counts[s])]
    for s in SPLITS:
        (tmp / s).mkdir(parents=True)
    (tmp / "annotations").mkdir()
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, max(1, len(jobs) // _IMAGES_PER_PROCESS))  # a pool only pays off for many images
    log.info("generating the synthetic dataset (%d images, %d processes) in %s", len(jobs), workers, root)
    results: dict[str, list] = {s: [] for s in SPLITS}
    try:
        args = [(params, str(tmp), s, i) for s, i in jobs]
        bar = tqdm(total=len(jobs), desc="synthetic data", unit="img", dynamic_ncols=True)
        with bar, contextlib.ExitStack() as stack:
            if workers > 1:
                # Not fork: forking a parent whose OpenMP/OpenCV thread pools already ran can deadlock the child
                # on an inherited lock (seen here once). A fork server starts clean. As with any spawn/forkserver
                # pool, a script calling this needs an `if __name__ == "__main__":` guard (posekit's entry points
                # have one). An executor (not mp.Pool) fails loudly if a worker dies instead of respawning it.
                if sys.platform.startswith("linux"):
                    ctx = mp.get_context("forkserver")
                    ctx.set_forkserver_preload([__name__])
                else:
                    ctx = mp.get_context("spawn")
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # Ctrl-C: drop the queued images
                it = pool.map(_render_to_file, args, chunksize=8)
            else:
                it = map(_render_to_file, args)
            for (split, _), result in zip(jobs, it):  # map keeps job order: ids do not depend on scheduling
                results[split].append(result)
                bar.update()
        for split in SPLITS:
            _write_coco(tmp / "annotations" / f"{split}.json", results[split], params)
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")  # completion marker
        if not _complete(root):  # (without a file lock another process may have finished first: keep theirs)
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one image per process; cv2's own threads would only oversubscribe the cores


def _render_to_file(job: tuple[dict, str, str, int]) -> tuple[dict, list[dict]]:
    params, tmp, split, index = job
    img, anns = render_image(params, split, index)
    file_name = f"{index + 1:012d}.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "cv2 failed to encode a JPEG"
    Path(tmp, split, file_name).write_bytes(buf.tobytes())
    info = {"id": index + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
    return info, anns


def _write_coco(path: Path, results: list[tuple[dict, list[dict]]], params: Mapping) -> None:
    images, annotations = [], []
    for info, anns in results:
        images.append({**info, "license": 1})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": info["id"], **ann})
    coco = {
        "info": {
            "description": "posekit synthetic multi-person keypoints",
            "version": str(GENERATOR_VERSION),
            "generator_params": {k: v for k, v in params.items() if k != "category"},
        },
        "licenses": [{"id": 1, "name": "CC0 1.0 (generated)", "url": ""}],
        "categories": [params["category"]],
        "images": images,
        "annotations": annotations,
    }
    path.write_text(json.dumps(coco, separators=(",", ":")))


# ============================================================================================== drawing
@dataclass
class _Prim:
    """A filled shape in pixel-index coordinates: ``poly`` (pts (N, 2)), ``circle`` (c, r) or ``ellipse``."""

    kind: str
    pts: np.ndarray  # poly: (N, 2); circle / ellipse: (1, 2) centre
    color: tuple[int, int, int]
    size: tuple[float, float] = (0.0, 0.0)  # circle: (r, r); ellipse: semi-axes
    angle: float = 0.0  # ellipse rotation, degrees

    def draw(self, img: np.ndarray, value: Any = None, aa: bool = True) -> None:
        color = self.color if value is None else value
        line = cv2.LINE_AA if aa else cv2.LINE_8
        fixed = np.round(self.pts * _ONE).astype(np.int32)
        if self.kind == "poly":
            cv2.fillConvexPoly(img, fixed, color, line, _SHIFT)
        elif self.kind == "circle":
            r = max(1, round(self.size[0] * _ONE))
            cv2.circle(img, (int(fixed[0, 0]), int(fixed[0, 1])), r, color, -1, line, _SHIFT)
        else:
            axes = (max(1, round(self.size[0] * _ONE)), max(1, round(self.size[1] * _ONE)))
            cv2.ellipse(img, (int(fixed[0, 0]), int(fixed[0, 1])), axes, self.angle, 0, 360, color, -1, line, _SHIFT)


def _limb(a: np.ndarray, b: np.ndarray, wa: float, wb: float, color) -> list[_Prim]:
    """A tapered segment from a (width wa) to b (width wb) with rounded ends."""
    d = b - a
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6)
    quad = np.stack([a + n * wa / 2, b + n * wb / 2, b - n * wb / 2, a - n * wa / 2])
    return [
        _Prim("poly", quad, color),
        _Prim("circle", a[None], color, (wa / 2, wa / 2)),
        _Prim("circle", b[None], color, (wb / 2, wb / 2)),
    ]


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _hsv_color(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*s) * 255, rng.uniform(*v) * 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


_SKIN = np.array([[255, 224, 196], [241, 194, 155], [224, 172, 105], [198, 134, 66], [141, 85, 36], [90, 56, 37]])


# ---------------------------------------------------------------------------------------------- kinematic model
# Pose modes: (probability, joint-angle ranges in degrees). Limb angles are abduction angles: 0 = hanging along
# the torso axis, +90 = horizontal away from the body, 180 = straight up, negative = across the body.
_MODES = {
    "standing": (0.3, dict(lean=(-6, 6), arm=(-10, 35), elbow=(-30, 30), hip=(-4, 14), knee=(-10, 10))),
    "walking": (0.25, dict(lean=(-10, 10), arm=(-25, 45), elbow=(-70, 70), hip=(-22, 35), knee=(-45, 45))),
    "arms_up": (0.15, dict(lean=(-10, 10), arm=(95, 180), elbow=(-90, 90), hip=(-4, 20), knee=(-15, 15))),
    "bent": (0.15, dict(lean=(-45, 45), arm=(-20, 90), elbow=(-120, 120), hip=(10, 75), knee=(-140, -50))),
    "free": (0.15, dict(lean=(-30, 30), arm=(-30, 180), elbow=(-150, 150), hip=(-25, 90), knee=(-130, 130))),
}
# Segment lengths as fractions of the person's height (head top to ankle ~ 1.0).
_BODY = dict(
    torso=0.29, shoulder=0.105, hip=0.075, upper_arm=0.165, forearm=0.145, thigh=0.24, shin=0.235,
    neck=0.045, head_ry=0.065, head_rx=0.05,
)  # fmt: skip


@dataclass
class _Person:
    joints: dict[str, np.ndarray]  # COCO-17 name -> (2,) pixel-index coordinates
    prims: list[_Prim] = field(default_factory=list)
    annotated: bool = True


def _sample_person(
    rng: np.random.Generator, height: float, center: np.ndarray, rotation: float, mode: str | None = None
) -> _Person:
    """A posed, dressed person of ``height`` px whose bounding box is centred at ``center``, rotated in-plane."""
    if mode is None:
        names = list(_MODES)
        mode = names[rng.choice(len(names), p=[_MODES[m][0] for m in names])]
    ang = _MODES[mode][1]
    L = {k: v * rng.uniform(0.92, 1.08) for k, v in _BODY.items()}  # body proportions vary per person

    def u(key: str) -> float:
        return float(rng.uniform(*ang[key]))

    lean = u("lean")
    up = _rot(np.array([0.0, -1.0]), lean)  # torso axis (y points down)
    lat = _rot(np.array([1.0, 0.0]), lean)  # towards image right = the person's left (facing the camera)

    def direction(angle: float, side: int) -> np.ndarray:  # side -1: person's right (image left), +1: left
        t = math.radians(angle)
        return math.cos(t) * -up + math.sin(t) * side * lat

    j: dict[str, np.ndarray] = {}
    pelvis = np.zeros(2)
    shoulders = pelvis + L["torso"] * up
    for side, name in ((-1, "right"), (1, "left")):
        j[f"{name}_hip"] = pelvis + side * L["hip"] * lat
        j[f"{name}_shoulder"] = shoulders + side * L["shoulder"] * lat
        a_arm, a_hip = u("arm"), u("hip")
        j[f"{name}_elbow"] = j[f"{name}_shoulder"] + L["upper_arm"] * direction(a_arm, side)
        j[f"{name}_wrist"] = j[f"{name}_elbow"] + L["forearm"] * direction(a_arm + u("elbow"), side)
        j[f"{name}_knee"] = j[f"{name}_hip"] + L["thigh"] * direction(a_hip, side)
        j[f"{name}_ankle"] = j[f"{name}_knee"] + L["shin"] * direction(a_hip + u("knee"), side)
    # head: tilted on the neck, face turned a little (yaw shifts the eyes and nose sideways)
    head_up = _rot(up, rng.uniform(-20, 20))
    head_lat = np.array([-head_up[1], head_up[0]])
    head = shoulders + (L["neck"] + L["head_ry"]) * head_up
    rx, ry, yaw = L["head_rx"], L["head_ry"], rng.uniform(-0.3, 0.3)
    for side, name in ((-1, "right"), (1, "left")):
        j[f"{name}_eye"] = head + 0.15 * ry * head_up + (side * 0.42 + yaw) * rx * head_lat
        j[f"{name}_ear"] = head + side * 0.97 * rx * head_lat
    j["nose"] = head - 0.28 * ry * head_up + 1.25 * yaw * rx * head_lat

    # clothes and skin
    skin = tuple(int(c) for c in np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.integers(-12, 13, 3), 0, 255))
    dark_skin = tuple(int(c * 0.8) for c in skin)
    shirt = _hsv_color(rng, (0.35, 1.0), (0.3, 1.0))
    pants = _hsv_color(rng, (0.2, 0.9), (0.15, 0.8))
    shoes = _hsv_color(rng, (0.0, 0.5), (0.05, 0.4))
    hair = _hsv_color(rng, (0.2, 0.8), (0.05, 0.45))
    forearm_color = skin if rng.random() < 0.5 else shirt  # short or long sleeves
    shin_color = skin if rng.random() < 0.2 else pants  # shorts or trousers

    prims: list[_Prim] = []
    for name in ("right", "left"):  # legs first: the torso covers the hip joints
        hip, knee, ankle = j[f"{name}_hip"], j[f"{name}_knee"], j[f"{name}_ankle"]
        prims += _limb(hip, knee, 0.085, 0.062, pants)
        prims += _limb(knee, ankle, 0.062, 0.042, shin_color)
        toe = ankle + 0.05 * _rot(-up, rng.uniform(-30, 30)) + 0.03 * (lat if name == "left" else -lat)
        prims += _limb(ankle, toe, 0.042, 0.036, shoes)
    pad = 0.035
    torso = np.stack([
        j["right_shoulder"] - pad * lat + 0.02 * up, j["left_shoulder"] + pad * lat + 0.02 * up,
        j["left_hip"] + (pad + 0.01) * lat - 0.03 * up, j["right_hip"] - (pad + 0.01) * lat - 0.03 * up,
    ])  # fmt: skip
    prims.append(_Prim("poly", torso, shirt))
    prims += _limb(shoulders, head, 0.05, 0.05, skin)  # neck
    for name in ("right", "left"):
        sh, el, wr = j[f"{name}_shoulder"], j[f"{name}_elbow"], j[f"{name}_wrist"]
        prims += _limb(sh, el, 0.058, 0.046, shirt)
        prims += _limb(el, wr, 0.046, 0.034, forearm_color)
        hand_dir = (wr - el) / max(float(np.hypot(*(wr - el))), 1e-6)
        prims.append(_Prim("circle", (wr + 0.022 * hand_dir)[None], skin, (0.025, 0.025)))
    angle = math.degrees(math.atan2(head_up[0], -head_up[1]))
    for name in ("right", "left"):
        prims.append(_Prim("ellipse", j[f"{name}_ear"][None], dark_skin, (0.2 * rx, 0.32 * ry), angle))
    prims.append(_Prim("ellipse", head[None], skin, (rx, ry), angle))
    if rng.random() < 0.85:  # hair: a cap over the top of the head
        prims.append(_Prim("ellipse", (head + 0.45 * ry * head_up)[None], hair, (0.95 * rx, 0.6 * ry), angle))
    eye_color = (int(rng.integers(0, 60)),) * 3
    for name in ("right", "left"):
        prims.append(_Prim("circle", j[f"{name}_eye"][None], eye_color, (0.15 * rx, 0.15 * rx)))
    prims.append(_Prim("circle", j["nose"][None], dark_skin, (0.13 * rx, 0.13 * rx)))

    # local body units -> image: scale to height, rotate in-plane, centre the bounding box of the joints
    pts = np.stack(list(j.values()))
    local_center = (pts.min(0) + pts.max(0)) / 2 + np.array([0.0, -0.5 * L["head_ry"]])
    t = math.radians(rotation)
    R = height * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

    def to_img(p: np.ndarray) -> np.ndarray:
        return (p - local_center) @ R.T + center

    for p in prims:
        p.pts = to_img(p.pts)
        p.size = (p.size[0] * height, p.size[1] * height)
        p.angle += rotation
    return _Person({k: to_img(v) for k, v in j.items()}, prims)


# ---------------------------------------------------------------------------------------------- placement rules
# Annotated people are placed so that a bottom-up codec (heatmaps + PAFs at stride 8) can recover them from
# perfect maps, as COCO leaves barely visible people unannotated (see docs/data.md, "Placement rules").
_TORSO = ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
# Each joint's neighbours on the way to the torso (the skeleton's limbs; the neck is the shoulders' midpoint, so
# the nose hangs off the torso and an ear off its eye or shoulder). Listed parents first.
_PARENTS: dict[str, tuple[str, ...]] = {
    **{name: () for name in _TORSO},
    "nose": _TORSO[:2], "left_eye": ("nose",), "right_eye": ("nose",),
    "left_ear": ("left_eye", "left_shoulder"), "right_ear": ("right_eye", "right_shoulder"),
    "left_elbow": ("left_shoulder",), "right_elbow": ("right_shoulder",),
    "left_wrist": ("left_elbow",), "right_wrist": ("right_elbow",),
    "left_knee": ("left_hip",), "right_knee": ("right_hip",),
    "left_ankle": ("left_knee",), "right_ankle": ("right_knee",),
}  # fmt: skip
_CHECKED = (*RENDERED_JOINTS, "neck")  # the neck is a network joint too: its heatmap peaks can merge as well
# Corresponding joints of two annotated people stay this far apart (fraction of the image's longer side).
# 0.05 x 512 px = 25.6 px, i.e. 19 px = 2.7 heatmap sigmas (7 px) at the default 288x384 network input: the
# two peaks stay apart on the stride-8 grid instead of merging into one (the encoder takes the max of them).
_MIN_JOINT_GAP = 0.05
_PLACEMENT_TRIES = 30  # resamples of an annotated person before the scene does without it


def _check_points(joints: Mapping[str, np.ndarray], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Joints in :data:`_CHECKED` order: ((J, 2) pixel coordinates, (J,) bool inside the image)."""
    xy = np.stack([joints[n] for n in RENDERED_JOINTS] + [(joints["left_shoulder"] + joints["right_shoulder"]) / 2])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    return xy, inside


def _recoverable(inside: np.ndarray) -> bool:
    """Whether the joints inside the frame form one skeleton a decoder can assemble: the whole torso (so the
    neck exists and joins arms, legs and head) and every other labeled joint linked to it through labeled
    joints (a wrist whose elbow left the frame would be a stray fragment). At least 4 torso joints + the neck
    are labeled, more than the decoder's ``min_parts``."""
    on = dict(zip(_CHECKED, inside.tolist()))
    if not all(on[n] for n in _TORSO):
        return False
    linked: dict[str, bool] = {}
    for name, parents in _PARENTS.items():  # parents come first
        linked[name] = on[name] and (not parents or any(linked[p] for p in parents))
    return linked == {n: on[n] for n in _PARENTS}


def _separated(xy: np.ndarray, inside: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]], gap: float) -> bool:
    """Whether every labeled joint of a person ((J, 2), (J,) from :func:`_check_points`) is at least ``gap`` px
    from the same joint of each of ``others``. Bodies may still overlap and occlude each other."""
    for oxy, oin in others:
        both = inside & oin
        if both.any() and np.hypot(*(xy[both] - oxy[both]).T).min() < gap:
            return False
    return True


# ---------------------------------------------------------------------------------------------- scene
class _Scene:
    """One image being rendered: background, distractors, crowd, people; then its COCO annotations."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, params: Mapping):
        self.rng, self.h, self.w, self.params = rng, h, w, params
        self.people: list[_Person] = []
        self.crowd: np.ndarray | None = None  # (H, W) bool region of the crowd, if any
        self.ids = np.full((h, w), -1, np.int32)  # index of the person drawn last at each pixel

    # ------------------------------------------------------------------ layers
    def _background(self) -> np.ndarray:
        rng, h, w = self.rng, self.h, self.w
        # gradient + low-frequency colour blotches, both smooth: computed on a coarse grid and upsampled
        gh, gw = h // 8 + 1, w // 8 + 1
        c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
        t = math.radians(rng.uniform(0, 360))
        ramp = (np.arange(gw)[None, :] * math.cos(t) + np.arange(gh)[:, None] * math.sin(t)).astype(np.float32)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        coarse = c0 + ramp[..., None] * (c1 - c0)
        blotch = rng.uniform(-1, 1, (int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3)).astype(np.float32)
        coarse += rng.uniform(10, 60) * cv2.resize(blotch, (gw, gh), interpolation=cv2.INTER_CUBIC)
        img = cv2.resize(np.clip(coarse, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
        for _ in range(int(rng.integers(4, 14))):  # clutter: rectangles, circles, ellipses, triangles
            color = _hsv_color(rng, (0.0, 1.0), (0.1, 1.0))
            c = rng.uniform([0, 0], [w, h])
            s = rng.uniform(0.03, 0.3) * min(h, w)
            kind = rng.integers(4)
            thick = -1 if rng.random() < 0.7 else int(rng.integers(1, 4))
            if kind == 0:
                p0, p1 = (c - s).astype(int), (c + s * rng.uniform(0.3, 1.5, 2)).astype(int)
                cv2.rectangle(img, tuple(map(int, p0)), tuple(map(int, p1)), color, thick)
            elif kind == 1:
                cv2.circle(img, tuple(map(int, c)), int(s), color, thick, cv2.LINE_AA)
            elif kind == 2:
                axes = (int(s), int(s * rng.uniform(0.2, 1.0)))
                cv2.ellipse(img, tuple(map(int, c)), axes, rng.uniform(0, 180), 0, 360, color, thick, cv2.LINE_AA)
            else:
                tri = (c + rng.uniform(-s, s, (3, 2))).astype(np.int32)
                cv2.fillConvexPoly(img, tri, color, cv2.LINE_AA)
        return img

    def _distractors(self, img: np.ndarray) -> None:
        """Limb-like strokes (skin and cloth colours, limb widths, some bent) that are not people."""
        rng, h = self.rng, self.h
        lo, hi = self.params["person_height"]
        for _ in range(int(self.params["distractors"])):
            size = rng.uniform(lo, hi) * h
            color = (
                tuple(int(c) for c in _SKIN[rng.integers(len(_SKIN))])
                if rng.random() < 0.4
                else _hsv_color(rng, (0.3, 1.0), (0.2, 1.0))
            )
            a = rng.uniform([0, 0], [self.w, self.h])
            direction = rng.uniform(0, 360)
            pts = [a]
            for _ in range(int(rng.integers(1, 3))):
                direction += rng.uniform(-100, 100)
                pts.append(pts[-1] + 0.2 * size * _rot(np.array([1.0, 0.0]), direction))
            width = rng.uniform(0.03, 0.08) * size
            for p, q in zip(pts[:-1], pts[1:]):
                for prim in _limb(p, q, width, width * rng.uniform(0.6, 1.0), color):
                    prim.draw(img)

    def _crowd(self, img: np.ndarray) -> None:
        """A cluster of small people, annotated as one iscrowd region (COCO style), behind everyone else."""
        rng, h, w = self.rng, self.h, self.w
        n = int(rng.integers(4, 10))
        center = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        spread = rng.uniform(0.1, 0.25) * np.array([w, h * 0.4])
        region = np.zeros((h, w), np.uint8)
        heights = rng.uniform(0.07, 0.14, n) * h
        for k in np.argsort(heights):
            c = center + rng.uniform(-1, 1, 2) * spread
            person = _sample_person(rng, heights[k], c, rng.normal(0, 5), mode="standing")
            for p in person.prims:
                p.draw(img)
                p.draw(region, 1, aa=False)
        k = max(3, int(0.03 * h)) | 1  # close the gaps between the small people: one region, like COCO's
        region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        self.crowd = region.astype(bool)

    def _place_people(self, num_people: int, max_total: int | None) -> None:
        """Pose, scale, rotate and place the people; annotated ones only where a bottom-up decoder can find them.

        An annotated person is resampled (up to ``_PLACEMENT_TRIES`` times, then left out) unless it is
        :func:`_recoverable` in the frame and :func:`_separated` from the annotated people already placed.
        Unannotated people (masked out of the loss, absent from the eval) may go anywhere.
        """
        rng, h, w = self.rng, self.h, self.w
        lo, hi = self.params["person_height"]
        extra = 0
        if rng.random() < self.params["unannotated_prob"]:
            extra = 1 + int(rng.random() < 0.3)
        total = num_people + extra if max_total is None else min(num_people + extra, max_total)
        annotated = np.ones(total, bool)
        if extra:
            annotated[rng.choice(total, min(extra, total - 1), replace=False)] = False
        heights = rng.uniform(lo, hi, total) * h
        rotations = np.where(rng.random(total) < 0.85, rng.normal(0, 8, total), rng.uniform(-60, 60, total))
        gap = _MIN_JOINT_GAP * max(h, w)
        placed: list[tuple[float, np.ndarray, _Person]] = []  # (depth key, centre, person)
        kept: list[tuple[np.ndarray, np.ndarray]] = []  # (joints, in-frame) of the annotated people placed
        for i in range(total):
            for _ in range(_PLACEMENT_TRIES if annotated[i] else 1):
                if placed and rng.random() < 0.35:  # next to someone already placed: overlaps are common
                    anchor = placed[int(rng.integers(len(placed)))][1]
                    c = anchor + rng.normal(0, 0.25, 2) * heights[i]
                else:
                    c = rng.uniform([0.05 * w, 0.15 * h], [0.95 * w, 0.85 * h])
                person = _sample_person(rng, heights[i], c, float(rotations[i]))
                person.annotated = bool(annotated[i])
                if not person.annotated:
                    break
                xy, inside = _check_points(person.joints, h, w)
                if _recoverable(inside) and _separated(xy, inside, kept, gap):
                    kept.append((xy, inside))
                    break
            else:
                continue  # no recoverable placement in crowded scenes: one person fewer
            placed.append((heights[i] + rng.normal(0, 0.1 * h), c, person))
        order = np.argsort([depth for depth, _, _ in placed], kind="stable")  # roughly: smaller (farther) behind
        self.people = [placed[k][2] for k in order]

    def render(self, num_people: int, max_total: int | None = None) -> np.ndarray:
        """Draw the scene; returns (H, W, 3) uint8 RGB. People are drawn in ``self.people`` order (back first)."""
        img = self._background()
        self._distractors(img)
        if self.rng.random() < self.params["crowd_prob"]:
            self._crowd(img)
        self._place_people(num_people, max_total)
        for k, person in enumerate(self.people):
            for p in person.prims:
                p.draw(img)
                p.draw(self.ids, k, aa=False)
        noise = self.rng.integers(-6, 7, img.shape, dtype=np.int16)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        if self.rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (3, 3), 0.6)
        return img

    # ------------------------------------------------------------------ annotations
    def annotations(self, dataset_joints: list[str]) -> list[dict]:
        """COCO annotations (without ``id``/``image_id``): one per visible person, then the crowd region."""
        h, w, anns = self.h, self.w, []
        for k, person in enumerate(self.people):
            visible = (self.ids == k).view(np.uint8)
            area = cv2.countNonZero(visible)
            if area < 16:  # hidden behind later people: nothing to annotate
                continue
            kps = np.zeros((len(dataset_joints), 3), np.float64)
            if person.annotated:
                for d, name in enumerate(dataset_joints):
                    x, y = person.joints[name]
                    if 0 <= x <= w - 1 and 0 <= y <= h - 1:
                        covered = self.ids[int(round(y)), int(round(x))] > k  # a later person is on top
                        kps[d] = (round(float(x), 2), round(float(y), 2), 1 if covered else 2)
            x0, y0, bw, bh = cv2.boundingRect(visible)
            anns.append({
                "category_id": 1,
                "iscrowd": 0,
                "num_keypoints": int((kps[:, 2] > 0).sum()),
                "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(kps.ravel())],
                "bbox": [x0, y0, bw, bh],
                "area": float(area),
                "segmentation": _polygons(visible),
            })  # fmt: skip
        if self.crowd is not None and self.crowd.any():
            rle = mask_utils.encode(np.asfortranarray(self.crowd.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append({
                "category_id": 1,
                "iscrowd": 1,
                "num_keypoints": 0,
                "keypoints": [0] * (3 * len(dataset_joints)),
                "bbox": bbox,
                "area": float(mask_utils.area(rle)),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            })  # fmt: skip
        return anns


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) uint8 {0, 1} mask -> COCO polygons of its outer contours, in COCO's continuous coordinates
    (pixel k spans [k, k+1]).

    Contours through boundary-pixel centres would lose half of every boundary pixel when pycocotools rasterizes
    them (a third of a 3 px limb), so they are traced on the mask upsampled 2x: the outline then runs a quarter
    pixel inside the true edge, and rasterizes back to the mask. Douglas-Peucker with a 1 px tolerance (in
    image pixels) keeps ~55 vertices per person instead of ~280, and the JSON small (mean IoU with the mask 0.96).
    """
    x0, y0, w, h = cv2.boundingRect(mask)
    up = cv2.resize(mask[y0 : y0 + h, x0 : x0 + w], (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # small people have 1-3 px limbs, which a 1 px tolerance would shave off: their tolerance shrinks with them
    tol = float(np.clip(max(w, h) / 100, 0.5, 1.0)) * _POLYGON_TOLERANCE
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 2 * tol, True).reshape(-1, 2)  # 2x: upsampled units
        if len(c) >= 3:
            xy = (c - 1 + 0.5) / 2.0 + (x0, y0)  # upsampled pixel u (after the pad) is centred at (u + 0.5) / 2
            polys.append([round(float(v), 2) for v in xy.ravel()])
    if not polys:  # a 1-2 px sliver: its bounding box
        polys.append([float(v) for v in (x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h)])
    return polys


# ============================================================================================== command line
def preview(params: Mapping, split: str, index: int, skeleton: Skeleton) -> np.ndarray:
    """One rendered image with its ground truth drawn: skeletons of the annotated people (v = 1 joints too),
    grey boxes around unannotated people and the crowd region's outline in red. (H, W, 3) uint8 RGB."""
    from posekit.codec.decode import People
    from posekit.viz.overlay import draw_people

    img, anns = render_image(params, split, index)
    people = [a for a in anns if a["num_keypoints"] > 0]
    kps = skeleton.to_network(np.array([a["keypoints"] for a in people], np.float32).reshape(len(people), -1))
    out = draw_people(img, People(kps, np.ones(len(people), np.float32)), skeleton, thickness=1)
    for a in anns:
        if a["iscrowd"]:
            region = mask_utils.decode(a["segmentation"] | {"counts": a["segmentation"]["counts"].encode()})
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, (255, 40, 40), 1, cv2.LINE_AA)
        elif a["num_keypoints"] == 0:
            x, y, w, h = a["bbox"]
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (160, 160, 160), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m posekit.data.synthetic [OVERRIDES] [--preview OUT.jpg --index N]``: generate the synthetic
    dataset of the composed config (e.g. ``preset=cpu_demo`` or ``data.synthetic.num_train=500``) and print its
    paths and the time taken, or draw one of its images with the annotations."""
    import argparse
    import time

    from omegaconf import OmegaConf

    from posekit import io

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for launch.py")
    ap.add_argument("--preview", help="write one annotated image here (.jpg) instead of generating the dataset")
    ap.add_argument("--split", default="train", choices=SPLITS)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--quality", type=int, default=80, help="JPEG quality of the preview")
    args = ap.parse_args(argv)
    from posekit.config import compose

    cfg = compose(args.overrides)
    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    if args.preview:
        image = preview(generation_params(cfg.data.synthetic, skeleton), args.split, args.index, skeleton)
        with io.atomic_path(args.preview) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, args.quality])
        print(f"wrote {args.preview}")
        return
    start = time.perf_counter()
    paths = ensure_synthetic(cfg.data.synthetic, skeleton)
    for key, path in paths.items():
        print(f"{key}: {path}")
    n = int(cfg.data.synthetic.num_train) + int(cfg.data.synthetic.num_val)
    print(f"{n} images ready in {time.perf_counter() - start:.1f} s (0 s means it was cached)")


if __name__ == "__main__":
    main()
