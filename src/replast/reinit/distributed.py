"""torch.distributed helpers: no-ops unless a process group is initialized.

Utility statistics are summed over ranks before selection, so every rank picks identical masks; the
changed tensors are then broadcast from rank 0, so resampled values are identical too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_rank0(tensors: Iterable[Tensor]) -> None:
    if active():
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)
