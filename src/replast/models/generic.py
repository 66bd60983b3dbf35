"""Any timm or torchvision architecture by name, random init or from a weight file (no offline weights).

Names resolve in timm first, then `torchvision.models`; an unknown name fails with the closest zoo,
timm and torchvision names. Nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import warnings
from types import SimpleNamespace

import timm
import torchvision
from torch import nn

from replast.errors import ConfigError, UnknownNameError
from replast.models.registry import MODELS, Built
from replast.models.weights import load_weights
from replast.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def build_generic(name: str, weights: str, drop_path: float) -> Built:
    """Build a non-zoo architecture with weights "none" or a file path."""
    source = resolve(name)
    if weights == "pretrained":
        raise ConfigError(f"no offline weights ship for {name!r} (zoo: {', '.join(MODELS.names())}); "
                          "use --weights PATH (a .pth/.safetensors file) or --weights none")
    model = _create_timm(name, drop_path) if source == "timm" else _create_torchvision(name, drop_path)
    head_loaded = load_weights(model, weights)
    prep = timm_preprocessing(model) if source == "timm" else _torchvision_preprocessing(name, model)
    return Built(model, prep, head_loaded)


def resolve(name: str) -> str:
    """"timm" or "torchvision" for a known architecture name; UnknownNameError with close matches otherwise."""
    if timm.is_model(name):
        return "timm"
    if name in _torchvision_classifiers():
        return "torchvision"
    candidates = [*MODELS.names(), *timm.list_models(), *_torchvision_classifiers()]
    close = difflib.get_close_matches(str(name), candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownNameError(f"unknown model {name!r}: {hint}zoo names with offline weights: "
                           f"{', '.join(MODELS.names())}; any timm or torchvision architecture name also works")


def _torchvision_classifiers() -> list[str]:
    # Only the image classifiers: detection, segmentation and video models have no single linear head.
    return torchvision.models.list_models(module=torchvision.models)


def _create_timm(name: str, drop_path: float) -> nn.Module:
    if drop_path > 0:
        try:
            return timm.create_model(name, pretrained=False, drop_path_rate=drop_path)
        except TypeError:  # the architecture has no stochastic depth
            warn_drop_path_ignored(name)
    return timm.create_model(name, pretrained=False)


def _create_torchvision(name: str, drop_path: float) -> nn.Module:
    if drop_path > 0:
        warn_drop_path_ignored(name)
    return torchvision.models.get_model(name, weights=None)


def warn_drop_path_ignored(name: str) -> None:
    warnings.warn(f"drop_path is ignored for {name!r}: only timm models with stochastic depth support it",
                  stacklevel=4)


def timm_preprocessing(model: nn.Module, input_size: int | None = None) -> Preprocessing:
    """Normalization and native size from a timm model's `pretrained_cfg`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return Preprocessing(
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=input_size or int(cfg.get("input_size", (3, 224, 224))[-1]),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None,
    )


def fit_input_size(model: nn.Module, size: int) -> None:
    """Let a timm transformer built for one input size take `size` px images (position embeddings resampled
    by timm's `set_input_size`); ConfigError when the model cannot. Models that take any size are left alone."""
    patch_embed = getattr(model, "patch_embed", None)
    native = getattr(patch_embed, "img_size", None)
    if isinstance(model, torchvision.models.VisionTransformer):  # asserts its image_size in forward
        native, patch_embed = (model.image_size, model.image_size), SimpleNamespace(strict_img_size=True)
    if isinstance(model, torchvision.models.MaxVit):  # attention windows laid out for the size it was built for
        grid = tuple(model.blocks[0].grid_size)  # after the stem's and the first block's stride 2
        if (_half(_half(size)),) * 2 == grid:
            return
        native, patch_embed = (4 * grid[0], 4 * grid[1]), SimpleNamespace(strict_img_size=True)
    if getattr(model, "dynamic_img_size", False) or native is None or tuple(native) == (size, size):
        return
    if hasattr(model, "set_input_size"):
        try:
            model.set_input_size(img_size=(size, size))
            return
        except (AssertionError, ValueError, RuntimeError, TypeError) as e:
            reason = f" ({e})"
    elif getattr(patch_embed, "strict_img_size", False):
        reason = ""
    else:
        return
    raise ConfigError(f"{type(model).__name__} takes {native[0]}x{native[1]} px images and cannot be resized to "
                      f"{size} px{reason}; pass --image_size {native[0]}")


def _half(n: int) -> int:
    """The output size of a 3x3 convolution of stride 2 and padding 1."""
    return (n - 1) // 2 + 1


def _torchvision_preprocessing(name: str, model: nn.Module) -> Preprocessing:
    # The weights enum knows each architecture's eval transform without downloading anything.
    try:
        transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        mean, std = tuple(transform.mean), tuple(transform.std)
        size = int(transform.crop_size[0])
        interpolation = transform.interpolation.value
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        mean, std, size, interpolation = IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear"
    patch = getattr(model, "patch_size", None)
    return Preprocessing(mean, std, size, interpolation, int(patch) if isinstance(patch, int) else None)
