"""Typed configuration schema (registered in Hydra's ConfigStore) and start-up validation.

The YAML files under ``conf/`` are merged onto these dataclasses, so an unknown key or a wrong type fails at
composition time with a message naming the key. ``validate`` then checks the rules types cannot express
(input shape a multiple of 8, stage count in [2, 7], ...) and raises :class:`ConfigError` naming the key and
the allowed values. Every node mirrors the object it builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


from posekit.errors import UserError  # noqa: E402


class ConfigError(UserError, ValueError):
    """A composed config that cannot run; the message names the key, the allowed values and the fix."""


class Stage(str, Enum):
    train = "train"
    prune = "prune"
    retrain = "retrain"
    export = "export"
    eval = "eval"
    infer = "infer"
    bench = "bench"
    calibrate = "calibrate"
    pipeline = "pipeline"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


# --------------------------------------------------------------------------------------------- experiment
@dataclass
class ExperimentConfig:
    name: str = "default"
    root: str = "experiments"  # relative paths are relative to the directory launch.py was started from
    dir: str = "${.root}/${.name}"  # every stage reads and writes under here (docs/architecture.md)
    # later stages take model.input_shape, keypoints and data from what the model was trained with (train/summary.json)
    # unless the command line sets them (posekit/inherit.py); false: the composed config as is
    inherit: bool = True
    inherited_from: Optional[str] = None  # set by posekit: the record this run's settings came from


# --------------------------------------------------------------------------------------------- keypoints
@dataclass
class KeypointsConfig:
    name: str = MISSING
    dataset_joints: List[str] = MISSING
    sigmas: List[float] = MISSING
    joints: List[str] = MISSING
    derived: Dict[str, List[str]] = field(default_factory=dict)
    limbs: List[List[str]] = MISSING
    flip_pairs: List[List[str]] = field(default_factory=list)
    no_new_person_limbs: List[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = "bpnet_lite"
    stages: int = 3  # initial stage + (stages-1) refinement stages, 2..7
    width: float = 1.0  # hidden-channel multiplier (1.0 = TAO, 16,777,835 params at 3 stages)
    input_shape: List[int] = field(default_factory=lambda: [288, 384])  # [H, W], multiples of 8
    refinement_bn: bool = False  # posekit option: BatchNorm after each stage conv (TAO: none; docs/training.md)


# --------------------------------------------------------------------------------------------- data
@dataclass
class SyntheticConfig:
    seed: int = 0
    num_train: int = 2000
    num_val: int = 200
    image_size: List[int] = field(default_factory=lambda: [384, 512])  # [H, W] of generated images
    min_people: int = 1
    max_people: int = 6  # per image; val images never exceed 20 (COCO eval keeps 20 detections)
    person_height: List[float] = field(default_factory=lambda: [0.25, 0.8])  # fraction of image height
    crowd_prob: float = 0.1  # images with an iscrowd=1 region
    unannotated_prob: float = 0.15  # images with a drawn but unannotated person (num_keypoints=0)
    distractors: int = 6  # limb-like clutter strokes per image
    cache_dir: Optional[str] = None  # default: $POSEKIT_CACHE/synthetic or ~/.cache/posekit/synthetic
    workers: int = 0  # generating processes (0 = all cores); the result does not depend on it
    # > 0: the first training epoch takes the train images in blocks of this many, in generation order (each block
    # shuffled; later epochs shuffle the whole set), so a training process that generates the set starts on its
    # first blocks while the rest renders (posekit/data/stream.py). Part of the run's sample order, not of the data.
    stream_block: int = 0


@dataclass
class AugmentConfig:
    enabled: bool = True
    target_person_scale: float = 0.6  # main person's bbox height / input height (TAO)
    scale_jitter: List[float] = field(default_factory=lambda: [0.8, 1.2])  # TAO: zoom off (1.0)
    rotate_deg: float = 40.0
    translate_px: float = 40.0
    flip_prob: float = 0.5
    color_jitter: float = 0.3  # brightness/contrast/saturation strength; 0 disables (TAO has none)
    hue_jitter: float = 0.05
    border_value: int = 128


@dataclass
class DataConfig:
    name: str = MISSING  # synthetic | coco
    root: Optional[str] = None
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    batch_size: int = 16
    num_workers: int = 2
    val_max_images: Optional[int] = None  # cap the val set (validation during training, quick evals)
    targets_on_device: bool = False  # workers ship keypoints; the training device renders heatmaps/PAFs (less CPU)
    # workers ship each training sample's source image and random draws; the training device warps and colour-jitters
    # (the CPU path's maths, docs/data.md "The device data path"); needs targets_on_device
    augment_on_device: bool = False
    # with augment_on_device: workers ship JPEG bytes and the device decodes them (torchvision.io.decode_jpeg, the
    # [gpu] extra); without torchvision the workers decode, with a warning
    decode_on_device: bool = False
    main_person_min_keypoints: int = 5  # TAO data_filtering_params
    main_person_min_area: float = 1024.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# --------------------------------------------------------------------------------------------- codec
@dataclass
class DecodeConfig:
    upsample: int = 1  # 1 = decode on the stride-8 maps with sub-pixel refinement; TAO uses 8, LW-OpenPose 4
    smooth_sigma: float = 0.0  # Gaussian smoothing before NMS (0 = off; TAO Keras path: 5x5, sigma 3)
    nms_window: int = 3
    peak_threshold: float = 0.1
    subpixel: bool = True
    paf_samples: int = 10
    paf_min_score: float = 0.05
    paf_min_ratio: float = 0.8  # fraction of samples above paf_min_score
    min_parts: int = 4
    min_mean_score: float = 0.4
    max_people: int = 20
    max_peaks: int = 100  # per joint, best first: bounds the candidate pairs (and time) on noisy maps


@dataclass
class CodecConfig:
    stride: int = 8
    sigma: float = 7.0  # heatmap Gaussian, input pixels
    paf_half_width: float = 8.0  # PAF band half-width, input pixels
    decode: DecodeConfig = field(default_factory=DecodeConfig)


# --------------------------------------------------------------------------------------------- precision
@dataclass
class CalibrationConfig:
    # minmax | percentile | entropy (ONNX Runtime calibrators). Not entropy by default: ORT's KL search clips this
    # network's ReLU outputs to 6-50 % of their range and the INT8 model loses nearly all AP (docs/export.md).
    method: str = "minmax"
    percentile: float = 99.99
    num_images: int = 64
    batch_size: int = 8
    min_persons: int = 1
    min_keypoints: int = 5
    seed: int = 42
    images: Optional[str] = None  # a folder or a list file of calibration images; default: sampled from train
    num_bins: int = 2048  # entropy/percentile histogram bins (ORT's entropy default 128 degenerates to min-max)
    num_quantized_bins: int = 128  # entropy: bins of the quantized distribution in the KL search


@dataclass
class PrecisionConfig:
    name: Precision = Precision.fp32
    keep_io_fp32: bool = True  # fp16: keep FP32 inputs/outputs so callers need not cast
    int8_float_outputs: bool = True  # int8: keep the final heatmap/PAF convs in float (INT8 would clip the peaks)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainerConfig:
    """``pl.Trainer``'s keyword arguments (conf/trainer/*.yaml), passed through by posekit/train/trainer.py; posekit
    resolves ``accelerator``/``precision`` "auto" and the run's length (train vs retrain)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # auto: bf16-mixed on a GPU (16-mixed before Ampere); on a CPU bf16-mixed with native bf16, else 32-true
    precision: str = "auto"
    max_epochs: int = 30
    max_steps: int = -1
    max_time: Optional[str] = None  # "DD:HH:MM:SS": a safety cap only; the schedule follows the steps
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    check_val_every_n_epoch: int = 5
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    benchmark: Optional[bool] = None
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True
    num_sanity_val_steps: int = 2  # val batches run before training (catches val-loop bugs early); 0 = off


