"""Pure plasticity metrics: tensors in, numbers out (no hooks, no I/O, no globals).

`replast.probe.capture` collects the raw sums; `replast.diagnosis.diagnose` turns them into a table with
these functions. Every threshold is a named constant below so reports and docs can quote it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

NEAR_ZERO_REL = 1e-3
"""A weight is near zero when |w| < NEAR_ZERO_REL * max|w| of its layer."""
SMALL_GRAD_REL = 1e-2
"""A gradient entry is small when |g| < SMALL_GRAD_REL * mean|g| of its layer. 1e-3 only ever caught exactly
dead entries (float32 noise sits far below it); 1e-2 also catches entries 100x below the layer's typical one."""
DORMANT_TAU = 0.1
"""ReDo threshold: a unit is dormant when its normalized score s_i <= tau (Sokar et al., 2023)."""
RANK_MASS = 0.99
"""`rank_at` counts singular values until this share of the nuclear norm sum(sigma) (Kumar et al., 2021)."""
MIN_RANK_SAMPLES = 16
"""Fewer feature rows than this give NaN ranks: the estimate would only reflect the sample count."""


# --- weights ----------------------------------------------------------------------------------------------


def weight_stats(w: Tensor) -> dict[str, float]:
    """mean |w|, std, near-zero fraction (|w| < NEAR_ZERO_REL * max|w|) and L2 norm of one weight tensor."""
    w = w.detach().float()
    a = w.abs()
    peak = a.max() if a.numel() else torch.tensor(0.0)
    near = (a < NEAR_ZERO_REL * peak).float().mean() if peak > 0 else torch.tensor(1.0)
    return {
        "mean_abs_weight": a.mean().item(),
        "weight_std": w.std().item() if w.numel() > 1 else 0.0,
        "near_zero_fraction": near.item(),
        "weight_norm": torch.linalg.vector_norm(w).item(),
    }


# --- gradients --------------------------------------------------------------------------------------------


def grad_stats(g: Tensor, w: Tensor) -> dict[str, float]:
    """grad norm, grad-to-weight norm ratio and small-gradient fraction (see SMALL_GRAD_REL).

    An all-zero gradient has small-gradient fraction 1; a zero weight norm gives an infinite ratio only when
    the gradient is non-zero (0/0 is reported as 0: nothing moves and nothing is there).
    """
    g = g.detach().float()
    a = g.abs()
    gn = torch.linalg.vector_norm(g).item()
    wn = torch.linalg.vector_norm(w.detach().float()).item()
    mean = a.mean().item() if a.numel() else 0.0
    small = (a < SMALL_GRAD_REL * mean).float().mean().item() if mean > 0 else 1.0
    ratio = gn / wn if wn > 0 else (math.inf if gn > 0 else 0.0)
    return {"grad_norm": gn, "grad_to_weight": ratio, "small_grad_fraction": small}


# --- activations ------------------------------------------------------------------------------------------


def redo_scores(sum_abs: Tensor, count: int) -> Tensor:
    """ReDo score per unit: s_i = mean|a_i| / mean_j mean|a_j|; all zeros when the whole layer is silent."""
    mean = sum_abs.double() / max(count, 1)
    layer = mean.mean()
    return mean / layer if layer > 0 else torch.zeros_like(mean)


def dormant_fraction(scores: Tensor, tau: float = DORMANT_TAU) -> float:
    """Share of units with score <= tau; an all-zero layer (all scores 0) is 100% dormant."""
    return (scores <= tau).double().mean().item() if scores.numel() else math.nan


def zero_unit_fraction(never_positive: Tensor) -> float:
    """Share of units never positive on any input ([U] bool).

    For ReLU/ReLU6 these units output exactly zero everywhere; for GELU/SiLU they never leave the negative,
    near-zero region.
    """
    return never_positive.double().mean().item() if never_positive.numel() else math.nan


def fraction(count: float, total: float) -> float:
    """count / total, NaN when there is nothing to count (used for ReLU zeros and ReLU6 caps)."""
    return float(count) / float(total) if total > 0 else math.nan


# --- features ---------------------------------------------------------------------------------------------


def singular_values(features: Tensor) -> Tensor:
    """Singular values of an [N, D] feature matrix (uncentred, as in Kumar et al. and Lyle et al.)."""
    f = features.detach().double().reshape(features.shape[0], -1)
    f = f[torch.isfinite(f).all(dim=1)]
    return torch.linalg.svdvals(f) if f.numel() else torch.zeros(0, dtype=torch.float64)


def effective_rank(s: Tensor) -> float:
    """exp(H(p)), p = sigma / sum(sigma) (Roy & Vetterli, 2007); n for the identity, 1 for rank 1, 0 if empty."""
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def stable_rank(s: Tensor) -> float:
    """sum(sigma^2) / sigma_max^2; n for the identity, 0 for an all-zero matrix."""
    if s.numel() == 0 or s.max() <= 0:
        return 0.0
    return ((s / s.max()) ** 2).sum().item()  # divide first: s**2 underflows for tiny spectra


def rank_at(s: Tensor, mass: float = RANK_MASS) -> int:
    """Smallest k with sum(sigma_1..k) >= mass * sum(sigma) (nuclear-norm share, Kumar et al.'s srank)."""
    total = s.sum()
    if total <= 0:
        return 0
    cum = torch.cumsum(s.sort(descending=True).values, 0) / total
    return int((cum < mass - 1e-12).sum().item()) + 1


def feature_ranks(features: Tensor | None) -> tuple[dict[str, float], str]:
    """Effective, stable and 99% rank of penultimate features, NaN with a note when too few rows."""
    nan = {"effective_rank": math.nan, "stable_rank": math.nan, "rank_99": math.nan}
    if features is None:
        return nan, "no penultimate features (no classifier head found)"
    n, d = features.shape[0], features[0].numel() if features.shape[0] else 0
    if n < MIN_RANK_SAMPLES:
        return nan, f"only {n} feature rows (< {MIN_RANK_SAMPLES}): ranks not estimated"
    s = singular_values(features)
    ranks = {"effective_rank": effective_rank(s), "stable_rank": stable_rank(s), "rank_99": float(rank_at(s))}
    note = f"ranks are capped by the {n} sampled rows (feature dim {d})" if n < d else ""
    return ranks, note


# --- combined score ---------------------------------------------------------------------------------------


def stall(grad_to_weight_rel: float) -> float:
    """Maps a grad-to-weight ratio relative to the model's median to [0, 1]: 1/(1+r); 0.5 at the median."""
    if grad_to_weight_rel is None or math.isnan(grad_to_weight_rel):
        return math.nan
    return 1.0 / (1.0 + max(grad_to_weight_rel, 0.0))


def plasticity_score(row: Mapping[str, float]) -> float:
    """Saturation score in [0, 1], higher = less plastic.

    Mean of the available terms among dormant_fraction, small_grad_fraction and
    stall(grad_to_weight_rel) = 1 / (1 + ratio / median ratio of the model's layers); missing (NaN) terms are
    skipped, NaN when none is available. A dead layer (all dormant, zero gradient) scores 1.
    """
    terms = [
        row.get("dormant_fraction", math.nan),
        row.get("small_grad_fraction", math.nan),
        stall(row.get("grad_to_weight_rel", math.nan)),
    ]
    terms = [float(t) for t in terms if t is not None and not math.isnan(float(t))]
    return sum(terms) / len(terms) if terms else math.nan
