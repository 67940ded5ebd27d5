"""The embedded synthetic dataset: rendered multi-person scenes in COCO person-keypoints format.

Modules: :mod:`.person` (kinematic model and its shapes), :mod:`.scene` (background, placement, annotations),
:mod:`.render` (one image from its seed, previews), :mod:`.dataset` (generation, cache, lock), ``__main__``
(the command line).

Nothing is downloaded: :func:`ensure_synthetic` renders the train and val splits from ``seed`` and the
``data.synthetic.*`` parameters on first use and caches them under a folder named by a hash of every generating
parameter (plus :data:`GENERATOR_VERSION`), so a changed parameter makes a new dataset and an unchanged one is
reused. Generation runs under a file lock (concurrent ranks wait for one generator); ``params.json``, written
last, marks the set complete, and a killed generation's folder is removed by the next one, so nobody reads half a
dataset. A training process that generates the set can stream its first images as they are written
(``posekit.data.stream``).

Each image is rendered from its own seed ``(seed, split, index)``, so the result is identical whatever the
number of processes. A scene holds:

* a cluttered background (gradient, low-frequency colour noise, random shapes) and limb-like distractor strokes;
* optionally a *crowd*: a cluster of small people annotated as one ``iscrowd=1`` region (RLE);
* ``min_people..max_people`` articulated people (torso polygon, tapered limbs, head ellipse with eyes, ears and
  nose) posed by a kinematic model (standing, walking, arms up, crouching, free), scaled, rotated and placed at
  random, drawn back to front so they occlude each other. Annotated people are only placed where a bottom-up
  decoder can recover them: torso in the frame, every labeled joint linked to it, and no joint close to the same
  joint of another annotated person (``scene._recoverable``, ``scene._separated``);
* optionally a drawn but unannotated person (``num_keypoints = 0``), which the loss masks out like COCO's.

Keypoints are written in pixel-index coordinates (pixel k's centre is at k, the posekit convention) exactly where
the joints are drawn: ``v = 2`` visible, ``v = 1`` covered by a person drawn later, ``v = 0`` (and x = y = 0)
outside the image.
"""

from posekit.data.synthetic.dataset import (
    GENERATOR_VERSION,
    JPEG_QUALITY,
    dataset_dir,
    dataset_root,
    default_cache_dir,
    ensure_synthetic,
    generation_params,
    is_cached,
    split_paths,
)
from posekit.data.synthetic.person import RENDERED_JOINTS
from posekit.data.synthetic.render import SPLITS, VAL_MAX_PEOPLE, preview, render_image
from posekit.data.synthetic.scene import MIN_JOINT_GAP

__all__ = [
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MIN_JOINT_GAP",
    "RENDERED_JOINTS",
    "SPLITS",
    "VAL_MAX_PEOPLE",
    "dataset_dir",
    "dataset_root",
    "default_cache_dir",
    "ensure_synthetic",
    "generation_params",
    "is_cached",
    "preview",
    "render_image",
    "split_paths",
]
