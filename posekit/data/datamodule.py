"""``PoseDataModule``: the composed config -> train and validation DataLoaders (PyTorch Lightning).

Train batches come from person-centric augmented samples (one per main person); validation batches are the
whole val images letterboxed without augmentation, with targets, for the validation *loss*. Validation AP is
computed by the training callback from ``paths.val_ann`` / ``paths.val_images``.
"""

from __future__ import annotations

import logging
import os
import time
from functools import cached_property, partial
from multiprocessing.context import BaseContext

import cv2
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from posekit.codec.encode import Encoder
from posekit.data import early, forkserver
from posekit.data.coco import PoseDataset, collate_people
from posekit.data.device_augment import DeviceAugmenter, collate_device_items, torchvision_available, \
    torchvision_decoder
from posekit.data.paths import DataPaths, resolve_data
from posekit.data.stream import BlockOrderSampler, CachedBlocks, StreamedIndex, one_process
from posekit.data.synthetic import split_paths
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")

def configure_worker(worker_id: int, nice: int = 0) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker, and the worker's priority lowered by ``nice``.

    PyTorch already gives each worker one torch thread, but OpenCV keeps a pool as wide as the machine, so N
    workers each running ``warpAffine``/``resize`` on all cores oversubscribe the CPU N-fold (on a 16-core GPU
    host 14 workers delivered a fraction of their single-core rate). Parallelism comes from the workers.

    ``nice`` (``debug.worker_nice``): the training process's main thread is what queues the GPU's work, and
    when it waits for a core the GPU idles; niced workers run on whatever CPU the training process leaves
    instead of taking turns with it.
    """
    cv2.setNumThreads(1)
    if nice > 0:
        os.nice(nice)


# What the forkserver imports once, before it forks any worker: each worker then starts with torch, OpenCV and
# albumentations already loaded instead of importing them itself (seconds of CPU per worker, times 14 workers).
FORKSERVER_PRELOAD = list(forkserver.LOADER_MODULES)
# A process that imports this module starts loaders: whoever starts the forkserver (the synthetic-data generator
# of a cold run, often) preloads the loader's modules too (posekit.data.forkserver).
forkserver.want(*FORKSERVER_PRELOAD)


def worker_context() -> BaseContext:
    """The ``forkserver`` context where the platform has it (Linux), else ``spawn``.

    Workers never fork from the training process itself: once its OpenCV thread pool has run (an in-process
    evaluation), a forked worker can hang in its first OpenCV call. The forkserver preloads this module's imports
    (:data:`FORKSERVER_PRELOAD`; it takes effect when the server starts: at the first loader of the process, or
    earlier at the synthetic-data generator's pool, which asks for these modules too).
    """
    forkserver.want(*FORKSERVER_PRELOAD)
    return forkserver.context()


class ReplayedBatches:
    """The first ``count`` batches of ``loader``, held in (pinned) memory and replayed for an epoch of
    ``len(loader)`` batches: the same training step without the data pipeline (``debug.memory_batches``, the
    reference the real pipeline's images/s is measured against in docs/results.md).

    The batches are fetched when the first epoch starts; the loader is dropped then, and with it its workers, so
    they take no CPU from the training process.
    """

    def __init__(self, loader: DataLoader, count: int):
        self.loader: DataLoader | None = loader
        self.count, self.length = count, len(loader)
        self.batches: list[dict[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if self.loader is not None:
            it = iter(self.loader)
            self.batches = [next(it) for _ in range(min(self.count, self.length))]
            del it
            self.loader = None
        for i in range(self.length):
            yield self.batches[i % len(self.batches)]


class PoseDataModule(pl.LightningDataModule):
    """Built from ``cfg.data``, ``cfg.model.input_shape``, ``cfg.codec`` and ``cfg.keypoints``; ``block_order``:
    whether ``data.synthetic.stream_block`` orders the first epoch (posekit.data.stream; the train stage's).

    Attributes:
        skeleton: the keypoint set.
        paths: :class:`DataPaths` (resolved on first use; the synthetic dataset is generated then).
        input_hw: (H, W) network input.
    """

    def __init__(self, cfg: DictConfig, block_order: bool = True):
        super().__init__()
        self.cfg = cfg
        self.skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
        self.input_hw = tuple(int(v) for v in cfg.model.input_shape)
        self.train_set: PoseDataset | None = None
        self.val_set: PoseDataset | None = None
        self.resolve_s: float | None = None  # seconds to find (or generate) the data set, once resolved
        self.index_s: float | None = None  # seconds setup() spent building the datasets (after resolving)
        # data.targets_on_device: workers ship keypoints, the training device renders heatmaps and PAFs
        self.targets_on_device = bool(cfg.data.get("targets_on_device", False))
        # data.augment_on_device: workers ship sources and draws, the training device warps and jitters (the train
        # set only: validation items are letterboxed once, without randomness, and stay on the workers)
        self.augment_on_device = bool(cfg.data.get("augment_on_device", False))
        self.decode_on_device = self.augment_on_device and bool(cfg.data.get("decode_on_device", False))
        if self.decode_on_device and not torchvision_available():
            log.warning("data.decode_on_device=true but torchvision is not importable: the loader workers decode the "
                        "JPEGs (install the torchvision release that matches your torch, e.g. `pip install "
                        "torchvision==0.26.*` for torch 2.11; docs/data.md)")
            self.decode_on_device = False
        self.device_augmenter = (
            DeviceAugmenter(self.skeleton, self.input_hw, torchvision_decoder if self.decode_on_device else None)
            if self.augment_on_device else None
        )
        self.worker_nice = int(cfg.debug.worker_nice)  # range checked by config.validate
        self.encoder = Encoder(self.skeleton, self.input_hw, cfg.codec)
        # data.synthetic.stream_block: the first epoch in blocks (posekit.data.stream); one-process runs only
        syn = cfg.data.get("synthetic")
        on = block_order and cfg.data.name == "synthetic" and syn is not None
        self.stream_block = int(syn.stream_block) if on else 0
        if self.stream_block and not one_process(cfg.trainer):
            log.info("data.synthetic.stream_block=%d applies to one-process runs: this one shuffles the whole set "
                     "every epoch", self.stream_block)
            self.stream_block = 0
        # the train split this process is generating, indexed as its images are written (None: read train.json)
        self.streamed: StreamedIndex | None = early.streamed_index(cfg) if self.stream_block else None
        if self.streamed is not None:
            log.info("training starts on the synthetic set's first blocks of %d images while the rest renders",
                     self.stream_block)

    @cached_property
    def paths(self) -> DataPaths:
        t0 = time.perf_counter()
        paths = resolve_data(self.cfg)
        self.resolve_s = time.perf_counter() - t0  # generating the synthetic set on first use, else a lookup
        return paths

    def prepare_data(self) -> None:
        if self.streamed is None:  # (a streamed train split is read as it is generated: no waiting here)
            self.paths  # generates the synthetic dataset once (other ranks wait on its file lock)

    def setup(self, stage: str | None = None) -> None:
        t0, resolved = time.perf_counter(), self.resolve_s
        self._build_datasets(stage)
        spent = time.perf_counter() - t0 - ((self.resolve_s or 0.0) if resolved is None else 0.0)
        self.index_s = (self.index_s or 0.0) + spent  # reading and indexing the annotations (not resolving them)

    def _build_datasets(self, stage: str | None) -> None:
        d = self.cfg.data
        common = dict(skeleton=self.skeleton, input_hw=self.input_hw, codec_cfg=self.cfg.codec,
                      keypoints_only=self.targets_on_device)
        if stage in (None, "fit") and self.train_set is None:
            if self.streamed is None:
                ann, images = self.paths.train_ann, self.paths.train_images
            else:  # nothing to index here, and the images land in the data set's folder as they are written
                ann, images = None, split_paths(self.streamed.root)["train_images"]
            self.train_set = PoseDataset(
                ann, images, augment_cfg=d.augment, train=True,
                min_keypoints=d.main_person_min_keypoints, min_area=d.main_person_min_area,
                device_augment=self.augment_on_device, jpeg_bytes=self.decode_on_device, **common,
            )  # fmt: skip
        # a streamed run builds its val set when a val loader is asked for (it needs the finished set)
        if stage in ((None, "fit", "validate") if self.streamed is None else ("validate",)) and self.val_set is None:
            self.val_set = PoseDataset(
                self.paths.val_ann, self.paths.val_images, train=False, max_images=d.val_max_images, **common
            )

    def _train_sampler(self, dataset: PoseDataset) -> BlockOrderSampler | None:
        """The block-ordered sampler of ``data.synthetic.stream_block`` (None: the loader's plain shuffle)."""
        if not self.stream_block:
            return None
        source = self.streamed if self.streamed is not None else CachedBlocks(dataset, self.stream_block)
        return BlockOrderSampler(source, int(self.cfg.seed))

    def train_counts(self) -> dict[str, int | None]:
        """``train_images`` and ``train_samples`` the train split holds (a streamed one's, once generated), and
        ``dropped_annotations`` (non-finite, at load)."""
        if self.streamed is not None:
            return {"train_images": self.streamed.num_images, "train_samples": self.streamed.known_total(),
                    "dropped_annotations": 0}
        ts = self.train_set
        return {"train_images": getattr(ts, "num_images", None), "train_samples": len(ts) if ts is not None else None,
                "dropped_annotations": getattr(ts, "num_dropped_annotations", 0)}

    def _loader(self, dataset: PoseDataset, train: bool) -> DataLoader:
        workers = int(self.cfg.data.num_workers)
        sampler = self._train_sampler(dataset) if train else None
        return DataLoader(
            dataset,
            batch_size=int(self.cfg.data.batch_size),
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and (self.streamed is not None or len(dataset) >= int(self.cfg.data.batch_size)),
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=partial(configure_worker, nice=self.worker_nice) if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
            # Fresh worker processes, not forks: a fork inherits the parent's OpenCV/OpenMP thread pools in
            # whatever state they are (after an in-process eval, e.g. in `stage=pipeline`), and the workers
            # then hang on their first parallel call.
            multiprocessing_context=worker_context() if workers > 0 else None,
            collate_fn=collate_device_items if getattr(dataset, "device_augment", False) else
            collate_people if self.targets_on_device else None,
        )

    def train_dataloader(self) -> DataLoader | ReplayedBatches:
        if self.train_set is None:
            self.setup("fit")
        loader = self._loader(self.train_set, train=True)
        if int(self.cfg.debug.memory_batches) > 0:
            if self.streamed is not None:  # the replay keeps the epoch's length: wait until the split has one
                self.streamed.total()
            return ReplayedBatches(loader, int(self.cfg.debug.memory_batches))
        return loader

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """With ``data.augment_on_device``: the batch's sources and draws, now on the training device, become the
        ``image`` (B, 3, H, W) uint8 and ``keypoints`` (B, P, J, 3) the workers would have made
        (:class:`~posekit.data.device_augment.DeviceAugmenter`). With ``data.targets_on_device``: the keypoints
        become ``heatmaps`` (B, J+1, h, w) and ``pafs`` (B, 2L, h, w), the same numbers the workers' ``encode``
        makes."""
        if "plan" in batch:
            with torch.no_grad():
                batch = self.device_augmenter(batch)
        if "keypoints" in batch and "heatmaps" not in batch:
            with torch.no_grad():
                batch["heatmaps"], batch["pafs"] = self.encoder.batch(batch.pop("keypoints"))
        return batch

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        return self._loader(self.val_set, train=False)
