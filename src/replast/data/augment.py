"""Batched, on-device image ops: random resized crop + flip via one `grid_sample`, resize, normalize.

Parameters are drawn on the CPU from an explicit generator (`seeded_generator(seed, epoch, batch)`), so
a batch is reproducible on any device; `resized_crop` matches torchvision's per-image `resized_crop`
(bilinear) for the same integer parameters when the crop is enlarged, as it is for stored data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from replast.transfer import host_to_device

SCALE = (0.5, 1.0)
RATIO = (3 / 4, 4 / 3)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose seed mixes all `keys` (e.g. seed, epoch, batch) without collisions."""
    state = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass(frozen=True)
class CropParams:
    """Per-sample crop boxes (int64 [B], pixels of the stored image) and horizontal flips (bool [B])."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, sl: slice) -> CropParams:
        return CropParams(*(getattr(self, f.name)[sl] for f in fields(self)))

    def to(self, device: torch.device | str) -> CropParams:
        packed = host_to_device(torch.stack([getattr(self, f.name).long() for f in fields(self)]), device)  # one copy
        top, left, height, width, flip = packed.unbind(0)
        return CropParams(top, left, height, width, flip.bool())


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback after failed attempts: the largest centred box within the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def sample_crop_params(
    n: int, height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO, attempts: int = 10,
) -> CropParams:
    """RandomResizedCrop's distribution, vectorized: the first of `attempts` draws that fits, per sample."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, attempts, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # index of the first fitting attempt (0 when none fits)
    found = fits.any(1)
    fb_h, fb_w = _fallback_box(height, width, ratio)
    h = torch.where(found, h.gather(1, first)[:, 0], fb_h)
    w = torch.where(found, w.gather(1, first)[:, 0], fb_w)
    u_top, u_left, u_flip = torch.rand(3, n, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u_top * (height - h + 1)).long(), (height - h) // 2)
    left = torch.where(found, (u_left * (width - w + 1)).long(), (width - w) // 2)
    return CropParams(top=top, left=left, height=h, width=w, flip=u_flip < 0.5)


def _sample_coords(start: torch.Tensor, length: torch.Tensor, size: int, full: int) -> torch.Tensor:
    """grid_sample coordinates [B,size] of output pixel centres in a box, clamped to the box like interpolate."""
    centres = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    start, length = start.float()[:, None], length.float()[:, None]
    src = start + centres * length / size - 0.5
    src = torch.minimum(torch.maximum(src, start), start + length - 1)
    return (2 * src + 1) / full - 1  # pixel index → [-1, 1] for align_corners=False


def resized_crop(x: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """Crop each image of float x [B,C,H,W] to its box, flip where asked, resize to size×size (bilinear)."""
    p = params.to(x.device)
    gx = _sample_coords(p.left, p.width, size, x.shape[-1])
    gx = torch.where(p.flip[:, None], gx.flip(1), gx)
    gy = _sample_coords(p.top, p.height, size, x.shape[-2])
    b = x.shape[0]
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _antialias_shrunk(out, x, params, size)


def _antialias_shrunk(out: torch.Tensor, x: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """Redo, image by image, the crops that shrink (a source stored larger than the training size):
    grid_sample does not low-pass filter, torchvision's antialiased resize does. Crops that are enlarged,
    the usual case, keep the batched result. `params` are on the host, so this costs no device sync."""
    shrunk = torch.nonzero((params.height > size) | (params.width > size)).flatten().tolist()
    for i in shrunk:
        top, left, height, width = (int(getattr(params, k)[i]) for k in ("top", "left", "height", "width"))
        crop = F.interpolate(x[i:i + 1, :, top:top + height, left:left + width], size=(size, size),
                             mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = crop.flip(-1) if bool(params.flip[i]) else crop
    return out


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Plain antialiased bilinear resize of float x [B,C,H,W] to size×size (no-op when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def to_model_input(
    images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor, params: CropParams | None = None
) -> torch.Tensor:
    """uint8 [B,C,H,W] (C 1 or 3) → normalized float32 [B,3,size,size]; augmented when `params` is given.

    `mean`/`std` are [1,3,1,1] on the images' device, in 0..1 units.
    """
    x = images.float()
    x = resized_crop(x, params, size) if params is not None else resize(x, size)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grey sources go to RGB models as 3 equal channels
    return (x / 255.0 - mean) / std
