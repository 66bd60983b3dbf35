"""Score every eligible layer at its level: weight scores have the weight's shape, unit scores one
entry per unit. Weight utilities are averaged over a unit's incoming weights; unit utilities are
broadcast to the weights of the unit when the layer is handled at weight level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from replast.reinit.collect import ActSite, Stats
from replast.reinit.pairing import UnitMap
from replast.reinit.registry import Utility
from replast.reinit.units import group_by_unit, input_channel_abs_sum, units_to_weight, weight_to_units
from replast.reinit.utilities import LayerStats


def activation_sites(unit_maps: dict[str, UnitMap]) -> dict[str, ActSite]:
    """Paired units are read at the next weighted layer's input (post-activation); others at their
    own output (pre-normalization)."""
    return {n: ActSite(um.site, "in", um.site_cols, um.n_units) if um.paired and um.site
            else ActSite(n, "out", um.rows, um.n_units) for n, um in unit_maps.items()}


def _outgoing_abs(um: UnitMap, modules: dict[str, nn.Module], weight: Tensor) -> Tensor:
    if not (um.paired and um.consumer):  # unknown outgoing weights: activation alone decides
        return torch.ones(um.n_units, device=weight.device)
    # the consumer's columns: the weights a reset zeroes (past a tied depthwise conv, not its filter)
    consumer = modules[um.consumer]
    per_channel = input_channel_abs_sum(consumer.weight, getattr(consumer, "groups", 1)).float()
    return group_by_unit(per_channel, um.consumer_cols, um.n_units, reduce="sum")


def layer_stats(name: str, modules: dict[str, nn.Module], stats: Stats | None, um: UnitMap,
                utility: Utility) -> LayerStats:
    weight = modules[name].weight.detach()
    if stats is None:
        return LayerStats(weight)
    return LayerStats(
        weight,
        stats.grad_abs.get(name),
        stats.grad_sq.get(name),
        stats.act.get(name),
        _outgoing_abs(um, modules, weight) if utility.needs_act else None,
    )


def score_layer(utility: Utility, ls: LayerStats, um: UnitMap, level: str, generator: torch.Generator) -> Tensor:
    raw = utility.fn(ls, generator).float()
    if utility.level == "weight" and level == "unit":
        return weight_to_units(raw, um.rows, um.n_units)
    if utility.level == "unit" and level == "weight":
        return units_to_weight(raw, um.rows, ls.weight.shape)
    return raw


def score_layers(model: nn.Module, layers: Sequence[str], unit_maps: dict[str, UnitMap], stats: Stats | None,
                 utility: Utility, levels: dict[str, str], generator: torch.Generator) -> list[Tensor]:
    modules = dict(model.named_modules())
    return [score_layer(utility, layer_stats(n, modules, stats, unit_maps[n], utility), unit_maps[n],
                        levels[n], generator) for n in layers]
