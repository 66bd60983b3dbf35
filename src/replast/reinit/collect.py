"""The utility pass: forward (and backward) over a few (x, y) batches, collecting statistics.

Runs in eval mode (no BatchNorm-statistics updates, no dropout randomness) with the new head and
cross-entropy; restores every module's train/eval mode and every requires_grad flag, and clears
all gradients, in `finally`. Under torch.distributed the statistics are averaged over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from replast.backends import without_autotuning
from replast.errors import ConfigError
from replast.probe import check_labels, forward_checked
from replast.reinit import distributed
from replast.reinit.units import group_by_unit


@dataclass(frozen=True)
class ActSite:
    """Where a layer's unit activations are read: the input ('in') of the next weighted layer, or
    the layer's own output ('out'); `cols[c]` is the unit of channel c."""

    module: str
    side: str
    cols: Tensor
    n_units: int


@dataclass
class Stats:
    grad_abs: dict[str, Tensor] = field(default_factory=dict)  # E_b |g_b|, weight-shaped
    grad_sq: dict[str, Tensor] = field(default_factory=dict)  # E_b g_b², weight-shaped
    act: dict[str, Tensor] = field(default_factory=dict)  # mean |activation| per unit
    n_batches: int = 0


def check_gradients_possible(model: nn.Module, utility: str) -> None:
    """Gradient utilities need autograd on and some trainable parameter; fail before touching anything."""
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise ConfigError(f"utility {utility!r} needs gradients but gradients are disabled "
                          "(torch.no_grad/inference_mode); call outside it or use utility='magnitude'")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"utility {utility!r} needs gradients but no parameter of the model requires "
                          "grad; unfreeze the model or use utility='magnitude'")


@contextmanager
def utility_mode(model: nn.Module, weights: list[nn.Parameter], needs_grad: bool) -> Iterator[None]:
    """Eval mode, gradients only for `weights`; everything restored and grads cleared afterwards."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        if needs_grad:
            for p in flags:
                p.requires_grad_(False)
            for p in weights:
                p.requires_grad_(True)
        with without_autotuning():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def logits_of(out: Any) -> Tensor:
    """Classifier output: a tensor, the first element of a tuple, or `.logits`."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise ConfigError(f"the model returns {type(out).__name__}; the utility pass needs class logits")


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _act_hooks(model: nn.Module, sites: dict[str, ActSite], acc: dict) -> list[Any]:
    """Accumulate per-channel sum |x| and element counts at every (module, side) site."""
    modules = dict(model.named_modules())
    handles = []
    for key in {(s.module, s.side) for s in sites.values()}:
        module = modules[key[0]]
        dim = _channel_dim(module)

        def record(x: Tensor, key=key, dim=dim) -> None:
            x = x.detach()
            other = [d for d in range(x.dim()) if d != dim % x.dim()]
            per_channel = x.abs().sum(other, dtype=torch.float32)  # no transposed copy of the activation
            total, count = acc.get(key, (0.0, 0))
            acc[key] = (total + per_channel, count + x.numel() // x.shape[dim])

        if key[1] == "in":
            handles.append(module.register_forward_pre_hook(lambda m, args, r=record: r(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, r=record: r(out)))
    return handles


def _accumulate_grads(weights: dict[str, nn.Parameter], stats: Stats) -> None:
    for name, p in weights.items():
        g = p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        stats.grad_abs[name] = stats.grad_abs.get(name, 0.0) + g.abs()
        stats.grad_sq[name] = stats.grad_sq.get(name, 0.0) + g.square()
    for p in weights.values():  # only now: a tied weight may be in `weights` under several names
        p.grad = None


def _run(model: nn.Module, batches: Iterable, weights: dict[str, nn.Parameter], needs_grad: bool,
         max_batches: int, stats: Stats) -> None:
    for i, (x, y) in enumerate(batches):  # (x, y) on the model's device, checked by engine.checked
        if i >= max_batches:
            break
        with torch.set_grad_enabled(needs_grad):
            logits = logits_of(forward_checked(model, x))
            if needs_grad:
                check_labels(y, logits.shape[1])
                F.cross_entropy(logits.float(), y).backward()
                _accumulate_grads(weights, stats)
        stats.n_batches += 1


def collect(model: nn.Module, batches: Iterable, weights: dict[str, nn.Parameter],
            sites: dict[str, ActSite], needs_grad: bool, max_batches: int) -> Stats:
    """Statistics for `weights` (layer name -> weight) and activation `sites` (layer name -> site)."""
    stats, acc = Stats(), {}
    handles = _act_hooks(model, sites, acc)
    try:
        with utility_mode(model, list(weights.values()), needs_grad):
            _run(model, batches, weights, needs_grad, max_batches, stats)
    finally:
        for h in handles:
            h.remove()
    if stats.n_batches == 0:
        raise ConfigError("the batch iterable is empty; the utility pass needs at least one (x, y) batch")
    return _finish(stats, acc, sites, next(model.parameters()).device)


def _finish(stats: Stats, acc: dict, sites: dict[str, ActSite], device: torch.device) -> Stats:
    """Means over batches (and over ranks), activations grouped into units."""
    n = distributed.all_reduce_sum(torch.tensor(float(stats.n_batches), device=device))
    for table in (stats.grad_abs, stats.grad_sq):
        for name, total in table.items():
            table[name] = distributed.all_reduce_sum(total) / n
    for layer, site in sites.items():
        total, count = acc.get((site.module, site.side), (None, 0))
        if total is None:  # the site never ran (unused branch): no activation evidence at all
            stats.act[layer] = torch.zeros(site.n_units, device=device)
            continue
        total = distributed.all_reduce_sum(total)
        count = distributed.all_reduce_sum(torch.tensor(float(count), device=total.device))
        stats.act[layer] = group_by_unit(total / count, site.cols, site.n_units)
    return stats
