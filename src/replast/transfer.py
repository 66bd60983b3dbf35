"""Moving small tensors between host and GPU without stalling: one sync per batch of values, none per copy.

A blocking copy to or from a GPU waits for every queued kernel, so the CPU cannot queue the next work
while the GPU runs; in launch-bound loops (small models, per-layer loops) that is most of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def host_to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """Copy a CPU tensor to `device`; to a GPU from pinned memory and without waiting (the caching host
    allocator keeps the pinned buffer alive until the copy is done)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def host_values(values: Sequence[Tensor]) -> list[float]:
    """Many 0-d tensors as Python floats through one device-to-host copy (one sync, not one per value).

    Stacked per dtype, then cast once per group: a handful of kernels, not one cast per value (a
    re-initialization reads hundreds). float64, so counts stay exact up to 2**53."""
    if not values:
        return []
    device = values[0].device
    groups: dict[torch.dtype, list[int]] = {}  # dtype -> indices into values
    for i, v in enumerate(values):
        groups.setdefault(v.dtype, []).append(i)
    with torch.no_grad():
        flat = torch.cat([torch.stack([values[i].to(device) for i in members]).double()
                          for members in groups.values()])
    out = [0.0] * len(values)
    for i, value in zip((i for members in groups.values() for i in members), flat.tolist(), strict=True):
        out[i] = value
    return out
