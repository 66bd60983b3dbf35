"""Re-evaluate finished runs with their BatchNorm statistics re-estimated on the training split.

    python benchmarks/bn_posthoc.py runs/paper-stale-bn/runs/* --out benchmarks/results/bn_posthoc.json

For each run directory with a final checkpoint: validation accuracy with the running statistics as trained,
and after replacing them by the plain average over the un-augmented training batches (what
`--train.precise_bn` does before every evaluation; a linear probe's frozen statistics are kept). A large gap means evaluation measured how far the
running averages lagged behind the weights, not the weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from replast.checkpoint import load_checkpoint
from replast.loading import first_batches, load_model_and_data
from replast.precise_bn import trained_channels
from replast.reinit.bn_stats import recompute


@torch.inference_mode()
def accuracy(model: torch.nn.Module, batches: list) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


def posthoc(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model, data = load_model_and_data(cfg["model"], cfg["data"], weights="none", image_size=cfg["image_size"],
                                      seed=cfg["seed"], train_fraction=cfg["train_fraction"],
                                      max_samples=cfg.get("max_samples"))
    model.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    val = first_batches(data, "val", 128, 10**6)
    train = first_batches(data, "train", cfg["batch_size"], 10**6, seed=cfg["seed"])
    as_trained = accuracy(model, val)
    if cfg.get("train", {}).get("mode") != "linear-probe":  # a probe's head was fit to the frozen statistics
        recompute(model, train, trained_channels(model))
    reinit = cfg.get("reinit", {})
    return {"run": run.name, "seed": cfg["seed"], "strategy": reinit.get("strategy"),
            "utility": reinit.get("utility"), "fraction": reinit.get("fraction"), "scope": reinit.get("scope"),
            "mode": cfg.get("train", {}).get("mode"), "val_acc_as_trained": as_trained,
            "val_acc_bn_re_estimated": accuracy(model, val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bn_posthoc.json")
    args = parser.parse_args()
    rows = []
    for run in sorted(args.runs):
        if (run / "final.json").exists():
            rows.append(posthoc(run))
            print(f"{rows[-1]['strategy']:18s} {rows[-1]['utility']} {rows[-1]['fraction']} "
                  f"{rows[-1]['val_acc_as_trained']:.3f} -> {rows[-1]['val_acc_bn_re_estimated']:.3f}")
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
