"""Lightning integration: `RestorePlasticity(**options)` re-initializes the LightningModule at fit start.

    trainer = L.Trainer(callbacks=[RestorePlasticity(strategy="cbp", fraction=0.05)])
Lightning is imported only when `RestorePlasticity` is first accessed, so this module imports
without it. Options are those of `replast.reinit.restore_plasticity`, validated at construction.
"""

from __future__ import annotations

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
    from replast.reinit.options import make_options

    class RestorePlasticity(Callback):
        """Apply `restore_plasticity` to the LightningModule once, at `on_fit_start`.

        `batches_from` = "train" | "val" names the dataloader the utility pass reads, `num_batches`
        how many of its batches (overrides `batches`). The report is kept as `self.report`.
        """

        def __init__(self, *, batches_from: str = "train", num_batches: int = 8, **options: Any) -> None:
            if batches_from not in ("train", "val"):
                raise ConfigError(f"batches_from={batches_from!r}: valid: train, val")
            options["batches"] = num_batches
            make_options(**options)  # fail at construction, not an epoch later
            self.batches_from, self.num_batches, self.options = batches_from, num_batches, options
            self.report = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            data = _batches(_source(trainer, self.batches_from), pl_module.device, self.num_batches)
            self.report = restore_plasticity(pl_module, data, **self.options)

    return RestorePlasticity


def __getattr__(name: str) -> Any:
    global _CLASS
    if name == "RestorePlasticity":
        if _CLASS is None:
            _CLASS = _build()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
