"""COCO keypoint evaluation: pycocotools agreement, sigmas, result format, the evaluate loop and the eval stage."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from posekit.codec import People
from posekit.errors import UserError
from posekit.evaluate import STATS, evaluate, evaluate_detections, people_to_coco
from posekit.model import BpNetLite, save_model
from posekit.skeleton import Skeleton
from tests.conftest import compose


@pytest.fixture(scope="module")
def gt_data(coco_sample):
    return json.loads((coco_sample / "test_coco.json").read_text())


def gt_detections(data, jitter=0.0, seed=0):
    """The GT annotations as COCO results (optionally with Gaussian noise on the coordinates)."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in data["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        k = np.array(a["keypoints"], np.float64).reshape(-1, 3)
        k[:, :2] += rng.normal(0, jitter, (len(k), 2)) * (k[:, 2:] > 0)
        dets.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.ravel().tolist(),
                     "score": float(rng.uniform(0.5, 1))})
    return dets


def pycocotools_stats(ann, dets, img_ids=None) -> list[float] | None:
    """pycocotools' own 10 summary numbers (``COCOeval.summarize``, maxDets 20, COCO-17 sigmas) for COCO results
    ``dets`` on the images ``img_ids`` (default all): the reference posekit's evaluation must reproduce.
    None without detections (``loadRes`` cannot load an empty list)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        if not dets:
            return None
        E = COCOeval(gt, gt.loadRes(copy.deepcopy(list(dets))), "keypoints")
        if img_ids is not None:
            E.params.imgIds = list(img_ids)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return list(E.stats)


def test_ground_truth_scores_ap_one(coco_sample, gt_data, skeleton):
    metrics = evaluate_detections(coco_sample / "test_coco.json", gt_detections(gt_data), skeleton)
    assert set(metrics) == set(STATS)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)


def test_summary_matches_pycocotools(coco_sample, gt_data, skeleton):
    ann = coco_sample / "test_coco.json"
    dets = gt_detections(gt_data, jitter=6.0)[1:]  # noisy, one person missed
    dets.append({**dets[0], "keypoints": (np.array(dets[0]["keypoints"]) + 40).tolist(), "score": 0.99})  # a FP
    ours = evaluate_detections(ann, dets, skeleton, print_table=False)
    assert 0.2 < ours["AP"] < 0.95
    np.testing.assert_allclose([ours[k] for k in STATS], pycocotools_stats(ann, dets), atol=1e-12)


def test_skeleton_sigmas_are_used(coco_sample, gt_data, skeleton):
    ann = coco_sample / "test_coco.json"
    dets = gt_detections(gt_data, jitter=5.0)
    base = evaluate_detections(ann, dets, skeleton, print_table=False)
    loose = dataclasses.replace(skeleton, sigmas=tuple(2 * s for s in skeleton.sigmas))
    assert evaluate_detections(ann, dets, loose, print_table=False)["AP"] > base["AP"] + 0.05


def test_max_dets_limits_detections(coco_sample, gt_data, skeleton):
    ann = coco_sample / "test_coco.json"
    metrics = evaluate_detections(ann, gt_detections(gt_data), skeleton, max_dets=1, print_table=False)
    assert metrics["AR"] < 0.9  # images with several people keep one detection each


def test_people_to_coco_format(skeleton):
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    kps[0, skeleton.joints.index("left_wrist")] = [10.7, 20.26, 0.8]
    kps[0, skeleton.joints.index("neck")] = [5, 5, 0.9]  # no dataset joint: dropped
    [det] = people_to_coco(People(kps, np.array([0.75], np.float32)), 42, skeleton, category_id=3)
    assert det["image_id"] == 42 and det["category_id"] == 3 and det["score"] == pytest.approx(0.75)
    k = np.array(det["keypoints"]).reshape(-1, 3)
    assert k.shape == (len(skeleton.dataset_joints), 3)
    wrist = skeleton.dataset_joints.index("left_wrist")
    assert k[wrist].tolist() == pytest.approx([10.7, 20.26, 1])  # float coordinates (TAO truncates)
    assert not np.delete(k, wrist, axis=0).any()  # missing joints are [0, 0, 0]


class GroundTruthPredictor:
    """Stands in for a perfect predictor: returns each image's GT people (images told apart by their size)."""

    chunk = 2

    def __init__(self, data, skeleton):
        self.by_shape = {}
        for im in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0]
            k = skeleton.to_network(np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1))
            k[..., 2] = k[..., 2] > 0
            self.by_shape[(im["height"], im["width"])] = People(k, np.ones(len(k), np.float32))
        self.calls = []

    def predict_many(self, images):
        self.calls.append(len(images))
        return [self.by_shape[img.shape[:2]] for img in images]


