"""Threshold pruning (posekit.prune) and the prune stage: TAO semantics, coupling, files, export, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from posekit.config import ConfigError
from posekit.model.bpnet import BpNetLite, FinalStage, count_parameters
from posekit.model.io import load_model, save_model
from posekit.prune import (
    PruneSettings,
    conv_layers,
    plan_pruning,
    prunable_layer_names,
    prune_model,
)
from tests.conftest import compose, run_cli

HW = (64, 64)


def spread_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Scale every conv filter by a random factor in [0.02, 1] so layers have spread filter norms (a fresh
    init has nearly equal norms, which would make every threshold keep all or nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(0.02 + 0.98 * torch.rand(m.out_channels, 1, 1, 1, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def small() -> BpNetLite:
    torch.manual_seed(0)
    return spread_norms(BpNetLite(stages=2, width=0.25))


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, *HW, generator=torch.Generator().manual_seed(1))


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        heats, pafs = model.eval()(x)
    return [*heats, *pafs]


def out_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which output filters of ``original`` (C, ...) survive in ``pruned`` (C', ...), found by value (the
    perturbed filters are all distinct). Only valid where the input channels were not pruned."""
    o, p = original.flatten(1), pruned.flatten(1)
    return [int((o == row).all(1).nonzero().item()) for row in p]


def tao_keep(stat: np.ndarray, pth: float, min_filters: int, granularity: int) -> int:
    """TAO's ``_get_retained_idx`` count, written independently of posekit."""
    n = len(stat)
    keep = max(int((stat > pth).sum()), min(min_filters, n))
    keep = int(math.ceil(keep / granularity) * granularity)
    return min(keep, n)


# --------------------------------------------------------------------------------------------- semantics
def test_pth_zero_removes_nothing(small, x):
    pruned, history, report = prune_model(small, PruneSettings(**{"pth": 0.0}), HW)
    assert history == []
    assert out_channels(pruned) == out_channels(small)
    assert report["totals"]["params"]["ratio"] == 1.0
    for a, b in zip(outputs(small, x), outputs(pruned, x)):
        assert torch.equal(a, b)


def test_pth_zero_keeps_zero_kernel_filters(x):
    """TAO's strict ``stat > pth`` would drop a zero kernel at pth 0, yet its bias still reaches the next layer."""
    net = spread_norms(BpNetLite(stages=2, width=0.25), seed=2)
    with torch.no_grad():
        net.stages[0].trunk.conv2.conv.weight[3] = 0
    pruned, history, _ = prune_model(net, PruneSettings(**{"pth": 0.0, "granularity": 1}), HW)
    assert history == []
    for a, b in zip(outputs(net, x), outputs(pruned, x)):
        assert torch.equal(a, b)


def test_input_model_is_not_modified(small, x):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    prune_model(small, PruneSettings(**{"pth": 0.5}), HW)
    after = small.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_parameters_never_increase_with_pth(small):
    pths = (0, 0.1, 0.3, 0.5, 0.7, 0.9, 2.0)
    counts = [count_parameters(prune_model(small, PruneSettings(**{"pth": p}), HW)[0])["trainable"] for p in pths]
    assert all(b <= a for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] < counts[0]


@pytest.mark.parametrize("granularity,min_filters", [(8, 16), (5, 7)])
def test_kept_counts_follow_tao_rule(small, granularity, min_filters):
    pth = 0.5
    cfg = {"pth": pth, "granularity": granularity, "min_filters": min_filters}
    pruned, _, _ = prune_model(small, PruneSettings(**cfg), HW)
    before, after = out_channels(small), out_channels(pruned)
    convs = dict(small.named_modules())
    for name in prunable_layer_names(small):  # no coupled producers in BpNetLite: every group is one conv
        w = convs[name].weight.detach().numpy().reshape(before[name], -1)
        norms = np.linalg.norm(w, axis=1)
        assert after[name] == tao_keep(norms / norms.max(), pth, min_filters, granularity), name
        assert after[name] == before[name] or (
            after[name] % granularity == 0 and after[name] >= min(min_filters, before[name])
        )
    # the first conv's input channels are never pruned, so its surviving filters can be identified: the top-k
    w0 = convs["backbone.block_1a.conv"].weight.detach()
    norms0 = w0.flatten(1).norm(dim=1)
    top = sorted(torch.argsort(norms0, descending=True)[: after["backbone.block_1a.conv"]].tolist())
    assert kept_rows(w0, pruned.backbone.block_1a.conv.weight.detach()) == top


