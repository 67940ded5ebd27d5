"""The keypoint set as data: joint names, limbs (PAF pairs), flip pairs and OKS sigmas.

Two orders exist:
  * the *dataset* order (``K_ds`` joints, e.g. COCO-17), in which annotations and COCO results are written;
  * the *network* order (``J`` joints, e.g. TAO's 18 with a neck), one heatmap channel each, plus a final
    background channel, and ``L`` limbs with two PAF channels (x, y) each.

A :class:`Skeleton` converts between them, so nothing else in posekit names a joint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    name: str
    dataset_joints: tuple[str, ...]
    sigmas: tuple[float, ...]
    joints: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]  # indices into ``joints``
    flip_pairs: tuple[tuple[int, int], ...]  # indices into ``joints``
    derived: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    no_new_person_limbs: tuple[int, ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "Skeleton":
        """Build from a ``conf/keypoints/*.yaml`` node (names, not indices, so files stay readable)."""
        joints = tuple(cfg["joints"])
        ds = tuple(cfg["dataset_joints"])
        derived = {k: tuple(v) for k, v in dict(cfg.get("derived") or {}).items()}
        idx = {n: i for i, n in enumerate(joints)}

        def j(name: str, where: str) -> int:
            if name not in idx:
                raise ValueError(f"keypoints.{where}: unknown joint {name!r}; joints are {list(joints)}")
            return idx[name]

        limbs = tuple((j(a, "limbs"), j(b, "limbs")) for a, b in cfg["limbs"])
        flips = tuple((j(a, "flip_pairs"), j(b, "flip_pairs")) for a, b in cfg.get("flip_pairs") or [])
        sigmas = tuple(float(s) for s in cfg["sigmas"])
        if len(sigmas) != len(ds):
            raise ValueError(f"keypoints.sigmas has {len(sigmas)} values for {len(ds)} dataset_joints")
        for name in joints:
            if name not in ds and name not in derived:
                raise ValueError(f"keypoints.joints: {name!r} is neither a dataset joint nor in keypoints.derived")
        for name, (a, b) in derived.items():
            for s in (a, b):
                if s not in ds:
                    raise ValueError(f"keypoints.derived.{name}: {s!r} is not in keypoints.dataset_joints")
        return cls(
            name=str(cfg.get("name", "custom")),
            dataset_joints=ds,
            sigmas=sigmas,
            joints=joints,
            limbs=limbs,
            flip_pairs=flips,
            derived=derived,
            no_new_person_limbs=tuple(int(i) for i in cfg.get("no_new_person_limbs") or ()),
        )

    @classmethod
    def default(cls) -> "Skeleton":
        """The packaged ``coco18`` skeleton (the default ``keypoints=`` choice)."""
        from pathlib import Path

        from omegaconf import OmegaConf

        path = Path(__file__).resolve().parent.parent / "conf" / "keypoints" / "coco18.yaml"
        return cls.from_cfg(OmegaConf.to_container(OmegaConf.load(path)))

    # ------------------------------------------------------------------ sizes
    @property
    def num_joints(self) -> int:
        """J: network joints (heatmap channels without background)."""
        return len(self.joints)

    @property
    def num_heatmaps(self) -> int:
        """J + 1: heatmap channels including the trailing background channel."""
        return len(self.joints) + 1

    @property
    def num_limbs(self) -> int:
        return len(self.limbs)

    @property
    def num_pafs(self) -> int:
        """2L: PAF channels, (x, y) per limb."""
        return 2 * len(self.limbs)

    # ------------------------------------------------------------------ permutations
    @property
    def flip_perm(self) -> np.ndarray:
        """(J,) joint permutation applied after a horizontal flip (left <-> right)."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def limb_flip(self) -> tuple[np.ndarray, np.ndarray]:
        """((L,) limb permutation, (L,) bool reversed) for a horizontal flip.

        After flipping, limb k's endpoints become ``flip_perm[a], flip_perm[b]``; that pair is limb ``perm[k]``,
        possibly with the direction reversed (then its PAF vector changes sign)."""
        fp = self.flip_perm
        lookup = {pair: i for i, pair in enumerate(self.limbs)}
        perm = np.zeros(self.num_limbs, dtype=np.int64)
        rev = np.zeros(self.num_limbs, dtype=bool)
        for k, (a, b) in enumerate(self.limbs):
            fa, fb = int(fp[a]), int(fp[b])
            if (fa, fb) in lookup:
                perm[k] = lookup[(fa, fb)]
            elif (fb, fa) in lookup:
                perm[k], rev[k] = lookup[(fb, fa)], True
            else:
                raise ValueError(f"skeleton {self.name}: limb {k} has no mirror limb under flip_pairs")
        return perm, rev

    # ------------------------------------------------------------------ conversions
    def to_network(self, kps: np.ndarray) -> np.ndarray:
        """Dataset-order keypoints (P, K_ds, 3) [x, y, v] -> network order (P, J, 3).

        Derived joints (the neck) are the midpoint of their two sources and labeled only when both are
        (v = min of the two). TAO labels the neck even when a shoulder is missing (quirk 1): fixed here.
        """
        kps = np.asarray(kps, dtype=np.float32).reshape(-1, len(self.dataset_joints), 3)
        out = np.zeros((kps.shape[0], self.num_joints, 3), dtype=np.float32)
        ds = {n: i for i, n in enumerate(self.dataset_joints)}
        for j, name in enumerate(self.joints):
            if name in ds:
                out[:, j] = kps[:, ds[name]]
            else:
                a, b = kps[:, ds[self.derived[name][0]]], kps[:, ds[self.derived[name][1]]]
                both = (a[:, 2] > 0) & (b[:, 2] > 0)
                out[:, j, :2] = np.where(both[:, None], (a[:, :2] + b[:, :2]) / 2, 0)
                out[:, j, 2] = np.where(both, np.minimum(a[:, 2], b[:, 2]), 0)
        return out

    def to_dataset(self, kps: np.ndarray) -> np.ndarray:
        """Network-order keypoints (P, J, 3) -> dataset order (P, K_ds, 3); derived joints are dropped."""
        kps = np.asarray(kps, dtype=np.float32).reshape(-1, self.num_joints, 3)
        out = np.zeros((kps.shape[0], len(self.dataset_joints), 3), dtype=np.float32)
        idx = {n: i for i, n in enumerate(self.joints)}
        for d, name in enumerate(self.dataset_joints):
            if name in idx:
                out[:, d] = kps[:, idx[name]]
        return out

    def coco_category(self) -> dict:
        """The COCO ``categories`` entry (1-based skeleton over dataset joints, limbs with a derived end dropped)."""
        ds = {n: i for i, n in enumerate(self.dataset_joints)}
        sk = []
        for a, b in self.limbs:
            na, nb = self.joints[a], self.joints[b]
            if na in ds and nb in ds:
                sk.append([ds[na] + 1, ds[nb] + 1])
        return {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(self.dataset_joints),
            "skeleton": sk,
        }

    def side(self, joint: int) -> str:
        """'left', 'right' or 'center' (for overlay colours)."""
        n = self.joints[joint]
        return "left" if n.startswith("left") else "right" if n.startswith("right") else "center"
