"""Training throughput, side by side in one process: replast vs a plain DataLoader loop vs an on-device bound.

    replast bench --models [mobilenetv2_100] --sizes [128]      # or: python benchmarks/throughput.py

All three run the same model, optimizer, batch size and precision on the same images (Br35H by default, or
any `imagefolder:PATH`):
`replast` = the fine-tuning step of `replast finetune` over the device-resident, device-augmented loader;
`reference` = torchvision ImageFolder + RandomResizedCrop/flip + a standard DataLoader (workers, pinned memory);
`synthetic` = random tensors already on the device (the upper bound for any data pipeline).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric

from replast.checkpoint import write_text
from replast.data import load_dataset
from replast.data.imagefolder import ImageFolderSource
from replast.data.registry import resolve_source
from replast.errors import ConfigError
from replast.models import load_model
from replast.runfiles import check_creatable
from replast.train import resolve_precision

WARMUP_STEPS = 3


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{os.cpu_count()}cores"


def _timed(step: Callable[[torch.Tensor, torch.Tensor], None], batches: Iterator, steps: int,
           batch_size: int, device: torch.device) -> dict[str, float]:
    for _ in range(WARMUP_STEPS):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"images_per_s": steps * batch_size / seconds, "seconds": seconds, "peak_memory_mib": peak}


def _forever(make: Callable[[], Iterable]) -> Iterator:
    while True:
        yield from make()


def _train_step(fabric: Fabric, name: str, size: int, num_classes: int, weights: str):
    model, preprocessing = load_model(name, num_classes=num_classes, weights=weights)
    if fabric.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model, optimizer = fabric.setup(model, optimizer)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(fabric.device, non_blocking=True), y.to(fabric.device, non_blocking=True)
        with fabric.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, preprocessing.with_size(size)


def image_folder(data: str) -> ImageFolderSource:
    """The image-file source both pipelines read; the reference loop needs files, so MNIST-likes are refused."""
    source = resolve_source(data)
    if not isinstance(source, ImageFolderSource):
        raise ConfigError(f"bench --data {data!r}: the reference DataLoader loop reads image files; "
                          "pass br35h or imagefolder:PATH")
    source.fingerprint()  # a missing folder or package fails here, in one line, before any model loads
    return source


def _reference_loader(root: Path, preprocessing, size: int, batch_size: int, workers: int):
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(preprocessing.mean, preprocessing.std),
    ])
    images = datasets.ImageFolder(str(root), transform=transform,
                                  loader=lambda p: datasets.folder.default_loader(p).convert("RGB"))
    return torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), drop_last=True,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def measure(name: str, size: int, batch_size: int, steps: int, fabric: Fabric, workers: int,
            data_name: str = "br35h", weights: str = "pretrained") -> dict[str, Any]:
    """Images/s of the three pipelines for one model and image size."""
    source = image_folder(data_name)
    classes = len(source.list_files()[0])
    step, preprocessing = _train_step(fabric, name, size, num_classes=classes, weights=weights)
    data = load_dataset(data_name, preprocessing, image_size=size, device=fabric.device)
    loader = data.loader("train", batch_size, train=True, seed=0)
    if len(loader) == 0:  # both loops drop the last incomplete batch: an epoch without one never yields a step
        raise ConfigError(f"bench: the training split of {data_name} has {len(loader.indices)} images, fewer than "
                          f"one batch of {batch_size}; lower --batch_size or use more images")
    epochs = iter(range(10**6))

    def replast_epoch():
        loader.set_epoch(next(epochs))
        return loader

    x = torch.randn(batch_size, 3, size, size, device=fabric.device)
    y = torch.randint(0, classes, (batch_size,), device=fabric.device)
    reference = _reference_loader(source.root, preprocessing, size, batch_size, workers)
    results = {
        "synthetic": _timed(step, _forever(lambda: [(x, y)]), steps, batch_size, fabric.device),
        "replast": _timed(step, _forever(replast_epoch), steps, batch_size, fabric.device),
        "reference": _timed(step, _forever(lambda: reference), steps, batch_size, fabric.device),
    }
    rate = {k: v["images_per_s"] for k, v in results.items()}
    return {"model": name, "image_size": size, "batch_size": batch_size, "steps": steps,
            "reference_workers": workers, **results,
            "replast_vs_reference": rate["replast"] / rate["reference"],
            "replast_vs_synthetic": rate["replast"] / rate["synthetic"],
            "reference_vs_synthetic": rate["reference"] / rate["synthetic"]}


def bench_command(models: list[str], sizes: list[int], batch_size: int, steps: int, data: str, weights: str) -> str:
    """The shell command that repeats a measurement: `--models [a,b]` (a Python list's repr has spaces and
    quotes, which the shell splits and strips), every value quoted where the shell needs it."""
    return shlex.join(["replast", "bench", "--models", f"[{','.join(models)}]",
                       "--sizes", f"[{','.join(map(str, sizes))}]", "--batch_size", str(batch_size),
                       "--steps", str(steps), "--data", data, "--weights", weights])


def run_throughput(models: list[str] | None = None, sizes: list[int] | None = None, batch_size: int = 64,
                   steps: int = 20, out: str | None = None, console=None, data: str = "br35h",
                   weights: str = "pretrained") -> int:
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=1, precision=resolve_precision("auto", accelerator))
    torch.backends.cudnn.benchmark = True
    models = models or ["mobilenetv2_100", "efficientnet_lite0"]
    sizes = sizes or ([128, 224] if accelerator == "cuda" else [128])
    workers = min(8, os.cpu_count() or 1)
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps={steps} and batch_size={batch_size}: both must be at least 1")
    device = _device_name(fabric.device)
    path = Path(out or f"benchmarks/results/throughput_{'cpu' if accelerator == 'cpu' else device}.json")
    check_creatable(path)  # a path that can never be written fails now, not after minutes of measuring
    image_folder(data)  # refuse a dataset without image files before loading anything
    rows = [measure(m, s, batch_size, steps, fabric, workers, data, weights) for m in models for s in sizes]
    record = {"device": device, "torch": torch.__version__, "intra_op_threads": torch.get_num_threads(), "precision": fabric._precision.precision
              if hasattr(fabric._precision, "precision") else resolve_precision("auto", accelerator),
              "python": platform.python_version(), "data": data, "weights": weights, "results": rows,
              "command": bench_command(models, sizes, batch_size, steps, data, weights)}
    write_text(path, json.dumps(record, indent=2) + "\n")
    if console is not None:
        for r in rows:
            console.print(f"{r['model']} {r['image_size']}px: replast {r['replast']['images_per_s']:.1f} img/s, "
                          f"reference {r['reference']['images_per_s']:.1f}, synthetic {r['synthetic']['images_per_s']:.1f}"
                          f" → {r['replast_vs_reference']:.2f}x reference, {r['replast_vs_synthetic']:.2f}x bound")
        console.print(f"wrote {path}")
    return 0
