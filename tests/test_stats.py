"""Known answers for every statistic used in reports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replast.stats import auc, baseline_targets, epochs_to_target, holm, mean_ci, paired_comparison


def test_mean_ci_single_value_and_constant_and_empty():
    one = mean_ci([0.7])
    assert (one.mean, one.low, one.high, one.n) == (0.7, 0.7, 0.7, 1)
    c = mean_ci([2.0, 2.0, 2.0])
    assert (c.mean, c.low, c.high, c.n) == (2.0, 2.0, 2.0, 3)
    e = mean_ci([])
    assert math.isnan(e.mean) and e.n == 0
    assert mean_ci([1.0, float("nan")]).n == 1


def test_mean_ci_is_the_mean_and_the_interval_lies_within_the_data():
    c = mean_ci([1.0, 2.0, 6.0], n_boot=2000)
    assert (c.mean, c.n) == (3.0, 3)  # the mean, not the median 2
    assert 1.0 <= c.low < 3.0 < c.high <= 6.0


def test_mean_ci_two_values_bootstrap_spans_the_possible_means():
    # Resampling [0, 1] gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    c = mean_ci([0.0, 1.0], n_boot=4000, seed=1)
    assert (c.mean, c.low, c.high) == (0.5, 0.0, 1.0)


def test_mean_ci_is_seeded_and_narrows_with_level():
    x = np.random.default_rng(0).normal(10, 2, 30)
    assert mean_ci(x, seed=3) == mean_ci(x, seed=3)
    wide, narrow = mean_ci(x, level=0.99), mean_ci(x, level=0.5)
    assert wide.low < narrow.low < x.mean() < narrow.high < wide.high
    # For n=30 the percentile bootstrap is close to the normal interval mean +- 1.96 * sd / sqrt(n).
    half = 1.96 * x.std(ddof=0) / np.sqrt(len(x))
    c = mean_ci(x, n_boot=20000)
    assert c.low == pytest.approx(x.mean() - half, abs=0.12) and c.high == pytest.approx(x.mean() + half, abs=0.12)
    with pytest.raises(ValueError, match="level"):
        mean_ci(x, level=1.5)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5])
def test_mean_ci_level_is_strictly_between_0_and_1(level):
    # level 1 would silently give [min, max] of the bootstrap means, level 0 a zero-width interval
    with pytest.raises(ValueError, match="level"):
        mean_ci([0.0, 1.0], level=level)


def test_paired_constant_difference_of_one():
    r = paired_comparison([2.0, 3.0, 5.0, 9.0], [1.0, 2.0, 4.0, 8.0])
    assert (r.mean_diff, r.low, r.high, r.n) == (1.0, 1.0, 1.0, 4)
    assert r.p_value == 0.0 and r.test == "paired t (zero variance)"


def test_paired_t_known_answer():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.4641 with 2 dof -> two-sided p = 0.07418
    r = paired_comparison([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert r.test == "paired t" and r.p_value == pytest.approx(0.074180, abs=1e-5)


def test_wilcoxon_from_six_pairs_known_answer():
    # all six differences positive: exact two-sided p = 2 / 2**6 = 0.03125
    r = paired_comparison([1.0, 2, 3, 4, 5, 6], [0.0] * 6)
    assert r.test == "wilcoxon signed-rank" and r.p_value == pytest.approx(0.03125)


def test_wilcoxon_ties_differences_that_are_equal_but_for_rounding():
    # +-0.01 and 0 twice over, as 0.81 - 0.80, 0.81 - 0.82, 0.84 - 0.84: in floating point the positive
    # differences are larger than the negative ones, which unrounded gives p 0.5 instead of the tie's 1.
    a, b = [0.81, 0.81, 0.84] * 2, [0.80, 0.82, 0.84] * 2
    assert abs(a[0] - b[0]) != abs(a[1] - b[1])
    assert paired_comparison(a, b).p_value == pytest.approx(1.0)


def test_paired_drops_a_pair_when_either_value_is_missing():
    # pairs (1, 0.5) and (3, 2.75) remain: differences 0.5, 0.25, mean 0.375, sd 0.25 / sqrt 2, so
    # t = 0.375 / (0.25 / sqrt 2 / sqrt 2) = 3 with 1 dof (Cauchy): two-sided p = 1 - 2 atan(3) / pi
    r = paired_comparison([1.0, 2.0, float("nan"), 3.0], [0.5, float("nan"), 7.0, 2.75])
    assert (r.n, r.mean_diff, r.test) == (2, 0.375, "paired t")
    assert r.p_value == pytest.approx(1 - 2 * math.atan(3) / math.pi, abs=1e-9)


def test_paired_by_seed_mapping_and_degenerate_cases():
    r = paired_comparison({0: 0.9, 1: 0.8, 2: 0.5}, {2: 0.4, 0: 0.8, 7: 0.1})
    assert r.n == 2 and r.mean_diff == pytest.approx(0.1)
    assert paired_comparison([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert math.isnan(paired_comparison([1.0], [0.0]).p_value)
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(TypeError):
        paired_comparison({0: 1.0}, [1.0])


def test_holm_known_answer_and_nan():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_is_monotone_bounded_and_never_below_raw(p):
    adj = holm(p)
    assert all(a >= q - 1e-12 and a <= 1 for a, q in zip(adj, p, strict=True))
    order = np.argsort(p, kind="stable")
    assert all(adj[i] <= adj[j] + 1e-12 for i, j in zip(order[:-1], order[1:], strict=True))


def test_epochs_to_target():
    assert epochs_to_target([0.5, 0.7, 0.9, 0.8], 0.7) == 2.0
    assert math.isnan(epochs_to_target([0.5, 0.7, 0.9], 0.95))
    assert math.isnan(epochs_to_target([0.5], float("nan")))
    assert epochs_to_target([0.1 + 0.2], 0.3) == 1.0  # float noise does not hide a hit


def test_auc_known_answers():
    assert auc([0.0, 1.0]) == 0.5
    assert auc([0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert auc([0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert auc([0.4]) == 0.4 and math.isnan(auc([]))


def test_baseline_targets_per_group():
    results = pd.DataFrame({"hash": ["b0", "b1", "t0", "x0"], "data": ["d", "d", "d", "e"],
                            "arm": ["none", "none", "targeted", "targeted"]})
    curves = pd.DataFrame({"hash": ["b0"] * 3 + ["b1"] * 3 + ["t0"] * 3 + ["x0"] * 3, "epoch": [1, 2, 3] * 4,
                           "val_acc": [0.5, 0.7, 0.8, 0.6, 0.8, 0.6, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9]})
    out = baseline_targets(results, curves, ["data"], results["arm"] == "none")
    # target = mean final of the baselines = (0.8 + 0.6) / 2 = 0.7; 95% of it = 0.665
    assert out.loc[2].tolist() == [1.0, 1.0] and out.loc[0].tolist() == [2.0, 2.0]
    assert out.loc[1].tolist() == [2.0, 2.0]  # 0.6 < 0.665, then 0.8
    assert out.loc[3].isna().all()  # group e has no baseline


def test_baseline_targets_each_fraction_of_the_baseline_final():
    # baseline final 0.8: 95% of it is 0.76, 100% is 0.8, 50% is 0.4; run r reaches them at epochs 1, 3, 1
    results = pd.DataFrame({"hash": ["b", "r"], "arm": ["none", "targeted"]})
    curves = pd.DataFrame({"hash": ["b"] * 3 + ["r"] * 3, "epoch": [1, 2, 3] * 2,
                           "val_acc": [0.5, 0.6, 0.8, 0.77, 0.79, 0.8]})
    out = baseline_targets(results, curves, [], results["arm"] == "none")
    assert list(out.columns) == ["epochs_to_95", "epochs_to_100"]
    assert out.loc[1].tolist() == [1.0, 3.0] and out.loc[0].tolist() == [3.0, 3.0]
    half = baseline_targets(results, curves, [], results["arm"] == "none", fractions=(0.5,))
    assert list(half.columns) == ["epochs_to_50"] and half["epochs_to_50"].tolist() == [1.0, 1.0]
