"""Registry-driven tests of restore_plasticity: every utility × selection × scheme × level on a tiny
CNN changes exactly the selected entries, is reproducible, and leaves the head alone."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from replast.errors import ConfigError, UnknownNameError
from replast.reinit import SCHEMES, SELECTIONS, STRATEGIES, UTILITIES, restore_plasticity, utility_scores
from replast.reinit.selection import SelectionInput, count, global_, per_layer, threshold

HEAD = "9"
LAYERS = ["0", "3", "7"]


def tiny(seed: int = 0) -> nn.Sequential:
    """conv→BN→ReLU→conv→ReLU→pool→linear→ReLU→head, BN stats away from their defaults."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    bn = model[1]
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    return model


def batches(n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_only_masked_changed(before: dict, model: nn.Module, masks: dict) -> None:
    """Entries in a mask changed, every other parameter entry and buffer is bit-identical."""
    after = model.state_dict()
    for name, old in before.items():
        new = after[name]
        if name in masks:
            assert torch.equal(new != old, masks[name]), name
        elif name.endswith(("running_mean", "running_var")):
            bn = name.rpartition(".")[0]
            channels = masks.get(f"{bn}.weight", torch.zeros_like(old, dtype=torch.bool))
            assert torch.equal(new[~channels], old[~channels]), name
        else:
            assert torch.equal(new, old), name


COMBOS = [(u, s, k) for u in UTILITIES.names() for s in SELECTIONS.names() for k in SCHEMES.names()]


@pytest.mark.parametrize("level", ["weight", "unit"])
@pytest.mark.parametrize(("utility", "selection", "scheme"), COMBOS)
def test_only_selected_entries_change(utility: str, selection: str, scheme: str, level: str) -> None:
    model = tiny()
    before = snapshot(model)
    report = restore_plasticity(model, batches(), utility=utility, selection=selection, fraction=0.3,
                                scheme=scheme, threshold=0.8, level=level, zero_outgoing=level == "unit",
                                recompute_bn=False)  # the edit alone; the BatchNorm pass: test_reinit_bn_stats
    assert_only_masked_changed(before, model, report.masks)
    assert torch.equal(model[9].weight, before["9.weight"]) and torch.equal(model[9].bias, before["9.bias"])
    rows = {r.param: r for r in report.rows}
    if selection != "threshold":
        assert report.n_reset > 0
    assert all(rows[f"{n}.weight"].n_reset == int(report.masks[f"{n}.weight"].sum()) for n in LAYERS)
    if level == "weight" and selection == "per-layer":
        assert [rows[f"{n}.weight"].n_reset for n in LAYERS] == [
            count(0.3, model[int(n)].weight.numel()) for n in LAYERS]
    if level == "weight" and selection == "global":
        assert sum(rows[f"{n}.weight"].n_reset for n in LAYERS) == count(0.3, sum(
            model[int(n)].weight.numel() for n in LAYERS))


@pytest.mark.parametrize("level", ["weight", "unit"])
@pytest.mark.parametrize("scheme", SCHEMES.names())
@pytest.mark.parametrize("utility", UTILITIES.names())
def test_seed_reproduces_and_differs(utility: str, scheme: str, level: str) -> None:
    def run(seed: int) -> tuple[dict, dict]:
        model = tiny()
        report = restore_plasticity(model, batches(), utility=utility, fraction=0.5, scheme=scheme,
                                    level=level, seed=seed)
        return snapshot(model), report.masks

    (a, masks_a), (b, masks_b), (c, masks_c) = run(0), run(0), run(1)
    if utility == "random":
        assert any(not torch.equal(masks_a[k], masks_c[k]) for k in masks_a)
    assert all(torch.equal(a[k], b[k]) for k in a) and all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    random_values = scheme in ("init", "init-matched", "shrink-perturb") or (
        level == "unit" and scheme == "orthogonal")  # unit level also draws fresh biases
    if utility == "random" or random_values:
        assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("selection", ["per-layer", "global"])
@pytest.mark.parametrize("level", ["weight", "unit"])
def test_fraction_zero_changes_nothing(selection: str, level: str) -> None:
    model = tiny()
    before = snapshot(model)
    report = restore_plasticity(model, batches(), selection=selection, fraction=0.0, level=level,
                                zero_outgoing=True)
    assert report.n_reset == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fraction_one_per_layer_resets_every_eligible_weight() -> None:
    model = tiny()
    before = snapshot(model)
    report = restore_plasticity(model, batches(), utility="magnitude", fraction=1.0)
    for n in LAYERS:
        assert bool(report.masks[f"{n}.weight"].all())
        assert bool((model.state_dict()[f"{n}.weight"] != before[f"{n}.weight"]).all())
    assert torch.equal(model[9].weight, before["9.weight"])


def test_threshold_selection_resets_low_normalized_scores() -> None:
    model = tiny()
    w = model[7].weight.detach().abs()
    report = restore_plasticity(model, batches(), utility="magnitude", selection="threshold", threshold=0.5,
                                include=("7",))
    assert torch.equal(report.masks["7.weight"], w / w.mean() <= 0.5)


def test_global_ranks_network_scale_utilities_unnormalized() -> None:
    scores = [torch.tensor([100.0, 200.0, 300.0, 400.0]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    layer_fair = global_(scores, SelectionInput([0.25] * 2, 0.25))  # /layer mean: 0.4 and 0.77 lowest
    assert [m.tolist() for m in layer_fair] == [[True, False, False, False], [True, False, False, False]]
    as_they_are = global_(scores, SelectionInput([0.25] * 2, 0.25, normalize_layers=False))
    assert [m.tolist() for m in as_they_are] == [[False] * 4, [True, True, False, False]]


@pytest.mark.parametrize("selection", ["per-layer", "threshold", "global"])
def test_snip_is_taylor_except_when_global_ranks_the_whole_network(selection: str) -> None:
    model = tiny()
    with torch.no_grad():
        model[7].weight.mul_(100)  # layers on very different scales: only an unnormalized ranking sees it
    masks = {u: restore_plasticity(copy.deepcopy(model), batches(), utility=u, selection=selection,
                                   fraction=0.3, threshold=0.5).masks for u in ("taylor", "snip")}
    same = all(torch.equal(masks["taylor"][n], masks["snip"][n]) for n in masks["taylor"])
    assert same == (selection != "global")
    if selection == "global":  # SNIP: the lowest E|w·g| of the whole network, whatever layer they are in
        scores = utility_scores(copy.deepcopy(model), batches(), "taylor")
        chosen = torch.cat([s[masks["snip"][f"{n}.weight"]] for n, s in scores.items()])
        rest = torch.cat([s[~masks["snip"][f"{n}.weight"]] for n, s in scores.items()])
        assert len(chosen) == count(0.3, len(chosen) + len(rest)) and chosen.max() <= rest.min()


@pytest.mark.parametrize("options", [{"strategy": "reinit-all"}, {"strategy": "redo"}, {"strategy": "fire"},
                                     {"utility": "taylor", "level": "unit"}])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_size_layers_are_not_eligible(options: dict) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 0), nn.Linear(0, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    report = restore_plasticity(model, data, **options)
    assert [row.layer for row in report.rows] == ["0"]


def test_ineligible_entries_are_never_chosen() -> None:
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0])]
    spec = SelectionInput([0.5], 0.5, threshold=0.5, eligible=[torch.tensor([False, True, True, True])])
    assert spec.allowed(per_layer(scores, spec))[0].tolist() == [False, True, True, False]  # the next-lowest
    assert spec.allowed(global_(scores, spec))[0].tolist() == [False, True, True, False]
    few = SelectionInput([0.5], 0.5, eligible=[torch.tensor([False, False, False, True])])
    assert few.allowed(per_layer(scores, few))[0].tolist() == [False, False, False, True]  # fewer than round(p·n)
    low = [torch.tensor([0.0, 1.0, 1.0, 2.0])]  # normalized as before (layer mean 1): only entry 0 <= 0.5
    assert not spec.allowed(threshold(low, spec))[0].any()