def test_l1_norm_and_l2_normalizer(small):
    pth = 0.6
    pruned, _, _ = prune_model(small, PruneSettings(**{"pth": pth, "norm": "l1", "normalizer": "L2"}), HW)
    conv = small.stages[0].trunk.conv1.conv
    l1 = conv.weight.detach().numpy().reshape(conv.out_channels, -1).__abs__().sum(1)
    stat = l1 / np.linalg.norm(l1) * len(l1)  # TAO's 'L2' normalizer
    assert pruned.stages[0].trunk.conv1.conv.out_channels == tao_keep(stat, pth, 16, 8)


def test_fold_bn_prunes_switched_off_bn_channels_that_tao_keeps(x):
    """A channel whose BN scale and shift are 0 outputs exactly 0, yet its raw kernel is as strong as any: TAO's
    criterion keeps it, ``fold_bn`` (the norm of the BN-folded kernel) removes it, and the outputs stay identical."""
    torch.manual_seed(3)
    net = BpNetLite(stages=2, width=0.25).eval()
    bn = net.backbone.block_3a.bn
    off = torch.arange(0, bn.num_features, 4).tolist() + torch.arange(1, bn.num_features, 4).tolist()  # half of them
    with torch.no_grad():
        bn.weight[off] = 0.0
        bn.bias[off] = 0.0
        bn.running_var.uniform_(0.5, 2.0)  # folding divides by sigma: not all 1
    tao, _, _ = prune_model(net, PruneSettings(**{"pth": 0.2}), HW)
    folded, _, report = prune_model(net, PruneSettings(**{"pth": 0.2, "fold_bn": True}), HW)
    assert tao.backbone.block_3a.conv.out_channels == bn.num_features  # fresh kernels: all norms alike
    assert folded.backbone.block_3a.conv.out_channels == bn.num_features - len(off)
    for a, b in zip(outputs(net, x), outputs(folded, x)):
        assert torch.allclose(a, b, atol=1e-5)
    assert report["settings"]["fold_bn"] is True


def test_fold_bn_weights_each_filter_by_gamma_over_sigma(small):
    """fold_bn's statistic is ||W_f|| * |gamma_f| / sqrt(var_f + eps), normalized by the layer max (checked
    against an independent numpy computation on one BN layer)."""
    net = spread_norms(BpNetLite(stages=2, width=0.25), seed=4)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.1)
    pth = 0.3
    pruned, _, _ = prune_model(net, PruneSettings(pth=pth, fold_bn=True, granularity=1, min_filters=1), HW)
    conv, bn = net.backbone.block_1a.conv, net.backbone.block_1a.bn
    w = conv.weight.detach().numpy().reshape(conv.out_channels, -1)
    stat = np.linalg.norm(w, axis=1) * np.abs(bn.weight.detach().numpy()) / np.sqrt(bn.running_var.numpy() + bn.eps)
    assert pruned.backbone.block_1a.conv.out_channels == tao_keep(stat / stat.max(), pth, 1, 1)


def _block_output(model: nn.Module, module_name: str, x: torch.Tensor) -> torch.Tensor:
    out = {}
    handle = dict(model.named_modules())[module_name].register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return out["y"]


