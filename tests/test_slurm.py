"""``hydra/launcher=slurm`` against a real SLURM cluster: a single-node one (munged + slurmctld + slurmd) that the
module fixture brings up with posekit/sweep/slurm_single_node.sh and takes down afterwards.

If the packages cannot be installed (not root, no apt, no network) the tests skip and say why; any other failure
to start the cluster fails them. Each job is a CPU job of the tiny preset (1 CPU, 2 GB, no GPU).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posekit import io
from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = ROOT / "posekit" / "sweep" / "slurm_single_node.sh"
# a CPU job that fits the single node; submitit's signal_delay_s/timeouts as in conf/hydra/launcher/slurm.yaml
CPU_JOB = ("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", "hydra.launcher.partition=debug")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Bring the cluster up (own state folder and ports, so another cluster on this machine is left alone);
    yield the environment clients need (SLURM_CONF); stop every daemon the script started."""
    if sys.platform != "linux" or shutil.which("bash") is None:
        pytest.skip("the single-node SLURM cluster needs Linux and bash")
    root = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_ROOT": str(root), "SLURMCTLD_PORT": str(_free_port()),
           "SLURMD_PORT": str(_free_port()), "SLURM_CONF": str(root / "etc" / "slurm.conf")}
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=300)
    if up.returncode == 3:
        pytest.skip(f"cannot install SLURM here: {up.stderr.strip()}")
    started = (root / "run" / "started").read_text().split() if (root / "run" / "started").exists() else []
    pids = [int(Path(f).read_text()) for f in started if Path(f).is_file()]
    try:
        assert up.returncode == 0, f"slurm_single_node.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield {k: env[k] for k in ("SLURM_ROOT", "SLURM_CONF")}
    finally:
        down = subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=120)
        deadline = time.time() + 10
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not [p for p in pids if _alive(p)], f"daemons still running after down: {down.stdout}{down.stderr}"


def _squeue(env: dict, fmt: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", fmt], env={**os.environ, **env}, capture_output=True, text=True)
    return out.stdout.split()

def _preempt_and_restart(slurm_env, env) -> str:
    """Send the running job USR2 (what SLURM sends ``signal_delay_s`` before the time limit, to every task);
    submitit requeues it (``scontrol requeue``), and SLURM holds a requeued job for a while: start it now. Returns the job id."""
    job = _squeue(slurm_env, "%i")[0]
    subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    deadline = time.time() + 60
    while time.time() < deadline and "PD" not in _squeue(slurm_env, "%t"):
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)
    return job



