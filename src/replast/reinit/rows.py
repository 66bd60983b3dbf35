"""Build the report rows: one per eligible layer weight, plus one per other parameter a unit reset
touched (biases, BatchNorm affine, tied depthwise filters, zeroed outgoing weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from replast.reinit.engine import Scored
from replast.reinit.report import LayerRow


def _note(layer: str, scored: Scored, level: str, because: set[str] | None) -> str:
    parts = []
    um = scored.unit_maps.get(layer)
    if level == "unit" and um is not None and not um.paired:
        parts.append(f"fell back to weight level: {um.reason}")
    if because:
        parts.append(f"changed with units of {', '.join(sorted(because))}")
    return "; ".join(parts)


def build_rows(layers: Sequence[str], scored: Scored, level: str, masks: Mapping[str, Tensor],
               before: Mapping[str, float], after: Mapping[str, float],
               notes: Mapping[str, set[str]]) -> list[LayerRow]:
    score_of = dict(zip(layers, scored.scores, strict=True))
    rows = []
    for param, mask in masks.items():
        layer = param.rpartition(".")[0]
        n, numel = int(mask.sum()), mask.numel()
        row = LayerRow(layer, param, numel, n, n / numel if numel else 0.0, before[param], after[param],
                       level=scored.levels.get(layer, level),
                       note=_note(layer, scored, level, notes.get(param)))
        if layer in score_of and param.endswith(".weight"):
            s = score_of[layer].float()
            row.utility_mean, row.utility_min, row.utility_max = float(s.mean()), float(s.min()), float(s.max())
        rows.append(row)
    return rows
