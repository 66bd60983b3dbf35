"""Read weight files safely and put them into a model, failing with one-line ModelErrors.

`.pth`/`.pt` files load with `torch.load(weights_only=True)` (never runs code), `.safetensors` with safetensors.
A file of another architecture, a missing, unreadable or truncated file all end in a ModelError that says
what is wrong; a file without the classifier head loads the backbone and leaves the head fresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from replast.errors import ModelError, quote
from replast.models.assets import Asset
from replast.models.heads import classifier_name, replace_head

StateDict = dict[str, torch.Tensor]

# Checkpoints often wrap the state dict (replast's own keep it under "model"); wrapper prefixes come from
# DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | Path) -> StateDict:
    """The tensors of a `.pth`/`.pt`/`.safetensors` weight file (unwrapped from a checkpoint dict)."""
    path = Path(path).expanduser()
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:
        raise ModelError(f"cannot read weight file {str(path)!r}: {e.strerror or e}") from e
    if not exists:
        raise ModelError(f"weight file {str(path)!r} not found; pass weights=pretrained, none or an existing "
                         ".pth/.safetensors file")
    if not is_file:
        raise ModelError(f"weights {str(path)!r} is not a file; pass a .pth or .safetensors file")
    try:
        raw = _read(path)
    except OSError as e:
        raise ModelError(f"cannot read weight file {path}: {e.strerror or e}") from e
    except Exception as e:  # torch, pickle, zipfile and safetensors each raise their own types on bad bytes
        raise ModelError(f"{path} is not a readable weight file (truncated, corrupt or unsafe: {quote(e)}); "
                         "pass a .pth saved with torch.save(state_dict) or a .safetensors file") from e
    return _unwrap(raw, path)


def saved_classes(weights: str | Path) -> list[str] | None:
    """The class names a `replast reinit` file (format replast-state-dict) lists in its metadata, else None
    (pretrained/none, other formats, files without the entry or with one that is not a list of names)."""
    path = Path(weights).expanduser()
    if path.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != "replast-state-dict":  # another tool's "classes" may mean anything
            return None
        listed = json.loads(metadata["classes"])
    except Exception:  # unreadable files were refused when loaded; a missing or malformed entry names nothing
        return None
    return [str(c) for c in listed] if isinstance(listed, list) else None


def _read(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(raw: object, path: Path) -> StateDict:
    if isinstance(raw, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors); "
                         "save weights with torch.save(model.state_dict(), path)")
    state: StateDict = {}
    for name, tensor in raw.items():
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = tensor
    return state


def map_keys_in_order(source: StateDict, target: Mapping[str, torch.Tensor], what: str,
                      head: str | None = None) -> StateDict:
    """Rename `source` entries to `target`'s names by position; counts, shapes and leaf names must agree.

    For layouts that differ only in naming (lukemelas EfficientNet → timm): both list the same tensors in the
    same order. The leaf check (weight/bias/running_mean…) catches a shift that equal shapes would hide.
    """
    src, dst = list(source), list(target)
    if len(src) != len(dst):
        raise ModelError(f"{what}: {len(src)} tensors, the model has {len(dst)}; "
                         "these weights belong to another architecture")
    for i, (s, d) in enumerate(zip(src, dst, strict=True)):
        shape_s, shape_d = tuple(source[s].shape), tuple(target[d].shape)
        if head and d.startswith(head + ".") and shape_s[1:] == shape_d[1:]:
            shape_s = shape_d  # a fine-tuned head has its own class count; apply_state_dict resizes the model's
        if shape_s != shape_d or _leaf(s) != _leaf(d):
            raise ModelError(f"{what}: tensor {i} {s!r} {tuple(source[s].shape)} does not match the model's "
                             f"{d!r} {tuple(target[d].shape)}; these weights belong to another architecture")
    return {d: source[s] for s, d in zip(src, dst, strict=True)}


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def apply_state_dict(model: nn.Module, state: StateDict, what: str) -> bool:
    """Load `state` into `model` (head resized to the file's); returns whether the head was loaded.

    Every tensor of the model must be in `state` with its shape, except the whole head, which may be absent,
    and BatchNorm step counters, which older files lack (they only matter when momentum is None).
    """
    head = classifier_name(model)
    _fit_head(model, state, head)
    target = model.state_dict()
    head_keys = {k for k in target if k.startswith(head + ".")}
    absent = [k for k in target if k not in state]
    head_absent = {k for k in absent if k in head_keys}
    missing = [k for k in absent if k not in head_keys and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    if unexpected or missing or (head_absent and head_absent != head_keys):
        missing += sorted(head_absent) if head_absent != head_keys else []
        raise ModelError(f"{what} holds weights of another architecture than {type(model).__name__}: "
                         f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:2]}); pass weights saved from this model")
    wrong = [k for k in state if tuple(state[k].shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(f"{what} holds weights of another architecture: {len(wrong)} tensors have other shapes, "
                         f"e.g. {k!r} {tuple(state[k].shape)} vs {tuple(target[k].shape)} in the model")
    model.load_state_dict(state, strict=not absent)
    return not head_absent


def _fit_head(model: nn.Module, state: StateDict, head: str) -> None:
    # A fine-tuned checkpoint carries its own number of classes: resize the head to load it.
    weight = state.get(head + ".weight")
    current = model.get_submodule(head)
    if weight is None or weight.dim() < 2:
        return
    if isinstance(current, nn.Identity):  # a timm backbone without a head (num_classes=0): give it one
        replace_head(model, int(weight.shape[0]))
        return
    if not hasattr(current, "weight"):
        return
    if weight.shape[0] != current.weight.shape[0] and weight.shape[1:] == current.weight.shape[1:]:
        replace_head(model, int(weight.shape[0]))


KeyMap = Callable[..., StateDict]


def load_weights(model: nn.Module, weights: str, asset: Asset | None = None, keymap: KeyMap | None = None) -> bool:
    """Apply weights="pretrained" (the verified `asset`), "none" or a file path; returns whether the head loaded.

    `keymap` renames a file whose tensor names are not the model's (another layout of the same network).
    """
    if weights == "none":
        return False
    if weights == "pretrained":
        if asset is None:
            raise ModelError(f"no offline weights ship for {type(model).__name__}")
        path = asset.verified_path()
    else:
        path = Path(weights).expanduser()
    state = read_state_dict(path)
    target = model.state_dict()
    if keymap is not None and not set(state) <= set(target):
        state = keymap(state, target, str(path), head=classifier_name(model))
    return apply_state_dict(model, state, str(path))
