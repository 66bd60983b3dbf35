"""The Lightning callback under multi-process DDP (2 CPU processes, gloo): every rank reads different
batches, yet the re-initialization at fit start and its every:K re-applications select the same entries
and write the same values on both ranks, so the replicas stay identical."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from replast.integrations import RestorePlasticity


class _Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class _Dump(L.Callback):
    """Each rank writes what it ended with: weights, the fit-start masks, the events, its first batch."""

    def __init__(self, out: str, restore: RestorePlasticity) -> None:
        self.out, self.restore = out, restore

    def on_train_end(self, trainer, pl_module) -> None:
        first = next(iter(trainer.train_dataloader))[0]
        torch.save({"state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                    "masks": self.restore.report.masks, "events": self.restore.continual.events,
                    "first_batch": first}, f"{self.out}/{trainer.global_rank}.pt")


def test_ranks_reinitialize_identically_at_fit_start_and_every_k_steps(tmp_path) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    restore = RestorePlasticity(strategy="cbp", fraction=0.25, num_batches=2, schedule="every:2", lr_scale=3.0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=6, accelerator="cpu", devices=2, strategy="ddp_spawn",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[restore, _Dump(str(tmp_path), restore)])
    trainer.fit(_Module(), loader)

    r0, r1 = (torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in (0, 1))
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # the sampler split the data
    assert [e["step"] for e in r0["events"]] == [2, 4, 6]
    assert [e["n_reset"] for e in r0["events"]] == [e["n_reset"] for e in r1["events"]]
    assert any(m.any() for m in r0["masks"].values())
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), name
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert not torch.equal(r0["state"]["net.0.weight"], _Module().net[0].weight)  # it trained
