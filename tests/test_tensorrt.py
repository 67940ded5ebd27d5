"""TensorRT: which ONNX + flags per TensorRT major, the trtexec command text, engine naming and the calibration
cache format. Building and running engines needs TensorRT and a GPU: those tests skip with the reason."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from posekit.errors import UserError
from posekit.export import artifacts as names
from posekit.export.calib_cache import format_calibration_cache, read_calibration_cache, trt_version_int
from posekit.export.tensorrt import plan_engine, shape_flags, trtexec_command

FILES = dict(fp32_onnx=Path("m.fp32.onnx"), fp16_onnx=Path("m.fp16.onnx"), qdq_onnx=Path("m.int8.qdq.onnx"),
             calib_cache=Path("cal.bin"))


def _flags(cmd: str) -> dict[str, str]:
    return dict((a.split("=", 1) + [""])[:2] for a in shlex.split(cmd)[1:])


@pytest.mark.parametrize("precision,trt_major,onnx,flags", [
    ("fp32", 10, "m.fp32.onnx", set()),
    ("fp32", 11, "m.fp32.onnx", set()),
    ("fp16", 10, "m.fp32.onnx", {"--fp16"}),          # TensorRT 10: weak typing + FP16 flag
    ("fp16", 11, "m.fp16.onnx", set()),               # TensorRT 11: FP16 lives in the ONNX
    ("int8", 10, "m.int8.qdq.onnx", {"--fp16", "--int8"}),
    ("int8", 11, "m.int8.qdq.onnx", set()),           # strongly typed: no precision flags exist
])
def test_engine_plan_and_trtexec_per_tensorrt_major(precision, trt_major, onnx, flags):
    plan = plan_engine(precision, trt_major, **FILES)
    engine = Path(names.engine_name((288, 384), precision))
    cmd = trtexec_command(plan, engine, trt_major=trt_major, input_name="input", input_shape=[1, 3, 288, 384])
    args = _flags(cmd)
    assert shlex.split(cmd)[0] == "trtexec"
    assert args["--onnx"] == onnx and args["--saveEngine"] == f"model.288.384.{precision}.engine"
    assert args["--shapes"] == "input:1x3x288x384" and args["--memPoolSize"] == "workspace:2048M"
    assert {a for a in args if a in ("--fp16", "--int8", "--calib", "--best", "--stronglyTyped")} == flags


def test_int8_from_the_calibration_cache_is_tensorrt10_only():
    plan = plan_engine("int8", 10, int8_source="cache", **FILES)
    cmd = trtexec_command(plan, Path("e.engine"), trt_major=10, input_name="input", input_shape=[1, 288, 384, 3])
    args = _flags(cmd)
    assert args["--onnx"] == "m.fp32.onnx" and args["--calib"] == "cal.bin" and "--int8" in args
    assert args["--shapes"] == "input:1x288x384x3"
    with pytest.raises(UserError, match="TensorRT 11 removed"):
        plan_engine("int8", 11, int8_source="cache", **FILES)
    with pytest.raises(UserError, match="FP16 ONNX"):
        plan_engine("fp16", 11, fp32_onnx=Path("m.onnx"))


def test_dynamic_batch_shapes():
    assert shape_flags("input", [1, 3, 288, 384], True, 64) == [
        "--minShapes=input:1x3x288x384", "--optShapes=input:32x3x288x384", "--maxShapes=input:64x3x288x384"]


def test_calibration_cache_text_format():
    assert trt_version_int("10.9.0.34") == 100900 and trt_version_int("10.16.1") == 101601
    assert trt_version_int("8.6.1") == 8601  # TensorRT 8: major*1000 (TAO's rule)
    text = format_calibration_cache({"input": 0.5 / 127, "input_1:0": 0.0307041, "tiny": 1e-40}, "10.3.0")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    # big-endian IEEE-754 bits of the float32 scale, always 8 digits (TAO's hex(...)[2:] drops leading zeros)
    assert lines[1] == "input: " + np.array([0.5 / 127], ">f4").tobytes().hex()
    assert lines[2].startswith("input_1:0: 3cfb87")  # deploy-and-tooling §2's worked example
    assert lines[3] == "tiny: 000116c2"  # a subnormal: leading zeros kept


def test_cache_reader_round_trips(tmp_path):
    scales = {"a": 1e-3, "b/c:0": 0.25, "d": 1e-30}
    (tmp_path / "cal.bin").write_text(format_calibration_cache(scales))
    header, parsed = read_calibration_cache(tmp_path / "cal.bin")
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    assert parsed == pytest.approx(scales, rel=1e-6)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_and_run_engine(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installable on this machine (NVIDIA's index only)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engines are built and run on the GPU machine")
    from posekit.export.onnx_export import export_onnx
    from posekit.export.tensorrt import build_engine, major, tensorrt_version
    from posekit.runtime.tensorrt_backend import TrtBackend
    from tests.test_export import tiny_final_stage

    net = tiny_final_stage()
    fp32 = export_onnx(net, tmp_path / "model.64.64.fp32.onnx", (64, 64))
    plan = plan_engine("fp32", major(tensorrt_version()), fp32_onnx=fp32)
    engine = build_engine(plan, tmp_path / "model.64.64.fp32.engine", input_name="input", input_shape=[1, 3, 64, 64])
    backend = TrtBackend(engine)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 3, 64, 64)).astype(np.float32)
    heat, paf = backend(x)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))
    np.testing.assert_allclose(heat, ref[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(paf, ref[1].numpy(), atol=1e-3)
