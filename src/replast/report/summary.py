"""One factual sentence group per table: what is best on average and which differences survive correction.

A difference is called significant only when the Holm-corrected p < 0.05 AND the 95% CI of Δ excludes 0.
"""

from __future__ import annotations

import math

import pandas as pd

from replast.report.labels import BASELINE

ALPHA = 0.05


def significant(row: pd.Series) -> bool:
    return significant_values(row["p_holm"], row["delta_low"], row["delta_high"])


def significant_values(p_holm: float, low: float, high: float) -> bool:
    """Holm-corrected p < ALPHA and the CI of Δ excludes 0; never when p is missing."""
    return bool(p_holm < ALPHA and not (low <= 0 <= high)) if not math.isnan(p_holm) else False


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"= {value:.3g}"


def _names(arms: list[str], limit: int = 6) -> str:
    if len(arms) <= limit:
        return ", ".join(arms)
    return ", ".join(arms[:limit]) + f" and {len(arms) - limit} more"


def sentence(table: pd.DataFrame, has_baseline: bool) -> str:
    """Summary of one arm table in plain words, stating only what its numbers show."""
    if table.empty or table["acc"].isna().all():
        return "No finished runs."
    best = table.loc[table["acc"].idxmax()]
    parts = [f"Highest mean test accuracy: {best['arm']} ({100 * best['acc']:.1f}%, n={int(best['n'])})."]
    if not has_baseline:
        return " ".join(parts + ["No finished baseline run (strategy none), so no differences were computed."])
    others = table[table["arm"] != BASELINE]
    untestable = others[others["p_holm"].isna()]
    tested = others[others["p_holm"].notna()]
    flags = [significant(row) for _, row in tested.iterrows()]
    for (_, row), flag in zip(tested.iterrows(), flags, strict=True):
        if not flag:
            continue
        direction = "higher" if row["delta"] > 0 else "lower"
        parts.append(f"{row['arm']} is {direction} than none by {100 * abs(row['delta']):.1f} pp "
                     f"(95% CI [{100 * row['delta_low']:+.1f}, {100 * row['delta_high']:+.1f}], "
                     f"Holm p {_p(row['p_holm'])}).")
    same = [str(a) for a, flag in zip(tested["arm"], flags, strict=True) if not flag]
    if same:
        parts.append(f"No significant difference from none for {_names(same)} "
                     "(Holm-corrected p ≥ 0.05 or the 95% CI of Δ contains 0).")
    if len(untestable):
        parts.append(f"Not testable (fewer than 2 seeds paired with none): {_names(list(untestable['arm']))}.")
    return " ".join(parts)
