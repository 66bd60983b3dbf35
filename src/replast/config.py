"""Typed configs for every job. Field docstrings become `--help`; `validate()` lists all errors at once.

`FinetuneConfig` is the whole resolved configuration of one run: it is what `replast finetune` parses,
what a study expands into, and what is written to `OUT/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from replast.errors import ConfigError


@dataclass
class TrainConfig:
    """Optimisation and loop options."""

    optimizer: Literal["auto", "sgd", "adamw"] = "auto"
    """auto = SGD (momentum, nesterov) for CNNs, AdamW for ViTs."""
    lr: float | None = None
    """Peak learning rate; None = 0.01 for SGD, 1e-4 for AdamW (scaled by batch_size / 64)."""
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    """None = 5e-5 for SGD, 0.05 for AdamW. Never applied to norms, biases, tokens and position embeddings."""
    warmup_epochs: float = 1.0
    """Linear warm-up before the cosine decay, from a rate of 0 at the first update."""
    label_smoothing: float = 0.1
    mode: Literal["finetune", "linear-probe"] = "finetune"
    """linear-probe trains only the classifier head, on features computed as in evaluation (eval mode: BatchNorm
    statistics fixed, dropout off)."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay for ViTs (1.0 = off; 0.75 is common)."""
    drop_path: float = 0.0
    """Stochastic depth rate for timm models that support it."""
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    """auto = bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-true on CPU."""
    compile: bool = False
    """torch.compile the model (compile time is reported separately)."""
    channels_last: bool = True
    """Use the channels_last memory format for CNNs."""
    augment: bool = True
    """Random resized crop + horizontal flip on the device during training."""
    on_nonfinite: Literal["raise", "skip", "stop"] = "stop"
    """What to do when the loss is NaN/Inf: raise, skip the step, or stop the run as failed:nonfinite."""
    track_plasticity: int = 0
    """Log cheap plasticity metrics every K steps on a fixed held-out batch (0 = off)."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (None = 2 × batch size)."""
    precise_bn: int = 0
    """Before every evaluation, re-estimate the trained BatchNorms' running statistics on this many
    un-augmented training batches in a seeded random order (PreciseBN; 0 = evaluate with the running
    averages as trained, which trail the weights by ~10 steps)."""


@dataclass
class ReinitConfig:
    """Which weights to re-initialize before (or during) fine-tuning, and how."""

    strategy: str = "none"
    """none | targeted | shrink-perturb | redo | cbp | reinit-top-layers | reinit-all | fire."""
    utility: str = "taylor"
    """Score per weight or unit; low = re-initialize: magnitude | gradient | taylor | fisher | snip | activation | redo | cbp | random."""
    selection: str = "per-layer"
    """per-layer | global | threshold | top-layers | bottom-layers."""
    fraction: float = 0.1
    """Fraction p re-initialized (per-layer and global selections; with scope auto, which sets each chosen
    layer's fraction itself, only global uses it: it ranks the chosen layers together)."""
    threshold: float = 0.1
    """tau for the threshold selection (normalized score <= tau is reset)."""
    layers: int = 1
    """L for top-layers / bottom-layers: number of whole blocks."""
    scheme: str = "init"
    """New values: init | init-matched | zero | shrink-perturb | orthogonal."""
    level: Literal["weight", "unit"] = "weight"
    """Reset single weights, or whole units (neuron / filter / attention head) with their in/out weights."""
    zero_outgoing: bool = False
    """Unit level: zero the outgoing weights of reset units, so the network's function is unchanged at step 0."""
    unpaired: Literal["weight", "skip"] = "weight"
    """Unit level, layers whose units cannot be paired with their outgoing weights (e.g. a unit feeding a
    residual add): weight (score them at their own output, reset whole rows, outgoing weights untouched) or
    skip (leave them alone, as ReDo's and continual backprop's reference implementations do)."""
    batches: int = 8
    """Training batches used to compute utilities."""
    lr_scale: float = 1.0
    """Re-initialized weights get lr_scale x the update of pretrained weights."""
    lr_warmup_steps: int = 0
    """Steps over which the scale of reset weights ramps from 1 to lr_scale."""
    schedule: str = "once"
    """once (before fine-tuning) or every:K (re-apply every K steps, clearing optimizer state of reset weights)."""
    exclude: list[str] = field(default_factory=lambda: ["head"])
    """Module-name patterns never touched; 'head' is the classifier head."""
    include: list[str] = field(default_factory=list)
    """Module-name patterns to restrict eligible layers to (empty = all eligible)."""
    scope: str = "all"
    """all | auto (choose layers that are more saturated on the data than on natural photos; each chosen
    layer's fraction is its excess saturation, at most 0.3, and only a global selection uses `fraction`)."""
    shrink: float = 0.4
    """lambda of shrink-and-perturb."""
    perturb: float = 0.1
    """sigma of shrink-and-perturb."""
    recompute_bn: bool = True
    """Re-estimate the running statistics of BatchNorm channels whose input the re-initialization changed, on
    the utility batches (the stored ones describe the old weights and mislead evaluation for tens of steps)."""


