"""The block-ordered first epoch (``data.synthetic.stream_block``), which lets training start on the synthetic set's
first images while the rest is still being rendered.

With ``stream_block = B > 0`` the training sampler visits the train images of epoch 0 in blocks of B consecutive
images (by index, which is generation order): block 0, then block 1, ..., each block's samples shuffled. Later epochs
shuffle the whole set. The order is a function of the seed and B alone: a training process that generates the set
itself (``posekit.data.early``) hands each block to the loader as soon as the generator has written it
(:class:`StreamedIndex`), and a process that finds the set cached takes the same blocks from the annotation file
(:class:`CachedBlocks`). Either way the run sees the same samples in the same order; streaming only decides whether
it waits for the whole set before the first step (34-44 s of a cold one-GPU run's start-up: docs/data.md).

The loader workers of a streamed run were started before most images existed, so their copy of the data set has no
index: the sampler hands them each sample whole (:class:`~posekit.data.index.SampleKey`, the image's record and the
main person). A run on a cached set hands out positions, as a plain shuffle does.

Torch-free: the generating thread builds the index before the training process has imported torch.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from posekit.data.index import SampleKey, index_images
from posekit.skeleton import Skeleton


def block_of(image_id: int, block_images: int) -> int:
    """The block of a synthetic image: its index (``image_id - 1``, generation order) // ``block_images``."""
    return (int(image_id) - 1) // block_images


def one_process(trainer_cfg: Mapping[str, Any]) -> bool:
    """Whether the run trains in a single process (one device, one node), judged from the config alone (no torch
    import): streaming hands the samples to one process's loader; under DDP every rank waits for the whole set."""
    if int(trainer_cfg.get("num_nodes", 1) or 1) != 1:
        return False
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return int(devices) == 1
    return not isinstance(devices, str) and len(list(devices)) == 1


class StreamedIndex:
    """The train split's index, grown as the generator writes images (the ``on_image`` listener of
    ``ensure_synthetic``, called in the generating thread); the sampler reads it block by block.

    Args:
        skeleton, min_keypoints, min_area: as the data set's (``index_images``).
        block_images: B, images per block.
        root: the data set's folder (None where nobody reads it, as in tests).
    """

    def __init__(self, skeleton: Skeleton, min_keypoints: int, min_area: float, block_images: int,
                 root: Path | None = None):
        self.skeleton, self.min_keypoints, self.min_area = skeleton, int(min_keypoints), float(min_area)
        self.block_images = int(block_images)
        self.root = root
        self._records: list[bytes] = []  # pickled image records (SampleKey.record)
        self._samples: list[tuple[int, int]] = []  # (record position, main person)
        self._block_ends: list[int] = []  # samples before the end of each published block
        self._complete = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self.num_images = 0

    # ------------------------------------------------------------------ the generating thread
    def __call__(self, split: str, image: dict, annotations: list[dict]) -> None:
        """``on_image``: index one image of ``split`` (val images end the train split)."""
        if split != "train":
            self.finish()
            return
        block = block_of(image["id"], self.block_images)
        if block > len(self._block_ends):  # (images come in index order: only a skipped index gets here)
            self._publish(block)
        records, samples = index_images([image], {int(image["id"]): annotations}, self.skeleton, True,
                                        self.min_keypoints, self.min_area)
        base = len(self._records)
        with self._changed:  # the sampler may be reading the lists
            self._records += [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
            self._samples += [(base + r, p) for r, p in samples]
            self.num_images += 1
        if int(image["id"]) % self.block_images == 0:  # the block's last image (ids are index + 1)
            self._publish(block + 1)

    def _publish(self, next_block: int) -> None:
        with self._changed:
            while len(self._block_ends) < next_block:
                self._block_ends.append(len(self._samples))
            self._changed.notify_all()

    def finish(self) -> None:
        """The train split is complete: publish the last block."""
        if self._complete:
            return
        self._publish(-(-self.num_images // self.block_images))  # every block that holds an image
        with self._changed:
            self._complete = True
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        """The generation failed: the sampler raises ``error`` instead of waiting for blocks that never come."""
        with self._changed:
            self._error = error
            self._changed.notify_all()

    # ------------------------------------------------------------------ the sampler
    def block(self, k: int) -> range | None:
        """Sample positions of block ``k``, waiting until it is written; None past the last block."""
        with self._changed:
            while len(self._block_ends) <= k and not self._complete and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            if k >= len(self._block_ends):
                return None
            return range(self._block_ends[k - 1] if k else 0, self._block_ends[k])

    def total(self) -> int:
        """All samples of the split, waiting for the generation to finish."""
        with self._changed:
            while not self._complete and self._error is None:
                self._changed.wait()
            if self._error is not None:
                raise self._error
            return len(self._samples)

    def known_total(self) -> int | None:
        """All samples if the split is complete, else None (no wait)."""
        return len(self._samples) if self._complete else None

    def key(self, i: int) -> SampleKey:
        rec, main = self._samples[i]
        return SampleKey(self._records[rec], main)


class CachedBlocks:
    """The same blocks over a data set indexed from its annotation file (the set was cached): positions in it."""

    def __init__(self, dataset: Any, block_images: int):
        blocks = (dataset.sample_image_ids - 1) // int(block_images)
        if len(blocks) and np.any(np.diff(blocks) < 0):
            raise ValueError("the data set's samples are not in image-id order")
        self._ends = np.searchsorted(blocks, np.arange(int(blocks.max()) + 1 if len(blocks) else 0), side="right")
        self._n = len(dataset)

    def block(self, k: int) -> range | None:
        if k >= len(self._ends):
            return None
        return range(int(self._ends[k - 1]) if k else 0, int(self._ends[k]))

    def total(self) -> int:
        return self._n

    def known_total(self) -> int:
        return self._n

    def key(self, i: int) -> int:
        return i


class BlockOrderSampler:
    """Epoch 0: the blocks in order, each block's samples shuffled by ``(seed, 0, block)``; epoch e >= 1: one
    shuffle of every sample by ``(seed, e)``. Lightning sets the epoch (``set_epoch``) before each.

    ``source``: :class:`StreamedIndex` or :class:`CachedBlocks`. The length is unknown while a streamed split is
    still being generated (``len`` raises TypeError, which Lightning reads as "unknown"; the run is defined in steps).
    """

    def __init__(self, source: StreamedIndex | CachedBlocks, seed: int):
        self.source, self.seed, self.epoch = source, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.source.known_total()
        if n is None:
            raise TypeError("the streamed train split's length is not known until its generation ends")
        return n

    def __iter__(self) -> Iterator[int | SampleKey]:
        if self.epoch == 0:
            k = 0
            while (r := self.source.block(k)) is not None:
                for j in np.random.default_rng([self.seed, 0, k]).permutation(len(r)):
                    yield self.source.key(r.start + int(j))
                k += 1
        else:
            for j in np.random.default_rng([self.seed, self.epoch]).permutation(self.source.total()):
                yield self.source.key(int(j))


def order(sampler: BlockOrderSampler, dataset: Any = None) -> Sequence[tuple[int, int]]:
    """``(image_id, main person)`` of every sample ``sampler`` yields this epoch (tests, docs): the order a run
    trains in, comparable between a streamed and a cached source. ``dataset`` resolves positions."""
    out = []
    for key in sampler:
        if isinstance(key, SampleKey):
            rec, main = pickle.loads(key.record), key.main
        else:
            rec, main = dataset.record(key)
        out.append((int(rec["image_id"]), int(main)))
    return out