@dataclass
class GuardConfig:
    """The step guard (posekit/train/guard.py): updates with a non-finite or exploding gradient are skipped."""

    clip_factor: float = 3.0  # clip the gradient norm to this x its running median (0: off; optim.grad_clip: absolute)
    spike_factor: float = 10.0  # skip a step whose gradient norm > this x the running median (0: non-finite only)
    window: int = 200  # running-median window, steps
    min_history: int = 50  # kept steps before a spike can be called
    spike_patience: int = 20  # spike steps skipped in a row at most; a longer spike comes from the weights: applied, clipped
    max_consecutive: int = 20  # more non-finite steps in a row stop the run with a clear error


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | softstart_annealing
    warmup: float = 0.05  # fraction of steps (soft start)
    annealing: float = 0.5  # softstart_annealing: fraction of steps where annealing starts
    min_lr: float = 1e-6
    stagewise_lr: bool = False  # TAO multipliers: refinement stages x4, biases x2
    l1_kernel_reg: float = 0.0  # TAO: 5e-4 on every conv kernel; pushes weights to zero for pruning
    l1_bn_gamma: float = 0.0  # posekit: L1 on BatchNorm scales (network slimming) so BN layers' filters die too
    l1_kernels: str = "all"  # all (TAO) | unnormalized: kernel L1 skips convs that feed a BatchNorm (scale-invariant)
    l1_ramp: float = 0.0  # posekit: both L1 factors rise linearly from 0 over this share of the run (0 = TAO)
    grad_clip: Optional[float] = None  # absolute max gradient L2 norm of the loss term (null: only guard.clip_factor)
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class TrainConfig:
    resume: bool = True  # resume from the stage's last.ckpt if present
    channels_last: bool = True
    compile: bool = False  # net.compile() (in place; state_dict keys stay clean)
    # one-GPU runs: tune, load and compile on a copy of the network while the data set is prepared
    # (posekit/train/warmup.py); the first real step then starts at speed
    warmup_device: bool = True
    # with compile, one GPU: compile in a separate process while training starts eager, then compile in place from
    # Inductor's on-disk caches at a batch boundary (posekit/train/compile_prefill.py)
    compile_prefill: bool = False
    monitor: str = "val/AP"  # checkpoint selection; "train/loss" when validation is off
    val_every_n_epochs: int = 5
    val_max_images: Optional[int] = 100
    save_top_k: int = 1
    checkpoint_every_n_steps: int = 0  # 0: last.ckpt every epoch; N: every N steps (long COCO epochs)
    progress_every_n_steps: int = 100  # a progress line (step, loss, images/s, ETA) when stdout is not a terminal
    head_init: str = "kaiming"  # kaiming (He; trains from scratch far faster) | tao (N(0, 0.01), docs/training.md)


