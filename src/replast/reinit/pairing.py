"""Pair each layer's units with what they feed, from a forward trace (no per-architecture table).

A unit (output channel / neuron) is cleanly paired when its values flow, channel by channel, through
BatchNorms, element-wise activations and depthwise convs (tied: propagated) into exactly one
Conv/Linear. Residual adds, fan-out, concatenation or reshapes break the pairing; such layers fall
back to weight level. Fused-qkv attention (modules with `qkv`, `proj`, `num_heads`) pairs heads, except
where the heads mix: talking-heads attention (CaiT's `proj_l`/`proj_w`) and timm's `head_first` layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from replast.reinit.layers import is_protected, is_weighted
from replast.reinit.trace import Trace

POINTWISE_MODULES = frozenset(
    "ReLU ReLU6 LeakyReLU PReLU RReLU ELU CELU SELU GELU SiLU Mish Hardswish Hardsigmoid Hardtanh Sigmoid "
    "Tanh Softplus Softsign Tanhshrink Threshold LogSigmoid Hardshrink Softshrink Identity Dropout "
    "Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout DropPath Swish HardSwish HardSigmoid "
    "HardMish GELUTanh QuickGELU".split())
POINTWISE_OPS = frozenset(
    "relu relu_ relu6 hardtanh hardtanh_ gelu silu silu_ hardswish hardswish_ hardsigmoid sigmoid "
    "sigmoid_ tanh tanh_ dropout leaky_relu leaky_relu_ elu elu_ selu celu mish softplus clamp clamp_ "
    "clip contiguous clone mul mul_ __mul__ __rmul__ div div_ __truediv__ add add_ __add__ __radd__ "
    "__iadd__ sub sub_ __sub__ __isub__ __imul__".split())
RESIDUAL_OPS = frozenset("add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __isub__".split())


@dataclass(frozen=True)
class UnitMap:
    """How a layer's output rows group into units and where those units go.

    `rows[i]` is the unit of output row i. When paired: `ties` are channel-tied BatchNorm/depthwise
    modules, `site` the next weighted layer (its input carries the unit's activation), `consumer` the
    layer whose input columns are the unit's outgoing weights; `*_cols[c]` is the unit of input
    channel c of that layer. Unpaired layers measure activations at their own output.
    """

    layer: str
    n_units: int
    rows: Tensor
    reason: str = ""
    ties: tuple[str, ...] = ()
    site: str | None = None
    site_cols: Tensor | None = None
    consumer: str | None = None
    consumer_cols: Tensor | None = None

    @property
    def paired(self) -> bool:
        return not self.reason


def unpaired(layer: str, module: nn.Module, reason: str) -> UnitMap:
    rows = torch.arange(module.weight.shape[0])
    return UnitMap(layer, len(rows), rows, reason)


def module_kind(module: nn.Module) -> str:
    """bn | depthwise | weighted | pointwise | other."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if is_weighted(module):
        groups = getattr(module, "groups", 1)
        channelwise = groups > 1 and groups == module.in_channels == module.out_channels
        return "depthwise" if channelwise else "weighted"
    cls = type(module)
    known = cls.__module__.startswith(("torch.nn", "timm.layers"))
    return "pointwise" if known and cls.__name__ in POINTWISE_MODULES else "other"


def _width(module: nn.Module, side: str) -> int:
    """Channels of a weighted layer's input ('in') or output ('out')."""
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    return module.in_channels if side == "in" else module.out_channels


def _walk(trace: Trace, modules: dict[str, nn.Module], layer: str, exclude: Sequence[str]) -> tuple:
    """Follow a layer's output to its consumer: (ties, site, consumer, reason)."""
    calls = trace.calls.get(layer, [])
    if len(calls) != 1:
        return (), None, None, f"called {len(calls)} times in a forward pass"
    ties: list[str] = []
    site = None
    node = trace.nodes[calls[0]]
    for _ in range(len(trace.nodes)):
        if len(node.outputs) != 1:
            return (), None, None, f"{node.name} returns {len(node.outputs)} tensors"
        users = trace.consumers.get(node.outputs[0], [])
        if len(users) != 1:
            what = "is a model output or unused" if not users else "feeds several ops (residual or branch)"
            return (), None, None, f"output of {node.name} {what}"
        node = trace.nodes[users[0]]
        n_inputs = len(set(node.inputs))
        if node.kind == "op":
            if node.name in RESIDUAL_OPS and n_inputs > 1:
                return (), None, None, "residual add"
            if node.name not in POINTWISE_OPS or n_inputs > 1:
                return (), None, None, f"passes through {node.name}"
            continue
        kind = module_kind(modules[node.name])
        if kind == "pointwise":
            continue
        if kind in ("bn", "depthwise"):
            if is_protected(node.name, exclude):
                return (), None, None, f"tied {node.name} is excluded"
            if len(trace.calls[node.name]) != 1:
                return (), None, None, f"tied {node.name} is called several times"
            ties.append(node.name)
            site = site or (node.name if kind == "depthwise" else None)
            continue
        if kind == "weighted" and n_inputs == 1 and len(trace.calls[node.name]) == 1:
            return tuple(ties), site or node.name, node.name, ""
        return (), None, None, f"passes through {type(modules[node.name]).__name__} {node.name}"
    return (), None, None, "no consumer found"


def _channel_pairing(layer: str, trace: Trace, modules: dict[str, nn.Module], exclude: Sequence[str],
                     zero_outgoing: bool) -> UnitMap:
    module = modules[layer]
    ties, site, consumer, reason = _walk(trace, modules, layer, exclude)
    width = _width(module, "out")
    if not reason and isinstance(module, nn.Linear) != isinstance(modules[consumer], nn.Linear):
        reason = f"layout changes between {layer} and {consumer}"
    if not reason and _width(modules[consumer], "in") != width:
        reason = f"{consumer} does not read {layer}'s channels one to one"
    if not reason and zero_outgoing and is_protected(consumer, exclude):
        reason = f"outgoing layer {consumer} is excluded"
    if reason:
        return unpaired(layer, module, reason)
    ids = torch.arange(width)
    return UnitMap(layer, width, ids, "", ties, site, ids, consumer, ids)


def is_attention(module: nn.Module | None) -> bool:
    """timm-style attention: Linear `qkv` and `proj` and an int `num_heads`."""
    qkv, proj, heads = (getattr(module, a, None) for a in ("qkv", "proj", "num_heads"))
    return isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int)


