"""Predictor: image -> preprocess -> backend -> (flip / multi-scale fusion) -> decode -> original coordinates.

The same object serves every backend, so eval, infer and bench never branch on the artifact kind::

    predictor = Predictor(load_backend(path, cfg.runtime), skeleton, cfg.codec, cfg.runtime, cfg.model.input_shape)
    people = predictor.predict(image_rgb)            # People in original-image pixels
    people_list = predictor.predict_many(images)     # strict mode batches images (runtime.batch_size)
    predictor.last_timings                           # {"preprocess_ms", "network_ms", "decode_ms", ...}

Test-time augmentation, on the stride-8 maps before decoding:
  * flip (``runtime.flip``): the mirrored input is run too; its heatmaps are mirrored back and their joint
    channels swapped by ``skeleton.flip_perm``; its PAFs are mirrored back, limb channels swapped by
    ``skeleton.limb_flip`` with the x component negated (mirror) and both negated for limbs whose direction
    the swap reverses. Mirroring is exact on the grid: cell i and cell w-1-i are mirror images.
  * multi-scale (``runtime.scales``): one pass per scale at ``scale * input size``; every pass's maps are
    resampled (bilinear) onto the largest pass's grid through the affines that relate the passes to the
    original image, then averaged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from posekit.codec.decode import Decoder, People
from posekit.config import CodecConfig, RuntimeConfig
from posekit.errors import UserError
from posekit.runtime.backends import Backend
from posekit.runtime.preprocess import Prepared, invert_affine, preprocess, scaled_input_hw
from posekit.skeleton import Skeleton

log = logging.getLogger(__name__)


class Predictor:
    """Args:
        backend: any :class:`~posekit.runtime.backends.Backend`.
        skeleton: the keypoint set the model was trained with.
        codec_cfg: the ``codec`` section (:class:`~posekit.config.CodecConfig`: stride + ``decode``); None = defaults.
        runtime_cfg: the ``runtime`` section (:class:`~posekit.config.RuntimeConfig`: mode, scales, flip,
            interpolation, batch_size); None = defaults. Both are checked by ``posekit.config.validate``.
        input_hw: the network input (H, W) (``cfg.model.input_shape``); a backend with a fixed input overrides
            it and forces strict mode and a single scale (as TAO does for TensorRT engines).
    """

    def __init__(self, backend: Backend, skeleton: Skeleton, codec_cfg: CodecConfig | None,
                 runtime_cfg: RuntimeConfig | None, input_hw: Sequence[int]):
        codec_cfg = CodecConfig() if codec_cfg is None else codec_cfg
        runtime_cfg = RuntimeConfig() if runtime_cfg is None else runtime_cfg
        self.backend = backend
        self.skeleton = skeleton
        self.stride = int(codec_cfg.stride)
        self.decoder = Decoder(skeleton, codec_cfg.decode, self.stride)
        self.mode = str(runtime_cfg.mode)
        self.interpolation = str(runtime_cfg.interpolation)
        self.scales = sorted(float(s) for s in runtime_cfg.scales)
        self.flip = bool(runtime_cfg.flip)
        self.batch_size = max(1, int(runtime_cfg.batch_size))
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        fixed = getattr(backend, "input_hw", None)
        if fixed is not None:
            fixed = (int(fixed[0]), int(fixed[1]))
            if self.mode != "strict" or self.scales != [1.0] or fixed != self.input_hw:
                log.warning(
                    "%s has a fixed %dx%d input: using strict mode, a single scale and that input size "
                    "(runtime.mode=%s, runtime.scales=%s, input %s ignored)",
                    backend.name, fixed[0], fixed[1], self.mode, self.scales, self.input_hw,
                )
            self.mode, self.scales, self.input_hw = "strict", [1.0], fixed
        if any(v % self.stride for v in self.input_hw):
            raise UserError(f"network input {self.input_hw}: both sides must be multiples of {self.stride}")
        static = getattr(backend, "batch", None)
        self.chunk = int(static) if static else self.batch_size
        self._run = getattr(backend, "run", backend)
        heat_perm = np.append(skeleton.flip_perm, skeleton.num_joints)  # background stays last
        limb_perm, reversed_ = skeleton.limb_flip
        paf_perm = np.stack([2 * limb_perm, 2 * limb_perm + 1], axis=1).reshape(-1)
        sign = np.where(reversed_, -1.0, 1.0)
        paf_sign = np.stack([-sign, sign], axis=1).reshape(-1)  # x also flips with the mirror
        self._flip_tables = (torch.as_tensor(heat_perm), torch.as_tensor(paf_perm),
                             torch.as_tensor(paf_sign, dtype=torch.float32))
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public API
    def predict(self, image_rgb: np.ndarray) -> People:
        """(H, W, 3) uint8 RGB -> People in original-image pixel coordinates."""
        return self.predict_many([image_rgb])[0]

    def predict_many(self, images: Sequence[np.ndarray]) -> list[People]:
        """Several images; strict-mode inputs go through the backend in batches. ``last_timings`` then holds
        the totals for the call (``*_ms``) and ``images``."""
        t_start = time.perf_counter()
        timings = {"preprocess_ms": 0.0, "network_ms": 0.0, "decode_ms": 0.0}
        passes: list[list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]] = [[] for _ in images]
        for scale in self.scales:
            hw = scaled_input_hw(self.input_hw, scale, self.stride)
            t = time.perf_counter()
            prepared = [preprocess(img, hw, self.mode, self.interpolation, self.stride) for img in images]
            timings["preprocess_ms"] += (time.perf_counter() - t) * 1e3
            for idx in self._chunks(prepared):
                t = time.perf_counter()
                heat, paf = self.network(np.concatenate([prepared[i].batch for i in idx]))
                timings["network_ms"] += (time.perf_counter() - t) * 1e3
                for row, i in enumerate(idx):
                    passes[i].append((heat[row], paf[row], prepared[i].affine))
        t = time.perf_counter()
        people = []
        for per_scale in passes:
            heat, paf, affine = self._fuse(per_scale)
            people.append(self.decoder(heat, paf).transformed(invert_affine(affine)))
        timings["decode_ms"] += (time.perf_counter() - t) * 1e3
        timings["total_ms"] = (time.perf_counter() - t_start) * 1e3
        timings["images"] = len(images)
        self.last_timings = timings
        return people

    def network(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalized -> heatmaps (N, J+1, h, w), PAFs (N, 2L, h, w) torch float32, flip-averaged
        when ``runtime.flip``; on the backend's device."""
        heat, paf = self._forward(batch)
        if self.flip:
            fheat, fpaf = self._forward(np.ascontiguousarray(batch[..., ::-1]))
            heat_perm, paf_perm, paf_sign = (t.to(fheat.device) for t in self._flip_tables)
            fheat = torch.flip(fheat, dims=[-1])[:, heat_perm]
            fpaf = torch.flip(fpaf, dims=[-1])[:, paf_perm] * paf_sign[None, :, None, None]
            heat, paf = (heat + fheat) * 0.5, (paf + fpaf) * 0.5
        if heat.is_cuda:
            torch.cuda.synchronize(heat.device)  # honest network timings
        return heat, paf

    # ------------------------------------------------------------------ internals
    def _forward(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch.shape[0]
        if self.chunk and n < self.chunk and getattr(self.backend, "batch", None):
            pad = np.zeros((self.chunk - n, *batch.shape[1:]), batch.dtype)  # static-batch artifact
            batch = np.concatenate([batch, pad])
        heat, paf = self._run(np.ascontiguousarray(batch, dtype=np.float32))
        heat, paf = torch.as_tensor(heat)[:n].float(), torch.as_tensor(paf)[:n].float()
        sk = self.skeleton
        if heat.shape[1] != sk.num_heatmaps or paf.shape[1] != sk.num_pafs:
            raise UserError(
                f"the model predicts {heat.shape[1]} heatmaps and {paf.shape[1]} PAF channels, but keypoints="
                f"{sk.name} needs {sk.num_heatmaps} and {sk.num_pafs}: run with the keypoints config the model "
                "was trained with"
            )
        return heat, paf

    def _chunks(self, prepared: list[Prepared]) -> list[list[int]]:
        """Indices of consecutive images with the same input shape, at most ``self.chunk`` per batch."""
        chunks: list[list[int]] = []
        for i, p in enumerate(prepared):
            if chunks and len(chunks[-1]) < self.chunk and prepared[chunks[-1][0]].input_hw == p.input_hw:
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return chunks

    def _fuse(self, passes: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]
              ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Average one image's passes on the grid of its largest pass. Returns heatmaps, PAFs, and the affine
        original -> that pass's input pixels."""
        if len(passes) == 1:
            return passes[0]
        ref = max(range(len(passes)), key=lambda i: passes[i][0].shape[-2] * passes[i][0].shape[-1])
        ref_heat, _, ref_affine = passes[ref]
        h, w = ref_heat.shape[-2:]
        J1 = ref_heat.shape[0]
        grid_to_px = np.array([[self.stride, 0, (self.stride - 1) / 2], [0, self.stride, (self.stride - 1) / 2],
                               [0, 0, 1]], np.float64)
        ref_to_orig = np.vstack([invert_affine(ref_affine), [0, 0, 1]])
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        cells = np.stack([gx.ravel(), gy.ravel(), np.ones(h * w)])  # (3, h*w) reference grid indices
        total = torch.zeros((J1 + passes[0][1].shape[0], h, w), device=ref_heat.device)
        for heat, paf, affine in passes:
            maps = torch.cat([heat, paf])
            if maps.shape[-2:] != (h, w) or not np.allclose(affine, ref_affine):
                # reference cell -> original pixel -> this pass's input pixel -> this pass's grid index
                pass_affine = np.vstack([affine, [0, 0, 1]])
                src = np.linalg.inv(grid_to_px) @ pass_affine @ ref_to_orig @ grid_to_px @ cells
                hs, ws = maps.shape[-2:]
                norm = np.stack([(2 * src[0] + 1) / ws - 1, (2 * src[1] + 1) / hs - 1], axis=-1)
                grid = torch.as_tensor(norm.reshape(1, h, w, 2), dtype=torch.float32, device=maps.device)
                maps = F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
            total += maps
        total /= len(passes)
        return total[:J1], total[J1:], ref_affine
