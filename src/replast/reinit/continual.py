"""After the first reset: k× updates for the entries reset last, and the `every:K` re-application.

    continual = Continual(model, optimizer, batches, report, options)   # options as restore_plasticity's
    ...
    continual.step()            # instead of optimizer.step(): scales the update of the latest reset entries
                                # (or before_update() / optimizer.step() / after_update() around your own step)
    continual.after_step(step)  # after optimizer step `step` (1-based): re-applies the strategy when due

Shared by the `replast finetune` trainer and the Lightning callback; `state_dict()` holds what a resume
cannot rebuild from the options (the latest masks, the warm-up position, the applications so far).
`report` (the first application's ReinitReport) may be None: nothing reset yet, e.g. a resumed fit.
With Adam/AdamW, entries reset during training get a step count of their own (`AdamAges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from replast.reinit.api import restore_plasticity
from replast.reinit.lr import AdamAges, ReinitSchedule, UpdateScaler, clear_optimizer_state, taken
from replast.reinit.report import ReinitReport


class Continual:
    """The latest application's masks, its update scaler and the schedule; `events` lists the re-applications."""

    def __init__(self, model: nn.Module, optimizer: Any, batches: Iterable, report: ReinitReport | None,
                 options: Mapping[str, Any]) -> None:
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.options = dict(options)
        self.schedule = ReinitSchedule.parse(self.options.get("schedule", "once"))
        self.lr_scale = float(self.options.get("lr_scale", 1.0))
        self.seed = int(self.options.get("seed", 0))
        self.events: list[dict[str, Any]] = []
        self.scaler: UpdateScaler | None = None
        self.ages = AdamAges(self._inner)
        self._use(*((dict(report.masks), dict(report.reset_masks)) if report is not None else ({}, {})))

    @staticmethod
    def needed(options: Mapping[str, Any]) -> bool:
        """False for one reset at the optimizer's own learning rate: nothing to do during training."""
        return (float(options.get("lr_scale", 1.0)) != 1.0
                or not ReinitSchedule.parse(options.get("schedule", "once")).once)

    @property
    def active(self) -> bool:
        return self.needed(self.options)

    def _use(self, masks: dict[str, Tensor], reset: dict[str, Tensor]) -> None:
        self.masks, self.reset = masks, reset  # everything written (scaled, state cleared); re-initialized
        if self.lr_scale != 1.0:
            self.scaler = UpdateScaler(self.optimizer, masks, self.lr_scale,
                                       int(self.options.get("lr_warmup_steps", 0)), model=self.model)

    @property
    def _inner(self) -> Any:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # Fabric's wrapper holds the torch optimizer

    def before_update(self) -> None:
        """Gradients are ready, the update not yet applied: one copy of each corrected parameter serves both."""
        snapshot = taken({*self.ages.born, *(self.scaler.masks if self.scaler is not None else ())})
        self.ages.begin(snapshot)
        if self.scaler is not None:
            self.scaler.begin(snapshot)

    def after_update(self) -> None:
        """The optimizer has updated: give reset entries their own Adam step count, then scale their update."""
        if self.ages.pending:
            self.ages.finish()
        if self.scaler is not None and self.scaler.pending:
            self.scaler.finish()

    def step(self, closure: Callable | None = None) -> Any:
        """The optimizer's step, with the update of the latest reset entries scaled."""
        self.before_update()
        try:
            result = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        except BaseException:
            self.ages.cancel()
            if self.scaler is not None:
                self.scaler.cancel()
            raise
        self.after_update()
        return result

    def after_step(self, step: int) -> None:
        if not self.schedule.due(step):
            return
        # continual backprop: what the last application reset is K steps old, not yet mature (other strategies
        # re-apply as they are: whole-network ones would otherwise reset nothing every second time)
        protect = self.reset if self.options.get("strategy") == "cbp" else None
        options = {**self.options, "seed": self.seed + step}
        again = restore_plasticity(self.model, self.batches, protect=protect, **options)
        clear_optimizer_state(self._inner, again.masks, model=self.model)
        self.ages.mark(again.masks, model=self.model)
        self.events.append({"step": step, "n_reset": again.n_reset, "time_s": again.total_time_s})
        self._use(again.masks, again.reset_masks)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"events": [dict(e) for e in self.events]}
        state["masks"] = {name: mask.cpu() for name, mask in self.masks.items()}
        state["reset"] = {name: mask.cpu() for name, mask in self.reset.items()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        state["born"] = {name: self.ages.born[p].cpu() for name, p in self.model.named_parameters()
                         if p in self.ages.born}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.events = [dict(e) for e in state["events"]]
        params = dict(self.model.named_parameters())
        if "masks" in state:
            self._use(*({name: mask.to(params[name].device) for name, mask in state[key].items()}
                        for key in ("masks", "reset")))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.ages.born = {params[name]: born.to(params[name].device) for name, born in state.get("born", {}).items()}
