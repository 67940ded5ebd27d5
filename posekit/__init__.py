"""posekit: bottom-up multi-person 2D pose (heatmaps + part affinity fields), train -> prune -> retrain ->
export -> evaluate / infer / benchmark, driven by Hydra configs."""

__version__ = "0.1.0"
