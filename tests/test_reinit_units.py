"""Unit-level resets: pairing by tracing, function preservation with zero_outgoing (CNN units, ViT MLP
units and attention heads, grouped consumers), BatchNorm and depthwise ties, fallback to weight level, and
known answers for the row / channel / unit helpers."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from replast.reinit import restore_plasticity, utility_scores
from replast.reinit.blocks import block_ids
from replast.reinit.layers import candidate_layers
from replast.reinit.pairing import pair_layers
from replast.reinit.trace import trace
from replast.reinit.units import (
    group_by_unit,
    input_channel_abs_sum,
    input_channel_mask,
    units_to_weight,
    weight_to_units,
)


def _vit(depth: int = 2) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=16,
                             patch_size=8, depth=depth).eval()


def _images(n: int = 4, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g))]


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_vit_dormant_mlp_units_reset_without_changing_the_output() -> None:
    model = _vit()
    with torch.no_grad():  # plant dormant units: GELU(-1e4) is exactly 0
        model.blocks[0].mlp.fc1.bias[:5] = -1e4
    x = _images()[0][0]
    expected = _outputs(model, x)
    report = restore_plasticity(model, _images(), strategy="redo", threshold=1e-6, include=("*.mlp.fc1",))
    rows = report.masks["blocks.0.mlp.fc1.weight"].any(1)
    assert rows.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert report.masks["blocks.0.mlp.fc2.weight"][:, :5].all() and not model.blocks[0].mlp.fc2.weight[:, :5].any()
    assert not report.masks["blocks.1.mlp.fc1.weight"].any()
    torch.testing.assert_close(_outputs(model, x), expected, rtol=0, atol=1e-6)
    assert (model.blocks[0].mlp.fc1.bias[:5] == 0).all()  # timm ViT init: zero bias


def test_vit_dormant_attention_head_reset_without_changing_the_output() -> None:
    model = _vit(depth=1)
    attn = model.blocks[0].attn
    width, d = 192, 192 // attn.num_heads
    with torch.no_grad():  # head 1 has zero values: its output is 0 whatever it attends to
        attn.qkv.weight[2 * width + d: 2 * width + 2 * d] = 0
        attn.qkv.bias[2 * width + d: 2 * width + 2 * d] = 0
    x = _images()[0][0]
    expected = _outputs(model, x)
    report = restore_plasticity(model, _images(), utility="activation", selection="threshold", threshold=0.0,
                                level="unit", zero_outgoing=True, include=("*.qkv",))
    rows = report.masks["blocks.0.attn.qkv.weight"].all(1)
    head_rows = torch.zeros(3 * width, dtype=torch.bool)
    for part in range(3):
        head_rows[part * width + d: part * width + 2 * d] = True
    assert torch.equal(rows, head_rows)
    cols = report.masks["blocks.0.attn.proj.weight"].all(0)
    assert cols.nonzero().flatten().tolist() == list(range(d, 2 * d))
    torch.testing.assert_close(_outputs(model, x), expected, rtol=0, atol=1e-6)


def test_head_first_attention_is_not_paired_as_q_k_v_blocks() -> None:
    """timm's MaxViT `*_rw` attention (head_first) lays qkv rows out per head: [q0 k0 v0 q1 k1 v1]. Pairing it as
    [q; k; v] made a reset 'head 0' change the rows of both heads (and FIRE split q, k, v at the wrong rows)."""
    from timm.models.maxxvit import AttentionCl

    from replast.reinit.pairing import fused_qkv

    assert fused_qkv(AttentionCl(32, dim_head=8, head_first=False))
    assert not fused_qkv(AttentionCl(32, dim_head=8, head_first=True))
    model = nn.Sequential(nn.Linear(4, 32), AttentionCl(32, dim_head=8, head_first=True))
    x = torch.randn(2, 5, 4)
    maps = pair_layers(model, trace(model, x), ["1.qkv"], ["head"], zero_outgoing=True)
    assert not maps["1.qkv"].paired


def test_talking_heads_attention_is_not_paired_by_head() -> None:
    """CaiT's TalkingHeadAttn mixes the heads' attention maps (proj_l, proj_w): a head's q and k steer every
    head's output, so resetting a 'head' with zeroed proj columns changed the function it promised to keep."""
    from timm.models.cait import TalkingHeadAttn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), TalkingHeadAttn(16, num_heads=2))
    x = torch.randn(2, 5, 4)
    maps = pair_layers(model, trace(model, x), ["1.qkv"], ["head"], zero_outgoing=True)
    assert not maps["1.qkv"].paired and "talking-heads" in maps["1.qkv"].reason