@dataclass
class RetrainConfig:
    model: Optional[str] = None  # default: the experiment's prune/model.pruned-<pth>.pt
    l1_kernel_reg: float = 0.0  # TAO retrain: regularization off
    l1_bn_gamma: float = 0.0  # off in retrain too
    max_epochs: Optional[int] = None  # default: trainer.max_epochs
    max_steps: Optional[int] = None  # default: trainer.max_steps (the run's length, hence its schedule)
    max_time: Optional[str] = None  # "DD:HH:MM:SS" safety cap; default: trainer.max_time
    lr_scale: float = 1.0
    # posekit: before the first step, scale each BN-fed conv so that its BN's batch input sd is at least this many
    # sqrt(eps) on lift_images calibration images (posekit/prune/lift.py, docs/pruning.md); 0: off
    lift_bn_inputs: float = 0.0
    lift_images: int = 16


# --------------------------------------------------------------------------------------------- prune
@dataclass
class PruneConfig:
    model: Optional[str] = None  # default: the experiment's train/model.pt
    pth: float = 0.2  # keep filters whose normalized kernel norm > pth (TAO -pth); 0 = no pruning
    norm: str = "l2"  # l2 | l1: per-filter kernel norm
    normalizer: str = "max"  # max | L2
    equalization: str = "union"  # union | intersection | arithmetic_mean | geometric_mean
    fold_bn: bool = False  # posekit: norm of the BN-folded kernel (|gamma| / sqrt(var + eps) * W); TAO: raw kernel
    compensate: bool = False  # posekit: fold each removed channel's (data-free) constant output into its consumers
    granularity: int = 8  # kept filter count rounded UP to a multiple of this (TAO -pg)
    min_filters: int = 16  # keep at least this many filters per layer (TAO -nf)
    excluded_layers: List[str] = field(default_factory=list)  # conv names as in named_modules(): backbone.block_1a.conv


