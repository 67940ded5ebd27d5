"""The embedded synthetic dataset: deterministic, cached, valid COCO person keypoints with the hard cases
(occlusion, out-of-frame joints, unannotated people, crowds)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from posekit.config import DecodeConfig, SyntheticConfig
from posekit.data.synthetic import dataset as synthetic_dataset
from posekit.data.synthetic import MIN_JOINT_GAP, VAL_MAX_PEOPLE, ensure_synthetic
from tests.conftest import compose


def _cfg(tmp_path, **kw) -> SyntheticConfig:
    base = dict(num_train=12, num_val=6, image_size=[128, 160], cache_dir=str(tmp_path))
    return SyntheticConfig(**{**base, **kw})


def _coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def hard_set(tmp_path_factory, skeleton):
    """Crowds and unannotated people in most images, many overlapping people."""
    cfg = SyntheticConfig(num_train=30, num_val=20, image_size=[160, 208], min_people=2, max_people=8,
                          crowd_prob=0.6, unannotated_prob=0.6, cache_dir=str(tmp_path_factory.mktemp("syn")))
    return ensure_synthetic(cfg, skeleton, workers=1)


def test_same_seed_same_dataset_whatever_the_process_count(tmp_path, skeleton, monkeypatch):
    a = ensure_synthetic(_cfg(tmp_path / "a"), skeleton, workers=1)
    monkeypatch.setattr(synthetic_dataset, "_IMAGES_PER_PROCESS", 4)  # let 18 images use a 2-process pool
    b = ensure_synthetic(_cfg(tmp_path / "b"), skeleton, workers=2)
    for key in ("train_ann", "val_ann"):
        assert a[key].read_bytes() == b[key].read_bytes()
    for key in ("train_images", "val_images"):
        files = sorted(p.name for p in a[key].iterdir())
        assert files == sorted(p.name for p in b[key].iterdir()) and files
        assert all((a[key] / f).read_bytes() == (b[key] / f).read_bytes() for f in files)
    c = ensure_synthetic(_cfg(tmp_path / "a", seed=1), skeleton, workers=1)
    assert c["train_ann"].parent != a["train_ann"].parent  # another seed: another cache folder ...
    assert c["train_ann"].read_bytes() != a["train_ann"].read_bytes()  # ... and other scenes


def test_generated_once_then_reused_and_never_left_half_written(tmp_path, skeleton, monkeypatch):
    cfg = _cfg(tmp_path, num_train=3, num_val=2)
    first = ensure_synthetic(cfg, skeleton, workers=1)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic_dataset, "_render_to_file", fail)
    assert ensure_synthetic(cfg, skeleton) == first
    # a generation killed mid-way leaves no dataset folder (only its temporary folder is removed)
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_synthetic(_cfg(tmp_path, num_train=4, num_val=2), skeleton, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [first["train_ann"].parent.parent.name]


def test_coco_format_is_valid_and_has_the_hard_cases(hard_set, skeleton):
    seen_v, kinds = Counter(), Counter()
    torso = [skeleton.dataset_joints.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
    for split in ("train", "val"):
        coco = _coco(hard_set[f"{split}_ann"])
        assert coco.loadCats(1)[0] == skeleton.coco_category()
        for img in coco.loadImgs(coco.getImgIds()):
            assert (hard_set[f"{split}_images"] / img["file_name"]).is_file()
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                kps = np.array(ann["keypoints"], float).reshape(-1, 3)
                assert kps.shape == (len(skeleton.dataset_joints), 3) and ann["category_id"] == 1
                assert ann["num_keypoints"] == (kps[:, 2] > 0).sum()
                assert set(kps[:, 2]) <= {0, 1, 2} and not kps[kps[:, 2] == 0, :2].any()
                lab = kps[:, 2] > 0
                assert (kps[lab, 0] >= 0).all() and (kps[lab, 0] <= img["width"] - 1).all()
                assert (kps[lab, 1] >= 0).all() and (kps[lab, 1] <= img["height"] - 1).all()
                seen_v.update(kps[:, 2].astype(int).tolist())
                mask = coco.annToMask(ann).astype(bool)  # polygons and RLE both decode
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                if ann["iscrowd"]:
                    kinds["crowd"] += 1
                    assert isinstance(ann["segmentation"], dict) and ann["num_keypoints"] == 0
                    assert ann["area"] == mask.sum() > 0
                    continue
                kinds["annotated" if ann["num_keypoints"] else "unannotated"] += 1
                if ann["num_keypoints"]:  # recoverable by construction: the whole torso, so neck and >= min_parts
                    assert (kps[torso, 2] > 0).all() and ann["num_keypoints"] >= DecodeConfig.min_parts
                assert isinstance(ann["segmentation"], list)
                assert abs(mask.sum() - ann["area"]) <= 0.3 * ann["area"] + 20  # polygon of the visible pixels
                # visible keypoints sit on the person's own pixels; covered ones (v=1) mostly do not
                vis = np.round(kps[kps[:, 2] == 2, :2]).astype(int)
                if len(vis):
                    assert mask[vis[:, 1], vis[:, 0]].mean() >= 0.8
            _assert_same_joints_apart(coco, img, min_gap=MIN_JOINT_GAP * max(img["height"], img["width"]))
    assert seen_v[0] and seen_v[1] and seen_v[2], seen_v
    assert kinds["crowd"] and kinds["unannotated"] and kinds["annotated"] > kinds["unannotated"], kinds


def _assert_same_joints_apart(coco, img, min_gap):
    """Corresponding labeled joints of two annotated people of an image are >= min_gap px apart (their
    heatmap peaks would merge otherwise)."""
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False)) if a["num_keypoints"]]
    kps = np.array([a["keypoints"] for a in anns], float).reshape(len(anns), -1, 3)
    for i in range(len(kps)):
        for o in range(i):
            both = (kps[i, :, 2] > 0) & (kps[o, :, 2] > 0)
            if both.any():
                assert np.hypot(*(kps[i, both, :2] - kps[o, both, :2]).T).min() >= min_gap - 0.02  # 2-decimal rounding


def test_val_images_hold_at_most_20_people(tmp_path, skeleton):
    paths = ensure_synthetic(_cfg(tmp_path, num_train=4, num_val=4, min_people=22, max_people=26, crowd_prob=0.0,
                                  image_size=[256, 256], person_height=[0.2, 0.4]), skeleton, workers=1)
    per_image = {}
    for split in ("train", "val"):
        anns = json.loads(paths[f"{split}_ann"].read_text())["annotations"]
        per_image[split] = Counter(a["image_id"] for a in anns if not a["iscrowd"])
    assert max(per_image["val"].values()) <= VAL_MAX_PEOPLE
    assert max(per_image["train"].values()) > VAL_MAX_PEOPLE  # the cap is a val-only rule


def test_crowd_region_covers_its_small_people(hard_set):
    coco = _coco(hard_set["train_ann"])
    crowds = coco.loadAnns(coco.getAnnIds(iscrowd=True))
    assert crowds
    for ann in crowds:
        rle = ann["segmentation"]
        assert mask_utils.area(rle) == ann["area"]
        assert ann["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())


def test_datamodule_on_the_tiny_preset(skeleton):
    from posekit.data.datamodule import PoseDataModule

    cfg = compose("preset=tiny")
    dm = PoseDataModule(cfg)
    assert dm.skeleton == skeleton and dm.paths.train_ann.is_file() and dm.paths.val_images.is_dir()
    H, W = cfg.model.input_shape
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        n = cfg.data.batch_size
        assert batch["image"].shape == (n, 3, H, W)
        assert batch["heatmaps"].shape == (n, skeleton.num_heatmaps, H // 8, W // 8)
        assert batch["pafs"].shape == (n, skeleton.num_pafs, H // 8, W // 8)
        assert batch["mask"].shape == (n, 1, H // 8, W // 8)
        assert batch["image_id"].shape == (n,)
    assert len(dm.val_set) == cfg.data.synthetic.num_val  # one val sample per image



@pytest.mark.parametrize("nice", [0, 5])
def test_loader_workers_run_at_the_priority_debug_worker_nice_asks(nice):
    """The loader's own worker start-up (its worker_init_fn, in its multiprocessing context) lowers a worker's
    priority by ``debug.worker_nice``, so the training process gets the CPU first."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from posekit.data.datamodule import PoseDataModule

    loader = PoseDataModule(compose("preset=tiny", "data.num_workers=1", f"debug.worker_nice={nice}"))._loader(
        list(range(4)), train=False)
    with ProcessPoolExecutor(1, mp_context=loader.multiprocessing_context, initializer=loader.worker_init_fn,
                             initargs=(0,)) as pool:
        worker = pool.submit(os.nice, 0).result(timeout=60)
    assert worker == min(19, os.nice(0) + nice)


