"""`replast demo` (= `make demo`): the embedded default job, offline, minutes on a 2-core CPU.

Runs the shipped `demo` study (MobileNetV2 with its ImageNet weights on a Br35H subset: plain fine-tuning,
linear probe, targeted re-initialization, ReDo; the DINOv2 ViT-S/14 plain and targeted), prints a comparison
table and writes OUT/report.md/html.
Uses the GPU when one is present.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from replast.experiment import collect, sweep
from replast.report import render

SHOWN = (("test_acc", "test acc"), ("test_balanced_acc", "balanced acc"), ("best_val_acc", "best val acc"),
         ("reinit_fraction", "reset frac"), ("reinit_time_s", "reinit s"), ("wall_time_s", "run s"))


def strategy_label(row) -> str:
    """A short name for a run's method: linear-probe, none, targeted/taylor@0.1, redo, ..."""
    if row.get("train.mode") == "linear-probe":
        return "linear-probe"
    strategy = row.get("reinit.strategy", "none")
    if strategy == "targeted":
        return f"targeted/{row.get('reinit.utility')}@{row.get('reinit.fraction')}"
    return str(strategy)


def run_demo(*, out: str, jobs: int, console) -> int:
    summary = sweep("demo", out=out, jobs=jobs)
    results, _, failures = collect(out)
    table = Table(title=f"replast demo: {summary.study} ({len(results)} runs, test split)")
    table.add_column("model", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for _, title in SHOWN:
        table.add_column(title, justify="right", no_wrap=True)
    for _, row in results.sort_values(["model", "reinit.strategy", "train.mode"]).iterrows():
        values = [row.get(key, math.nan) for key, _ in SHOWN]
        table.add_row(str(row.get("model")), strategy_label(row), *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values))
    # Piped output gets rich's 80 columns, too narrow for this table: widen it there.
    (console if console.is_terminal else Console(width=130)).print(table)
    for failure in failures:
        console.print(f"failed run: {failure}")
    for path in render(out):
        console.print(f"wrote {path}")
    return 0 if not failures else 1
