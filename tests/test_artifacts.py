"""The artifact record (posekit.export.artifacts): file names and summary.json entries both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from posekit.export import artifacts as names
from posekit.export.artifacts import Artifact, is_runnable, parse_model_name, precision_from_name, written


@pytest.mark.parametrize("hw, precision, variant, suffix", [
    ((288, 384), "fp32", None, "onnx"), ((288, 384), "fp16", None, "onnx"), ((96, 128), "int8", "qdq", "onnx"),
    ((96, 128), "int8", "cpu", "onnx"), ((288, 384), "int8", None, "engine"),
])
def test_a_model_name_parses_back_to_what_built_it(hw, precision, variant, suffix):
    name = names.model_name(hw, precision, variant, suffix)
    parsed = parse_model_name(name)
    assert parsed == (hw, precision, variant, suffix)
    assert names.model_name(*parsed) == name
    assert precision_from_name(name) == precision


def test_only_the_runnable_files_are_runnable():
    assert is_runnable("x/model.288.384.int8.qdq.onnx") and is_runnable("model.288.384.fp16.engine")
    assert not is_runnable(names.deploy_name((288, 384)))
    assert not is_runnable(names.calib_cache_name((288, 384))) and not is_runnable("model.pt")
    assert parse_model_name("model.pt") is None and precision_from_name("model.pt") is None


def test_a_summary_record_round_trips_through_the_artifact(tmp_path):
    path = tmp_path / names.model_name((96, 128), "int8", "cpu")
    path.write_bytes(b"onnx bytes")
    record = names.artifact_record(path, precision="int8", format="onnx-qdq-u8s8-onnxruntime",
                                   input_shape=["batch", 3, 96, 128], opset=17)
    assert record == {"path": str(path), "precision": "int8", "format": "onnx-qdq-u8s8-onnxruntime",
                      "input_shape": ["batch", 3, 96, 128], "size_bytes": 10, "sha256": record["sha256"], "opset": 17}
    art = Artifact.from_record(record)
    assert (art.precision, art.variant, art.display_precision, art.input_hw) == ("int8", "cpu", "int8.cpu", (96, 128))
    assert art.extra == {"opset": 17} and art.to_record() == record


def test_model_and_source_travel_with_a_stages_result(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"weights")
    onnx = tmp_path / names.model_name((96, 128), "fp32")
    onnx.write_bytes(b"onnx")
    model = Artifact.torch_model(pt, "retrained-0.2")
    exported = Artifact.from_file(onnx, precision="fp32", format="onnx", model="retrained-0.2", source=pt)
    assert (model.label, model.slug) == ("retrained-0.2", "retrained-0.2")
    assert (exported.label, exported.slug) == ("retrained-0.2/model.96.128.fp32.onnx",
                                               "retrained-0.2.model.96.128.fp32.onnx")
    back = written({names.WRITTEN: [model.to_record(), exported.to_record()]})
    assert back == [model, exported] and back[1].source == Path(pt)
