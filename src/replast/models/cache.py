"""On-disk cache of converted weights: one safetensors file per (model, source file, converter version).

Lives in $REPLAST_CACHE if set, else ~/.cache/replast/models. The metadata carries the sha256 of the tensors,
checked on every read, so a truncated or corrupted entry is rebuilt instead of used. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from replast.checkpoint import atomic_write
from replast.errors import OutputError

StateDict = dict[str, torch.Tensor]
CHECKSUM_KEY = "tensors_sha256"


def cache_dir() -> Path:
    """Where converted weights are cached (read at call time so tests can point it elsewhere)."""
    env = os.environ.get("REPLAST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "replast" / "models"


def tensors_sha256(tensors: StateDict) -> str:
    """Digest of names, dtypes, shapes and bytes, independent of the file layout."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_cached(path: Path) -> StateDict | None:
    """The cached tensors, or None when the entry is missing, unreadable or fails its checksum."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get(CHECKSUM_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types on truncated or garbled files
        warnings.warn(f"model cache {path} is unreadable ({e}); rebuilding it", stacklevel=3)
        return None
    if expected is None or tensors_sha256(tensors) != expected:
        warnings.warn(f"model cache {path} fails its checksum; rebuilding it", stacklevel=3)
        return None
    return tensors


def write_cached(path: Path, tensors: StateDict, meta: dict[str, str]) -> None:
    """Store `tensors` atomically; a cache that cannot be written only costs a conversion next time."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = save(tensors, metadata={**meta, CHECKSUM_KEY: tensors_sha256(tensors)})
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OutputError as e:
        warnings.warn(f"cannot write model cache ({e}); set REPLAST_CACHE to a writable directory", stacklevel=3)
