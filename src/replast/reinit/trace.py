"""Record the data flow of one eager forward pass: modules and functional ops, linked by tensors.

Module hooks mark "opaque" modules (Conv/Linear, BatchNorm, leaf modules); a TorchFunctionMode
records every torch op run outside them, so residual adds, concatenations and reshapes done in
plain Python are visible. Used by `pairing` to find each layer's BatchNorm and outgoing layer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from replast.reinit.layers import WEIGHTED

Key = tuple[int, int]  # (id of the tensor object, its version counter): a value, not an object


@dataclass
class Node:
    """One module call or op; `inputs`/`outputs` are tensor keys, `shapes` the output shapes."""

    kind: str  # "module" | "op"
    name: str
    inputs: list[Key]
    outputs: list[Key] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class Trace:
    nodes: list[Node]
    consumers: dict[Key, list[int]]
    calls: dict[str, list[int]]  # module name -> indices of its nodes


def is_opaque(module: nn.Module) -> bool:
    return isinstance(module, WEIGHTED + (nn.modules.batchnorm._BatchNorm,)) or not any(module.children())


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.depth = 0  # > 0 while inside an opaque module
        self.alive: list[Any] = []  # keeps recorded tensors alive so ids are never reused

    def keys(self, obj: Any) -> tuple[list[Key], list[tuple[int, ...]]]:
        tensors = [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]
        self.alive.extend(tensors)
        return [(id(t), t._version) for t in tensors], [tuple(t.shape) for t in tensors]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth:
            return func(*args, **kwargs)
        inputs, _ = self.keys((args, kwargs))
        out = func(*args, **kwargs)
        outputs, shapes = self.keys(out)
        if outputs:  # ops returning no tensor (shape, _version, ...) do not consume values
            self.nodes.append(Node("op", getattr(func, "__name__", str(func)), inputs, outputs, shapes))
        return out


def _hooks(model: nn.Module, rec: _Recorder) -> list[Any]:
    handles = []
    for name, module in model.named_modules():
        if not is_opaque(module):
            continue

        def pre(mod, args, kwargs, name=name):
            if rec.depth == 0:
                with _Paused(rec):
                    inputs, _ = rec.keys((args, kwargs))
                rec.nodes.append(Node("module", name, inputs))
            rec.depth += 1

        def post(mod, args, kwargs, out):
            rec.depth -= 1
            if rec.depth == 0:
                node = rec.nodes[-1]
                with _Paused(rec):
                    node.outputs, node.shapes = rec.keys(out)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    return handles


class _Paused:
    """Hook bookkeeping must not be recorded as ops: count it as inside a module."""

    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec

    def __enter__(self) -> None:
        self.rec.depth += 1

    def __exit__(self, *exc: Any) -> None:
        self.rec.depth -= 1


def trace(model: nn.Module, x: torch.Tensor) -> Trace:
    """Run `model(x)` once (no grad, current mode) and return its data-flow graph."""
    rec = _Recorder()
    handles = _hooks(model, rec)
    try:
        with torch.no_grad(), rec:
            model(x)
    finally:
        for h in handles:
            h.remove()
    # Identity and eval-mode Dropout return their input object unchanged: drop them, or every later
    # reader of that tensor would look like a second consumer.
    nodes = [n for n in rec.nodes if not set(n.outputs) <= set(n.inputs)]
    consumers: dict[Key, list[int]] = defaultdict(list)
    calls: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for key in dict.fromkeys(node.inputs):
            consumers[key].append(i)
        if node.kind == "module":
            calls[node.name].append(i)
    return Trace(nodes, dict(consumers), dict(calls))
