"""Skeleton overlays: limbs coloured by body side (``skeleton.side``), joints as dots, line widths scaled to the
image. Used by the infer stage and the docs."""

from __future__ import annotations

import cv2
import numpy as np

from posekit.codec.decode import People
from posekit.skeleton import Skeleton

# RGB; left/right chosen to stay distinguishable for the common colour-vision deficiencies (blue vs orange)
SIDE_COLORS = {"left": (0, 114, 178), "right": (230, 159, 0), "center": (0, 158, 115)}
JOINT_COLOR = (255, 255, 255)


def limb_side(skeleton: Skeleton, limb: tuple[int, int]) -> str:
    """'left'/'right' if either end is on that side (shoulder->elbow...), else 'center' (neck->nose...)."""
    sides = {skeleton.side(limb[0]), skeleton.side(limb[1])}
    return "left" if "left" in sides else "right" if "right" in sides else "center"


def draw_people(image_rgb: np.ndarray, people: People, skeleton: Skeleton, min_joint_score: float = 0.0,
                thickness: int | None = None) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3) uint8 with every person's skeleton drawn.

    ``people.keypoints`` (N, J, 3) are in this image's pixels; joints with score <= ``min_joint_score`` are
    treated as missing. ``thickness`` defaults to ~0.4% of the image diagonal."""
    out = np.ascontiguousarray(image_rgb).copy()
    if thickness is None:
        thickness = max(1, int(round(0.004 * float(np.hypot(*out.shape[:2])))))
    radius = thickness + 1
    shift = 4  # sub-pixel drawing: coordinates are floats
    scale = 1 << shift
    colors = [SIDE_COLORS[limb_side(skeleton, limb)] for limb in skeleton.limbs]
    for kps in people.keypoints:
        ok = kps[:, 2] > min_joint_score
        pts = np.round(kps[:, :2] * scale).astype(np.int64)
        for (a, b), color in zip(skeleton.limbs, colors):
            if ok[a] and ok[b]:
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), color, thickness, cv2.LINE_AA, shift)
        for j in np.flatnonzero(ok):
            centre, ring = tuple(map(int, pts[j])), SIDE_COLORS[skeleton.side(j)]
            cv2.circle(out, centre, radius * scale, JOINT_COLOR, -1, cv2.LINE_AA, shift)
            cv2.circle(out, centre, radius * scale, ring, max(1, thickness // 2), cv2.LINE_AA, shift)
    return out


def round_trip_overlay(ann_file: str, image_dir: str, image_id: int, skeleton: Skeleton,
                       input_hw: tuple[int, int] = (288, 384)) -> np.ndarray:
    """The ground truth of one annotated image sent through the codec as inference would see it (strict
    preprocessing affine -> encode -> decode -> inverse affine), drawn on the image: what a perfect network
    would give at this input size."""
    import json
    from pathlib import Path

    from posekit.codec import Decoder, encode
    from posekit.data.images import read_image_rgb
    from posekit.runtime.preprocess import apply_affine, invert_affine, strict_affine

    data = json.loads(Path(ann_file).read_text())
    info = next(im for im in data["images"] if im["id"] == image_id)
    anns = [a for a in data["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]
    kps = skeleton.to_network(np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), -1))
    image = read_image_rgb(Path(image_dir) / info["file_name"])
    affine = strict_affine(image.shape[:2], input_hw)
    kps[..., :2] = apply_affine(kps[..., :2], affine)
    heat, paf = encode(kps, skeleton, (input_hw[0] // 8, input_hw[1] // 8))
    people = Decoder(skeleton)(heat, paf).transformed(invert_affine(affine))
    return draw_people(image, people, skeleton)


def main(argv: list[str] | None = None) -> None:
    """``python -m posekit.viz.overlay --ann A.json --images DIR --image-id N --out overlay.jpg``"""
    import argparse

    from posekit import io

    ap = argparse.ArgumentParser(description="Draw the codec round trip (encode -> decode) of an annotated image.")
    ap.add_argument("--ann", required=True, help="COCO person-keypoints annotation file")
    ap.add_argument("--images", required=True, help="image folder")
    ap.add_argument("--image-id", type=int, required=True)
    ap.add_argument("--input", default="288x384", help="network input HxW")
    ap.add_argument("--out", required=True, help="output .jpg")
    ap.add_argument("--quality", type=int, default=85)
    args = ap.parse_args(argv)
    input_hw = tuple(int(v) for v in args.input.lower().split("x"))
    overlay = round_trip_overlay(args.ann, args.images, args.image_id, Skeleton.default(), input_hw)
    with io.atomic_path(args.out) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
