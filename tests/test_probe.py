"""probe.capture: hooks always removed, model state restored, units and heads found on real architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
