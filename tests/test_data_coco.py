"""The COCO loader on the real COCO sample: loss masks, person-centric augmentation, flips, targets following
the image, unreadable images, and missing paths."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from posekit.codec.encode import cell_centers
from posekit.config import AugmentConfig, CodecConfig
from posekit.data import masks
from posekit.data.coco import PoseDataset, select_main_people
from posekit.data.paths import resolve_data
from posekit.errors import UserError
from tests.conftest import compose

INPUT_HW = (256, 256)
NO_JITTER = dict(scale_jitter=[1.0, 1.0], rotate_deg=0.0, translate_px=0.0, color_jitter=0.0, hue_jitter=0.0)


def _dataset(root, skeleton, train=True, augment=None, ann="test_coco.json", **kw):
    return PoseDataset(root / ann, root, skeleton, INPUT_HW, CodecConfig(), augment, train=train, **kw)


def _coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# ---------------------------------------------------------------------------------------------- masks
def test_unlabeled_people_are_masked_on_the_real_sample(coco_sample):
    coco = _coco(coco_sample / "test_coco.json")
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        valid = masks.valid_mask(anns, img["height"], img["width"])
        assert valid.shape == (img["height"], img["width"]) and valid.dtype == np.uint8
        unlabeled = np.zeros_like(valid, bool)
        people = np.zeros_like(valid, bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            people |= m
            if a["num_keypoints"] == 0:
                unlabeled |= m
        assert not valid[unlabeled].any()  # every unlabeled person's pixel is out of the loss
        assert valid[~unlabeled].all()  # and nothing else (no crowds in the sample)
        checked += unlabeled.any()
    assert checked == 2  # the sample's two num_keypoints == 0 people, in two images


def test_crowd_pixels_are_masked_except_where_a_labeled_person_is():
    def box(x, y, w, h, **kw):
        return {"segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "bbox": [x, y, w, h], **kw}

    anns = [box(10, 10, 40, 30, iscrowd=1, num_keypoints=0), box(20, 20, 10, 10, iscrowd=0, num_keypoints=5),
            box(60, 5, 10, 10, iscrowd=0, num_keypoints=0)]  # fmt: skip
    valid = masks.valid_mask(anns, 50, 80)
    assert not valid[12:38, 12:18].any() and not valid[12:18, 32:48].any()  # crowd
    assert valid[21:29, 21:29].all()  # labeled person inside the crowd stays valid
    assert not valid[6:14, 61:69].any()  # unlabeled person
    assert valid[45:, :].all() and valid[:, 75:].all()


def test_mask_follows_the_affine_and_is_averaged_per_cell():
    valid = np.ones((64, 64), np.uint8)
    valid[:, :20] = 0  # columns 0..19 masked
    out = masks.warp_mask(valid, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (64, 64), 8)
    assert out.shape == (1, 8, 8) and out.dtype == np.float32
    assert np.allclose(out[0, :, :2], 0) and np.allclose(out[0, :, 3:], 1)
    assert np.allclose(out[0, :, 2], 0.5)  # cell 2 covers columns 16..23: half of them masked
    shifted = masks.warp_mask(valid, np.array([[1.0, 0, 32], [0, 1.0, 0]]), (64, 64), 8)
    assert np.allclose(shifted[0, :, :4], 1)  # the border (outside the source) counts as valid
    assert np.allclose(shifted[0, :, 4:6], 0)


# ---------------------------------------------------------------------------------------------- loader
def test_items_have_the_documented_shapes(coco_sample, skeleton):
    H, W = INPUT_HW
    h, w = H // 8, W // 8
    train = _dataset(coco_sample, skeleton, augment=AugmentConfig(), seed=0)
    val = _dataset(coco_sample, skeleton, train=False)
    assert len(train) == 12  # one sample per main person: every labeled person of the sample qualifies
    assert len(val) == 4  # one per image
    for ds in (train, val):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.uint8  # normalized on device
            if not ds.train:  # deterministic: the item is the sample's image, channels first
                assert torch.equal(item["image"], torch.from_numpy(ds.sample(i)["image"]).permute(2, 0, 1))
            assert item["heatmaps"].shape == (skeleton.num_heatmaps, h, w)
            assert item["pafs"].shape == (skeleton.num_pafs, h, w)
            assert item["mask"].shape == (1, h, w) and 0 <= float(item["mask"].min()) <= float(item["mask"].max()) <= 1
            assert isinstance(item["image_id"], int)
    # the images with an unlabeled person have a partly masked validation item
    masked = {val[i]["image_id"] for i in range(len(val)) if float(val[i]["mask"].min()) < 1}
    assert masked == {40083, 196141}


def test_validation_letterboxes_the_whole_image(coco_sample, skeleton):
    val = _dataset(coco_sample, skeleton, train=False)
    s = val.sample(0)  # image 785, 640x425 -> 256 wide, centred vertically
    img = cv2.cvtColor(cv2.imread(str(coco_sample / "000000000785.jpg")), cv2.COLOR_BGR2RGB)
    scale = 256 / 640
    top = (256 - 425 * scale) / 2
    assert np.allclose(s["matrix"], [[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5 + top]])
    assert (s["image"][: int(top) - 1] == 128).all() and (s["image"][-int(top) + 1 :] == 128).all()
    small = cv2.resize(img, (256, round(425 * scale)), interpolation=cv2.INTER_AREA)
    inner = s["image"][int(np.ceil(top)) + 2 : int(top + 425 * scale) - 2].astype(float)
    assert np.abs(inner - small[2 : 2 + len(inner)]).mean() < 12  # the same picture, resampled


def test_flip_mirrors_the_image_and_swaps_left_right(coco_sample, skeleton):
    plain = _dataset(coco_sample, skeleton, augment=AugmentConfig(**NO_JITTER, flip_prob=0.0))
    flipped = _dataset(coco_sample, skeleton, augment=AugmentConfig(**NO_JITTER, flip_prob=1.0))
    perm, rev = skeleton.limb_flip
    fp = skeleton.flip_perm
    for i in range(len(plain)):
        a, b = plain.sample(i), flipped.sample(i)
        assert b["flipped"] and not a["flipped"]
        # The mirrored warp resamples the same pixels; OpenCV releases round a few edge pixels differently (4.x:
        # up to 4 levels), so: all but a handful of pixels within 1 level, none off by more than a few.
        diff = np.abs(b["image"].astype(int) - a["image"][:, ::-1].astype(int))
        assert (diff > 1).mean() < 1e-3 and diff.max() <= 8, (diff.max(), (diff > 1).mean())
        assert np.allclose(b["mask"], a["mask"][..., ::-1])
        ka, kb = a["keypoints"], b["keypoints"]
        lab = ka[..., 2] > 0
        assert np.allclose(kb[:, fp][lab, 0], INPUT_HW[1] - 1 - ka[lab, 0], atol=1e-3)  # x mirrored ...
        assert np.allclose(kb[:, fp][lab, 1], ka[lab, 1], atol=1e-3)  # ... under the swapped label
        ha, pa = plain.encoder(ka)
        hb, pb = flipped.encoder(kb)
        assert np.allclose(hb[:-1], ha[:-1][fp][..., ::-1], atol=1e-5)  # left_* maps = mirrored right_* maps
        assert np.allclose(hb[-1], ha[-1][..., ::-1], atol=1e-5)
        sign = np.where(rev, -1.0, 1.0)[:, None, None]
        assert np.allclose(pb[0::2][perm], -sign * pa[0::2][..., ::-1], atol=1e-5)  # x flips sign
        assert np.allclose(pb[1::2][perm], sign * pa[1::2][..., ::-1], atol=1e-5)


def test_augmentation_is_reproducible_from_the_seed(coco_sample, skeleton):
    def items(seed):
        ds = _dataset(coco_sample, skeleton, augment=AugmentConfig(), seed=seed)
        return [ds[i] for i in range(3)]

    a, b, c = items(0), items(0), items(1)
    for x, y in zip(a, b):
        assert all(bool((x[k] == y[k]).all()) for k in ("image", "heatmaps", "pafs", "mask"))
    assert any(not bool((x["image"] == z["image"]).all()) for x, z in zip(a, c))


@pytest.fixture(scope="module")
def marked_sample(coco_sample, tmp_path_factory):
    """The sample with coloured squares painted on person 442619's left wrist and nose (image 785: one person),
    saved losslessly, so the test can find where the image content goes."""
    root = tmp_path_factory.mktemp("marked")
    for f in coco_sample.iterdir():
        shutil.copy(f, root / f.name)
    ann = next(a for a in json.loads((coco_sample / "test_coco.json").read_text())["annotations"]
               if a["id"] == 442619)  # fmt: skip
    kps = np.array(ann["keypoints"], float).reshape(-1, 3)
    img = cv2.imread(str(root / "000000000785.jpg"))
    markers = {}
    for joint, bgr in (("left_wrist", (255, 0, 255)), ("nose", (255, 255, 0))):
        x, y, v = kps[["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist"].index(joint)]  # fmt: skip
        assert v == 2
        cv2.rectangle(img, (int(x) - 6, int(y) - 6), (int(x) + 6, int(y) + 6), bgr, -1)
        markers[joint] = np.array(bgr[::-1], float)  # RGB
    ok, png = cv2.imencode(".png", img)
    (root / "000000000785.jpg").write_bytes(png.tobytes())  # PNG bytes: the decoder sniffs the content
    return root, markers


def test_keypoints_and_heatmap_peaks_follow_the_image(marked_sample, skeleton):
    root, markers = marked_sample
    ds = _dataset(root, skeleton, augment=AugmentConfig(color_jitter=0.0, hue_jitter=0.0))
    rng = np.random.default_rng(0)
    idx = [i for i in range(len(ds)) if ds.sample(i, rng)["image_id"] == 785]
    cells = cell_centers(INPUT_HW[0] // 8, 8)
    checked = flips = 0
    for _ in range(12):  # random rotations, scales, shifts and flips
        s = ds.sample(idx[0], rng)
        for joint, rgb in markers.items():
            blob = np.linalg.norm(s["image"].astype(float) - rgb, axis=-1) < 40
            if blob.sum() < 4:  # the marker left the crop
                continue
            ys, xs = np.nonzero(blob)
            j = skeleton.joints.index(joint)
            label = int(skeleton.flip_perm[j]) if s["flipped"] else j  # a flipped left wrist is a right wrist
            x, y, v = s["keypoints"][0, label]
            assert v == 2 and np.hypot(xs.mean() - x, ys.mean() - y) < 1.5, (joint, s["flipped"])
            heat, _ = ds.encoder(s["keypoints"])
            i, k = np.abs(cells - ys.mean()).argmin(), np.abs(cells - xs.mean()).argmin()
            assert heat[label, i, k] > 0.7  # the target peak sits on the marker's cell
            checked += 1
            flips += s["flipped"]
    assert checked >= 12 and 0 < flips < checked


def test_an_unreadable_image_is_skipped_and_counted(coco_sample, tmp_path, skeleton, caplog):
    for f in coco_sample.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "000000196141.jpg").write_bytes(b"not a jpeg")  # 4 of the 12 training samples
    ds = _dataset(tmp_path, skeleton, augment=AugmentConfig(), seed=0)
    with caplog.at_level(logging.WARNING, logger="posekit.data"):
        ids = [ds[i]["image_id"] for i in range(len(ds))]
    assert len(ids) == len(ds) and 196141 not in ids  # each bad sample was replaced by a readable one
    assert ds.num_skipped == 1  # counted once per image, not per sample or per epoch
    warnings = [r.getMessage() for r in caplog.records if "000000196141.jpg" in r.getMessage()]
    assert len(warnings) == 1 and "1 so far" in warnings[0]


# ---------------------------------------------------------------------------------------------- main people
def test_main_people_distance_uses_each_persons_own_box():
    centers = np.array([[100.0, 100.0], [120.0, 100.0], [300.0, 100.0], [105.0, 100.0]])
    sizes = np.array([[200.0, 300.0], [40.0, 60.0], [40.0, 60.0], [40.0, 60.0]])
    nkp = np.array([17, 12, 4, 12])
    area = np.array([5e4, 2e3, 2e3, 2e3])
    # person 1 is 20 px from person 0: far enough for its own box (0.3 * 60 = 18) though not for person 0's
    # (TAO's stale box would be the last annotation's); person 2 has too few keypoints; person 3 is 5 px away
    assert select_main_people(centers, sizes, nkp, area) == [0, 1]
    assert select_main_people(centers, sizes, nkp, area, min_area=1e4) == [0]


# ---------------------------------------------------------------------------------------------- paths
def test_missing_paths_name_the_override(coco_sample, tmp_path, skeleton):
    with pytest.raises(UserError, match="data.root"):
        resolve_data(compose("data=coco"))
    with pytest.raises(UserError, match=r"data\.train_ann.*data\.root=/path/to/coco"):
        resolve_data(compose("data=coco", f"data.root={tmp_path / 'nowhere'}"))
    ann, images = coco_sample / "test_coco.json", coco_sample
    ok = [f"data.train_ann={ann}", f"data.train_images={images}", f"data.val_images={images}"]
    with pytest.raises(UserError, match=r"data\.val_ann=/path/to/file\.json"):
        resolve_data(compose("data=coco", *ok, f"data.val_ann={tmp_path / 'missing.json'}"))
    paths = resolve_data(compose("data=coco", *ok, f"data.val_ann={ann}"))
    assert paths.val_ann == ann.resolve() and paths.train_images == images.resolve()
    with pytest.raises(UserError, match="annotation file not found"):
        PoseDataset(tmp_path / "missing.json", coco_sample, skeleton, INPUT_HW, CodecConfig())
    with pytest.raises(UserError, match="image folder not found"):
        PoseDataset(ann, tmp_path / "no-images", skeleton, INPUT_HW, CodecConfig())


def test_device_normalization_matches_the_inference_preprocessing():
    """Training normalizes uint8 batches on the device; it must give the numbers inference's numpy path gives."""
    from posekit.data.images import normalize, normalize_tensor

    img = np.random.default_rng(0).integers(0, 256, (2, 8, 16, 3), dtype=np.uint8)
    on_device = normalize_tensor(torch.from_numpy(img).permute(0, 3, 1, 2).contiguous())
    assert on_device.dtype == torch.float32
    np.testing.assert_array_equal(on_device.numpy(), normalize(img))
    x = torch.randn(1, 3, 4, 4)
    assert normalize_tensor(x) is x  # already-normalized float input passes through


