"""posekit: bottom-up multi-person 2D pose (heatmaps + part affinity fields), train -> prune -> retrain ->
export -> evaluate / infer / benchmark, driven by Hydra configs."""

import os as _os

# albumentations asks PyPI for a newer version at import, in every process that imports it (each data-loader
# worker too): a network call per worker on offline cluster nodes, and a warning per worker in every log.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
