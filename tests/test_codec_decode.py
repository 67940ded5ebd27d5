"""Decoder: encode -> decode round trips (COCO AP with pycocotools), sub-pixel accuracy, grouping rules."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from posekit.codec import Decoder, People, decode, encode
from posekit.config import DecodeConfig
from posekit.evaluate import evaluate_detections, people_to_coco
from posekit.runtime.preprocess import apply_affine, invert_affine, strict_affine

INPUT_HW = (288, 384)


def round_trip_detections(ann_file, skeleton, input_hw=INPUT_HW, decode_cfg=None):
    """GT -> strict affine (as inference) -> encode -> decode -> inverse affine -> COCO results."""
    data = json.loads(ann_file.read_text())
    decoder = Decoder(skeleton, decode_cfg)
    detections = []
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0]
        kps = skeleton.to_network(np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1))
        affine = strict_affine((im["height"], im["width"]), input_hw)
        kps[..., :2] = apply_affine(kps[..., :2], affine)
        heat, paf = encode(kps, skeleton, (input_hw[0] // 8, input_hw[1] // 8))
        people = decoder(heat, paf).transformed(invert_affine(affine))
        detections += people_to_coco(people, im["id"], skeleton)
    return detections


def test_round_trip_coco_sample(coco_sample, skeleton):
    ann = coco_sample / "test_coco.json"
    metrics = evaluate_detections(ann, round_trip_detections(ann, skeleton), skeleton, print_table=False)
    print(f"COCO sample round trip at {INPUT_HW[0]}x{INPUT_HW[1]}: AP {metrics['AP']:.3f} AR {metrics['AR']:.3f}")
    assert metrics["AP"] >= 0.95, metrics
    assert metrics["AR"] >= 0.95, metrics


def test_round_trip_synthetic_val(skeleton):
    # Every annotated person of the synthetic val set, as COCO eval counts them: the generator places people so
    # a bottom-up codec can recover them (torso in frame, linked joints, same joints >= 2 sigma apart).
    from posekit.data.synthetic import ensure_synthetic
    from tests.conftest import compose

    cfg = compose("data.synthetic.num_train=1", "data.synthetic.num_val=60")  # default scenes, fewer of them
    ann = ensure_synthetic(cfg.data.synthetic, skeleton)["val_ann"]
    data = json.loads(ann.read_text())
    people = sum(a["num_keypoints"] > 0 and not a["iscrowd"] for a in data["annotations"])
    metrics = evaluate_detections(ann, round_trip_detections(ann, skeleton), skeleton, print_table=False)
    print(f"synthetic val round trip at {INPUT_HW[0]}x{INPUT_HW[1]}: AP {metrics['AP']:.3f} AR {metrics['AR']:.3f} "
          f"on all {people} annotated people of {len(data['images'])} images")
    assert people >= 2 * len(data["images"])  # multi-person scenes, not a trivially easy set
    assert metrics["AP"] >= 0.95, metrics


def _person(skeleton, rng, center, height):
    """An upright person ``height`` pixels tall centred on ``center`` (network order, all joints labeled)."""
    # x, y in person-height units around the hip centre; COCO-17 order
    t = np.array([[0, -0.85], [0.03, -0.88], [-0.03, -0.88], [0.07, -0.86], [-0.07, -0.86], [0.13, -0.7],
                  [-0.13, -0.7], [0.18, -0.45], [-0.18, -0.45], [0.2, -0.22], [-0.2, -0.22], [0.08, -0.2],
                  [-0.08, -0.2], [0.09, 0.15], [-0.09, 0.15], [0.1, 0.48], [-0.1, 0.48]], np.float32)
    t = (t - [0, (t[:, 1].max() + t[:, 1].min()) / 2]) / np.ptp(t[:, 1])  # head to ankles: [-0.5, 0.5]
    xy = center + (t + rng.normal(0, 0.01, t.shape)) * height
    ds = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)[None]
    return skeleton.to_network(ds)


def test_subpixel_refinement_is_exact_for_gaussians(skeleton):
    rng = np.random.default_rng(0)
    for _ in range(5):
        kps = _person(skeleton, rng, center=rng.uniform([150, 130], [230, 160]), height=220.0)
        heat, paf = encode(kps, skeleton, (36, 48))
        people = decode(heat, paf, skeleton)
        assert len(people) == 1
        err = np.abs(people.keypoints[0, :, :2] - kps[0, :, :2]).max()
        assert err < 0.05, err  # a log-parabola through a sampled Gaussian recovers its centre
    coarse = decode(heat, paf, skeleton, dataclasses.replace(DecodeConfig(), subpixel=False))
    assert np.abs(coarse.keypoints[0, :, :2] - kps[0, :, :2]).max() > 0.5  # the refinement does something


@pytest.mark.parametrize("upsample,smooth", [(4, 0.0), (2, 3.0), (1, 3.0)])
def test_upsampling_and_smoothing_keep_people(skeleton, upsample, smooth):
    rng = np.random.default_rng(1)
    kps = np.concatenate([_person(skeleton, rng, np.array([110.0, 150.0]), 200.0),
                          _person(skeleton, rng, np.array([270.0, 160.0]), 180.0)])
    heat, paf = encode(kps, skeleton, (36, 48))
    cfg = dataclasses.replace(DecodeConfig(), upsample=upsample, smooth_sigma=smooth)
    people = decode(heat, paf, skeleton, cfg)
    assert len(people) == 2
    order = np.argsort(people.keypoints[:, 1, 0])  # left person first
    err = np.abs(people.keypoints[order, :, :2] - kps[..., :2]).max()
    assert err < 1.0, err


def test_torch_and_numpy_inputs_agree(skeleton):
    rng = np.random.default_rng(2)
    kps = _person(skeleton, rng, np.array([190.0, 150.0]), 200.0)
    heat, paf = encode(kps, skeleton, (36, 48))
    a = decode(heat, paf, skeleton)
    b = decode(torch.from_numpy(heat), torch.from_numpy(paf), skeleton)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_plateau_gives_one_peak(skeleton):
    # joint midway between two cell centres (3.5 and 11.5): two equal maxima on the grid
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    kps[0, 0] = [7.5 + 8 * 10, 3.5 + 8 * 10, 2]
    heat, _ = encode(kps, skeleton, (36, 48))
    joint, xy, _ = Decoder(skeleton).find_peaks(heat)
    assert joint.tolist() == [0]
    np.testing.assert_allclose(xy[0], kps[0, 0, :2], atol=0.05)


def test_empty_maps_give_no_people(skeleton):
    heat, paf = encode(np.zeros((0, skeleton.num_joints, 3)), skeleton, (36, 48))
    people = decode(heat, paf, skeleton)
    assert len(people) == 0 and people.keypoints.shape == (0, skeleton.num_joints, 3)


def _only(skeleton, kps, names):
    out = kps.copy()
    keep = np.isin(np.array(skeleton.joints), names)
    out[:, ~keep] = 0
    return out


def test_partial_skeletons_are_merged(skeleton):
    # No left shoulder -> no neck: the right arm (limbs from r_shoulder) and the head (limbs from the nose)
    # grow as two partial people until the r_eye -> r_ear limb joins them.
    rng = np.random.default_rng(3)
    names = ["nose", "right_eye", "left_eye", "right_ear", "left_ear", "right_shoulder", "right_elbow", "right_wrist"]
    kps = _only(skeleton, _person(skeleton, rng, np.array([190.0, 200.0]), 240.0), names)
    heat, paf = encode(kps, skeleton, (36, 48))
    people = decode(heat, paf, skeleton)
    assert len(people) == 1
    found = people.keypoints[0, :, 2] > 0
    assert sorted(np.array(skeleton.joints)[found]) == sorted(names)


def test_no_new_person_limbs(skeleton):
    rng = np.random.default_rng(4)
    kps = _only(skeleton, _person(skeleton, rng, np.array([190.0, 250.0]), 500.0),
                ["right_eye", "left_eye", "right_ear", "left_ear"])
    heat, paf = encode(kps, skeleton, (36, 48))
    cfg = dataclasses.replace(DecodeConfig(), min_parts=2)
    assert len(decode(heat, paf, skeleton, cfg)) == 0  # eye->ear limbs may not start a person (TAO)
    free = dataclasses.replace(skeleton, no_new_person_limbs=())
    assert len(decode(heat, paf, free, cfg)) == 2  # each eye-ear pair becomes a person


def test_broken_paf_rejects_the_limb(skeleton):
    rng = np.random.default_rng(5)
    kps = _person(skeleton, rng, np.array([190.0, 150.0]), 230.0)
    heat, paf = encode(kps, skeleton, (36, 48))
    k = skeleton.limbs.index((skeleton.joints.index("right_shoulder"), skeleton.joints.index("right_elbow")))
    elbow = kps[0, skeleton.joints.index("right_elbow"), :2]
    # erase the PAF on the half of the limb next to the elbow: < paf_min_ratio of the samples pass
    ys, xs = np.mgrid[0:36, 0:48] * 8 + 3.5
    near = np.hypot(xs - elbow[0], ys - elbow[1]) < 0.5 * np.linalg.norm(
        elbow - kps[0, skeleton.joints.index("right_shoulder"), :2])
    paf[2 * k : 2 * k + 2, near] = 0
    people = decode(heat, paf, skeleton)
    assert len(people) == 1
    found = set(np.array(skeleton.joints)[people.keypoints[0, :, 2] > 0])
    assert "right_elbow" not in found and "right_wrist" not in found
    assert "right_shoulder" in found and "left_wrist" in found


def test_filters_and_ranking(skeleton):
    rng = np.random.default_rng(6)
    full = _person(skeleton, rng, np.array([100.0, 150.0]), 220.0)
    few = _only(skeleton, _person(skeleton, rng, np.array([290.0, 150.0]), 220.0),
                ["neck", "right_shoulder", "right_elbow", "left_shoulder", "left_elbow", "left_shoulder"])
    heat, paf = encode(np.concatenate([full, few]), skeleton, (36, 48))
    people = decode(heat, paf, skeleton)
    assert len(people) == 2 and people.scores[0] > people.scores[1]  # more parts rank first
    assert (people.keypoints[0, :, 2] > 0).sum() == skeleton.num_joints
    assert len(decode(heat, paf, skeleton, dataclasses.replace(DecodeConfig(), min_parts=6))) == 1
    assert len(decode(heat, paf, skeleton, dataclasses.replace(DecodeConfig(), max_people=1))) == 1


def test_people_transform_keeps_missing_joints_at_zero(skeleton):
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    kps[0, 0] = [10, 20, 0.9]
    p = People(kps, np.array([0.5], np.float32)).transformed(np.array([[2.0, 0, 1], [0, 2.0, -1]]))
    assert p.keypoints[0, 0].tolist() == pytest.approx([21, 39, 0.9])
    assert not p.keypoints[0, 1:].any()


@pytest.mark.parametrize("upsample,smooth", [(1, 0.0), (2, 0.0), (4, 3.0)])
def test_device_and_host_peak_paths_agree(skeleton, upsample, smooth):
    # GPU tensors take the torch path, host arrays the OpenCV one: same candidates, same values
    rng = np.random.default_rng(7)
    kps = np.concatenate([_person(skeleton, rng, rng.uniform([80, 100], [300, 180]), 150.0) for _ in range(4)])
    heat, _ = encode(kps, skeleton, (36, 48))
    heat = heat[: skeleton.num_joints] + rng.normal(0, 0.03, heat[: skeleton.num_joints].shape).astype(np.float32)
    decoder = Decoder(skeleton, dataclasses.replace(DecodeConfig(), upsample=upsample, smooth_sigma=smooth))
    host = decoder._peaks_cv2(heat)
    device = decoder._peaks_torch(torch.from_numpy(heat))
    assert host[0].size > 4 * 12
    order_h, order_d = np.lexsort(host[:3][::-1]), np.lexsort(device[:3][::-1])
    for a, b in zip(host[:5], device[:5]):
        np.testing.assert_allclose(a[order_h], b[order_d], atol=1e-5)
    assert host[5] == device[5]


@pytest.mark.parametrize("upsample", [1, 2])
def test_device_maps_go_the_faster_way_and_decode_the_same_people(skeleton, upsample, monkeypatch):
    """Maps on a device: upsampled ones are searched there (torch), stride-8 ones are copied to the host in one piece
    and searched with OpenCV (the faster of the two on an H200 host, docs/eval-infer.md). Either way the people
    equal those decoded from numpy arrays."""
    decode_module = importlib.import_module("posekit.codec.decode")  # (the package's `decode` is the function)

    # No GPU here: CPU tensors stand in for device tensors.
    monkeypatch.setattr(decode_module, "_on_device", lambda x: isinstance(x, torch.Tensor))
    searched_on_device = []
    device_search = Decoder._peaks_torch
    monkeypatch.setattr(Decoder, "_peaks_torch", lambda self, h: searched_on_device.append(1) or device_search(self, h))
    rng = np.random.default_rng(3)
    kps = np.concatenate([_person(skeleton, rng, rng.uniform([80, 100], [300, 180]), 150.0) for _ in range(3)])
    heat, paf = encode(kps, skeleton, (36, 48))
    decoder = Decoder(skeleton, dataclasses.replace(DecodeConfig(), upsample=upsample))
    host = decoder(heat, paf)
    device = decoder(torch.from_numpy(heat), torch.from_numpy(paf))
    assert bool(searched_on_device) == (upsample > 1)
    assert len(host) == len(device) == 3
    np.testing.assert_allclose(device.keypoints, host.keypoints, atol=1e-4)
    np.testing.assert_allclose(device.scores, host.scores, atol=1e-5)
