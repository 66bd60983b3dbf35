"""Strategies: named compositions of utility × selection × scheme × level, not classes.

Each maps the user's options to the options actually run (None = leave the model alone); options a
strategy does not fix (fraction, threshold, layers, shrink, perturb, exclude, ...) stay the user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from replast.reinit.options import Options
from replast.reinit.registry import register_strategy


def _whole_layers(o: Options) -> Mapping[str, float] | str:
    """A scope mapping still restricts the layers, but every layer in it is taken whole."""
    return {name: 1.0 for name in o.scope} if isinstance(o.scope, Mapping) else o.scope


def _every_weight(o: Options, scheme: str) -> Options:
    """All eligible weights of every layer get `scheme` (the whole-network baselines)."""
    return replace(o, utility="magnitude", selection="per-layer", fraction=1.0, scheme=scheme, level="weight",
                   scope=_whole_layers(o))


@register_strategy("none")
def none(o: Options) -> Options | None:
    """no re-initialization"""
    return None


@register_strategy("targeted")
def targeted(o: Options) -> Options:
    """utility × selection × scheme exactly as given"""
    return o


@register_strategy("shrink-perturb")
def shrink_perturb(o: Options) -> Options:
    """every eligible weight becomes shrink·w + perturb·init (Ash & Adams 2020)"""
    return _every_weight(o, "shrink-perturb")


@register_strategy("redo")
def redo(o: Options) -> Options:
    """ReDo: units with activation / layer mean <= threshold get fresh incoming, zero outgoing weights"""
    return replace(o, utility="redo", selection="threshold", scheme="init", level="unit", zero_outgoing=True)


@register_strategy("cbp")
def cbp(o: Options) -> Options:
    """continual backprop: the lowest-utility fraction of units, fresh incoming, zero outgoing weights"""
    return replace(o, utility="cbp", selection="per-layer", scheme="init", level="unit", zero_outgoing=True)


@register_strategy("reinit-top-layers")
def reinit_top_layers(o: Options) -> Options:
    """the last `layers` blocks from their initializer"""
    return replace(o, utility="magnitude", selection="top-layers", scheme="init", level="weight")


@register_strategy("reinit-all")
def reinit_all(o: Options) -> Options:
    """every eligible weight from its initializer (training from scratch, head aside)"""
    return _every_weight(o, "init")


@register_strategy("fire")
def fire(o: Options) -> Options:
    """every eligible weight replaced by its nearest orthogonal matrix (FIRE)"""
    return _every_weight(o, "orthogonal")
