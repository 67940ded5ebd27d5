"""Training: the LightningModule, TAO's loss, optimizer recipes, callbacks and the shared ``fit``.

    from posekit.train import PoseModule, fit, pose_loss, build_optimizer
"""

from posekit.train.fit import FitResult, fit
from posekit.train.loss import add_l1_subgradient, bn_scales, conv_kernels, l1_penalty, masked_l2, pose_loss
from posekit.train.module import PoseModule, build_network
from posekit.train.optim import build_optimizer, cosine_factor, param_groups, softstart_annealing_factor

__all__ = [
    "FitResult",
    "PoseModule",
    "add_l1_subgradient",
    "build_network",
    "build_optimizer",
    "bn_scales",
    "conv_kernels",
    "cosine_factor",
    "fit",
    "l1_penalty",
    "masked_l2",
    "param_groups",
    "pose_loss",
    "softstart_annealing_factor",
]
