"""INT8: TAO's calibration sampler, the calibration data file, one ORT calibration -> Q/DQ ONNX for TensorRT
(zero point 0, per-channel weights, float bias, dedicated pairs), CPU U8S8 ONNX and the TensorRT cache."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from posekit.config import CalibrationConfig
from posekit.data.images import read_image_rgb
from posekit.export.calib_cache import amax_from_ranges, read_calibration_cache, write_calibration_cache
from posekit.export.calibration import (
    CalibrationReader,
    build_calibration_data,
    calibration_data_matches,
    load_calibration_data,
    qualifying_image_ids,
    read_image_list,
    sample_calibration_images,
    write_image_list,
)
from posekit.export.onnx_export import export_onnx, output_errors, read_metadata
from posekit.export.quantize import calibrate, output_nodes, quantize_for_cpu, quantize_for_tensorrt, save_ranges
from posekit.runtime.onnxruntime_backend import OrtBackend
from posekit.runtime.preprocess import preprocess
from tests.test_export import tiny_final_stage

HW = (64, 64)


# ------------------------------------------------------------------------------------------------ sampler
def _independent_qualifying(ann: Path, min_persons: int, min_keypoints: int) -> set[str]:
    """The criteria restated with pycocotools, as TAO's script does it."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann))
    keep = set()
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if sum(a["num_keypoints"] >= min_keypoints for a in anns) >= min_persons:
            keep.add(coco.imgs[img_id]["file_name"])
    return keep


@pytest.mark.parametrize("min_persons,min_keypoints", [(1, 5), (3, 15), (2, 16)])
def test_sampler_applies_taos_criteria(coco_sample, min_persons, min_keypoints):
    ann = coco_sample / "test_coco.json"
    expected = _independent_qualifying(ann, min_persons, min_keypoints)
    picked = sample_calibration_images(ann, coco_sample, 100, min_persons=min_persons, min_keypoints=min_keypoints)
    assert {p.name for p in picked} == expected  # fewer qualify than asked: all of them
    assert all(p.is_file() and p.is_absolute() for p in picked)


def test_sampler_takes_exactly_n_seeded(coco_sample):
    ann = coco_sample / "test_coco.json"
    assert len(qualifying_image_ids(json.loads(ann.read_text()), 1, 5)) == 4
    for n in (1, 2, 3):  # TAO's loop breaks at len > n: n + 1 images
        assert len(sample_calibration_images(ann, coco_sample, n, seed=7)) == n
    a = sample_calibration_images(ann, coco_sample, 3, seed=7)
    assert a == sample_calibration_images(ann, coco_sample, 3, seed=7)  # reproducible
    assert sample_calibration_images(ann, coco_sample, 4, shuffle=False) == sorted(
        sample_calibration_images(ann, coco_sample, 4, seed=3))  # ascending ids without shuffle


def test_sampler_without_qualifying_images_says_what_to_change(coco_sample):
    from posekit.errors import UserError

    with pytest.raises(UserError, match="min_persons"):
        sample_calibration_images(coco_sample / "test_coco.json", coco_sample, 4, min_persons=10)


def test_image_list_roundtrip(tmp_path, coco_sample):
    images = sorted(coco_sample.glob("*.jpg"))
    write_image_list(tmp_path / "images.txt", images, header="# made by a test")
    assert read_image_list(tmp_path / "images.txt") == [p.resolve() for p in images]
    assert len(read_image_list(coco_sample, num_images=2)) == 2  # a folder: seeded sample