@pytest.mark.parametrize("options", [{"strategy": "cbp", "fraction": 0.3},
                                     {"utility": "magnitude", "fraction": 0.3},
                                     {"utility": "taylor", "level": "unit", "fraction": 0.3}])
def test_protected_entries_are_not_reset_again(options: dict) -> None:
    model = tiny()
    first = restore_plasticity(model, batches(), **options)
    unprotected = copy.deepcopy(model)
    again = restore_plasticity(model, batches(), protect=first.masks, seed=1, **options)
    repeat = restore_plasticity(unprotected, batches(), seed=1, **options)
    units = options.get("strategy") == "cbp" or options.get("level") == "unit"

    def chosen(report, weight: str) -> torch.Tensor:  # units: their whole rows reset
        return report.masks[weight].flatten(1).all(1) if units else report.masks[weight]

    assert again.n_reset > 0
    assert not any((chosen(first, f"{n}.weight") & chosen(again, f"{n}.weight")).any() for n in LAYERS)
    if options.get("strategy") == "cbp":  # without `protect`, units just reset (zero outgoing) come first again
        assert any((chosen(first, f"{n}.weight") & chosen(repeat, f"{n}.weight")).any() for n in LAYERS)


def test_top_and_bottom_layers_take_whole_blocks() -> None:
    top = restore_plasticity(tiny(), batches(), selection="top-layers", layers=1)
    bottom = restore_plasticity(tiny(), batches(), selection="bottom-layers", layers=2)
    # A plain nn.Sequential: each child holding a layer is a block (0, 3, 7; the head is excluded).
    assert [bool(top.masks[f"{n}.weight"].all()) for n in LAYERS] == [False, False, True]
    assert [bool(bottom.masks[f"{n}.weight"].all()) for n in LAYERS] == [True, True, False]
    assert not bottom.masks["7.weight"].any()


