"""BpNetLite: TAO's parameter count, the stage range, the width multiplier and output shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from posekit.model.bpnet import BpNetLite, FinalStage, build_model, count_parameters, scaled


def test_parameter_count_matches_tao(skeleton):
    """TAO's test_bpnet_lite_model asserts 16,777,835 (Keras counts BN moving mean/variance as weights)."""
    net = BpNetLite(stages=3, num_heatmaps=skeleton.num_heatmaps, num_pafs=skeleton.num_pafs)
    counts = count_parameters(net)
    assert counts["trainable"] == 16_772_459
    assert counts["bn_running_stats"] == 5_376
    assert counts["keras_count"] == 16_777_835
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 37  # TAO: 37 Conv2D layers


def test_six_stage_count_matches_tao(skeleton):
    """Reference §1.4: the 6-stage model has 30,015,638 params (3 more refinement stages of 4,412,601)."""
    net = BpNetLite(stages=6, num_heatmaps=skeleton.num_heatmaps, num_pafs=skeleton.num_pafs)
    assert count_parameters(net)["keras_count"] == 30_015_638


@pytest.mark.parametrize("stages", [2, 3, 7])
def test_outputs_per_stage_and_shapes(stages, skeleton):
    net = BpNetLite(stages=stages, num_heatmaps=skeleton.num_heatmaps, num_pafs=skeleton.num_pafs, width=0.125)
    net.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        heats, pafs = net(x)
        final = FinalStage(net)(x)
    assert len(heats) == len(pafs) == stages
    for h, p in zip(heats, pafs):
        assert h.shape == (2, skeleton.num_heatmaps, 8, 12)  # output stride 8
        assert p.shape == (2, skeleton.num_pafs, 8, 12)
    assert torch.equal(final[0], heats[-1]) and torch.equal(final[1], pafs[-1])


@pytest.mark.parametrize("stages", [1, 8, 0])
def test_stage_count_outside_range_is_rejected(stages):
    with pytest.raises(ValueError, match="2..7"):
        BpNetLite(stages=stages)


def test_width_scales_hidden_channels_only():
    full = BpNetLite(stages=2, num_heatmaps=7, num_pafs=10)
    half = BpNetLite(stages=2, num_heatmaps=7, num_pafs=10, width=0.5)
    assert half.backbone.block_4a.conv.out_channels == scaled(512, 0.5) == 256
    assert half.channel_reduction.conv.out_channels == 64
    # output channel counts follow the skeleton, not the width
    for net in (full, half):
        assert [c.out_channels for c in net.output_convs()] == [7, 10, 7, 10]
    assert count_parameters(half)["trainable"] < count_parameters(full)["trainable"] / 3
    assert scaled(64, 0.01) == 8  # never below 8 channels


def test_build_model_round_trips_arch():
    net = BpNetLite(stages=4, num_heatmaps=19, num_pafs=38, width=0.25)
    clone = build_model(net.arch)
    assert clone.arch == net.arch
    assert [t.shape for t in clone.state_dict().values()] == [t.shape for t in net.state_dict().values()]


def test_refinement_bn_normalizes_every_refinement_trunk_conv_and_survives_save_load(tmp_path, skeleton):
    """model.refinement_bn (off by default: TAO's network): conv (no bias) -> BN -> ReLU for each 7x7 conv of the
    refinement stages; stage 1, the branches and the outputs stay as TAO has them. The option travels in ``arch``,
    so a saved model (and a pruned one, through its history) rebuilds with the same layers."""
    from posekit.model.io import load_model, save_model

    plain = BpNetLite(stages=3, num_heatmaps=skeleton.num_heatmaps, num_pafs=skeleton.num_pafs, width=0.125)
    net = BpNetLite(stages=3, num_heatmaps=skeleton.num_heatmaps, num_pafs=skeleton.num_pafs, width=0.125,
                    refinement_bn=True)
    assert "refinement_bn" not in plain.arch and net.arch["refinement_bn"] is True
    for stage in net.stages[1:]:
        for block in stage.trunk:
            assert isinstance(block.bn, nn.BatchNorm2d) and block.conv.bias is None and block.conv.kernel_size == (7, 7)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.stages[0].modules())
    extra_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) - sum(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert extra_bn == 2 * 5
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = FinalStage(net)(x)
    path = save_model(tmp_path / "m.pt", net)
    loaded, info = load_model(path)
    assert info["arch"]["refinement_bn"] is True
    with torch.no_grad():
        after = FinalStage(loaded)(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