# ------------------------------------------------------------------------------------------------ data file
def test_calibration_data_is_the_inference_preprocessing(tmp_path, coco_sample):
    images = sorted(coco_sample.glob("*.jpg"))
    path = tmp_path / "calib.64.64.npz"
    data = build_calibration_data(images, HW, path)
    assert data.canvases.shape == (4, *HW, 3) and data.canvases.dtype == np.uint8
    expected = np.concatenate([preprocess(read_image_rgb(p), HW, "strict").batch for p in images])
    np.testing.assert_array_equal(load_calibration_data(path).batches(), expected)  # letterbox, not stretch
    assert calibration_data_matches(path, images, HW, "linear")
    assert not calibration_data_matches(path, images, (72, 64), "linear")
    assert not calibration_data_matches(path, images[:3], HW, "linear")

    reader = CalibrationReader(expected, "input", batch_size=3, channels_last=True)
    batches = [b["input"] for b in iter(reader.get_next, None)]
    assert [b.shape for b in batches] == [(3, *HW, 3), (1, *HW, 3)] and len(reader) == 2


# ------------------------------------------------------------------------------------------------ quantization
@pytest.fixture(scope="module")
def int8(tmp_path_factory, coco_sample):
    """One calibration of a tiny model on the COCO sample, and every artifact made from it."""
    d = tmp_path_factory.mktemp("int8")
    net = tiny_final_stage()
    fp32 = export_onnx(net, d / "model.fp32.onnx", HW)
    data = build_calibration_data(sorted(coco_sample.glob("*.jpg")), HW, d / "calib.npz").batches()
    method = CalibrationConfig().method  # the default, which every export uses unless told otherwise
    ranges = calibrate(fp32, CalibrationReader(data, "input", 1), method, num_bins=256)
    ranges_json = save_ranges(ranges, d / "ranges.json")
    return {
        "net": net, "data": data, "fp32": fp32, "ranges": ranges,
        "qdq": quantize_for_tensorrt(fp32, d / "model.int8.qdq.onnx", ranges_json, method),
        "cpu": quantize_for_cpu(fp32, d / "model.int8.cpu.onnx", ranges_json, method),
        "cache": write_calibration_cache(d / "cal.bin", ranges, "10.9.0", exclude=["heatmaps", "pafs"]),
    }


def _graph(path: Path):
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = Counter(i for n in model.graph.node for i in n.input)
    return model, inits, producers, consumers


def test_qdq_model_is_what_tensorrt_accepts(int8):
    model, inits, producers, consumers = _graph(int8["qdq"])
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:  # symmetric INT8 everywhere: int8 zero points, all 0
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":  # dedicated pairs: each Q feeds exactly one DQ
            assert consumers[n.output[0]] == 1

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    excluded = set(output_nodes(int8["fp32"]))
    quantized = [c for c in convs if c.name not in excluded]
    assert len(excluded) == 2 and len(quantized) == len(convs) - 2
    for conv in quantized:
        w_dq = producers[conv.input[1]]
        assert w_dq.op_type == "DequantizeLinear"
        w, scale = inits[w_dq.input[0]], inits[w_dq.input[1]]
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127  # symmetric [-127, 127]
        assert scale.shape == (w.shape[0],)  # per output channel
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # activations quantized
        bias = conv.input[2]
        assert bias in inits and inits[bias].dtype == np.float32  # float bias, no INT32 + DQ
    for conv in convs:
        if conv.name in excluded:  # the final heatmap/PAF convs stay float
            assert conv.input[1] in inits and inits[conv.input[1]].dtype == np.float32


def test_cpu_model_is_u8s8(int8):
    model, inits, producers, _ = _graph(int8["cpu"])
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(inits[n.input[2]].dtype == np.uint8 for n in acts)
    weights = [inits[producers[c.input[1]].input[0]] for c in model.graph.node
               if c.op_type == "Conv" and c.input[1] in producers]
    assert weights and all(w.dtype == np.int8 for w in weights)


