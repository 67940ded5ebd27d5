"""The device data path (``data.augment_on_device``) against the CPU path, on CPU tensors, on the same random draws.

Tolerances (docs/data.md, "The device data path"):
  * warp: exact. ``device_warp.warp_affine_u8`` computes OpenCV's fixed-point bilinear warp, so it must equal
    ``cv2.warpAffine`` bit for bit.
  * area pre-shrink: 1 grey level on at most 0.1% of values (exact on the photos measured). The device sums in
    float32 in OpenCV's order, which decides the many exact rounding ties; OpenCV's 2x2 path finishes each row in
    a scalar loop that rounds ties the other way.
  * colour: brightness, contrast, saturation exact; hue 1 grey level (OpenCV's own uint8 HSV -> RGB truncates in
    its vectorized loop and rounds in the scalar loop that ends each row; the device follows the vectorized loop).
  * whole sample: at most 0.1% of values differ and 0.01% by more than 1 level (measured on the COCO sample at
    256x256: 0.012% and 0.0017%, max 3). A 1-level difference before the hue adjustment can move a pixel's uint8 hue by a
    step at low saturation, so a rare pixel differs by a few levels (max 8 asserted: far from what a wrong warp,
    flip or channel order gives).
  * keypoints 1e-3 px (the same float32 arithmetic up to operation order); loss masks exact (the workers make
    them in both paths); heatmaps and PAFs 1e-4 (encode vs encode_batch on those keypoints).
"""

from __future__ import annotations

import logging

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from posekit.codec.encode import encode, encode_batch
from posekit.config import AugmentConfig, CodecConfig
from posekit.data.augment import AugmentDraws, Augmenter, ColorDraws, person_centric_matrix
from posekit.data.coco import PoseDataset
from posekit.data.device_augment import DeviceAugmenter, collate_device_items, cv2_decoder
from posekit.data.device_color import color_jitter, order_plan
from posekit.data.device_warp import area_shrink, transform_keypoints, warp_affine_u8
from tests.conftest import compose

INPUT_HW = (128, 128)  # small: the colour passes dominate these tests on a CPU
# CPU-path items fed through the device path must reach these: see the module docstring
MAX_DIFFERING, MAX_OFF_BY_MORE_THAN_ONE, MAX_LEVELS = 1e-3, 1e-4, 8


def _dataset(root, skeleton, **kw):
    return PoseDataset(root / "test_coco.json", root, skeleton, INPUT_HW, CodecConfig(), AugmentConfig(), **kw)


def _edges(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 with sharp edges and fine texture (where interpolation differences show)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)[:h, :w]
    return np.ascontiguousarray(np.where(rng.random((h, w, 1)) < 0.2, 255 - img, img))


def _as_device_items(samples: list[dict]) -> list[dict]:
    """``device_sample`` dicts as the tensors ``PoseDataset.__getitem__`` ships (its ``_device_item``)."""
    items = []
    for s in samples:
        item = {k: torch.from_numpy(np.asarray(s[k])) for k in ("source_hw", "matrix", "warp_matrix", "shrink_hw",
                                                                 "color", "keypoints", "mask")}
        item.update(source=None if s["source"] is None else torch.from_numpy(s["source"].transpose(2, 0, 1).copy()),
                    jpeg=s["jpeg"], flipped=int(s["flipped"]), border=int(s["border"]), image_id=s["image_id"],
                    replaced=0, file_name=s["file_name"])
        items.append(item)
    return items


def _assert_images_close(device: np.ndarray, cpu: np.ndarray) -> None:
    diff = np.abs(device.astype(np.int32) - cpu.astype(np.int32))
    assert (diff > 0).mean() <= MAX_DIFFERING, f"{(diff > 0).mean():.2%} of values differ"
    assert (diff > 1).mean() <= MAX_OFF_BY_MORE_THAN_ONE, f"{(diff > 1).mean():.3%} differ by more than 1 level"
    assert diff.max() <= MAX_LEVELS, f"max difference {diff.max()} levels"


