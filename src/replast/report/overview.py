"""Every condition at a glance: each arm's Δ vs none per condition, in how many conditions it is
significantly higher or lower, and its pooled Δ over all conditions — the study-level answer that the
per-condition tables give one cell at a time.

Pooled: every seed-paired difference of every condition together, tested like one condition's arm (t CI,
paired t-test) and Holm-corrected over the arms. Pairs from different conditions are independent, so under
"no effect in any condition" the test holds; an effect that differs between conditions widens the spread of
the pooled differences, so the interval is conservative for "the average effect over these conditions". What
it pools is the conditions the study happens to hold, each weighted by its seeds.
"""

from __future__ import annotations

import pandas as pd

from replast import stats
from replast.report.labels import BASELINE, natural_key
from replast.report.summary import significant, significant_values
from replast.report.tables import METRIC, Condition, by_seed

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
    table = pd.DataFrame([rows[a] for a in arms])
    return table.join(pooled(conds), on="arm") if rows else table


def pooled(conds: list[Condition]) -> pd.DataFrame:
    """Per arm (index): the seed-paired differences to the baseline of all conditions, compared as one."""
    arm_values: dict[str, dict] = {}
    base_values: dict = {}
    for cond in (c for c in conds if c.has_baseline):
        for arm, runs in cond.runs.groupby("arm"):
            values = {(cond.title, s): v for s, v in by_seed(runs, METRIC).items()}
            (base_values if arm == BASELINE else arm_values.setdefault(str(arm), {})).update(values)
    rows = {}
    for arm, values in arm_values.items():
        r = stats.paired_comparison(values, base_values)
        rows[arm] = [r.n, r.mean_diff, r.low, r.high, r.p_value]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["pooled_n", "pooled_delta", "pooled_delta_low",
                                                                  "pooled_delta_high", "pooled_p"])
    table["pooled_p_holm"] = stats.holm(table["pooled_p"].tolist())
    table["pooled_significant"] = [significant_values(*v) for v in zip(
        table["pooled_p_holm"], table["pooled_delta_low"], table["pooled_delta_high"], strict=True)]
    return table


def condition_titles(table: pd.DataFrame) -> list[str]:
    """The conditions an overview covers, in its column order."""
    return [c.removeprefix(DELTA) for c in table.columns if c.startswith(DELTA)]
