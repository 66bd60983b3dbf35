"""`StreamLoader`: for image folders too large for the device, files are decoded by DataLoader workers.

Same plan and batch transform as `DeviceLoader` (see `batches.py`): workers decode the files of each
rank slice to uint8 at the stored size, pinned batches are copied to the device, and augmentation and
normalization run there. Used when a folder exceeds `max_device_bytes` or `device_cache="off"`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from replast.data.batches import Batch, BatchLoader
from replast.data.imagefiles import decode_file
from replast.errors import DataError


class ImageFiles(Dataset):
    """Item i = (uint8 [3,S,S], label) of file i, decoded exactly as for the device cache."""

    def __init__(self, paths: list[str], labels: torch.Tensor, size: int, draft: bool) -> None:
        self.paths, self.labels, self.size, self.draft = paths, labels, size, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        result = decode_file(self.paths[i], self.size, draft=self.draft)
        if result.pixels is None:
            raise DataError(f"cannot read {self.paths[i]} ({result.error}); it was readable when the folder was "
                            "scanned: was it changed during the run?")
        return torch.from_numpy(result.pixels), self.labels[i]


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class StreamLoader(BatchLoader):
    """BatchLoader over image files; iteration prefetches with `num_workers` processes."""

    def __init__(self, files: ImageFiles, indices: torch.Tensor, *, num_workers: int | None = None, **plan) -> None:
        super().__init__(indices, **plan)
        self.files = files
        self.num_workers = default_workers() if num_workers is None else num_workers

    def _fetch(self, idx: torch.Tensor) -> Batch:
        items = [self.files[int(i)] for i in idx]
        images = torch.stack([x for x, _ in items]) if items else torch.zeros(0, 3, self.stored_size, self.stored_size,
                                                                              dtype=torch.uint8)
        labels = torch.stack([y for _, y in items]) if items else torch.zeros(0, dtype=torch.int64)
        return images.to(self.device), labels.to(self.device)

    def _workers_loader(self, batches: list[list[int]]) -> DataLoader:
        return DataLoader(
            self.files, batch_sampler=batches, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.num_workers else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        plan = [(b, self.batch_indices(b).tolist()) for b in range(self._start(), len(self))]
        fetched = iter(self._workers_loader([idx for _, idx in plan if idx]))
        for b, idx in plan:
            if not idx:  # an empty rank slice of the last evaluation batch
                yield self.finish(*self._fetch(torch.zeros(0, dtype=torch.int64)), b)
                continue
            images, labels = next(fetched)
            yield self.finish(images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True), b)