def test_targets_on_device_give_the_workers_targets(coco_sample, skeleton):
    """data.targets_on_device: items carry keypoints instead of maps, batches pad them (collate_people), and the
    datamodule's on_after_batch_transfer renders the same heatmaps and PAFs the workers would have made, for the
    augmented training items and the letterboxed validation items alike."""
    from posekit.data.coco import collate_people
    from posekit.data.datamodule import PoseDataModule

    dm = PoseDataModule(compose("data.targets_on_device=true", "resolution=256x256"))
    assert dm.targets_on_device and dm.input_hw == INPUT_HW
    for train in (True, False):
        maps = _dataset(coco_sample, skeleton, train=train, augment=AugmentConfig(), seed=3)
        points = _dataset(coco_sample, skeleton, train=train, augment=AugmentConfig(), seed=3, keypoints_only=True)
        items = [points[i] for i in range(4)]
        assert all("heatmaps" not in it and it["keypoints"].shape[1:] == (skeleton.num_joints, 3) for it in items)
        batch = dm.on_after_batch_transfer(collate_people(items), 0)
        assert "keypoints" not in batch
        for i in range(4):
            ref = maps[i]
            assert torch.equal(batch["image"][i], ref["image"]) and torch.equal(batch["mask"][i], ref["mask"])
            torch.testing.assert_close(batch["heatmaps"][i], ref["heatmaps"], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch["pafs"][i], ref["pafs"], atol=1e-5, rtol=0)
