"""The block-ordered first epoch (data.synthetic.stream_block): a run that streams the synthetic set while it is
generated trains on the same samples in the same order as a run that finds it cached, starts before the set is
finished, and stops with the generator's error instead of waiting forever."""

from __future__ import annotations

import json
import pickle
import queue
import threading

import numpy as np
import pytest

from posekit.config import SyntheticConfig
from posekit.data.coco import PoseDataset
from posekit.data.index import SampleKey
from posekit.data.stream import BlockOrderSampler, CachedBlocks, StreamedIndex, block_of, one_process, order
from posekit.data.synthetic import dataset as synthetic_dataset
from posekit.data.synthetic import ensure_synthetic
from posekit.errors import UserError
from posekit.validation import ConfigError
from posekit.skeleton import Skeleton
from tests.conftest import compose

BLOCK = 5


def _cfg(tmp_path, **kw) -> SyntheticConfig:
    base = dict(num_train=17, num_val=3, image_size=[128, 160], cache_dir=str(tmp_path))
    return SyntheticConfig(**{**base, **kw})


def _dataset(paths, skeleton, ann="train_ann") -> PoseDataset:
    cfg = compose("preset=tiny")
    return PoseDataset(paths[ann] if ann else None, paths["train_images"], skeleton, cfg.model.input_shape, cfg.codec,
                       augment_cfg=cfg.data.augment, train=True)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, skeleton):
    """A set generated with a StreamedIndex listening (17 train images: blocks of 5, 5, 5, 2), and its paths."""
    index = StreamedIndex(skeleton, 5, 1024.0, BLOCK)
    paths = ensure_synthetic(_cfg(tmp_path_factory.mktemp("syn")), skeleton, workers=1, on_image=index)
    return index, paths


def test_streamed_and_cached_runs_see_the_same_samples_in_the_same_order(streamed, skeleton):
    index, paths = streamed
    dataset = _dataset(paths, skeleton)  # the same set, indexed from train.json as a later run would
    assert index.known_total() == len(dataset) > 0 and index.num_images == 17
    live, cached = BlockOrderSampler(index, seed=3), BlockOrderSampler(CachedBlocks(dataset, BLOCK), seed=3)
    every = sorted((int(i), int(m)) for i, m in zip(dataset.sample_image_ids, dataset._samples[:, 1]))
    epochs = []
    for epoch in (0, 1):
        live.set_epoch(epoch)
        cached.set_epoch(epoch)
        seen = order(live)
        assert seen == order(cached, dataset)  # positions for the cached set, whole samples for the streamed one
        assert sorted(seen) == every  # each epoch visits every sample once
        epochs.append(seen)
    blocks0 = [block_of(i, BLOCK) for i, _ in epochs[0]]
    assert blocks0 == sorted(blocks0) and len(set(blocks0)) == 4  # epoch 0: block by block
    assert epochs[0] != sorted(epochs[0], key=lambda s: (block_of(s[0], BLOCK), s))  # shuffled within the blocks
    blocks1 = [block_of(i, BLOCK) for i, _ in epochs[1]]
    assert blocks1 != sorted(blocks1)  # later epochs: one shuffle of the whole set
    other = BlockOrderSampler(index, seed=4)
    assert order(other) != epochs[0]  # the seed decides the order
    assert len(live) == len(dataset)


def test_a_streamed_sample_is_the_same_sample_as_its_indexed_twin(streamed, skeleton):
    """A worker of a streamed run has no index: it loads each sample from its SampleKey, to the same pixels,
    keypoints and mask as a position in the full index gives."""
    index, paths = streamed
    dataset, empty = _dataset(paths, skeleton), _dataset(paths, skeleton, ann=None)
    assert len(empty) == 0
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        key = dataset.key(i)
        assert isinstance(key, SampleKey) and pickle.loads(pickle.dumps(key)) == key
        want = dataset.sample(i, rng=np.random.default_rng(i))
        for got in (dataset.sample(key, rng=np.random.default_rng(i)), empty.sample(key, rng=np.random.default_rng(i))):
            assert got["image_id"] == want["image_id"]
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["keypoints"], want["keypoints"])
            np.testing.assert_array_equal(got["mask"], want["mask"])
    item = empty[dataset.key(0)]  # the loader's item, through __getitem__
    assert item["replaced"] == 0 and item["image"].shape[0] == 3


