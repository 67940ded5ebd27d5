"""Visualization: skeleton overlays."""

from posekit.viz.overlay import SIDE_COLORS, draw_people, limb_side

__all__ = ["SIDE_COLORS", "draw_people", "limb_side"]
