"""Vision Transformers: layer-wise lr decay (known answer on a 2-block timm ViT), AdamW by default,
patch-size errors, and the real converted DINOv2 ViT-S/14 through re-initialization, diagnosis and
`replast finetune` (all at 56 px: 4×4 patches, so each forward pass takes milliseconds)."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from replast.config import TrainConfig
from replast.data import load_dataset
from replast.diagnosis import diagnose
from replast.errors import ConfigError
from replast.models import load_model, model_family
from replast.optim import build_optimizer, build_scheduler, resolve
from replast.preprocessing import Preprocessing
from replast.reinit import restore_plasticity

VIT = "vit_small_patch14_dinov2"
SIZE = 56  # 4×4 patches of 14 px
WIDTH, HEADS, HEAD_DIM = 384, 6, 64


# ---- layer-wise lr decay and optimizer defaults (tiny random timm ViT) ----------------------------
def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, patch_size=8,
                             num_classes=3)


def _tiny_layer_id(name: str) -> int:
    """timm's layer ids of a 2-block ViT, written out: embeddings 0, blocks 1..2, head 3.

    The final norm joins the last block (timm's group_matcher maps `norm` to MATCH_PREV_GROUP)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks.0."):
        return 1
    if name.startswith(("blocks.1.", "norm.")):
        return 2
    assert name.startswith("head."), name
    return 3


def _groups_by_param(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """{parameter name: its param group}; every trainable parameter is in exactly one group."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in out
            out[names[id(p)]] = group
    assert set(out) == {n for n, p in model.named_parameters() if p.requires_grad}
    return out


def test_layer_decay_lr_and_weight_decay_of_every_parameter_known_answer():
    model = _tiny_vit()
    cfg = TrainConfig(layer_decay=0.5)
    settings = resolve(cfg, "vit", batch_size=64)
    assert (settings.name, settings.lr, settings.weight_decay, settings.layer_decay) == ("adamw", 1e-4, 0.05, 0.5)
    optimizer = build_optimizer(model, cfg, settings)
    assert isinstance(optimizer, torch.optim.AdamW)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2)
    scheduler.step_update(3)  # one update past the warm-up: cosine at 1 of 8 steps
    base = 1e-4 * 0.5 * (1 + math.cos(math.pi * 1 / 8))
    no_decay = {"cls_token", "pos_embed"}  # plus every 1-D parameter: norms, biases
    assert len(optimizer.param_groups) == 4 * 2  # 4 layer ids × (decay, no decay)
    groups = _groups_by_param(model, optimizer)
    for name, group in groups.items():
        layer = _tiny_layer_id(name)
        param = model.get_parameter(name)
        assert group["lr"] == pytest.approx(base * 0.5 ** (3 - layer), rel=1e-12), name
        expected_wd = 0.0 if name in no_decay or param.ndim <= 1 else 0.05
        assert group["weight_decay"] == expected_wd, name
    assert groups["head.weight"]["lr"] == pytest.approx(base)
    assert groups["pos_embed"]["lr"] == pytest.approx(base / 8)


def test_layer_decay_off_by_default_and_ignored_by_cnns():
    vit = _tiny_vit()
    settings = resolve(TrainConfig(), "vit", 64)
    assert settings.layer_decay == 1.0
    optimizer = build_optimizer(vit, TrainConfig(), settings)
    assert all(g.get("lr_scale", 1.0) == 1.0 for g in optimizer.param_groups)
    wd = {n: g["weight_decay"] for n, g in _groups_by_param(vit, optimizer).items()}
    assert wd["pos_embed"] == wd["cls_token"] == wd["blocks.0.norm1.weight"] == wd["head.bias"] == 0.0
    assert wd["blocks.0.attn.qkv.weight"] == 0.05

    # timm CNNs have a group_matcher too: the family decides, with a warning instead of an error.
    cnn = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=3)
    cfg = TrainConfig(layer_decay=0.5)
    with pytest.warns(UserWarning, match=r"train.layer_decay=0.5 is ignored.*cnn"):
        settings = resolve(cfg, model_family(cnn), 64)
    assert (settings.name, settings.layer_decay) == ("sgd", 1.0)
    optimizer = build_optimizer(cnn, cfg, settings)
    assert {g["lr"] for g in optimizer.param_groups} == {settings.lr}
    assert all(g.get("lr_scale", 1.0) == 1.0 for g in optimizer.param_groups)


def test_layer_decay_on_a_vit_timm_cannot_number_warns_and_is_ignored():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3)
    cfg = TrainConfig(layer_decay=0.5)
    settings = resolve(cfg, model_family(model), 64)
    with pytest.warns(UserWarning, match="ignored for VisionTransformer"):
        optimizer = build_optimizer(model, cfg, settings)
    assert {g["lr"] for g in optimizer.param_groups} == {settings.lr}


@pytest.mark.parametrize("build", [
    lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3),
    lambda: torchvision.models.swin_t(num_classes=3)], ids=["vit", "swin"])
def test_torchvision_tokens_and_position_embeddings_get_no_weight_decay(build):
    # TrainConfig promises it for every model; timm's grouping only knows a timm model's no_weight_decay()
    model = build()
    settings = resolve(TrainConfig(), model_family(model), 64)
    wd = {n: g["weight_decay"] for n, g in _groups_by_param(model, build_optimizer(model, TrainConfig(),
                                                                                   settings)).items()}
    tokens = [n for n in wd if n.rpartition(".")[2] in ("class_token", "pos_embedding",
                                                         "relative_position_bias_table")]
    assert tokens and all(wd[n] == 0.0 for n in tokens), {n: wd[n] for n in tokens}
    assert {v for n, v in wd.items() if model.get_parameter(n).ndim > 1 and n not in tokens} == {0.05}


@pytest.mark.parametrize("family, optimizer, batch, expected", [
    ("vit", "auto", 64, ("adamw", 1e-4, 0.05)),
    ("vit", "auto", 32, ("adamw", 0.5e-4, 0.05)),
    ("cnn", "auto", 128, ("sgd", 0.02, 5e-5)),
    ("vit", "sgd", 64, ("sgd", 0.01, 5e-5)),
    ("cnn", "adamw", 64, ("adamw", 1e-4, 0.05)),
])
def test_adamw_is_the_default_for_vits(family, optimizer, batch, expected):
    s = resolve(TrainConfig(optimizer=optimizer), family, batch)
    assert (s.name, s.weight_decay) == (expected[0], expected[2]) and s.lr == pytest.approx(expected[1])


@pytest.mark.parametrize("family, optimizer, refused", [
    ("cnn", "auto", True), ("vit", "sgd", True), ("vit", "auto", False), ("cnn", "adamw", False)])
def test_momentum_zero_with_nesterov_is_refused_only_where_sgd_runs(family, optimizer, refused):
    cfg = TrainConfig(optimizer=optimizer, momentum=0.0)
    if refused:
        with pytest.raises(ConfigError, match="train.momentum=0 with train.nesterov=true"):
            resolve(cfg, family, 64)
    else:
        assert resolve(cfg, family, 64).name == "adamw"
    assert resolve(TrainConfig(optimizer=optimizer, momentum=0.0, nesterov=False), family, 64)


def test_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    cfg = TrainConfig(layer_decay=0.5)
    optimizer = build_optimizer(_tiny_vit(), cfg, resolve(cfg, "vit", 64))
    scheduler = build_scheduler(optimizer, total_steps=12, warmup_steps=4)
    head = max(optimizer.param_groups, key=lambda g: g["lr_scale"])
    expected = {0: 0.0, 2: 0.5e-4, 4: 1e-4, 8: 0.5e-4, 12: 0.0}  # cosine over the 8 steps after warm-up
    for step, lr in expected.items():
        scheduler.step_update(step)
        assert head["lr"] == pytest.approx(lr, abs=1e-15), step


@pytest.mark.parametrize("total, warmup, one_step", [(1, 1, True), (13, 13, False), (4, 6, False)])
def test_schedule_warns_when_the_warm_up_covers_the_whole_run(total, warmup, one_step):
    # e.g. --epochs 1 with the default warmup_epochs 1: the rate only rises, and a one-step run trained at lr 0
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=rf"warm-up \({warmup} steps\) covers the whole run \({total} steps\)") as w:
        build_scheduler(optimizer, total_steps=total, warmup_steps=warmup)
    assert ("learning rate of 0" in str(w[0].message)) == one_step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_scheduler(optimizer, total_steps=total + warmup, warmup_steps=warmup)


# ---- input size vs patch size ----------------------------------------------------------------------
@pytest.mark.parametrize("size, patch, hint", [(120, 14, "use 112 or 126"), (10, 14, "use 14"),
                                               (200, 16, "use 192 or 208"), (9, 8, "use 8 or 16")])
def test_patch_size_error_suggests_the_nearest_valid_sizes(size, patch, hint):
    with pytest.raises(ConfigError, match=f"image_size {size} is not a multiple of the model's patch size "
                                          f"{patch}: {hint}$"):
        load_dataset("synthetic", Preprocessing(patch_size=patch), image_size=size)


# ---- the real converted DINOv2 ViT-S/14 -------------------------------------------------------------
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """A cache of this module's own: the ONNX conversion (and Br35H at 56 px) happen once here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPLAST_CACHE", str(tmp_path_factory.mktemp("vit-cache")))
        load_model(VIT, num_classes=2)
        yield


def _real_vit() -> nn.Module:
    torch.manual_seed(0)  # the new 2-class head
    return load_model(VIT, num_classes=2)[0].eval()


def _batches(n: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 2, (n,), generator=g))]


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _head_rows(head: int) -> torch.Tensor:
    """The qkv rows of one head: its slices of q, k and v."""
    rows = torch.zeros(3 * WIDTH, dtype=torch.bool)
    for part in range(3):
        rows[part * WIDTH + head * HEAD_DIM: part * WIDTH + (head + 1) * HEAD_DIM] = True
    return rows


