"""How many utility batches does a targeted re-initialization need? Time vs agreement of the chosen weights.

    .venv/bin/python benchmarks/utility_batches.py          # MobileNetV2 (ImageNet weights), Br35H, CPU

The utility pass is the costly part of a re-initialization (benchmarks/reinit_overhead.py), and its cost is
linear in `--reinit.batches`. This measures, for gradient-based utilities, how far the weights that a
per-layer 10% selection picks with k batches agree with the pick from REFERENCE_BATCHES batches (Jaccard
index of the two sets over all layers), and what the k-batch pass costs as a share of one training epoch.
Writes benchmarks/results/utility_batches.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from reinit_overhead import epoch_time  # this folder's sibling script

from replast.loading import first_batches, load_model_and_data
from replast.reinit import utility_scores
from replast.reinit.selection import count, lowest

REFERENCE_BATCHES = 16
FRACTION = 0.1


def selected(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: lowest(s, count(FRACTION, s.numel())) for name, s in scores.items()}


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--data", default="br35h")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--utilities", nargs="+", default=["taylor", "fisher", "gradient"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "utility_batches.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, data = load_model_and_data(args.model, args.data, image_size=args.image_size, seed=0)
    train_images = len(data.indices["train"])
    batches = first_batches(data, "train", args.batch_size, REFERENCE_BATCHES, seed=0)
    step_s, _ = epoch_time(model, batches[0], 3, torch.device("cpu"))  # the same SGD-step timing as reinit_overhead
    epoch_s = step_s * math.ceil(train_images / args.batch_size)
    results = {}
    for utility in args.utilities:
        reference = selected(utility_scores(model, batches, utility, batches=REFERENCE_BATCHES))
        rows = []
        for k in args.batches:
            start = time.perf_counter()
            scores = utility_scores(model, batches[:k], utility, batches=k)
            seconds = time.perf_counter() - start
            rows.append({"batches": k, "seconds": seconds, "share_of_epoch": seconds / epoch_s,
                         "jaccard_vs_reference": jaccard(selected(scores), reference)})
            print(f"{utility:9s} {k:2d} batches: {seconds:6.2f} s ({seconds / epoch_s:6.1%} of an epoch), "
                  f"Jaccard vs {REFERENCE_BATCHES} batches {rows[-1]['jaccard_vs_reference']:.3f}")
        results[utility] = rows
    record = {"model": args.model, "data": args.data, "image_size": args.image_size, "batch_size": args.batch_size,
              "train_images": train_images, "epoch_s_extrapolated": epoch_s, "fraction": FRACTION,
              "reference_batches": REFERENCE_BATCHES, "selection": "per-layer", "level": "weight",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
              "command": "python benchmarks/utility_batches.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if k != "out"),
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
