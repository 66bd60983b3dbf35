"""The Lightning callback applies restore_plasticity at fit start; the module imports without Lightning."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from replast.errors import ConfigError, UnknownNameError


def test_module_imports_without_lightning() -> None:
    code = ("import sys, replast; i = replast.integrations; "  # as README writes it, after a plain import
            "assert not any(m.startswith(('lightning', 'pytorch_lightning')) for m in sys.modules); "
            "print(callable(getattr(i, 'RestorePlasticity')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_callback_validates_options_at_construction() -> None:
    from replast.integrations import RestorePlasticity

    with pytest.raises(UnknownNameError):
        RestorePlasticity(strategy="cbq")
    with pytest.raises(ConfigError):
        RestorePlasticity(fraction=2.0)
    with pytest.raises(ConfigError):
        RestorePlasticity(batches_from="test")
    with pytest.raises(ConfigError):
        RestorePlasticity(lr_scale=0)
    with pytest.raises(ConfigError, match="lr_scale=nan"):
        RestorePlasticity(lr_scale=math.nan)
    with pytest.raises(ConfigError):
        RestorePlasticity(schedule="every:0")


def _module_class(lr: float = 0.0) -> type:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            self.seen.append(self.net[0].weight.detach().clone())
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Module


def _fit(module, callback, *, batches: int = 1, epochs: int = 1, ckpt_path=None, root=None):
    import lightning as L

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=batches, accelerator="cpu", logger=False,
                        enable_checkpointing=root is not None, default_root_dir=root, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def test_callback_reinitializes_at_fit_start() -> None:
    from replast.integrations import RestorePlasticity

    torch.manual_seed(0)
    module = _module_class()()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    callback = RestorePlasticity(utility="taylor", fraction=0.5, num_batches=2)
    _fit(module, callback)
    assert callback.report is not None and callback.report.n_reset == 16
    assert callback.report.n_batches == 2  # read from the train dataloader
    assert not torch.equal(module.seen[0], before["net.0.weight"])  # reset before the first step
    assert torch.equal(module.net[2].weight, before["net.2.weight"])  # the head alias found net.2
    assert callback.continual is None  # one reset at the optimizer's rate: no per-step work


def test_callback_scales_the_update_of_reset_entries() -> None:
    from replast.integrations import RestorePlasticity

    updates = []
    for k in (1.0, 3.0):
        torch.manual_seed(0)
        module = _module_class(lr=0.1)()
        callback = RestorePlasticity(utility="magnitude", fraction=0.5, num_batches=1, lr_scale=k)
        _fit(module, callback, batches=2)
        updates.append(module.seen[1] - module.seen[0])  # SGD's first step, same gradient in both fits
        mask = callback.report.masks["net.0.weight"]
    assert mask.any() and not mask.all()
    torch.testing.assert_close(updates[1][mask], 3 * updates[0][mask])
    torch.testing.assert_close(updates[1][~mask], updates[0][~mask], rtol=0, atol=0)


def test_callback_reapplies_every_k_steps_and_resumes_without_a_second_reset(tmp_path) -> None:
    from replast.integrations import RestorePlasticity

    torch.manual_seed(0)
    module = _module_class(lr=0.1)()
    callback = RestorePlasticity(strategy="cbp", fraction=0.25, num_batches=1, schedule="every:2")
    trainer = _fit(module, callback, batches=4, root=tmp_path / "first")
    assert [e["step"] for e in callback.continual.events] == [2, 4]
    assert all(e["n_reset"] > 0 for e in callback.continual.events)
    checkpoint = trainer.checkpoint_callback.best_model_path
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]["net.0.weight"]

    resumed = _module_class(lr=0.1)()
    again = RestorePlasticity(strategy="cbp", fraction=0.25, num_batches=1, schedule="every:2")
    _fit(resumed, again, batches=4, epochs=2, ckpt_path=checkpoint, root=tmp_path / "resumed")
    assert again.report is None and torch.equal(resumed.seen[0], saved)  # the checkpoint's weights, no reset
    assert [e["step"] for e in again.continual.events] == [2, 4, 6, 8]  # the schedule continues


# ---- one re-initialization per module, not one per fit() -----------------------------------------------
def _frozen_module():
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)  # training leaves the weights alone

    return Module()


def _fit_once(trainer_kwargs, module, loader, callback):
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, loader)
    return trainer


def test_callback_resets_once_not_at_every_fit_call():
    """A second fit() with the same callback (a second stage, or a continued fit) re-initializes again."""
    from replast.integrations import RestorePlasticity

    torch.manual_seed(0)
    module = _frozen_module()
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    callback = RestorePlasticity(utility="magnitude", fraction=0.5, num_batches=1)
    _fit_once({"max_epochs": 1, "limit_train_batches": 1}, module, loader, callback)
    after_first = {k: v.clone() for k, v in module.state_dict().items()}
    _fit_once({"max_epochs": 1, "limit_train_batches": 1}, module, loader, callback)
    assert all(torch.equal(v, after_first[k]) for k, v in module.state_dict().items())