def _feed(index: StreamedIndex, coco: dict, ids: range) -> None:
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    for image in coco["images"]:
        if image["id"] - 1 in ids:
            index("train", image, anns.get(image["id"], []))


def test_the_sampler_hands_out_a_block_as_soon_as_it_is_written(streamed, skeleton):
    _, paths = streamed
    coco = json.loads(paths["train_ann"].read_text())
    index = StreamedIndex(skeleton, 5, 1024.0, BLOCK)
    _feed(index, coco, range(0, 7))  # block 0 complete, block 1 begun
    sampler = BlockOrderSampler(index, seed=0)
    with pytest.raises(TypeError):
        len(sampler)  # unknown until the split is complete (Lightning reads that as "unknown length")
    out: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [out.put(k) for k in sampler] + [out.put(None)], daemon=True).start()
    first = index.block(0)
    got = [out.get(timeout=10) for _ in first]
    assert {block_of(pickle.loads(k.record)["image_id"], BLOCK) for k in got} == {0}
    with pytest.raises(queue.Empty):
        out.get(timeout=0.5)  # block 1 is not finished: the sampler waits for it
    _feed(index, coco, range(7, 17))
    index.finish()
    rest = []
    while (k := out.get(timeout=10)) is not None:
        rest.append(k)
    assert len(got) + len(rest) == len(sampler) == index.known_total()
    assert index.block(3) is not None and index.block(4) is None  # 17 images: blocks of 5, 5, 5 and 2, no more


def test_a_failed_generation_ends_the_streamed_epoch_with_its_error(skeleton):
    index = StreamedIndex(skeleton, 5, 1024.0, BLOCK)
    sampler = iter(BlockOrderSampler(index, seed=0))
    threading.Timer(0.2, index.fail, args=(UserError("no space left on the cache's disk"),)).start()
    with pytest.raises(UserError, match="no space left"):
        next(sampler)


def test_one_process_is_read_from_the_trainer_config():
    assert one_process({"devices": 1}) and one_process({"devices": "1"}) and one_process({"devices": [2]})
    assert not one_process({"devices": 2}) and not one_process({"devices": "auto"})
    assert not one_process({"devices": 1, "num_nodes": 2})


def test_stream_block_needs_a_run_defined_in_steps():
    from posekit.config import validate

    with pytest.raises(ConfigError, match="trainer.max_steps"):
        validate(compose("stage=train", "preset=tiny", "data.synthetic.stream_block=8", "trainer.max_steps=-1"))
    validate(compose("stage=train", "preset=tiny", "data.synthetic.stream_block=8", "trainer.max_steps=4"))


