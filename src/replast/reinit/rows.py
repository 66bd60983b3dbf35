"""Build the report rows: one per eligible layer weight, plus one per other parameter a unit reset
touched (biases, BatchNorm affine, tied depthwise filters, zeroed outgoing weights)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from replast.reinit.engine import Scored
from replast.reinit.report import LayerRow
from replast.transfer import host_values


def param_norms(params: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, float]:
    # one multi-tensor kernel for all norms (what clip_grad_norm_ uses), not one launch per layer
    norms = torch._foreach_norm([params[n].detach().float() for n in names]) if names else []
    return dict(zip(names, host_values(norms), strict=True))


def _note(layer: str, scored: Scored, level: str, because: set[str] | None) -> str:
    parts = []
    um = scored.unit_maps.get(layer)
    if layer in scored.skipped:
        parts.append(f"left alone, units not paired: {um.reason}")
    elif level == "unit" and um is not None and not um.paired:
        parts.append(f"fell back to weight level: {um.reason}")
    if because:
        parts.append(f"changed with units of {', '.join(sorted(because))}")
    return "; ".join(parts)


def build_rows(layers: Sequence[str], scored: Scored, level: str, masks: Mapping[str, Tensor],
               before: Mapping[str, float], after: Mapping[str, float],
               notes: Mapping[str, set[str]]) -> list[LayerRow]:
    score_of = dict(zip(layers, scored.scores, strict=True))
    counts = [int(n) for n in host_values([m.sum() for m in masks.values()])]
    scored_params = [p for p in masks if p.rpartition(".")[0] in score_of and p.endswith(".weight")]
    stats = host_values([f(score_of[p.rpartition(".")[0]].float()) for p in scored_params
                         for f in (torch.mean, torch.amin, torch.amax)])
    stats_of = {p: stats[3 * i:3 * i + 3] for i, p in enumerate(scored_params)}
    rows = []
    for (param, mask), n in zip(masks.items(), counts, strict=True):
        layer = param.rpartition(".")[0]
        numel = mask.numel()
        row = LayerRow(layer, param, numel, n, n / numel if numel else 0.0, before[param], after[param],
                       level=scored.levels.get(layer, level),
                       note=_note(layer, scored, level, notes.get(param)))
        if param in stats_of:
            row.utility_mean, row.utility_min, row.utility_max = stats_of[param]
        rows.append(row)
    return rows
