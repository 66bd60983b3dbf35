"""Run a model over a few batches with temporary hooks and keep streaming per-layer sums.

    stats = capture(model, loader, num_batches=8)   # every hook is removed before this returns

Sums stay on the model's device; `replast.diagnostics` turns them into metrics, `replast.diagnosis` into a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from replast.backends import without_autotuning
from replast.errors import ConfigError, ModelError, quote
from replast.models.heads import classifier_name


def _timm_activations() -> tuple[type[nn.Module], ...]:
    try:
        from timm.layers import activations as act
        from timm.layers import activations_me as act_me
    except ImportError:  # timm is optional for plain torch models
        return ()
    names = ("GELU", "GELUTanh", "QuickGELU", "HardSwish", "Swish", "Mish", "HardMish", "PReLU")
    found = [getattr(act, n) for n in names if hasattr(act, n)]
    found += [
        getattr(act_me, n) for n in ("SwishMe", "HardSwishMe", "MishMe", "HardMishMe") if hasattr(act_me, n)
    ]
    return tuple(found)


DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
    nn.PReLU, nn.RReLU,
) + _timm_activations()  # fmt: skip
"""Element-wise non-linearities whose outputs are probed (gates such as Sigmoid/Tanh are not)."""
UNIT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
"""Layers that create units: an activation is fed by the closest preceding one in execution order."""
MAX_FEATURE_ROWS = 2048
RELU6_CAP = 6.0

Labels = Literal["given", "argmax"]


@dataclass
class ActivationStats:
    """Streaming sums for one activation module. Units: dim 1 of [B, C, ...], last dim of [B, T, D]."""

    kind: str
    sum_abs: Tensor
    """[U] sum of |a| per unit (float64); a unit's batch with a non-finite value is left out."""
    never_positive: Tensor
    """[U] bool: the unit was <= 0 on every input so far (a reduction, ~10x cheaper than counting a > 0)."""
    nonfinite: Tensor
    """number of NaN/Inf values."""
    zeros: Tensor
    """sampled values exactly 0 (ReLU/ReLU6 only), see `sample_grid`."""
    capped: Tensor
    """sampled values at the ReLU6 cap (ReLU6 only)."""
    sampled: int = 0
    """values counted for `zeros`/`capped`."""
    rows: int = 0
    """values seen per unit (batch x positions)."""

    @classmethod
    def empty(cls, kind: str, units: int, device: torch.device) -> ActivationStats:
        count = torch.zeros((), dtype=torch.long, device=device)
        never = torch.ones(units, dtype=torch.bool, device=device)
        sums = torch.zeros(units, dtype=torch.float64, device=device)
        return cls(kind, sums, never, count, count.clone(), count.clone())

    @property
    def units(self) -> int:
        return self.sum_abs.numel()


@dataclass
class LayerStats:
    """What `capture` saw. `weights` are the live parameters (not copies); `grads` the mean over batches."""

    activations: dict[str, ActivationStats]
    weights: dict[str, Tensor]
    grads: dict[str, Tensor]
    order: list[str]
    """param layers and activations in the order their forward first ran."""
    sources: dict[str, str]
    """activation name -> closest preceding Conv/Linear in execution order."""
    features: Tensor | None
    """penultimate features (input of the head), at most max_feature_rows rows."""
    head: str | None
    attention: dict[str, Tensor]
    """attention module -> mean attention entropy per head, divided by log(tokens) so it lies in [0, 1]."""
    num_batches: int
    num_samples: int
    grad_batches: int = 0
    """batches that were back-propagated (the first ones)."""
    notes: list[str] = field(default_factory=list)


def find_head(model: nn.Module) -> str | None:
    """Name of the classification head (`replast.models.classifier_name`), None when the model has none."""
    try:
        return classifier_name(model)
    except ModelError:
        return None


