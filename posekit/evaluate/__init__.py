"""COCO keypoint evaluation (pycocotools) for any skeleton."""

from posekit.evaluate.coco_eval import (
    STATS,
    evaluate,
    evaluate_detections,
    format_table,
    load_coco,
    people_to_coco,
)

__all__ = ["STATS", "evaluate", "evaluate_detections", "format_table", "load_coco", "people_to_coco"]
