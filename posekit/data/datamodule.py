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
from posekit.data import forkserver
from posekit.data.coco import PoseDataset, collate_people
from posekit.data.device_augment import DeviceAugmenter, collate_device_items, torchvision_available, \
    torchvision_decoder
from posekit.data.paths import DataPaths, resolve_data
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
    """Built from ``cfg.data``, ``cfg.model.input_shape``, ``cfg.codec`` and ``cfg.keypoints``.

    Attributes:
        skeleton: the keypoint set.
        paths: :class:`DataPaths` (resolved on first use; the synthetic dataset is generated then).
        input_hw: (H, W) network input.
    """

    def __init__(self, cfg: DictConfig):
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

    @cached_property
    def paths(self) -> DataPaths:
        t0 = time.perf_counter()
        paths = resolve_data(self.cfg)
        self.resolve_s = time.perf_counter() - t0  # generating the synthetic set on first use, else a lookup
        return paths

    def prepare_data(self) -> None:
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
            self.train_set = PoseDataset(
                self.paths.train_ann, self.paths.train_images, augment_cfg=d.augment, train=True,
                min_keypoints=d.main_person_min_keypoints, min_area=d.main_person_min_area,
                device_augment=self.augment_on_device, jpeg_bytes=self.decode_on_device, **common,
            )  # fmt: skip
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = PoseDataset(
                self.paths.val_ann, self.paths.val_images, train=False, max_images=d.val_max_images, **common
            )

    def _loader(self, dataset: PoseDataset, train: bool) -> DataLoader:
        workers = int(self.cfg.data.num_workers)
        return DataLoader(
            dataset,
            batch_size=int(self.cfg.data.batch_size),
            shuffle=train,
            drop_last=train and len(dataset) >= int(self.cfg.data.batch_size),
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
