"""Resolve options against a model: eligible layers, protected modules, per-layer fractions, blocks.

Everything that can be wrong about the options for this model is found here, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from replast.errors import ConfigError
from replast.reinit.blocks import block_ids
from replast.reinit.layers import candidate_layers, eligible_layers, resolve_patterns
from replast.reinit.options import Options


@dataclass(frozen=True)
class Target:
    layers: list[str]
    exclude: list[str]  # resolved patterns: modules never modified
    fractions: list[float]
    blocks: list[int]
    n_blocks: int


def resolve_target(model: nn.Module, o: Options) -> Target:
    exclude = resolve_patterns(model, o.exclude, "exclude")
    include = resolve_patterns(model, o.include, "include")
    layers = eligible_layers(model, exclude, include, o.scope)
    candidates = candidate_layers(model, exclude)
    ids, n_blocks = block_ids(model, candidates)
    block_of = dict(zip(candidates, ids, strict=True))
    if o.selection in ("top-layers", "bottom-layers") and o.layers > n_blocks:
        raise ConfigError(f"layers={o.layers} but the model has only {n_blocks} blocks; use 1..{n_blocks}")
    scope = o.scope if isinstance(o.scope, Mapping) else {}
    fractions = [float(scope.get(n, o.fraction)) for n in layers]
    return Target(layers, exclude, fractions, [block_of[n] for n in layers], n_blocks)
