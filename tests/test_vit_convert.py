"""The DINOv2 ONNX → timm ViT conversion: equal to onnxruntime's backbone output, cached, and a damaged
cache entry is detected and rebuilt."""

from __future__ import annotations

import sys

import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open

from replast.errors import ModelError
from replast.models import convert, load_model
from replast.models.assets import DINOV2_ONNX
from replast.models.cache import read_cached, tensors_sha256
from replast.models.zoo import build_dinov2_vit

GRID = 16  # 224 px / 14 px patches
BACKBONE_OUTPUT_NODE = "/backbone/layernorm/Add_1"  # the last op of the HF Dinov2 backbone in the graph


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One conversion shared by the tests that only need converted weights; yields the cache file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPLAST_CACHE", str(tmp_path_factory.mktemp("shared-cache")))
        convert.dinov2_backbone_state(GRID)
        yield convert.cache_path(GRID)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of the test's own, for the tests of caching itself."""
    monkeypatch.setenv("REPLAST_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def conversions(monkeypatch):
    """Counts calls of the ONNX conversion (the expensive step the cache exists to skip)."""
    calls = []
    real = convert.convert_dinov2_onnx

    def counting(path, grid):
        calls.append(grid)
        return real(path, grid)

    monkeypatch.setattr(convert, "convert_dinov2_onnx", counting)
    return calls


def _onnx_backbone(x: torch.Tensor) -> torch.Tensor:
    """Run the ONNX model with the backbone's final LayerNorm output exposed as a graph output."""
    model = onnx.load(str(DINOV2_ONNX.verified_path()))
    (node,) = [n for n in model.graph.node if n.name == BACKBONE_OUTPUT_NODE]
    model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (out,) = session.run([node.output[0]], {"input_image": x.numpy()})
    return torch.from_numpy(out)


def test_forward_features_equal_onnxruntime(shared_cache):
    model, prep = load_model("vit_small_patch14_dinov2", num_classes=3)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval().forward_features(x)
        logits = model(x)
    reference = _onnx_backbone(x)
    assert ours.shape == reference.shape == (1, 1 + GRID * GRID, 384)
    assert (ours - reference).abs().max().item() < 1e-4
    assert logits.shape == (1, 3) and prep.patch_size == 14 and model.global_pool == "token"


def test_converted_state_has_the_timm_layout(shared_cache):
    state = convert.dinov2_backbone_state(GRID)
    model = build_dinov2_vit(init=False)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert {k: v.shape for k, v in state.items()} == expected
    assert len([k for k in state if k.endswith("attn.qkv.weight")]) == 12


def test_cache_is_reused(cache, conversions):
    first, _ = load_model("vit_small_patch14_dinov2", 3)
    files = list(cache.iterdir())
    assert conversions == [GRID] and files == [convert.cache_path(GRID)]
    assert convert.cache_path(GRID).name.startswith("vit_small_patch14_dinov2-224px-")
    second, _ = load_model("vit_small_patch14_dinov2", 5)
    assert conversions == [GRID], "the second load converted again instead of reading the cache"
    for key, value in second.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(value, first.state_dict()[key]), key


def test_cache_metadata_carries_the_tensor_checksum(shared_cache):
    state = convert.dinov2_backbone_state(GRID)
    with safe_open(str(convert.cache_path(GRID)), framework="pt") as f:
        meta = f.metadata()
    assert meta["tensors_sha256"] == tensors_sha256(state)
    assert meta["source_sha256"] == DINOV2_ONNX.sha256 and meta["converter"] == convert.CONVERTER_VERSION


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated"])
def test_damaged_cache_is_detected_and_rebuilt(shared_cache, cache, conversions, damage):
    raw = bytearray(shared_cache.read_bytes())
    if damage == "flipped bytes":
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # inside the tensor data, header intact
    else:
        raw = raw[: len(raw) // 3]
    path = convert.cache_path(GRID)
    assert path.parent == cache
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="fails its checksum" if damage == "flipped bytes" else "unreadable"):
        rebuilt = convert.dinov2_backbone_state(GRID)
    assert conversions == [GRID], "a damaged entry must be rebuilt by converting again"
    assert tensors_sha256(rebuilt) == tensors_sha256(read_cached(shared_cache))
    assert read_cached(path) is not None, "the rebuilt entry should pass its checksum"


def test_pos_embed_resampling_known_answers():
    cls = torch.randn(1, 1, 4)
    grid = torch.randn(1, 9, 4)
    same = convert.resample_pos_embed(cls, grid, 3)
    assert torch.allclose(same, torch.cat([cls, grid], 1), atol=1e-6)  # same size: identity
    constant = convert.resample_pos_embed(cls, torch.full((1, 37 * 37, 4), 0.25), 16)
    assert constant.shape == (1, 257, 4) and torch.allclose(constant[:, 1:], torch.tensor(0.25), atol=1e-6)
    with pytest.raises(ModelError, match="square grid"):
        convert.resample_pos_embed(cls, torch.randn(1, 10, 4), 3)


def test_vit_runs_at_other_multiples_of_the_patch(shared_cache):
    model, _ = load_model("vit_small_patch14_dinov2", 2)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 112, 112)).shape == (1, 2)


def test_missing_onnx_package_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(ModelError, match="pip install 'onnx"):
        convert.convert_dinov2_onnx(DINOV2_ONNX.locate(), GRID)


def test_not_a_dinov2_onnx_file(tmp_path):
    other = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(other, tmp_path / "other.onnx")
    with pytest.raises(ModelError, match="not the DINOv2"):
        convert.convert_dinov2_onnx(tmp_path / "other.onnx", GRID)
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\x00garbage" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX"):
        convert.convert_dinov2_onnx(tmp_path / "garbage.onnx", GRID)


def test_unwritable_cache_warns_and_still_converts(tmp_path, monkeypatch, conversions):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("REPLAST_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="cannot write model cache"):
        state = convert.dinov2_backbone_state(GRID)
    assert conversions == [GRID] and state["pos_embed"].shape == (1, 1 + GRID * GRID, 384)