def test_vit_unit_reset_output_does_not_depend_on_new_values() -> None:
    base = _vit()
    x = _images()[0][0]
    outs = []
    for seed in (0, 1):
        model = copy.deepcopy(base)
        report = restore_plasticity(model, _images(), utility="activation", fraction=0.3, level="unit",
                                    zero_outgoing=True, include=("*.fc1", "*.qkv"), seed=seed)
        outs.append(_outputs(model, x))
    ablated = copy.deepcopy(base)  # the original with the reset units' outgoing weights removed
    with torch.no_grad():
        for name in ("blocks.0.mlp.fc2", "blocks.1.mlp.fc2", "blocks.0.attn.proj", "blocks.1.attn.proj"):
            ablated.get_submodule(name).weight[report.masks[f"{name}.weight"]] = 0
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(outs[0], _outputs(ablated, x), rtol=0, atol=1e-6)


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.bias[[1, 6]] = -1e3  # dead ReLU units
    return model.eval()


def test_cnn_dead_units_reset_batchnorm_and_keep_the_output() -> None:
    model = _cnn()
    x = _images(size=8)[0][0]
    expected = _outputs(model, x)
    bn_before = {k: v.clone() for k, v in model[1].state_dict().items()}
    report = restore_plasticity(model, _images(size=8), strategy="redo", threshold=1e-6, include=("0",))
    reset = torch.zeros(8, dtype=torch.bool)
    reset[[1, 6]] = True
    assert torch.equal(report.masks["0.weight"].flatten(1).all(1), reset)
    assert torch.equal(report.masks["1.weight"], reset) and torch.equal(report.masks["1.bias"], reset)
    bn = model[1]
    for name, default in (("weight", 1.0), ("bias", 0.0)):
        value = getattr(bn, name).detach()
        assert (value[reset] == default).all(), name
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, name)[~reset], bn_before[name][~reset]), name
    # the reset units' own statistics now describe their new filters on the data (no other channel changed)
    assert report.bn_recomputed == {"1": 2}
    new_out = torch.cat([model[0](b[0]) for b in _images(size=8)]).detach()
    torch.testing.assert_close(bn.running_mean[reset], new_out.mean((0, 2, 3))[reset], rtol=1e-5, atol=1e-6)
    assert not model[3].weight[:, reset].any()
    torch.testing.assert_close(_outputs(model, x), expected, rtol=0, atol=1e-6)


def test_without_recompute_reset_units_get_default_batchnorm_statistics() -> None:
    """recompute_bn=False: the reset channels' running mean/var are the BatchNorm defaults 0 and 1."""
    model = _cnn()
    x = _images(size=8)[0][0]
    expected = _outputs(model, x)
    bn_before = {k: v.clone() for k, v in model[1].state_dict().items()}
    report = restore_plasticity(model, _images(size=8), strategy="redo", threshold=1e-6, include=("0",),
                                recompute_bn=False)
    reset = torch.zeros(8, dtype=torch.bool)
    reset[[1, 6]] = True
    assert torch.equal(report.masks["1.weight"], reset) and report.bn_recomputed == {}
    bn = model[1]
    for name, default in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        value = getattr(bn, name).detach()
        assert (value[reset] == default).all(), name
        assert torch.equal(value[~reset], bn_before[name][~reset]), name
    assert torch.equal(bn.num_batches_tracked, bn_before["num_batches_tracked"])
    torch.testing.assert_close(_outputs(model, x), expected, rtol=0, atol=1e-6)


