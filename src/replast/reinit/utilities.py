"""Utility measures: pure functions from layer statistics to scores (low = re-initialize).

Weight-level rules return the weight's shape, unit-level rules one score per unit. Statistics come
from `collect` (E over batches of |g| and g², mean |activation| per unit) and `pairing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from replast.reinit.registry import register_utility

TINY = 1e-30


@dataclass(frozen=True)
class LayerStats:
    """What a utility may read about one layer. `grad_abs` = E_b|g_b|, `grad_sq` = E_b[g_b²]
    (batch gradients of the cross-entropy), `act` = mean |activation| per unit, `out_abs` = sum of
    |outgoing weights| per unit."""

    weight: Tensor
    grad_abs: Tensor | None = None
    grad_sq: Tensor | None = None
    act: Tensor | None = None
    out_abs: Tensor | None = None


def _get(stats: LayerStats, field: str) -> Tensor:
    value = getattr(stats, field)
    assert value is not None, f"utility needs {field}; the engine must collect it"
    return value


@register_utility("magnitude")
def magnitude(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """|w|"""
    return stats.weight.detach().abs()


@register_utility("gradient", needs=("grad",))
def gradient(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """E|g|: mean absolute batch gradient"""
    return _get(stats, "grad_abs").clone()


@register_utility("taylor", needs=("grad",))
def taylor(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """E|w·g|: first-order Taylor estimate of the loss change when the weight is removed"""
    return stats.weight.detach().abs() * _get(stats, "grad_abs")


@register_utility("fisher", needs=("grad",))
def fisher(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """½·E[g²]·w²: empirical-Fisher (second-order) saliency"""
    return 0.5 * _get(stats, "grad_sq") * stats.weight.detach().square()


@register_utility("snip", needs=("grad",), network_scale=True)
def snip(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """E|w·g| ranked over the whole network by `global` (SNIP connection sensitivity)"""
    # SNIP divides by the network's total, which changes no rank; within a layer this is taylor's ranking
    return taylor(stats, generator)


@register_utility("activation", needs=("act",), level="unit")
def activation(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """mean |activation| of the unit"""
    return _get(stats, "act").clone()


@register_utility("redo", needs=("act",), level="unit")
def redo(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """ReDo: unit mean |activation| / layer mean (dormant when <= tau)"""
    act = _get(stats, "act")
    return act / act.mean().clamp_min(TINY)


@register_utility("cbp", needs=("act",), level="unit")
def cbp(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """continual backprop: unit mean |activation| × sum |outgoing weights|"""
    return _get(stats, "act") * _get(stats, "out_abs")


@register_utility("random")
def random(stats: LayerStats, generator: torch.Generator) -> Tensor:
    """uniform random scores from the seeded generator (control)"""
    return torch.rand(stats.weight.shape, generator=generator).to(stats.weight.device)
