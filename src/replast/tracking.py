"""Plasticity tracking during fine-tuning: cheap metrics every K steps on one fixed held-out batch.

Rows go to `plasticity.csv` (step level) and the latest values into each epoch's metrics.csv row as
`plasticity_*` columns, so the report can plot plasticity coming back over training. The rows are part of
the checkpoint, so a resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from replast import runfiles
from replast.diagnosis import cheap_metrics
from replast.train import unwrap_model


class PlasticityRows:
    """The rows measured so far and the latest values; checkpointed through `trainer.stateful`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.latest: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "latest": dict(self.latest)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state["rows"]]
        self.latest = dict(state["latest"])


def attach_tracker(trainer: Any, batch: tuple) -> None:
    """Every `train.track_plasticity` steps, measure on `batch` (rank 0 writes plasticity.csv)."""
    every = trainer.cfg.train.track_plasticity
    tracked = PlasticityRows()

    def track(step: int) -> None:
        if step % every:
            return
        # the bare model: Fabric's wrapper prefixes every module name, which hides the head from cheap_metrics
        tracked.latest = cheap_metrics(unwrap_model(trainer.model), batch)
        tracked.rows.append({"step": step, "epoch": trainer.state.epoch, **tracked.latest})
        if trainer.fabric.is_global_zero:
            runfiles.write_rows(trainer.run_dir / "plasticity.csv", tracked.rows)

    trainer.stateful["plasticity"] = tracked
    trainer.step_hooks.append(track)
    trainer.tracker = lambda model: dict(tracked.latest)
