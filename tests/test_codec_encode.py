"""posekit.codec.encode: keypoints -> heatmap and PAF targets (pixel-index coordinates, cell centres at 8i + 3.5)."""

from __future__ import annotations

import numpy as np
import pytest

from posekit.codec.encode import cell_centers, encode

STRIDE, SIGMA, HALF_WIDTH = 8, 7.0, 8.0
OUT_HW = (24, 32)  # a 192x256 input


def _people(skeleton, rng, n):
    """(n, J, 3) random labeled keypoints inside a 192x256 input, a few joints unlabeled."""
    kps = np.zeros((n, skeleton.num_joints, 3), np.float32)
    kps[..., 0] = rng.uniform(0, 255, kps.shape[:2])
    kps[..., 1] = rng.uniform(0, 191, kps.shape[:2])
    kps[..., 2] = rng.choice([1, 2], kps.shape[:2])
    kps[rng.random(kps.shape[:2]) < 0.2] = 0
    return kps


def _limb_person(skeleton, a, b, limb=0):
    """One person with only limb ``limb`` labeled, from a to b."""
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    ja, jb = skeleton.limbs[limb]
    kps[0, ja], kps[0, jb] = (*a, 2), (*b, 2)
    return kps


def test_cell_centers_are_pixel_centred():
    assert np.allclose(cell_centers(3, 8), [3.5, 11.5, 19.5])


