"""Optimizer and learning-rate schedule for fine-tuning, built with timm's factories.

timm gives weight-decay groups that exclude norms, biases, tokens and position embeddings (timm models list
theirs; torchvision's are found by name), layer-wise lr decay for ViTs
(`lr_scale` per group; timm's layer ids: embeddings 0, blocks 1..L with the final norm in block L,
head L+1) and a per-step cosine schedule with warm-up that honours those scales.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from replast.config import TrainConfig
from replast.errors import ConfigError

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-5, "adamw": 0.05}
REFERENCE_BATCH = 64
# torchvision's names for tokens and position embeddings (ViT, Swin, MaxViT); timm models list theirs
# in `no_weight_decay()`, torchvision models have no such list
TORCHVISION_NO_DECAY = ("class_token", "pos_embedding", "relative_position_bias_table")


@dataclass(frozen=True)
class OptimSettings:
    """The resolved optimizer choice, written into final.json so a run says what it used."""

    name: str
    lr: float
    weight_decay: float
    layer_decay: float = 1.0
    """Layer-wise lr decay in effect (1.0 = none: turned off, or not a ViT)."""


def resolve(cfg: TrainConfig, family: str, batch_size: int) -> OptimSettings:
    """Fill the `auto`/None defaults: SGD for CNNs, AdamW for ViTs; lr scaled linearly with the batch.

    Layer decay numbers transformer blocks, so a CNN ignores it (with a warning) rather than failing:
    one study can set it for every model of a grid.
    """
    name = cfg.optimizer if cfg.optimizer != "auto" else ("adamw" if family == "vit" else "sgd")
    if name == "sgd" and cfg.nesterov and cfg.momentum == 0:  # checked here: `auto` is AdamW for a ViT
        raise ConfigError("train.momentum=0 with train.nesterov=true: Nesterov SGD needs momentum > 0; "
                          "pass --train.nesterov false for plain SGD")
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[name] * batch_size / REFERENCE_BATCH
    wd = cfg.weight_decay if cfg.weight_decay is not None else DEFAULT_WEIGHT_DECAY[name]
    layer_decay = cfg.layer_decay
    if layer_decay < 1.0 and family != "vit":
        warnings.warn(f"train.layer_decay={layer_decay} is ignored: layer-wise lr decay applies to ViTs, "
                      f"not to a {family} model", stacklevel=2)
        layer_decay = 1.0
    return OptimSettings(name, lr, wd, layer_decay)


def build_optimizer(model: nn.Module, cfg: TrainConfig, settings: OptimSettings,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Parameter groups without decay for norms/biases/tokens, trainable params only, and layer decay when
    `settings.layer_decay` < 1 (from `resolve`: ViTs only); a model timm cannot number ignores it."""
    kwargs: dict = {}
    if settings.name == "sgd":
        kwargs.update(momentum=cfg.momentum)
        opt_name = "sgd" if cfg.nesterov else "momentum"
    else:
        opt_name = "adamw"
    if fused:
        kwargs["fused"] = True
    layer_decay = settings.layer_decay if settings.layer_decay < 1.0 else None
    if layer_decay is not None and not hasattr(model, "group_matcher"):
        # timm's fallback grouping needs timm metadata; without it every parameter lands in one layer.
        warnings.warn(f"train.layer_decay={layer_decay} is ignored for {type(model).__name__}: only timm models "
                      "(with group_matcher) number their layers", stacklevel=2)
        layer_decay = None
    no_decay = _torchvision_no_decay(model)
    if no_decay and layer_decay is None:
        kwargs["param_group_fn"] = lambda m: param_groups_weight_decay(m, settings.weight_decay,
                                                                       no_weight_decay_list=no_decay)
    return create_optimizer_v2(model, opt=opt_name, lr=settings.lr, weight_decay=settings.weight_decay,
                               layer_decay=layer_decay, **kwargs)


def _torchvision_no_decay(model: nn.Module) -> list[str]:
    if hasattr(model, "no_weight_decay"):
        return []
    return [n for n, _ in model.named_parameters() if n.rpartition(".")[2] in TORCHVISION_NO_DECAY]


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> CosineLRScheduler:
    """Linear warm-up over `warmup_steps` from 0 (the first update's rate, timm's ramp with warmup_lr_init=0;
    the peak is reached at update `warmup_steps` + 1), then cosine decay reaching zero at step `total_steps`
    (the whole run, warm-up included); stepped once per optimizer update. Honours each group's `lr_scale`."""
    if warmup_steps >= total_steps > 0:
        warnings.warn(f"the warm-up ({warmup_steps} steps) covers the whole run ({total_steps} steps): the learning "
                      "rate rises to its peak only after the last step and never decays"
                      + (", so the one step has a learning rate of 0" if total_steps == 1 else "")
                      + "; lower --train.warmup_epochs below --epochs", stacklevel=2)
    # With warmup_prefix the cosine starts after the warm-up, so its length is what remains of the run.
    return CosineLRScheduler(
        optimizer, t_initial=max(total_steps - warmup_steps, 1), lr_min=0.0, warmup_t=warmup_steps,
        warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)