@pytest.mark.parametrize("where", ["bn", "bias"])
def test_compensate_folds_a_removed_constant_channel_into_its_consumer(where, x):
    """A removed channel that emitted a constant (BN scale 0 and shift 0.5; or a zero kernel with bias 0.3) still
    fed its consumer; ``prune.compensate`` folds that constant into the consumer (BN running mean / bias), so the
    consumer's output is unchanged away from the zero-padded border. Without it the output moves."""
    torch.manual_seed(3)
    net = BpNetLite(stages=2, width=0.25).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.2, 0.2)
        if where == "bn":  # backbone: conv -> BN -> ReLU; consumer block_3b (no bias, BN after it)
            producer, consumer, settings = "backbone.block_3a.conv", "backbone.block_3b", {"fold_bn": True}
            bn = net.backbone.block_3a.bn
            bn.weight[::2], bn.bias[::2] = 0.0, 0.5
        else:  # stage trunk: conv + bias -> ReLU; consumer conv3 (bias)
            producer, consumer, settings = "stages.0.trunk.conv2.conv", "stages.0.trunk.conv3", {}
            conv = net.stages[0].trunk.conv2.conv
            conv.weight[::2], conv.bias[::2] = 0.0, 0.3
    cfg = {"pth": 0.2, "granularity": 1, "min_filters": 1, **settings}
    before = _block_output(net, consumer, x)
    plain, _, _ = prune_model(net, PruneSettings(**cfg), HW)
    folded, _, report = prune_model(net, PruneSettings(**{**cfg, "compensate": True}), HW)
    channels = dict(net.named_modules())[producer].out_channels
    assert dict(folded.named_modules())[producer].out_channels == channels // 2
    inner = (..., slice(1, -1), slice(1, -1))
    assert torch.allclose(_block_output(folded, consumer, x)[inner], before[inner], atol=1e-5)
    assert (_block_output(plain, consumer, x)[inner] - before[inner]).abs().max() > 0.05
    assert report["settings"]["compensate"] is True


def test_output_heads_and_excluded_layers_keep_channels(small, x):
    excluded = ["backbone.block_4b.conv", "stages.1.trunk.conv2.conv"]
    pruned, _, report = prune_model(small, PruneSettings(**{"pth": 0.95, "excluded_layers": excluded}), HW)
    for a, b in zip(small.output_convs(), pruned.output_convs()):
        assert a.out_channels == b.out_channels
    for name in excluded:
        assert out_channels(pruned)[name] == out_channels(small)[name]
    assert report["totals"]["params"]["ratio"] < 0.9  # and the rest really was pruned
    notes = {r["name"]: r["note"] for r in report["layers"]}
    assert notes["stages.0.heat.out"] == "output head" and notes[excluded[0]] == "excluded"
    for a, b in zip(outputs(small, x), outputs(pruned, x)):
        assert a.shape == b.shape