def test_evaluate_skips_corrupt_images(tmp_path, coco_sample, gt_data, skeleton):
    images = tmp_path / "images"
    shutil.copytree(coco_sample, images)
    (images / "000000040083.jpg").write_bytes(b"not a jpeg")
    predictor = GroundTruthPredictor(gt_data, skeleton)
    metrics, dets = evaluate(predictor, images / "test_coco.json", images, skeleton, progress=False)
    assert metrics["images"] == 3 and metrics["skipped_images"] == 1
    assert metrics["AP"] == pytest.approx(1.0)  # the unreadable image is not scored as misses
    assert {d["image_id"] for d in dets} == {785, 196141, 197388}
    assert predictor.calls == [2, 1]  # batched by the predictor's chunk

    metrics, dets = evaluate(predictor, images / "test_coco.json", images, skeleton, max_images=1, progress=False)
    assert metrics["images"] == 1 and {d["image_id"] for d in dets} == {785}


def test_evaluate_custom_category_and_wrong_skeleton(tmp_path, gt_data, skeleton, coco_sample):
    data = copy.deepcopy(gt_data)
    data["categories"][0]["id"] = 7
    for a in data["annotations"]:
        a["category_id"] = 7
    ann = tmp_path / "custom.json"
    ann.write_text(json.dumps(data))
    metrics, dets = evaluate(GroundTruthPredictor(data, skeleton), ann, coco_sample, skeleton, progress=False)
    assert metrics["AP"] == pytest.approx(1.0) and {d["category_id"] for d in dets} == {7}
    five = Skeleton.from_cfg({"name": "five", "dataset_joints": ["a", "b", "c", "d", "e"], "sigmas": [0.05] * 5,
                              "joints": ["a", "b", "c", "d", "e"], "limbs": [["a", "b"]]})
    with pytest.raises(UserError, match="5 keypoints"):
        evaluate_detections(ann, [], five)


def test_eval_stage_writes_metrics(tmp_path, coco_sample):
    from posekit.stages import eval as eval_stage

    torch_model = BpNetLite(stages=2, num_heatmaps=19, num_pafs=38, width=0.125)
    model = save_model(tmp_path / "tiny.pt", torch_model)
    paths = [f"data.{k}={coco_sample / v}" for k, v in (("train_ann", "test_coco.json"), ("train_images", "."),
                                                        ("val_ann", "test_coco.json"), ("val_images", "."))]
    cfg = compose("stage=eval", "preset=tiny", "data=coco", "data.root=unused", *paths,
                  f"eval.artifact={model}", f"experiment.root={tmp_path / 'exp'}")
    metrics = eval_stage.run(cfg)
    out = tmp_path / "exp" / "default" / "eval" / "tiny"
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "eval" and summary["metrics"]["images"] == 4
    # a random model: whatever it detects, the stage's numbers are pycocotools' for the detections it wrote
    dets = json.loads((out / "detections.json").read_text())
    expected = pycocotools_stats(coco_sample / "test_coco.json", dets)
    if expected is None:  # nothing detected on images that hold people: no precision, no recall
        assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0
    else:
        np.testing.assert_allclose([metrics[k] for k in STATS], expected, atol=1e-12)
