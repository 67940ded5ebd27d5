"""What the train and retrain stages return and print: the figures of a fit."""

from __future__ import annotations

from typing import Any

from posekit.train.fit import FitResult


def stage_metrics(result: FitResult) -> dict[str, Any]:
    """The figures a train/retrain stage returns (``val/AP`` is the main metric; None when not computed)."""
    f = result.figures
    return {
        "val/AP": f.get("best_val_AP"),
        "train/loss": f.get("final_train_loss"),
        "train/loss_first_epoch": f.get("first_epoch_train_loss"),
        "train/images_per_s": f.get("images_per_s"),
        "epochs": f.get("epochs"),
        "global_step": f.get("global_step"),
        "planned_steps": f.get("planned_steps"),
        "stopped_early": f.get("stopped_early"),  # "max_time" | "interrupted" | None (the schedule completed)
        "skipped_steps": (f.get("guard") or {}).get("skipped_steps"),
        "replaced_samples": (f.get("data") or {}).get("replaced_samples"),  # unreadable images met by the loader
        "dropped_annotations": (f.get("data") or {}).get("dropped_annotations"),  # non-finite, at load
        "max_loss_ratio": (f.get("guard") or {}).get("max_loss_ratio"),  # after the warm-up, vs the running median
        "train_wall_s": f.get("train_wall_s"),
        "startup_s": round(sum(f["startup"].values()), 1) if f.get("startup") else None,
    }


def report(stage: str, result: FitResult, metrics: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"{stage}: {result.model_path} ({result.weights} weights, monitor {result.monitor})"]
    lines += [f"  {k:<24} {fmt(v)}" for k, v in metrics.items()]
    print("\n".join(lines), flush=True)


__all__ = ["report", "stage_metrics"]