def test_grouped_consumer_zeroes_the_columns_of_each_group() -> None:
    """conv(3→8) feeds a conv with groups=2: channel c is column c mod 4 of the rows of group c div 4."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, groups=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[0].bias[[1, 6]] = -1e3  # dead ReLU units 1 (group 0, column 1) and 6 (group 1, column 2)
    x = _images(size=8)[0][0]
    expected = _outputs(model, x)
    report = restore_plasticity(model, _images(size=8), strategy="redo", threshold=1e-6, include=("0",))
    outgoing = torch.zeros(4, 4, 3, 3, dtype=torch.bool)
    outgoing[[0, 1], 1] = True
    outgoing[[2, 3], 2] = True
    assert torch.equal(report.masks["2.weight"], outgoing)
    assert not model[2].weight[outgoing].any() and model[2].weight[~outgoing].all()
    torch.testing.assert_close(_outputs(model, x), expected, rtol=0, atol=1e-6)


def test_a_tied_layer_selected_itself_resets_the_union_of_both_selections() -> None:
    """The depthwise conv 3 is tied to conv 0's units and is a layer with units of its own: both count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()

    def lowest_units(layer: int) -> torch.Tensor:  # magnitude at unit level: mean |w| of the unit's row
        mask = torch.zeros(8, dtype=torch.bool)
        mask[model[layer].weight.detach().abs().flatten(1).mean(1).argsort()[:2]] = True  # 25% of 8
        return mask

    own0, own3 = lowest_units(0), lowest_units(3)
    union = own0 | own3
    assert int(union.sum()) == 3  # the two selections overlap in one unit only
    report = restore_plasticity(model, _images(size=8), utility="magnitude", fraction=0.25, level="unit",
                                zero_outgoing=True, recompute_bn=False)
    masks = report.masks
    assert torch.equal(masks["0.weight"].flatten(1).all(1), own0) and torch.equal(masks["1.weight"], own0)
    assert torch.equal(masks["3.weight"].flatten(1).all(1), union) and torch.equal(masks["3.bias"], union)
    assert torch.equal(masks["3.weight"].flatten(1).any(1), union)
    assert torch.equal(masks["4.weight"], union) and torch.equal(masks["4.bias"], union)
    assert (model[4].running_mean[union] == 0).all() and (model[4].running_var[union] == 1).all()


def test_unit_helpers_known_answers() -> None:
    rows = torch.tensor([0, 1, 0, 1])  # rows of unit 0 and unit 1 interleaved, as qkv heads are
    torch.testing.assert_close(units_to_weight(torch.tensor([10.0, 20.0]), rows, torch.Size([4, 3])),
                               torch.tensor([[10.0] * 3, [20.0] * 3, [10.0] * 3, [20.0] * 3]))
    scores = torch.tensor([[1.0, 3.0], [2.0, 2.0], [5.0, 7.0], [0.0, 4.0]])  # row means 2, 2, 6, 2
    torch.testing.assert_close(weight_to_units(scores, rows, 2), torch.tensor([4.0, 2.0]))
    values, index = torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0, 2, 0, 2])
    torch.testing.assert_close(group_by_unit(values, index, 3), torch.tensor([2.0, 0.0, 4.0]))
    torch.testing.assert_close(group_by_unit(values, index, 3, reduce="sum"), torch.tensor([4.0, 0.0, 8.0]))
    # groups=2, 4 rows × 2 input columns: channel c = group c div 2, column c mod 2
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0], [7.0, -8.0]])
    torch.testing.assert_close(input_channel_abs_sum(w, 2), torch.tensor([4.0, 6.0, 12.0, 14.0]))
    torch.testing.assert_close(input_channel_abs_sum(w, 1), torch.tensor([16.0, 20.0]))
    conv = w[:, :, None, None] * torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)  # 1×2 kernels: twice |w|
    torch.testing.assert_close(input_channel_abs_sum(conv, 2), torch.tensor([8.0, 12.0, 24.0, 28.0]))
    mask = input_channel_mask(torch.tensor([False, True, True, False]), conv.shape, 2)
    expected = torch.zeros(4, 2, dtype=torch.bool)
    expected[[0, 1], 1] = True  # channel 1: group 0, column 1
    expected[[2, 3], 0] = True  # channel 2: group 1, column 0
    assert torch.equal(mask, expected[:, :, None, None].expand(4, 2, 1, 2))


