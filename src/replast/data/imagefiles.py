"""Decoding image files to square uint8 RGB arrays, in a small process pool; unreadable files are reported.

`decode_files(paths, size)` returns one `FileResult` per path (pixels, sha256, optional near-duplicate
hash, or the reason it failed). Used for the one-time cache build and, per image, by the stream loader.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image

from replast.errors import plain

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AHASH_SIDE = 16
_POOL_MIN_FILES = 64  # below this a pool costs more than it saves
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # PIL names the BytesIO it was given


@dataclass
class FileResult:
    sha256: str
    pixels: np.ndarray | None = None
    """uint8 [3,S,S], or None when the file could not be decoded."""
    ahash: bytes | None = None
    error: str | None = None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; 16-bit and float images are rescaled instead of clipped."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 65535 → 255
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return im.convert("RGB")


def average_hash(rgb: Image.Image) -> bytes:
    """16×16 grey mean-threshold hash of the full-resolution image (bicubic, as ASSETS.md's grouping)."""
    a = np.asarray(rgb.convert("L").resize((AHASH_SIDE, AHASH_SIDE), Image.BICUBIC), dtype=np.float64)
    return np.packbits(a > a.mean()).tobytes()


def decode_bytes(data: bytes, size: int | None, *, draft: bool, ahash: bool) -> tuple[np.ndarray | None, bytes | None]:
    """Decode one file's bytes; `size` None decodes without keeping pixels (a validity scan)."""
    if not data:
        raise ValueError("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        if draft and not ahash:
            # JPEG DCT scaling: decodes at 1/2..1/8 resolution, still >= the requested size.
            im.draft("RGB", (size or 64, size or 64))
        im.load()  # raises on truncated files (LOAD_TRUNCATED_IMAGES stays False)
        rgb = to_rgb(im)
    key = average_hash(rgb) if ahash else None
    if size is None:
        return None, key
    pixels = np.asarray(rgb.resize((size, size), Image.BICUBIC), dtype=np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), key


def decode_file(path: str, size: int | None, draft: bool = True, ahash: bool = False) -> FileResult:
    """Read, hash and decode one file; failures are returned, not raised, so the pool can report them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return FileResult(sha256="", error=f"cannot read: {e.strerror or e}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        pixels, key = decode_bytes(data, size, draft=draft, ahash=ahash)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return FileResult(sha256=sha, error=_reason(e))
    return FileResult(sha256=sha, pixels=pixels, ahash=key)


def _reason(e: Exception) -> str:
    """`Type: message` on one line, without object reprs; truncated files say so first."""
    text = plain(_OBJECT_REPR.sub("", str(e)))
    reason = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"truncated image ({reason})" if "truncated" in text.lower() else reason


def decode_files(
    paths: Sequence[str], size: int | None, *, draft: bool = True, ahash: bool = False, workers: int = 2
) -> list[FileResult]:
    """Decode `paths` in order with `workers` processes."""
    work = partial(decode_file, size=size, draft=draft, ahash=ahash)
    if workers <= 1 or len(paths) < _POOL_MIN_FILES:
        return [work(p) for p in paths]
    with multiprocessing.get_context().Pool(workers) as pool:
        return list(pool.imap(work, paths, chunksize=16))


def group_ids(keys: Sequence[bytes | str]) -> np.ndarray:
    """Equal keys → equal group id (numbered by first occurrence)."""
    first: dict[bytes | str, int] = {}
    return np.array([first.setdefault(k, len(first)) for k in keys], dtype=np.int64)
