"""`BatchLoader`: the deterministic batch plan shared by the device-resident and the streaming loader.

Epoch order is `randperm` from a generator seeded by (seed, epoch) when training, the split's order
otherwise. DDP: every rank computes the same global order; global batch b holds positions
[b·B·W, (b+1)·B·W) (B = per-rank batch size, W = world size) and rank r takes the contiguous part
[r·m/W, (r+1)·m/W) of its m samples, so rank 0 ∪ … ∪ rank W-1 = the single-process batch of size B·W,
augmentation included (its parameters are drawn per global batch from (seed, epoch, b)). Training drops
the last incomplete global batch; evaluation keeps it, so its rank slices may be uneven or empty.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch

from replast.data.augment import CropParams, sample_crop_params, seeded_generator, to_model_input
from replast.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchLoader:
    """Iterable of (x float32 [b,3,S,S] normalized, y int64 [b]) on `device`; subclasses fetch uint8 images."""

    def __init__(
        self, indices: torch.Tensor, *, batch_size: int, image_size: int, stored_size: int,
        mean: tuple[float, float, float], std: tuple[float, float, float], train: bool, augment: bool,
        seed: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
        shuffle: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.indices = indices.to(torch.int64).cpu()
        self.batch_size, self.image_size, self.stored_size = batch_size, image_size, stored_size
        self.train, self.augment, self.seed = train, augment and train, seed
        self.shuffle = train if shuffle is None else shuffle
        self.rank, self.world_size = rank, world_size
        self._mean_std = (mean, std)
        self._norm: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.epoch, self._skip = 0, 0
        self._device = torch.device(device)
        self._order: tuple[int, torch.Tensor] | None = None

    # ---- plan ------------------------------------------------------------------------------
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n, g = len(self.indices), self.global_batch_size
        return n // g if self.train else math.ceil(n / g)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        """Start the next iteration at batch `n_batches` of the current epoch (exact resume)."""
        if not 0 <= n_batches <= len(self):
            raise ConfigError(f"cannot skip {n_batches} batches of an epoch of {len(self)}")
        self._skip = int(n_batches)

    def order(self) -> torch.Tensor:
        """Dataset indices in this epoch's order (same on every rank)."""
        if not self.shuffle:
            return self.indices
        if self._order is None or self._order[0] != self.epoch:
            perm = torch.randperm(len(self.indices), generator=seeded_generator(self.seed, self.epoch))
            self._order = (self.epoch, self.indices[perm])
        return self._order[1]

    def _global_span(self, b: int) -> tuple[int, int, int]:
        """Start of global batch b, its size m, and this rank's [lo, hi) within it."""
        if not 0 <= b < len(self):
            raise IndexError(f"batch {b} out of range for {len(self)} batches")
        start = b * self.global_batch_size
        m = min(self.global_batch_size, len(self.indices) - start)
        return start, m, (self.rank * m // self.world_size, (self.rank + 1) * m // self.world_size)

    def batch_indices(self, b: int) -> torch.Tensor:
        start, _, (lo, hi) = self._global_span(b)
        return self.order()[start + lo:start + hi]

    def crop_params(self, b: int) -> CropParams | None:
        """Augmentation of this rank's part of batch b (None when not augmenting)."""
        if not self.augment:
            return None
        _, m, (lo, hi) = self._global_span(b)
        generator = seeded_generator(self.seed, self.epoch, b)
        return sample_crop_params(m, self.stored_size, self.stored_size, generator)[lo:hi]

    # ---- batches -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> BatchLoader:
        """A loader with the same plan whose batches land on `device`."""
        moved = copy.copy(self)
        moved._device = torch.device(device)
        return moved

    def _fetch(self, idx: torch.Tensor) -> Batch:
        """uint8 images [b,C,H,W] and int64 labels [b] for dataset indices, on `self.device`."""
        raise NotImplementedError

    def finish(self, images: torch.Tensor, labels: torch.Tensor, b: int) -> Batch:
        """uint8 images of batch b (on the device) → normalized, augmented model input."""
        if len(images) == 0:  # an uneven last evaluation batch can leave a rank with nothing
            return torch.zeros(0, 3, self.image_size, self.image_size, device=self.device), labels
        if self.device not in self._norm:
            self._norm[self.device] = tuple(torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in self._mean_std)
        return to_model_input(images, self.image_size, *self._norm[self.device], self.crop_params(b)), labels

    def batch(self, b: int) -> Batch:
        """Batch b of the current epoch for this rank."""
        return self.finish(*self._fetch(self.batch_indices(b)), b)

    def _start(self) -> int:
        start, self._skip = self._skip, 0
        return start

    def __iter__(self) -> Iterator[Batch]:
        for b in range(self._start(), len(self)):
            yield self.batch(b)
