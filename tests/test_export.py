"""ONNX export: parity with torch (both input layouts, dynamic batch), FP16, the deployable model + nvinfer
config, artifact records, and the INT8 export through the CLI (all artifacts, then eval on each ONNX)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from posekit.export import artifacts as names
from posekit.export.deploy import make_deployable, nvinfer_config
from posekit.export.fp16 import convert_to_fp16
from posekit.export.onnx_export import (
    ParityError,
    check_parity,
    export_onnx,
    output_errors,
    read_metadata,
    save_onnx,
    torch_outputs,
)
from posekit.model.bpnet import BpNetLite, FinalStage
from posekit.runtime.onnxruntime_backend import OrtBackend
from tests.conftest import run_cli

HW = (64, 64)


def tiny_final_stage(seed: int = 0) -> FinalStage:
    """BpNetLite(stages=2, width=0.125) with weights that give O(1) outputs (the default head init gives
    ~1e-8 maps, which would make every tolerance meaningless) and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = BpNetLite(stages=2, width=0.125)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return FinalStage(net).eval()


def coco_inputs(coco_sample: Path, hw: tuple[int, int]) -> np.ndarray:
    """The 4 COCO sample images, strict-preprocessed: (4, 3, H, W)."""
    from posekit.data.images import read_image_rgb
    from posekit.runtime.preprocess import preprocess

    paths = sorted(coco_sample.glob("*.jpg"))
    return np.concatenate([preprocess(read_image_rgb(p), hw, "strict").batch for p in paths])


@pytest.fixture(scope="module")
def net() -> FinalStage:
    return tiny_final_stage()


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, net) -> Path:
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / names.model_name(HW, "fp32"), HW)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_onnx_matches_torch_on_random_and_real_inputs(tmp_path, net, coco_sample, data_format):
    path = export_onnx(net, tmp_path / "m.onnx", HW, data_format=data_format)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["heatmaps", "pafs"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ([1, 3, *HW] if data_format == "channels_first" else [1, *HW, 3])
    assert read_metadata(model)["posekit.data_format"] == data_format

    inputs = {"random": np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3, *HW)).astype(np.float32),
              "real": coco_inputs(coco_sample, HW)}
    report = check_parity(path, net, inputs, atol=1e-4)
    heat, paf = torch_outputs(net, inputs["real"])
    assert np.abs(heat).max() > 0.05 and np.abs(paf).max() > 0.05  # outputs large enough to make 1e-4 meaningful
    assert all(r["max_abs"] < 1e-4 for r in report.values())


def test_parity_failure_reports_the_numbers(tmp_path, net, fp32_onnx):
    other = tiny_final_stage(seed=1)  # a different network than the one exported
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 3, *HW)).astype(np.float32)
    with pytest.raises(ParityError, match=r"heatmaps max \|diff\| [0-9.e+-]+.*export\.parity_atol"):
        check_parity(fp32_onnx, other, {"random": x}, atol=1e-4)


def test_dynamic_batch_export_runs_any_batch(tmp_path, net):
    path = export_onnx(net, tmp_path / "dyn.onnx", HW, dynamic_batch=True, data_format="channels_last")
    backend = OrtBackend(path)
    assert backend.batch is None and backend.channels_last and backend.input_hw == HW
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (3, 3, *HW)).astype(np.float32)
    errs = output_errors(torch_outputs(net, x), backend(x))
    assert errs["max_abs"] < 1e-4


def test_static_batch_backend_chunks_and_pads(fp32_onnx, net):
    backend = OrtBackend(fp32_onnx)
    assert backend.batch == 1
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (3, 3, *HW)).astype(np.float32)
    heat, paf = backend(x)
    assert heat.shape == (3, 19, HW[0] // 8, HW[1] // 8) and paf.shape == (3, 38, HW[0] // 8, HW[1] // 8)
    assert output_errors(torch_outputs(net, x), (heat, paf))["max_abs"] < 1e-4


@pytest.mark.parametrize("keep_io_fp32", [True, False])
def test_fp16_onnx_runs_and_is_close_to_fp32(tmp_path, fp32_onnx, net, coco_sample, keep_io_fp32):
    path = convert_to_fp16(fp32_onnx, tmp_path / names.model_name(HW, "fp16"), keep_io_fp32=keep_io_fp32)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)  # topologically sorted, valid
    io_type = model.graph.input[0].type.tensor_type.elem_type
    assert io_type == (onnx.TensorProto.FLOAT if keep_io_fp32 else onnx.TensorProto.FLOAT16)
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer if i.name in conv_weights)
    x = coco_inputs(coco_sample, HW)
    errs = output_errors(torch_outputs(net, x), OrtBackend(path)(x))
    assert errs["heatmaps_max_rel"] < 2e-2 and errs["pafs_max_rel"] < 2e-2


