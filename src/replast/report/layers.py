"""Per-layer diagnostics of the runs made with `--diagnose true`: before and after re-initialization and
after training, as one table (layer means per stage) and one figure (per-layer curves) per condition.

    blocks = diagnosis_blocks(out, stem, cond.runs, colors, cond.title)   # [] when no run has diagnosis.json
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from replast.report.blocks import Block, Figure, Heading, Paragraph, Table
from replast.report.plots import add_legend, png_bytes, present_arms

FILE = "diagnosis.json"
STAGES = {"before_reinit": "before re-init", "after_reinit": "after re-init", "after_training": "after training"}
METRICS = {"plasticity_score": "Plasticity score", "dormant_fraction": "Dormant units %",
           "small_grad_fraction": "Small-gradient weights %"}
PERCENT = {"dormant_fraction", "small_grad_fraction"}


def load(out: Path, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(per-layer rows, per-run feature ranks, unreadable files) of the runs' diagnosis.json files.

    Layer rows: hash, arm, stage, layer, depth and METRICS, from the "param" rows (layers with weights).
    """
    layers, features, unreadable = [], [], 0
    for run_hash, arm in zip(runs["hash"], runs["arm"], strict=True):
        path = out / "runs" / str(run_hash) / FILE
        if not path.is_file():
            continue
        mine_layers, mine_features = [], []  # one file is read whole or left out whole
        try:
            stages = json.loads(path.read_text())
            for stage in STAGES:
                report = stages.get(stage)
                if not report:
                    continue
                key = {"hash": run_hash, "arm": arm, "stage": stage}
                mine_features.append({**key, **{k: v for k, v in report.get("features", {}).items() if v is not None}})
                mine_layers += [{**key, "layer": r["layer"], "depth": r["depth"], **{m: r.get(m) for m in METRICS}}
                                for r in report["rows"] if r.get("kind") == "param"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            unreadable += 1
            continue
        layers += mine_layers
        features += mine_features
    numeric = list(METRICS)
    frame = pd.DataFrame(layers, columns=["hash", "arm", "stage", "layer", "depth", *numeric])
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame, pd.DataFrame(features), unreadable


def _cell(values: list[float], percent: bool) -> str:
    shown = ["—" if math.isnan(v) else f"{100 * v:.1f}" if percent else f"{v:.3f}" for v in values]
    return " → ".join(shown)


def stage_table(layers: pd.DataFrame, features: pd.DataFrame, arms: list[str]) -> Table:
    """One row per strategy: each metric's mean over layers and seeds at every stage, and the penultimate
    features' effective rank before re-initialization and after training."""
    headers = ["Strategy", "Runs", *[f"{label} ({' → '.join(STAGES.values())})" for label in METRICS.values()],
               "Feature effective rank (before → after training)"]
    rows = []
    for arm in arms:
        mine = layers[layers["arm"] == arm]
        # mean over layers per run first, so every run weighs the same whatever its depth
        per_run = mine.groupby(["hash", "stage"])[list(METRICS)].mean().groupby("stage").mean()
        cells = [_cell([per_run[m].get(s, math.nan) for s in STAGES], m in PERCENT) for m in METRICS]
        ranks = features[features["arm"] == arm] if "effective_rank" in features else pd.DataFrame()
        rank_of = ranks.groupby("stage")["effective_rank"].mean() if len(ranks) else pd.Series(dtype=float)
        rank = _cell([rank_of.get(s, math.nan) for s in ("before_reinit", "after_training")], False)
        rows.append([arm, str(mine["hash"].nunique()), *cells, rank])
    return Table(headers, rows)


def layer_figure(layers: pd.DataFrame, arms: list[str], colors: Mapping[str, tuple], title: str,
                 metric: str = "plasticity_score") -> bytes:
    """One panel per stage: the metric per layer (x = depth in the network), mean over seeds, one line per arm."""
    fig = MplFigure(figsize=(4.0 * len(STAGES), 3.4), layout="constrained")
    axes = fig.subplots(1, len(STAGES), sharey=True)
    for ax, (stage, label) in zip(axes, STAGES.items(), strict=True):
        for arm in arms:
            mean = layers[(layers["arm"] == arm) & (layers["stage"] == stage)].groupby("depth")[metric].mean()
            if len(mean):
                ax.plot(mean.index, mean.values, color=colors[arm], label=arm, linewidth=1.2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("Layer (depth in the network)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{METRICS[metric]} (0 = plastic, 1 = saturated)")
    drawn = [ax for ax in axes if ax.lines]
    if drawn:
        add_legend(drawn[-1], len(arms))
    fig.suptitle(f"Per-layer diagnostics: {title}", fontsize=10)
    return png_bytes(fig)


def diagnosis_blocks(out: Path, stem: str, runs: pd.DataFrame, colors: Mapping[str, tuple],
                     title: str) -> list[Block]:
    """The diagnostics part of one condition's section, or [] when none of its runs has diagnosis.json."""
    layers, features, unreadable = load(out, runs)
    if layers.empty:
        return []
    arms = present_arms(colors, layers["arm"])
    text = (f"Per-layer diagnostics of the {layers['hash'].nunique()} runs made with `--diagnose true`, on 8 "
            "training batches: mean over layers with weights and over seeds, before re-initialization, right "
            "after it, and after training. The plasticity score averages a layer's dormant-unit fraction, "
            "small-gradient fraction and gradient stall (1 / (1 + its gradient-to-weight ratio over the model's "
            "median)); 0 = plastic, 1 = saturated.")
    if unreadable:
        text += f" {unreadable} diagnosis.json file(s) could not be read and are left out."
    figure = Figure(f"report/figures/{stem}-layers.png",
                    f"{title}: plasticity score per layer before and after re-initialization and after training "
                    "(mean over seeds)", layer_figure(layers, arms, colors, title))
    return [Heading(3, "Per-layer diagnostics"), Paragraph(text), stage_table(layers, features, arms), figure]
