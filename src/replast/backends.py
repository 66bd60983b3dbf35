"""GPU backend settings for passes that run once (utilities, diagnosis) rather than every step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def without_autotuning() -> Iterator[None]:
    """Let cuDNN pick convolution algorithms by heuristics instead of timing every candidate.

    `cudnn.benchmark` (on for training) pays off for shapes that come back every step; for a few passes
    in eval mode that run once, its trials can cost seconds per network on a GPU. Restored on exit.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
