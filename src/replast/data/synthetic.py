"""A small generated dataset for tests and demos: 3 learnable classes (disk, vertical/horizontal stripes), 32 px.

The content is fixed (its own seed), so only the split depends on `load_dataset(seed=...)`. Every
drawn shape appears twice with different noise; the two copies share a group, like near-duplicates.
"""

from __future__ import annotations

import numpy as np
import torch

from replast.data.base import Decoded, Source
from replast.data.registry import register_dataset

CLASSES = ["disk", "vertical-stripes", "horizontal-stripes"]


def make_shapes(
    per_class: int = 100, size: int = 32, copies: int = 2, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images [N,3,size,size], labels [N] and base ids [N]; each base is drawn `copies` times."""
    rng = np.random.default_rng(seed)
    bases = per_class // copies
    labels = np.repeat(np.arange(len(CLASSES)), bases)
    n = len(labels)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    cx, cy = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    radius = rng.uniform(0.18, 0.3, (n, 1, 1))
    tilt = rng.uniform(-np.pi / 12, np.pi / 12, (n, 1, 1))
    freq = rng.uniform(3.0, 6.0, (n, 1, 1))

    def grating(theta: np.ndarray) -> np.ndarray:  # stripes perpendicular to the direction theta
        return np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta))) > 0

    masks = np.stack([np.hypot(xx - cx, yy - cy) <= radius, grating(tilt), grating(np.pi / 2 + tilt)])
    masks = masks[labels, np.arange(n)]
    fg, bg = rng.uniform(0.55, 1.0, (n, 3, 1, 1)), rng.uniform(0.0, 0.45, (n, 3, 1, 1))
    clean = np.where(masks[:, None], fg, bg)
    base = np.repeat(np.arange(n), copies)
    noisy = clean[base] + rng.normal(0.0, 0.08, (n * copies, 3, size, size))
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8), labels[base], base


@register_dataset("synthetic")
class SyntheticSource(Source):
    """300 generated 32 px images of disks and vertical or horizontal stripes, with noise (tests, demos)."""

    name = "synthetic"
    description = "generated 32 px disks / vertical / horizontal stripes, 3 classes × 100, learnable in seconds"
    native_size = 32
    cacheable = False
    num_images = 300
    num_classes = 3

    def location(self) -> str:
        return "(generated)"

    def fingerprint(self) -> str:
        return "synthetic-v1"

    def decode(self, size: int | None) -> Decoded:
        images, labels, base = make_shapes()
        return Decoded(
            images=torch.from_numpy(images), labels=torch.from_numpy(labels.astype(np.int64)),
            groups=torch.from_numpy(base), classes=list(CLASSES), source_hash="synthetic-v1",
        )
