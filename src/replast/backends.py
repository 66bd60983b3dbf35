"""Backend settings: cuDNN for passes that run once (utilities, diagnosis), the host allocator for CPU runs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW_BYTES = 1 << 30


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed blocks up to 1 GiB for reuse instead of unmapping them; True when set.

    PyTorch's CPU tensors come from malloc, and glibc serves blocks over 32 MiB (a batch of activations)
    with a fresh mmap each time, so every step pays the kernel to zero new pages: measured on 2 CPU cores,
    half of a MobileNetV2 fine-tuning run's wall time was system time (41.8 s -> 25-33 s with this, peak
    memory 3.1 -> 3.8-4.2 GB; README, Performance). Left alone where the user set any MALLOC_* variable
    (their tuning wins), and off glibc. Called by the command line, not by the library: a process-wide
    setting is the application's.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return all(mallopt(option, _KEEP_BELOW_BYTES) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
