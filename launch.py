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
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from posekit.config import register  # noqa: E402
from posekit.io import writable_or_temp  # noqa: E402

register()
# hydra.run.dir (conf/config.yaml): the experiment's logs/, or a temporary folder when that cannot be written
OmegaConf.register_new_resolver("posekit.writable_or_temp", writable_or_temp, replace=True)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from posekit.stages import run_stage

    return run_stage(cfg)


def check_command_line() -> None:
    """Refuse an unknown key or config-group option before Hydra composes (exit 2, one line, a did-you-mean):
    Hydra would store a ``+key`` typo silently, and its own error for ``key=`` tells users to add ``+``."""
    import sys

    from hydra._internal.utils import get_args_parser

    from posekit.errors import EXIT_CODE, UserError, report
    from posekit.schema import check_overrides

    args, _ = get_args_parser().parse_known_args()
    try:
        check_overrides(args.overrides)
    except UserError as e:
        report(e)
        sys.exit(EXIT_CODE)


if __name__ == "__main__":
    check_command_line()
    main()