def expected_input(model: nn.Module) -> str:
    """Human description of the input a model takes, for error messages."""
    patch = getattr(model, "patch_embed", None)
    size = getattr(patch, "img_size", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if size is None and isinstance(cfg, dict) and cfg.get("input_size"):
        size = tuple(cfg["input_size"])[1:]
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hw = ", ".join(str(s) for s in size) if size else "H, W"
            return f"float32 [B, {m.in_channels}, {hw}]"
        if isinstance(m, nn.Linear):
            return f"float32 [B, {m.in_features}]"
    return "the input its forward() takes"


def param_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own a `weight` parameter directly (conv, linear, norm, embedding...)."""
    return {n: m for n, m in model.named_modules() if isinstance(m._parameters.get("weight"), nn.Parameter)}


def capture(
    model: nn.Module,
    batches: Iterable,
    *,
    num_batches: int = 8,
    backward: bool = True,
    grad_batches: int | None = None,
    activation_types: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
    penultimate: str | None = None,
    labels: Labels = "given",
    max_feature_rows: int = MAX_FEATURE_ROWS,
    attention: bool = True,
) -> LayerStats:
    """Run up to `num_batches` (x, y) batches through `model` in eval mode and return the sums.

    With `backward`, cross-entropy on the labels (`labels="argmax"`: the model's own prediction, for data
    without labels) is back-propagated on the first `grad_batches` batches (default: half of num_batches,
    rounded up: a backward costs two forwards, and this keeps 8 batches under 10% of a Br35H epoch) and the
    mean weight gradient per layer kept. `penultimate` names the head whose input is sampled (default
    `find_head`); `attention` adds per-head attention entropy of timm ViTs (one extra q k^T per block).
    Mode, requires_grad and .grad are restored and every hook removed, also on exceptions.
    """
    if num_batches < 1:
        raise ConfigError(f"num_batches={num_batches}: need at least 1 batch")
    grad_batches = (
        0 if not backward else (math.ceil(num_batches / 2) if grad_batches is None else grad_batches)
    )
    if not 0 <= grad_batches <= num_batches:
        raise ConfigError(f"grad_batches={grad_batches}: need 0 <= grad_batches <= num_batches={num_batches}")
    if labels not in ("given", "argmax"):
        raise ConfigError(f"labels={labels!r}: valid: 'given', 'argmax'")
    head = penultimate if penultimate is not None else find_head(model)
    rec = _Recorder(model, activation_types, head, max_feature_rows, attention)
    with _probe_mode(model, grad=grad_batches > 0):
        try:
            rec.attach()
            counts = _run(model, batches, num_batches, grad_batches, labels)
            grads = _mean_grads(model, counts[2]) if counts[2] else {}
        finally:
            rec.detach()
    return rec.result(grads, *counts)


@contextmanager
def _probe_mode(model: nn.Module, grad: bool) -> Iterator[None]:
    """Eval mode, requires_grad=grad and .grad cleared inside; the caller's state is restored on exit."""
    training = {m: m.training for m in model.modules()}
    saved = {p: (p.requires_grad, p.grad) for p in model.parameters()}
    try:
        model.eval()
        for p in saved:
            p.requires_grad_(grad)
            p.grad = None
        with without_autotuning():
            yield
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, (requires, g) in saved.items():
            p.requires_grad_(requires)
            p.grad = g


def _mean_grads(model: nn.Module, n: int) -> dict[str, Tensor]:
    out = {}
    for name, m in param_layers(model).items():
        g = m.weight.grad
        out[name] = g.detach() / max(n, 1) if g is not None else torch.zeros_like(m.weight.detach())
    return out


def _run(
    model: nn.Module, batches: Iterable, num_batches: int, grad_batches: int, labels: Labels
) -> tuple[int, int, int]:
    """(batches, samples, back-propagated batches)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = samples = 0
    for batch in batches:
        if n >= num_batches:
            break
        x, y = unpack_batch(batch, device, model)
        grad = n < grad_batches
        with torch.set_grad_enabled(grad):
            out = forward_checked(model, x)
            if grad:
                _loss(out, y, labels).backward()
        n += 1
        samples += x.shape[0]
    if n == 0:
        raise ConfigError("no batches to probe: pass an iterable of (x, y) batches with at least one batch")
    return n, samples, min(n, grad_batches)


def unpack_batch(batch: object, device: torch.device, model: nn.Module) -> tuple[Tensor, Tensor]:
    """(x, y) of one batch on `device`; anything but float x with int labels [B] is a ConfigError."""
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)):
        raise ConfigError(f"a batch is a {type(batch).__name__}: expected (x, y) tensors")
    x, y = batch[0], batch[1]
    if not x.is_floating_point():
        raise ConfigError(f"x has dtype {x.dtype}: the model expects normalized {expected_input(model)}")
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(
            f"y has shape {tuple(y.shape)} {y.dtype}: expected int64 class indices [B={x.shape[0]}]"
        )
    return x.to(device, non_blocking=True), y.to(device, torch.long, non_blocking=True)


def forward_checked(model: nn.Module, x: Tensor) -> Tensor:
    """model(x) (first element of a tuple output); x that does not fit the model is a ConfigError."""
    try:
        out = model(x)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError) as e:  # timm and torchvision check input sizes with asserts
        raise ConfigError(
            f"batch x of shape {list(x.shape)} ({x.dtype}) does not fit the model, which expects "
            f"{expected_input(model)}: {quote(e, 200)}"
        ) from e
    return out[0] if isinstance(out, (tuple, list)) else out


def _loss(logits: Tensor, y: Tensor, labels: Labels) -> Tensor:
    if logits.ndim != 2:
        raise ConfigError(
            f"model output has shape {list(logits.shape)}: gradient statistics need [B, classes] logits; "
            "use backward=False"
        )
    if labels == "argmax":
        y = logits.detach().argmax(1)
    else:
        check_labels(y, logits.shape[1])
    return F.cross_entropy(logits.float(), y)


def check_labels(y: Tensor, num_classes: int) -> None:
    """Labels outside 0..num_classes-1 are a ConfigError (cross-entropy would fail with an index error)."""
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"labels span {int(y.min())}..{int(y.max())} but the model has {num_classes} classes"
        )


class _Recorder:
    """Owns the hooks and the on-device accumulators of one capture."""

    def __init__(
        self, model: nn.Module, types: tuple, head: str | None, max_rows: int, attention: bool
    ) -> None:
        self.model, self.types, self.head, self.max_rows = model, types, head, max_rows
        self.with_attention = attention
        self.acts: dict[str, ActivationStats] = {}
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.features: list[Tensor] = []
        self.feature_rows = 0
        self.attention: dict[str, list] = {}
        self.notes: list[str] = []
        self.handles: list = []
        self.last_unit: nn.Module | None = None
        self.calls: dict[str, int] = {}

    def attach(self) -> None:
        modules = dict(self.model.named_modules())
        params = param_layers(self.model)
        self.handles.append(self.model.register_forward_pre_hook(self._forward_start))
        for name, m in modules.items():
            if name in params or isinstance(m, self.types):
                self.handles.append(m.register_forward_pre_hook(self._order_hook(name)))
            if isinstance(m, self.types):
                self.handles.append(m.register_forward_hook(self._act_hook(name, type(m).__name__)))
            if self.with_attention and _is_attention(m):
                self.handles.append(m.qkv.register_forward_hook(self._attn_hook(name, m)))
        if self.head is not None:
            if self.head not in modules:
                raise ConfigError(f"penultimate={self.head!r} is not a module name of the model")
            self.handles.append(modules[self.head].register_forward_pre_hook(self._feature_hook))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _forward_start(self, _m: nn.Module, _inputs: tuple) -> None:
        self.calls = {}

    def _call_key(self, name: str, m: nn.Module, advance: bool) -> str:
        """`name` on a module's first call in a forward, `name#k` on its k-th (a ReLU shared by two layers)."""
        if not isinstance(m, self.types):
            return name
        k = self.calls.get(name, 0) + (0 if advance else -1)
        if advance:
            self.calls[name] = k + 1
        return name if k <= 0 else f"{name}#{k + 1}"

    def _order_hook(self, name: str):
        def hook(m: nn.Module, _inputs: tuple) -> None:
            if isinstance(m, UNIT_LAYERS):
                self.last_unit = m
            key = self._call_key(name, m, advance=True)
            if key not in self.seen:
                self.seen.add(key)
                self.order.append(key)

        return hook

    def _act_hook(self, name: str, kind: str):
        def hook(m: nn.Module, _inputs: tuple, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.ndim >= 2:
                self._accumulate(self._call_key(name, m, advance=False), kind, out.detach())

        return hook

    def _accumulate(self, name: str, kind: str, a: Tensor) -> None:
        last = self.last_unit  # units: a Linear's last dim ([B, T, D] tokens, channels-last maps), else dim 1
        if a.ndim >= 3 and (
            (isinstance(last, nn.Linear) and a.shape[-1] == last.out_features)
            or (a.ndim == 3 and not isinstance(last, nn.modules.conv._ConvNd))
        ):
            a = a.movedim(-1, 1)
        st = self.acts.get(name)
        if st is None:
            st = self.acts[name] = ActivationStats.empty(kind, a.shape[1], a.device)
        elif st.units != a.shape[1]:
            self.notes.append(f"{name}: called with {a.shape[1]} units after {st.units}; extra calls skipped")
            return
        accumulate(st, a)

    def _feature_hook(self, _m: nn.Module, inputs: tuple) -> None:
        if not inputs or not isinstance(inputs[0], Tensor) or self.feature_rows >= self.max_rows:
            return
        f = inputs[0].detach()
        f = f.flatten(2).mean(-1) if f.ndim == 4 else (f.mean(1) if f.ndim == 3 else f.flatten(1))
        f = f[: self.max_rows - self.feature_rows].float().clone()
        self.features.append(f)
        self.feature_rows += f.shape[0]

    def _attn_hook(self, name: str, attn: nn.Module):
        def hook(_m: nn.Module, _inputs: tuple, qkv: Tensor) -> None:
            with torch.no_grad():
                ent, tokens = _attention_entropy(attn, qkv.detach())
            acc = self.attention.setdefault(name, [torch.zeros_like(ent), 0])
            acc[0] += ent * tokens
            acc[1] += tokens

        return hook

    def result(self, grads: dict[str, Tensor], n: int, samples: int, n_grad: int) -> LayerStats:
        params = param_layers(self.model)
        weights = {k: m.weight.detach() for k, m in params.items()}
        feats = torch.cat(self.features) if self.features else None
        attention = {k: s / max(c, 1) for k, (s, c) in self.attention.items()}
        sources = _sources(self.order, params, self.acts)
        return LayerStats(
            self.acts, weights, grads, list(self.order), sources, feats, self.head, attention,
            num_batches=n, num_samples=samples, grad_batches=n_grad, notes=list(dict.fromkeys(self.notes)),
        )  # fmt: skip


def accumulate(st: ActivationStats, a: Tensor) -> None:
    """Adds one [B, U, ...] activation to `st` with reductions that make no full-size temporary where possible.

    On CPU a full-size temporary costs more than the reduction itself (allocation + page faults), so sums and
    maxima read `a` directly, and the zero/cap counts use `sample_grid`.
    """
    dims = [d for d in range(a.ndim) if d != 1]
    relu = st.kind in ("ReLU", "ReLU6")  # outputs >= 0: sum(a) is sum(|a|)
    f32 = torch.promote_types(a.dtype, torch.float32)  # bf16/fp16 under autocast: float32; float64 stays
    unit_sum = a.sum(dims, dtype=f32) if relu else torch.linalg.vector_norm(a, 1, dims, dtype=f32)
    st.sum_abs += torch.where(torch.isfinite(unit_sum), unit_sum, 0).double()
    # ReLU outputs are >= 0, so a unit was never positive exactly when its sum is 0: no max needed.
    st.never_positive &= (unit_sum if relu else torch.amax(a, dims)) <= 0
    st.nonfinite += _count_nonfinite(a, unit_sum)
    if relu:
        grid = sample_grid(a)
        st.zeros += torch.count_nonzero(grid == 0)
        if st.kind == "ReLU6":
            st.capped += torch.count_nonzero(grid >= RELU6_CAP)
        st.sampled += grid.numel()
    st.rows += a.numel() // a.shape[1]


def sample_grid(a: Tensor, side: int = 4) -> Tensor:
    """Feature maps are read on an evenly strided, centred grid of about `side` x `side` positions (a view).

    The zero and cap fractions are means over B x C x 16 values per call, enough for a share to about 1e-3,
    at a fraction of a full pass. Vectors, tokens and maps up to 7 x 7 are used whole (exact).
    """
    if a.ndim != 4:
        return a
    sh, sw = max(1, a.shape[2] // side), max(1, a.shape[3] // side)
    return a[:, :, sh // 2 :: sh, sw // 2 :: sw]


def _count_nonfinite(a: Tensor, unit_sum: Tensor) -> Tensor | int:
    # A host check is free on CPU and skips a full pass; on an accelerator the pass is cheaper than a sync.
    if a.device.type == "cpu" and bool(torch.isfinite(unit_sum).all()):
        return 0
    return a.numel() - torch.count_nonzero(torch.isfinite(a))


def _sources(order: list[str], params: dict[str, nn.Module], acts: dict) -> dict[str, str]:
    """activation -> closest preceding Conv/Linear in execution order (conv -> bn -> act maps to the conv)."""
    out, last = {}, None
    for name in order:
        if name in params and isinstance(params[name], UNIT_LAYERS):
            last = name
        elif name in acts and last is not None:
            out[name] = last
    return out


def _is_attention(m: nn.Module) -> bool:
    """timm-style self-attention: a fused qkv Linear, heads, q/k norms (probabilities are never materialized)."""
    return all(hasattr(m, a) for a in ("qkv", "num_heads", "scale", "q_norm", "k_norm")) and isinstance(
        m.qkv, nn.Linear
    )


def _attention_entropy(attn: nn.Module, qkv: Tensor) -> tuple[Tensor, int]:
    """Mean entropy per head of softmax(q k^T * scale), recomputed from the qkv output, / log(tokens)."""
    b, t, _ = qkv.shape
    q, k, _v = qkv.reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm.forward(q), attn.k_norm.forward(k)  # .forward: our own hooks must not fire here
    p = ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(-1)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [B, H, T]
    return ent.mean((0, 2)) / math.log(max(t, 2)), b * t
