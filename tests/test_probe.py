"""probe.capture: hooks always removed, model state restored, units and heads found on real architectures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replast import diagnostics as dx
from replast.diagnosis import diagnose
from replast.errors import ConfigError
from replast.probe import ActivationStats, _sources, accumulate, capture, find_head, sample_grid


def _hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 2),
    )  # fmt: skip


def _images(n=3, b=8, size=16):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(b, 3, size, size, generator=g), torch.randint(0, 2, (b,), generator=g)) for _ in range(n)
    ]


def test_capture_accumulates_per_channel_and_restores_state():
    model = _cnn().train()
    model[0].weight.requires_grad_(False)
    old_grad = torch.ones_like(model[3].weight)
    model[3].weight.grad = old_grad
    bn_mean = model[1].running_mean.clone()
    stats = capture(model, _images(), num_batches=2)
    assert stats.num_batches == 2 and stats.num_samples == 16
    relu6 = stats.activations["2"]
    assert relu6.units == 8 and relu6.rows == 2 * 8 * 16 * 16
    assert stats.sources == {"2": "0", "4": "3"}
    assert stats.grads["0"].abs().sum() > 0  # frozen layers still get gradient statistics
    assert stats.features.shape == (16, 8) and stats.head == "8"
    assert _hooks_left(model) == 0 and model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[3].weight.grad is old_grad
    assert model[0].weight.grad is None and torch.equal(model[1].running_mean, bn_mean)


def test_hooks_are_removed_when_the_forward_fails():
    model = _cnn()
    bad = [(torch.randn(2, 5, 16, 16), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ConfigError, match=r"expects float32 \[B, 3, H, W\]"):
        capture(model, bad)
    assert _hooks_left(model) == 0 and model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_no_batches_and_bad_penultimate_are_config_errors():
    with pytest.raises(ConfigError, match="no batches"):
        capture(_cnn(), [])
    model = _cnn()
    with pytest.raises(ConfigError, match="not a module name"):
        capture(model, _images(), penultimate="nope")
    assert _hooks_left(model) == 0


def test_feature_sample_is_bounded():
    stats = capture(_cnn(), _images(n=4), backward=False, max_feature_rows=10)
    assert stats.features.shape == (10, 8) and stats.grads == {}


def test_sources_skip_norm_layers():
    params = {"c": nn.Conv2d(1, 1, 1), "bn": nn.BatchNorm2d(1), "fc": nn.Linear(1, 1)}
    order = ["c", "bn", "act1", "fc", "act2"]
    assert _sources(order, params, {"act1": 0, "act2": 0}) == {"act1": "c", "act2": "fc"}


def test_mobilenetv2_units_and_head():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v2(num_classes=3, width_mult=0.25)
    assert find_head(model) == "classifier.1"
    stats = capture(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 2]))], backward=False)
    acts = stats.activations
    assert len(acts) == 35 and acts["features.0.2"].kind == "ReLU6"
    assert stats.sources["features.0.2"] == "features.0.0" and stats.features.shape[0] == 2
    assert _hooks_left(model) == 0


def test_timm_vit_token_units_and_attention_entropy():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=2)
    assert find_head(model) == "head"
    stats = capture(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], num_batches=1)
    gelu = stats.activations["blocks.0.mlp.act"]
    assert gelu.units == model.blocks[0].mlp.fc1.out_features and gelu.rows == 2 * 5  # 4 patches + cls
    assert stats.sources["blocks.0.mlp.act"] == "blocks.0.mlp.fc1"
    ent = stats.attention["blocks.0.attn"]
    assert ent.shape == (model.blocks[0].attn.num_heads,) and ((ent > 0) & (ent <= 1)).all()
    assert _hooks_left(model) == 0


def test_timm_efficientnet_lite_head_and_bnact():
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2)
    assert find_head(model) == "classifier"
    stats = capture(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], backward=False)
    assert stats.sources["bn1.act"] == "conv_stem" and stats.activations["bn1.act"].kind == "ReLU6"


def test_grad_batches_default_to_half_and_are_validated():
    stats = capture(_cnn(), _images(n=3), num_batches=3)
    assert (stats.num_batches, stats.grad_batches) == (3, 2)
    assert capture(_cnn(), _images(n=3), num_batches=3, grad_batches=3).grad_batches == 3
    assert capture(_cnn(), _images(n=1), backward=False).grads == {}
    with pytest.raises(ConfigError, match="grad_batches=5"):
        capture(_cnn(), _images(), num_batches=2, grad_batches=5)


def test_zero_and_cap_counts_on_the_grid_match_the_exact_fractions():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.relu6(3 * torch.randn(16, 4, 40, 40, generator=g))
    st = ActivationStats.empty("ReLU6", 4, a.device)
    accumulate(st, a)
    assert sample_grid(a).shape[2:] == (4, 4) and sample_grid(a[:, :, :7, :7]).shape[2:] == (7, 7)
    assert st.zeros / st.sampled == pytest.approx((a == 0).float().mean().item(), abs=0.03)
    assert st.capped / st.sampled == pytest.approx((a == 6).float().mean().item(), abs=0.03)
    assert st.sum_abs.allclose(a.sum((0, 2, 3)).double()) and st.rows == 16 * 40 * 40


def test_nonfinite_values_are_counted_exactly():
    a = torch.ones(2, 3, 4, 4)
    a[0, 1, 2, 2], a[1, 2, 0, 0] = torch.nan, torch.inf
    st = ActivationStats.empty("GELU", 3, a.device)
    accumulate(st, a)
    assert int(st.nonfinite) == 2 and st.sum_abs[0] == 32  # units with a bad value drop that batch
    assert st.sum_abs[1] == 0 and not st.never_positive.any()


def _batches(sizes, d=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, d, generator=g), torch.randint(0, classes, (b,), generator=g)) for b in sizes]


# --- known answers by hand ----------------------------------------------------------------------------


def test_conv_redo_scores_are_means_over_batch_and_positions_weighted_by_batch_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 3, 6, 6, generator=g), torch.zeros(b, dtype=torch.long)) for b in (5, 1, 3)]
    stats = capture(model, batches, backward=False)
    with torch.no_grad():
        a = torch.cat([model[1](model[0](x)) for x, _ in batches])  # [9, 4, 4, 4]
    per_unit = a.abs().mean((0, 2, 3)).double()  # all 9 x 16 values weigh the same
    st = stats.activations["1"]
    assert torch.allclose(st.sum_abs / st.rows, per_unit, rtol=1e-5)
    assert torch.allclose(dx.redo_scores(st.sum_abs, st.rows), per_unit / per_unit.mean(), rtol=1e-5)


def test_rank_metrics_on_rank_deficient_and_zero_features():
    f = torch.zeros(32, 6)
    f[:, 0], f[:, 1] = 3.0, torch.arange(32.0) % 2  # rank 2
    s = dx.singular_values(f)
    ranks, _ = dx.feature_ranks(f)
    exact = torch.linalg.svdvals(f.double())
    p = exact / exact.sum()
    p = p[p > 1e-12]
    assert ranks["effective_rank"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)
    assert ranks["stable_rank"] == pytest.approx((exact**2).sum().item() / exact.max().item() ** 2, rel=1e-6)
    assert ranks["rank_99"] == 2 and dx.rank_at(s, 0.5) == 1
    assert dx.feature_ranks(torch.zeros(32, 6))[0] == {"effective_rank": 0.0, "stable_rank": 0.0, "rank_99": 0.0}


# --- which axis holds the units; shared activation modules; dtypes -----------------------------------------------------------------------------------------


class ChannelsLastMlp(nn.Module):
    """timm ConvNeXt's default block: permute to [B, H, W, C], Linear -> GELU -> Linear, permute back."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x).permute(0, 2, 3, 1)
        x = self.fc2(self.act(self.fc1(x))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_channels_last_linear_units_are_its_out_features_not_height():
    torch.manual_seed(0)
    model = ChannelsLastMlp()
    with torch.no_grad():
        model.fc1.bias[:3] = -1e3  # GELU(-1000) = -0: three of six units are dead
    batches = [(torch.randn(8, 3, 5, 5), torch.randint(0, 2, (8,))) for _ in range(2)]
    stats = capture(model, batches, backward=False)
    assert stats.activations["act"].units == 6  # not 5 (= H, dim 1 of [B, H, W, C])
    df = diagnose(model, batches).to_frame().set_index("layer")
    assert df.loc["act", "dormant_fraction"] == 0.5 and df.loc["fc1", "dormant_fraction"] == 0.5


def test_timm_convnext_mlp_units():
    timm = pytest.importorskip("timm")
    # convnext_tiny/small/base... default to conv_mlp=False (channels-last Linear MLP); atto is small
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=2, conv_mlp=False)
    stats = capture(model, [(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))], backward=False)
    fc1 = model.stages[0].blocks[0].mlp.fc1
    assert stats.activations["stages.0.blocks.0.mlp.act"].units == fc1.out_features  # not 16 (= H)


