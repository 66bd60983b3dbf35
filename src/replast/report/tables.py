"""Per-condition tables: accuracy with CI per arm, Δ vs the `none` baseline paired by seed with Holm-corrected
p-values, epochs to reach the baseline's final accuracy, speed-up and re-initialization overhead.

Seeds are the unit of replication: runs of one arm that share a seed (e.g. the same run on CPU and GPU merged
into one study) are averaged before any interval is computed. Epochs to a target are medians over the runs with
"never" counted as later than any epoch, so that an arm whose few lucky seeds reach the target early is not
called faster (every run trains the same number of epochs, so the median is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from replast import stats
from replast.report.labels import BASELINE, arm_labels, condition_columns, condition_titles, natural_key

METRIC = "test_acc"


@dataclass
class Condition:
    title: str
    runs: pd.DataFrame    # finished runs of this condition, with `arm` and epochs_to_* columns
    table: pd.DataFrame   # one row per arm
    has_baseline: bool


def prepare(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with `arm`, `condition` and epochs_to_95 / epochs_to_100 of the baseline's final val acc."""
    finished = results[results["status"] == "finished"].copy() if "status" in results else results.copy()
    if finished.empty:
        return finished.assign(arm=pd.Series(dtype=str), condition=pd.Series(dtype=str))
    columns = condition_columns(finished)
    finished["arm"] = arm_labels(finished)
    finished["condition"] = condition_titles(finished, columns)
    targets = stats.baseline_targets(finished, curves, ["condition"], finished["arm"] == BASELINE)
    return finished.join(targets)


def by_seed(runs: pd.DataFrame, column: str) -> dict:
    """{seed: mean of `column` over the runs of that seed}."""
    values = runs[["seed", column]].dropna() if column in runs else pd.DataFrame(columns=["seed", column])
    return values.groupby("seed")[column].mean().to_dict()


def _mean(values: pd.Series) -> float:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    return float(finite.mean()) if len(finite) else math.nan


def _epochs(runs: pd.DataFrame, column: str) -> pd.Series:
    """Per run, the epoch it reached a target (inf: never; NaN: no target known)."""
    return pd.to_numeric(runs.get(column, pd.Series(dtype=float)), errors="coerce")


def _median_epochs(runs: pd.DataFrame, column: str) -> float:
    """Median epoch at which the runs reach a target (inf = most never do); NaN where no target is known."""
    known = _epochs(runs, column).dropna()
    return float(np.median(known)) if len(known) else math.nan


def _reached(runs: pd.DataFrame, column: str) -> int:
    return int(np.isfinite(_epochs(runs, column)).sum())


def _arm_row(arm: str, runs: pd.DataFrame, base: pd.DataFrame | None) -> dict:
    per_seed = by_seed(runs, METRIC)
    ci = stats.mean_ci(list(per_seed.values()))
    row = {"arm": arm, "n": ci.n, "acc": ci.mean, "acc_low": ci.low, "acc_high": ci.high,
           "val_acc": _mean(runs.get("final_val_acc", pd.Series(dtype=float))),
           "delta": math.nan, "delta_low": math.nan, "delta_high": math.nan, "p": math.nan, "test": "", "pairs": 0,
           "epochs_to_95": _median_epochs(runs, "epochs_to_95"),
           "epochs_to_100": _median_epochs(runs, "epochs_to_100"),
           "reached_100": _reached(runs, "epochs_to_100"), "runs": len(runs)}
    if {"reinit_time_s", "epoch_time_s"} <= set(runs.columns):
        row["overhead_pct"] = _mean(100 * runs["reinit_time_s"] / runs["epoch_time_s"].replace(0, np.nan))
    if base is not None and arm != BASELINE:
        r = stats.paired_comparison(per_seed, by_seed(base, METRIC))
        row.update(delta=r.mean_diff, delta_low=r.low, delta_high=r.high, p=r.p_value, test=r.test, pairs=r.n)
    return row


def arm_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm of one condition, baseline first; `p_holm` corrects over the arms compared."""
    base = runs[runs["arm"] == BASELINE] if (runs["arm"] == BASELINE).any() else None
    arms = sorted(runs["arm"].unique(), key=natural_key)
    table = pd.DataFrame([_arm_row(a, runs[runs["arm"] == a], base) for a in arms])
    table["p_holm"] = stats.holm(table["p"].tolist())
    e100 = table.set_index("arm")["epochs_to_100"]
    baseline_e100 = e100.get(BASELINE, math.nan)
    table["speedup"] = [baseline_e100 / e if math.isfinite(baseline_e100) and math.isfinite(e) else math.nan
                        for e in e100]
    return table


def conditions(results: pd.DataFrame, curves: pd.DataFrame) -> list[Condition]:
    """All comparisons of a study, ordered by condition title."""
    runs = prepare(results, curves)
    if runs.empty or METRIC not in runs:
        return []
    out = []
    for title, group in sorted(runs.groupby("condition"), key=lambda kv: natural_key(str(kv[0]))):
        out.append(Condition(str(title), group, arm_table(group), bool((group["arm"] == BASELINE).any())))
    return out
