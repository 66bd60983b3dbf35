"""Re-initialization during training: k× updates for reset weights and the `every:K` re-application.

`attach(trainer, report, batches)` wires both into a `train.Trainer`; with `lr_scale == 1` and
`schedule == "once"` it does nothing, so plain strategies pay no per-step cost.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from replast.reinit import ReinitSchedule, UpdateScaler, clear_optimizer_state, restore_plasticity
from replast.train import unwrap_model


def attach(trainer: Any, report: Any, batches: list) -> None:
    """Scale the updates of the entries `report` reset, and re-apply the strategy on schedule."""
    options = asdict(trainer.cfg.reinit)
    # scope auto was resolved to {layer: fraction} before training: re-apply within the same layers
    options["scope"] = report.options.get("scope", options["scope"])
    schedule = ReinitSchedule.parse(options["schedule"])
    trainer.reinit_events = []
    if options["lr_scale"] != 1.0:
        _set_scaler(trainer, report.masks)
    if schedule.once:
        return

    previous = report.masks

    def reapply(step: int) -> None:
        nonlocal previous
        if not schedule.due(step):
            return
        model = unwrap_model(trainer.model)
        # continual backprop: what the last application reset is K steps old, not yet mature (other strategies
        # re-apply as they are: whole-network ones would otherwise reset nothing every second time)
        protect = previous if options["strategy"] == "cbp" else None
        again = restore_plasticity(model, batches, seed=trainer.cfg.seed + step, protect=protect, **options)
        previous = again.masks
        clear_optimizer_state(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer, again.masks, model=model)
        trainer.reinit_events.append({"step": step, "n_reset": again.n_reset, "time_s": again.total_time_s})
        if options["lr_scale"] != 1.0:
            _set_scaler(trainer, again.masks)

    trainer.step_hooks.append(reapply)


def _set_scaler(trainer: Any, masks: dict) -> None:
    reinit = trainer.cfg.reinit
    scaler = UpdateScaler(trainer.optimizer, masks, reinit.lr_scale, reinit.lr_warmup_steps,
                          model=unwrap_model(trainer.model))
    trainer.optimizer_step = scaler.step