def test_a_sweep_with_hydra_launcher_slurm_runs_each_point_as_a_slurm_job(slurm_env, tmp_path):
    proc = run_cli("+sweep=tiny", *CPU_JOB, "prune.pth=0.1", f"experiment.root={tmp_path}", env=slurm_env,
                   timeout=240)
    sweep = tmp_path / "sweeps" / "tiny"
    rows = list(csv.DictReader((sweep / "report" / "sweep.csv").open()))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}, rows
    assert {r["shape"] for r in rows} == {"128x128", "160x160"}
    assert (sweep / "report" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| point" in proc.stdout

    # they were SLURM jobs: submitit's sbatch script with our resources, and SLURM job ids in the step records
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in ("#SBATCH --partition=debug", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --signal=USR2@120", f"export PYTHONPATH={ROOT}:", "srun "):
        assert line in script, line
    assert "--gpus-per-node" not in script
    train = io.read_json(next(sweep.glob("shared/*/pipeline/steps/train.json")))
    exports = [io.read_json(p) for p in sweep.glob("*/pipeline/steps/export-*.json")]
    assert train["slurm_job_id"] and len(exports) == 2
    assert len({r["slurm_job_id"] for r in exports}) == 2  # the two points ran as two jobs, sharing one training


def test_a_preempted_job_is_requeued_by_submitit_and_resumes_without_redoing_finished_steps(slurm_env, tmp_path):
    sweep = tmp_path / "sweeps" / "tiny"
    log = (tmp_path / "launch.log").open("w")
    env = {**os.environ, **slurm_env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "+sweep=tiny", *CPU_JOB, "prune.pth=0.1", "resolution=128x128",
         f"experiment.root={tmp_path}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # wait until training is recorded as done (the job is then pruning / retraining), then pre-empt the job
        deadline = time.time() + 150
        train_rec = None
        while time.time() < deadline and proc.poll() is None:
            recs = list(sweep.glob("shared/*/pipeline/steps/train.json"))
            if recs and io.read_json(recs[0]).get("status") == "ok":
                train_rec = io.read_json(recs[0])
                break
            time.sleep(0.1)
        assert train_rec is not None, (tmp_path / "launch.log").read_text()[-3000:]
        job = _preempt_and_restart(slurm_env, env)
        assert proc.wait(timeout=180) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    job_log = "\n".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert "Caught signal SIGUSR2" in job_log and "Exiting gracefully after preemption/timeout" in job_log
    assert "train: done earlier" in job_log  # the requeued run skipped the finished training ...
    assert io.read_json(next(sweep.glob("shared/*/pipeline/steps/train.json")))["finished"] == train_rec["finished"]
    rows = list(csv.DictReader((sweep / "report" / "sweep.csv").open()))
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows  # ... and finished the point


# trainer=ddp as 2 SLURM tasks on the CPU: srun starts both processes (tasks_per_node = trainer.devices = 2) and
# Lightning's SLURMEnvironment reads their ranks; gloo, fp32, no SyncBN (the node has 2 CPUs: one per task)
DDP_JOB = ("stage=train", "preset=tiny", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "trainer.sync_batchnorm=false", "trainer.benchmark=false")


def test_ddp_as_two_slurm_tasks_is_preempted_requeued_and_resumes_from_last_ckpt(slurm_env, tmp_path):
    train = tmp_path / "default" / "train"
    sweep_dir = tmp_path / "multirun"
    log = (tmp_path / "launch.log").open("w")
    env = {**os.environ, **slurm_env, "PYTHONUNBUFFERED": "1"}
    # 8 epochs of 3 steps (0.5 to 2 s each on 2 CPUs): time to pre-empt it after the first last.ckpt
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), "-m", *DDP_JOB, *CPU_JOB, "hydra.launcher.mem_gb=4",
         "trainer.max_epochs=8", f"experiment.root={tmp_path}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (train / "checkpoints" / "last.ckpt").is_file():
            time.sleep(0.1)
        assert (train / "checkpoints" / "last.ckpt").is_file(), (tmp_path / "launch.log").read_text()[-3000:]
        assert not (train / "summary.json").exists(), "training finished before the pre-emption: make it longer"
        job = _preempt_and_restart(slurm_env, env)
        assert proc.wait(timeout=300) == 0, (tmp_path / "launch.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    script = next(sweep_dir.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script
    logs = {p.name: p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.out")}
    assert sorted(logs) == [f"{job}_0_log.out", f"{job}_1_log.out"], sorted(logs)
    task0, task1 = logs[f"{job}_0_log.out"], logs[f"{job}_1_log.out"]
    # submitit's handler: task 0 checkpoints the (checkpointable) Hydra job and requeues it. Its later log lines
    # ("Requeued job", "Exiting gracefully") may be cut off: the requeue itself sends the job SIGTERM.
    assert "Caught signal SIGUSR2" in task0 and "Calling checkpoint method" in task0, task0[-3000:]
    # the job ran twice, both times as 2 tasks with ranks 0 and 1 of 2
    assert task0.count("Starting with JobEnvironment(job_id=") == 2, task0[-3000:]
    assert task1.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2, task1[-3000:]
    assert "resuming from" in task0

    summary = io.read_json(train / "summary.json")
    ranks = summary["figures"]["ranks"]  # the requeued run's processes (posekit.train.callbacks.RankRecord)
    assert [(r["global_rank"], r["world_size"], r["cluster_environment"]) for r in ranks] == [
        (0, 2, "SLURMEnvironment"), (1, 2, "SLURMEnvironment")]
    assert summary["resumed_from"] == str(train / "checkpoints" / "last.ckpt")
    steps = 8 * int(summary["config"]["trainer"]["limit_train_batches"])
    assert summary["metrics"]["global_step"] == summary["metrics"]["planned_steps"] == steps
    assert summary["metrics"]["stopped_early"] is None
    # the requeued run trained only what was left: fewer batches per rank than the whole schedule
    assert 0 < ranks[0]["batches"] == ranks[1]["batches"] < steps
    assert (train / "model.pt").is_file() and sorted(p.name for p in (train / "checkpoints").iterdir()) == [
        "best.ckpt", "last.ckpt"]
