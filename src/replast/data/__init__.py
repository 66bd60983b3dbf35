"""Datasets: registry, one-time decoding into a cache, seeded group-aware splits, device-resident batches.

    from replast.data import load_dataset
    data = load_dataset("br35h", preprocessing, image_size=128)
    for x, y in data.loader("train", 64, train=True, seed=0): ...
"""

from replast.data import imagefolder, packaged, synthetic  # noqa: F401  (register the datasets)
from replast.data.augment import CropParams, resized_crop, sample_crop_params
from replast.data.base import Decoded, Source
from replast.data.batches import BatchLoader
from replast.data.dataset import DatasetSplits, load_dataset
from replast.data.device_loader import DeviceLoader
from replast.data.registry import DATASETS, list_datasets, register_dataset, resolve_source
from replast.data.splits import grouped_stratified_split, split_dataset, stratified_subsample
from replast.data.stream_loader import StreamLoader

__all__ = [
    "DATASETS", "BatchLoader", "CropParams", "DatasetSplits", "Decoded", "DeviceLoader", "Source", "StreamLoader",
    "grouped_stratified_split", "list_datasets", "load_dataset", "register_dataset", "resized_crop",
    "resolve_source", "sample_crop_params", "split_dataset", "stratified_subsample",
]
