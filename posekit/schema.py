"""The config schema as a set of dotted keys: which keys exist, which do not, and the closest one to a typo.

Hydra lets ``+key=value`` (and config files) add keys the typed schema (posekit/config.py) does not have; they
would be stored and silently ignored. ``unknown_keys`` finds them in a composed config (``config.validate``
refuses them) and ``check_overrides`` finds them on the command line before Hydra composes anything
(``launch.py``), so ``foo=1`` and ``+foo=1`` get the same answer: the key does not exist, did you mean X.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIRS = (ROOT / "conf", ROOT / "sweeps")

LEAF, NODE, OPEN, LIST = "leaf", "node", "open", "list"  # OPEN: any sub-key allowed (Dict[...] or Any fields)


def _unwrap(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return tp


def _kind(tp: Any) -> str:
    tp = _unwrap(tp)
    if dataclasses.is_dataclass(tp):
        return NODE
    origin = typing.get_origin(tp)
    if tp is Any or origin in (dict, typing.Dict) or tp is dict:
        return OPEN
    if origin in (list, typing.List) or tp is list:
        return LIST
    return LEAF


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a schema dataclass (config.py's annotations are strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _root() -> type:
    from posekit.config import Config

    return Config


def lookup(key: str) -> str | None:
    """The kind of the schema entry at dotted ``key`` (LEAF, NODE, OPEN, LIST), or None if there is none."""
    cls: Any = _root()
    kind = NODE
    for part in key.split("."):
        if kind == OPEN:
            return OPEN
        if kind == LIST:
            return LEAF if part.isdigit() else None
        if kind != NODE:
            return None
        fields = _fields(cls)
        if part not in fields:
            return None
        tp = _unwrap(fields[part])
        kind, cls = _kind(tp), tp
    return kind


@functools.lru_cache(maxsize=1)
def all_keys() -> tuple[str, ...]:
    """Every dotted key of the schema (nodes and leaves), for suggestions."""
    out: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for name, tp in _fields(cls).items():
            key = f"{prefix}{name}"
            out.append(key)
            if _kind(tp) == NODE:
                walk(_unwrap(tp), key + ".")

    walk(_root(), "")
    return tuple(out)


def suggest(key: str, extra: Iterable[str] = ()) -> str:
    """`` Did you mean 'x'?`` for the schema key closest to ``key`` (empty when nothing is close)."""
    close = difflib.get_close_matches(key, [*all_keys(), *extra], n=1, cutoff=0.75)
    if not close and "." in key:  # a typo in the last part only: compare it with its siblings
        parent, last = key.rsplit(".", 1)
        depth = key.count(".")
        siblings = [k.rsplit(".", 1)[1] for k in all_keys() if k.startswith(parent + ".") and k.count(".") == depth]
        close = [f"{parent}.{s}" for s in difflib.get_close_matches(last, siblings, n=1, cutoff=0.6)]
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys of the composed ``cfg`` that the schema does not have (``+key=...`` typos, stray YAML keys)."""
    bad: list[str] = []

    def walk(node: Any, cls: type, prefix: str) -> None:
        fields = _fields(cls)
        for name in node.keys() if isinstance(node, DictConfig) else ():
            key = f"{prefix}{name}"
            if name not in fields:
                bad.append(key)
                continue
            tp = _unwrap(fields[name])
            child = node._get_node(name)
            if _kind(tp) == NODE and isinstance(child, DictConfig) and not child._is_none():
                walk(child, tp, key + ".")

    walk(cfg, _root(), "")
    return bad


# --------------------------------------------------------------------------------------------- command line
@functools.lru_cache(maxsize=1)
def config_groups() -> dict[str, tuple[str, ...]]:
    """``{group: options}`` of the config folders (conf/, sweeps/), e.g. ``{"preset": ("cpu_demo", ...)}``."""
    groups: dict[str, set[str]] = {}
    for base in CONFIG_DIRS:
        for path in base.rglob("*.yaml"):
            rel = path.relative_to(base)
            if len(rel.parts) > 1:
                groups.setdefault("/".join(rel.parts[:-1]), set()).add(path.stem)
    return {g: tuple(sorted(o)) for g, o in groups.items()}