@dataclass
class FinetuneConfig:
    """One fine-tuning run: model, data, re-initialization, training, output."""

    model: str = "mobilenetv2_100"
    """Model name: a zoo name (see `replast models`) or any timm/torchvision architecture."""
    weights: str = "pretrained"
    """pretrained (shipped offline weights), none (random init), or a path to .pth/.safetensors (a head with
    one output per class of the data is kept)."""
    data: str = "br35h"
    """Dataset name (see `replast datasets`) or imagefolder:PATH."""
    epochs: int = 10
    batch_size: int = 64
    """Per-device batch size."""
    image_size: int | None = None
    """Training input side in pixels; None = the model's native size."""
    train_fraction: float = 1.0
    """Stratified, seeded subsample of the training split (validation and test unchanged)."""
    max_samples: int | None = None
    """Cap on the whole dataset before splitting (stratified), for quick runs."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_bad_fraction: float = 0.01
    """Fail when more than this fraction of images cannot be read."""
    device_cache: Literal["auto", "on", "off"] = "auto"
    """Hold decoded images on the training device: auto (unless an image folder exceeds 2 GiB), on, off (stream)."""
    seed: int = 0
    """Seeds everything: splits, order, augmentation, re-initialization masks, head init."""
    deterministic: bool = False
    """Turn on torch's deterministic algorithms (slower on GPU, where ops without one only warn)."""
    out: str = "runs/finetune"
    """Run directory."""
    overwrite: bool = False
    """Replace a finished run in `out`."""
    resume: bool = False
    """Continue from `out/checkpoints/last.pt`."""
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    """Distributed strategy (Lightning Fabric)."""
    diagnose: bool = False
    """Write diagnosis.json: per-layer plasticity on the utility batches before re-initialization, after it,
    and after fine-tuning."""
    train: TrainConfig = field(default_factory=TrainConfig)
    reinit: ReinitConfig = field(default_factory=ReinitConfig)

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        """Build from a nested dict; unknown keys are all reported at once with close matches."""
        errors = unknown_keys(cls, data)
        if errors:
            raise ConfigError("; ".join(errors))
        return _build(cls, data)

    def validate(self) -> FinetuneConfig:
        """Raise one ConfigError listing every invalid value."""
        errors = validation_errors(self)
        if errors:
            raise ConfigError("; ".join(errors))
        return self