def test_mobilenet_expand_unit_ties_depthwise_and_zeroes_project_columns() -> None:
    import torchvision

    torch.manual_seed(0)
    base = torchvision.models.mobilenet_v2(weights=None, num_classes=3).eval()
    data = _images(n=2, size=32)
    x = data[0][0]
    outs, reports = [], []
    for seed in (0, 1):
        model = copy.deepcopy(base)
        reports.append(restore_plasticity(model, data, utility="magnitude", fraction=0.25, level="unit",
                                          zero_outgoing=True, include=("features.2.conv.0.0",), seed=seed))
        outs.append(_outputs(model, x))
    masks = reports[0].masks
    units = masks["features.2.conv.0.0.weight"].flatten(1).all(1)
    assert int(units.sum()) == 24  # 25% of 96 expand channels
    assert torch.equal(masks["features.2.conv.1.0.weight"].flatten(1).all(1), units)  # tied depthwise
    assert torch.equal(masks["features.2.conv.0.1.weight"], units) and torch.equal(
        masks["features.2.conv.1.1.weight"], units)
    assert torch.equal(masks["features.2.conv.2.weight"].flatten(1).any(0), units)  # outgoing columns
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    reset = reports[0].reset_masks  # re-initialized only: the zeroed columns are not, the BatchNorms not here
    assert set(reset) == {"features.2.conv.0.0.weight", "features.2.conv.1.0.weight"}
    assert all(torch.equal(reset[n], masks[n]) for n in reset)


def test_residual_outputs_fall_back_to_weight_level_with_a_note() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=3)
    report = restore_plasticity(model, _images(n=2, size=32), utility="magnitude", level="unit",
                                include=("features.3.*",))
    rows = {r.param: r for r in report.rows}
    project = rows["features.3.conv.2.weight"]
    assert project.level == "weight" and project.note == "fell back to weight level: residual add"
    assert project.n_reset == round(0.1 * project.numel)
    assert rows["features.3.conv.0.0.weight"].level == "unit"


