"""Find and swap a classifier's head, and tell CNNs from ViTs.

Works on any timm or torchvision classifier: the head is named by timm's `pretrained_cfg`, a small table
for torchvision, or else the last `nn.Linear`; re-initialization and linear probing use the same name
(`classifier_names`: every head, a distilled ViT's `head_dist` too).
"""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from torch import nn

from replast.errors import ConfigError, ModelError

# torchvision models whose head is not simply their last nn.Linear are listed here by class.
_TORCHVISION_HEADS: dict[type[nn.Module], str] = {torchvision.models.MobileNetV2: "classifier.1",
                                                   torchvision.models.SqueezeNet: "classifier.1"}


def classifier_name(model: nn.Module) -> str:
    """The `named_modules()` name of the classification head."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        name = cfg["classifier"]
        name = name[0] if isinstance(name, (tuple, list)) else name
        if _has_module(model, name):
            return name
    for cls, name in _TORCHVISION_HEADS.items():
        if isinstance(model, cls):
            return name
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier head to find")
    return linears[-1]


def classifier_names(model: nn.Module) -> list[str]:
    """Every head of the model: timm's distilled models average `head` and `head_dist`."""
    cfg = getattr(model, "pretrained_cfg", None)
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(names, (tuple, list)):
        found = [n for n in names if _has_module(model, n)]
        if found:
            return found
    return [classifier_name(model)]


def head_classes(model: nn.Module) -> int | None:
    """Number of outputs of the head, or None when it is not a Linear or 1×1 Conv2d."""
    head = model.get_submodule(classifier_name(model))
    if isinstance(head, nn.Linear):
        return head.out_features
    if isinstance(head, nn.Conv2d):
        return head.out_channels
    return None


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Put a freshly initialized head with `num_classes` outputs in place of the current one; returns it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    heads = classifier_names(model)
    for extra in heads[1:]:
        _swap_head(model, extra, num_classes)
    return _swap_head(model, heads[0], num_classes)


def _swap_head(model: nn.Module, name: str, num_classes: int) -> nn.Module:
    old = model.get_submodule(name)
    if isinstance(old, nn.Identity) and hasattr(model, "reset_classifier"):
        return _new_timm_head(model, name, num_classes)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    else:
        raise ModelError(f"head {name!r} of {type(model).__name__} is a {type(old).__name__}, "
                         "not a Linear or 1x1 Conv2d; cannot swap it")
    _init_head(new)
    weight = old.weight
    new.to(device=weight.device, dtype=weight.dtype)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # timm models report their class count here
    return new


def _new_timm_head(model: nn.Module, name: str, num_classes: int) -> nn.Module:
    # A timm backbone built with num_classes=0 (DINOv2 with registers, EVA-02, SAM) has an Identity head:
    # timm's own reset_classifier knows the width of the features that reach it.
    param = next(model.parameters(), None)
    model.reset_classifier(num_classes)
    new = model.get_submodule(name)
    if not isinstance(new, nn.Linear):
        raise ModelError(f"head {name!r} of {type(model).__name__} is a {type(new).__name__} after timm's "
                         "reset_classifier, not a Linear; cannot swap it")
    _init_head(new)
    if param is not None:
        new.to(device=param.device, dtype=param.dtype)
    return new


def _init_head(head: nn.Module) -> None:
    # timm's initialization of a classifier: small truncated normal weights and zero bias, so a new
    # head starts near uniform predictions whatever the backbone's feature scale.
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=0.02)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def model_family(model: nn.Module) -> Literal["cnn", "vit"]:
    """"vit" for transformers: over patches (timm `patch_embed`, torchvision ViT/Swin) or any model with
    multi-head self-attention (Twins, CoaT, LeViT, MaxViT, EfficientFormer, ... and hybrids), else "cnn".

    Self-attention is a module whose class name says Attention, or one holding query and key projections
    (`qkv`, or `q` with `k`/`kv`); CNN channel attention (SE, SplitAttn, CBAM) has neither, and attention
    pooling heads (CLIP ResNets' AttentionPool2d) do not make a CNN a transformer.
    """
    vit_classes = (torchvision.models.VisionTransformer, torchvision.models.SwinTransformer)
    if isinstance(model, vit_classes):
        return "vit"
    for name, module in model.named_modules():
        if name.rpartition(".")[2] == "patch_embed" or type(module).__name__ == "VisionTransformer":
            return "vit"
        if _is_self_attention(module):
            return "vit"
    return "cnn"


def _is_self_attention(module: nn.Module) -> bool:
    cls = type(module).__name__
    if "pool" in cls.lower():
        return False
    if "attention" in cls.lower():
        return True
    return hasattr(module, "qkv") or (hasattr(module, "q") and (hasattr(module, "k") or hasattr(module, "kv")))


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
