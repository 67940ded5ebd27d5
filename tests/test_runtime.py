"""Runtime: preprocessing affines, the predictor's mapping back to the image, flip / multi-scale test, batching,
the torch backend and backend dispatch."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from posekit.codec import encode
from posekit.config import RuntimeConfig
from posekit.data.images import read_image_rgb
from posekit.errors import MissingArtifactError, UserError
from posekit.model import BpNetLite, save_model
from posekit.runtime import Backend, Predictor, TorchBackend, load_backend, preprocess
from posekit.runtime.backends import BACKENDS
from posekit.runtime.preprocess import adjust_affine, apply_affine, scaled_input_hw, strict_affine

INPUT_HW = (288, 384)


def runtime(**kw) -> RuntimeConfig:
    return RuntimeConfig(**kw)


@pytest.fixture(scope="module")
def scenes(coco_sample, skeleton):
    """[(image (H, W, 3) RGB, GT (P, J, 3) network order, original pixels)] for two COCO sample images."""
    data = json.loads((coco_sample / "test_coco.json").read_text())
    out = []
    for image_id in (196141, 785):
        im = next(i for i in data["images"] if i["id"] == image_id)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]
        kps = skeleton.to_network(np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1))
        out.append((read_image_rgb(coco_sample / im["file_name"]), kps))
    return out


class OracleBackend(Backend):
    """An ideal network for known images: it recognises each preprocessed (and possibly mirrored) input and
    returns the encoder's maps of that image's ground truth in the input frame."""

    name = "oracle"

    def __init__(self, skeleton, scenes, mode, input_hw, scales=(1.0,), fixed_input=False, batch=None):
        self.skeleton, self.scenes, self.mode, self.cfg_hw, self.scales = skeleton, scenes, mode, input_hw, scales
        self.input_hw = tuple(input_hw) if fixed_input else None
        self.batch = batch
        self.meta = {}
        self.batch_sizes: list[int] = []

    def _truth(self, x: np.ndarray) -> np.ndarray:
        for image, kps in self.scenes:
            for s in self.scales:
                p = preprocess(image, scaled_input_hw(self.cfg_hw, s), self.mode)
                if p.batch.shape[1:] != x.shape:
                    continue
                out = kps.copy()
                out[..., :2] = apply_affine(kps[..., :2], p.affine)
                if np.array_equal(p.batch[0], x):
                    return out
                if np.array_equal(p.batch[0][..., ::-1], x):  # mirrored input: mirrored people, left <-> right
                    out[..., 0] = x.shape[-1] - 1 - out[..., 0]
                    return out[:, self.skeleton.flip_perm]
        if not x.any():
            return np.zeros((0, self.skeleton.num_joints, 3), np.float32)  # padding of a static batch
        raise AssertionError("oracle: unknown input")

    def __call__(self, batch):
        self.batch_sizes.append(batch.shape[0])
        maps = [encode(self._truth(x), self.skeleton, (x.shape[1] // 8, x.shape[2] // 8)) for x in batch]
        return np.stack([m[0] for m in maps]), np.stack([m[1] for m in maps])


def match_error(people, gt):
    """Largest distance (original pixels) between GT joints and the joints of the best-matching person, over
    the GT joints the decoder found, and the fraction found."""
    worst, found, total = 0.0, 0, 0
    for g in gt:
        lab = g[:, 2] > 0
        d = np.hypot(*(people.keypoints[:, :, :2] - g[None, :, :2]).transpose(2, 0, 1))  # (N, J)
        hit = (people.keypoints[:, :, 2] > 0) & lab[None]
        best = np.argmin(np.where(hit, d, 1e6).mean(axis=1))
        ok = hit[best]
        worst = max(worst, float(d[best][ok].max()))
        found += int(ok.sum())
        total += int(lab.sum())
    return worst, found / total


# ------------------------------------------------------------------------------------------- preprocessing
def spot_image(hw, points, radius=3.0):
    """Gray image with a bright Gaussian spot at each (x, y) (pixel-index coordinates)."""
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]]
    v = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * radius**2)) for x, y in points)
    return np.repeat((128 + 127 * np.clip(v, 0, 1)).astype(np.uint8)[..., None], 3, axis=2)


def spot_centroids(batch):
    """Intensity-weighted centroids of the spots in a normalized (1, 3, H, W) input, sorted by x."""
    v = batch[0, 0] * 256 + 128 - 128  # back to intensity above the gray background
    n, labels = cv2.connectedComponents((v > 8).astype(np.uint8))
    ys, xs = np.mgrid[0 : v.shape[0], 0 : v.shape[1]]
    w = np.where(v > 0, v, 0)
    cents = [(np.sum(xs * w * (labels == i)) / np.sum(w * (labels == i)),
              np.sum(ys * w * (labels == i)) / np.sum(w * (labels == i))) for i in range(1, n)]
    return np.array(sorted(cents))


@pytest.mark.parametrize("mode", ["strict", "adjust"])
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
@pytest.mark.parametrize("image_hw", [(300, 500), (420, 260)])
def test_warp_agrees_with_the_affine(mode, interpolation, image_hw):
    # the spots land where the affine says: the warp and the coordinates share one pixel convention
    points = np.array([[40.3, 60.7], [image_hw[1] / 2 + 0.4, image_hw[0] / 2 - 10.2],
                       [image_hw[1] - 50.6, image_hw[0] - 45.1]])
    p = preprocess(spot_image(image_hw, points, radius=6.0), INPUT_HW, mode, interpolation)
    expected = np.array(sorted(apply_affine(points, p.affine).tolist()))
    np.testing.assert_allclose(spot_centroids(p.batch), expected, atol=0.05)


def test_strict_and_adjust_shapes():
    img = np.full((300, 500, 3), 255, np.uint8)
    p = preprocess(img, INPUT_HW, "strict")
    assert p.input_hw == INPUT_HW and p.batch.dtype == np.float32
    content = p.batch[0, 0] > 0.4  # white content; the border is 128 -> 0 after normalization
    rows, cols = np.flatnonzero(content.any(1)), np.flatnonzero(content.any(0))
    assert cols[0] == 0 and cols[-1] == INPUT_HW[1] - 1  # fits the width
    assert abs(rows[0] - (INPUT_HW[0] - 1 - rows[-1])) <= 1  # centred vertically
    assert np.abs(p.batch[0, :, 0, :]).max() < 0.01  # gray (128) padding
    a = preprocess(img, INPUT_HW, "adjust")
    assert a.input_hw[1] == INPUT_HW[1] and a.input_hw[0] % 8 == 0 and a.input_hw[0] < INPUT_HW[0]
    assert a.input_hw[0] - 8 < 300 * INPUT_HW[1] / 500 <= a.input_hw[0]
    # pixel edges: the image's [-0.5, 499.5] spans the input's [-0.5, 383.5]; vertically centred with scale 0.768
    s, top = 0.768, -0.5 + (288 - 300 * 0.768) / 2
    np.testing.assert_allclose(apply_affine([[-0.5, -0.5], [499.5, 299.5]], strict_affine((300, 500), INPUT_HW)),
                               [[-0.5, top], [383.5, top + 300 * s]], atol=1e-9)
    affine, hw = adjust_affine((300, 500), INPUT_HW)
    assert hw == a.input_hw and affine[0, 0] == pytest.approx(0.768)


def test_bad_mode_is_a_user_error():
    from posekit.config import compose, validate

    with pytest.raises(UserError, match="runtime.mode"):
        validate(compose(["runtime.mode=stretch"]))
    with pytest.raises(UserError, match="runtime.interpolation"):
        validate(compose(["runtime.interpolation=nearest"]))


# ------------------------------------------------------------------------------------------- predictor
@pytest.mark.parametrize("mode", ["strict", "adjust"])
def test_predictor_maps_back_to_the_original_image(skeleton, scenes, mode):
    oracle = OracleBackend(skeleton, scenes, mode, INPUT_HW)
    predictor = Predictor(oracle, skeleton, None, runtime(mode=mode), INPUT_HW)
    for image, gt in scenes:
        people = predictor.predict(image)
        assert len(people) == len(gt)
        worst, found = match_error(people, gt)
        assert found >= 0.95 and worst < 0.5, (worst, found)  # sub-pixel in the original image
    assert set(predictor.last_timings) >= {"preprocess_ms", "network_ms", "decode_ms", "total_ms"}


def test_flip_test_gives_the_same_people(skeleton, scenes):
    oracle = OracleBackend(skeleton, scenes, "strict", INPUT_HW)
    plain = Predictor(oracle, skeleton, None, runtime(), INPUT_HW)
    flip = Predictor(oracle, skeleton, None, runtime(flip=True), INPUT_HW)
    for image, _ in scenes:
        a, b = plain.predict(image), flip.predict(image)
        assert len(a) == len(b)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)
    assert oracle.batch_sizes[-2:] == [1, 1]  # the mirrored pass ran


def test_multi_scale_gives_the_same_people(skeleton, scenes):
    oracle = OracleBackend(skeleton, scenes, "strict", INPUT_HW, scales=(1.0, 1.5))
    single = Predictor(oracle, skeleton, None, runtime(), INPUT_HW)
    multi = Predictor(oracle, skeleton, None, runtime(scales=[1.0, 1.5]), INPUT_HW)
    for image, gt in scenes:
        a, b = single.predict(image), multi.predict(image)
        assert len(a) == len(b) == len(gt)
        worst, found = match_error(b, gt)
        assert found >= 0.95 and worst < 1.5, (worst, found)


def test_fixed_input_backend_forces_strict_single_scale(skeleton, scenes):
    oracle = OracleBackend(skeleton, scenes, "strict", (256, 320), fixed_input=True)
    predictor = Predictor(oracle, skeleton, None, runtime(mode="adjust", scales=[0.5, 1.0]), INPUT_HW)
    assert (predictor.mode, predictor.scales, predictor.input_hw) == ("strict", [1.0], (256, 320))
    image, gt = scenes[0]
    assert len(predictor.predict(image)) == len(gt)


def test_predict_many_batches_and_pads_static_batches(skeleton, scenes):
    images = [scenes[0][0], scenes[1][0], scenes[0][0]]
    oracle = OracleBackend(skeleton, scenes, "strict", INPUT_HW)
    batched = Predictor(oracle, skeleton, None, runtime(batch_size=2), INPUT_HW).predict_many(images)
    assert oracle.batch_sizes == [2, 1]
    static = OracleBackend(skeleton, scenes, "strict", INPUT_HW, batch=4)
    padded = Predictor(static, skeleton, None, runtime(), INPUT_HW).predict_many(images)
    assert static.batch_sizes == [4]
    single = Predictor(OracleBackend(skeleton, scenes, "strict", INPUT_HW), skeleton, None, runtime(), INPUT_HW)
    for img, a, b in zip(images, batched, padded):
        ref = single.predict(img)
        np.testing.assert_allclose(a.keypoints, ref.keypoints, atol=1e-4)
        np.testing.assert_allclose(b.keypoints, ref.keypoints, atol=1e-4)


# ------------------------------------------------------------------------------------------- torch backend
def tiny_model(num_heatmaps=19, num_pafs=38) -> BpNetLite:
    torch.manual_seed(0)
    return BpNetLite(stages=2, num_heatmaps=num_heatmaps, num_pafs=num_pafs, width=0.125)


def test_torch_backend_outputs_and_leaves_the_model_alone():
    model = tiny_model()
    model.train()
    backend = TorchBackend(model, cuda_graphs=False)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3, 64, 96)).astype(np.float32)
    heat, paf = backend(x)
    assert heat.shape == (2, 19, 8, 12) and paf.shape == (2, 38, 8, 12) and heat.dtype == np.float32
    assert model.training  # restored after the eval-mode forward
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    np.testing.assert_allclose(heat, ref[0][-1].numpy(), atol=1e-5)
    bf16_heat, _ = TorchBackend(model, precision="bf16", cuda_graphs=False)(x)
    assert bf16_heat.dtype == np.float32
    np.testing.assert_allclose(bf16_heat, heat, atol=0.05 * np.abs(heat).max() + 1e-3)


def test_load_backend_dispatch(tmp_path, skeleton, coco_sample):
    path = save_model(tmp_path / "model.pt", tiny_model())
    backend = load_backend(path, runtime(device="cpu"))
    assert isinstance(backend, TorchBackend) and backend.meta["artifact"] == str(path)
    predictor = Predictor(backend, skeleton, None, runtime(), (128, 160))
    people = predictor.predict(read_image_rgb(coco_sample / "000000000785.jpg"))
    assert people.keypoints.shape[1:] == (skeleton.num_joints, 3)

    with pytest.raises(UserError, match="unsupported file type"):
        load_backend(tmp_path / "model.h5")
    with pytest.raises(MissingArtifactError, match="not found"):
        load_backend(tmp_path / "missing.onnx")


def test_load_backend_reports_a_missing_backend_module(tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(b"\0")
    monkeypatch.setitem(BACKENDS, ".onnx", "posekit.runtime.no_such_backend:OrtBackend")
    with pytest.raises(UserError, match="no runtime backend"):
        load_backend(tmp_path / "model.onnx")


def test_skeleton_mismatch_is_a_user_error(skeleton, coco_sample):
    backend = TorchBackend(tiny_model(num_heatmaps=15, num_pafs=28), cuda_graphs=False)
    predictor = Predictor(backend, skeleton, None, runtime(), (128, 160))
    with pytest.raises(UserError, match="keypoints"):
        predictor.predict(read_image_rgb(coco_sample / "000000000785.jpg"))
