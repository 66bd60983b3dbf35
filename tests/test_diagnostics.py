"""Known answers for the pure metrics in replast.diagnostics and the DiagnosisReport built from them."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from replast import diagnostics as dx
from replast.diagnosis import COLUMNS, DiagnosisReport, cheap_metrics, diagnose
from replast.errors import ConfigError


def _batches(n=4, b=32, d=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, d, generator=g), torch.randint(0, classes, (b,), generator=g)) for _ in range(n)]


# --- features -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 17])
def test_ranks_of_identity_are_n(n):
    s = dx.singular_values(torch.eye(n))
    assert dx.effective_rank(s) == pytest.approx(n)
    assert dx.stable_rank(s) == pytest.approx(n)
    assert dx.rank_at(s) == n


def test_ranks_of_rank_one_matrix_are_one():
    f = torch.outer(torch.arange(1.0, 41.0), torch.randn(12, generator=torch.Generator().manual_seed(1)))
    s = dx.singular_values(f)  # float32 rounding leaves ~1e-7 relative singular values: tolerance 1e-4
    assert dx.effective_rank(s) == pytest.approx(1.0, abs=1e-4)
    assert dx.stable_rank(s) == pytest.approx(1.0, abs=1e-4)
    assert dx.rank_at(s) == 1


def test_rank_at_counts_nuclear_norm_share():
    s = torch.tensor([50.0, 30.0, 19.0, 1.0])  # 50+30+19 = 99% of 100
    assert dx.rank_at(s) == 3
    assert dx.rank_at(s, 0.5) == 1


def test_zero_features_have_zero_rank_and_too_few_rows_are_nan():
    s = dx.singular_values(torch.zeros(20, 5))
    assert (dx.effective_rank(s), dx.stable_rank(s), dx.rank_at(s)) == (0.0, 0.0, 0)
    ranks, note = dx.feature_ranks(torch.randn(dx.MIN_RANK_SAMPLES - 1, 4))
    assert all(math.isnan(v) for v in ranks.values()) and "ranks not estimated" in note
    ranks, note = dx.feature_ranks(torch.randn(dx.MIN_RANK_SAMPLES, 64))
    assert ranks["effective_rank"] <= dx.MIN_RANK_SAMPLES and "capped" in note


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30))
def test_rank_bounds_hold_for_any_spectrum(values):
    s = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    nonzero = int((s > 0).sum())
    assert 0 <= dx.effective_rank(s) <= nonzero + 1e-9
    assert 0 <= dx.stable_rank(s) <= nonzero + 1e-9
    assert (dx.rank_at(s) == 0) == (nonzero == 0) and dx.rank_at(s) <= nonzero


# --- weights, gradients, activations ------------------------------------------------------------------------


def test_weight_stats_known_answer():
    w = torch.tensor([[3.0, -4.0], [0.0, 1e-4]])
    st_ = dx.weight_stats(w)
    assert st_["weight_norm"] == pytest.approx(5.0, rel=1e-6)
    assert st_["mean_abs_weight"] == pytest.approx((7 + 1e-4) / 4)
    assert st_["near_zero_fraction"] == 0.5  # 0 and 1e-4 are below 1e-3 * 4
    assert dx.weight_stats(torch.zeros(3))["near_zero_fraction"] == 1.0


def test_grad_stats_known_answer():
    g = torch.tensor([1.0, 1.0, 1.0, 0.0])
    w = torch.full((4,), 2.0)
    st_ = dx.grad_stats(g, w)
    assert st_["grad_norm"] == pytest.approx(math.sqrt(3))
    assert st_["grad_to_weight"] == pytest.approx(math.sqrt(3) / 4)
    assert st_["small_grad_fraction"] == 0.25
    assert dx.grad_stats(torch.zeros(4), w)["small_grad_fraction"] == 1.0


def test_redo_scores_and_dormancy():
    sums = torch.tensor([10.0, 10.0, 0.5, 0.0])  # mean 5.125 per unit-sum
    s = dx.redo_scores(sums, count=1)
    assert s.mean().item() == pytest.approx(1.0)
    assert dx.dormant_fraction(s, 0.1) == 0.5
    assert dx.dormant_fraction(dx.redo_scores(torch.zeros(7), 5)) == 1.0  # all-zero layer: all dormant
    assert dx.zero_unit_fraction(torch.tensor([True, False, True, False])) == 0.5


def test_plasticity_score_range_and_extremes():
    dead = {"dormant_fraction": 1.0, "small_grad_fraction": 1.0, "grad_to_weight_rel": 0.0}
    assert dx.plasticity_score(dead) == 1.0
    healthy = {"dormant_fraction": 0.0, "small_grad_fraction": 0.0, "grad_to_weight_rel": 1.0}
    assert dx.plasticity_score(healthy) == pytest.approx(1 / 6)
    assert dx.plasticity_score({"dormant_fraction": 0.4}) == pytest.approx(0.4)
    assert math.isnan(dx.plasticity_score({}))


# --- diagnose -----------------------------------------------------------------------------------------------


def _half_dead_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    with torch.no_grad():
        model[0].bias[:10] = -1000.0
    return model


def test_half_dead_relu_is_half_dormant():
    df = diagnose(_half_dead_mlp(), _batches()).to_frame()
    relu = df.set_index("layer").loc["1"]
    assert relu["kind"] == "activation" and relu["dormant_fraction"] == 0.5
    assert relu["zero_unit_fraction"] == 0.5 and relu["source"] == "0"
    first = df.set_index("layer").loc["0"]
    assert first["dormant_fraction"] == 0.5 and first["small_grad_fraction"] >= 0.5
    assert list(df.columns) == COLUMNS and (df["depth"].diff().dropna() > 0).all()


def test_all_zero_activation_is_fully_dormant():
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias.fill_(-1e4)
    row = diagnose(model, _batches()).to_frame().set_index("layer").loc["1"]
    assert row["dormant_fraction"] == 1.0 and row["relu_zero_fraction"] == 1.0


def test_relu6_cap_fraction():
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU6(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([100.0, 100.0, 1.0, 1.0]))
    row = diagnose(model, _batches()).to_frame().set_index("layer").loc["1"]
    assert row["relu6_cap_fraction"] == 0.5 and row["relu_zero_fraction"] == 0.0


def test_report_round_trips_through_json_and_csv(tmp_path):
    report = diagnose(_half_dead_mlp(), _batches())
    back = DiagnosisReport.from_json(report.to_json(tmp_path / "d.json"))
    assert DiagnosisReport.from_json(tmp_path / "d.json").features == back.features
    a, b = report.to_frame(), back.to_frame()
    assert a["layer"].tolist() == b["layer"].tolist()
    assert a["plasticity_score"].tolist() == pytest.approx(b["plasticity_score"].tolist(), nan_ok=True)
    assert report.to_csv(tmp_path / "d.csv").read_text().startswith("layer,kind")


def test_model_without_activations_gets_weights_only_and_a_note():
    report = diagnose(nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 3)), _batches())
    df = report.to_frame()
    assert set(df["kind"]) == {"param"} and df["grad_norm"].notna().all()
    assert any("no activation modules" in n for n in report.notes)


def test_nonfinite_activations_are_counted_not_fatal():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = _batches(n=2)
    batches[0][0][0, 0] = math.nan
    report = diagnose(model, batches, backward=False)
    row = report.to_frame().set_index("layer").loc["1"]
    assert row["nonfinite"] > 0 and "non-finite" in row["notes"]


def test_few_samples_give_nan_ranks_with_a_note():
    report = diagnose(_half_dead_mlp(), _batches(n=1, b=4))
    assert math.isnan(report.features["effective_rank"])
    assert any("ranks not estimated" in n for n in report.notes)


@pytest.mark.parametrize(
    "batch, match",
    [
        ((torch.randn(4, 7), torch.zeros(4, dtype=torch.long)), r"expects float32 \[B, 10\]"),
        (
            (torch.ones(4, 10, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)),
            r"normalized float32 \[B, 10\]",
        ),
        ((torch.randn(4, 10), torch.zeros(4)), "int64 class indices"),
        ((torch.randn(4, 10), torch.full((4,), 7)), "3 classes"),
        (torch.randn(4, 10), "expected \\(x, y\\)"),
    ],
)
def test_bad_batches_raise_config_error(batch, match):
    with pytest.raises(ConfigError, match=match):
        diagnose(_half_dead_mlp(), [batch])


def test_cheap_metrics_reads_existing_grads_and_keeps_them():
    model = _half_dead_mlp()
    x, y = _batches(n=1)[0]
    assert math.isnan(cheap_metrics(model, (x, y))["grad_to_weight"])
    nn.functional.cross_entropy(model(x), y).backward()
    before = model[2].weight.grad.clone()
    m = cheap_metrics(model, (x, y))
    assert m["dormant_fraction"] == 0.5 and m["grad_to_weight"] > 0 and m["effective_rank"] > 1
    assert torch.equal(model[2].weight.grad, before) and model.training


def test_vit_report_has_gelu_dormancy_and_attention_entropy():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, depth=2)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])) for _ in range(2)]
    report = diagnose(model, batches)
    df = report.to_frame().set_index("layer")
    assert (
        df.loc["blocks.1.mlp.act", "module"] == "GELU"
        and 0 <= df.loc["blocks.1.mlp.act", "dormant_fraction"] <= 1
    )
    assert 0 < df.loc["blocks.0.attn", "attn_entropy"] <= 1 and len(report.attention["blocks.0.attn"]) == 3
    assert report.meta["grad_batches"] == 2 and report.meta["head"] == "head"  # ceil(8 / 2) caps, not 2 / 2


def test_conv_and_norm_before_an_activation_share_its_dormancy():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )  # fmt: skip
    with torch.no_grad():
        model[1].bias[:2] = -1e3  # eval-mode BN (mean 0, var 1): two channels never fire
    batches = [(torch.randn(8, 3, 10, 10), torch.randint(0, 2, (8,))) for _ in range(2)]
    df = diagnose(model, batches).to_frame().set_index("layer")
    assert df.loc[["0", "1", "2"], "dormant_fraction"].tolist() == [0.5, 0.5, 0.5]
    assert df.loc["1", "notes"] == "dormancy of 2" and pd.isna(df.loc["5", "dormant_fraction"])
