"""Re-initialization during training: k× updates for reset weights and the `every:K` re-application.

`attach(trainer, report, batches)` wires both into a `train.Trainer`; with `lr_scale == 1` and
`schedule == "once"` it does nothing, so plain strategies pay no per-step cost. What a resume cannot
rebuild from the config (the last application's masks, the applications so far, the warm-up position)
is checkpointed through `trainer.stateful`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from replast.reinit import ReinitSchedule, UpdateScaler, clear_optimizer_state, restore_plasticity
from replast.train import unwrap_model


def attach(trainer: Any, report: Any, batches: list) -> None:
    """Scale the updates of the entries `report` reset, and re-apply the strategy on schedule."""
    trainer.reinit_events = []
    options = asdict(trainer.cfg.reinit)
    # scope auto was resolved to {layer: fraction} before training: re-apply within the same layers
    options["scope"] = report.options.get("scope", options["scope"])
    schedule = ReinitSchedule.parse(options["schedule"])
    if options["lr_scale"] == 1.0 and schedule.once:
        return
    state = _ScheduleState(trainer, options, schedule, batches, report.masks)
    trainer.stateful["reinit_schedule"] = state
    if not schedule.once:
        trainer.step_hooks.append(state.reapply)


class _ScheduleState:
    """The latest masks (their updates scaled; for cbp, protected from the next choice) and the events."""

    def __init__(self, trainer: Any, options: dict, schedule: ReinitSchedule, batches: list, masks: dict) -> None:
        self.trainer, self.options, self.schedule, self.batches = trainer, options, schedule, batches
        self.scaler: UpdateScaler | None = None
        self._use(masks)

    def _use(self, masks: dict) -> None:
        self.masks = masks
        if self.options["lr_scale"] != 1.0:
            self.scaler = UpdateScaler(self.trainer.optimizer, masks, self.options["lr_scale"],
                                       self.options["lr_warmup_steps"], model=unwrap_model(self.trainer.model))
            self.trainer.optimizer_step = self.scaler.step

    def reapply(self, step: int) -> None:
        if not self.schedule.due(step):
            return
        trainer, options = self.trainer, self.options
        model = unwrap_model(trainer.model)
        # continual backprop: what the last application reset is K steps old, not yet mature (other strategies
        # re-apply as they are: whole-network ones would otherwise reset nothing every second time)
        protect = self.masks if options["strategy"] == "cbp" else None
        again = restore_plasticity(model, self.batches, seed=trainer.cfg.seed + step, protect=protect, **options)
        clear_optimizer_state(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer, again.masks, model=model)
        trainer.reinit_events.append({"step": step, "n_reset": again.n_reset, "time_s": again.total_time_s})
        self._use(again.masks)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"events": [dict(e) for e in self.trainer.reinit_events]}
        if not self.schedule.once:  # a resume rebuilds the masks of a single application from the config
            state["masks"] = {name: mask.cpu() for name, mask in self.masks.items()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.reinit_events = [dict(e) for e in state["events"]]
        if "masks" in state:
            params = dict(unwrap_model(self.trainer.model).named_parameters())
            self._use({name: mask.to(params[name].device) for name, mask in state["masks"].items()})
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
