"""Schemes: pure functions giving the new values of a parameter; the engine keeps them where masked.

Each gets the pretrained tensor `old` and a fresh draw `fresh` from the layer's own initializer
(`init_rules`) of the same shape. `orthogonal` ignores `fresh` for weights: it replaces the weight
by the nearest (semi-)orthogonal matrix (FIRE), so it is meant for whole layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from replast.reinit.registry import register_scheme


@dataclass(frozen=True)
class SchemeInput:
    """`groups`: blocks of rows that are separate matrices (a conv's groups; 3 for a fused q, k, v)."""

    shrink: float = 0.4
    perturb: float = 0.1
    groups: int = 1


@register_scheme("init")
def init(old: Tensor, fresh: Tensor, spec: SchemeInput) -> Tensor:
    """fresh values from the layer's from-scratch initializer"""
    return fresh


@register_scheme("init-matched")
def init_matched(old: Tensor, fresh: Tensor, spec: SchemeInput) -> Tensor:
    """fresh initializer values rescaled to the pretrained layer's standard deviation"""
    if fresh.numel() < 2 or old.numel() < 2 or float(fresh.std()) == 0.0:
        return fresh  # zero-initialized biases stay zero
    return fresh * (old.float().std() / fresh.std())


@register_scheme("zero")
def zero(old: Tensor, fresh: Tensor, spec: SchemeInput) -> Tensor:
    """zeros"""
    return torch.zeros_like(fresh)


@register_scheme("shrink-perturb")
def shrink_perturb(old: Tensor, fresh: Tensor, spec: SchemeInput) -> Tensor:
    """lambda·w + sigma·fresh (Ash & Adams 2020)"""
    return spec.shrink * old.float() + spec.perturb * fresh


def polar(matrix: Tensor) -> Tensor:
    """Nearest semi-orthogonal matrix U Vᵀ (polar factor), batched over leading dims.

    FIRE approximates it with Newton–Schulz iterations; computing (W Wᵀ)^(-1/2) W from the
    eigendecomposition of the smaller Gram matrix is exact and ~30× cheaper on a CPU.
    """
    x = matrix.double()
    wide = x.shape[-2] <= x.shape[-1]
    x = x if wide else x.mT
    values, vectors = torch.linalg.eigh(x @ x.mT)
    floor = (values.amax(-1, keepdim=True) * 1e-12).clamp_min(1e-300)  # rank-deficient: stay finite
    x = (vectors * values.clamp_min(floor).rsqrt().unsqueeze(-2)) @ vectors.mT @ x
    return (x if wide else x.mT).float()


@register_scheme("orthogonal")
def orthogonal(old: Tensor, fresh: Tensor, spec: SchemeInput) -> Tensor:
    """nearest orthogonal weight (FIRE), scaled by sqrt(d_out/d_in); biases get fresh values"""
    if old.dim() < 2:
        return fresh
    out = old.shape[0]
    # A conv is the im2col matrix [out/g, in/g·k·k] per group (FIRE takes each kernel position, which
    # is undefined for depthwise convs); group matrices are orthogonalized as a batch. A fused attention
    # qkv is three [d, in] matrices (FIRE splits q, k and v).
    mats = old.float().reshape(spec.groups, out // spec.groups, -1)
    rows, cols = mats.shape[-2:]
    return (polar(mats) * math.sqrt(rows / cols)).reshape(old.shape)