# --------------------------------------------------------------------------------------------- coupling
class Coupled(nn.Module):
    """stem -> {a + b (residual add), c -> depthwise d} -> concat -> head: two coupled groups and a concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 1)
        self.c = nn.Conv2d(16, 24, 3, padding=1)
        self.d = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.head = nn.Conv2d(32 + 24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        y = torch.relu(self.a(s) + self.b(s))
        z = torch.relu(self.d(torch.relu(self.c(s))))
        return self.head(torch.cat([y, z], 1))

    def output_convs(self) -> list[nn.Conv2d]:
        return [self.head]


def by_hand(weights: list[torch.Tensor], mode: str) -> np.ndarray:
    stats = []
    for w in weights:
        n = np.linalg.norm(w.detach().numpy().reshape(w.shape[0], -1), axis=1)
        stats.append(n / n.max())
    s = np.stack(stats)
    return {
        "union": s.max(0),
        "intersection": s.min(0),
        "arithmetic_mean": s.mean(0),
        "geometric_mean": np.exp(np.log(s).mean(0)),
    }[mode]


@pytest.mark.parametrize("mode", ["union", "intersection", "arithmetic_mean", "geometric_mean"])
def test_equalization_of_coupled_layers(mode):
    torch.manual_seed(3)
    net = spread_norms(Coupled(), seed=3)
    cfg = {"pth": 0.45, "equalization": mode, "min_filters": 8, "granularity": 4}
    settings = PruneSettings(**cfg)
    groups = {frozenset(d.members): d for d in plan_pruning(net, settings)}
    assert set(groups) == {frozenset({"stem"}), frozenset({"a", "b"}), frozenset({"c", "d"})}
    for members in (("a", "b"), ("c", "d")):
        decision = groups[frozenset(members)]
        expected = by_hand([getattr(net, m).weight for m in members], mode)
        np.testing.assert_allclose(decision.merged.numpy(), expected, rtol=1e-6)
        keep = tao_keep(expected, 0.45, 8, 4)
        assert decision.kept.tolist() == sorted(np.argsort(-expected, kind="stable")[:keep].tolist())

    # With the stem excluded its output (= a, b, c's input) channels stay intact, so surviving filters of a, b,
    # c, d can be identified by value.
    pruned, _, _ = prune_model(net, PruneSettings(**{**cfg, "excluded_layers": ["stem"]}), (16, 16))
    ka = kept_rows(net.a.weight, pruned.a.weight)
    kb = kept_rows(net.b.weight, pruned.b.weight)
    kc = kept_rows(net.c.weight, pruned.c.weight)
    kd = kept_rows(net.d.weight, pruned.d.weight)
    assert ka == kb and kc == kd, "coupled producers must keep identical channels"
    assert pruned.head.in_channels == len(ka) + len(kc) and pruned.head.out_channels == 5

    # Concat bookkeeping: the pruned net equals the original with the removed channels zeroed (weights + bias,
    # so relu(0) = 0 reaches the head), which only holds if the head's input columns were sliced correctly.
    masked = Coupled()
    masked.load_state_dict(net.state_dict())
    with torch.no_grad():
        for name, keep in (("a", ka), ("b", kb), ("c", kc), ("d", kd)):
            conv = getattr(masked, name)
            drop = sorted(set(range(conv.out_channels)) - set(keep))
            conv.weight[drop] = 0
            conv.bias[drop] = 0
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-6)
    assert len(ka) < 32 or len(kc) < 24  # the threshold did prune something


def test_excluding_one_coupled_layer_keeps_the_whole_group():
    net = spread_norms(Coupled(), seed=4)
    pruned, _, report = prune_model(net, PruneSettings(pth=0.9, min_filters=4, excluded_layers=["a"]), (16, 16))
    assert pruned.a.out_channels == pruned.b.out_channels == 32
    assert pruned.c.out_channels < 24
    assert {r["name"]: r["note"] for r in report["layers"]}["b"] == "coupled to excluded"


# --------------------------------------------------------------------------------------------- report
def test_report_counts_macs_and_params(small):
    hw = (96, 128)
    pruned, _, report = prune_model(small, PruneSettings(**{"pth": 0.5}), hw)
    first = next(r for r in report["layers"] if r["name"] == "backbone.block_1a.conv")
    assert first["macs_before"] == hw[0] * hw[1] * first["out_before"] * 3 * 9  # stride 1, pad 1
    assert first["macs_after"] == hw[0] * hw[1] * first["out_after"] * 3 * 9
    t = report["totals"]
    assert t["params"]["before"] == count_parameters(small)["trainable"]
    assert t["keras_params"]["after"] == count_parameters(pruned)["keras_count"]
    assert t["macs"]["after"] == sum(c.macs for c in conv_layers(pruned, hw).values())
    assert t["flops"]["after"] == 2 * t["macs"]["after"] and t["flops"]["ratio"] < 1
    json.dumps(report)  # plain data, goes into summary.json


# --------------------------------------------------------------------------------------------- files, export
def test_pruned_file_round_trips_with_weights_only(small, x, tmp_path):
    pruned, history, _ = prune_model(small, PruneSettings(**{"pth": 0.5}), HW)
    path = save_model(tmp_path / "model.pruned-0.5.pt", pruned, pruning_history=history)
    blob = torch.load(path, weights_only=True)
    assert blob["pruning_history"] == history
    with torch.no_grad():  # load_model must also work inside a caller's no_grad
        loaded, info = load_model(path)
    assert out_channels(loaded) == out_channels(pruned)
    for a, b in zip(outputs(pruned, x), outputs(loaded, x)):
        assert torch.equal(a, b)

    # a second round (prune -> retrain -> prune) saves both histories and still round-trips
    again, history2, _ = prune_model(loaded, PruneSettings(**{"pth": 0.8}), HW)
    path2 = save_model(tmp_path / "model.pruned-0.8.pt", again, pruning_history=info["pruning_history"] + history2)
    loaded2, _ = load_model(path2)
    assert count_parameters(loaded2)["trainable"] < count_parameters(loaded)["trainable"]
    for a, b in zip(outputs(again, x), outputs(loaded2, x)):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False: the TorchScript exporter, fast here
def test_pruned_model_exports_to_onnx(small, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pruned, _, _ = prune_model(small, PruneSettings(**{"pth": 0.5}), HW)
    net = FinalStage(pruned).eval()
    x = torch.randn(1, 3, *HW)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["heatmaps", "pafs"],
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_settings_validation():
    """Bad prune.* values are refused by config.validate (naming the key), before the prune stage runs."""
    from posekit.config import validate

    for bad in ("prune.pth=-0.1", "prune.pth=nan", "prune.equalization=max", "prune.norm=l3", "prune.normalizer=l2",
                "prune.granularity=0", "prune.min_filters=0"):
        with pytest.raises(ConfigError, match="prune"):
            validate(compose("stage=prune", bad))
    with pytest.raises(ConfigError, match="backbone.block_1a.conv"):  # unknown name -> lists the valid ones
        prune_model(BpNetLite(stages=2, width=0.125), PruneSettings(pth=0.2, excluded_layers=("backbone.block_1a",)), HW)


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A model shaped like preset=tiny (2 stages, width 0.125) with spread filter norms."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("prune-cli") / "tiny.pt"
    save_model(path, spread_norms(BpNetLite(stages=2, width=0.125), seed=5))
    return path


@pytest.mark.slow
def test_cli_prune_writes_model_and_summary(tiny_model_file, tmp_path):
    proc = run_cli("stage=prune", "preset=tiny", f"prune.model={tiny_model_file}", f"experiment.root={tmp_path}",
                   "prune.pth=0.3")
    folder = tmp_path / "default" / "prune"
    model_file = folder / "model.pruned-0.3.pt"
    assert model_file.is_file() and "parameters (trainable)" in proc.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert json.loads((folder / "summary-0.3.json").read_text())["metrics"] == summary["metrics"]
    assert 0 < summary["metrics"]["params_ratio"] < 1
    assert summary["report"]["settings"]["pth"] == 0.3 and summary["report"]["input_hw"] == [128, 128]
    loaded, info = load_model(model_file)
    assert count_parameters(loaded)["trainable"] == summary["metrics"]["params_after"]
    assert info["meta"]["prune"]["pth"] == 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,message",
    [
        ("prune.pth=-0.5", "prune.pth"),
        ("prune.excluded_layers=[backbone.nope]", "Prunable layers"),
        ("prune.equalization=maximum", "prune.equalization"),
        ("prune.model=/nonexistent/model.pt", "not found"),
    ],
)
def test_cli_bad_input_exits_2(tiny_model_file, tmp_path, override, message):
    args = ["stage=prune", "preset=tiny", f"experiment.root={tmp_path}", f"prune.model={tiny_model_file}", override]
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "default" / "prune").exists()


@pytest.mark.slow
def test_cli_without_trained_model_says_to_train(tmp_path):
    proc = run_cli("stage=prune", "preset=tiny", f"experiment.root={tmp_path}", check=False)
    assert proc.returncode == 2 and "stage=train" in proc.stderr


def test_history_for_kept_rebuilds_a_pruned_shape():
    """The benchmarks rebuild a pruned model's architecture from its per-layer report (latency only)."""
    from posekit.prune.history import apply_pruning_history, history_for_kept

    kept = {"backbone.block_4b.conv": 96, "stages.1.trunk.conv3.conv": 24}  # of 128 and 32 at width 0.25
    net = BpNetLite(stages=2, width=0.25)
    before = count_parameters(net)["trainable"]
    apply_pruning_history(net, history_for_kept(net, kept))
    convs = dict(net.named_modules())
    assert convs["backbone.block_4b.conv"].out_channels == 96 and convs["stages.1.trunk.conv3.conv"].out_channels == 24
    assert convs["stages.1.trunk.conv4.conv"].in_channels == 24  # the consumer follows
    assert count_parameters(net)["trainable"] < before
    heats, pafs = net(torch.zeros(1, 3, 64, 64))
    assert heats[-1].shape[1] == net.arch["num_heatmaps"]
    with pytest.raises(ValueError, match="not a Conv2d"):
        history_for_kept(BpNetLite(stages=2, width=0.25), {"nope": 8})
    with pytest.raises(ValueError, match="cannot keep"):
        history_for_kept(BpNetLite(stages=2, width=0.25), {"backbone.block_4b.conv": 10_000})
