"""``validate``: every check of a composed config that the schema's types cannot express, in one place.

Raises :class:`posekit.config.ConfigError` naming the key, the allowed values and the fix. The code below the
stages takes the typed sections and does not check them again.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from posekit.config import ConfigError, Precision, Stage


def _choice(value: Any, key: str, allowed: list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {allowed}")


# TAO documents -pth 0.05..3.0; above it every layer ends at prune.min_filters (the normalized norms are <= 1)
PTH_DOCUMENTED = (0.05, 3.0)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise :class:`ConfigError` naming the key and the allowed values.

    Keys the schema does not have (``+key=...`` typos) are refused with the closest key, and every numeric knob
    is checked against its range (``posekit.schema.RANGES``)."""
    from posekit.schema import range_problems, suggest, unknown_keys

    unknown = unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}: posekit's schema (posekit/config.py) has no such key, so it would "
            f"be ignored.{suggest(unknown[0])} Remove it (a +{unknown[0]}=... override or a config file's key)."
            + (f" Also unknown: {', '.join(unknown[1:])}." if len(unknown) > 1 else "")
        )
    problems = range_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))
    h_w = list(cfg.model.input_shape)
    if len(h_w) != 2 or any(int(v) <= 0 or int(v) % cfg.codec.stride for v in h_w):
        raise ConfigError(
            f"model.input_shape={h_w}: need [H, W], both positive multiples of {cfg.codec.stride} (the network's "
            f"output stride). Pick a named resolution (resolution=224x320 | 256x256 | 288x384 | 320x448) or e.g. "
            f"model.input_shape=[288,384]."
        )
    if not 2 <= cfg.model.stages <= 7:
        raise ConfigError(f"model.stages={cfg.model.stages}: allowed values are 2..7 (initial + refinement stages)")
    if not cfg.model.width > 0:
        raise ConfigError(f"model.width={cfg.model.width}: must be > 0 (1.0 = TAO's BpNetLite)")
    if cfg.codec.stride != 8:
        raise ConfigError(f"codec.stride={cfg.codec.stride}: BpNetLite's output stride is 8; allowed values: [8]")
    _choice(cfg.data.name, "data.name", ["synthetic", "coco"])
    _choice(cfg.optim.name, "optim.name", ["adamw", "sgd"])
    _choice(cfg.optim.schedule, "optim.schedule", ["cosine", "softstart_annealing"])
    _choice(cfg.optim.get("l1_kernels", "all"), "optim.l1_kernels", ["all", "unnormalized"])
    _choice(cfg.train.monitor, "train.monitor", ["val/AP", "val/loss", "train/loss"])
    _choice(cfg.train.head_init, "train.head_init", ["kaiming", "tao"])
    _choice(cfg.runtime.mode, "runtime.mode", ["strict", "adjust"])
    _choice(cfg.runtime.interpolation, "runtime.interpolation", ["linear", "cubic"])
    _choice(cfg.runtime.torch_precision, "runtime.torch_precision", ["fp32", "fp16", "bf16"])
    _choice(cfg.export.data_format, "export.data_format", ["channels_first", "channels_last"])
    _choice(cfg.export.trt_int8_source, "export.trt_int8_source", ["qdq", "cache"])
    _choice(cfg.precision.calibration.method, "precision.calibration.method", ["entropy", "minmax", "percentile"])
    _choice(cfg.prune.norm, "prune.norm", ["l2", "l1"])
    _choice(cfg.prune.normalizer, "prune.normalizer", ["max", "L2"])
    _choice(
        cfg.prune.equalization,
        "prune.equalization",
        ["union", "intersection", "arithmetic_mean", "geometric_mean"],
    )
    if not cfg.prune.pth >= 0:
        raise ConfigError(f"prune.pth={cfg.prune.pth}: the pruning threshold must be a number >= 0 (TAO: 0.05..3.0)")
    if cfg.prune.pth > PTH_DOCUMENTED[1] and str(getattr(cfg.stage, "value", cfg.stage)) == "prune":
        import logging

        logging.getLogger("posekit").warning(
            "prune.pth=%s is above the range TAO documents (%s..%s): every prunable layer will be cut to "
            "prune.min_filters=%s filters", cfg.prune.pth, *PTH_DOCUMENTED, cfg.prune.min_filters)
    if cfg.prune.granularity < 1 or cfg.prune.min_filters < 1:
        raise ConfigError("prune.granularity and prune.min_filters must be >= 1 (TAO: 8 and 16)")
    if cfg.export.opset < 17:
        raise ConfigError(f"export.opset={cfg.export.opset}: allowed values are >= 17")
    if any(s <= 0 for s in cfg.runtime.scales):
        raise ConfigError(f"runtime.scales={list(cfg.runtime.scales)}: scales must be > 0")
    for p in cfg.pipeline.precisions or []:
        _choice(p, "pipeline.precisions[]", [x.value for x in Precision])
    if cfg.sweep.train_shape is not None and (
        len(cfg.sweep.train_shape) != 2 or any(int(v) <= 0 or int(v) % cfg.codec.stride for v in cfg.sweep.train_shape)
    ):
        raise ConfigError(f"sweep.train_shape={list(cfg.sweep.train_shape)}: need [H, W], multiples of 8, or null")
    _validate_decode(cfg.codec.decode)
    _validate_data_path(cfg.data)
    _validate_training(cfg)
    allowed_steps = [s.value for s in Stage if s.value != "pipeline"] + ["targets"]
    unknown = set(cfg.pipeline.steps) - set(allowed_steps)
    if unknown:
        raise ConfigError(f"pipeline.steps has unknown steps {sorted(unknown)}; allowed: {allowed_steps}")
    _validate_targets(cfg)


