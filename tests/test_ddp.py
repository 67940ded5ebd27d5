"""DDP on the CPU (gloo): ``trainer=ddp`` with 2 processes on the tiny preset (issue 22).

The unit test checks the data split Lightning makes from ``PoseDataModule``'s loader (its own sampler-injection
code, 2 replicas); the end-to-end test trains with 2 processes, then resumes with one more epoch, and reads what
each rank did from the summary's ``figures.ranks`` (``posekit.train.callbacks.RankRecord``).
"""

from __future__ import annotations

import os
import re

import pytest
import torch

from posekit import io
from tests.conftest import compose, run_cli

# trainer=ddp is a GPU recipe; on the CPU: gloo (Lightning picks it for accelerator=cpu), fp32, no SyncBN/cudnn
DDP_CPU = ("stage=train", "preset=tiny", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.benchmark=false",
           "trainer.max_epochs=1")


def test_lightning_splits_the_training_set_between_two_ranks_without_overlap(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import RunningStage
    from torch.utils.data import DistributedSampler

    from posekit.data.datamodule import PoseDataModule

    cfg = compose(*DDP_CPU, f"experiment.root={tmp_path}")
    dm = PoseDataModule(cfg)
    dm.setup("fit")
    n = len(dm.train_set)
    seen = []
    for rank in (0, 1):
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
        trainer.strategy.cluster_environment.set_global_rank(rank)
        trainer.strategy._global_rank = rank  # what Strategy.setup_environment sets in each spawned process
        loader = trainer._data_connector._prepare_dataloader(dm.train_dataloader(), shuffle=True,
                                                             mode=RunningStage.TRAINING)
        assert isinstance(loader.sampler, DistributedSampler)
        assert (loader.sampler.num_replicas, loader.sampler.rank, loader.sampler.shuffle) == (2, rank, True)
        assert loader.batch_size == int(cfg.data.batch_size) and loader.drop_last  # the loader's own settings kept
        seen.append([i for batch in loader.batch_sampler for i in batch])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == (n // 2) // int(cfg.data.batch_size) * int(cfg.data.batch_size)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_on_both_ranks_writes_once_and_resumes(tmp_path):
    train = tmp_path / "default" / "train"
    proc = run_cli(*DDP_CPU, f"experiment.root={tmp_path}", timeout=600)
    out = proc.stdout + proc.stderr
    summary = io.read_json(train / "summary.json")
    figures = summary["figures"]

    # both processes joined one gloo group and stepped
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out, out[-3000:]
    ranks = figures["ranks"]
    assert [(r["global_rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert {r["cluster_environment"] for r in ranks} == {"LightningEnvironment"}
    batches = int(summary["config"]["trainer"]["limit_train_batches"])
    assert [r["batches"] for r in ranks] == [batches, batches]
    assert figures["global_step"] == batches  # each optimizer step is one batch on every rank, not two steps
    # the DistributedSampler gave them disjoint samples (the real indices each rank trained on)
    idx = [r["first_epoch_indices"] for r in ranks]
    assert len(idx[0]) == len(idx[1]) == batches * int(summary["config"]["data"]["batch_size"])
    assert not set(idx[0]) & set(idx[1]) and len(set(idx[0])) == len(idx[0])

    # rank 0 alone wrote the summary, the checkpoints, model.pt and the logs (one version each, no temp files)
    assert len(re.findall(r"wrote \S+model\.pt", out)) == 1 and out.count("train: ") == 1
    assert sorted(p.name for p in (train / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (train / "csv").iterdir()] == ["version_0"]
    assert [p.name for p in (train / "tensorboard").iterdir()] == ["version_0"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert torch.load(train / "model.pt", map_location="cpu", weights_only=False)["arch"]
    assert summary["metrics"]["global_step"] == batches and summary["resumed_from"] is None
    last = torch.load(train / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == batches

    # a second run with one more epoch resumes from last.ckpt: global_step continues
    mtime = os.stat(train / "model.pt").st_mtime_ns
    proc = run_cli(*DDP_CPU, "trainer.max_epochs=2", f"experiment.root={tmp_path}", timeout=600)
    summary = io.read_json(train / "summary.json")
    assert summary["resumed_from"] == str(train / "checkpoints" / "last.ckpt")
    assert summary["metrics"]["global_step"] == 2 * batches
    assert [r["batches"] for r in summary["figures"]["ranks"]] == [batches, batches]  # this run's epoch only
    assert os.stat(train / "model.pt").st_mtime_ns != mtime
    assert (proc.stdout + proc.stderr).count("resuming from") >= 1
