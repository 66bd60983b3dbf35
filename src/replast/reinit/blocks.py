"""Blocks for the top-layers / bottom-layers selections.

A block is a child of the model's main sequential container (timm `blocks.N`, torchvision
`features.N`, a plain nn.Sequential's children) when that container holds at least half of the
candidate layers; otherwise each top-level child holding layers is a block (e.g. ResNet's layer1..4).
Layers outside the container join the nearest end: the stem goes to the first block, `conv_head`
to the last. timm EfficientNet's `blocks.N` are its stages.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from replast.reinit.layers import CONTAINERS


def _root(layers: Sequence[str]) -> str:
    """The innermost module holding every layer: a wrapper's wrapped model ('' when none)."""
    common: list[str] = []
    for parts in zip(*(n.split(".")[:-1] for n in layers), strict=False):  # as deep as the shortest name
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _container(model: nn.Module, layers: Sequence[str]) -> str | None:
    """Prefix of the main container ('' for a sequential root), or None."""
    options = [""] if isinstance(model, CONTAINERS) else []
    options += [n for n, m in model.named_children() if isinstance(m, CONTAINERS)]
    staged = [p for p in options if p and sum(n.startswith(p + ".") for n in layers) >= 2]
    if not isinstance(model, CONTAINERS) and len(staged) > 1:  # sibling stages (ResNet's layer1..4)
        return None
    best, count = None, 0
    for prefix in options:
        inside = sum(1 for n in layers if not prefix or n.startswith(prefix + "."))
        if inside > count:
            best, count = prefix, inside
    return best if best is not None and 2 * count >= len(layers) else None


def block_ids(model: nn.Module, layers: Sequence[str]) -> tuple[list[int], int]:
    """Block index of each layer (in order of `layers`) and the number of blocks."""
    root = _root(layers)
    if root:  # a wrapper (LightningModule's `self.model`): the blocks of the model it wraps
        return block_ids(model.get_submodule(root), [n[len(root) + 1:] for n in layers])
    prefix = _container(model, layers)
    depth = 0 if prefix is None else (1 if prefix == "" else 2)
    keys: list[str | None] = []
    for name in layers:
        parts = name.split(".")
        inside = prefix is None or prefix == "" or name.startswith(prefix + ".")
        keys.append(".".join(parts[: max(depth, 1)]) if inside else None)
    order = list(dict.fromkeys(k for k in keys if k is not None))
    ids, seen_inside = [], False
    for key in keys:
        if key is None:  # outside the container: stem before it, neck after it
            ids.append(len(order) - 1 if seen_inside else 0)
        else:
            seen_inside = True
            ids.append(order.index(key))
    return ids, max(len(order), 1)