# ---------------------------------------------------------------------------------------------- draws
def test_draws_reproduce_the_cpu_paths_colour_jitter(coco_sample, skeleton):
    """Drawing first and applying later is the CPU path as it was: ColorJitter(image=...) seeded from the stream."""
    aug = Augmenter(AugmentConfig(), skeleton, INPUT_HW)
    img = cv2.resize(cv2.imread(str(coco_sample / "000000000785.jpg")), (96, 64))
    jitter = A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=1.0)
    for seed in range(5):
        draws = aug.draw_color(np.random.default_rng(seed))
        jitter.set_random_seed(int(np.random.default_rng(seed).integers(2**31)))
        assert np.array_equal(aug.apply_color(img, draws), jitter(image=img)["image"])
    assert Augmenter(None, skeleton, INPUT_HW).draw(np.random.default_rng(0)) == AugmentDraws()


# ---------------------------------------------------------------------------------------------- geometry
def test_device_warp_is_cv2_warp_affine_bit_for_bit():
    """One batch of sources of different sizes, zooms in and out, rotations, flips, shifts off the image."""
    rng = np.random.default_rng(0)
    sizes = [(120, 160), (97, 133), (160, 90)]
    sources = [_edges(h, w, i) for i, (h, w) in enumerate(sizes)]
    out_hw = (64, 96)
    hc, wc = max(h for h, _ in sizes), max(w for _, w in sizes)
    for border in (128, 0):
        mats, refs = [], []
        canvas = torch.full((len(sizes), 3, hc + 2, wc + 2), border, dtype=torch.uint8)
        for i, src in enumerate(sources):
            h, w = src.shape[:2]
            canvas[i, :, 1 : h + 1, 1 : w + 1] = torch.from_numpy(src.transpose(2, 0, 1))
            m = person_centric_matrix(rng.uniform(0, (w, h)), rng.uniform(20, 120), out_hw, 0.6, rng.uniform(0.6, 1.4),
                                      rng.uniform(-40, 40), tuple(rng.uniform(-40, 40, 2)), bool(i % 2))
            mats.append(m)
            refs.append(cv2.warpAffine(src, m, out_hw[::-1], flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=(border,) * 3))
        out = warp_affine_u8(canvas, torch.from_numpy(np.stack(mats)), out_hw)
        assert out.dtype == torch.uint8 and out.shape == (len(sizes), 3, *out_hw)
        np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), np.stack(refs))


def test_device_area_shrink_matches_cv2_inter_area():
    """Fractional factors and the exact halving (OpenCV's 2x2 fast path, which rounds half up)."""
    cases = [((120, 160), (50, 67)), ((97, 133), (41, 56)), ((120, 160), (60, 80)), ((60, 80), (59, 79))]
    hs, ws = max(s[0] for s, _ in cases), max(s[1] for s, _ in cases)
    images = torch.zeros(len(cases), 3, hs, ws, dtype=torch.uint8)
    refs = []
    for i, ((h, w), (nh, nw)) in enumerate(cases):
        src = _edges(h, w, 10 + i)
        images[i, :, :h, :w] = torch.from_numpy(src.transpose(2, 0, 1))
        refs.append(cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA))
    src_hw = torch.tensor([s for s, _ in cases])
    dst_hw = torch.tensor([d for _, d in cases])
    out = area_shrink(images, src_hw, dst_hw, (60, 80), taps=4)
    for i, ((_, _), (nh, nw)) in enumerate(cases):
        got = out[i, :, :nh, :nw].permute(1, 2, 0).numpy()
        diff = np.abs(got - refs[i])
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (i, diff.max(), (diff > 0).mean())
        assert not out[i, :, nh:].any() and not out[i, :, :, nw:].any()
    np.testing.assert_array_equal(out[2, :, :60, :80].permute(1, 2, 0).numpy(), refs[2])  # halving: exact


