"""Tensor helpers between the three views of a layer: weights, output rows / input channels, units.

Pure functions: a unit owns output rows (`rows[i]` = unit of row i) of its layer and input channels
(`cols[c]` = unit of channel c) of the layer it feeds. Grouped convs read input channel c through
column c mod (in/groups) of the rows of group c div (in/groups).
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_by_unit(values: Tensor, index: Tensor, n_units: int, reduce: str = "mean") -> Tensor:
    """Mean (or sum) of `values` (one per row or channel) over the entries of each unit."""
    index = index.to(values.device)
    sums = torch.zeros(n_units, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    if reduce == "sum":
        return sums
    counts = torch.bincount(index, minlength=n_units).clamp_min(1).to(values.dtype)
    return sums / counts


def weight_to_units(scores: Tensor, rows: Tensor, n_units: int) -> Tensor:
    """Unit score = mean score of its incoming weights (all rows of the unit)."""
    return group_by_unit(scores.flatten(1).mean(1), rows, n_units)


def units_to_weight(unit_values: Tensor, rows: Tensor, shape: torch.Size) -> Tensor:
    """Give every weight of a row its unit's value (shape of the weight)."""
    per_row = unit_values[rows.to(unit_values.device)]
    return per_row.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


def row_mask(row_selected: Tensor, shape: torch.Size) -> Tensor:
    """Bool mask of the weight entries in the selected output rows."""
    return row_selected.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


def input_channel_mask(channel_selected: Tensor, shape: torch.Size, groups: int) -> Tensor:
    """Bool mask of the weight entries that read the selected input channels (outgoing weights)."""
    out, per_group = shape[0], shape[1]
    sel = channel_selected.view(groups, per_group)
    group_of_row = torch.arange(out, device=sel.device) // (out // groups)
    mask = sel[group_of_row]  # [out, in/groups]
    return mask.view(out, per_group, *([1] * (len(shape) - 2))).expand(shape).clone()


def input_channel_abs_sum(weight: Tensor, groups: int) -> Tensor:
    """Sum of |w| over everything each input channel feeds (CBP's outgoing-weight magnitude)."""
    out, per_group = weight.shape[0], weight.shape[1]
    per_entry = weight.detach().abs().flatten(2).sum(2) if weight.dim() > 2 else weight.detach().abs()
    return per_entry.view(groups, out // groups, per_group).sum(1).flatten()
