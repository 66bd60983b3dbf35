"""Under torch.distributed every rank selects identical masks (statistics are averaged before
selection) and ends with identical weights (rank 0's values are broadcast)."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from replast.reinit import restore_plasticity


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different batches
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = _model()
        # Different seeds per rank on purpose: only the broadcast makes the values agree.
        report = restore_plasticity(model, _data(rank), utility="taylor", fraction=0.3, seed=rank)
        torch.save({"masks": report.masks, "state": model.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_and_match_the_pooled_single_process_selection() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"{r}.pt")) for r in (0, 1))
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name])
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name])
    pooled = restore_plasticity(_model(), _data(0) + _data(1), utility="taylor", fraction=0.3, seed=0)
    for name, mask in pooled.masks.items():
        assert torch.equal(mask, r0["masks"][name]), name
    single = _model()
    restore_plasticity(single, _data(0) + _data(1), utility="taylor", fraction=0.3, seed=0)
    assert all(torch.allclose(v, r0["state"][k]) for k, v in single.state_dict().items())
