"""PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): before every evaluation, the trained
BatchNorms' running statistics are re-estimated on fixed training batches with the current weights.

The batches are un-augmented, like the images evaluation sees, and drawn in a seeded random order so that
they sample every class (docs/results.md, "Class-sorted batches").

The running averages (momentum 0.1) trail the weights by ~10 steps; in a short fine-tune (20 steps on a small
dataset) that lag decides evaluation, and it is largest for the runs whose weights move most (re-initialized
ones), which would bias a comparison of strategies. A linear probe's statistics are left alone: its model stays
in eval mode, so they never move and the head was trained on them.
"""

from __future__ import annotations

from typing import Any

import torch

from replast.reinit.bn_stats import batch_norms, recompute


def trained_channels(model: torch.nn.Module, linear_probe: bool = False) -> dict[str, torch.Tensor]:
    """{name: all-true channel mask} of the BatchNorms whose statistics training moves: all of them (with or
    without affine parameters), none in a linear probe (its model stays in eval mode)."""
    if linear_probe:
        return {}
    return {n: torch.ones_like(bn.running_mean, dtype=torch.bool) for n, bn in batch_norms(model).items()}


def attach(trainer: Any, batches: list, model: torch.nn.Module) -> None:
    """Before each evaluation, re-estimate `model`'s trained BatchNorm statistics on `batches` (this rank's),
    then average them over ranks so that every rank evaluates the same network."""
    channels = trained_channels(model, trainer.cfg.train.mode == "linear-probe")
    if not channels or not batches:
        return
    bns = batch_norms(model)

    def re_estimate() -> None:
        with trainer.fabric.autocast():
            recompute(model, batches, channels)
        if trainer.fabric.world_size > 1:
            for name in channels:
                for buffer in (bns[name].running_mean, bns[name].running_var):
                    buffer.copy_(trainer.fabric.all_reduce(buffer, reduce_op="mean"))

    trainer.eval_hooks.append(re_estimate)