# what each target backend can run (posekit/targets.py): torch casts under autocast; ONNX Runtime runs the exports
TARGET_PRECISIONS = {"torch": ["fp32", "fp16", "bf16"], "onnxruntime": ["fp32", "fp16", "int8"]}


def _validate_targets(cfg: DictConfig) -> None:
    """``pipeline.targets``: known backends, precisions each backend runs, batch sizes >= 1, and a target
    for the ``targets`` step to measure."""
    from posekit.targets import configured

    targets = configured(cfg)  # a target set to null is dropped
    for name, t in targets.items():
        key = f"pipeline.targets.{name}"
        _choice(t.backend, f"{key}.backend", list(TARGET_PRECISIONS))
        for p in t.precisions:
            _choice(p, f"{key}.precisions[]", TARGET_PRECISIONS[t.backend])
        if not t.batch_sizes or any(int(b) < 1 for b in t.batch_sizes):
            raise ConfigError(f"{key}.batch_sizes={list(t.batch_sizes)}: need one or more batch sizes >= 1")
        if int(t.threads) < 0:
            raise ConfigError(f"{key}.threads={t.threads}: must be >= 0 (0: ONNX Runtime's default)")
    if "targets" in cfg.pipeline.steps and not targets:
        raise ConfigError("pipeline.steps has a targets step but pipeline.targets is empty: define the targets "
                          "to measure (sweeps/sweep/accuracy_latency.yaml has gpu and cpu) or drop the step")


def _validate_decode(d: DictConfig) -> None:
    """``codec.decode``: what the range table cannot say (an odd window); the ranges themselves are in RANGES."""
    if int(d.nms_window) % 2 == 0:
        raise ConfigError(f"codec.decode.nms_window={d.nms_window}: must be an odd number >= 3 (a centred window)")


def _validate_data_path(d: DictConfig) -> None:
    """Where the training data is made (docs/data.md, "The device data path"): the device path hands its
    keypoints to the device's target rendering, and decoding on the device is part of the device path."""
    if d.get("decode_on_device") and not d.get("augment_on_device"):
        raise ConfigError(
            "data.decode_on_device=true needs data.augment_on_device=true: JPEGs are decoded on the device only for "
            "the device augmentation, which warps the decoded sources there. Set data.augment_on_device=true "
            "data.targets_on_device=true, or data.decode_on_device=false."
        )
    if d.get("augment_on_device") and not d.get("targets_on_device"):
        raise ConfigError(
            "data.augment_on_device=true needs data.targets_on_device=true: the keypoints are moved on the device, "
            "so the heatmaps and PAFs are rendered there too. Add data.targets_on_device=true, or set "
            "data.augment_on_device=false (the workers augment and render)."
        )


def _validate_training(cfg: DictConfig) -> None:
    """The train/retrain run's length and its validation cadence (``posekit.train.fit`` relies on both)."""
    stage = str(getattr(cfg.stage, "value", cfg.stage))
    steps = set(cfg.pipeline.steps) if stage == "pipeline" else {stage}
    lengths = []
    if "train" in steps:
        lengths.append((int(cfg.trainer.max_epochs), int(cfg.trainer.max_steps)))
    if "retrain" in steps:
        r = cfg.retrain
        lengths.append((int(cfg.trainer.max_epochs if r.max_epochs is None else r.max_epochs),
                        int(cfg.trainer.max_steps if r.max_steps is None else r.max_steps)))
    if any(epochs < 1 and max_steps < 1 for epochs, max_steps in lengths):
        raise ConfigError("nothing to train: set trainer.max_steps >= 1 (or retrain.max_steps) or trainer.max_epochs")
    syn = cfg.data.get("synthetic")
    if ("train" in steps and cfg.data.name == "synthetic" and syn is not None and int(syn.get("stream_block", 0)) > 0
            and int(cfg.trainer.max_steps) < 1):
        raise ConfigError(
            f"data.synthetic.stream_block={syn.stream_block} streams the first epoch while the synthetic set is "
            "generated, so the epoch's length is not known when the learning-rate schedule is built: define the run "
            "in steps (trainer.max_steps=N), or set data.synthetic.stream_block=0."
        )
    t, tr = cfg.train, cfg.trainer
    every_val = int(tr.check_val_every_n_epoch or 0)
    val_loss = tr.limit_val_batches not in (0, 0.0) and every_val >= 1
    ap = val_loss and int(t.val_every_n_epochs or 0) >= 1 and (t.val_max_images is None or int(t.val_max_images) > 0)
    if ap and int(t.val_every_n_epochs) % every_val:
        raise ConfigError(
            f"train.val_every_n_epochs={t.val_every_n_epochs} must be a multiple of "
            f"trainer.check_val_every_n_epoch={every_val} (AP is computed during validation). "
            f"E.g. train.val_every_n_epochs={every_val * max(1, int(t.val_every_n_epochs) // every_val)}."
        )
