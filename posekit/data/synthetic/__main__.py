"""``python -m posekit.data.synthetic``: generate a config's synthetic dataset, or preview one image."""

from __future__ import annotations

import cv2

from posekit.data.synthetic.dataset import ensure_synthetic, generation_params
from posekit.data.synthetic.render import SPLITS, preview
from posekit.skeleton import Skeleton


def main(argv: list[str] | None = None) -> None:
    """``python -m posekit.data.synthetic [OVERRIDES] [--preview OUT.jpg --index N]``: generate the synthetic
    dataset of the composed config (e.g. ``preset=cpu_demo`` or ``data.synthetic.num_train=500``) and print its
    paths and the time taken, or draw one of its images with the annotations."""
    import argparse
    import time

    from omegaconf import OmegaConf

    from posekit import io

    ap = argparse.ArgumentParser(prog="python -m posekit.data.synthetic", description=main.__doc__)
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
