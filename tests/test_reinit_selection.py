"""Property tests (hypothesis) for the selections and for restore_plasticity on random layer shapes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from replast.reinit import restore_plasticity
from replast.reinit.selection import (
    SelectionInput,
    count,
    global_,
    normalized,
    per_layer,
    threshold,
)

shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 7)), min_size=1, max_size=4)
fractions = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**16)


def _scores(shape_list: list, seed: int, ties: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(s, generator=g) for s in shape_list]
    return [torch.round(s * 3) for s in scores] if ties else scores  # few distinct values: many ties


@settings(max_examples=60, deadline=None)
@given(shapes, fractions, seeds, st.booleans())
def test_per_layer_takes_exactly_round_p_n_lowest(shape_list, p, seed, ties) -> None:
    scores = _scores(shape_list, seed, ties)
    masks = per_layer(scores, SelectionInput([p] * len(scores), p))
    for s, m in zip(scores, masks, strict=True):
        assert m.shape == s.shape and m.dtype == torch.bool
        assert int(m.sum()) == count(p, s.numel())
        if m.any() and (~m).any():
            assert s[m].max() <= s[~m].min()


@settings(max_examples=60, deadline=None)
@given(shapes, fractions, seeds, st.booleans())
def test_global_takes_round_p_n_lowest_normalized(shape_list, p, seed, ties) -> None:
    scores = [s + 0.01 for s in _scores(shape_list, seed, ties)]
    masks = global_(scores, SelectionInput([p] * len(scores), p))
    total = sum(s.numel() for s in scores)
    assert sum(int(m.sum()) for m in masks) == count(p, total)
    chosen = torch.cat([normalized(s)[m] for s, m in zip(scores, masks, strict=True)])
    rest = torch.cat([normalized(s)[~m] for s, m in zip(scores, masks, strict=True)])
    if chosen.numel() and rest.numel():
        assert chosen.max() <= rest.min()


@settings(max_examples=40, deadline=None)
@given(shapes, st.floats(0.0, 3.0), seeds)
def test_threshold_is_normalized_score_at_most_tau(shape_list, tau, seed) -> None:
    scores = _scores(shape_list, seed, ties=False)
    for s, m in zip(scores, threshold(scores, SelectionInput([0.0] * len(scores), threshold=tau)), strict=True):
        assert torch.equal(m, s / s.mean() <= tau)


def test_all_zero_layer_is_entirely_dormant() -> None:
    assert bool(threshold([torch.zeros(3, 2)], SelectionInput([0.0], threshold=0.0))[0].all())


def test_count_rounds_halves_up() -> None:
    assert [count(0.5, 3), count(0.5, 5), count(0.1, 4), count(1.0, 7), count(0.0, 7)] == [2, 3, 0, 7, 0]


def test_count_rounds_the_fraction_as_written() -> None:
    # 0.35·90 is 31.5 (halves up: 32), but in floats 0.35 * 90 = 31.499999999999996; likewise 0.29·50 = 14.5
    assert 0.35 * 90 < 31.5 and 0.29 * 50 < 14.5
    assert [count(0.35, 90), count(0.29, 50), count(0.35, 170), count(0.35, 10), count(0.3, 5)] == [32, 15, 60, 4, 2]
    assert [count(0.35, 11), count(0.34, 10), count(1 / 3, 3), count(1e-5, 49_999), count(1e-5, 50_000)] == [
        4, 3, 1, 0, 1]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), fractions, seeds)
def test_restore_plasticity_resets_exactly_the_smallest_weights(a, b, c, p, seed) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(3, a), torch.tensor([0, 1, 0]))]
    report = restore_plasticity(model, data, utility="magnitude", fraction=p, seed=seed)
    for name in ("0.weight", "2.weight"):
        mask, old = report.masks[name], before[name]
        assert int(mask.sum()) == count(p, old.numel())
        assert torch.equal(model.state_dict()[name] != old, mask)
        if mask.any() and (~mask).any():
            assert old.abs()[mask].max() <= old.abs()[~mask].min()
    assert torch.equal(model[4].weight, before["4.weight"])