@functools.lru_cache(maxsize=1)
def default_groups() -> frozenset[str]:
    """Groups in conf/config.yaml's defaults list (changed with ``group=option``; the others take ``+group=``)."""
    defaults = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml")).get("defaults", [])
    return frozenset(k.split("@")[0] for d in defaults if isinstance(d, dict) for k in d)


def _values(override: Any) -> list[str] | None:
    """The option names an override sets (a choice sweep gives several); None when not a plain choice."""
    if override.is_sweep_override():
        try:
            return [str(v) for v in override.sweep_string_iterator()]
        except Exception:  # range/interval sweeps: not option names
            return None
    value = override.value()
    if isinstance(value, list):  # several options of one group at once: +callbacks=[lr_monitor,weight_snapshots]
        return [str(v) for v in value]
    return None if value is None else [str(value)]


def check_override(override: Any) -> str | None:
    """What is wrong with one parsed Hydra override (a message), or None."""
    key = override.key_or_group
    text = override.input_line or key
    if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.package:
        return None
    groups = config_groups()
    if key in groups and "." not in key:
        options = _values(override)
        for option in options or ():
            if option not in groups[key] and option != "null":
                close = difflib.get_close_matches(option, groups[key], n=1, cutoff=0.6)
                hint = f" Did you mean {key}={close[0]}?" if close else ""
                return f"{text!r}: {key} has no option {option!r}; options: {', '.join(groups[key])}.{hint}"
        if override.is_delete():
            return None
        if not (override.is_add() or override.is_force_add()) and key not in default_groups():
            return f"{text!r}: the config group {key} is appended, not replaced: write +{text.lstrip('+')}"
        return None
    kind = lookup(key)
    if kind is None:
        return (f"unknown config key {key!r} in {text!r}: posekit's schema (posekit/config.py) has no such key."
                f"{suggest(key, groups)} `python launch.py --cfg job` prints every key.")
    if override.is_add() and kind != OPEN:
        plain = text.lstrip("+")
        return f"{text!r}: {key} is already in the config; set it without the '+': {plain}"
    return None


