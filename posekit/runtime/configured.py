"""A :class:`~posekit.runtime.Predictor` built from a composed config (the eval and infer stages run one)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from posekit.skeleton import Skeleton


def build_predictor(cfg: DictConfig, artifact: Path, skeleton: Skeleton):
    """Backend for ``artifact`` + the configured preprocessing, test-time augmentation and decoder: a
    :class:`~posekit.runtime.Predictor`."""
    from posekit.runtime import Predictor, load_backend

    backend = load_backend(artifact, cfg.runtime)
    return Predictor(backend, skeleton, cfg.codec, cfg.runtime, tuple(cfg.model.input_shape))
