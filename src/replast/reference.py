"""ImageNet-like reference batches that need no download: scikit-image's colour photos + seeded crops/flips.

    batches = reference_batches(preprocessing, image_size=128)   # [(x, y)], x normalized like the model

Labels are zeros and unused: diagnose reference data with `labels="argmax"` (pseudo-labels = the model's
own prediction) so gradient statistics do not depend on made-up classes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from replast.errors import ConfigError, DataError
from replast.preprocessing import Preprocessing

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
"""Natural colour photos shipped inside scikit-image (no pooch download needed)."""
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@functools.lru_cache(maxsize=1)
def reference_images() -> tuple[Tensor, ...]:
    """The photos as float [3, H, W] tensors in [0, 1] (decoded once per process)."""
    try:
        from skimage import data
    except ImportError as e:
        raise DataError("reference images need scikit-image: pip install scikit-image") from e
    images = []
    for name in PHOTOS:
        try:
            img = getattr(data, name)()
        except Exception:  # a photo that needs an optional download is skipped, the others suffice
            continue
        img = np.asarray(img[0] if isinstance(img, tuple) else img)
        images.append(torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1).float() / 255.0)
    if not images:
        raise DataError(f"none of the scikit-image photos {PHOTOS} could be loaded; reinstall scikit-image")
    return tuple(images)


def random_resized_crop(
    img: Tensor, size: int, g: torch.Generator, interpolation: str = "bilinear"
) -> Tensor:
    """A crop of CROP_SCALE area share and CROP_RATIO aspect, resized to size x size, flipped half the time."""
    _, h, w = img.shape
    scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * torch.rand((), generator=g).item()
    log_r = (
        math.log(CROP_RATIO[0]) + math.log(CROP_RATIO[1] / CROP_RATIO[0]) * torch.rand((), generator=g).item()
    )
    area, ratio = scale * h * w, math.exp(log_r)
    ch = min(h, max(1, round(math.sqrt(area / ratio))))
    cw = min(w, max(1, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (), generator=g))
    left = int(torch.randint(0, w - cw + 1, (), generator=g))
    crop = img[None, :, top : top + ch, left : left + cw]
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    out = F.interpolate(crop, size=(size, size), mode=mode, antialias=True, align_corners=False)[0]
    if torch.rand((), generator=g).item() < 0.5:
        out = out.flip(-1)
    return out.clamp(0, 1)


def reference_batches(
    preprocessing: Preprocessing,
    image_size: int | None = None,
    batch_size: int = 32,
    n: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[tuple[Tensor, Tensor]]:
    """`n` augmented photos in `batch_size` batches of (x [B,3,S,S] normalized, y zeros int64).

    S = image_size or preprocessing.input_size; same seed, same images.
    """
    size = image_size or preprocessing.input_size
    if size < 8 or n < 1 or batch_size < 1:
        raise ConfigError(
            f"image_size={size}, n={n}, batch_size={batch_size}: need size >= 8 and n, batch_size >= 1"
        )
    g = torch.Generator().manual_seed(seed)
    photos = reference_images()
    # Cycle through the photos so every one is used as evenly as possible.
    x = torch.stack([random_resized_crop(photos[i % len(photos)], size, g, preprocessing.interpolation)
                     for i in range(n)])  # fmt: skip
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(device)
    return [(xb, torch.zeros(xb.shape[0], dtype=torch.long, device=device)) for xb in x.split(batch_size)]
