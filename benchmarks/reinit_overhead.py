"""Cost of one re-initialization vs one fine-tuning epoch (Br35H-sized: ~2100 images at 128 px).

    .venv/bin/python benchmarks/reinit_overhead.py --threads 1      # CPU (and CUDA when available)
Times a few SGD steps on synthetic tensors and extrapolates to an epoch (stated in the JSON), then
times restore_plasticity (utility pass, scoring+selection+resampling, re-estimating BatchNorm statistics)
for gradient- and activation-based strategies, first call in the process and a later call. Writes benchmarks/results/reinit_overhead.json with the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from replast.reinit import restore_plasticity

TRAIN_IMAGES = 2100  # Br35H train split, approximately
GOALS = {"select_ratio": 0.01, "utility_ratio": 0.05}
STRATEGIES = {
    "targeted-taylor": {"strategy": "targeted", "utility": "taylor", "fraction": 0.1},
    "cbp-unit": {"strategy": "cbp", "fraction": 0.05},
}


def build(name: str) -> nn.Module:
    import timm
    import torchvision

    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None, num_classes=2)
    return timm.create_model(name, pretrained=False, num_classes=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_time(model: nn.Module, batch: tuple, steps: int, device: torch.device) -> tuple[float, int]:
    """Seconds per SGD step (after one warm-up step) and the number of steps in an epoch."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = batch

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps, math.ceil(TRAIN_IMAGES / len(x))


def reinit_cost(model: nn.Module, batch: tuple, n_batches: int, options: dict, device: torch.device) -> dict:
    """The first call in the process (what a run pays once: on a GPU it also loads the kernels the
    training step never used) and a second call on another copy (the cost of every later call, e.g.
    `--reinit.schedule every:K`)."""
    costs = []
    for _ in range(2):
        fresh = copy.deepcopy(model)
        sync(device)
        report = restore_plasticity(fresh, [batch] * n_batches, batches=n_batches, **options)
        sync(device)
        costs.append({"utility_s": report.utility_time_s, "select_s": report.select_time_s,
                      "bn_s": report.bn_time_s, "total_s": report.total_time_s, "n_reset": report.n_reset,
                      "numel": report.numel, "bn_channels": sum(report.bn_recomputed.values())})
    first, later = costs
    return first | {"later_call": later}


def run_model(name: str, device: torch.device, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build(name).to(device)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device),
             torch.randint(0, 2, (args.batch_size,), generator=g).to(device))
    step_s, epoch_steps = epoch_time(model, batch, args.steps, device)
    epoch_s = step_s * epoch_steps
    result = {"step_s": step_s, "epoch_steps": epoch_steps, "epoch_s_extrapolated": epoch_s, "strategies": {}}
    for label, options in STRATEGIES.items():
        cost = reinit_cost(model, batch, args.batches, options, device)
        for timing in (cost, cost["later_call"]):
            timing["utility_ratio"] = timing["utility_s"] / epoch_s
            timing["select_ratio"] = timing["select_s"] / epoch_s
            timing["bn_ratio"] = timing["bn_s"] / epoch_s
        cost["meets_goals"] = all(cost[k] < v for k, v in GOALS.items())
        # The utility pass is linear in the number of batches: how many fit in the 5% goal?
        cost["utility_s_per_batch"] = cost["utility_s"] / args.batches
        cost["max_batches_within_goal"] = int(GOALS["utility_ratio"] * epoch_s / cost["utility_s_per_batch"])
        result["strategies"][label] = cost
        print(f"{device.type:4s} {name:20s} {label:16s} epoch≈{epoch_s:7.1f}s utility {cost['utility_s']:6.2f}s "
              f"({cost['utility_ratio']:.1%}) select {cost['select_s']:5.2f}s ({cost['select_ratio']:.2%}) "
              f"BatchNorm {cost['bn_s']:5.2f}s ({cost['bn_ratio']:.1%}) "
              f"batches within 5%: {cost['max_batches_within_goal']}; later calls: utility "
              f"{cost['later_call']['utility_ratio']:.1%} select {cost['later_call']['select_ratio']:.2%}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="batches of the utility pass")
    parser.add_argument("--steps", type=int, default=3, help="timed SGD steps, extrapolated to an epoch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="where to measure (all = CPU, and CUDA when available)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reinit_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in ("cpu", "cuda") if args.device in (d, "all")]
    devices = [d for d in devices if d.type == "cpu" or torch.cuda.is_available()]
    if not devices:
        parser.error("--device cuda: no CUDA device is visible")
    results = {
        "setup": {"train_images": TRAIN_IMAGES, "image_size": args.image_size, "batch_size": args.batch_size,
                  "utility_batches": args.batches, "timed_steps": args.steps, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "goals": GOALS, "weights": "random (pretrained=False): timing only",
                  "epoch": f"{args.steps} timed SGD steps (after 1 warm-up) × steps per epoch, extrapolated"},
        "runs": {d.type: {m: run_model(m, d, args) for m in args.models} for d in devices},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
