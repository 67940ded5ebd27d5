"""posekit entry point: compose the config (Hydra) -> validate -> run one stage.

    python launch.py                                   # train on the embedded synthetic data
    python launch.py stage=export precision=int8       # any stage, any composable choice
    python launch.py -m +sweep=accuracy_latency        # a multirun sweep from sweeps/
    python launch.py --help                            # config groups;  --cfg job  prints the composed config
"""

import os
from pathlib import Path

# The sweeps/ search path is absolute (conf/config.yaml), so +sweep=... works from any directory.
ROOT = str(Path(__file__).resolve().parent)
os.environ.setdefault("POSEKIT_ROOT", ROOT)
# Launcher workers (submitit local/SLURM) start a fresh interpreter elsewhere: let them import posekit from here.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from posekit.config import register  # noqa: E402

register()


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from posekit.stages import run_stage

    return run_stage(cfg)


if __name__ == "__main__":
    main()
