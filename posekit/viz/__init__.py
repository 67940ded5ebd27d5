"""Visualization: skeleton overlays (``python -m posekit.viz.overlay`` draws a codec round trip)."""

from __future__ import annotations

from typing import Any

__all__ = ["SIDE_COLORS", "draw_people", "limb_side", "round_trip_overlay"]


def __getattr__(name: str) -> Any:  # lazy, so `python -m posekit.viz.overlay` does not import itself twice
    if name in __all__:
        from posekit.viz import overlay

        return getattr(overlay, name)
    raise AttributeError(name)