@pytest.mark.parametrize("saturates, variant, wmax", [(True, "cpu-u8s7", 64), (False, "cpu-u8s8", 127)])
def test_cpu_model_weight_bits_follow_the_exporting_host(int8, tmp_path, monkeypatch, caplog, saturates, variant,
                                                          wmax):
    """x86 without VNNI/AMX: 7-bit weights by default (8-bit U8S8 products saturate there); loading an 8-bit model
    on such a CPU warns, and a 7-bit one never does."""
    import posekit.runtime.host as host

    monkeypatch.setattr(host, "int8_products_saturate", lambda: saturates)
    ranges_json = save_ranges(int8["ranges"], tmp_path / "ranges.json")
    path = quantize_for_cpu(int8["fp32"], tmp_path / "model.int8.cpu.onnx", ranges_json, CalibrationConfig().method)
    model, inits, producers, _ = _graph(path)
    assert read_metadata(model)["posekit.int8_variant"] == variant
    weights = [inits[producers[c.input[1]].input[0]] for c in model.graph.node
               if c.op_type == "Conv" and c.input[1] in producers]
    assert max(int(np.abs(w.astype(int)).max()) for w in weights) in (wmax - 1, wmax)  # the top of the range used

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "posekit.runtime.onnxruntime_backend"]

    with caplog.at_level("WARNING", logger="posekit.runtime.onnxruntime_backend"):
        OrtBackend(path)  # the model made for this host: no warning
        assert not warnings()
        monkeypatch.setattr(host, "int8_products_saturate", lambda: True)
        OrtBackend(path)
    warned = warnings()
    assert (variant == "cpu-u8s8") == bool(warned)
    assert all("export.cpu_reduce_range=true" in m for m in warned)


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", [], True), ("x86_64", ["avx512_vnni"], False), ("x86_64", ["avx_vnni"], False),
    ("x86_64", ["amx_int8", "amx_tile"], False), ("aarch64", [], False),
])
def test_which_hosts_saturate(monkeypatch, machine, flags, saturates):
    import posekit.runtime.host as host

    monkeypatch.setattr(host.platform, "machine", lambda: machine)
    monkeypatch.setattr(host, "cpu_flags", lambda: flags)
    assert host.int8_products_saturate() is saturates


@pytest.mark.parametrize("which", ["qdq", "cpu"])
def test_int8_models_track_fp32(int8, which):
    x = int8["data"]
    fp32 = OrtBackend(int8["fp32"])(x)
    q = OrtBackend(int8[which])(x)
    for a, b in zip(fp32, q):  # direction of the maps (what peak finding and PAF scoring use) is kept
        cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos > 0.99
    assert output_errors(fp32, q)["max_abs"] < 0.25 * max(np.abs(fp32[0]).max(), np.abs(fp32[1]).max())


def test_calibration_cache_matches_ort_ranges_and_fp32_names(int8):
    header, scales = read_calibration_cache(int8["cache"])
    assert header == "TRT-100900-EntropyCalibration2"
    lines = int8["cache"].read_text().splitlines()[1:]
    assert all(re.fullmatch(r".+: [0-9a-f]{8}", ln) for ln in lines)  # always 8 hex digits

    model = onnx.load(str(int8["fp32"]))
    values = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    assert set(scales) <= values and "input" in scales
    amax = amax_from_ranges(int8["ranges"])
    assert set(scales) == set(amax) - {"heatmaps", "pafs"}
    for name, scale in scales.items():  # parses back to what ORT computed: scale = amax / 127
        assert scale * 127 == pytest.approx(max(amax[name], 1e-8), rel=1e-6)

    # the same calibration drives the Q/DQ model: its activation scales are the cache's. ORT gives a tensor that
    # feeds a ReLU the ReLU output's range (what the ReLU clips away needs no code), as TensorRT does when it
    # fuses Conv + ReLU, so such tensors are compared with their ReLU's scale.
    fp32_relu = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    q_model, inits, _, _ = _graph(int8["qdq"])
    q_scales = {n.input[0]: float(inits[n.input[1]]) for n in q_model.graph.node if n.op_type == "QuantizeLinear"}
    shared = set(q_scales) & set(scales)
    assert len(shared) > 10
    for name in shared:
        assert q_scales[name] == pytest.approx(scales[fp32_relu.get(name, name)], rel=1e-5), name


