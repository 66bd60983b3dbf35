"""What every dataset source provides: a cheap fingerprint and a one-time decode into uint8 tensors.

Sources are registered in `replast.data.registry`; `replast.data.cache` stores what `decode` returns so
that a dataset is decoded once per (dataset, stored size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from replast.errors import DataError

TRAIN, VAL, TEST = 0, 1, 2
"""Codes of the official split tensor (`Decoded.split`)."""


@dataclass
class Decoded:
    """A decoded dataset: uint8 images [N,C,H,W] (C=1 grey, 3 colour), labels, duplicate groups."""

    images: torch.Tensor
    labels: torch.Tensor
    """int64 [N], indices into `classes`."""
    groups: torch.Tensor
    """int64 [N]; images sharing an id are (near-)duplicates and must land in the same split."""
    classes: list[str]
    source_hash: str
    """Content hash of the source files (for the record and the cache)."""
    split: torch.Tensor | None = None
    """int8 [N] official split (TRAIN or TEST); None when the dataset has no official split."""
    items: list[str] = field(default_factory=list)
    """Relative path of each image for file sources; empty for array sources (index = position)."""
    bad: list[dict[str, str]] = field(default_factory=list)
    """Images that could not be read: {"path", "reason"}; they are not in `images`."""

    def __post_init__(self) -> None:
        n = len(self.images)
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert len(self.labels) == n and len(self.groups) == n
        assert self.split is None or len(self.split) == n


class Source(ABC):
    """A dataset that can be fingerprinted cheaply and decoded once."""

    name: str = ""
    description: str = ""
    native_size: int | None = None
    """Side of the stored images when fixed by the source (28 for MNIST-likes); None = resized to the
    requested image size at decode time (image files)."""
    official_split: bool = False
    cacheable: bool = True
    """False for sources that are cheaper to regenerate than to read back (synthetic)."""
    num_images: int | None = None
    num_classes: int | None = None

    def cache_key(self) -> str:
        """File-name-safe key of the cache entry (one per source and stored size)."""
        return self.name

    @abstractmethod
    def location(self) -> str:
        """Where the source files are (for messages and `list_datasets`)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Cheap stamp of the source files (paths, sizes, mtimes, known hashes); raises DataError when missing."""

    @abstractmethod
    def decode(self, size: int | None) -> Decoded:
        """Read and decode every image; image-file sources resize to `size` (square)."""

    def known_hash(self) -> str | None:
        """Content hash of the published dataset when it is known in advance (None for your own folders): a
        cache entry that carries it can stand in for source files that are not installed."""
        return None

    def available(self) -> bool:
        try:
            self.fingerprint()
        except DataError:
            return False
        return True