def test_block_ids_known_answers() -> None:
    from replast.reinit.blocks import block_ids

    class Net(nn.Module):
        def __init__(self, n_body: int) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.body = nn.Sequential(*[nn.Conv2d(4, 4, 1) for _ in range(n_body)])
            self.neck = nn.Conv2d(4, 4, 1)

    # The container holds half of the layers (2 of 4): its children are the blocks, stem and neck join the ends.
    assert block_ids(Net(2), ["stem", "body.0", "body.1", "neck"]) == ([0, 0, 1, 1], 2)
    # Under half (1 of 3): every top-level child holding a layer is a block.
    assert block_ids(Net(1), ["stem", "body.0", "neck"]) == ([0, 1, 2], 3)
    assert block_ids(tiny(), LAYERS) == ([0, 1, 2], 3)  # a plain nn.Sequential: each child


def test_scope_mapping_gives_per_layer_fractions_and_restricts_layers() -> None:
    model = tiny()
    report = restore_plasticity(model, batches(), utility="magnitude", scope={"0": 0.5, "7": 1.0})
    assert int(report.masks["0.weight"].sum()) == count(0.5, 108)
    assert bool(report.masks["7.weight"].all())
    assert "3.weight" not in report.masks


def test_empty_scope_mapping_does_nothing() -> None:
    model = tiny()
    before = snapshot(model)
    report = restore_plasticity(model, batches(), strategy="reinit-all", scope={})
    assert report.n_reset == 0 and report.rows == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_include_and_exclude_patterns() -> None:
    report = restore_plasticity(tiny(), batches(), utility="magnitude", fraction=1.0, include=("[03]",))
    assert set(report.masks) == {"0.weight", "3.weight"}
    report = restore_plasticity(tiny(), batches(), utility="magnitude", fraction=1.0, exclude=("head", "3"))
    assert set(report.masks) == {"0.weight", "7.weight"}
    with pytest.warns(UserWarning, match="matches no module"):
        restore_plasticity(tiny(), batches(), utility="magnitude", exclude=("head", "nothing.*"))


def test_a_tied_weight_is_reset_through_either_name_and_kept_when_either_is_excluded() -> None:
    def tied() -> nn.Sequential:  # layers 7 and 9 hold one weight; 9 is also the head
        model = tiny()
        model[7], model[9] = nn.Linear(6, 6), nn.Linear(6, 6)
        model[9].weight = model[7].weight
        return model

    for name in ("7", "9"):
        model = tied()
        before = model[7].weight.detach().clone()
        report = restore_plasticity(model, batches(), utility="random", fraction=0.5, include=(name,), exclude=())
        assert set(report.masks) == {"7.weight"}
        assert torch.equal(model[7].weight != before, report.masks["7.weight"]) and report.n_reset > 0
    model = tied()
    before = model[7].weight.detach().clone()
    report = restore_plasticity(model, batches(), utility="magnitude", fraction=1.0)  # excludes the head, 9
    assert "7.weight" not in report.masks and torch.equal(model[7].weight, before)


def test_head_alias_for_timm_and_torchvision_models() -> None:
    import timm
    import torchvision

    from replast.reinit.layers import head_name

    assert head_name(torchvision.models.mobilenet_v2(weights=None, num_classes=3)) == "classifier.1"
    assert head_name(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)) == "classifier"
    wrapped = nn.Sequential()
    wrapped.add_module("net", tiny())
    assert head_name(wrapped) == "net.9"


