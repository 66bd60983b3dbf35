"""autoscope.choose_layers picks a layer that only saturates downstream and otherwise does no harm;
reference batches are offline and seeded; diagnosis plots are written."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from replast.autoscope import choose_layers
from replast.diagnosis import diagnose
from replast.preprocessing import Preprocessing
from replast.reference import reference_batches
from replast.report.diagnosis_plots import plot_diagnosis


def _model():
    """Unit 0 of layer "0" passes x0 through; half of layer "2"'s units switch off when x0 is large."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight[:, 0] = 0.0
        model[0].weight[0] = 0.0
        model[0].weight[0, 0], model[0].bias[0] = 1.0, 0.0
        model[2].weight[:8, 0] = -20.0
    return model


def _data(seed: int, shifted: bool):
    """x0 >= 5 downstream (the negative weights bite), x0 <= 0 on reference-like data (they never do)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        x = torch.randn(64, 8, generator=g)
        x[:, 0] = 5 + x[:, 0].abs() if shifted else -x[:, 0].abs()
        out.append((x, torch.zeros(64, dtype=torch.long)))
    return out


def test_layer_saturated_only_downstream_is_chosen():
    scope = choose_layers(_model(), _data(1, True), _data(2, False), margin=0.1, max_fraction=0.3)
    assert list(scope.fractions) == ["2"] and scope.fractions["2"] == pytest.approx(0.3)
    row = scope.table.set_index("layer").loc["2"]
    assert row["dormant_fraction_downstream"] >= 0.5 > row["dormant_fraction_reference"]
    assert "4" not in scope.table["layer"].tolist()  # the head is never proposed
    assert "1 of 2 layers" in scope.reason


def test_fraction_follows_the_excess_below_the_cap():
    scope = choose_layers(_model(), _data(1, True), _data(2, False), max_fraction=1.0)
    excess = scope.table.set_index("layer").loc["2", "excess"]
    assert scope.fractions["2"] == pytest.approx(excess, abs=1e-4) and 0.1 < excess < 1.0


def test_no_saturated_layer_means_empty_scope_and_a_reason():
    scope = choose_layers(_model(), _data(1, False), _data(2, False))
    assert scope.fractions == {}
    assert "no layer is more than 0.1 more saturated" in scope.reason
    assert (scope.table["fraction"] == 0).all()


def test_reference_batches_are_seeded_and_normalized():
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    a = reference_batches(prep, image_size=32, batch_size=24, n=50, seed=3)
    b = reference_batches(prep, image_size=32, batch_size=24, n=50, seed=3)
    assert [x.shape[0] for x, _ in a] == [24, 24, 2] and a[0][0].shape[1:] == (3, 32, 32)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], reference_batches(prep, 32, 24, 50, seed=4)[0][0])
    x = torch.cat([x for x, _ in a])
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.2  # (p - 0.5) / 0.5 of photos in [0, 1]
    assert all(y.dtype == torch.long and (y == 0).all() for _, y in a)


def test_plot_diagnosis_writes_one_png_per_metric(tmp_path):
    model = _model()
    report = diagnose(model, _data(1, True))
    paths = plot_diagnosis(report, tmp_path / "plots", reference=diagnose(model, _data(2, False)))
    names = {p.name for p in paths}
    assert {"diagnosis_dormant_fraction.png", "diagnosis_plasticity_score.png"} <= names
    assert "diagnosis_relu6_cap_fraction.png" not in names  # no ReLU6 in this model: nothing to draw
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_pipeline_counts_the_scope_diagnosis_in_the_reinit_overhead(cli, tiny_run_args, tmp_path):
    """scope auto spends diagnosis passes before re-initializing; they belong to the reported overhead."""
    code, _, err = cli("finetune", *tiny_run_args, "--reinit.strategy", "targeted", "--reinit.scope", "auto")
    assert code == 0, err
    run = tmp_path / "run"
    scope = json.loads((run / "autoscope.json").read_text())
    report = json.loads((run / "reinit_report.json").read_text())
    final = json.loads((run / "final.json").read_text())
    assert scope["time_s"] > 0 and report["scope_time_s"] == pytest.approx(scope["time_s"])
    assert report["total_time_s"] >= report["scope_time_s"] + report["utility_time_s"] + report["select_time_s"]
    assert final["reinit_time_s"] == pytest.approx(report["total_time_s"])


def _scope_worker(rank: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # each rank diagnoses its own downstream batches (as DDP's utility batches are): excesses differ
        scope = choose_layers(_model(), _data(1 + 10 * rank, True), _data(2, False), max_fraction=1.0)
        torch.save(scope.fractions, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_choose_the_same_scope_under_torch_distributed(tmp_path):
    """Different fractions per rank make different masks: the DDP run stopped with 'masks differ across ranks'."""
    import torch.multiprocessing as mp

    mp.spawn(_scope_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0 and r0 == r1