def test_device_keypoints_follow_the_matrix_and_the_keypoint_sets_flip_pairs(skeleton):
    """A flipped sample's labels are permuted with skeleton.flip_perm (the keypoint set's flip_pairs, data), an
    unflipped one's are not, and unlabeled/padding rows stay 0."""
    rng = np.random.default_rng(1)
    kps = np.zeros((2, 2, skeleton.num_joints, 3), np.float32)
    kps[..., :2] = rng.uniform(0, 200, (2, 2, skeleton.num_joints, 2))
    kps[..., 2] = rng.random((2, 2, skeleton.num_joints)) < 0.7
    mats = np.stack([person_centric_matrix(np.array([90.0, 80.0]), 100.0, INPUT_HW, flip=f) for f in (False, True)])
    out = transform_keypoints(torch.from_numpy(kps), torch.from_numpy(mats), torch.tensor([False, True]),
                              torch.as_tensor(skeleton.flip_perm))
    from posekit.data.augment import transform_keypoints as cpu_transform

    for b in range(2):
        ref = cpu_transform(kps[b], mats[b])
        ref = ref[:, skeleton.flip_perm] if b else ref
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-3)
    left, right = skeleton.joints.index("left_wrist"), skeleton.joints.index("right_wrist")
    assert skeleton.flip_perm[left] == right  # the swap comes from conf/keypoints/coco18.yaml's flip_pairs


# ---------------------------------------------------------------------------------------------- colour
def test_device_colour_jitter_matches_albumentations(coco_sample, skeleton):
    """Each adjustment alone, then whole ColorJitter draws (random factors and orders) for a batch."""
    from posekit.data import device_color as dc
    from albumentations.augmentations.pixel import functional as F

    # 128 wide: a multiple of the 64 pixels OpenCV's vectorized HSV loop takes at a time (no scalar tail, module doc)
    imgs = [cv2.cvtColor(cv2.resize(cv2.imread(str(p)), (128, 64)), cv2.COLOR_BGR2RGB)
            for p in sorted(coco_sample.glob("*.jpg"))]
    x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()).int()
    rng = np.random.default_rng(2)
    for adjust, cpu, exact in ((dc.brightness, F.adjust_brightness_torchvision, True),
                               (dc.contrast, F.adjust_contrast_torchvision, True),
                               (dc.saturation, F.adjust_saturation_torchvision, True),
                               (dc.hue, F.adjust_hue_torchvision, False)):
        f = rng.uniform(-0.05, 0.05, len(imgs)) if cpu is F.adjust_hue_torchvision else rng.uniform(0.7, 1.3, len(imgs))
        got = adjust(x, torch.from_numpy(f)).permute(0, 2, 3, 1).numpy()
        ref = np.stack([cpu(im, float(v)) for im, v in zip(imgs, f)]).astype(np.int32)
        assert np.abs(got - ref).max() <= (0 if exact else 1), adjust.__name__

    aug = Augmenter(AugmentConfig(), skeleton, INPUT_HW)
    draws = [aug.draw_color(np.random.default_rng(s)) for s in range(len(imgs))]
    rows = torch.tensor([d.as_row() for d in draws], dtype=torch.float64)
    perm, counts = order_plan(rows)
    got = color_jitter(x.to(torch.uint8), rows, perm, counts).permute(0, 2, 3, 1).numpy()
    ref = np.stack([aug.apply_color(im, d) for im, d in zip(imgs, draws)])
    _assert_images_close(got, ref)
    assert len({d.order for d in draws}) > 1  # the batch mixed orders
    identity = torch.tensor([ColorDraws().as_row()] * len(imgs), dtype=torch.float64)
    assert torch.equal(color_jitter(x.to(torch.uint8), identity, *order_plan(identity)), x.to(torch.uint8))