def test_worker_nice_out_of_range_says_what_to_use():
    from posekit.config import ConfigError, validate

    with pytest.raises(ConfigError, match="debug.worker_nice=-3.*0 \\(off\\) to 19"):
        validate(compose("preset=tiny", "debug.worker_nice=-3"))

# A process that has already run OpenCV's thread pool (an in-process eval, as in stage=pipeline before retrain)
# then starts loader workers. Forked workers inherit the pool in whatever state it is and hang in their first
# OpenCV call; the data module starts fresh (forkserver) workers. Run in a subprocess with a deadline.
_LOADER_AFTER_CV2 = """
import cv2, numpy as np
from tests.conftest import compose
import posekit.data.datamodule as dmod
img = np.zeros((2000, 2000, 3), np.uint8)
for _ in range(20):  # spin up OpenCV's worker threads in the parent
    cv2.warpAffine(img, np.eye(2, 3), (1500, 1500))
dm = dmod.PoseDataModule(compose("preset=tiny", "data.num_workers=2"))
batch = next(iter(dm.train_dataloader()))
print("batch", tuple(batch["image"].shape))
"""


def test_loader_workers_start_after_the_parent_used_opencv_threads():
    """(With fork-started workers this times out: verified when the fix was made.)"""
    import os

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", _LOADER_AFTER_CV2], capture_output=True, text=True, timeout=90,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "batch (4, 3, 128, 128)" in out.stdout
