"""Build .gpu/, the git-ignored folder that benchmarks/device_session.sh needs on the GPU machine.

    .venv/bin/python benchmarks/prepare_device_carry.py --bench-images            # throughput benchmark
    .venv/bin/python benchmarks/prepare_device_carry.py --datasets br35h:128      # a Br35H study cell
    # then: run(command="... bash benchmarks/device_session.sh", carry=[".gpu"])

The GPU machine has torch, timm and lightning but no internet and none of the asset packages. This copies
the chosen models' weight files at their package paths (found there through PYTHONPATH), the chosen
datasets' verified cache entries (gzip; replast runs a published dataset from its cache when its files
are missing), optionally Br35H re-encoded as 224 px grey JPEG for `replast bench` (the originals are too
large), and the pure-Python wheels replast needs beyond that machine's stack. A call carries at most 64 MiB.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from replast.data import load_dataset, resolve_source
from replast.data.cache import entry_path
from replast.data.sources import br35h_root
from replast.models.assets import EFFICIENTNET_LITE, MOBILENET_V2, Asset
from replast.preprocessing import Preprocessing

WHEELS = ["jsonargparse==4.53.0", "docstring_parser==0.18.0", "typeshed_client==2.15.0"]
WEIGHTS: dict[str, Asset] = {"mobilenetv2_100": MOBILENET_V2,
                             **{f"efficientnet_lite{v}": a for v, a in EFFICIENTNET_LITE.items()}}
LIMIT = 64 * 2**20


def copy_weights(asset: Asset, site: Path) -> None:
    path = asset.verified_path()
    dest = site / asset.package / asset.relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dest)


def copy_cache(spec: str, dest: Path) -> None:
    """`name[:size]`: decode here if needed, then gzip the cache entry the GPU machine will read."""
    name, _, size = spec.partition(":")
    source = resolve_source(name)
    stored = source.native_size or int(size or 128)
    load_dataset(name, Preprocessing(input_size=stored))  # fills the cache (no-op when it is there)
    entry = entry_path(source, stored)
    dest.mkdir(parents=True, exist_ok=True)
    with open(entry, "rb") as src, gzip.open(dest / f"{entry.name}.gz", "wb", compresslevel=6) as out:
        shutil.copyfileobj(src, out)


def reencode(src: Path, dest: Path, side: int, quality: int) -> None:
    for path in sorted(src.rglob("*.jpg")):
        out = dest / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize((side, side), Image.BILINEAR).save(out, quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".gpu")
    parser.add_argument("--models", nargs="*", default=["mobilenetv2_100"], choices=sorted(WEIGHTS))
    parser.add_argument("--datasets", nargs="*", default=[], help="name[:size], e.g. br35h:128 animal-mnist")
    parser.add_argument("--bench-images", action="store_true", help="Br35H as 224 px grey JPEG for replast bench")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for model in args.models:
        copy_weights(WEIGHTS[model], out / "site")
    for spec in args.datasets:
        copy_cache(spec, out / "cache")
    if args.bench_images:
        reencode(br35h_root(), out / "br35h", 224, 80)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(out / "whl"), *WHEELS],
                   check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB (a call carries at most {LIMIT / 2**20:.0f} MiB with the working tree)")
    if size > LIMIT - 4 * 2**20:
        sys.exit("too large to carry in one call: split the work over two calls")


if __name__ == "__main__":
    main()
