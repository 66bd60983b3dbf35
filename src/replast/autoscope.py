"""Pick which layers to re-initialize by comparing plasticity on downstream vs. reference data.

    scope = choose_layers(model, train_batches, reference_batches(prep, 128))
    scope.fractions  # {} when no layer is markedly worse downstream: do no harm

A Conv/Linear layer is chosen when its plasticity score (`replast.diagnostics.plasticity_score`) is more
than `margin` higher on the downstream data; its fraction is the excess, capped at `max_fraction`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn

from replast.diagnosis import DiagnosisReport, diagnose
from replast.errors import ConfigError
from replast.probe import UNIT_LAYERS, find_head
from replast.reinit import distributed

MARGIN = 0.1
"""Score excess (downstream - reference) a layer needs before it is touched; the score is a mean of three
fractions in [0, 1], so 0.1 is e.g. 30% more dormant units with the other terms unchanged."""
MAX_FRACTION = 0.3
"""Largest share of a layer's units that is ever proposed for re-initialization."""


@dataclass
class AutoScope:
    """Per-layer fractions to re-initialize, the sentence that explains them and the comparison table."""

    fractions: dict[str, float]
    reason: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def choose_against_photos(model: nn.Module, batches: list, data, batch_size: int, seed: int) -> AutoScope:
    """`choose_layers` against the natural photos prepared as `data` is (its preprocessing and image size):
    what `--reinit.scope auto` runs, in `finetune` and in `replast reinit`."""
    from replast.reference import reference_batches  # lazy: it loads scikit-image's photos

    reference = reference_batches(data.preprocessing, data.image_size, batch_size=batch_size, seed=seed)
    return choose_layers(model, batches, reference)


def choose_layers(
    model: nn.Module,
    batches: Iterable,
    reference_batches: Iterable,
    *,
    margin: float = MARGIN,
    max_fraction: float = MAX_FRACTION,
    num_batches: int = 8,
    exclude_head: bool = True,
) -> AutoScope:
    """Diagnose both data sets (pseudo-labels = the model's argmax on both, so only the inputs differ)
    and return the Conv/Linear layers markedly more saturated downstream, with fraction = min(excess, cap).

    Under torch.distributed every rank gets rank 0's choice: ranks diagnose different batches, and
    different fractions would give different masks (the run stops with "masks differ across ranks").
    """
    if not (0 <= margin < 1) or not (0 < max_fraction <= 1):
        raise ConfigError(
            f"margin={margin}, max_fraction={max_fraction}: need 0 <= margin < 1 and 0 < max_fraction <= 1"
        )
    down = diagnose(model, batches, num_batches=num_batches, labels="argmax")
    ref = diagnose(model, reference_batches, num_batches=num_batches, labels="argmax")
    head = find_head(model) if exclude_head else None
    table = compare(down, ref, model, head)
    excess = table["excess"]
    chosen = table[excess > margin]
    fractions = {r.layer: round(min(max_fraction, r.excess), 4) for r in chosen.itertuples()}
    table["fraction"] = table["layer"].map(fractions).fillna(0.0)
    return _from_rank0(AutoScope(fractions, _reason(table, fractions, margin), table))


def _from_rank0(scope: AutoScope) -> AutoScope:
    """Rank 0's scope on every rank (the scope itself when no process group is running)."""
    if not distributed.active():
        return scope
    box = [scope]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def compare(down: DiagnosisReport, ref: DiagnosisReport, model: nn.Module, head: str | None) -> pd.DataFrame:
    """One row per Conv/Linear layer (head excluded): scores and dormancy on both data sets, excess."""
    units = {n for n, m in model.named_modules() if isinstance(m, UNIT_LAYERS) and n != head}
    cols = [
        "layer",
        "depth",
        "plasticity_score",
        "dormant_fraction",
        "small_grad_fraction",
        "grad_to_weight_rel",
    ]
    d = down.to_frame().query("kind == 'param'")[cols]
    r = ref.to_frame().query("kind == 'param'")[cols].drop(columns="depth")
    t = d[d["layer"].isin(units)].merge(r, on="layer", suffixes=("_downstream", "_reference"))
    t["excess"] = (t["plasticity_score_downstream"] - t["plasticity_score_reference"]).fillna(-math.inf)
    return t.sort_values("depth").reset_index(drop=True)


def _reason(table: pd.DataFrame, fractions: dict[str, float], margin: float) -> str:
    if table.empty:
        return "no Conv/Linear layer besides the head to compare: nothing to re-initialize"
    worst = table.loc[table["excess"].idxmax()]
    if not fractions:
        return (
            f"no layer is more than {margin:g} more saturated on the downstream data than on the reference "
            f"(largest excess {worst.excess:.3f} at {worst.layer!r}): leaving the pretrained weights as they are"
        )
    return (
        f"{len(fractions)} of {len(table)} layers are more than {margin:g} more saturated downstream than on "
        f"the reference (largest excess {worst.excess:.3f} at {worst.layer!r}); each gets a fraction equal to "
        f"its excess, capped"
    )
