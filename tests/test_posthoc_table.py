"""benchmarks/posthoc_table.py: a study's comparison with accuracies replaced by a post-hoc re-evaluation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from replast.report.tables import conditions

ROOT = Path(__file__).parents[1]


def test_replaced_accuracies_feed_the_same_statistics(benchmark):
    table = benchmark("posthoc_table")
    results = pd.read_csv(ROOT / "docs" / "results" / "cpu" / "results.csv")
    curves = pd.read_csv(ROOT / "docs" / "results" / "cpu" / "curves.csv")
    shifted = results["reinit.strategy"] == "redo"  # one arm gains one point on test, two on validation
    rows = [{"run": h, "test_acc_x": t + 0.01 * s, "val_acc_x": v + 0.02 * s}
            for h, t, v, s in zip(results["hash"], results["test_acc"], results["final_val_acc"], shifted,
                                  strict=True)]
    assert len(table.re_evaluated(results, rows[:-1], "x")) == len(results) - 1  # not re-evaluated: left out
    [old_cond] = conditions(results, curves)
    [new_cond] = conditions(table.re_evaluated(results, rows, "x"), curves)
    old, fresh = old_cond.table.set_index("arm"), new_cond.table.set_index("arm")
    assert fresh.loc["redo", "acc"] == pytest.approx(old.loc["redo", "acc"] + 0.01)
    assert fresh.loc["redo", "val_acc"] == pytest.approx(old.loc["redo", "val_acc"] + 0.02)
    assert fresh.loc["redo", "delta"] == pytest.approx(old.loc["redo", "delta"] + 0.01)
    others = fresh.index != "redo"
    assert fresh.loc[others, "acc"].tolist() == pytest.approx(old.loc[others, "acc"].tolist())
    text = table.markdown(old_cond.table, new_cond.table)
    assert text.count("\n") == 1 + len(old)  # header, rule, one row per arm
    redo = next(line for line in text.splitlines() if line.startswith("| redo |"))
    assert f"{100 * old.loc['redo', 'acc']:.1f} / " in redo  # the reported figure stays beside the new one
