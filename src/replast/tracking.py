"""Plasticity tracking during fine-tuning: cheap metrics every K steps on one fixed held-out batch.

Rows go to `plasticity.csv` (step level) and the latest values into each epoch's metrics.csv row as
`plasticity_*` columns, so the report can plot plasticity coming back over training.
"""

from __future__ import annotations

from typing import Any

from replast import runfiles
from replast.diagnosis import cheap_metrics


def attach_tracker(trainer: Any, batch: tuple) -> None:
    """Every `train.track_plasticity` steps, measure on `batch` (rank 0 writes plasticity.csv)."""
    every = trainer.cfg.train.track_plasticity
    rows: list[dict[str, Any]] = []
    latest: dict[str, float] = {}

    def track(step: int) -> None:
        if step % every:
            return
        latest.clear()
        latest.update(cheap_metrics(trainer.model, batch))
        rows.append({"step": step, "epoch": trainer.state.epoch, **latest})
        if trainer.fabric.is_global_zero:
            runfiles.write_rows(trainer.run_dir / "plasticity.csv", rows)

    trainer.step_hooks.append(track)
    trainer.tracker = lambda model: dict(latest)
