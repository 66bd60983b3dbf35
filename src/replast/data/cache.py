"""On-disk cache of decoded datasets: one safetensors file per (dataset, stored size).

Lives in `cache_dir`, else $REPLAST_CACHE, else ~/.cache/replast/datasets. The metadata carries the
source fingerprint and content hash and a checksum of the tensors, so a stale, truncated or corrupt
entry is rebuilt instead of used. Entries are written to a temporary file, fsynced and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from replast.data.base import Decoded, Source
from replast.data.imagefolder import FileIndex, ImageFolderSource
from replast.errors import DataError

FORMAT = "replast-dataset-v1"
log = logging.getLogger("replast.data")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("REPLAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "replast" / "datasets"


def entry_path(source: Source, stored_size: int | str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file of `source` decoded at `stored_size` px (`"*"` gives the glob over all sizes)."""
    return cache_root(cache_dir) / f"{source.cache_key()}-{stored_size}px.safetensors"


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def write_entry(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Atomic write: a reader sees the old entry or the complete new one, never half of one."""
    meta = {**meta, "format": FORMAT, "checksum": tensor_checksum(tensors)}
    payload = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def read_entry(path: Path, fingerprint: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The entry's tensors and metadata, or None when missing, stale (other fingerprint) or damaged.

    `fingerprint=None` accepts any fingerprint (the source files are not there to compare with)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or fingerprint not in (None, meta.get("fingerprint")):
                log.info("cache entry %s is stale (source changed); rebuilding", path)
                return None
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        warnings.warn(f"dataset cache {path} is unreadable ({e}); rebuilding it", stacklevel=3)
        return None
    if tensor_checksum(tensors) != meta.get("checksum"):
        warnings.warn(f"dataset cache {path} fails its checksum; rebuilding it", stacklevel=3)
        return None
    return tensors, meta


def _pack(d: Decoded | FileIndex, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"labels": d.labels, "groups": d.groups}
    if isinstance(d, Decoded):
        tensors["images"] = d.images
        if d.split is not None:
            tensors["split"] = d.split
    meta = {"fingerprint": fingerprint, "source_hash": d.source_hash, "classes": json.dumps(d.classes),
            "items": json.dumps(d.items), "bad": json.dumps(d.bad)}
    return tensors, meta


def _fields(meta: dict[str, str]) -> dict:
    return {"classes": json.loads(meta["classes"]), "items": json.loads(meta["items"]),
            "bad": json.loads(meta["bad"]), "source_hash": meta["source_hash"]}


def _decoded(t: dict[str, torch.Tensor], meta: dict[str, str]) -> Decoded:
    return Decoded(images=t["images"], labels=t["labels"], groups=t["groups"], split=t.get("split"), **_fields(meta))


def _store(path: Path, d: Decoded | FileIndex, fingerprint: str) -> None:
    try:
        write_entry(path, *_pack(d, fingerprint))
    except OSError as e:  # a read-only cache slows later runs down but must not fail this one
        warnings.warn(f"cannot write dataset cache {path} ({e}); set REPLAST_CACHE to a writable directory",
                      stacklevel=3)


def cached_decode(source: Source, stored_size: int, cache_dir: str | os.PathLike | None = None) -> Decoded:
    """Decoded images of `source` at `stored_size`, from the cache when it is fresh, else decoded and cached."""
    if not source.cacheable:
        return source.decode(stored_size)
    fingerprint = source.fingerprint()
    path = entry_path(source, stored_size, cache_dir)
    entry = read_entry(path, fingerprint)
    if entry is not None:
        return _decoded(*entry)
    started = time.perf_counter()
    decoded = source.decode(stored_size)
    log.info("decoded %s at %d px in %.1f s: %d images, %d unreadable → %s", source.name, stored_size,
             time.perf_counter() - started, len(decoded.images), len(decoded.bad), path)
    _store(path, decoded, fingerprint)
    return decoded


def cached_without_source(source: Source, stored_size: int, cache_dir: str | os.PathLike | None = None) -> Decoded:
    """A published dataset whose files are not installed, from a cache entry copied from another machine
    (e.g. to an offline GPU node). Trusted only when the entry carries the dataset's known content hash and
    passes its own checksum; otherwise the source's own error says what to install."""
    path = entry_path(source, stored_size, cache_dir)
    known = source.known_hash()
    with warnings.catch_warnings():  # read_entry's "rebuilding" does not apply: there is nothing to rebuild from
        warnings.simplefilter("ignore")
        entry = read_entry(path, None) if known is not None else None
    if entry is None or entry[1].get("source_hash") != known:
        try:
            source.fingerprint()  # raises the DataError that names the package to install
        except DataError as e:
            hint = ""
            if known is not None:
                hint = (f"; the copy at {path} is damaged or holds other data, copy it again" if path.exists() else
                        f", or copy its cache file {path.name} from a machine that has them into {path.parent}")
            raise DataError(f"{e}{hint}") from e
        raise DataError(f"{source.name}: no usable cache entry {path}")  # files appeared meanwhile: just retry
    log.info("%s: source files not installed; using the verified cache %s", source.name, path)
    return _decoded(*entry)


def sizes_usable_without_source(source: Source, cache_dir: str | os.PathLike | None = None) -> list[int]:
    """Stored sizes (px) of cache entries that carry the source's known content hash (header only; the
    checksum is checked when one is loaded), i.e. what a machine without the source files can run."""
    known = source.known_hash()
    sizes = []
    pattern = entry_path(source, "*", cache_dir)
    for path in sorted(pattern.parent.glob(pattern.name)) if known else []:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # a damaged entry is simply not usable
            continue
        size = path.stem.rsplit("-", 1)[1].removesuffix("px")
        if meta.get("format") == FORMAT and meta.get("source_hash") == known and size.isdigit():
            sizes.append(int(size))
    return sizes


def cached_index(source: ImageFolderSource, cache_dir: str | os.PathLike | None = None) -> FileIndex:
    """The scanned file list of an image folder (for streaming), cached like decoded data."""
    fingerprint = source.fingerprint()
    path = cache_root(cache_dir) / f"{source.cache_key()}-index.safetensors"
    entry = read_entry(path, fingerprint)
    if entry is not None:
        t, meta = entry
        return FileIndex(labels=t["labels"], groups=t["groups"], **_fields(meta))
    index = source.index()
    _store(path, index, fingerprint)
    return index
