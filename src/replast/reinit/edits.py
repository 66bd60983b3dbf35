"""Turn per-layer selections into per-parameter masks, then write the new values.

A selected unit resets its incoming rows and biases, the channels of its tied BatchNorms (running
stats and affine to their defaults) and tied depthwise filters, and with `zero_outgoing` zeroes the
columns that read it in the next layer. Unselected entries are never written (bit-identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from replast.reinit.init_rules import init_values
from replast.reinit.pairing import UnitMap, fused_qkv
from replast.reinit.schemes import SchemeInput
from replast.reinit.units import input_channel_mask, row_mask
from replast.transfer import host_to_device, host_values


@dataclass
class Edits:
    reset: dict[str, Tensor] = field(default_factory=dict)  # param -> entries given scheme values
    zero: dict[str, Tensor] = field(default_factory=dict)  # param -> entries zeroed (outgoing)
    bn: dict[str, Tensor] = field(default_factory=dict)  # BatchNorm module -> channels reset
    notes: dict[str, set[str]] = field(default_factory=dict)  # param -> layers whose units touched it

    def add(self, table: dict[str, Tensor], param: str, mask: Tensor, because: str = "") -> None:
        table[param] = table[param] | mask if param in table else mask
        if because and param.rpartition(".")[0] != because:
            self.notes.setdefault(param, set()).add(because)


def _unit_rows(edits: Edits, module: nn.Module, name: str, rows_selected: Tensor, because: str) -> None:
    edits.add(edits.reset, f"{name}.weight", row_mask(rows_selected, module.weight.shape), because)
    if getattr(module, "bias", None) is not None:
        edits.add(edits.reset, f"{name}.bias", rows_selected.clone(), because)


def _expand_units(layer: str, selected: Tensor, um: UnitMap, modules: dict[str, nn.Module],
                  zero_outgoing: bool, edits: Edits) -> None:
    _unit_rows(edits, modules[layer], layer, selected[um.rows.to(selected.device)], layer)
    for tie in um.ties:  # channel pairings only: channel c of a tie is unit c
        if isinstance(modules[tie], nn.modules.batchnorm._BatchNorm):
            edits.bn[tie] = edits.bn[tie] | selected if tie in edits.bn else selected.clone()
            for kind in ("weight", "bias"):
                edits.notes.setdefault(f"{tie}.{kind}", set()).add(layer)
        else:
            _unit_rows(edits, modules[tie], tie, selected, layer)
    if zero_outgoing and um.consumer:
        consumer = modules[um.consumer]
        cols = selected[um.consumer_cols.to(selected.device)]
        mask = input_channel_mask(cols, consumer.weight.shape, getattr(consumer, "groups", 1))
        edits.add(edits.zero, f"{um.consumer}.weight", mask, layer)


def expand(layers: Sequence[str], masks: Sequence[Tensor], levels: dict[str, str],
           unit_maps: dict[str, UnitMap], modules: dict[str, nn.Module], zero_outgoing: bool) -> Edits:
    edits = Edits()
    for layer, mask in zip(layers, masks, strict=True):
        if levels[layer] == "unit":
            _expand_units(layer, mask, unit_maps[layer], modules, zero_outgoing, edits)
        else:
            edits.add(edits.reset, f"{layer}.weight", mask)
    return edits


@torch.no_grad()
def _reset_batchnorm(bn: nn.modules.batchnorm._BatchNorm, channels: Tensor) -> None:
    channels = channels.to(bn.running_mean.device if bn.running_mean is not None else channels.device)
    for tensor, value in ((bn.weight, 1.0), (bn.bias, 0.0), (bn.running_mean, 0.0), (bn.running_var, 1.0)):
        if tensor is not None:
            tensor.masked_fill_(channels, value)


def _row_blocks(modules: dict[str, nn.Module], name: str) -> int:
    """Rows that form separate matrices: a conv's groups; q, k and v of a fused attention qkv."""
    parent, _, leaf = name.rpartition(".")
    if leaf == "qkv" and fused_qkv(modules.get(parent)):
        return 3
    return getattr(modules[name], "groups", 1)


@torch.no_grad()
def apply_edits(model: nn.Module, edits: Edits, scheme, shrink: float, perturb: float,
                families: dict[str, str], generator: torch.Generator) -> dict[str, Tensor]:
    """Write new values; returns {param name: bool mask of every entry written}."""
    modules = dict(model.named_modules())
    written: dict[str, Tensor] = {}
    any_reset = dict(zip(edits.reset, host_values([r.any() for r in edits.reset.values()]), strict=True))
    for name, param in model.named_parameters():
        reset, zero = edits.reset.get(name), edits.zero.get(name)
        if reset is None and zero is None:
            continue
        owner, _, kind = name.rpartition(".")
        value = param.detach()
        if reset is not None and any_reset[name]:
            module = modules[owner]
            fresh = host_to_device(init_values(module, kind, families.get(owner, ""), generator), param.device)
            spec = SchemeInput(shrink, perturb, _row_blocks(modules, owner))
            new = scheme(value, fresh, spec).to(param.dtype)
            value = torch.where(reset, new, value)
        if zero is not None:
            value = value.masked_fill(zero, 0)
        param.copy_(value)
        written[name] = reset | zero if reset is not None and zero is not None else (
            reset if reset is not None else zero)
    for bn_name, channels in edits.bn.items():
        _reset_batchnorm(modules[bn_name], channels)
        for kind in ("weight", "bias"):
            if getattr(modules[bn_name], kind, None) is not None:
                written[f"{bn_name}.{kind}"] = channels.clone()
    return written