def test_heatmap_peaks_at_each_visible_keypoint(skeleton):
    rng = np.random.default_rng(0)
    kps = _people(skeleton, rng, 1)
    heat, _ = encode(kps, skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    assert heat.shape == (skeleton.num_heatmaps, *OUT_HW) and heat.dtype == np.float32
    cx, cy = cell_centers(OUT_HW[1], STRIDE), cell_centers(OUT_HW[0], STRIDE)
    for j, (x, y, v) in enumerate(kps[0]):
        if v == 0:
            assert not heat[j].any(), f"unlabeled joint {j} has a heatmap"
            continue
        i, k = np.unravel_index(np.argmax(heat[j]), OUT_HW)
        assert abs(cx[k] - x) <= STRIDE / 2 and abs(cy[i] - y) <= STRIDE / 2  # within half a cell
        d2 = (cx[k] - x) ** 2 + (cy[i] - y) ** 2
        assert heat[j, i, k] == pytest.approx(np.exp(-d2 / (2 * SIGMA**2)), rel=1e-5)


def test_heatmap_of_a_keypoint_on_a_cell_centre_is_one_there(skeleton):
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    kps[0, 0] = (8 * 5 + 3.5, 8 * 7 + 3.5, 2)
    heat, _ = encode(kps, skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    assert heat[0, 7, 5] == pytest.approx(1.0)
    assert heat[0, 7, 4] == pytest.approx(np.exp(-64 / (2 * SIGMA**2)), rel=1e-5)


def test_heatmaps_take_the_max_over_people_and_background_is_the_complement(skeleton):
    rng = np.random.default_rng(1)
    kps = _people(skeleton, rng, 3)
    heat, _ = encode(kps, skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    singles = np.stack([encode(kps[p : p + 1], skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)[0] for p in range(3)])
    assert np.allclose(heat[:-1], singles[:, :-1].max(0))
    assert np.allclose(heat[-1], np.clip(1 - heat[:-1].max(0), 0, 1))
    assert heat.min() >= 0 and heat.max() <= 1
    assert not ((heat[:-1] > 0) & (heat[:-1] < 1e-3)).any()  # TAO zeroes the far tails


def test_no_people_gives_all_background(skeleton):
    heat, paf = encode(np.zeros((0, skeleton.num_joints, 3)), skeleton, OUT_HW)
    assert (heat[-1] == 1).all() and not heat[:-1].any() and not paf.any()


def test_paf_is_the_unit_vector_along_the_limb_and_zero_off_it(skeleton):
    a, b = np.array([40.0, 60.0]), np.array([200.0, 130.0])
    _, paf = encode(_limb_person(skeleton, a, b), skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    assert paf.shape == (skeleton.num_pafs, *OUT_HW)
    u = (b - a) / np.linalg.norm(b - a)
    gx, gy = np.meshgrid(cell_centers(OUT_HW[1], STRIDE), cell_centers(OUT_HW[0], STRIDE))
    rel = np.stack([gx - a[0], gy - a[1]], -1)
    along = rel @ u
    across = np.abs(rel @ np.array([-u[1], u[0]]))
    inside = (along >= 0) & (along <= np.linalg.norm(b - a)) & (across <= HALF_WIDTH - 0.5)
    outside = (across > HALF_WIDTH + 0.5) | (along < -STRIDE) | (along > np.linalg.norm(b - a) + STRIDE)
    assert inside.sum() > 10 and outside.sum() > 100
    assert np.allclose(paf[0][inside], u[0]) and np.allclose(paf[1][inside], u[1])
    assert not paf[0][outside].any() and not paf[1][outside].any()
    assert not paf[2:].any()  # the other limbs are unlabeled
    norm = np.hypot(paf[0], paf[1])
    assert np.allclose(norm[norm > 0], 1.0)


def test_paf_averages_overlapping_limbs_of_different_people(skeleton):
    # two people's limb 0 crossing at right angles through the cell centred on (99.5, 99.5)
    c = np.array([99.5, 99.5])
    p1 = _limb_person(skeleton, c - [40, 0], c + [40, 0])
    p2 = _limb_person(skeleton, c - [0, 40], c + [0, 40])
    _, paf = encode(np.concatenate([p1, p2]), skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    i, k = 12, 12  # the crossing cell: 8 * 12 + 3.5 = 99.5
    assert paf[0, i, k] == pytest.approx(0.5) and paf[1, i, k] == pytest.approx(0.5)
    # away from the crossing each limb keeps its own unit vector
    assert (paf[0, i, k + 3], paf[1, i, k + 3]) == pytest.approx((1.0, 0.0))
    assert (paf[0, i + 3, k], paf[1, i + 3, k]) == pytest.approx((0.0, 1.0))


def test_keypoints_outside_the_input_still_reach_in(skeleton):
    kps = np.zeros((1, skeleton.num_joints, 3), np.float32)
    kps[0, 0] = (-6.0, 51.5, 2)  # 9.5 px left of the first column's centres, level with row 6
    heat, _ = encode(kps, skeleton, OUT_HW, STRIDE, SIGMA, HALF_WIDTH)
    assert np.argmax(heat[0, :, 0]) == 6 and heat[0].argmax() % OUT_HW[1] == 0
    assert heat[0, 6, 0] == pytest.approx(np.exp(-(9.5**2) / (2 * SIGMA**2)), rel=1e-5)


# --------------------------------------------------------------------------------------------- on the device
def test_batched_torch_encode_matches_the_numpy_encoder(skeleton):
    """data.targets_on_device renders the targets with encode_batch: per image the same heatmaps and PAFs as
    encode, with people padded by v = 0 rows, joints off the input, unlabeled joints and overlapping limbs."""
    import torch

    from posekit.codec.encode import encode_batch

    sk = skeleton
    rng = np.random.default_rng(0)
    out_hw, stride = (12, 16), 8
    images = []
    for people in (3, 1, 0, 5):
        kps = np.zeros((people, sk.num_joints, 3), np.float32)
        kps[..., 0] = rng.uniform(-40, 16 * 8 + 40, (people, sk.num_joints))
        kps[..., 1] = rng.uniform(-40, 12 * 8 + 40, (people, sk.num_joints))
        kps[..., 2] = rng.random((people, sk.num_joints)) < 0.8
        images.append(kps)
    padded = np.zeros((len(images), 5, sk.num_joints, 3), np.float32)
    for i, k in enumerate(images):
        padded[i, : len(k)] = k
    heat, paf = encode_batch(torch.from_numpy(padded), sk, out_hw, stride, sigma=7.0, paf_half_width=8.0)
    assert heat.shape == (4, sk.num_heatmaps, *out_hw) and paf.shape == (4, sk.num_pafs, *out_hw)
    for i, k in enumerate(images):
        ref_heat, ref_paf = encode(k, sk, out_hw, stride, sigma=7.0, paf_half_width=8.0)
        np.testing.assert_allclose(heat[i].numpy(), ref_heat, atol=1e-5)
        np.testing.assert_allclose(paf[i].numpy(), ref_paf, atol=1e-5)
    assert heat[2, -1].min() == 1.0 and paf[2].abs().max() == 0.0  # the image without people: all background
    empty_heat, empty_paf = encode_batch(torch.zeros(2, 0, sk.num_joints, 3), sk, out_hw, stride)  # nobody at all
    assert bool((empty_heat[:, -1] == 1).all()) and not empty_heat[:, :-1].any() and not empty_paf.any()
    assert (paf.abs() > 0).any() and (heat[:, :-1] > 0.5).any()  # the comparison saw real targets
