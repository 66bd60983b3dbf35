"""Registries of the re-initialization engine: utilities, selections, schemes, strategies.

`@register_utility("name", needs=("grad",), level="weight")` adds a scoring rule; the other three
registries take plain functions (`SELECTIONS.register("name")(fn)`). Tests are parametrized over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from replast.registry import Registry

Level = Literal["weight", "unit"]


@dataclass(frozen=True)
class Utility:
    """A scoring rule: `fn(stats, generator) -> scores`; low score = re-initialization candidate.

    `needs` names the statistics the rule reads ("grad", "act"); `level` says whether `fn` returns one
    score per weight (the weight's shape) or one per unit (output neuron, filter or attention head).
    `network_scale`: scores of different layers compare as they are, so the `global` selection ranks them
    without normalizing each layer by its mean (SNIP's ranking over the whole network).
    """

    name: str
    fn: Callable
    needs: frozenset[str]
    level: Level
    network_scale: bool = False

    @property
    def needs_grad(self) -> bool:
        return "grad" in self.needs

    @property
    def needs_act(self) -> bool:
        return "act" in self.needs


UTILITIES: Registry[Utility] = Registry("utility")
SELECTIONS: Registry[Callable] = Registry("selection")
SCHEMES: Registry[Callable] = Registry("scheme")
STRATEGIES: Registry[Callable] = Registry("strategy")


def register_utility(name: str, *, needs: tuple[str, ...] = (), level: Level = "weight",
                     network_scale: bool = False) -> Callable:
    """Decorator: register `fn(stats, generator) -> Tensor` as utility `name`."""

    def decorator(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        UTILITIES.register(name, doc[0] if doc else "")(Utility(name, fn, frozenset(needs), level, network_scale))
        return fn

    return decorator


def register_selection(name: str) -> Callable:
    return SELECTIONS.register(name)


def register_scheme(name: str) -> Callable:
    return SCHEMES.register(name)


def register_strategy(name: str) -> Callable:
    """Decorator: register `fn(options) -> options | None` (None = leave the model alone)."""
    return STRATEGIES.register(name)
