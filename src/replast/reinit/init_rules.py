"""Fresh values from a layer's own from-scratch initializer, drawn from an explicit generator.

A small rule table keyed by model family (found by walking each layer's ancestors' classes):
torchvision MobileNetV2/V3 (conv kaiming-normal fan_out, linear N(0, 0.01)), torchvision and timm ResNet
(conv weights kaiming-normal fan_out, the rest PyTorch's default), timm EfficientNet/MobileNetV3
(`_init_weight_goog`), timm ViT (linear trunc-normal std .02), timm ConvNeXt (conv and linear trunc-normal
std .02); their biases zero. Anything else: PyTorch's `reset_parameters()` rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

FAMILIES = {
    "torchvision.models.mobilenetv2.MobileNetV2": "torchvision-mobilenet",
    "torchvision.models.mobilenetv3.MobileNetV3": "torchvision-mobilenet",
    "torchvision.models.resnet.ResNet": "torchvision-resnet",
    "timm.models.resnet.ResNet": "timm-resnet",
    "timm.models.convnext.ConvNeXt": "timm-convnext",
    "timm.models.efficientnet.EfficientNet": "timm-goog",
    "timm.models.mobilenetv3.MobileNetV3": "timm-goog",
    "timm.models.vision_transformer.VisionTransformer": "timm-vit",
}


def family_of(model: nn.Module) -> dict[str, str]:
    """Family of every module name, from its innermost ancestor of a known class ('' = unknown)."""
    families: dict[str, str] = {}
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0] if name else None
        inherited = families.get(parent, "") if parent is not None else ""
        own = next((FAMILIES[f"{c.__module__}.{c.__qualname__}"] for c in type(module).__mro__
                    if f"{c.__module__}.{c.__qualname__}" in FAMILIES), "")
        families[name] = own or inherited
    return families


def _fan(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a Conv/Linear weight, as torch.nn.init computes them."""
    return nn.init._calculate_fan_in_and_fan_out(module.weight)


def _normal(shape: torch.Size, std: float, g: torch.Generator) -> Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=g)


def _uniform(shape: torch.Size, bound: float, g: torch.Generator) -> Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=g)


def _torch_default(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    """nn.Linear/ConvNd.reset_parameters: kaiming_uniform(a=√5) = U(±1/√fan_in), bias alike."""
    fan_in = _fan(module)[0]
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return _uniform(getattr(module, param).shape, bound, g)


def _custom_reset(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    """A subclass with its own reset_parameters: run it on a clone under a seeded, forked RNG."""
    clone = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        clone.reset_parameters()
    return getattr(clone, param).detach().float().clone()


def _mobilenet(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    shape = getattr(module, param).shape
    if param == "bias":
        return torch.zeros(shape)
    if isinstance(module, nn.Linear):
        return _normal(shape, 0.01, g)
    return _normal(shape, math.sqrt(2.0 / _fan(module)[1]), g)  # kaiming_normal_(mode="fan_out")


def _resnet(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    # Both ResNets re-draw only conv weights (kaiming-normal fan_out); linears and conv biases (timm's SE
    # convs; torchvision's convs have none) keep PyTorch's default.
    if isinstance(module, nn.Linear) or param == "bias":
        return _torch_default(module, param, g)
    return _mobilenet(module, param, g)


def _goog(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    shape = getattr(module, param).shape
    if param == "bias":
        return torch.zeros(shape)
    if isinstance(module, nn.Linear):
        return _uniform(shape, 1.0 / math.sqrt(shape[0]), g)
    fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
    return _normal(shape, math.sqrt(2.0 / fan_out), g)


def _convnext(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    shape = getattr(module, param).shape
    if param == "bias":
        return torch.zeros(shape)
    return nn.init.trunc_normal_(torch.empty(shape), std=0.02, a=-2.0, b=2.0, generator=g)


def _vit(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    if not isinstance(module, nn.Linear):  # timm's ViT init leaves patch_embed.proj at PyTorch's default
        return _fallback(module, param, g)
    shape = getattr(module, param).shape
    if param == "bias":
        return torch.zeros(shape)
    return nn.init.trunc_normal_(torch.empty(shape), std=0.02, a=-2.0, b=2.0, generator=g)


def _fallback(module: nn.Module, param: str, g: torch.Generator) -> Tensor:
    own = type(module).reset_parameters
    standard = own in (nn.Linear.reset_parameters, nn.modules.conv._ConvNd.reset_parameters)
    return _torch_default(module, param, g) if standard else _custom_reset(module, param, g)


RULES: dict[str, Callable[[nn.Module, str, torch.Generator], Tensor]] = {
    "torchvision-mobilenet": _mobilenet,
    "torchvision-resnet": _resnet,
    "timm-resnet": _resnet,  # timm's init_weights: the same kaiming-normal fan_out conv weights, nothing else
    "timm-convnext": _convnext,
    "timm-goog": _goog,
    "timm-vit": _vit,
    "": _fallback,
}


def init_values(module: nn.Module, param: str, family: str, generator: torch.Generator) -> Tensor:
    """Fresh values for `module.<param>` ('weight' or 'bias'), float32 on the CPU."""
    return RULES[family](module, param, generator).float()
