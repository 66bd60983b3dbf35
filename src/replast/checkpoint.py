"""Crash-safe files: atomic writes (tmp + fsync + rename) and safe checkpoint loading.

A checkpoint is a plain dict of tensors and numbers saved with `torch.save` and read back with
`weights_only=True`, so loading one can never execute code. A failed write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from replast.errors import CheckpointError, OutputError, quote


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write through `write(fileobj)` into a temporary sibling, fsync, then rename over `path`."""
    return atomic_write_all({path: write})[0]


def atomic_write_all(files: Mapping[str | os.PathLike, Callable[[IO[bytes]], None]]) -> list[Path]:
    """Write every file into a temporary sibling first (fsynced), then rename them over their paths in order.

    A failed write replaces none of them, so files that belong together (a model and its report) never mix
    with an earlier pair; only a failing rename, which writes no data, can leave the earlier files partly
    replaced (the last path last: put the file that vouches for the others there)."""
    staged: list[tuple[Path, str]] = []
    try:
        for path, write in files.items():
            staged.append((Path(path), _stage(Path(path), write)))
        for path, tmp in staged:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}; check free space and permissions") from e
    finally:
        for _, tmp in staged:
            Path(tmp).unlink(missing_ok=True)
    for directory in dict.fromkeys(path.parent for path, _ in staged):
        _fsync_dir(directory)
    return [path for path, _ in staged]


def _stage(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """The name of a fsynced temporary sibling of `path` holding what `write` wrote."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; choose a writable location") from e
    try:
        with contextlib.suppress(OSError):  # some filesystems (vfat, some network mounts) refuse chmod
            os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}; check free space and permissions") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _file_mode(path: Path) -> int:
    # mkstemp creates 0600 files; give the result the mode a plain open() would (kept from the file it
    # replaces, else 0666 less the umask), so results stay readable by whoever shares the directory.
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a dict of state dicts, tensors and numbers atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code; every failure becomes one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or start without --resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and numbers "
            f"(possibly executable code); only load checkpoints you created ({quote(e, 120)})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                              f"delete it or restore it from a copy") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return state
