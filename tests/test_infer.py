"""infer stage (images, folders with a corrupt file, video) and skeleton overlays."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from posekit.codec import People
from posekit.errors import UserError
from posekit.model import BpNetLite, save_model
from posekit.viz import SIDE_COLORS, draw_people
from tests.conftest import compose, run_cli


@pytest.fixture()
def tiny_model(tmp_path):
    return save_model(tmp_path / "tiny.pt", BpNetLite(stages=2, num_heatmaps=19, num_pafs=38, width=0.125))


@pytest.fixture()
def image_folder(tmp_path, coco_sample):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in coco_sample.glob("*.jpg"):
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def gt_people(coco_sample, skeleton):
    """{(height, width): People} of the COCO sample's ground truth (images told apart by size)."""
    data = json.loads((coco_sample / "test_coco.json").read_text())
    out = {}
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0]
        k = skeleton.to_network(np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1))
        k[..., 2] = k[..., 2] > 0
        out[(im["height"], im["width"])] = People(k, np.linspace(0.9, 0.3, len(k)).astype(np.float32))
    return out


class FakePredictor:
    chunk = 2

    def __init__(self, people):
        self.people = people
        self.backend = type("B", (), {"name": "fake", "meta": {}})()

    def predict_many(self, images):
        return [self.people[img.shape[:2]] for img in images]


@pytest.mark.slow
def test_cli_infer_folder(tmp_path, image_folder, tiny_model):
    proc = run_cli("stage=infer", "preset=tiny", f"infer.input={image_folder}", f"infer.artifact={tiny_model}",
                   f"experiment.root={tmp_path / 'exp'}")
    out = tmp_path / "exp" / "default" / "infer" / "photos"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        p.stem + ".jpg" for p in image_folder.glob("0*.jpg"))
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    assert len(json.loads((out / "images.json").read_text())) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["skipped"] == 1 and summary["skipped_files"][0].endswith("broken.jpg")
    assert "broken.jpg" in proc.stdout + proc.stderr  # reported to the user


def test_infer_writes_people_and_overlays(tmp_path, image_folder, tiny_model, coco_sample, skeleton, monkeypatch):
    from posekit.stages import infer

    people = gt_people(coco_sample, skeleton)
    monkeypatch.setattr(infer, "build_predictor", lambda cfg, artifact, sk: FakePredictor(people))
    out = tmp_path / "out"
    cfg = compose("stage=infer", "preset=tiny", f"infer.input={image_folder}", f"infer.artifact={tiny_model}",
                  f"infer.output={out}", "infer.min_score=0.5", f"experiment.root={tmp_path / 'exp'}")
    metrics = infer.run(cfg)
    kept = sum(int((p.scores >= 0.5).sum()) for p in people.values())
    assert metrics == {"images": 4, "people": kept, "skipped": 1}
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == kept and all(len(d["keypoints"]) == 3 * len(skeleton.dataset_joints) for d in dets)
    # Detections land on the image they came from: each image's detections are the ground truth of its file
    # (by name, from the annotation file, not from the predictor), people in order. The images hold 1, 2, 4
    # and 5 people at different places, so detections attached to another image would not match.
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    gt_id = {im["file_name"]: im["id"] for im in gt["images"]}
    images = json.loads((out / "images.json").read_text())
    assert sorted(im["file_name"] for im in images) == sorted(gt_id)
    for im in images:
        anns = [a for a in gt["annotations"] if a["image_id"] == gt_id[im["file_name"]] and a["num_keypoints"] > 0]
        scores = np.linspace(0.9, 0.3, len(anns)).astype(np.float32)  # gt_people's scores, in annotation order
        expected = [[v for x, y, vis in np.reshape(a["keypoints"], (-1, 3)) for v in ((x, y, 1) if vis else (0, 0, 0))]
                    for a, score in zip(anns, scores) if score >= 0.5]
        found = [d["keypoints"] for d in dets if d["image_id"] == im["id"]]
        assert len(found) == len(expected) and found == [pytest.approx(e, abs=0.01) for e in expected], im
    overlay = cv2.imread(str(out / "overlays" / "000000000785.jpg"))
    original = cv2.imread(str(coco_sample / "000000000785.jpg"))
    assert overlay.shape == original.shape and np.abs(overlay.astype(int) - original).mean() > 0.5


def test_infer_video(tmp_path, coco_sample, tiny_model, skeleton, monkeypatch):
    from posekit.stages import infer

    frame = cv2.imread(str(coco_sample / "000000197388.jpg"))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (frame.shape[1], frame.shape[0]))
    for i in range(5):
        writer.write(np.roll(frame, 3 * i, axis=1))
    writer.release()
    people = gt_people(coco_sample, skeleton)
    monkeypatch.setattr(infer, "build_predictor", lambda cfg, artifact, sk: FakePredictor(people))
    cfg = compose("stage=infer", "preset=tiny", f"infer.input={video}", f"infer.artifact={tiny_model}",
                  f"experiment.root={tmp_path / 'exp'}")
    metrics = infer.run(cfg)
    out = tmp_path / "exp" / "default" / "infer" / "clip"
    assert metrics["images"] == 5 and metrics["people"] == 5 * len(people[frame.shape[:2]])
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert [im["frame"] for im in json.loads((out / "images.json").read_text())] == list(range(5))


def test_infer_input_errors(tmp_path, tiny_model):
    from posekit.stages import infer

    base = ["stage=infer", "preset=tiny", f"infer.artifact={tiny_model}", f"experiment.root={tmp_path}"]
    with pytest.raises(UserError, match="infer.input is not set"):
        infer.run(compose(*base))
    (tmp_path / "table.csv").write_text("a,b")
    with pytest.raises(UserError, match="not an image"):
        infer.run(compose(*base, f"infer.input={tmp_path / 'table.csv'}"))
    with pytest.raises(UserError, match="not found"):
        infer.run(compose(*base, f"infer.input={tmp_path / 'nothing.jpg'}"))


def test_draw_people_colours_limbs_by_side(skeleton):
    image = np.zeros((200, 200, 3), np.uint8)
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    j = skeleton.joints.index
    kps[0, j("left_shoulder")] = [150, 40, 1]
    kps[0, j("left_elbow")] = [150, 160, 1]
    kps[0, j("right_shoulder")] = [50, 40, 1]
    kps[0, j("right_elbow")] = [50, 160, 1]
    kps[0, j("right_wrist")] = [10, 190, 0]  # missing: its limb is not drawn
    out = draw_people(image, People(kps, np.ones(1, np.float32)), skeleton, thickness=3)
    assert not image.any()  # the input is left alone
    assert tuple(out[100, 150]) == SIDE_COLORS["left"] and tuple(out[100, 50]) == SIDE_COLORS["right"]
    assert not out[185:195, 10:20].any() and not out[100, 100].any()


def test_infer_unreadable_only_image_is_an_error(tmp_path, tiny_model):
    from posekit.stages import infer

    (tmp_path / "broken.png").write_bytes(b"garbage")
    cfg = compose("stage=infer", "preset=tiny", f"infer.input={tmp_path / 'broken.png'}",
                  f"infer.artifact={tiny_model}", f"experiment.root={tmp_path}")
    with pytest.raises(UserError, match="could be read"):
        infer.run(cfg)
