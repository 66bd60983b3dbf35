"""`load_dataset`: name → decoded (cached) data → seeded splits → `DatasetSplits` that hand out loaders.

    data = load_dataset("br35h", preprocessing, image_size=128, seed=0)
    for x, y in data.loader("train", 64, train=True, seed=0): ...
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from replast.data.base import Decoded
from replast.data.batches import BatchLoader
from replast.data.cache import cached_decode, cached_index, cached_without_source
from replast.data.device_loader import DeviceLoader, TensorStore
from replast.data.imagefolder import FileIndex, ImageFolderSource
from replast.data.registry import resolve_source
from replast.data.splits import split_dataset
from replast.data.stream_loader import ImageFiles, StreamLoader
from replast.errors import ConfigError, DataError
from replast.preprocessing import Preprocessing

SPLITS = ("train", "val", "test")
DEFAULT_MAX_DEVICE_BYTES = 2 << 30


@dataclass
class DatasetSplits:
    """Train/val/test index sets over one decoded dataset; `loader()` builds a `BatchLoader` for a split."""

    name: str
    classes: list[str]
    image_size: int
    preprocessing: Preprocessing
    indices: dict[str, torch.Tensor]
    labels: torch.Tensor
    """Labels of every stored image (index with `indices[split]`)."""
    groups: torch.Tensor
    """Duplicate-group id of every stored image (members of a group share a split)."""
    seed: int
    device: torch.device
    _make: Callable[..., BatchLoader] = field(repr=False)
    _record: dict[str, Any] = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def record(self) -> dict[str, Any]:
        """JSON-able description: source hash, split indices, unreadable images, options."""
        return {**self._record, "splits": {k: v.tolist() for k, v in self.indices.items()}}

    def split_labels(self, split: str) -> torch.Tensor:
        return self.labels[self._split(split)]

    def _split(self, split: str) -> torch.Tensor:
        if split not in self.indices:
            raise ConfigError(f"unknown split {split!r}: valid: {', '.join(SPLITS)}")
        return self.indices[split]

    def loader(
        self, split: str, batch_size: int, *, train: bool | None = None, seed: int | None = None,
        rank: int = 0, world_size: int = 1, augment: bool | None = None, shuffle: bool | None = None,
    ) -> BatchLoader:
        """Batches of `split`; `train` (default: split == "train") shuffles, augments and drops the last batch.

        `batch_size` is per rank; `seed` defaults to the dataset's; `augment=False` turns off crop+flip;
        `shuffle` (default: `train`) draws a seeded order per epoch.
        """
        train = split == "train" if train is None else train
        return self._make(
            self._split(split), batch_size=batch_size, image_size=self.image_size,
            mean=self.preprocessing.mean, std=self.preprocessing.std, train=train,
            augment=train if augment is None else augment, seed=self.seed if seed is None else seed,
            rank=rank, world_size=world_size, device=self.device, shuffle=shuffle,
        )


def _check_options(pre: Preprocessing, size: int, opts: dict[str, Any]) -> None:
    errors = []
    if size < 8:
        errors.append(f"image_size must be >= 8, got {size}")
    if pre.patch_size and size % pre.patch_size:
        errors.append(_patch_size_error(size, pre.patch_size))
    v, t = opts["val_fraction"], opts["test_fraction"]
    if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
        errors.append(f"val_fraction {v} + test_fraction {t} must be in [0, 1) and leave room for training")
    if not 0 < opts["train_fraction"] <= 1:
        errors.append(f"train_fraction {opts['train_fraction']} must be in (0, 1]")
    if opts["max_samples"] is not None and opts["max_samples"] < 2:
        errors.append(f"max_samples {opts['max_samples']} must be >= 2 (or None for all)")
    if not 0 <= opts["max_bad_fraction"] <= 1:
        errors.append(f"max_bad_fraction {opts['max_bad_fraction']} must be in [0, 1]")
    if errors:
        raise ConfigError("; ".join(errors))


def _patch_size_error(size: int, patch: int) -> str:
    """The message for a ViT input side that is not a whole number of patches, with the nearest valid sides."""
    below = size // patch * patch
    valid = [s for s in (below, below + patch) if s >= max(8, patch)]
    return (f"image_size {size} is not a multiple of the model's patch size {patch}: "
            f"use {' or '.join(map(str, valid))}")


def check_bad_fraction(name: str, n_good: int, bad: list[dict[str, str]], max_bad_fraction: float) -> None:
    """DataError when too many images are unreadable; a warning when some are."""
    total = n_good + len(bad)
    if not bad:
        return
    first = f"first: {bad[0]['path']}: {bad[0]['reason']}"
    if n_good == 0 or len(bad) > max_bad_fraction * total:
        raise DataError(
            f"{len(bad)} of {total} images of {name} cannot be read ({len(bad) / total:.1%} > max_bad_fraction "
            f"{max_bad_fraction}; {first}): fix or remove them, or allow more with --max-bad-fraction"
        )
    warnings.warn(f"{len(bad)} of {total} images of {name} cannot be read and are left out ({first}); "
                  "they are listed in the dataset record", stacklevel=3)


def _check_not_empty(indices: dict[str, torch.Tensor], fractions: dict[str, float]) -> None:
    empty = [s for s, f in fractions.items() if f > 0 and len(indices[s]) == 0]
    if empty:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in indices.items())
        raise ConfigError(f"the {' and '.join(empty)} split would be empty ({sizes}): raise max_samples or the "
                          "split fractions, or use a larger dataset")


def _check_classes_covered(indices: dict[str, torch.Tensor], labels: torch.Tensor, classes: list[str],
                           fractions: dict[str, float]) -> None:
    """ConfigError when a class with images is absent from an evaluation split (too few images to split)."""
    present = torch.unique(labels[torch.cat(list(indices.values()))]).tolist()
    for split in ("val", "test"):
        if fractions[split] > 0 and len(indices[split]):
            missing = sorted(set(present) - set(labels[indices[split]].tolist()))
            if missing:
                counts = torch.bincount(labels, minlength=len(classes))
                named = ", ".join(f"{classes[c]!r} ({int(counts[c])} images)" for c in missing[:3])
                raise ConfigError(f"class {named} has no image in the {split} split: too few images for the split; "
                                  "add images, remove the class, or change --val_fraction/--test_fraction")


def _group_summary(groups: torch.Tensor) -> dict[str, int]:
    sizes = torch.bincount(torch.unique(groups, return_inverse=True)[1]) if len(groups) else torch.zeros(0)
    multi = sizes[sizes > 1]
    return {"groups": len(sizes), "duplicate_groups": len(multi), "images_in_duplicate_groups": int(multi.sum())}


def _decide_stream(source: Any, stored: int, device_cache: str, max_device_bytes: int) -> bool:
    if device_cache not in ("auto", "on", "off"):
        raise ConfigError(f"device_cache {device_cache!r}: valid: auto, on, off")
    if not isinstance(source, ImageFolderSource):
        if device_cache == "off":
            raise ConfigError(f"device_cache='off' (streaming) needs an image-file dataset; {source.name} is not one")
        return False
    if device_cache == "off":
        return True
    need = source.estimate_bytes(stored)
    if need > max_device_bytes and device_cache == "on":
        raise ConfigError(f"{source.name} at {stored} px needs {need / 2**30:.1f} GiB on the device, more than "
                          f"max_device_bytes {max_device_bytes / 2**30:.1f} GiB; use --device_cache auto (streams "
                          "with a warning) or off, or a smaller --image_size")
    if need > max_device_bytes:
        warnings.warn(f"{source.name} at {stored} px needs {need / 2**30:.1f} GiB > max_device_bytes "
                      f"{max_device_bytes / 2**30:.1f} GiB: streaming from disk through DataLoader workers (slower); "
                      "lower image_size or raise max_device_bytes to keep it on the device", stacklevel=3)
        return True
    return False


def load_dataset(
    name: str, preprocessing: Preprocessing, *, image_size: int | None = None, seed: int = 0,
    val_fraction: float = 0.15, test_fraction: float = 0.15, train_fraction: float = 1.0,
    max_samples: int | None = None, max_bad_fraction: float = 0.01, device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None, device_cache: Literal["auto", "on", "off"] = "auto",
    max_device_bytes: int = DEFAULT_MAX_DEVICE_BYTES,
) -> DatasetSplits:
    """Decode (once, cached) and split a dataset for a model with `preprocessing`.

    `image_size` defaults to `preprocessing.input_size`; image files are stored at that size, 28 px sources
    at 28 and resized per batch. `device_cache`: auto = keep the uint8 data on `device` unless an image
    folder needs more than `max_device_bytes` (then stream from disk); off = always stream; on = never.
    """
    size = preprocessing.input_size if image_size is None else image_size
    opts = dict(val_fraction=val_fraction, test_fraction=test_fraction, train_fraction=train_fraction,
                max_samples=max_samples, max_bad_fraction=max_bad_fraction)
    _check_options(preprocessing, size, opts)
    source = resolve_source(name)
    stored = source.native_size or size
    data: Decoded | FileIndex
    if source.available():
        stream = _decide_stream(source, stored, device_cache, max_device_bytes)
        data = cached_index(source, cache_dir) if stream else cached_decode(source, stored, cache_dir)
    else:  # e.g. an offline GPU node with a copied cache; raises what to install when there is none
        stream, data = False, cached_without_source(source, stored, cache_dir)
    check_bad_fraction(source.name, len(data.labels), data.bad, max_bad_fraction)
    split = data.split if isinstance(data, Decoded) else None
    indices = split_dataset(data.labels, data.groups, split, val_fraction=val_fraction, test_fraction=test_fraction,
                            train_fraction=train_fraction, max_samples=max_samples, seed=seed)
    fractions = {"train": 1.0, "val": val_fraction, "test": test_fraction if split is None else 1.0}
    _check_not_empty(indices, fractions)
    _check_classes_covered(indices, data.labels, data.classes, fractions)
    record = {
        "dataset": source.name, "source_hash": data.source_hash, "classes": data.classes,
        "num_images": len(data.labels), "stored_size": stored, "image_size": size,
        "mode": "stream" if stream else "device", "seed": seed, **opts, "official_split": split is not None,
        "split_sizes": {k: len(v) for k, v in indices.items()}, **_group_summary(data.groups),
        "num_bad": len(data.bad), "bad_images": data.bad, "items": data.items,
    }
    return DatasetSplits(
        name=source.name, classes=data.classes, image_size=size, preprocessing=preprocessing, indices=indices,
        labels=data.labels, groups=data.groups, seed=seed, device=torch.device(device), _make=_loader_factory(source, data, stored),
        _record=record,
    )


def _loader_factory(source: Any, data: Decoded | FileIndex, stored: int) -> Callable[..., BatchLoader]:
    """Binds the loaders of all splits to one shared copy of the data (tensors or file list)."""
    plan = {"stored_size": stored}
    if isinstance(data, Decoded):
        store = TensorStore(data.images, data.labels)
        return lambda idx, **kw: DeviceLoader(store, idx, **plan, **kw)
    files = ImageFiles([str(source.root / p) for p in data.items], data.labels, stored, draft=source.draft)
    return lambda idx, **kw: StreamLoader(files, idx, **plan, **kw)