def check_overrides(overrides: Iterable[str]) -> None:
    """Raise :class:`~posekit.config.ConfigError` for the first override naming an unknown key or option."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from posekit.config import ConfigError

    overrides = list(overrides)
    if not overrides:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # a syntax error: Hydra's own message says where
        return
    for override in parsed:
        problem = check_override(override)
        if problem:
            raise ConfigError(problem)


__all__ = ["LEAF", "NODE", "OPEN", "LIST", "all_keys", "check_override", "check_overrides", "config_groups",
           "lookup", "suggest", "unknown_keys"]


# --------------------------------------------------------------------------------------------- numeric ranges
# Numeric knobs whose valid range the types cannot express, as intervals: "[1,)" is >= 1, "(0,1]" is 0 < x <= 1.
# Optional knobs left at null are not checked. Checked by ``config.validate`` at start-up, before any work.
RANGES: dict[str, tuple[str, str]] = {
    "seed": ("[0,)", "the random seed"),
    "data.batch_size": ("[1,)", "images per training step"),
    "data.num_workers": ("[0,)", "loader processes; 0 loads in the main process"),
    "data.val_max_images": ("[1,)", "val images used; null: all"),
    "data.main_person_min_keypoints": ("[0,)", "TAO data_filtering_params"),
    "data.main_person_min_area": ("[0,)", "TAO data_filtering_params"),
    "data.synthetic.num_train": ("[1,)", "generated training images"),
    "data.synthetic.num_val": ("[1,)", "generated validation images"),
    "data.synthetic.crowd_prob": ("[0,1]", "a probability"),
    "data.synthetic.unannotated_prob": ("[0,1]", "a probability"),
    "data.synthetic.distractors": ("[0,)", "clutter strokes per image"),
    "data.synthetic.workers": ("[0,)", "generating processes; 0: all cores"),
    "data.synthetic.stream_block": ("[0,)", "images per block of the block-ordered first epoch; 0: off"),
    "data.augment.target_person_scale": ("(0,)", "person height / input height"),
    "data.augment.rotate_deg": ("[0,180]", "degrees"),
    "data.augment.translate_px": ("[0,)", "pixels"),
    "data.augment.flip_prob": ("[0,1]", "a probability"),
    "data.augment.color_jitter": ("[0,1]", "0 disables"),
    "data.augment.hue_jitter": ("[0,0.5]", "0 disables"),
    "data.augment.border_value": ("[0,255]", "a gray level"),
    "codec.sigma": ("(0,)", "heatmap Gaussian, input pixels"),
    "codec.paf_half_width": ("(0,)", "PAF band half-width, input pixels"),
    "codec.decode.upsample": ("[1,)", "1: decode on the stride-8 maps"),
    "codec.decode.smooth_sigma": ("[0,)", "0: off"),
    "codec.decode.nms_window": ("[3,)", "peak window, cells; odd"),
    "codec.decode.peak_threshold": ("[0,1]", "heatmap score"),
    "codec.decode.paf_samples": ("[2,)", "samples along a limb"),
    "codec.decode.paf_min_ratio": ("[0,1]", "a fraction of the samples"),
    "codec.decode.min_parts": ("[1,)", "joints per person"),
    "codec.decode.max_people": ("[1,)", "people per image"),
    "codec.decode.max_peaks": ("[1,)", "candidates per joint"),
    "precision.calibration.num_images": ("[1,)", "INT8 calibration images"),
    "precision.calibration.batch_size": ("[1,)", "calibration batch"),
    "precision.calibration.percentile": ("(0,100]", "percent"),
    "precision.calibration.min_persons": ("[0,)", "TAO's sampler criterion"),
    "precision.calibration.min_keypoints": ("[0,)", "TAO's sampler criterion"),
    "precision.calibration.num_bins": ("[2,)", "histogram bins"),
    "precision.calibration.num_quantized_bins": ("[2,)", "histogram bins"),
    "prune.granularity": ("[1,)", "TAO -pg, 8"),
    "prune.min_filters": ("[1,)", "TAO -nf, 16"),
    "runtime.batch_size": ("[1,)", "images per network call"),
    "runtime.ort_threads": ("[0,)", "0: ONNX Runtime's default"),
    "export.parity_atol": ("(0,)", "tolerance of the ONNX vs torch check"),
    "export.paf_upsample": ("[1,)", "deployable model's PAF upsampling"),
    "export.workspace_gb": ("(0,)", "TensorRT builder workspace"),
    "export.parity_images": ("[0,)", "val images for the parity check"),
    "export.max_batch": ("[1,)", "dynamic-batch engines' largest batch"),
    "eval.max_images": ("[1,)", "val images evaluated; null: all"),
    "eval.max_dets": ("[1,)", "detections kept per image (COCO: 20)"),
    "infer.min_score": ("[0,)", "person score"),
    "bench.warmup": ("[0,)", "untimed calls"),
    "bench.iters": ("[1,)", "timed calls"),
    "bench.batch_sizes[]": ("[1,)", "images per call"),
    "runtime.scales[]": ("(0,)", "test scales"),
    # training knobs (the train loop owns their meaning; these are the ranges that make sense at all)
    "trainer.num_nodes": ("[1,)", "machines"),
    "trainer.log_every_n_steps": ("[1,)", "steps"),
    "trainer.accumulate_grad_batches": ("[1,)", "batches per optimizer step"),
    "trainer.check_val_every_n_epoch": ("[0,)", "epochs; 0: no validation"),
    "trainer.num_sanity_val_steps": ("[-1,)", "-1: the whole val set, 0: off"),
    "optim.lr": ("(0,)", "learning rate"),
    "optim.weight_decay": ("[0,)", "decoupled weight decay"),
    "optim.momentum": ("[0,1)", "SGD momentum"),
    "optim.warmup": ("[0,1]", "a fraction of the run"),
    "optim.annealing": ("[0,1]", "a fraction of the run"),
    "optim.min_lr": ("[0,)", "learning rate"),
    "optim.l1_kernel_reg": ("[0,)", "L1 factor"),
    "optim.l1_bn_gamma": ("[0,)", "L1 factor"),
    "optim.l1_ramp": ("[0,1]", "a fraction of the run"),
    "train.val_every_n_epochs": ("[0,)", "epochs; 0: no AP"),
    "train.val_max_images": ("[0,)", "0: no AP"),
    "train.save_top_k": ("[-1,)", "-1: keep all"),
    "train.checkpoint_every_n_steps": ("[0,)", "0: every epoch"),
    "retrain.l1_kernel_reg": ("[0,)", "L1 factor"),
    "retrain.l1_bn_gamma": ("[0,)", "L1 factor"),
    "retrain.max_epochs": ("[0,)", "epochs"),
    "retrain.lr_scale": ("(0,)", "learning-rate factor"),
    "retrain.max_steps": ("[-1,)", "optimizer steps; -1: by epochs"),
    "retrain.lift_bn_inputs": ("[0,)", "x sqrt(eps) of each BatchNorm; 0: off"),
    "retrain.lift_images": ("[1,)", "calibration images"),
    "trainer.max_steps": ("[-1,)", "optimizer steps; -1: by epochs"),
    "optim.grad_clip": ("(0,)", "gradient L2 norm; null: only the relative bound"),
    "optim.guard.clip_factor": ("[0,)", "x the running median gradient norm; 0: off"),
    "optim.guard.spike_factor": ("[0,)", "x the running median gradient norm; 0: skip non-finite steps only"),
    "optim.guard.window": ("[1,)", "steps"),
    "optim.guard.min_history": ("[1,)", "steps"),
    "optim.guard.spike_patience": ("[0,)", "spike steps skipped in a row before one is applied, clipped"),
    "optim.guard.max_consecutive": ("[0,)", "non-finite steps in a row before the run stops"),
    "train.progress_every_n_steps": ("[0,)", "steps; 0: no progress lines"),
    "debug.memory_batches": ("[0,)", "benchmark only: batches replayed from memory; 0: off"),
    "debug.worker_nice": ("[0,19]", "use 0 (off) to 19: the loader workers can only lower their priority below "
                          "the training process's, not raise it"),
}


def _in_interval(value: float, interval: str) -> bool:
    lo_s, hi_s = interval[1:-1].split(",")
    lo_ok = not lo_s or (value >= float(lo_s) if interval[0] == "[" else value > float(lo_s))
    hi_ok = not hi_s or (value <= float(hi_s) if interval[-1] == "]" else value < float(hi_s))
    return lo_ok and hi_ok


def _describe(interval: str) -> str:
    lo_s, hi_s = interval[1:-1].split(",")
    if not hi_s:
        return f"{'>=' if interval[0] == '[' else '>'} {lo_s}"
    return f"in {interval[0]}{lo_s}, {hi_s}{interval[-1]}"


def range_problems(cfg: DictConfig) -> list[str]:
    """One message per numeric knob of ``cfg`` outside its range (:data:`RANGES`)."""
    problems = []
    for key, (interval, what) in RANGES.items():
        listed = key.endswith("[]")
        value = OmegaConf.select(cfg, key[:-2] if listed else key, default=None, throw_on_missing=False)
        values = list(value) if listed and value is not None else [value]
        for v in values:
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not _in_interval(float(v), interval):  # NaN is in no interval
                shown = list(value) if listed else v
                problems.append(f"{key[:-2] if listed else key}={shown}: must be {_describe(interval)} ({what})")
                break
    return problems
