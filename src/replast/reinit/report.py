"""ReinitReport: what a re-initialization changed, per layer and parameter, and what it cost.

`.masks` and `.reset_masks` ({param name: bool tensor}) stay in memory (never serialized); rows, options and timings
go to `.to_dict()` / `.to_json()` / `.to_frame()` (pandas) and to OUT/reinit_report.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class LayerRow:
    """One parameter of one layer. Utility statistics are None for parameters changed only as part
    of another layer's units (BatchNorm, tied depthwise, outgoing weights)."""

    layer: str
    param: str
    numel: int
    n_reset: int
    fraction_reset: float
    norm_before: float
    norm_after: float
    utility_mean: float | None = None
    utility_min: float | None = None
    utility_max: float | None = None
    level: str = "weight"
    note: str = ""


@dataclass
class ReinitReport:
    strategy: str
    options: dict[str, Any] = field(default_factory=dict)
    rows: list[LayerRow] = field(default_factory=list)
    total_time_s: float = 0.0
    utility_time_s: float = 0.0
    """Forward trace + utility passes (forward/backward over the batches)."""
    select_time_s: float = 0.0
    """Scoring + selection + resampling."""
    scope_time_s: float = 0.0
    """Diagnosis passes that chose the layers (`scope=auto` in the pipeline; 0 otherwise), part of the total."""
    bn_time_s: float = 0.0
    """Re-estimating stale BatchNorm statistics (a forward over the batches), part of the total."""
    bn_recomputed: dict[str, int] = field(default_factory=dict)
    """{BatchNorm name: channels whose running statistics were re-estimated}."""
    n_batches: int = 0
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)
    """Every entry written: new values, zeroed outgoing weights, reset BatchNorm channels."""
    reset_masks: dict[str, Tensor] = field(default_factory=dict, repr=False)
    """Only the entries given new values by the scheme (what `protect` should hold: zeroed outgoing weights
    were not re-initialized)."""

    @property
    def n_reset(self) -> int:
        return sum(r.n_reset for r in self.rows)

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "options": self.options,
            "n_reset": self.n_reset,
            "numel": self.numel,
            "total_time_s": self.total_time_s,
            "utility_time_s": self.utility_time_s,
            "select_time_s": self.select_time_s,
            "scope_time_s": self.scope_time_s,
            "bn_time_s": self.bn_time_s,
            "bn_recomputed": self.bn_recomputed,
            "n_batches": self.n_batches,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_frame(self) -> Any:
        import pandas as pd  # optional at import time: only reports need it

        columns = list(LayerRow.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.rows], columns=columns)