def test_training_starts_while_the_synthetic_set_is_still_being_generated(tmp_path, monkeypatch):
    """The train stage, in this process: the generator renders block 0 and then waits until the loader has
    produced a training item. Without streaming the data module would wait for the whole set and the generator for
    the loader: the render's wait runs out and the run fails."""
    from posekit.stages import run_stage

    started = threading.Event()
    render, item = synthetic_dataset._render_to_file, PoseDataset._item

    def gated_render(job):
        _, _, split, i = job
        if split == "train" and i >= 8 and not started.wait(60):
            raise AssertionError("no training item before the rest of the set was rendered: not streamed")
        return render(job)

    def seen_item(self, i, attempt):
        started.set()
        return item(self, i, attempt)

    monkeypatch.setattr(synthetic_dataset, "_render_to_file", gated_render)
    monkeypatch.setattr(PoseDataset, "_item", seen_item)
    root = tmp_path / "exp"
    run_stage(compose("stage=train", "preset=tiny", f"experiment.root={root}", "experiment.name=s",
                      f"data.synthetic.cache_dir={tmp_path / 'cache'}", "data.synthetic.workers=1",
                      "data.synthetic.stream_block=8", "data.synthetic.num_train=24", "trainer.limit_train_batches=1.0",
                      "trainer.limit_val_batches=0", "trainer.max_steps=12", "trainer.max_epochs=3"))
    summary = json.loads((root / "s" / "train" / "summary.json").read_text())
    assert summary["metrics"]["global_step"] == 12
    data = summary["figures"]["data"]
    assert data["streamed"] is True and data["train_images"] == 24 and data["replaced_samples"] == 0
    ann = next((tmp_path / "cache").rglob("train.json"))
    full = _dataset({"train_ann": ann, "train_images": ann.parent.parent / "train"}, Skeleton.default())
    assert data["train_samples"] == len(full)  # the streamed index, once complete, is the file's


def test_the_data_module_trains_on_a_streamed_split_and_the_replay_waits_for_its_length(tmp_path, monkeypatch):
    """PoseDataModule with a StreamedIndex (what the train stage's early start hands it): a loader without a length
    that yields block 0 before the rest exists, and debug.memory_batches, which keeps the epoch's length, waits
    for the split to be complete."""
    from posekit.data import early
    from posekit.data.datamodule import PoseDataModule, ReplayedBatches

    cfg = compose("stage=train", "preset=tiny", f"data.synthetic.cache_dir={tmp_path}", "data.synthetic.num_train=12",
                  "data.synthetic.stream_block=4", "trainer.max_steps=5")
    skeleton = Skeleton.default()
    paths = ensure_synthetic(cfg.data.synthetic, skeleton, workers=1)
    coco = json.loads(paths["train_ann"].read_text())
    index = StreamedIndex(skeleton, cfg.data.main_person_min_keypoints, cfg.data.main_person_min_area, 4,
                          root=paths["train_ann"].parent.parent)
    _feed(index, coco, range(0, 4))  # block 0 only
    monkeypatch.setattr(early, "streamed_index", lambda c: index)
    dm = PoseDataModule(cfg)
    assert dm.streamed is index
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 0 and dm.val_set is None  # nothing indexed here, and no wait for the val split
    loader = dm.train_dataloader()
    with pytest.raises(TypeError):
        len(loader)
    batch = next(iter(loader))  # block 0 is enough for the first batch
    assert batch["image"].shape[0] == int(cfg.data.batch_size)
    assert {block_of(int(i), 4) for i in batch["image_id"]} == {0}

    cfg.debug.memory_batches = 1
    threading.Timer(0.3, lambda: (_feed(index, coco, range(4, 12)), index.finish())).start()
    replay = dm.train_dataloader()  # waits for the whole split, then knows its length
    assert isinstance(replay, ReplayedBatches) and len(replay) == index.known_total() // int(cfg.data.batch_size)
    assert dm.train_counts() == {"train_images": 12, "train_samples": index.known_total(), "dropped_annotations": 0}


def test_a_split_that_ends_on_a_block_boundary_has_no_empty_last_block(skeleton):
    index = StreamedIndex(skeleton, 5, 1024.0, 4)
    for k in range(1, 9):  # images without people: indexed, no samples
        index("train", {"id": k, "file_name": f"{k:012d}.jpg", "height": 32, "width": 32}, [])
    assert index.block(0) == range(0, 0) and index.known_total() is None  # block 0 is out, the split is not done
    index("val", {"id": 1, "file_name": "x.jpg", "height": 32, "width": 32}, [])  # the val split ends the train one
    assert index.num_images == 8 and index.known_total() == 0
    assert index.block(1) == range(0, 0) and index.block(2) is None
