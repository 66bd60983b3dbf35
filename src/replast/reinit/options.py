"""Options of one re-initialization, validated before the model is touched.

Field names are those of `replast.config.ReinitConfig` (plus `seed`); the trainer-only fields
lr_scale, lr_warmup_steps and schedule are accepted by `restore_plasticity` and ignored there.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from replast.errors import ConfigError
from replast.reinit.registry import SCHEMES, SELECTIONS, STRATEGIES, UTILITIES

TRAINER_ONLY = frozenset({"lr_scale", "lr_warmup_steps", "schedule"})
NUMBERS = {"fraction": float, "threshold": float, "shrink": float, "perturb": float,
           "seed": int, "layers": int, "batches": int}
FLAGS = ("zero_outgoing", "recompute_bn")


@dataclass(frozen=True)
class Options:
    strategy: str = "targeted"
    utility: str = "taylor"
    selection: str = "per-layer"
    fraction: float = 0.1
    scheme: str = "init"
    exclude: tuple[str, ...] = ("head",)
    seed: int = 0
    threshold: float = 0.1
    layers: int = 1
    level: str = "weight"
    zero_outgoing: bool = False
    unpaired: str = "weight"
    batches: int = 8
    shrink: float = 0.4
    perturb: float = 0.1
    scope: str | Mapping[str, float] = "all"
    include: tuple[str, ...] = ()
    recompute_bn: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["exclude"], out["include"] = list(self.exclude), list(self.include)
        out["scope"] = dict(self.scope) if isinstance(self.scope, Mapping) else self.scope
        return out


def check_unknown(extra: Mapping[str, Any]) -> None:
    """Unknown keyword options are an error (with the closest valid name)."""
    valid = [f.name for f in fields(Options)] + sorted(TRAINER_ONLY)
    bad = []
    for key in extra:
        if key not in TRAINER_ONLY:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            bad.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if bad:
        raise ConfigError(f"unknown re-initialization option(s) {', '.join(bad)}; valid: {', '.join(valid)}")


def _range_errors(o: Options) -> list[str]:
    errors = []
    if not 0.0 <= o.fraction <= 1.0:
        errors.append(f"fraction={o.fraction} is out of range [0, 1]")
    if o.threshold < 0:
        errors.append(f"threshold={o.threshold} must be >= 0")
    if o.layers < 1 or o.batches < 1:
        errors.append(f"layers={o.layers} and batches={o.batches} must be at least 1")
    errors += [f"{k}={v} must be a finite number" for k, v in
               (("threshold", o.threshold), ("shrink", o.shrink), ("perturb", o.perturb)) if not math.isfinite(v)]
    if o.shrink < 0 or o.perturb < 0:
        errors.append(f"shrink={o.shrink} and perturb={o.perturb} must be >= 0")
    if o.level not in ("weight", "unit"):
        errors.append(f"level={o.level!r}: valid: unit, weight")
    if o.unpaired not in ("weight", "skip"):
        errors.append(f"unpaired={o.unpaired!r}: valid: skip, weight")
    if isinstance(o.scope, Mapping):
        bad = {k: v for k, v in o.scope.items() if not (_is_number(v) and 0.0 <= v <= 1.0)}
        if bad:
            errors.append(f"scope fractions must be in [0, 1], got {bad}")
    elif o.scope == "auto":
        errors.append("scope='auto' is resolved by the pipeline (replast.autoscope.choose_layers); "
                      "pass the {layer: fraction} mapping it returns")
    elif o.scope != "all":
        errors.append(f"scope={o.scope!r}: use 'all' or a {{layer name: fraction}} mapping")
    return errors


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _typed(known: dict[str, Any]) -> dict[str, Any]:
    """Numbers cast to their field's type (numpy scalars, 3.0 for an int), once checked to be numbers."""
    errors = []
    for key, kind in NUMBERS.items():
        if key not in known:
            continue
        value = known[key]
        if not _is_number(value):
            errors.append(f"{key}={value!r} is not a number")
        elif kind is int and not float(value).is_integer():
            errors.append(f"{key}={value!r} is not a whole number")
        else:
            known[key] = kind(value)
    for key in FLAGS:
        if key not in known:
            continue
        if known[key] in (True, False):
            known[key] = bool(known[key])
        else:
            errors.append(f"{key}={known[key]!r} must be true or false")
    if errors:
        raise ConfigError("; ".join(errors))
    return known


def make_options(**kwargs: Any) -> Options:
    """Options from keyword values (patterns may be one string), type-checked, cast and validated; unknown
    keys raise."""
    known = _typed({k: v for k, v in kwargs.items() if k in Options.__dataclass_fields__})
    check_unknown({k: v for k, v in kwargs.items() if k not in known})
    for key in ("exclude", "include"):
        if key in known:
            known[key] = (known[key],) if isinstance(known[key], str) else tuple(known[key])
    return validate(Options(**known))


def validate(o: Options) -> Options:
    """Raise UnknownNameError for a bad registry name, else one ConfigError listing every problem."""
    STRATEGIES.get(o.strategy)
    UTILITIES.get(o.utility)
    SELECTIONS.get(o.selection)
    SCHEMES.get(o.scheme)
    errors = _range_errors(o)
    if errors:
        raise ConfigError("; ".join(errors))
    return o