def test_patch_size_error_from_the_cli_is_one_line(real_cache, cli, tmp_path):
    code, _, err = cli("finetune", "--model", VIT, "--data", "synthetic", "--image_size", "120",
                       "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "image_size 120" in err and "patch size 14" in err and "use 112 or 126" in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_timm_vit_of_fixed_input_size_takes_another_image_size():
    """timm ViTs outside the zoo are built for one size (224 px, strict patch embedding): --image_size 32 passed
    every check and crashed at the first forward with timm's AssertionError "Input height (32) doesn't match"."""
    from replast.loading import load_model_and_data

    model, splits = load_model_and_data("deit_tiny_patch16_224", "synthetic", weights="none", image_size=32,
                                        max_samples=30)
    x, _ = next(iter(splits.loader("train", 2, train=False)))
    with torch.no_grad():
        assert model.eval()(x).shape == (2, splits.num_classes)


def test_a_model_that_cannot_take_the_image_size_says_which_it_takes():
    from replast.models.generic import fit_input_size

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.img_size, self.patch_embed.strict_img_size = (224, 224), True

    with pytest.raises(ConfigError, match=r"takes 224x224 px images.*pass --image_size 224"):
        fit_input_size(Fixed(), 32)
    fit_input_size(Fixed(), 224)
    tv_vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                  hidden_dim=8, mlp_dim=8)
    with pytest.raises(ConfigError, match=r"VisionTransformer takes 32x32 px images.*pass --image_size 32"):
        fit_input_size(tv_vit, 64)


