"""Cost of plasticity diagnostics relative to fine-tuning: diagnose() on 8 batches vs one epoch, and
cheap_metrics() every 50 steps vs plain training steps (MobileNetV2, random init, synthetic Br35H-sized data).

    python benchmarks/diagnose_overhead.py                    # CPU, ~2100 images at 128 px, batch 32
    python benchmarks/diagnose_overhead.py --rounds 5

Epoch time = steps per epoch x the median measured step (measured steps, not a full epoch, so the script
stays short on CPU); measurements are medians over interleaved rounds, in process CPU time on CPU. Writes benchmarks/results/diagnose_overhead.json with the ratios and the goals.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from replast.diagnosis import cheap_metrics, diagnose

GOAL_DIAGNOSE = 0.10
GOAL_TRACKING = 0.03


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> list[float]:
    """Seconds per call: process CPU time on CPU (robust to other processes on a shared machine, with one
    thread), wall-clock time after a synchronize on accelerators."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    out = []
    for _ in range(repeats):
        _sync(device)
        start = clock()
        fn()
        _sync(device)
        out.append(clock() - start)
    return out


def _batches(n: int, batch: int, size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A small pool of distinct batches, cycled: data loading is not what is measured here."""
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch, 3, size, size, generator=g).to(device),
            torch.randint(0, 2, (batch,), generator=g).to(device),
        )
        for _ in range(n)
    ]


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=2).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pool = _batches(8, args.batch_size, args.image_size, device)
    cursor = iter(range(10**9))

    def step() -> None:
        x, y = pool[next(cursor) % len(pool)]
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    timed = {
        "step": step,
        "cheap_metrics": lambda: cheap_metrics(model, pool[0]),  # the trainer calls it after backward
        "diagnose": lambda: diagnose(model, pool, num_batches=8),
        "diagnose_full_backward": lambda: diagnose(model, pool, num_batches=8, grad_batches=8),
    }
    for fn in timed.values():  # warm-up: allocator, kernels, first-call costs
        fn()
    # Rounds interleave everything so that load from other processes hits all measurements alike; ratios use
    # medians (an epoch is a sum of ordinary steps, not of the luckiest one).
    times: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(args.rounds):
        for name, fn in timed.items():
            times[name] += _timed(fn, device, args.steps if name == "step" else 1)
    best = {k: statistics.median(v) for k, v in times.items()}
    steps_per_epoch = math.ceil(args.images / args.batch_size)
    epoch_s = steps_per_epoch * best["step"]
    return {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": "process CPU time" if device.type == "cpu" else "wall time",
        "torch": torch.__version__,
        "model": "torchvision mobilenet_v2, weights=None, 2 classes",
        "images": args.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "rounds": args.rounds,
        "seconds_min": {k: round(min(v), 4) for k, v in times.items()},
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "epoch_s_estimated": round(epoch_s, 2),
        "diagnose_over_epoch": round(best["diagnose"] / epoch_s, 4),
        "diagnose_full_backward_over_epoch": round(best["diagnose_full_backward"] / epoch_s, 4),
        "track_every_steps": args.every,
        "tracking_over_training": round(best["cheap_metrics"] / (args.every * best["step"]), 4),
        "goals": {"diagnose_over_epoch": GOAL_DIAGNOSE, "tracking_over_training": GOAL_TRACKING},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2100, help="images per epoch (Br35H train split ~ 2100)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="training steps timed per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    p.add_argument("--every", type=int, default=50, help="cheap_metrics every this many steps")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: CPU time is then a stable measure)"
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "diagnose_overhead.json")
    args = p.parse_args()
    result = run(args)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
