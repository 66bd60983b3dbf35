"""The pipeline behind `restore_plasticity`: data → trace/pairing → utility pass → scores.

Nothing here writes model weights; `edits.apply_edits` does, after everything has been validated
and scored. Randomness comes from generators built from `seed` (one for scores, one for values).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import torch
from torch import Tensor, nn

from replast.errors import ConfigError
from replast.probe import unpack_batch
from replast.reinit.collect import Stats, check_gradients_possible, collect, utility_mode
from replast.reinit.options import Options
from replast.reinit.pairing import UnitMap, pair_layers, unpaired
from replast.reinit.registry import UTILITIES, Utility
from replast.reinit.scoring import activation_sites, score_layers
from replast.reinit.target import Target
from replast.reinit.trace import trace


def generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent streams for scores (random utility) and for new values; different seeds differ."""
    return torch.Generator().manual_seed(2 * seed), torch.Generator().manual_seed(2 * seed + 1)


def peek(data: Iterable) -> tuple[Any, Iterable]:
    """First batch and an iterable that still yields it; an empty iterable is a ConfigError."""
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        raise ConfigError("the batch iterable is empty; the utility pass needs at least one (x, y) batch")
    return first, itertools.chain([first], iterator)


class Replay:
    """The first `n` batches of `data`, read on first use and replayed on every later pass (a generator or
    a shuffling loader could not give the same batches twice)."""

    def __init__(self, data: Iterable, n: int) -> None:
        self._data, self._n, self._seen, self._source = data, n, [], None

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._n):
            if i == len(self._seen):
                if self._source is None:
                    self._source = iter(self._data)
                batch = next(self._source, None)
                if batch is None:
                    return
                self._seen.append(batch)
            yield self._seen[i]


def checked(model: nn.Module, data: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
    """Each batch as (x, y) on the model's device, checked as `diagnose` checks it: anything but float x
    with int labels [B] is a ConfigError naming the input the model expects, raised before it is used."""
    device = next(model.parameters()).device
    return (unpack_batch(batch, device, model) for batch in data)


def unit_maps_for(model: nn.Module, target: Target, o: Options, first: Any | None) -> dict[str, UnitMap]:
    """Trace one small forward when units matter; otherwise every layer is plain rows."""
    modules = dict(model.named_modules())
    if first is None:
        return {n: unpaired(n, modules[n], "weight level") for n in target.layers}
    x = first[0][:2].to(next(model.parameters()).device)
    try:
        with utility_mode(model, [], needs_grad=False):
            graph = trace(model, x)
    except Exception as error:  # an untraceable model still works, at weight level
        return pair_layers(model, None, target.layers, target.exclude, o.zero_outgoing, repr(error))
    return pair_layers(model, graph, target.layers, target.exclude, o.zero_outgoing)


@dataclass
class Scored:
    utility: Utility
    unit_maps: dict[str, UnitMap]
    levels: dict[str, str]
    scores: list[Tensor]
    n_batches: int
    skipped: frozenset[str] = frozenset()  # unit level, unpaired='skip': layers left alone


def score(model: nn.Module, data: Iterable, target: Target, o: Options,
          generator: torch.Generator) -> tuple[Scored, dict[str, float]]:
    """Utility pass + scoring; returns the scores and the seconds spent in each part."""
    start = perf_counter()
    utility = UTILITIES.get(o.utility)
    if utility.needs_grad:
        check_gradients_possible(model, o.utility)
    needs_units = o.level == "unit" or utility.level == "unit"
    needs_pass = utility.needs_grad or utility.needs_act
    first, stream = peek(checked(model, data)) if (needs_units or needs_pass) else (None, None)
    unit_maps = unit_maps_for(model, target, o, first if needs_units else None)
    stats: Stats | None = None
    if needs_pass:
        modules = dict(model.named_modules())
        weights = {n: modules[n].weight for n in target.layers} if utility.needs_grad else {}
        sites = activation_sites(unit_maps) if utility.needs_act else {}
        stats = collect(model, stream, weights, sites, utility.needs_grad, o.batches)
    utility_s = perf_counter() - start
    levels = {n: "unit" if o.level == "unit" and unit_maps[n].paired else "weight" for n in target.layers}
    skipped = frozenset(n for n in target.layers if o.level == "unit" and o.unpaired == "skip"
                        and not unit_maps[n].paired)
    scores = score_layers(model, target.layers, unit_maps, stats, utility, levels, generator)
    n = stats.n_batches if stats else 0
    return Scored(utility, unit_maps, levels, scores, n, skipped), {"utility": utility_s,
                                                          "scoring": perf_counter() - start - utility_s}
