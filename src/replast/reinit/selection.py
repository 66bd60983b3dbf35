"""Selections: pure functions from per-layer scores to per-layer boolean masks (True = reset).

Counts are exact: per-layer and global take the k = round(p·n) lowest scores with `topk`, so ties
never change the count. `threshold` and `global` compare scores normalized by the layer mean (`global`
ranks them as they are when `normalize_layers` is off: utilities whose scale is the network's, SNIP).
`eligible` (one bool mask per layer, or None for all): per-layer and global rank ineligible entries last
(`ranked`), counts and layer means as before; the engine then drops them from any selection's masks
(`allowed`), so fewer may be chosen (CBP's maturity).
top-layers / bottom-layers ignore scores and take whole blocks (see `blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import torch
from torch import Tensor

from replast.reinit.registry import register_selection

TINY = 1e-30


@dataclass(frozen=True)
class SelectionInput:
    """Per-layer lists align with the score list; `blocks[i]` is layer i's block index."""

    fractions: Sequence[float]
    fraction: float = 0.1
    threshold: float = 0.1
    layers: int = 1
    blocks: Sequence[int] = ()
    n_blocks: int = 1
    normalize_layers: bool = True
    eligible: Sequence[Tensor] | None = None

    def allowed(self, masks: list[Tensor]) -> list[Tensor]:
        """`masks` without the entries that are not eligible."""
        if self.eligible is None:
            return masks
        return [m & e.to(m.device) for m, e in zip(masks, self.eligible, strict=True)]

    def ranked(self, scores: Sequence[Tensor]) -> list[Tensor]:
        """`scores` with ineligible entries last in any ranking (then dropped by `allowed`)."""
        if self.eligible is None:
            return list(scores)
        return [s.float().masked_fill(~e.to(s.device), float("inf")) for s, e in zip(scores, self.eligible,
                                                                                    strict=True)]


def count(fraction: float, n: int) -> int:
    """round(p·n), halves up, so p=0.5 of 3 is 2 everywhere (Python's round would give 2 or 1). p·n is taken
    with p as written (its shortest repr): 0.35 of 90 is 31.5, so 32, where the float product 31.4999... gives 31."""
    exact = Decimal(repr(float(fraction))) * int(n)
    return min(n, int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)))


def lowest(scores: Tensor, k: int) -> Tensor:
    """Bool mask (scores' shape) of the k lowest scores."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten().float(), k, largest=False, sorted=False).indices] = True
    return mask.view(scores.shape)


def normalized(scores: Tensor) -> Tensor:
    """score / layer mean (ReDo's normalization); an all-zero layer normalizes to all zeros."""
    scores = scores.float()
    return scores / scores.mean().clamp_min(TINY)


@register_selection("per-layer")
def per_layer(scores: Sequence[Tensor], spec: SelectionInput) -> list[Tensor]:
    """the fraction p (per layer, from scope) of lowest scores of each layer"""
    ranked = spec.ranked(scores)
    return [lowest(s, count(p, s.numel())) for s, p in zip(ranked, spec.fractions, strict=True)]


@register_selection("global")
def global_(scores: Sequence[Tensor], spec: SelectionInput) -> list[Tensor]:
    """the fraction p of lowest layer-normalized scores over all layers together"""
    scale = normalized if spec.normalize_layers else Tensor.float
    flat = torch.cat([s.flatten().to(scores[0].device) for s in spec.ranked([scale(s) for s in scores])])
    mask = lowest(flat, count(spec.fraction, flat.numel()))
    parts = mask.split([s.numel() for s in scores])
    return [m.view(s.shape).to(s.device) for m, s in zip(parts, scores, strict=True)]


@register_selection("threshold")
def threshold(scores: Sequence[Tensor], spec: SelectionInput) -> list[Tensor]:
    """every score with score / layer mean <= tau (ReDo)"""
    return [normalized(s) <= spec.threshold for s in scores]


def _blocks(scores: Sequence[Tensor], chosen: set[int], spec: SelectionInput) -> list[Tensor]:
    ids = spec.blocks
    return [torch.full_like(s, b in chosen, dtype=torch.bool) for s, b in zip(scores, ids, strict=True)]


@register_selection("top-layers")
def top_layers(scores: Sequence[Tensor], spec: SelectionInput) -> list[Tensor]:
    """every weight of the last L blocks (nearest the head)"""
    return _blocks(scores, set(range(spec.n_blocks - spec.layers, spec.n_blocks)), spec)


@register_selection("bottom-layers")
def bottom_layers(scores: Sequence[Tensor], spec: SelectionInput) -> list[Tensor]:
    """every weight of the first L blocks (nearest the input)"""
    return _blocks(scores, set(range(spec.layers)), spec)
