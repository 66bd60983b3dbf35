"""Every condition at a glance: each arm's Δ vs none per condition, and in how many conditions it is
significantly higher or lower — the study-level answer that the per-condition tables give one cell at a time.
"""

from __future__ import annotations

import math

import pandas as pd

from replast.report.blocks import Block, Heading, Paragraph, Table
from replast.report.labels import BASELINE, natural_key
from replast.report.summary import significant
from replast.report.tables import Condition

NOTE = ("Δ vs none in percentage points per condition (the none row: its test accuracy in %); * = significant "
        "as in the tables below (Holm-corrected p < 0.05 and the 95% CI of Δ excludes 0); — = not run there, or too few seeds paired with none. "
        "Higher / lower = in how many conditions the arm is significantly above / below none.")


def overview(conds: list[Condition]) -> pd.DataFrame:
    """One row per arm: `delta:<condition>` and `significant:<condition>` per condition with a baseline,
    plus `higher` and `lower` counts; the baseline's row holds its accuracy in the `delta:` columns."""
    rows: dict[str, dict] = {}
    compared = [c for c in conds if c.has_baseline]
    for cond in compared:
        for _, r in cond.table.iterrows():
            row = rows.setdefault(str(r["arm"]), {"arm": str(r["arm"]), "higher": 0, "lower": 0})
            is_base = r["arm"] == BASELINE
            flag = not is_base and significant(r)
            row[f"delta:{cond.title}"] = r["acc"] if is_base else r["delta"]
            row[f"significant:{cond.title}"] = flag
            row["higher"] += int(flag and r["delta"] > 0)
            row["lower"] += int(flag and r["delta"] < 0)
    arms = sorted(rows, key=lambda a: (a != BASELINE, natural_key(a)))
    return pd.DataFrame([rows[a] for a in arms])


def _cell(value: float, flag: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:+.1f}{'*' if flag else ''}"


def blocks(conds: list[Condition]) -> list[Block]:
    """The overview section; nothing when fewer than two conditions have a baseline to compare with."""
    table = overview(conds)
    titles = [c.title for c in conds if c.has_baseline]
    if len(titles) < 2:
        return []
    rows = []
    for _, r in table.iterrows():
        if r["arm"] == BASELINE:
            cells = [f"{100 * r[f'delta:{t}']:.1f}%" if not pd.isna(r.get(f"delta:{t}")) else "—" for t in titles]
            rows.append([f"{BASELINE} (test acc)", *cells, "", ""])
            continue
        cells = [_cell(r.get(f"delta:{t}", math.nan), bool(r.get(f"significant:{t}", False))) for t in titles]
        rows.append([r["arm"], *cells, str(int(r["higher"])), str(int(r["lower"]))])
    return [Heading(2, "All conditions at a glance"), Paragraph(NOTE),
            Table(["Strategy", *titles, "Higher", "Lower"], rows)]