# --------------------------------------------------------------------------------------------- runtime
@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mode: str = "strict"  # strict (pad to the network input) | adjust (keep aspect, variable size)
    scales: List[float] = field(default_factory=lambda: [1.0])  # multi-scale test, maps averaged
    flip: bool = False  # flip test
    torch_precision: str = "fp32"  # torch backend: fp32 | fp16 | bf16
    cuda_graphs: bool = True  # torch backend on CUDA with a fixed input shape
    channels_last: bool = True
    ort_threads: int = 0  # 0 = ONNX Runtime default
    batch_size: int = 1
    interpolation: str = "linear"  # preprocessing warp: linear | cubic (TAO resizes with cubic)


# --------------------------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    model: Optional[str] = None  # default: latest of retrain > prune > train in the experiment
    opset: int = 18  # torch's exporter emits 18; 17 works through ONNX's version converter
    data_format: str = "channels_first"  # channels_first | channels_last (NHWC input like TAO's input_1:0)
    dynamic_batch: bool = False
    input_name: str = "input"
    parity_atol: float = 1e-3
    engine: bool = False  # build a TensorRT engine when tensorrt + a GPU are present
    deploy: bool = False  # fold post-processing into the graph + write a DeepStream nvinfer config
    paf_upsample: int = 4  # deploy: PAF upsampling folded into the graph (TAO)
    peak_map: bool = True  # deploy: add a max-pool peak map output
    cpu_int8: bool = True  # int8: also write the ONNX Runtime-tuned (U8S8) CPU model
    # int8 CPU model: 7-bit weights. null (default): decided on the exporting host, true on an x86 CPU without
    # VNNI/AMX, whose int8 kernels saturate with 8-bit weights (docs/export.md)
    cpu_reduce_range: Optional[bool] = None
    workspace_gb: float = 2.0
    parity_images: int = 4  # val images for the real-input parity check (plus one random batch)
    max_batch: int = 64  # dynamic_batch engines: the optimization profile's largest batch
    trt_int8_source: str = "qdq"  # TensorRT 10 INT8 engine from: qdq (explicit Q/DQ) | cache (FP32 + cal.bin, TAO)
    trt_version: Optional[str] = None  # cal.bin header version; default: installed TensorRT 10, else 10.9.0


# --------------------------------------------------------------------------------------------- eval/infer/bench
@dataclass
class EvalConfig:
    artifact: Optional[str] = None  # any model file, checkpoint, ONNX or engine; default: experiment's latest
    max_images: Optional[int] = None
    max_dets: int = 20
    tag: Optional[str] = None  # eval/<tag>/ folder; default: the source tag (trained, pruned-0.2...) or file name


@dataclass
class InferConfig:
    input: Optional[str] = None  # an image, a folder or a video
    artifact: Optional[str] = None
    output: Optional[str] = None  # default: <experiment>/infer/<input name>
    draw: bool = True
    min_score: float = 0.0


@dataclass
class BenchConfig:
    artifacts: List[str] = field(default_factory=list)  # default: the experiment's exported ONNX models
    batch_sizes: List[int] = field(default_factory=lambda: [1])
    warmup: int = 10
    iters: int = 50
    end_to_end: bool = True
    images: Optional[str] = None  # images for end-to-end timing; default: the val set


