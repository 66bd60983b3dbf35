"""Which layers may be re-initialized: Conv/Linear weights, minus the heads and `exclude` patterns.

Also defines "blocks" for the top-layers / bottom-layers selections. Pure functions of a model;
layer identity is the `named_modules()` name everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

from torch import nn

from replast.errors import ConfigError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONTAINERS = (nn.Sequential, nn.ModuleList)
HEAD_ALIAS = "head"


def is_weighted(module: nn.Module) -> bool:
    """A Conv/Linear with a materialized, non-empty weight (lazy and zero-size modules are skipped)."""
    weight = getattr(module, "weight", None)
    return isinstance(module, WEIGHTED) and isinstance(weight, nn.Parameter) and weight.dim() > 0 \
        and not isinstance(weight, nn.parameter.UninitializedParameter) and weight.numel() > 0


def head_name(model: nn.Module) -> str | None:
    """The classification head: timm's pretrained_cfg['classifier'], torchvision MobileNetV2's
    `classifier.1`, else the last nn.Linear. Works when the classifier is wrapped (e.g. `model.`)."""
    heads = head_names(model)
    return heads[0] if heads else None


def head_names(model: nn.Module) -> list[str]:
    """Every classification head: timm's distilled ViTs (DeiT, LeViT) list two, `head` and `head_dist`,
    whose outputs are averaged."""
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        cfg = getattr(module, "pretrained_cfg", None)
        classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
        if isinstance(classifier, str):
            return [dot + classifier]
        if isinstance(classifier, (tuple, list)):
            inside = {name for name, _ in module.named_modules()}
            found = [dot + c for c in classifier if isinstance(c, str) and c in inside]
            if found:
                return found
        if any(c.__module__ == "torchvision.models.mobilenetv2" and c.__name__ == "MobileNetV2"
               for c in type(module).__mro__):
            return [dot + "classifier.1"]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """A pattern matches a module or any of its ancestors, so 'blocks.0' covers its layers."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def resolve_patterns(model: nn.Module, patterns: Sequence[str], what: str) -> list[str]:
    """Replace the 'head' alias by the head's name; warn for patterns that match no module, and raise when
    no include pattern matches any (no layer could be eligible then)."""
    names = [n for n, _ in model.named_modules() if n]
    out, unmatched = [], []
    for pattern in patterns:
        expanded = [pattern]
        if pattern == HEAD_ALIAS:  # 'head' names every head (a distilled ViT's head_dist too)
            heads = head_names(model)
            expanded = [*([pattern] if pattern in names else []), *(h for h in heads if h != pattern)]
            if not expanded:
                warnings.warn("exclude 'head': the model has no nn.Linear head to exclude", stacklevel=4)
                continue
        for pattern in expanded:
            if not any(_matches(n, [pattern]) for n in names):
                unmatched.append(pattern)
            out.append(pattern)
    if what == "include" and out and len(unmatched) == len(out):
        raise ConfigError(f"include patterns {unmatched} match no module of the model; use module names "
                          "from model.named_modules() (fnmatch patterns, e.g. 'blocks.5*')")
    for pattern in unmatched:
        warnings.warn(f"{what} pattern {pattern!r} matches no module of the model", stacklevel=4)
    return out


def layer_aliases(model: nn.Module) -> dict[str, list[str]]:
    """{layer: names of every module holding its weight} for each weighted layer, in named_modules order.
    A weight held by several modules (tied) is one layer, under the name named_parameters() gives it: the
    name edits and reports are keyed by."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name)
    param_name = {id(p): n for n, p in model.named_parameters()}
    return {n: holders[id(m.weight)] for n, m in model.named_modules()
            if is_weighted(m) and param_name[id(m.weight)] == (f"{n}.weight" if n else "weight")}


def candidate_layers(model: nn.Module, exclude: Sequence[str]) -> list[str]:
    """All weighted layers not excluded (before include/scope), in named_modules order; a tied weight is
    excluded when any module holding it is."""
    return _not_excluded(layer_aliases(model), exclude)


def _not_excluded(aliases: Mapping[str, list[str]], exclude: Sequence[str]) -> list[str]:
    return [n for n, names in aliases.items() if not any(_matches(a, exclude) for a in names)]


def eligible_layers(model: nn.Module, exclude: Sequence[str], include: Sequence[str],
                    scope: str | Mapping[str, float]) -> list[str]:
    """Layers the selection may touch; raises ConfigError when there are none."""
    aliases = layer_aliases(model)  # one walk of the model for exclude, include and scope
    candidates = _not_excluded(aliases, exclude)
    layers = candidates
    if include:  # a tied weight is included by the name of any module holding it
        layers = [n for n in layers if any(_matches(a, include) for a in aliases[n])]
    if isinstance(scope, Mapping):
        unknown = sorted(set(scope) - set(candidates))
        if unknown:
            raise ConfigError(f"scope names layers that are not eligible Conv/Linear layers: {unknown}; "
                              "use names from model.named_modules() that are not excluded")
        layers = [n for n in layers if n in scope]
    if not layers:
        raise ConfigError("no eligible layers: every Conv/Linear layer is excluded or outside include/scope; "
                          "loosen exclude/include/scope")
    return layers


def is_protected(name: str, exclude: Sequence[str]) -> bool:
    """Excluded modules are never modified, not even as a unit's BatchNorm or outgoing layer."""
    return _matches(name, exclude)
