"""Re-evaluate finished runs with their BatchNorm statistics re-estimated on the training split.

    python benchmarks/bn_posthoc.py runs/paper-stale-bn/runs/* --out benchmarks/results/bn_posthoc.json

For each run directory with a final checkpoint, validation and test accuracy with the running statistics as
saved, after replacing them by the plain average over K un-augmented training batches in a seeded random
order (what `--train.precise_bn K` does before every evaluation; K = the run's setting, or all batches),
and over K batches augmented as in training (K = the run's setting or 8). A linear probe's frozen
statistics are kept. A large gap between the first and the others means evaluation measured how far the
running averages lagged behind the weights, not the weights. Training does not read the running
statistics, so `un_augmented` is the accuracy the run reports under today's `--train.precise_bn K`.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import yaml

from replast.checkpoint import load_checkpoint
from replast.loading import first_batches, load_model_and_data
from replast.precise_bn import trained_channels
from replast.reinit.bn_stats import recompute


def augmented_batches(data, batch_size: int, count: int, seed: int, augment: bool) -> list:
    """`count` training batches as training draws them (shuffled, augmented), over as many epochs as needed."""
    loader = data.loader("train", batch_size, train=True, augment=augment, seed=seed)
    batches: list = []
    for epoch in range(count):  # an epoch has at least one batch, or there is none at all
        loader.set_epoch(epoch)
        batches.extend(itertools.islice(iter(loader), count - len(batches)))
        if len(batches) == count or not len(loader):
            break
    return batches


@torch.inference_mode()
def accuracy(model: torch.nn.Module, batches: list) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return hits / sum(len(y) for _, y in batches)


PROTOCOLS = ("as_saved", "un_augmented", "augmented")


def posthoc(run: Path, protocols: tuple[str, ...] = PROTOCOLS) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model, data = load_model_and_data(cfg["model"], cfg["data"], weights="none", image_size=cfg["image_size"],
                                      seed=cfg["seed"], train_fraction=cfg["train_fraction"],
                                      max_samples=cfg.get("max_samples"))
    model.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    splits = {name: first_batches(data, name, 128, 10**6) for name in ("val", "test")}
    train = cfg.get("train", {})
    statistics = {
        "as_saved": lambda: [],
        "un_augmented": lambda: first_batches(data, "train", cfg["batch_size"], train.get("precise_bn") or 10**6,
                                              seed=cfg["seed"]),
        "augmented": lambda: augmented_batches(data, cfg["batch_size"], train.get("precise_bn") or 8, cfg["seed"],
                                               train.get("augment", True)),
    }
    reinit = cfg.get("reinit", {})
    row = {"run": run.name, "seed": cfg["seed"], "strategy": reinit.get("strategy"),
           "utility": reinit.get("utility"), "fraction": reinit.get("fraction"), "scope": reinit.get("scope"),
           "mode": train.get("mode")}
    # in PROTOCOLS order whatever was asked: the saved statistics can be read only before a recompute
    for protocol in (p for p in PROTOCOLS if p in protocols):
        batches = statistics[protocol]()
        # a probe's head was fit to the frozen statistics
        if batches and train.get("mode") != "linear-probe":
            recompute(model, batches, trained_channels(model))
        for name, split in splits.items():
            row[f"{name}_acc_{protocol}"] = accuracy(model, split)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bn_posthoc.json")
    args = parser.parse_args()
    rows = []
    for run in sorted(args.runs):
        if (run / "final.json").exists():
            rows.append(posthoc(run, tuple(args.protocols)))
            accs = " / ".join(f"{rows[-1][f'val_acc_{p}']:.3f}" for p in args.protocols)
            print(f"{rows[-1]['strategy']:18s} {rows[-1]['utility']} {rows[-1]['fraction']} val {accs}", flush=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