class _Residual(nn.Module):
    """`a` pairs with `b`; `b` feeds a residual add, so its units cannot be paired."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(torch.relu(self.a(x))) + x)


def test_unpaired_skip_leaves_unpaired_layers_alone() -> None:
    torch.manual_seed(0)
    data = [(torch.randn(8, 6), torch.tensor([0, 1] * 4))]
    options = {"utility": "magnitude", "level": "unit", "selection": "global", "fraction": 0.5}
    model = _Residual()
    before = copy.deepcopy(model.state_dict())
    report = restore_plasticity(model, data, unpaired="skip", **options)
    rows = {r.param: r for r in report.rows}
    assert rows["b.weight"].n_reset == 0 and rows["b.weight"].note == "left alone, units not paired: residual add"
    assert torch.equal(model.b.weight, before["b.weight"]) and torch.equal(model.b.bias, before["b.bias"])
    # `global` ranks only the layers that take part: half of a's 6 units, the lowest by magnitude
    chosen = report.masks["a.weight"].all(1)
    assert int(chosen.sum()) == 3
    assert torch.equal(chosen, before["a.weight"].abs().mean(1) <= before["a.weight"].abs().mean(1).median())
    fallback = restore_plasticity(_Residual(), data, **options)  # the default scores b at weight level
    assert {r.param: r for r in fallback.rows}["b.weight"].n_reset > 0


def test_unpaired_skip_makes_redo_independent_of_the_new_values_on_mobilenetv2() -> None:
    """With every reset unit's outgoing weights zeroed, the output cannot depend on the fresh values (the
    seed); the weight-level fallback resets projection rows whose outgoing weights stay, so there it does."""
    import torchvision

    torch.manual_seed(0)
    base = torchvision.models.mobilenet_v2(weights=None, num_classes=3).eval()
    data = _images(n=4, size=32)
    x = data[0][0]
    outs: dict[str, list[torch.Tensor]] = {"skip": [], "weight": []}
    for unpaired, seed in itertools.product(outs, (0, 1)):
        model = copy.deepcopy(base)
        report = restore_plasticity(model, data, strategy="redo", threshold=0.5, exclude=("classifier",),
                                    unpaired=unpaired, seed=seed)
        outs[unpaired].append(_outputs(model, x))
        assert sum(r.n_reset for r in report.rows if r.level == "unit") > 0
        skipped = [r.param for r in report.rows if r.note.startswith("left alone")]
        if unpaired == "skip":  # projections may still lose the columns of reset units, but no row
            assert "features.18.0.weight" in skipped
            assert not any(report.reset_masks[p].any() for p in skipped if p in report.reset_masks)
        else:
            assert not skipped
    torch.testing.assert_close(outs["skip"][0], outs["skip"][1], rtol=0, atol=1e-5)
    assert (outs["weight"][0] - outs["weight"][1]).abs().max() > 1e-3


def test_efficientnet_pairs_stem_through_the_depthwise_conv() -> None:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3).eval()
    maps = pair_layers(model, trace(model, torch.randn(1, 3, 32, 32)), ["conv_stem", "blocks.1.0.conv_pwl"],
                       ["classifier"], zero_outgoing=True)
    stem = maps["conv_stem"]
    assert stem.paired and stem.ties == ("bn1", "blocks.0.0.conv_dw", "blocks.0.0.bn1")
    assert stem.site == "blocks.0.0.conv_dw" and stem.consumer == "blocks.0.0.conv_pw"
    assert not maps["blocks.1.0.conv_pwl"].paired


def test_excluded_consumer_blocks_zero_outgoing() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    data = [(torch.randn(3, 4), torch.tensor([0, 1, 2]))]
    report = restore_plasticity(copy.deepcopy(model), data, utility="magnitude", level="unit",
                                zero_outgoing=True)
    assert "outgoing layer 2 is excluded" in report.rows[0].note
    report = restore_plasticity(copy.deepcopy(model), data, utility="magnitude", level="unit")
    assert report.rows[0].level == "unit" and "2.weight" not in report.masks


def test_shared_module_and_failed_trace_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(torch.relu(self.body(x))))

    data = [(torch.randn(3, 4), torch.tensor([0, 1, 0]))]
    report = restore_plasticity(Twice(), data, utility="magnitude", level="unit")
    assert report.rows[0].note == "fell back to weight level: called 2 times in a forward pass"

    def broken(*args: object) -> None:
        raise RuntimeError("untraceable")

    monkeypatch.setattr("replast.reinit.engine.trace", broken)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    report = restore_plasticity(model, data, utility="magnitude", level="unit")
    assert "forward trace failed" in report.rows[0].note and report.rows[0].n_reset > 0


# ---- blocks of deep ResNets and wrapped models; CBP's outgoing weights past a depthwise tie -------------
@pytest.mark.parametrize("depth", [50, 101, 152])
def test_resnet_blocks_are_the_stem_and_the_four_stages_at_every_depth(depth: int) -> None:
    """blocks.py: ResNet-101/152's layer3 holds >= half of the convs, so it is taken for the 'main container':
    its 23/36 bottlenecks become the blocks and layer4 is folded into the last one (ResNet-50: 5 blocks)."""
    import torchvision

    with torch.device("meta"):  # names only: no weights drawn
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=3)
    layers = candidate_layers(model, ["fc"])
    ids, n_blocks = block_ids(model, layers)
    last = {name.split(".")[0] for name, b in zip(layers, ids, strict=True) if b == n_blocks - 1}
    first = {name.split(".")[0] for name, b in zip(layers, ids, strict=True) if b == 0}
    assert (n_blocks, last, first) == (5, {"layer4"}, {"conv1"})


def test_cbp_outgoing_weights_are_those_a_reset_zeroes_past_a_depthwise_tie() -> None:
    """scoring.py _outgoing_abs sums |w| of the activation *site* (the tied depthwise conv), not of the consumer
    whose columns zero_outgoing zeroes. README: cbp = mean|a| x sum|outgoing w|, and 'a unit reset with zeroed
    outgoing weights would otherwise score lowest again' -- false for every MobileNet expand conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[6].weight[:, 2] = 0  # unit 2 of layer "0" as right after a cbp reset: no outgoing weights
    data = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))]
    scores = utility_scores(model, data, "cbp", level="unit")["0"]
    assert scores.shape == (6,) and (scores > 0).sum() >= 5  # paired; the other units contribute
    assert scores[2] == 0


def test_a_wrapped_model_has_the_blocks_of_the_model_it_wraps() -> None:
    """blocks.py: a LightningModule-style wrapper (`self.model = timm.create_model(...)`) has no container child,
    so every layer lands in one block 'model': top-layers / bottom-layers with layers=1 reset the whole network."""
    import timm

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    wrapped = Wrapper()
    bare = block_ids(wrapped.model, candidate_layers(wrapped.model, ["classifier"]))
    assert bare[1] == 7  # conv_stem + stages 0..6 + conv_head: stem joins stage 0, head joins stage 6
    assert block_ids(wrapped, candidate_layers(wrapped, ["model.classifier"])) == bare