def _nested(f: dataclasses.Field) -> type | None:
    """The dataclass type of a nested config field, else None."""
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if (sub := _nested(f)) is not None:
            value = value if dataclasses.is_dataclass(value) else _build(sub, {} if value is None else value)
        elif isinstance(value, tuple):
            value = list(value)
        elif type(value) is int and hints[f.name] in (float, float | None):  # 1 and 1.0: one config, one hash
            value = float(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def unknown_keys(cls: type, data: Any, prefix: str = "") -> list[str]:
    """Messages for every key of `data` that is not a field of the (nested) dataclass `cls`."""
    if not isinstance(data, dict):
        return [f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors = []
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            errors.append(f"unknown key {prefix + str(key)!r}{hint}")
            continue
        sub = _nested(fields[key])
        if sub is not None and not dataclasses.is_dataclass(value):
            errors += unknown_keys(sub, {} if value is None else value, f"{prefix}{key}.")  # `train:` alone
    return errors


MAX_SEED = 2**32 - 1
"""Largest seed that numpy's and Lightning's seeding accept."""


def seed_errors(seed: int) -> list[str]:
    """A message when `seed` is outside [0, MAX_SEED], where numpy and Lightning would raise a ValueError."""
    return [] if 0 <= seed <= MAX_SEED else [f"seed={seed}: must be in [0, {MAX_SEED}]"]


def _range(errors: list[str], name: str, value: float | None, lo: float, hi: float, hint: str = "") -> None:
    if value is not None and not (lo <= value <= hi):
        errors.append(f"{name}={value} is out of range [{lo}, {hi}]{hint}")


def validation_errors(cfg: FinetuneConfig) -> list[str]:
    """Every range/consistency problem of a config, as one message each."""
    errors: list[str] = []
    if cfg.epochs < 1:
        errors.append(f"epochs={cfg.epochs}: must be at least 1")
    if cfg.batch_size < 1:
        errors.append(f"batch_size={cfg.batch_size}: must be at least 1")
    if cfg.image_size is not None and cfg.image_size < 8:
        errors.append(f"image_size={cfg.image_size}: must be at least 8 pixels")
    if cfg.max_samples is not None and cfg.max_samples < 6:
        errors.append(f"max_samples={cfg.max_samples}: need at least 6 samples to split")
    if cfg.devices < 1 or cfg.num_nodes < 1:
        errors.append("devices and num_nodes must be at least 1")
    errors += seed_errors(cfg.seed)
    if not cfg.out.strip():
        errors.append("out is empty: name the run directory (--out DIR)")
    _range(errors, "train_fraction", cfg.train_fraction, 1e-6, 1.0)
    _range(errors, "max_bad_fraction", cfg.max_bad_fraction, 0.0, 1.0)
    if not (0 < cfg.val_fraction and 0 < cfg.test_fraction and cfg.val_fraction + cfg.test_fraction < 1):
        errors.append("val_fraction and test_fraction must be > 0 and sum to less than 1")
    t = cfg.train
    if t.lr is not None and not 0 < t.lr < math.inf:
        errors.append(f"train.lr={t.lr}: must be a finite number > 0")
    if t.weight_decay is not None and not 0 <= t.weight_decay < math.inf:  # NaN too (YAML's .nan)
        errors.append(f"train.weight_decay={t.weight_decay}: must be a finite number >= 0")
    _range(errors, "train.momentum", t.momentum, 0.0, 1.0)
    if t.eval_batch_size is not None and t.eval_batch_size < 1:
        errors.append(f"train.eval_batch_size={t.eval_batch_size}: must be at least 1 "
                      "(or null for 2 x batch_size)")
    _range(errors, "train.label_smoothing", t.label_smoothing, 0.0, 0.99)
    _range(errors, "train.layer_decay", t.layer_decay, 1e-6, 1.0)
    _range(errors, "train.drop_path", t.drop_path, 0.0, 0.99)
    if not 0 <= t.warmup_epochs < math.inf or t.track_plasticity < 0 or t.precise_bn < 0:
        errors.append(f"train.warmup_epochs={t.warmup_epochs} (a finite number), train.track_plasticity and "
                      "train.precise_bn must be >= 0")
    return errors + reinit_errors(cfg.reinit)


def reinit_errors(r: ReinitConfig) -> list[str]:
    """Every range problem of a ReinitConfig (reinit.* options), as one message each."""
    errors: list[str] = []
    _range(errors, "reinit.fraction", r.fraction, 0.0, 1.0, ": a fraction of weights")
    if r.threshold < 0:
        errors.append(f"reinit.threshold={r.threshold}: must be >= 0")
    if r.layers < 1 or r.batches < 1:
        errors.append("reinit.layers and reinit.batches must be at least 1")
    if not (r.lr_scale > 0 and math.isfinite(r.lr_scale)) or r.lr_warmup_steps < 0:
        errors.append(f"reinit.lr_scale={r.lr_scale} must be a finite number > 0 and "
                      f"reinit.lr_warmup_steps={r.lr_warmup_steps} >= 0")
    if r.scope not in ("all", "auto"):
        errors.append(f"reinit.scope={r.scope!r}: valid: all, auto")
    if not (r.schedule == "once" or (r.schedule.startswith("every:") and r.schedule[6:].isdigit()
                                     and int(r.schedule[6:]) > 0)):
        errors.append(f"reinit.schedule={r.schedule!r}: use 'once' or 'every:K' with K > 0")
    return errors
