"""BatchNorm running statistics that a re-initialization made stale, re-estimated on the utility batches.

A BatchNorm's running mean and variance describe the inputs it saw before the edit. Once weights upstream
are re-initialized they describe another network, and evaluation (which normalizes with them) suffers until
training has replaced them: with momentum 0.1 that takes tens of steps (after 20 steps 12% of the old value
is left). Only the channels whose input the edit changed are re-estimated, found by comparing per-channel
input sums on a few images before and after it, so a function-preserving unit reset (outgoing weights zeroed)
re-estimates only the reset units' own channels and leaves the network's output unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from replast.probe import forward_checked
from replast.reinit.collect import utility_mode

PROBE_IMAGES = 4
RTOL = 1e-5  # relative change of a channel's input sums that counts as changed (float noise is ~1e-7)


def batch_norms(model: nn.Module) -> dict[str, _BatchNorm]:
    """BatchNorm layers that keep running statistics (frozen and stat-less norms have nothing to update)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


@contextmanager
def _captured_inputs(bns: dict[str, _BatchNorm]):
    sums: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]
            sums[name] = torch.stack([x.sum(dims), x.square().sum(dims)])
        return record

    handles = [bn.register_forward_pre_hook(hook(name)) for name, bn in bns.items()]
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


def input_sums(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """{BatchNorm name: per-channel [sum, sum of squares] of its input} for the first images of `x`, in eval mode."""
    bns = batch_norms(model)
    with _captured_inputs(bns) as sums, utility_mode(model, [], needs_grad=False), torch.no_grad():
        forward_checked(model, x[:PROBE_IMAGES])
    return dict(sums)


def changed_channels(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, Tensor]:
    """{BatchNorm name: bool [C] of channels whose input changed} for BatchNorms with at least one."""
    changed = {}
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        scale = old.abs().amax(0).clamp_min(torch.finfo(torch.float32).tiny)
        changed[name] = (new - old).abs().amax(0) > RTOL * scale
    keep = [bool(v) for v in torch.stack([m.any() for m in changed.values()]).tolist()] if changed else []
    return {n: m for (n, m), k in zip(changed.items(), keep, strict=True) if k}


def recompute(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], channels: dict[str, Tensor]) -> int:
    """Re-estimate running mean/var of `channels` ({BatchNorm name: bool [C]}) as the plain average over
    `batches` (momentum None, as torch.optim.swa_utils.update_bn does); other channels, the momentum and
    the batch counter are kept, and an error puts every statistic back. A batch of one image is left out
    (a split's last batch can be: BatchNorm cannot normalize 1x1 maps of one image in training mode, and
    a single image is not a batch statistic). Returns the number of batches seen."""
    bns = {n: m for n, m in batch_norms(model).items() if n in channels}
    if not bns:
        return 0
    saved = {n: (bn.running_mean.clone(), bn.running_var.clone(), bn.momentum,
                 None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone())
             for n, bn in bns.items()}
    try:
        seen = _average(model, bns, batches)
    except BaseException:
        _put_back(bns, saved, channels, refreshed=False)
        raise
    _put_back(bns, saved, channels, refreshed=seen > 0)
    return seen


def _average(model: nn.Module, bns: dict[str, _BatchNorm], batches: Iterable[tuple[Tensor, Tensor]]) -> int:
    """Accumulate the batch statistics of `bns` over `batches`; returns the number of batches seen."""
    seen = 0
    with utility_mode(model, [], needs_grad=False), torch.no_grad():
        for bn in bns.values():
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()  # batch statistics, accumulated; every other module stays in eval mode
        for x, _ in batches:
            if x.shape[0] < 2:
                continue
            forward_checked(model, x)
            seen += 1
    return seen


def _put_back(bns: dict[str, _BatchNorm], saved: dict, channels: dict[str, Tensor], refreshed: bool) -> None:
    """Saved momentum and counter on every BatchNorm; saved statistics on every channel but the
    re-estimated `channels` (on all of them when nothing was `refreshed`)."""
    for name, bn in bns.items():
        mean, var, momentum, count = saved[name]
        keep = ~channels[name].to(mean.device)
        bn.running_mean.copy_(torch.where(keep, mean, bn.running_mean) if refreshed else mean)
        bn.running_var.copy_(torch.where(keep, var, bn.running_var) if refreshed else var)
        bn.momentum = momentum
        if count is not None:
            bn.num_batches_tracked.copy_(count)


def running_stats(bns: Iterable[_BatchNorm]) -> list[Tensor]:
    """Running mean and var of these BatchNorms, in their order (what a rank-0 broadcast must carry)."""
    return [b for bn in bns for b in (bn.running_mean, bn.running_var)]