# ---------------------------------------------------------------------------------------------- whole samples
def test_device_path_equals_the_cpu_path_on_the_same_draws(coco_sample, skeleton):
    """Real photos of different sizes, augmented (area pre-shrinks, flips, colour) by both paths from one set of
    draws: images, keypoints and masks, then the heatmaps and PAFs rendered from them. Shipping JPEG bytes for the
    device to decode gives the same batch."""
    shipped = {jpeg: _dataset(coco_sample, skeleton, device_augment=True, jpeg_bytes=jpeg) for jpeg in (False, True)}
    cpu = _dataset(coco_sample, skeleton)
    n = len(cpu)
    samples = {jpeg: [ds.device_sample(i, rng=np.random.default_rng([1, i])) for i in range(n)]
               for jpeg, ds in shipped.items()}
    refs = [cpu.sample(i, draws=s["draws"]) for i, s in enumerate(samples[False])]
    assert sum(s["shrink_hw"][0] > 0 for s in samples[False]) >= 2 and sum(s["flipped"] for s in samples[False]) >= 2
    assert all(s["source"] is None and s["jpeg"] is not None for s in samples[True])

    batches = {jpeg: DeviceAugmenter(skeleton, INPUT_HW, cv2_decoder)(collate_device_items(_as_device_items(s)))
               for jpeg, s in samples.items()}
    batch = batches[False]
    assert torch.equal(batches[True]["image"], batch["image"])
    assert torch.equal(batches[True]["keypoints"], batch["keypoints"])
    assert set(batch) == {"image", "keypoints", "mask", "image_id", "replaced"}

    _assert_images_close(batch["image"].permute(0, 2, 3, 1).numpy(), np.stack([r["image"] for r in refs]))
    out_hw = (INPUT_HW[0] // 8, INPUT_HW[1] // 8)
    heat, paf = encode_batch(batch["keypoints"], skeleton, out_hw)
    for i, r in enumerate(refs):
        people = len(r["keypoints"])
        np.testing.assert_allclose(batch["keypoints"][i, :people].numpy(), r["keypoints"], atol=1e-3)
        assert not batch["keypoints"][i, people:].any()
        np.testing.assert_array_equal(batch["mask"][i].numpy(), r["mask"])
        ref_heat, ref_paf = encode(r["keypoints"], skeleton, out_hw)
        np.testing.assert_allclose(heat[i].numpy(), ref_heat, atol=1e-4)
        np.testing.assert_allclose(paf[i].numpy(), ref_paf, atol=1e-4)


def test_datamodule_runs_the_device_path_in_its_batch_hook(coco_sample, skeleton):
    """data.augment_on_device: the loader's items and collate, then on_after_batch_transfer, give the batch the
    CPU path's items give (same seed, same stream), with heatmaps and PAFs rendered on the device."""
    from posekit.data.datamodule import PoseDataModule

    dm = PoseDataModule(compose("data.augment_on_device=true", "data.targets_on_device=true", "resolution=128x128"))
    assert dm.device_augmenter is not None and not dm.decode_on_device
    device = _dataset(coco_sample, skeleton, seed=5, keypoints_only=True, device_augment=True)
    cpu = _dataset(coco_sample, skeleton, seed=5)
    batch = dm.on_after_batch_transfer(collate_device_items([device[i] for i in range(4)]), 0)
    assert {"image", "heatmaps", "pafs", "mask"} <= set(batch) and "keypoints" not in batch
    refs = [cpu[i] for i in range(4)]
    _assert_images_close(batch["image"].permute(0, 2, 3, 1).numpy(),
                         torch.stack([r["image"] for r in refs]).permute(0, 2, 3, 1).numpy())
    for i, r in enumerate(refs):
        torch.testing.assert_close(batch["heatmaps"][i], r["heatmaps"], atol=1e-4, rtol=0)
        torch.testing.assert_close(batch["pafs"][i], r["pafs"], atol=1e-4, rtol=0)
        assert torch.equal(batch["mask"][i], r["mask"])


def test_an_undecodable_jpeg_leaves_its_sample_out_of_the_loss(coco_sample, skeleton, caplog):
    ds = _dataset(coco_sample, skeleton, device_augment=True, jpeg_bytes=True)
    samples = [ds.device_sample(i, rng=np.random.default_rng(i)) for i in range(3)]
    samples[1]["jpeg"] = samples[1]["jpeg"][:200].copy()  # a truncated file: OpenCV cannot decode it
    with caplog.at_level(logging.WARNING, logger="posekit.data"):
        batch = DeviceAugmenter(skeleton, INPUT_HW, cv2_decoder)(collate_device_items(_as_device_items(samples)))
    assert "cannot decode" in caplog.text and batch["replaced"].tolist() == [0, 1, 0]
    assert not batch["mask"][1].any() and not batch["keypoints"][1].any() and batch["mask"][0].any()


def test_device_path_switches_are_validated():
    from posekit.config import ConfigError
    from posekit.validation import validate

    with pytest.raises(ConfigError, match="data.decode_on_device=true needs data.augment_on_device=true"):
        validate(compose("data.decode_on_device=true"))
    with pytest.raises(ConfigError, match="data.augment_on_device=true needs data.targets_on_device=true"):
        validate(compose("data.augment_on_device=true"))
    validate(compose("data.augment_on_device=true", "data.targets_on_device=true", "data.decode_on_device=true"))