def test_deployable_model_folds_paf_upsampling_and_peaks(tmp_path, fp32_onnx):
    path = save_onnx(make_deployable(onnx.load(str(fp32_onnx)), paf_upsample=4, peak_window=3),
                     tmp_path / names.deploy_name(HW))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmaps", "pafs_x4", "peaks"]
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (1, 3, *HW)).astype(np.float32)
    heat, paf_up, peaks = session.run(None, {"input": x})
    base_heat, base_paf = ort.InferenceSession(str(fp32_onnx)).run(None, {"input": x})
    h8, w8 = HW[0] // 8, HW[1] // 8
    assert paf_up.shape == (1, 38, 4 * h8, 4 * w8) and peaks.shape == heat.shape == (1, 19, h8, w8)
    np.testing.assert_array_equal(paf_up, base_paf.repeat(4, axis=2).repeat(4, axis=3))  # TAO's identity deconv
    np.testing.assert_array_equal(heat, base_heat)
    # peaks: the heatmap where it equals its 3x3 neighbourhood maximum, else 0
    padded = np.pad(heat, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    expected = np.where(heat == windows.max(axis=(-1, -2)), heat, 0)
    np.testing.assert_array_equal(peaks, expected)
    # the ONNX Runtime backend recovers the stride-8 PAFs exactly
    np.testing.assert_array_equal(OrtBackend(path)(x)[1], base_paf)


def test_nvinfer_config_for_deepstream():
    text = nvinfer_config("model.288.384.deploy.onnx", (288, 384), "int8", ["heatmaps", "pafs_x4", "peaks"],
                          calib_file="cal.288.384.bin")
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert props["net-scale-factor"] == "0.00390625" and props["offsets"] == "128;128;128"
    assert props["model-color-format"] == "0" and props["infer-dims"] == "3;288;384"
    assert props["network-mode"] == "1" and props["int8-calib-file"] == "cal.288.384.bin"
    assert props["output-blob-names"] == "heatmaps;pafs_x4;peaks"
    assert props["maintain-aspect-ratio"] == "1" and props["symmetric-padding"] == "1"
    fp16 = nvinfer_config("m.onnx", (288, 384), "fp16", ["heatmaps", "pafs_x4"], channels_last=True)
    assert "network-mode=2" in fp16 and "int8-calib-file" not in fp16 and "network-input-order=1" in fp16
    with pytest.raises(ValueError, match="calibration cache"):
        nvinfer_config("m.onnx", (288, 384), "int8", ["heatmaps"])


def test_artifact_names_and_records(fp32_onnx):
    assert names.model_name((288, 384), "int8", "qdq") == "model.288.384.int8.qdq.onnx"
    assert names.engine_name((288, 384), "fp16") == "model.288.384.fp16.engine"
    assert names.calib_cache_name((288, 384)) == "cal.288.384.bin"
    assert names.calib_data_name((288, 384)) == "calib.288.384.npz"
    rec = names.artifact_record(fp32_onnx, precision="fp32", format="onnx", input_shape=[1, 3, *HW])
    assert rec["sha256"] == hashlib.sha256(fp32_onnx.read_bytes()).hexdigest()
    assert rec["size_bytes"] == fp32_onnx.stat().st_size and rec["input_shape"] == [1, 3, *HW]


@pytest.mark.slow
def test_export_cli_int8_leaves_every_artifact_and_each_onnx_evaluates(tmp_path, coco_sample, skeleton):
    from posekit.model import save_model

    model_file = tmp_path / "tiny.pt"
    save_model(model_file, tiny_final_stage().net)
    proc = run_cli("stage=export", "precision=int8", "preset=tiny", f"export.model={model_file}",
                   f"experiment.root={tmp_path / 'exp'}", "export.deploy=true", "export.engine=true")
    out = tmp_path / "exp" / "default" / "export" / "tiny"
    hw = (128, 128)  # preset=tiny
    expected = [names.model_name(hw, "fp32"), names.model_name(hw, "int8", "qdq"),
                names.model_name(hw, "int8", "cpu"), names.calib_cache_name(hw), names.ranges_name(hw),
                names.deploy_name(hw), names.nvinfer_config_name(hw, "int8")]
    for name in expected:
        assert (out / name).is_file(), name
    assert (tmp_path / "exp" / "default" / "calibrate" / names.calib_data_name(hw)).is_file()
    assert "trtexec --onnx=" in proc.stdout  # no TensorRT here: the equivalent commands are printed

    summary = json.loads((out / "summary.json").read_text())
    listed = {Path(r["path"]).name: r for r in summary["artifacts"].values()}
    assert set(expected) <= set(listed)
    for name in expected:
        assert listed[name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert summary["metrics"]["parity_max_abs"] < 1e-3 and set(summary["parity"]) == {"random", "val"}

    # eval runs on each ONNX artifact (the model is untrained: this checks the plumbing, not the AP)
    from posekit.evaluate.coco_eval import STATS, evaluate
    from posekit.runtime import Predictor, load_backend

    from tests.test_eval import pycocotools_stats

    ann = coco_sample / "test_coco.json"
    first_two = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])[:2]
    for name in [n for n in expected if n.endswith(".onnx")]:
        predictor = Predictor(load_backend(out / name, None), skeleton, None, None, hw)
        metrics, dets = evaluate(predictor, ann, coco_sample, skeleton, max_images=2, progress=False)
        assert metrics["images"] == 2 and {d["image_id"] for d in dets} <= {im["id"] for im in first_two}
        reference = pycocotools_stats(ann, dets, [im["id"] for im in first_two])
        if reference is None:  # nothing detected on images that hold people: no precision, no recall
            assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0, name
        else:
            np.testing.assert_allclose([metrics[k] for k in STATS], reference, atol=1e-12, err_msg=name)
