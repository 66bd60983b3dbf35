"""Every condition at a glance: each arm's Δ vs none per condition, and in how many conditions it is
significantly higher or lower — the study-level answer that the per-condition tables give one cell at a time.
"""

from __future__ import annotations

import pandas as pd

from replast.report.labels import BASELINE, natural_key
from replast.report.summary import significant
from replast.report.tables import Condition

DELTA = "delta:"  # column prefix: one `delta:<condition>` per condition, in the order of the conditions


def overview(conds: list[Condition]) -> pd.DataFrame:
    """One row per arm: `delta:<condition>` and `significant:<condition>` per condition with a baseline,
    plus `higher` and `lower` counts; the baseline's row holds its accuracy in the `delta:` columns."""
    rows: dict[str, dict] = {}
    for cond in (c for c in conds if c.has_baseline):
        for _, r in cond.table.iterrows():
            row = rows.setdefault(str(r["arm"]), {"arm": str(r["arm"]), "higher": 0, "lower": 0})
            is_base = r["arm"] == BASELINE
            flag = not is_base and significant(r)
            row[f"{DELTA}{cond.title}"] = r["acc"] if is_base else r["delta"]
            row[f"significant:{cond.title}"] = flag
            row["higher"] += int(flag and r["delta"] > 0)
            row["lower"] += int(flag and r["delta"] < 0)
    arms = sorted(rows, key=lambda a: (a != BASELINE, natural_key(a)))
    return pd.DataFrame([rows[a] for a in arms])


def condition_titles(table: pd.DataFrame) -> list[str]:
    """The conditions an overview covers, in its column order."""
    return [c.removeprefix(DELTA) for c in table.columns if c.startswith(DELTA)]
