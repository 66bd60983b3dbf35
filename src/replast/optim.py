"""Optimizer and learning-rate schedule for fine-tuning, built with timm's factories.

timm gives weight-decay groups that exclude norms, biases and tokens, layer-wise lr decay for ViTs
(`lr_scale` per group) and a per-step cosine schedule with warm-up that honours those scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from replast.config import TrainConfig

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
REFERENCE_BATCH = 64


@dataclass(frozen=True)
class OptimSettings:
    """The resolved optimizer choice, written into final.json so a run says what it used."""

    name: str
    lr: float
    weight_decay: float


def resolve(cfg: TrainConfig, family: str, batch_size: int) -> OptimSettings:
    """Fill the `auto`/None defaults: SGD for CNNs, AdamW for ViTs; lr scaled linearly with the batch."""
    name = cfg.optimizer if cfg.optimizer != "auto" else ("adamw" if family == "vit" else "sgd")
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[name] * batch_size / REFERENCE_BATCH
    wd = cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WEIGHT_DECAY[name]
    return OptimSettings(name, lr, wd)


def build_optimizer(model: nn.Module, cfg: TrainConfig, settings: OptimSettings,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Parameter groups without decay for norms/biases, optional layer decay, trainable params only."""
    kwargs: dict = {}
    if settings.name == "sgd":
        kwargs.update(momentum=cfg.momentum)
        opt_name = "sgd" if cfg.nesterov else "momentum"
    else:
        opt_name = "adamw"
    if fused:
        kwargs["fused"] = True
    layer_decay = cfg.layer_decay if cfg.layer_decay < 1.0 and hasattr(model, "group_matcher") else None
    return create_optimizer_v2(model, opt=opt_name, lr=settings.lr, weight_decay=settings.weight_decay,
                               layer_decay=layer_decay, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> CosineLRScheduler:
    """Cosine decay to zero over `total_steps` after a linear warm-up, stepped once per optimizer update."""
    return CosineLRScheduler(
        optimizer, t_initial=max(total_steps, 1), lr_min=0.0, warmup_t=warmup_steps,
        warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)
