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
    one = mean_ci([0.7])  # one value has a mean but no interval
    assert (one.mean, one.n) == (0.7, 1) and math.isnan(one.low) and math.isnan(one.high)
    c = mean_ci([2.0, 2.0, 2.0])
    assert (c.mean, c.low, c.high, c.n) == (2.0, 2.0, 2.0, 3)
    e = mean_ci([])
    assert math.isnan(e.mean) and e.n == 0
    assert mean_ci([1.0, float("nan")]).n == 1


def test_mean_ci_student_t_known_answer():
    # mean 3, sd sqrt(2.5), t(0.975, 4 dof) = 2.776445: 3 +- 2.776445 * 1.581139 / sqrt 5 = 3 +- 1.963243
    c = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (c.mean, c.n) == (3.0, 5)
    assert c.low == pytest.approx(3 - 1.963243, abs=1e-6) and c.high == pytest.approx(3 + 1.963243, abs=1e-6)
    # two values 0 and 1: t(0.975, 1 dof) = 12.7062, sd sqrt(0.5): 0.5 +- 12.7062 * 0.5 = [-5.853, 6.853]
    two = mean_ci([0.0, 1.0])
    assert two.low == pytest.approx(0.5 - 6.35310, abs=1e-4) and two.high == pytest.approx(0.5 + 6.35310, abs=1e-4)


def test_mean_ci_covers_the_mean_at_its_level_with_five_values():
    # The reason for t: at n=5 a percentile bootstrap covered ~85%; t holds 95% for normal data.
    rng = np.random.default_rng(0)
    samples = rng.normal(1.0, 2.0, size=(4000, 5))
    cover = np.mean([(c := mean_ci(x)).low <= 1.0 <= c.high for x in samples])
    assert 0.94 <= cover <= 0.96


def test_mean_ci_narrows_with_level():
    x = np.random.default_rng(0).normal(10, 2, 30)
    wide, narrow = mean_ci(x, level=0.99), mean_ci(x, level=0.5)
    assert wide.low < narrow.low < x.mean() < narrow.high < wide.high
    with pytest.raises(ValueError, match="level"):
        mean_ci(x, level=1.5)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 1.5])
def test_mean_ci_level_is_strictly_between_0_and_1(level):
    # level 1 would silently give an infinite interval, level 0 a zero-width one
    with pytest.raises(ValueError, match="level"):
        mean_ci([0.0, 1.0], level=level)


def test_paired_constant_difference_gets_the_exact_sign_flip_p():
    # four equal positive differences: under a null symmetric about 0 all signs agree with chance 2 / 2**4
    r = paired_comparison([2.0, 3.0, 5.0, 9.0], [1.0, 2.0, 4.0, 8.0])
    assert (r.mean_diff, r.low, r.high, r.n) == (1.0, 1.0, 1.0, 4)
    assert r.p_value == 0.125 and r.test == "sign-flip (zero variance)"
    # two seeds that agree are never significant, however large the difference
    assert paired_comparison([0.81, 0.83], [0.80, 0.82]).p_value == 0.5


def test_paired_t_matches_the_t_interval():
    # p < 0.05 exactly when the 95% t interval of the differences excludes 0
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.normal(0.5, 1.0, 5)
        r = paired_comparison(d, np.zeros(5))
        assert (r.p_value < 0.05) == (not r.low <= 0 <= r.high)


def test_paired_t_known_answer():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.4641 with 2 dof -> two-sided p = 0.07418
    r = paired_comparison([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert r.test == "paired t" and r.p_value == pytest.approx(0.074180, abs=1e-5)


def test_paired_t_for_any_number_of_pairs():
    # differences 1..6: mean 3.5, sd 1.870829, t = 3.5 / (1.870829 / sqrt 6) = 4.582576 with 5 dof: p = 0.005934
    # (a signed-rank test could not go below 2 / 2**6 = 0.031, which 22 Holm-corrected arms turn into 0.69)
    r = paired_comparison([1.0, 2, 3, 4, 5, 6], [0.0] * 6)
    assert r.test == "paired t" and r.p_value == pytest.approx(0.005934, abs=1e-6)


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
    assert epochs_to_target([0.5, 0.7, 0.9], 0.95) == math.inf  # never: later than any epoch
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