def test_cache_clamps_dead_tensors(tmp_path):
    path = write_calibration_cache(tmp_path / "cal.bin", {"dead": (np.zeros(1), np.zeros(1)),
                                                          "live": (np.array([-3.0]), np.array([1.5]))}, "8.6.1")
    text = path.read_text().splitlines()
    assert text[0] == "TRT-8601-EntropyCalibration2"
    _, scales = read_calibration_cache(path)
    assert scales["dead"] > 0 and re.fullmatch(r"dead: [0-9a-f]{8}", text[1])
    assert scales["live"] == pytest.approx(3.0 / 127, rel=1e-6)


def test_calibration_in_passes_accumulates_over_all_images(int8):
    """ORT calibrators hold every intermediate tensor of a pass in memory, so posekit feeds a few images at a
    time: the min-max ranges must equal those of one pass over all images."""
    data = int8["data"]
    one = calibrate(int8["fp32"], CalibrationReader(data, "input", 1), "minmax", images_per_pass=len(data))
    many = calibrate(int8["fp32"], CalibrationReader(data, "input", 1), "minmax", images_per_pass=1)
    first = calibrate(int8["fp32"], CalibrationReader(data[:1], "input", 1), "minmax")
    assert list(one.keys()) == list(many.keys())
    for name in one.keys():
        np.testing.assert_array_equal(np.ravel(one[name].range_value), np.ravel(many[name].range_value))
    assert any(not np.array_equal(np.ravel(one[n].range_value), np.ravel(first[n].range_value)) for n in one.keys())


class _SparsePeaks(torch.nn.Module):
    """x -> ReLU(conv 1x1) -> two 1x1 output convs: the shape of a pose head, whose quantized tensor is a ReLU
    output that is mostly zeros with a sparse tail of large values (the keypoint evidence)."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Conv2d(3, 8, 1)
        self.heat = torch.nn.Conv2d(8, 2, 1)
        self.paf = torch.nn.Conv2d(8, 2, 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.rand(8, 3, 1, 1, generator=g) + 0.5)
            self.hidden.bias.fill_(-0.6)  # background (|x| <= 0.5) maps to exactly 0 after the ReLU
            for conv in (self.heat, self.paf):
                conv.weight.copy_(torch.rand(2, 8, 1, 1, generator=g) / 8)
                conv.bias.zero_()

    def forward(self, x):
        h = self.hidden(x).relu()
        return self.heat(h), self.paf(h)


def _peaky_images(n: int, hw=(32, 32), seed: int = 0) -> np.ndarray:
    """(n, 3, H, W) float32: uniform background in [-0.5, 0.5] plus two bright Gaussian blobs per image."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[: hw[0], : hw[1]]
    out = rng.uniform(-0.5, 0.5, (n, 3, *hw)).astype(np.float32)
    for i in range(n):
        for _ in range(2):
            cy, cx, amp = rng.uniform(4, hw[0] - 4), rng.uniform(4, hw[1] - 4), rng.uniform(2.0, 6.0)
            out[i] += (amp * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 4.0)).astype(np.float32)
    return out


def test_default_calibration_keeps_sparse_peaks(tmp_path):
    """ORT's entropy calibrator clips a sparse ReLU tail to a fraction of its range (on BpNetLite it cost the INT8
    models nearly all their AP, docs/export.md); the default calibration must keep the peaks."""
    fp32 = export_onnx(_SparsePeaks().eval(), tmp_path / "peaks.onnx", (32, 32))
    data = _peaky_images(16)
    reference = OrtBackend(fp32)(data)
    peak = float(np.abs(reference[0]).max())

    def peak_error(method: str) -> float:
        ranges = calibrate(fp32, CalibrationReader(data, "input", 1), method, num_bins=512)
        q = quantize_for_cpu(fp32, tmp_path / f"{method}.onnx", save_ranges(ranges, tmp_path / f"{method}.json"),
                             method)
        return float(np.abs(OrtBackend(q)(data)[0] - reference[0]).max()) / peak

    default = CalibrationConfig().method
    assert peak_error(default) < 0.05
    assert peak_error("entropy") > 2 * peak_error(default)  # what the default avoids (if ORT fixes it: revisit)