@dataclass
class TargetConfig:
    """A latency target of the ``targets`` pipeline step (posekit/targets.py, docs/sweeps.md): one backend on one
    device, measuring (AP, then latency) each precision of the run that it lists."""

    backend: str = "onnxruntime"  # torch (the chain's PyTorch model) | onnxruntime (its exported ONNX)
    device: str = "cpu"  # runtime.device of this target's eval and bench (auto: CUDA when available)
    precisions: List[str] = field(default_factory=lambda: ["fp32", "int8"])  # the others: n/a on this target
    batch_sizes: List[int] = field(default_factory=lambda: [1])  # latency: the first; throughput: the largest
    cuda_graphs: bool = True  # torch on CUDA: replay one captured graph per input shape
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default (the machine's cores)
    end_to_end: bool = True  # also time preprocess + network + decode (bench.end_to_end)
    # true: the run evaluates AP but leaves the latency to the target machine, later:
    # python -m posekit.sweep.report <sweep dir> --bench <target name>
    defer: bool = False


@dataclass
class PipelineConfig:
    steps: List[str] = field(
        default_factory=lambda: ["train", "eval", "prune", "retrain", "eval", "export", "eval", "bench"]
    )
    # the export step runs once per precision; null: only the configured precision.name (what sweeps use)
    precisions: Optional[List[str]] = field(default_factory=lambda: ["fp32", "int8"])
    force: bool = False  # re-run every step even when its record says it is done
    # prune.pth=0: retrain the trained model anyway, as long as a pruned one (retrain.*), so that a sweep's pth 0
    # point has the same schedule as its pruned points and the two differ in pruning alone (docs/sweeps.md)
    retrain_unpruned: bool = False
    # latency targets measured by the `targets` step, by name (sweeps/sweep/accuracy_latency.yaml: gpu, cpu);
    # null drops a target a composed config defines (pipeline.targets.gpu=null: the CPU target alone)
    targets: Dict[str, Optional[TargetConfig]] = field(default_factory=dict)


@dataclass
class SweepConfig:
    name: str = "sweep"  # set by sweeps/sweep/<name>.yaml; its folder: ${experiment.root}/sweeps/<name>
    shared_dir: Optional[str] = None  # the points' shared models (train/prune/retrain); default <sweep dir>/shared
    # [H, W] that train/prune/retrain use, so all export shapes share one model; null: the point's input_shape
    train_shape: Optional[List[int]] = None


# --------------------------------------------------------------------------------------------- debug
@dataclass
class DebugConfig:
    """Benchmark-only knobs (the lab scripts under benchmarks/ set them): they measure the training step, they
    are not product settings. Defaults: off."""

    memory_batches: int = 0  # > 0: training replays this many batches held in memory (no data pipeline)
    worker_nice: int = 0  # loader workers' priority lowered by this (0..19): the training process gets the CPU first
    profiler: Optional[str] = None  # Lightning's: simple (wall time per hook, printed at the end) | advanced | pytorch


# --------------------------------------------------------------------------------------------- root
@dataclass
class Config:
    stage: Stage = Stage.train
    seed: int = 42
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    keypoints: KeypointsConfig = field(default_factory=KeypointsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # extra Lightning callbacks for train/retrain, each a `_target_` node (conf/callbacks/, e.g. +callbacks=lr_monitor)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    debug: DebugConfig = field(default_factory=DebugConfig)


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The project's config (conf/) composed with Hydra ``overrides`` as ``launch.py`` builds it, without running
    anything (benchmarks, tools, tests)."""
    import os
    from pathlib import Path

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    os.environ.setdefault("POSEKIT_ROOT", str(root))  # the sweeps/ search path (conf/config.yaml)
    register()
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


# --------------------------------------------------------------------------------------------- validation
def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise :class:`ConfigError` naming the key and the allowed values.
    Every config check lives in :mod:`posekit.validation` (this is its entry point)."""
    from posekit.validation import validate as check

    check(cfg)
