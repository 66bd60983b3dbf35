"""Load a model and a dataset that fit each other: the data follows the model's preprocessing and the
model's head follows the data's classes (a loaded head with as many outputs is kept; a `replast reinit` file
naming other classes is refused), and a transformer is fitted to --image_size (or refused in one line).
Used by finetune, diagnose, reinit and the benchmarks."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from replast.data import DatasetSplits, load_dataset
from replast.errors import ConfigError
from replast.models import build_model, head_classes, replace_head
from replast.models.generic import fit_input_size
from replast.models.weights import saved_classes

PROVISIONAL_CLASSES = 2


def load_model_and_data(model: str, data: str, *, weights: str = "pretrained", device: torch.device | str = "cpu",
                        drop_path: float = 0.0, **data_options) -> tuple[nn.Module, DatasetSplits]:
    """`data_options` go to `load_dataset` (image_size, seed, fractions, max_samples, max_bad_fraction)."""
    # The normalization comes from the model and the head size from the data. A head loaded from a weight
    # file that fits the data is kept (a model fine-tuned on it); any other is replaced, the shipped ImageNet
    # heads too (1000 outputs say nothing of a 1000-class dataset's classes). Heads are drawn as they always
    # were, a provisional one first, so that a seed gives the head it gave every earlier run.
    built = build_model(model, weights, drop_path=drop_path)
    splits = load_dataset(data, built.preprocessing, device=device, **data_options)
    fit_input_size(built.model, data_options.get("image_size") or built.preprocessing.input_size)
    net, loaded = built.model, head_classes(built.model) if built.head_loaded else None
    if loaded == splits.num_classes and weights not in ("pretrained", "none"):
        _check_saved_classes(weights, data, splits.classes)
    else:
        if loaded != PROVISIONAL_CLASSES:
            replace_head(net, PROVISIONAL_CLASSES)
        if splits.num_classes != PROVISIONAL_CLASSES:
            replace_head(net, splits.num_classes)
    return net.to(device), splits


def _check_saved_classes(weights: str, data: str, classes: list[str]) -> None:
    """A kept head's outputs belong to the classes its file names (`replast reinit` writes them): refuse data
    whose classes differ in name or order rather than pair outputs with the wrong classes."""
    saved = saved_classes(weights)
    if saved is not None and saved != list(classes):
        raise ConfigError(f"weights {weights}: its head was trained for classes {saved}, but {data} has classes "
                          f"{list(classes)} (same count, other names or order); use data with the file's classes "
                          "in that order, or re-export the model with `replast reinit` on this data")


def first_batches(splits: DatasetSplits, split: str, batch_size: int, count: int, *, seed: int = 0,
                  rank: int = 0, world_size: int = 1) -> list:
    """The first `count` un-augmented batches of a split in a seeded random order (for utilities, probes and
    BatchNorm passes): stored order is often sorted by class, and a few batches must sample every class."""
    loader = splits.loader(split, batch_size, train=False, shuffle=True, seed=seed, rank=rank,
                           world_size=world_size)
    loader.set_epoch(0)
    return list(itertools.islice(iter(loader), count))
