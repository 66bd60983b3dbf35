"""The model factory: `load_model(name, num_classes, weights)` → (model, preprocessing).

    model, prep = load_model("efficientnet_lite0", num_classes=2)          # shipped offline weights
    model, prep = load_model("resnet18", num_classes=2, weights="none")     # any timm/torchvision name

Zoo names (`@register_model`, see `zoo.py`) ship offline weights; other names are built by `generic.py`.
`build_model(name, weights)` → Built: the model with the head it was built or loaded with (`load_model` keeps
that head when it has `num_classes` outputs, and swaps it otherwise).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from replast.errors import ConfigError
from replast.models.assets import Asset
from replast.models.heads import head_classes, replace_head
from replast.preprocessing import Preprocessing
from replast.registry import Registry


class Built(NamedTuple):
    """What a builder returns: the model with its own head, its preprocessing, and whether the head is loaded."""

    model: nn.Module
    preprocessing: Preprocessing
    head_loaded: bool


Builder = Callable[[str, float], Built]
"""builder(weights, drop_path): weights is "pretrained", "none" or a file path."""


@dataclass(frozen=True)
class ZooModel:
    """A registered model with offline weights: its builder and what `replast models` shows about it."""

    name: str
    build: Builder
    family: str
    asset: Asset
    input_size: int
    architecture: str


MODELS: Registry[ZooModel] = Registry("model")


def register_model(name: str, *, family: str, asset: Asset, input_size: int,
                   architecture: str) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(weights, drop_path) -> Built` under `name` in the zoo."""

    def decorator(build: Builder) -> Builder:
        entry = ZooModel(name, build, family, asset, input_size, architecture)
        MODELS.register(name, help=(build.__doc__ or "").strip().split("\n")[0])(entry)
        return build

    return decorator


def load_model(name: str, num_classes: int, weights: str | os.PathLike = "pretrained", *,
               drop_path: float = 0.0) -> tuple[nn.Module, Preprocessing]:
    """Build `name` with `weights` and a head of `num_classes` outputs.

    weights: "pretrained" (shipped offline weights, zoo names only), "none" (random init) or a path to a
    .pth/.safetensors file. A loaded head is kept when it already has `num_classes` outputs (e.g. 1000 for
    ImageNet predictions); otherwise a new head is initialized.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    built = build_model(name, weights, drop_path=drop_path)
    if not built.head_loaded or head_classes(built.model) != num_classes:
        replace_head(built.model, num_classes)
    return built.model, built.preprocessing


def build_model(name: str, weights: str | os.PathLike = "pretrained", *, drop_path: float = 0.0) -> Built:
    """`name` with `weights` and the head it was built or loaded with (`Built.head_loaded` says which)."""
    weights = os.fspath(weights) if isinstance(weights, os.PathLike) else weights
    _check_args(weights, drop_path)
    if name in MODELS:
        return MODELS.get(name).build(weights, drop_path)
    from replast.models.generic import build_generic

    return build_generic(name, weights, drop_path)


def _check_args(weights: str, drop_path: float) -> None:
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"weights must be 'pretrained', 'none' or a file path, got {weights!r}")
    if not isinstance(drop_path, (int, float)) or not math.isfinite(drop_path) or not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"drop_path must be in [0, 1), got {drop_path!r}")


def list_models() -> list[dict]:
    """The zoo, one row per name, for `replast models` (any timm/torchvision name also works with weights)."""
    return [
        {
            "name": entry.name,
            "family": entry.family,
            "architecture": entry.architecture,
            "has_pretrained": True,
            "input_size": entry.input_size,
            "source": entry.asset.requirement,
            "installed": entry.asset.installed(),
        }
        for entry in (MODELS.get(name) for name in MODELS.names())
    ]