def test_conv1d_units_are_channels():
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7, 3))
    stats = capture(model, [(torch.randn(5, 2, 7), torch.zeros(5, dtype=torch.long))], backward=False)
    assert stats.activations["1"].units == 4  # not 7 (the length)


class SharedReLU(nn.Module):
    """torchvision ResNet style: one ReLU module applied after two different layers."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu, self.head = nn.Linear(10, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.relu(self.fc2(self.relu(self.fc1(x)))))


def test_a_shared_activation_module_is_measured_per_call():
    torch.manual_seed(0)
    model = SharedReLU()
    with torch.no_grad():
        model.fc1.bias[:2] = -1e3  # fc1: units 0, 1 dead -> 50% dormant, 50% zero units
        model.fc2.weight.zero_()
        model.fc2.bias.fill_(1.0)  # fc2: every unit outputs 1 -> 0% dormant
    df = diagnose(model, _batches([16, 16])).to_frame().set_index("layer")
    assert df.loc["fc1", "dormant_fraction"] == 0.5  # fc2's output was averaged in
    assert df.loc["fc1", "zero_unit_fraction"] == 0.5
    assert df.loc["fc2", "dormant_fraction"] == 0.0  # was NaN: fc2 got no dormancy


def test_gradients_are_the_mean_over_batches_of_each_batch_mean_gradient():
    # the documented convention (README: g = the gradient of one batch, E = mean over the batches), shared with
    # the utility pass; a small last batch weighs as much as a full one
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 3))
    batches = _batches([6, 1])
    stats = capture(model, batches, num_batches=2, grad_batches=2)
    per_batch = [torch.autograd.grad(F.cross_entropy(model(x), y), [model[0].weight])[0] for x, y in batches]
    assert torch.allclose(stats.grads["0"], (per_batch[0] + per_batch[1]) / 2, atol=1e-6)


def test_float64_model_with_gelu_is_probed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.GELU(), nn.Linear(8, 3)).double()
    batches = [(x.double(), y) for x, y in _batches([16, 16])]
    report = diagnose(model, batches)  # was a ConfigError from vector_norm's dtype
    assert 0 <= report.to_frame().set_index("layer").loc["1", "dormant_fraction"] <= 1


def test_compare_table_with_a_prelu_model():
    from replast.diagnose_cmd import _top_table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.PReLU(), nn.Linear(8, 3))
    report = diagnose(model, _batches([16, 16]))
    table = _top_table(report, report)  # "1" is a param row and an activation row
    assert table.row_count == len(report.to_frame().query("kind == 'param'"))
