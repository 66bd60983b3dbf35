"""Lightning integration: `RestorePlasticity(**options)` re-initializes the LightningModule at fit start.

    trainer = L.Trainer(callbacks=[RestorePlasticity(strategy="cbp", fraction=0.05, schedule="every:500")])
Lightning is imported only when `RestorePlasticity` is first accessed, so this module imports
without it. Options are those of `replast.reinit.restore_plasticity` plus the trainer's `lr_scale`,
`lr_warmup_steps` and `schedule` (run by `replast.reinit.Continual`), validated at construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from replast.errors import ConfigError

_CLASS: type | None = None


def _batches(loader: Any, device: torch.device, limit: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `limit` (x, y) batches of a dataloader (or a list of them), on `device`."""
    if isinstance(loader, (list, tuple)) and loader and not isinstance(loader[0], torch.Tensor):
        loader = loader[0]  # several dataloaders: the first one
    for i, batch in enumerate(loader):
        if i >= limit:
            return
        yield batch[0].to(device), batch[1].to(device)


def _source(trainer: Any, batches_from: str) -> Iterable:
    """The train (or val) dataloader even before the fit loop has set it up (on_fit_start)."""
    loop = trainer.fit_loop if batches_from == "train" else trainer.fit_loop.epoch_loop.val_loop
    return loop._data_source.dataloader()


def _build() -> type:
    from lightning.pytorch import Callback  # lazy: only Lightning users pay for the import

    from replast.reinit.api import restore_plasticity
    from replast.reinit.continual import Continual
    from replast.reinit.options import make_options

    class RestorePlasticity(Callback):
        """Apply `restore_plasticity` to the LightningModule at `on_fit_start`; with `lr_scale` or
        `schedule="every:K"`, scale the updates of the reset entries and re-apply every K optimizer steps.

        `batches_from` = "train" | "val" names the dataloader the utility pass reads, `num_batches`
        how many of its batches (overrides `batches`). The report is kept as `self.report`. A fit resumed
        from a checkpoint (`ckpt_path`) keeps the checkpoint's weights and continues the schedule from
        the state saved with it. The module is re-initialized at the first `fit` only; `every_fit=True`
        re-initializes it at every `fit` call.
        """

        def __init__(self, *, batches_from: str = "train", num_batches: int = 8, every_fit: bool = False,
                     **options: Any) -> None:
            if batches_from not in ("train", "val"):
                raise ConfigError(f"batches_from={batches_from!r}: valid: train, val")
            options["batches"] = num_batches
            make_options(**options)  # fail at construction, not an epoch later
            lr_scale = options.get("lr_scale", 1.0)
            if not isinstance(lr_scale, (int, float)) or not (lr_scale > 0 and math.isfinite(lr_scale)):
                raise ConfigError(f"lr_scale={lr_scale!r}: use a finite number > 0 (1 = the optimizer's own rate)")
            self.during_training = Continual.needed(options)
            self.batches_from, self.num_batches, self.options = batches_from, num_batches, options
            self.report = None
            self.continual: Continual | None = None
            self._saved: dict[str, Any] | None = None
            self._last_step = -1
            self.every_fit, self._applied = every_fit, False

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            batches = list(_batches(_source(trainer, self.batches_from), pl_module.device, self.num_batches))
            resuming = trainer.ckpt_path is not None  # the checkpoint's weights are already loaded: keep them
            if resuming:
                self.report = None
            elif self.every_fit or not self._applied:  # a later fit() (a second stage) keeps the first edit
                self.report = restore_plasticity(pl_module, batches, **self.options)
            self._applied = True
            if not self.during_training:
                return
            if len(trainer.optimizers) != 1:
                raise ConfigError(f"lr_scale and schedule need exactly one optimizer, the module has "
                                  f"{len(trainer.optimizers)}; use them with a single optimizer")
            self.continual = Continual(pl_module, trainer.optimizers[0], batches, self.report, self.options)
            if self._saved is not None:
                self.continual.load_state_dict(self._saved)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.continual is not None:
                self.continual.before_update()  # gradients are ready, the update not yet applied

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.continual is None:
                return
            self.continual.after_update()  # does nothing between the batches of one accumulated step
            if trainer.global_step != self._last_step:  # gradient accumulation: several batches per step
                self._last_step = trainer.global_step
                self.continual.after_step(trainer.global_step)

        def state_dict(self) -> dict[str, Any]:
            return self.continual.state_dict() if self.continual is not None else {}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self._saved = dict(state_dict) or None

    # Pickle finds the class as `replast.integrations.RestorePlasticity` (through __getattr__ below), so
    # the callback travels to ddp_spawn workers and into deep copies like any module-level class.
    RestorePlasticity.__qualname__ = "RestorePlasticity"
    return RestorePlasticity


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "RestorePlasticity":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