def test_a_torchvision_maxvit_at_another_image_size_says_which_it_takes():
    """torchvision's MaxViT lays its attention windows out for the size it was built for: --image_size 64 on
    maxvit_t (224 px) was left alone and crashed at the first forward with a reshape RuntimeError."""
    from replast.models.generic import fit_input_size

    maxvit = torchvision.models.MaxVit(input_size=(32, 32), stem_channels=4, partition_size=2, block_channels=[4, 4],
                                       block_layers=[1, 1], head_dim=2, stochastic_depth_prob=0.0)
    with pytest.raises(ConfigError, match=r"MaxVit takes 32x32 px images.*pass --image_size 32"):
        fit_input_size(maxvit, 64)
    for size in (32, 31):  # 31 px gives the same windows as 32 px: it runs
        fit_input_size(maxvit, size)
        with torch.no_grad():
            assert maxvit.eval()(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_targeted_unit_reset_touches_only_eligible_layers_and_stays_finite(real_cache):
    model = _real_vit()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = restore_plasticity(model, _batches(), strategy="targeted", level="unit", batches=1)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    kinds = {n.split(".")[-2] for n in changed}
    assert kinds == {"proj", "qkv", "fc1", "fc2"}  # patch_embed.proj and attn.proj share the name "proj"
    assert any(n.startswith("patch_embed.") for n in changed)
    frozen = [n for n in before if "norm" in n or n in ("pos_embed", "cls_token") or ".ls" in n]
    assert len(frozen) == 12 * 6 + 4 and not changed & set(frozen)
    assert not any(n.startswith("head.") for n in changed)
    assert {r.layer for r in report.rows if r.n_reset} == {n.rpartition(".")[0] for n in changed}
    assert torch.isfinite(_out(model, _batches(seed=1)[0][0])).all()


def test_attention_head_reset_with_zeroed_outgoing_preserves_the_function(real_cache):
    """zero_outgoing zeroes the reset heads' proj columns, so the output equals the original network
    with those columns removed, whatever the new q/k/v values; it is unchanged only when they were 0."""
    base = _real_vit()
    x = _batches(seed=1)[0][0]
    with torch.no_grad():  # head 2 of block 0 is cut off from the output: its Taylor utility is 0
        base.blocks[0].attn.proj.weight[:, 2 * HEAD_DIM: 3 * HEAD_DIM] = 0
    expected = _out(base, x)
    model = copy.deepcopy(base)
    report = restore_plasticity(model, _batches(), utility="taylor", selection="threshold", threshold=0.0,
                                level="unit", zero_outgoing=True, include=["blocks.0.attn.qkv"], batches=1)
    assert torch.equal(report.masks["blocks.0.attn.qkv.weight"].all(1), _head_rows(2))
    assert report.masks["blocks.0.attn.proj.weight"].all(0).nonzero().flatten().tolist() == list(range(128, 192))
    qkv_new, qkv_old = model.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight
    assert not torch.equal(qkv_new[_head_rows(2)], qkv_old[_head_rows(2)])
    assert torch.equal(qkv_new[~_head_rows(2)], qkv_old[~_head_rows(2)])
    torch.testing.assert_close(_out(model, x), expected, rtol=0, atol=1e-5)

    # A live head of the unmodified network (the lowest-utility one of 6): the output changes, and equals
    # the original's with that head's proj columns zeroed.
    original = _real_vit()
    live = copy.deepcopy(original)
    report = restore_plasticity(live, _batches(), utility="taylor", fraction=1 / 6, level="unit",
                                zero_outgoing=True, include=["blocks.0.attn.qkv"], batches=1)
    (head,) = {int(i) // HEAD_DIM for i in report.masks["blocks.0.attn.proj.weight"].all(0).nonzero()}
    ablated = copy.deepcopy(original)
    with torch.no_grad():
        ablated.blocks[0].attn.proj.weight[:, head * HEAD_DIM: (head + 1) * HEAD_DIM] = 0
    torch.testing.assert_close(_out(live, x), _out(ablated, x), rtol=0, atol=1e-5)
    assert not torch.allclose(_out(live, x), _out(original, x), rtol=0, atol=1e-3)


def test_diagnose_reports_gelu_dormancy_and_attention_entropy_known_answers(real_cache):
    model = _real_vit()
    blocks = model.blocks
    with torch.no_grad():
        blocks[0].mlp.fc1.weight.zero_()  # every GELU input of block 0 is -1e4: GELU = 0 exactly
        blocks[0].mlp.fc1.bias.fill_(-1e4)
        for part in (0, 1):  # head 3 of block 1: q = k = 0, so it attends uniformly (entropy log T)
            rows = slice(part * WIDTH + 3 * HEAD_DIM, part * WIDTH + 4 * HEAD_DIM)
            blocks[1].attn.qkv.weight[rows] = 0
            blocks[1].attn.qkv.bias[rows] = 0
    report = diagnose(model, _batches() + _batches(seed=1))
    df = report.to_frame().set_index("layer")
    gelu = [f"blocks.{i}.mlp.act" for i in range(12)]
    attn = [f"blocks.{i}.attn" for i in range(12)]
    assert (df.loc[gelu, "module"] == "GELU").all() and df.loc[gelu, "dormant_fraction"].between(0, 1).all()
    assert df.loc["blocks.0.mlp.act", "dormant_fraction"] == 1.0
    assert df.loc["blocks.0.mlp.act", "zero_unit_fraction"] == 1.0
    assert df.loc["blocks.5.mlp.act", "dormant_fraction"] < 1.0
    assert df.loc[attn, "attn_entropy"].between(0, 1).all() and set(report.attention) == set(attn)
    entropy = torch.as_tensor(report.attention["blocks.1.attn"])
    assert entropy.shape == (HEADS,) and entropy[3].item() == pytest.approx(1.0, abs=1e-6)
    assert (entropy[[0, 1, 2, 4, 5]] < 1 - 1e-3).all()


def test_finetune_cli_with_targeted_unit_reset_on_real_weights(real_cache, cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("finetune", "--model", VIT, "--data", "br35h", "--image_size", SIZE, "--max_samples", "60",
                       "--epochs", "1", "--batch_size", "8", "--reinit.strategy", "targeted",
                       "--reinit.level", "unit", "--reinit.batches", "1", "--out", out)
    assert code == 0, err
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    final = json.loads((out / "final.json").read_text())
    assert final["optimizer"]["name"] == "adamw" and math.isfinite(final["test_loss"]) and final["steps"] == 5
    rows = json.loads((out / "reinit_report.json").read_text())["rows"]
    reset = {r["param"] for r in rows if r["n_reset"] > 0}
    for kind in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        assert {f"blocks.{i}.{kind}.weight" for i in range(12)} <= reset, kind
    never = ("norm", "pos_embed", "cls_token", ".ls")
    assert not [r["param"] for r in rows if any(k in r["param"] for k in never)]
