"""Config composition of every group, and the start-up validation errors (named key + allowed values)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posekit.config import ConfigError, validate
from tests.conftest import ROOT, compose, run_cli

GROUPS = ["stage", "model", "data", "keypoints", "resolution", "precision", "trainer", "optim", "preset"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes_and_validates(group):
    opts = options(group)
    assert opts, f"conf/{group} is empty"
    for opt in opts:
        extra = ["data.root=/nonexistent"] if (group, opt) == ("data", "coco") else []
        cfg = compose(f"{group}={opt}", *extra)
        validate(cfg)
        if group == "stage":
            assert cfg.stage.value == opt
        if group == "resolution":
            h, w = (int(v) for v in opt.split("x"))
            assert list(cfg.model.input_shape) == [h, w]
        if group == "precision":
            assert cfg.precision.name.value == opt


def test_defaults_are_tao_model_on_synthetic_data():
    cfg = compose()
    assert cfg.stage.value == "train" and cfg.data.name == "synthetic"
    assert cfg.model.stages == 3 and cfg.model.width == 1.0 and list(cfg.model.input_shape) == [288, 384]


def test_free_input_shape_override():
    cfg = compose("model.input_shape=[240,320]")
    validate(cfg)
    assert list(cfg.model.input_shape) == [240, 320]


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("model.input_shape=[285,384]", "model.input_shape", "multiples of 8"),
        ("model.stages=8", "model.stages", "2..7"),
        ("model.stages=1", "model.stages", "2..7"),
        ("prune.pth=-0.1", "prune.pth", ">= 0"),
        ("prune.equalization=max", "prune.equalization", "union"),
        ("runtime.mode=stretch", "runtime.mode", "strict"),
        ("export.data_format=nhwc", "export.data_format", "channels_last"),
        ("export.trt_int8_source=calib", "export.trt_int8_source", "qdq"),
        ("optim.name=lion", "optim.name", "adamw"),
    ],
)
def test_validation_names_key_and_allowed_values(override, key, allowed):
    cfg = compose(override)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize(
    "overrides, key, allowed",
    [
        (["+sweep=accuracy_latency", "pipeline.targets.gpu.backend=tensorrt"], "pipeline.targets.gpu.backend",
         "onnxruntime"),
        (["+sweep=accuracy_latency", "pipeline.targets.gpu.precisions=[int8]"], "pipeline.targets.gpu.precisions[]",
         "bf16"),
        (["+sweep=accuracy_latency", "pipeline.targets.cpu.batch_sizes=[0]"], "pipeline.targets.cpu.batch_sizes",
         ">= 1"),
        (["stage=pipeline", "pipeline.steps=[train,targets]"], "pipeline.targets", "gpu and cpu"),
        (["+sweep=accuracy_latency", "pipeline.targets.gpu=null", "pipeline.targets.cpu=null"], "pipeline.targets",
         "gpu and cpu"),
        (["stage=pipeline", "pipeline.steps=[train,pipeline]"], "pipeline.steps", "targets"),
    ],
)
def test_latency_targets_are_validated(overrides, key, allowed):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value) and allowed in str(e.value)


def test_unknown_key_and_wrong_type_fail_at_composition():
    with pytest.raises(Exception) as e:
        compose("model.foo=1")
    assert "foo" in str(e.value)
    with pytest.raises(Exception) as e:
        compose("model.stages=three")
    assert "stages" in str(e.value)


def test_cli_bad_override_exits_2_with_message():
    proc = run_cli("model.input_shape=[285,384]", check=False)
    assert proc.returncode == 2
    assert "model.input_shape" in proc.stderr and "multiple" in proc.stderr
    proc = run_cli("resolution=999x999", check=False)
    assert proc.returncode != 0 and "resolution" in (proc.stderr + proc.stdout)


def test_cli_help_lists_groups_and_cfg_job_prints_config():
    out = run_cli("--help").stdout
    for group in ["stage", "model", "data", "keypoints", "resolution", "precision", "trainer"]:
        assert f"{group}:" in out
    job = OmegaConf.create(run_cli("--cfg", "job", "stage=export", "precision=int8").stdout)
    assert job.stage == "export" and job.precision.name == "int8"


def test_sweeps_search_path_does_not_depend_on_cwd(tmp_path):
    # launched from another directory, the sweeps/ folder is still found
    out = run_cli("--info", "searchpath", cwd=tmp_path).stdout
    assert str(ROOT / "sweeps") in out


def test_crowd_scene_wins_over_the_preset_and_renders_twenty_people():
    """+scene=crowd20 (the end-to-end benchmark's frames) is appended after the preset, so preset=gpu's
    max_people=6 does not undo it; the generator then places all 20 annotated people in the preset's frame size."""
    from posekit.data.synthetic import generation_params, render_image
    from posekit.skeleton import Skeleton

    cfg = compose("preset=gpu", "+scene=crowd20")
    validate(cfg)
    syn = cfg.data.synthetic
    assert (syn.min_people, syn.max_people, syn.num_val) == (20, 20, 50)
    assert compose("preset=gpu").data.synthetic.max_people == 6
    params = generation_params(syn, Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True)))
    _, anns = render_image(params, "val", 0)
    assert sum(a["num_keypoints"] > 0 for a in anns) == 20