def test_head_alias_excludes_both_heads_of_a_distilled_vit() -> None:
    """DeiT/LeViT distilled models average `head` and `head_dist`; exclude 'head' left `head_dist` eligible, so
    its freshly drawn weights were re-initialized (and scored) like a backbone layer."""
    import timm

    from replast.reinit.layers import eligible_layers, head_names, resolve_patterns

    with torch.device("meta"):
        model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    assert head_names(model) == ["head", "head_dist"]
    layers = eligible_layers(model, resolve_patterns(model, ["head"], "exclude"), [], "all")
    assert not {"head", "head_dist"} & set(layers) and "blocks.11.mlp.fc2" in layers


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"fraction": 1.5}, ConfigError), ({"fraction": -0.1}, ConfigError), ({"threshold": -1.0}, ConfigError),
    ({"selection": "top-layers", "layers": 4}, ConfigError), ({"utility": "taylr"}, UnknownNameError),
    ({"strategy": "cbq"}, UnknownNameError), ({"scheme": "zeros"}, UnknownNameError),
    ({"selection": "perlayer"}, UnknownNameError), ({"include": ("nothing",)}, ConfigError),
    ({"level": "neuron"}, ConfigError), ({"fractoin": 0.1}, ConfigError), ({"scope": "auto"}, ConfigError),
    ({"scope": {"nope": 0.1}}, ConfigError), ({"fraction": "0.1"}, ConfigError),
    ({"layers": 2.5}, ConfigError), ({"zero_outgoing": "no"}, ConfigError), ({"unpaired": "drop"}, ConfigError), ({"scope": {"0": "half"}}, ConfigError),
    ({"shrink": math.nan}, ConfigError), ({"perturb": math.inf}, ConfigError), ({"threshold": math.inf}, ConfigError),
])
def test_bad_options_fail_before_touching_the_model(kwargs: dict, error: type) -> None:
    model = tiny()
    before = snapshot(model)
    with pytest.raises(error):
        restore_plasticity(model, batches(), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_include_patterns_that_all_miss_are_one_error_without_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ConfigError) as info:
        warnings.simplefilter("always")
        restore_plasticity(tiny(), batches(), include=("nothing", "nor.*"))
    assert "include patterns ['nothing', 'nor.*'] match no module" in str(info.value)
    assert not [w for w in caught if "matches no module" in str(w.message)]
    with pytest.warns(UserWarning, match="include pattern 'nothing' matches no module"):  # one of two misses
        report = restore_plasticity(tiny(), batches(), utility="magnitude", fraction=1.0,
                                    include=("nothing", "[03]"))
    assert set(report.masks) == {"0.weight", "3.weight"}


def test_unknown_name_lists_valid_and_closest() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'taylor'.*valid: activation"):
        restore_plasticity(tiny(), batches(), utility="taylr")


def test_gradient_utility_without_gradients_is_a_config_error() -> None:
    model = tiny()
    before = snapshot(model)
    with torch.no_grad(), pytest.raises(ConfigError, match="gradients are disabled"):
        restore_plasticity(model, batches(), utility="taylor")
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no parameter of the model requires grad"):
        restore_plasticity(model, batches(), utility="fisher")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert restore_plasticity(model, batches(), utility="magnitude").n_reset > 0  # no gradients needed


def test_empty_batches_is_a_config_error_and_model_unchanged() -> None:
    model = tiny()
    before = snapshot(model)
    with pytest.raises(ConfigError, match="empty"):
        restore_plasticity(model, iter([]), utility="taylor")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_bad_later_batch_is_a_config_error_and_model_unchanged() -> None:
    model = tiny()
    before = snapshot(model)
    (x, y), second = batches()
    with pytest.raises(ConfigError, match="labels span 3..3 but the model has 3 classes"):
        restore_plasticity(model, [(x, y), (second[0], torch.full_like(y, 3))], utility="taylor")
    with pytest.raises(ConfigError, match=r"a batch is a Tensor: expected \(x, y\)"):
        restore_plasticity(model, [(x, y), second[0]], utility="activation")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_bad_later_batch_without_a_utility_pass_is_found_before_the_edit() -> None:
    model = tiny()  # magnitude reads no batch; the BatchNorm pass reads both, after the edit
    before = snapshot(model)
    (x, y), second = batches()
    with pytest.raises(ConfigError, match=r"a batch is a Tensor: expected \(x, y\)"):
        restore_plasticity(model, [(x, y), second[0]], utility="magnitude")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].momentum == 0.1


