"""Schemes and the from-scratch initializer rule table."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from replast.reinit.init_rules import family_of, init_values
from replast.reinit.schemes import SchemeInput, init_matched, orthogonal, polar, shrink_perturb, zero


def _draw(model: nn.Module, name: str, param: str = "weight") -> torch.Tensor:
    module = model.get_submodule(name)
    return init_values(module, param, family_of(model)[name], torch.Generator().manual_seed(0))


def test_torchvision_mobilenet_rule() -> None:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=3)
    conv = model.features[18][0]  # 320 -> 1280, 1x1: kaiming-normal fan_out
    assert family_of(model)["features.18.0"] == "torchvision-mobilenet"
    assert _draw(model, "features.18.0").std().item() == pytest.approx(math.sqrt(2 / conv.out_channels), rel=0.02)
    assert _draw(model, "classifier.1").std().item() == pytest.approx(0.01, rel=0.2)
    assert not _draw(model, "classifier.1", "bias").any()


def test_timm_goog_and_vit_rules() -> None:
    import timm

    eff = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    head = eff.conv_head  # 320 -> 1280: N(0, sqrt(2 / (k·k·out / groups)))
    assert _draw(eff, "conv_head").std().item() == pytest.approx(math.sqrt(2 / head.out_channels), rel=0.02)
    dw = eff.blocks[1][0].conv_dw  # depthwise: fan_out = 9·C / C = 9
    assert _draw(eff, "blocks.1.0.conv_dw").std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.1)
    assert dw.groups == dw.out_channels
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)
    fc1 = _draw(vit, "blocks.0.mlp.fc1")
    assert fc1.std().item() == pytest.approx(0.02, rel=0.02) and fc1.abs().max() <= 2.0
    assert not _draw(vit, "blocks.0.mlp.fc1", "bias").any()
    bound = 1 / math.sqrt(3 * 8 * 8)  # patch_embed.proj keeps PyTorch's default (timm leaves it)
    assert _draw(vit, "patch_embed.proj").abs().max() <= bound


def test_timm_resnet_and_convnext_rules() -> None:
    import timm

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    conv = resnet.layer4[1].conv2  # 512 -> 512, 3x3: kaiming-normal fan_out = 9·512
    assert family_of(resnet)["layer4.1.conv2"] == "timm-resnet"
    assert _draw(resnet, "layer4.1.conv2").std().item() == pytest.approx(math.sqrt(2 / (9 * conv.out_channels)),
                                                                         rel=0.02)
    se = timm.create_model("seresnet18", pretrained=False, num_classes=3)
    bias = _draw(se, "layer1.0.se.fc1", "bias")  # timm leaves SE conv biases at PyTorch's default U(±1/√fan_in)
    assert bias.any() and bias.abs().max() <= 1 / math.sqrt(se.layer1[0].se.fc1.in_channels)
    convnext = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    for name in ("stages.3.blocks.0.conv_dw", "stages.3.blocks.0.mlp.fc1"):
        values = _draw(convnext, name)
        assert values.std().item() == pytest.approx(0.02, rel=0.05) and values.abs().max() <= 2.0
    assert not _draw(convnext, "stages.3.blocks.0.mlp.fc1", "bias").any()


def test_fallback_is_pytorch_default_and_custom_reset_is_seeded() -> None:
    linear = nn.Linear(16, 4)
    values = init_values(linear, "weight", "", torch.Generator().manual_seed(0))
    assert values.abs().max() <= 0.25 and values.std() > 0.1

    class Custom(nn.Linear):
        def reset_parameters(self) -> None:
            nn.init.normal_(self.weight, 5.0, 0.1)

    custom = Custom(4, 4)
    a = init_values(custom, "weight", "", torch.Generator().manual_seed(0))
    b = init_values(custom, "weight", "", torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.mean().item() == pytest.approx(5.0, abs=0.2)


def test_wrapped_model_inherits_family() -> None:
    import torchvision

    wrapper = nn.Module()
    wrapper.net = torchvision.models.mobilenet_v2(weights=None)
    assert family_of(wrapper)["net.features.0.0"] == "torchvision-mobilenet"
    assert family_of(wrapper)[""] == ""


def test_value_schemes() -> None:
    old, fresh = torch.randn(50, 20) * 3, torch.randn(50, 20)
    spec = SchemeInput(shrink=0.4, perturb=0.1)
    torch.testing.assert_close(shrink_perturb(old, fresh, spec), 0.4 * old + 0.1 * fresh)
    assert init_matched(old, fresh, spec).std().item() == pytest.approx(old.std().item(), rel=1e-4)
    assert not zero(old, fresh, spec).any()
    assert not init_matched(torch.randn(5), torch.zeros(5), spec).any()  # zero-init biases stay zero


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 4, 3, 3)])
def test_orthogonal_is_the_scaled_polar_factor(shape: tuple) -> None:
    w = torch.randn(shape)
    out = orthogonal(w, torch.zeros(shape), SchemeInput())
    mat = w.reshape(shape[0], -1)
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    expected = u @ vh * math.sqrt(mat.shape[0] / mat.shape[1])
    torch.testing.assert_close(out.reshape(shape[0], -1), expected, atol=1e-5, rtol=1e-4)


def test_orthogonal_groups_and_degenerate_matrices() -> None:
    dw = torch.randn(6, 1, 3, 3)  # depthwise: each filter is its own 1×9 group matrix
    out = orthogonal(dw, torch.zeros_like(dw), SchemeInput(groups=6))
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.full((6,), 1 / 3))
    assert torch.isfinite(polar(torch.zeros(2, 4, 6))).all()
    assert torch.isfinite(polar(torch.ones(4, 6))).all()


def test_fire_orthogonalizes_q_k_and_v_of_a_fused_qkv_separately() -> None:
    import timm

    from replast.reinit import restore_plasticity

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                            num_classes=3)
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    restore_plasticity(vit, data, strategy="fire")
    qkv = vit.blocks[0].attn.qkv.weight.detach()  # [3·192, 192]: each block square, so orthogonal (scale 1)
    for block in qkv.split(qkv.shape[1]):
        torch.testing.assert_close(block @ block.T, torch.eye(block.shape[0]), atol=1e-4, rtol=0)
    fc1 = vit.blocks[0].mlp.fc1.weight.detach()  # [768, 192]: one tall matrix, columns orthogonal × 2
    torch.testing.assert_close(fc1.T @ fc1, 4 * torch.eye(fc1.shape[1]), atol=1e-3, rtol=0)
