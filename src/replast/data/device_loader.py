"""`DeviceLoader`: the whole decoded dataset lives on the device as uint8; batches are gathered by index.

All per-batch work (gather, float, grey→RGB, crop/flip/resize, normalize) is a handful of batched tensor
ops on the device: no per-image Python work and no worker processes. See `batches.py` for the plan.
"""

from __future__ import annotations

import torch

from replast.data.batches import Batch, BatchLoader
from replast.transfer import host_to_device


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class TensorStore:
    """uint8 images [N,C,H,W] and labels [N], copied at most once to each device they are used on."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._copies = {_device_key(images.device): (images, labels)}

    @property
    def nbytes(self) -> int:
        images, _ = next(iter(self._copies.values()))
        return images.numel() * images.element_size()

    def on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = _device_key(device)
        if key not in self._copies:
            images, labels = next(iter(self._copies.values()))
            self._copies[key] = (images.to(key), labels.to(key))
        return self._copies[key]


class DeviceLoader(BatchLoader):
    """BatchLoader over a `TensorStore`; `.to(device)` shares one copy of the data per device."""

    def __init__(self, store: TensorStore, indices: torch.Tensor, **plan) -> None:
        super().__init__(indices, **plan)
        self.store = store
        store.on(self.device)

    def to(self, device: torch.device | str) -> DeviceLoader:
        moved = super().to(device)
        self.store.on(moved.device)
        return moved  # type: ignore[return-value]

    def _fetch(self, idx: torch.Tensor) -> Batch:
        images, labels = self.store.on(self.device)
        idx = host_to_device(idx, self.device)
        return images.index_select(0, idx), labels.index_select(0, idx)
