"""Seeded, stratified, group-aware splits and subsamples. Pure functions: label/group arrays in, indices out.

    train, val, test = grouped_stratified_split(labels, groups, (0.7, 0.15, 0.15), seed=0)

Members of a group (duplicates) always land in the same split; each class is split in proportion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from replast.data.base import TEST, TRAIN
from replast.errors import ConfigError

ArrayLike = torch.Tensor | np.ndarray | Sequence[int]
_SPLIT_SALT, _SUBSAMPLE_SALT = 1, 2  # independent random streams for the same user seed


def _np(a: ArrayLike) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _out(idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sort(idx).astype(np.int64))


def largest_remainder(total: int, weights: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """Integers proportional to `weights` that sum to `total` (Hamilton's method).

    Equal remainders go to the higher `priority` first, then to the lower index.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    tie = np.zeros(len(weights)) if priority is None else np.asarray(priority, dtype=np.float64)
    order = np.lexsort((-tie, -(exact - counts)))
    counts[order[: total - counts.sum()]] += 1
    return counts


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) < 1 or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {tuple(fractions)} must be non-negative and sum to 1")
    return f


def _group_table(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample group index, per-group size and per-group (majority) label."""
    _, group_of = np.unique(groups, return_inverse=True)
    classes, label_idx = np.unique(labels, return_inverse=True)
    n_groups = int(group_of.max()) + 1
    votes = np.bincount(group_of * len(classes) + label_idx, minlength=n_groups * len(classes))
    return group_of, np.bincount(group_of, minlength=n_groups), votes.reshape(n_groups, -1).argmax(1)


def _assign_class(order: np.ndarray, sizes: np.ndarray, fractions: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Split index of each group in `order`: big groups greedily to the neediest split, singletons by quota.

    `carry` (count − target summed over the classes done so far) breaks ties toward the split that is
    globally short, so rounding does not pile up on one split across classes; it is updated in place.
    """
    target = fractions * sizes[order].sum()
    count = np.zeros(len(fractions))
    out = np.empty(len(order), dtype=np.int64)
    multi = sizes[order] > 1
    for pos in np.flatnonzero(multi):  # few in practice: duplicates are rare
        deficit = target - count
        neediest = np.flatnonzero(deficit >= deficit.max() - 1e-9)
        out[pos] = neediest[np.argmin(carry[neediest])]
        count[out[pos]] += sizes[order[pos]]
    singles = np.flatnonzero(~multi)
    # The clipped deficits sum to at least len(singles), so the quota covers every singleton.
    quota = largest_remainder(len(singles), np.clip(target - count, 0, None), priority=-carry)
    out[singles] = np.repeat(np.arange(len(fractions)), quota)
    carry += count + quota - target
    return out


def grouped_stratified_split(
    labels: ArrayLike, groups: ArrayLike | None = None, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Disjoint sorted index tensors, one per fraction, covering every sample; groups never straddle splits."""
    y = _np(labels).astype(np.int64)
    g = np.arange(len(y)) if groups is None else _np(groups).astype(np.int64)
    if len(g) != len(y):
        raise ConfigError(f"labels ({len(y)}) and groups ({len(g)}) differ in length")
    f = check_fractions(fractions)
    if len(y) == 0:
        return tuple(torch.zeros(0, dtype=torch.int64) for _ in f)
    rng = np.random.default_rng([seed, _SPLIT_SALT])
    group_of, sizes, group_label = _group_table(y, g)
    split_of_group = np.empty(len(sizes), dtype=np.int64)
    carry = np.zeros(len(f))
    for c in np.unique(group_label):
        members = np.flatnonzero(group_label == c)
        members = members[rng.permutation(len(members))]
        members = members[np.argsort(-sizes[members], kind="stable")]  # big first, random among equals
        split_of_group[members] = _assign_class(members, sizes, f, carry)
    split = split_of_group[group_of]
    return tuple(_out(np.flatnonzero(split == s)) for s in range(len(f)))


def stratified_subsample(labels: ArrayLike, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of `n` samples drawn per class in proportion to its size (all when n >= len)."""
    y = _np(labels).astype(np.int64)
    if n >= len(y):
        return torch.arange(len(y))
    if n < 1:
        raise ConfigError(f"a subsample needs at least 1 sample, got n={n}")
    rng = np.random.default_rng([seed, _SUBSAMPLE_SALT])
    classes, counts = np.unique(y, return_counts=True)
    take = largest_remainder(n, counts)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    return _out(np.concatenate(chosen))


def subsample_fraction(indices: torch.Tensor, labels: ArrayLike, fraction: float, seed: int = 0) -> torch.Tensor:
    """A stratified `fraction` of `indices` (labels indexed by the full dataset); at least one sample."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"train_fraction {fraction} must be in (0, 1]")
    if fraction == 1 or len(indices) == 0:
        return indices
    y = _np(labels)[_np(indices)]
    keep = stratified_subsample(y, max(1, round(fraction * len(indices))), seed)
    return indices[keep]


def split_dataset(
    labels: ArrayLike, groups: ArrayLike, official: ArrayLike | None = None, *, val_fraction: float = 0.15,
    test_fraction: float = 0.15, train_fraction: float = 1.0, max_samples: int | None = None, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The train/val/test indices of a dataset, in this order of steps:

    1. `max_samples` caps the whole dataset (stratified by label and official split, seeded);
    2. without an official split: grouped stratified train/val/test; with one (TRAIN/TEST codes):
       test = the official test set, val is carved from the official train set (`test_fraction` unused);
    3. `train_fraction` < 1 subsamples the train split only (stratified, seeded).
    """
    y, g = _np(labels).astype(np.int64), _np(groups).astype(np.int64)
    pool = np.arange(len(y))
    key = y if official is None else y * 3 + _np(official)
    if max_samples is not None:
        pool = stratified_subsample(key, max_samples, seed).numpy()
    if official is None:
        fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        parts = grouped_stratified_split(y[pool], g[pool], fractions, seed)
        train, val, test = (torch.from_numpy(pool[p.numpy()]) for p in parts)
    else:
        code = _np(official)[pool]
        train_pool, test_pool = pool[code == TRAIN], pool[code == TEST]
        parts = grouped_stratified_split(y[train_pool], g[train_pool], (1.0 - val_fraction, val_fraction), seed)
        train, val = (torch.from_numpy(train_pool[p.numpy()]) for p in parts)
        test = torch.from_numpy(test_pool)
    return {"train": subsample_fraction(train, y, train_fraction, seed), "val": val, "test": test}
