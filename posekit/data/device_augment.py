"""The device data path (``data.augment_on_device``): loader workers ship each training sample's source image
(decoded, or its JPEG bytes with ``data.decode_on_device``) and its random draws; the training device decodes,
warps, colour-jitters and moves the keypoints for the whole batch, and then renders the targets
(``data.targets_on_device``). docs/data.md, "The device data path".

What runs where::

    worker  (PoseDataset.device_sample)  read the file; decode it with OpenCV unless its JPEG bytes are shipped;
                                         draw the augmentation (the CPU path's draws, same stream); the matrix and
                                         the area pre-shrink plan (augment.warp_plan); the loss mask (OpenCV:
                                         COCO polygons are rasterized on the CPU)
    collate (collate_device_items)       pad the decoded images into one uint8 canvas; the host-side plan (sizes,
                                         which samples shrink, the colour order) so the device never waits on it
    device  (DeviceAugmenter)            decode JPEGs (torchvision.io.decode_jpeg, batched); area pre-shrink;
                                         warp (device_warp, OpenCV's fixed point); colour jitter (device_color);
                                         keypoints; then the datamodule renders heatmaps and PAFs

The maths equals the CPU path on the same draws (tests/test_data_device_augment.py: images within the tolerance
stated there, keypoints to 1e-3 px, targets to 1e-4). Shapes: B samples, (H, W) network input, P people, J joints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

from posekit.data.device_color import IDENTITY_ROW, color_jitter, order_plan
from posekit.data.device_warp import area_shrink, transform_keypoints, warp_affine_u8
from posekit.errors import UserError
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")

# (list of 1-D uint8 numpy arrays of JPEG bytes, device) -> list of uint8 (3, h, w) RGB tensors on the device;
# None where an image could not be decoded
Decoder = Callable[[Sequence[np.ndarray], torch.device], list]

# keys of a device item that the default collate stacks as they are
_STACKED = ("source_hw", "matrix", "warp_matrix", "shrink_hw", "flipped", "color", "border", "mask", "image_id",
            "replaced")


def is_jpeg(data: np.ndarray) -> bool:
    """True for JPEG bytes (SOI marker): what ``decode_jpeg`` can read; other formats are decoded on the worker."""
    return data.size > 3 and data[0] == 0xFF and data[1] == 0xD8


# ============================================================================================== decoders
def cv2_decoder(datas: Sequence[np.ndarray], device: torch.device) -> list:
    """Decode on the CPU with OpenCV (the workers' decoder), then copy to ``device``: the fallback for JPEGs the
    batched decoder rejects, and the decoder CPU tests use."""
    out = []
    for data in datas:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        out.append(None if img is None else
                   torch.from_numpy(np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)))
                   .to(device))
    return out


def torchvision_available() -> bool:
    """Whether ``torchvision.io.decode_jpeg`` can be imported (the optional ``[gpu]`` extra)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # not installed, or built for another torch
        return False
    return True


def torchvision_decoder(datas: Sequence[np.ndarray], device: torch.device) -> list:
    """``torchvision.io.decode_jpeg`` of the whole list in one call (nvJPEG's batched decoder on CUDA), RGB.

    A batch the batched call rejects (a corrupt file) is decoded one by one with OpenCV instead, so one bad
    image costs that batch some CPU time, not the run.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return list(decode_jpeg([torch.from_numpy(d) for d in datas], mode=ImageReadMode.RGB, device=device))
    except RuntimeError as e:
        log.warning("batched JPEG decoding failed (%s); decoding this batch with OpenCV", str(e).splitlines()[0])
        return cv2_decoder(datas, device)


# ============================================================================================== collate
def _pad_people(kps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(P_i, J, 3) -> (B, max P, J, 3), padded with v = 0 rows (they render nothing and stay 0)."""
    most = max(k.shape[0] for k in kps)
    padded = torch.zeros(len(kps), most, *kps[0].shape[1:], dtype=torch.float32)
    for i, k in enumerate(kps):
        padded[i, : k.shape[0]] = k
    return padded


def collate_device_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch ``PoseDataset`` device items (``device_augment=True``) for :class:`DeviceAugmenter`.

    Returns the stacked per-sample tensors (``source_hw`` (B, 2), ``matrix`` and ``warp_matrix`` (B, 2, 3)
    float64, ``shrink_hw`` (B, 2), ``flipped`` (B,), ``color`` (B, 8) float64, ``border`` (B,), ``mask``
    (B, 1, h, w), ``image_id``, ``replaced``), ``keypoints`` (B, P, J, 3) padded, ``canvas`` uint8 (B, 3, Hc, Wc)
    with the images the workers decoded and ``decoded`` (B,) which rows (both absent when none did), ``jpeg``
    (the bytes of the others, None for
    decoded ones), the colour plan ``color_perm`` (4, B), and ``plan``: host numbers (Python ints and lists,
    which neither pinning nor the transfer touch) so the device never has to read a size back.
    """
    stacked = default_collate([{k: it[k] for k in _STACKED} for it in items])
    hw = [(int(h), int(w)) for h, w in stacked["source_hw"].tolist()]
    decoded = [it.get("source") is not None for it in items]
    batch: dict[str, Any] = dict(stacked)
    batch["keypoints"] = _pad_people([it["keypoints"] for it in items])
    if any(decoded):
        hmax = max(h for (h, _), d in zip(hw, decoded) if d)
        wmax = max(w for (_, w), d in zip(hw, decoded) if d)
        canvas = torch.zeros(len(items), 3, hmax, wmax, dtype=torch.uint8)
        for i, it in enumerate(items):
            if decoded[i]:
                canvas[i, :, : hw[i][0], : hw[i][1]] = it["source"]
        batch["canvas"] = canvas
        batch["decoded"] = torch.tensor(decoded)  # (B,) bool: which rows of the canvas the workers filled
    batch["jpeg"] = [None if d else it["jpeg"] for it, d in zip(items, decoded)]
    shrink = [i for i, (h, _) in enumerate(stacked["shrink_hw"].tolist()) if h > 0]
    batch["shrink_index"] = torch.tensor(shrink, dtype=torch.long)
    perm, counts = order_plan(stacked["color"])
    batch["color_perm"] = perm
    identity = torch.tensor(IDENTITY_ROW, dtype=stacked["color"].dtype)
    batch["plan"] = {
        "source_hw": hw,
        "decoded": decoded,
        "files": [str(it.get("file_name", "")) for it in items],
        "shrink_hw": [[int(v) for v in stacked["shrink_hw"][i]] for i in shrink],
        # the most source pixels one shrunk pixel sums along an axis (the shrink's loop length)
        "shrink_taps": max([-(-hw[i][a] // int(stacked["shrink_hw"][i][a])) + 1 for i in shrink for a in (0, 1)],
                           default=0),
        "color": bool((stacked["color"] != identity).any()),
        "color_counts": counts,
    }
    return batch


# ============================================================================================== device
class DeviceAugmenter:
    """A collated device batch -> the network-input batch, on the batch's device.

    ``batch["image"]`` becomes uint8 (B, 3, H, W) (the CPU path's ``image``), ``batch["keypoints"]`` the (B, P, J, 3)
    keypoints in input coordinates (flipped samples' labels swapped with the keypoint set's ``flip_pairs``); the
    sources, draws and plan are dropped. ``decoder`` decodes shipped JPEG bytes (:func:`torchvision_decoder`, or
    :func:`cv2_decoder`).
    """

    def __init__(self, skeleton: Skeleton, input_hw: Sequence[int], decoder: Decoder | None = None):
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.flip_perm = torch.as_tensor(skeleton.flip_perm, dtype=torch.long)
        self.decoder = decoder or cv2_decoder
        self._flip_perms: dict[torch.device, torch.Tensor] = {}

    def _flip_perm(self, device: torch.device) -> torch.Tensor:
        """The (J,) flip permutation on ``device``, copied there once (a copy per step would wait for the device)."""
        if device not in self._flip_perms:
            self._flip_perms[device] = self.flip_perm.to(device)
        return self._flip_perms[device]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        plan = batch.pop("plan")
        device = batch["matrix"].device
        canvas = self.canvas(batch, plan, device)
        if plan["shrink_hw"]:
            canvas = self.shrink(canvas, batch, plan)
        image = warp_affine_u8(canvas, batch.pop("warp_matrix"), self.input_hw)
        perm = batch.pop("color_perm")
        if plan["color"]:
            image = color_jitter(image, batch["color"], perm, plan["color_counts"])
        batch["image"] = image
        batch["keypoints"] = transform_keypoints(batch["keypoints"], batch.pop("matrix"), batch.pop("flipped").bool(),
                                                 self._flip_perm(device))
        for key in ("source_hw", "shrink_hw", "shrink_index", "color", "border", "jpeg", "canvas", "decoded"):
            batch.pop(key, None)
        return batch

    def canvas(self, batch: dict[str, Any], plan: dict[str, Any], device: torch.device) -> torch.Tensor:
        """uint8 (B, 3, Hc + 2, Wc + 2): each source at ``[1 : 1 + h, 1 : 1 + w]``, its border value all round
        (``device_warp.warp_affine_u8``'s input). JPEGs are decoded here; one that cannot be decoded leaves its
        sample blank and out of the loss (mask 0, no keypoints) and is counted in ``replaced``."""
        hw = plan["source_hw"]
        B = len(hw)
        hc, wc = max(h for h, _ in hw), max(w for _, w in hw)
        border = batch["border"].to(device=device, dtype=torch.uint8)
        canvas = border.view(B, 1, 1, 1).expand(B, 3, hc + 2, wc + 2).clone()
        worker = batch.get("canvas")
        if worker is not None:
            hd, wd = worker.shape[-2:]
            sizes = batch["source_hw"].to(device)
            ys = torch.arange(hd, device=device)[None, :, None]
            xs = torch.arange(wd, device=device)[None, None, :]
            decoded = batch["decoded"].to(device)[:, None, None]  # (a tensor of the batch: no copy from the host here)
            inside = (ys < sizes[:, 0, None, None]) & (xs < sizes[:, 1, None, None]) & decoded  # (B, hd, wd)
            region = canvas[:, :, 1 : 1 + hd, 1 : 1 + wd]
            canvas[:, :, 1 : 1 + hd, 1 : 1 + wd] = torch.where(inside[:, None], worker.to(device), region)
        pending = [i for i, d in enumerate(plan["decoded"]) if not d]
        if pending:
            images = self.decoder([batch["jpeg"][i] for i in pending], device)
            for i, img in zip(pending, images):
                if img is None:
                    self._blank(batch, i, plan["files"][i])
                    continue
                if tuple(img.shape[-2:]) != tuple(hw[i]):
                    raise UserError(
                        f"{plan['files'][i]} is {tuple(img.shape[-2:])} (h, w) but its annotation says {tuple(hw[i])}: "
                        "data.decode_on_device takes image sizes from the annotations. Fix the annotation's "
                        "height/width, or set data.decode_on_device=false (the workers decode and measure)."
                    )
                canvas[i, :, 1 : 1 + hw[i][0], 1 : 1 + hw[i][1]] = img
        return canvas

    @staticmethod
    def _blank(batch: dict[str, Any], i: int, file_name: str) -> None:
        log.warning("cannot decode %s on the device: its sample is left out of this batch's loss", file_name)
        batch["mask"][i] = 0
        batch["keypoints"][i] = 0
        batch["replaced"][i] = 1

    def shrink(self, canvas: torch.Tensor, batch: dict[str, Any], plan: dict[str, Any]) -> torch.Tensor:
        """The samples ``augment.warp_plan`` area-shrinks, shrunk in place on the canvas (border beyond)."""
        device = canvas.device
        index = batch["shrink_index"].to(device)
        src_hw = batch["source_hw"].to(device).index_select(0, index)
        dst_hw = batch["shrink_hw"].to(device).index_select(0, index)
        dst_max = (max(h for h, _ in plan["shrink_hw"]), max(w for _, w in plan["shrink_hw"]))
        shrunk = area_shrink(canvas.index_select(0, index)[:, :, 1:-1, 1:-1], src_hw, dst_hw, dst_max,
                             plan["shrink_taps"])
        B, C, Hc, Wc = canvas.shape
        border = batch["border"].to(device).index_select(0, index).float()
        ys = torch.arange(dst_max[0], device=device)[None, :, None]
        xs = torch.arange(dst_max[1], device=device)[None, None, :]
        inside = ((ys < dst_hw[:, 0, None, None]) & (xs < dst_hw[:, 1, None, None]))[:, None]
        rows = border.view(-1, 1, 1, 1).expand(len(plan["shrink_hw"]), C, Hc, Wc).clone()
        rows[:, :, 1 : 1 + dst_max[0], 1 : 1 + dst_max[1]] = torch.where(inside, shrunk, rows[:, :, 1 : 1 + dst_max[0],
                                                                                              1 : 1 + dst_max[1]])
        return canvas.index_copy(0, index, rows.to(torch.uint8))