def test_an_error_while_writing_puts_back_every_parameter_already_written(monkeypatch) -> None:
    def fails_on_biases(old, fresh, spec):
        if old.dim() == 1:
            raise RuntimeError("this scheme cannot write biases")
        return fresh

    monkeypatch.setitem(SCHEMES._items, "fails-on-biases", fails_on_biases)
    model = tiny()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="biases"):  # layer 0's weight is written before its bias fails
        restore_plasticity(model, batches(), utility="magnitude", level="unit", fraction=0.5,
                           scheme="fails-on-biases")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_number_options_of_other_numeric_types_are_cast() -> None:
    report = restore_plasticity(tiny(), batches(), fraction=np.float32(0.5), batches=2.0, seed=np.int64(1))
    assert report.options["batches"] == 2 and type(report.options["batches"]) is int
    assert report.options["fraction"] == pytest.approx(0.5) and type(report.options["fraction"]) is float
    assert type(report.options["seed"]) is int


def test_mode_requires_grad_and_grads_are_restored() -> None:
    model = tiny().train()
    model[1].eval()
    model[3].weight.requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    restore_plasticity(model, batches(), utility="taylor", level="unit")
    assert model.training and not model[1].training
    assert not model[3].weight.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_trainer_options_are_accepted_and_config_dict_splats() -> None:
    from dataclasses import asdict

    from replast.config import ReinitConfig

    cfg = asdict(ReinitConfig(strategy="targeted", utility="magnitude", lr_scale=3.0, schedule="every:5"))
    report = restore_plasticity(tiny(), batches(), **cfg)
    assert report.n_reset > 0 and report.options["batches"] == 8


def test_none_strategy_does_nothing() -> None:
    model = tiny()
    before = snapshot(model)
    report = restore_plasticity(model, batches(), strategy="none")
    assert report.rows == [] and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_report_serializes() -> None:
    report = restore_plasticity(tiny(), batches(), utility="cbp", level="unit", zero_outgoing=True)
    data = json.loads(report.to_json())
    assert data["strategy"] == "targeted" and "masks" not in data
    assert {r["param"] for r in data["rows"]} >= {"0.weight", "3.weight", "7.weight", "1.weight", "0.bias"}
    frame = report.to_frame()
    assert list(frame.columns)[:4] == ["layer", "param", "numel", "n_reset"]
    assert frame["n_reset"].sum() == report.n_reset
    assert report.total_time_s >= report.utility_time_s >= 0 and report.select_time_s >= 0
    assert report.n_batches == 2
    note = frame.set_index("param").loc["3.weight", "note"]
    assert note.startswith("fell back to weight level: passes through AdaptiveAvgPool2d")
    assert math.isclose(frame.set_index("param").loc["0.weight", "fraction_reset"],
                        report.masks["0.weight"].float().mean().item())


def test_batches_option_limits_the_utility_pass() -> None:
    report = restore_plasticity(tiny(), batches(5), utility="gradient", batches=3)
    assert report.n_batches == 3


def test_wrapped_model_keeps_working_under_a_copy() -> None:
    model = tiny()
    clone = copy.deepcopy(model)
    a = restore_plasticity(model, batches(), seed=3)
    b = restore_plasticity(clone, batches(), seed=3)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


STRATEGY_MODELS = ["mobilenet_v2", "efficientnet_lite0", "vit"]


def _small_model(name: str) -> nn.Module:
    import timm
    import torchvision

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(weights=None, num_classes=3)
    if name == "efficientnet_lite0":
        return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
                             patch_size=8, depth=2)


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    return {name: _small_model(name) for name in STRATEGY_MODELS}


@pytest.mark.parametrize("model_name", STRATEGY_MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_on_real_architectures(small_models: dict, model_name: str, strategy: str) -> None:
    model = copy.deepcopy(small_models[model_name])
    head = "head" if model_name == "vit" else ("classifier" if model_name == "efficientnet_lite0" else "classifier.1")
    head_before = dict(model.get_submodule(head).named_parameters())
    head_before = {k: v.detach().clone() for k, v in head_before.items()}
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2,))) for _ in range(2)]
    report = restore_plasticity(model, data, strategy=strategy, fraction=0.1, batches=2)
    if strategy == "none":
        assert report.n_reset == 0
    elif strategy != "redo":  # redo resets only dormant units, which a fresh model may not have
        assert report.n_reset > 0
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())
    for k, v in model.get_submodule(head).named_parameters():
        assert torch.equal(v, head_before[k])
