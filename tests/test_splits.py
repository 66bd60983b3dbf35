"""Property tests of the pure split functions (replast.data.splits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from replast.data.base import TEST, TRAIN
from replast.data.splits import (
    grouped_stratified_split,
    largest_remainder,
    split_dataset,
    stratified_subsample,
    subsample_fraction,
)
from replast.errors import ConfigError

FRACTIONS = st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.6, 0.4, 0.0), (1.0, 0.0, 0.0),
                             (0.34, 0.33, 0.33)])


@st.composite
def grouped_labels(draw, max_n: int = 300, max_group: int = 4):
    """Labels and groups where every group has one label (as for Br35H's near-duplicates)."""
    n_classes = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, max_group), min_size=1, max_size=max_n // max_group))
    group_labels = draw(st.lists(st.integers(0, n_classes - 1), min_size=len(sizes), max_size=len(sizes)))
    labels = np.repeat(group_labels, sizes)
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # ids need not be 0..G-1
    perm = np.random.default_rng(draw(st.integers(0, 1000))).permutation(len(labels))
    return labels[perm], groups[perm]


def _as_sets(parts: tuple[torch.Tensor, ...]) -> list[set[int]]:
    return [set(p.tolist()) for p in parts]


@settings(max_examples=150, deadline=None)
@given(data=grouped_labels(), fractions=FRACTIONS, seed=st.integers(0, 2**31))
def test_split_is_a_partition_and_groups_never_straddle(data, fractions, seed):
    labels, groups = data
    parts = grouped_stratified_split(labels, groups, fractions, seed)
    sets = _as_sets(parts)
    assert sum(len(s) for s in sets) == len(labels)
    assert set().union(*sets) == set(range(len(labels)))
    for p in parts:
        assert p.dtype == torch.int64 and torch.equal(p, p.sort().values)
    split_of = np.empty(len(labels), dtype=int)
    for s, p in enumerate(parts):
        split_of[p.numpy()] = s
    for g in np.unique(groups):
        assert len(set(split_of[groups == g])) == 1, f"group {g} straddles splits"


@settings(max_examples=150, deadline=None)
@given(data=grouped_labels(), fractions=FRACTIONS, seed=st.integers(0, 2**31))
def test_split_is_stratified_within_group_granularity(data, fractions, seed):
    labels, groups = data
    parts = grouped_stratified_split(labels, groups, fractions, seed)
    k = len(fractions)
    for c in np.unique(labels):
        in_class = labels == c
        n_c = int(in_class.sum())
        largest = max(int((groups == g).sum()) for g in np.unique(groups[in_class]))
        bound = 1 if largest == 1 else (k - 1) * largest + 1
        for f, p in zip(fractions, parts, strict=True):
            got = int(in_class[p.numpy()].sum())
            assert abs(got - f * n_c) <= bound, (c, f, got, n_c, largest)
            if f == 0:
                assert got == 0


def test_singletons_split_exactly_per_class():
    labels = np.repeat(np.arange(4), [100, 60, 20, 7])
    train, val, test = grouped_stratified_split(labels, None, (0.7, 0.15, 0.15), seed=3)
    for c, n_c in enumerate([100, 60, 20, 7]):
        counts = [int((labels[p.numpy()] == c).sum()) for p in (train, val, test)]
        assert all(abs(got - f * n_c) < 1 for got, f in zip(counts, (0.7, 0.15, 0.15), strict=True)), counts


@settings(max_examples=60, deadline=None)
@given(data=grouped_labels(), seed=st.integers(0, 2**31))
def test_same_seed_same_split(data, seed):
    labels, groups = data
    a = grouped_stratified_split(labels, groups, (0.7, 0.15, 0.15), seed)
    b = grouped_stratified_split(torch.as_tensor(labels), torch.as_tensor(groups), (0.7, 0.15, 0.15), seed)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(60, 400), n_classes=st.integers(1, 4), seeds=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)))
def test_different_seed_different_split(n, n_classes, seeds):
    if seeds[0] == seeds[1]:
        seeds = (seeds[0], seeds[0] + 1)
    labels = np.arange(n) % n_classes
    a = grouped_stratified_split(labels, None, (0.6, 0.2, 0.2), seeds[0])
    b = grouped_stratified_split(labels, None, (0.6, 0.2, 0.2), seeds[1])
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_groups_that_cross_labels_still_stay_together():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    parts = grouped_stratified_split(labels, groups, (0.5, 0.5, 0.0), seed=0)
    for p in parts:
        assert len(p) % 2 == 0 and all(int(i) ^ 1 in p.tolist() for i in p)


@pytest.mark.parametrize("fractions", [(0.7, 0.2), (0.5, 0.6, -0.1), (0.9, 0.2, 0.0)])
def test_bad_fractions_raise(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        grouped_stratified_split([0, 1, 0, 1], None, fractions, 0)


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=6), total=st.integers(0, 100))
def test_largest_remainder_sums_and_is_proportional(counts, total):
    out = largest_remainder(total, np.array(counts))
    if sum(counts) == 0:
        assert out.sum() == 0
        return
    assert out.sum() == total
    exact = total * np.array(counts) / sum(counts)
    assert np.all(np.abs(out - exact) < 1)


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=1, max_size=5), frac=st.floats(0.05, 1.0), seed=st.integers(0, 99))
def test_stratified_subsample_size_and_proportions(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    n = max(1, round(frac * len(labels)))
    idx = stratified_subsample(labels, n, seed)
    assert len(idx) == n and len(set(idx.tolist())) == n
    for c, n_c in enumerate(counts):
        assert abs(int((labels[idx.numpy()] == c).sum()) - n * n_c / len(labels)) < 1
    assert torch.equal(idx, stratified_subsample(labels, n, seed))


def test_train_fraction_changes_only_train():
    labels = np.arange(500) % 5
    groups = np.arange(500) // 2
    full = split_dataset(labels, groups, seed=4)
    part = split_dataset(labels, groups, train_fraction=0.2, seed=4)
    assert torch.equal(full["val"], part["val"]) and torch.equal(full["test"], part["test"])
    assert set(part["train"].tolist()) <= set(full["train"].tolist())
    assert len(part["train"]) == round(0.2 * len(full["train"]))
    assert np.bincount(labels[part["train"].numpy()]).min() >= 0.2 * np.bincount(labels[full["train"].numpy()]).min() - 1


def test_max_samples_caps_before_splitting_and_keeps_official_test():
    labels = np.arange(1000) % 10
    official = np.where(np.arange(1000) < 800, TRAIN, TEST)
    out = split_dataset(labels, np.arange(1000), official, val_fraction=0.25, max_samples=200, seed=1)
    total = sum(len(v) for v in out.values())
    assert total == 200
    assert (official[out["test"].numpy()] == TEST).all() and len(out["test"]) == 40
    assert (official[out["train"].numpy()] == TRAIN).all() and (official[out["val"].numpy()] == TRAIN).all()
    assert len(out["val"]) == 40


def test_subsample_fraction_validates():
    with pytest.raises(ConfigError, match="train_fraction"):
        subsample_fraction(torch.arange(10), np.zeros(10), 0.0)
