"""Re-initialization during `replast finetune`: wires `replast.reinit.Continual` into a `train.Trainer`.

With `lr_scale == 1` and `schedule == "once"` nothing is attached, so plain strategies pay no per-step cost.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from replast.reinit import Continual
from replast.train import unwrap_model


def attach(trainer: Any, report: Any, batches: list) -> Continual | None:
    """Scale the updates of the entries `report` reset, and re-apply the strategy on schedule."""
    options = {**asdict(trainer.cfg.reinit), "seed": trainer.cfg.seed}
    # scope auto was resolved to {layer: fraction} before training: re-apply within the same layers
    options["scope"] = report.options.get("scope", options["scope"])
    continual = Continual(unwrap_model(trainer.model), trainer.optimizer, batches, report, options)
    if not continual.active:
        return None
    trainer.stateful["reinit_schedule"] = continual  # checkpointed: a resume continues where it stopped
    trainer.optimizer_step = continual.step
    trainer.step_hooks.append(continual.after_step)
    return continual