def fused_qkv(module: nn.Module | None) -> bool:
    """An attention whose `qkv` stacks q, k and v ([3·d, in]) over a `proj` that reads d channels.

    timm's `head_first` attention (MaxViT/CoAtNet `*_rw`) interleaves them per head ([q_h; k_h; v_h] for each h),
    so neither its heads nor its q, k and v are the row blocks this layout gives: it is not one.
    """
    return is_attention(module) and module.qkv.out_features == 3 * module.proj.in_features \
        and not getattr(module, "head_first", False)


def _attention_pairings(model: nn.Module, trace: Trace, exclude: Sequence[str],
                        zero_outgoing: bool) -> dict[str, UnitMap]:
    """Heads of fused-qkv attention: rows h·d..(h+1)·d of each of q, k, v; proj columns h·d..(h+1)·d."""
    out = {}
    for name, attn in model.named_modules():
        if not is_attention(attn):
            continue
        qkv, proj, heads = attn.qkv, attn.proj, attn.num_heads
        width = proj.in_features
        prefix = f"{name}." if name else ""
        reason = ""
        if not fused_qkv(attn) or width % heads:
            reason = "qkv is not a fused [q; k; v] projection"
        elif not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            reason = "attention output is normalized before proj"
        elif any(isinstance(getattr(attn, a, None), nn.Module) for a in ("proj_l", "proj_w")):
            reason = "talking-heads attention mixes the heads' attention maps"
        elif any(len(trace.calls.get(prefix + p, [])) != 1 for p in ("qkv", "proj")):
            reason = "qkv/proj are not called exactly once"
        elif zero_outgoing and is_protected(prefix + "proj", exclude):
            reason = f"outgoing layer {prefix}proj is excluded"
        if reason:
            out[prefix + "qkv"] = unpaired(prefix + "qkv", qkv, reason)
            continue
        head_of_col = torch.arange(width) // (width // heads)
        rows = head_of_col.repeat(3)
        out[prefix + "qkv"] = UnitMap(prefix + "qkv", heads, rows, "", (), prefix + "proj", head_of_col,
                                      prefix + "proj", head_of_col)
    return out


def pair_layers(model: nn.Module, trace: Trace | None, layers: Sequence[str], exclude: Sequence[str],
                zero_outgoing: bool, trace_error: str = "") -> dict[str, UnitMap]:
    """UnitMap of every layer in `layers`; unpaired ones carry the reason."""
    modules = dict(model.named_modules())
    if trace is None:
        return {n: unpaired(n, modules[n], f"forward trace failed: {trace_error}") for n in layers}
    attention = _attention_pairings(model, trace, exclude, zero_outgoing)
    return {n: attention.get(n) or _channel_pairing(n, trace, modules, exclude, zero_outgoing) for n in layers}
