"""The Lightning callback applies restore_plasticity at fit start; the module imports without Lightning."""

from __future__ import annotations

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


def test_callback_reinitializes_at_fit_start() -> None:
    import lightning as L

    from replast.integrations import RestorePlasticity

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
            return torch.optim.SGD(self.parameters(), lr=0.0)

    torch.manual_seed(0)
    module = Module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    callback = RestorePlasticity(utility="taylor", fraction=0.5, num_batches=2)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(module, loader)
    assert callback.report is not None and callback.report.n_reset == 16
    assert callback.report.n_batches == 2  # read from the train dataloader
    assert not torch.equal(module.seen[0], before["net.0.weight"])  # reset before the first step
    assert torch.equal(module.net[2].weight, before["net.2.weight"])  # the head alias found net.2
