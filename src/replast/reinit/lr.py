"""Learning rate of re-initialized weights, Adam's step count of entries reset during training, and
the `every:K` re-application schedule.

    scaler = UpdateScaler(optimizer, report.masks, scale=10, warmup_steps=100, model=model)
    with scaler:
        optimizer.step()          # or: scaler.step()
The UPDATE (new − old) of reset entries is multiplied, not the gradient: Adam would normalize a
scaled gradient away. Weight decay is part of the update and is scaled with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from replast.errors import ConfigError


def resolve_masks(masks: Any, model: nn.Module | None) -> dict[Tensor, Tensor]:
    """{parameter: bool mask} from {name: mask} (+ model), {parameter: mask} or a ReinitReport."""
    masks = getattr(masks, "masks", masks)
    if not isinstance(masks, Mapping):
        raise ConfigError(f"masks must be a mapping or a ReinitReport, got {type(masks).__name__}")
    if not all(isinstance(k, str) for k in masks):
        return {p: m for p, m in masks.items() if bool(m.any())}
    if model is None:
        raise ConfigError("masks are keyed by parameter name: pass model=... to resolve them")
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ConfigError(f"masks name parameters the model does not have: {unknown[:5]}")
    return {params[n]: m.to(params[n].device) for n, m in masks.items() if bool(m.any())}


Snapshot = dict[Tensor, Tensor]
"""Parameter -> a copy of it taken before the optimizer's update."""


def taken(params: Iterable[Tensor], snapshot: Snapshot | None = None) -> Snapshot:
    """Copies of `params` before the update: lent from `snapshot` where it has them, made here otherwise."""
    snapshot = snapshot if snapshot is not None else {}
    return {p: snapshot[p] if p in snapshot else p.detach().clone() for p in params}


class UpdateScaler:
    """Multiply the optimizer's update of reset entries by k; other entries are untouched.

    Warm-up: step t (0-based) uses k_t = 1 + (k − 1)·min(1, (t + 1) / warmup_steps), a linear ramp
    that reaches k on step `warmup_steps`; warmup_steps=0 applies k from the first step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, masks: Any, scale: float,
                 warmup_steps: int = 0, *, model: nn.Module | None = None) -> None:
        if not (scale > 0 and math.isfinite(scale)) or warmup_steps < 0:
            raise ConfigError(f"scale={scale} must be > 0 and warmup_steps={warmup_steps} >= 0")
        self.optimizer, self.scale, self.warmup_steps = optimizer, float(scale), int(warmup_steps)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.masks = {p: m for p, m in resolve_masks(masks, model).items() if id(p) in in_optimizer}
        self.steps = 0
        self._old: dict[Tensor, Tensor] | None = None

    def factor(self) -> float:
        """k for the next step."""
        if self.warmup_steps == 0:
            return self.scale
        return 1.0 + (self.scale - 1.0) * min(1.0, (self.steps + 1) / self.warmup_steps)

    def begin(self, snapshot: Snapshot | None = None) -> None:
        """Call right before the optimizer updates the parameters (gradients already computed); `snapshot`
        lends copies of the parameters taken there, so that another corrector need not copy them again."""
        self._old = taken(self.masks, snapshot) if self.scale != 1.0 else {}

    @property
    def pending(self) -> bool:
        """True between begin() and finish()."""
        return self._old is not None

    def __enter__(self) -> UpdateScaler:
        self.begin()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.cancel()
            return
        self.finish()

    def cancel(self) -> None:
        """The optimizer step failed: forget the snapshot."""
        self._old = None

    @torch.no_grad()
    def finish(self) -> None:
        """Call right after the optimizer's update: scales it for the reset entries."""
        old, self._old = self._old or {}, None
        k = self.factor()
        for p, before in old.items():
            update = p.detach() - before
            p.copy_(torch.where(self.masks[p], before + k * update, p.detach()))
        self.steps += 1

    def step(self, closure: Callable | None = None) -> Any:
        with self:
            return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])


@torch.no_grad()
def clear_optimizer_state(optimizer: torch.optim.Optimizer, masks: Any, *,
                          model: nn.Module | None = None) -> int:
    """Zero momentum / Adam moments of reset entries (any per-entry state tensor); returns the number
    of state tensors touched. Adam's per-parameter step count is shared by all entries and kept: `AdamAges`
    gives the reset entries a step count of their own."""
    touched = 0
    for p, mask in resolve_masks(masks, model).items():
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, Tensor) and value.shape == p.shape:
                value.masked_fill_(mask.to(value.device), 0)
                touched += 1
    return touched


def _adam_step(state: Mapping[str, Any]) -> int:
    return int(state["step"]) if "step" in state and "exp_avg_sq" in state else 0


class AdamAges:
    """Adam's bias correction counted from each entry's own reset, as if its moments had started afresh.

    torch's Adam keeps one step count t per tensor. An entry whose moments were zeroed at step t0 then has
    moments built from τ = t − t0 gradients but is divided by 1 − β^t ≈ 1 instead of 1 − β^τ, so its
    first updates are several times too large (a steady gradient, β = 0.9, 0.999, a long-trained tensor:
    3.2× at its first step, 6.5× at the tenth, 3.2× at the hundredth).
    After each step, `finish()` rewrites the update of such entries with their own τ, exactly as a fresh
    Adam would make it (the per-entry step count of continual backprop's reference optimizer, applied to
    the update). Other optimizers are left alone: SGD has no bias correction, and NAdam, RAdam or Adamax
    would each need their own formula.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        # torch < 2.7: AdamW is not an Adam, and its groups have no `decoupled_weight_decay`
        self.adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
        self.decoupled = isinstance(optimizer, torch.optim.AdamW)
        self.born: dict[Tensor, Tensor] = {}  # parameter -> the step count at each entry's latest reset (0: never)
        self._old: dict[Tensor, tuple[Tensor, int]] | None = None

    @torch.no_grad()
    def mark(self, masks: Any, *, model: nn.Module | None = None) -> None:
        """Record the current step count for the entries just reset (their moments cleared)."""
        if not self.adam:
            return
        for p, mask in resolve_masks(masks, model).items():
            t0 = _adam_step(self.optimizer.state.get(p, {}))
            if t0 > 0:
                born = self.born.setdefault(p, torch.zeros(p.shape, dtype=torch.float64, device=p.device))
                born.masked_fill_(mask.to(born.device), t0)

    def begin(self, snapshot: Snapshot | None = None) -> None:
        """Call right before the optimizer updates the parameters (`snapshot`: as `UpdateScaler.begin`)."""
        before = taken(self.born, snapshot)
        self._old = {p: (before[p], _adam_step(self.optimizer.state.get(p, {}))) for p in self.born}

    @property
    def pending(self) -> bool:
        return self._old is not None

    def cancel(self) -> None:
        self._old = None

    @torch.no_grad()
    def finish(self) -> None:
        """Call right after the optimizer's update: redoes it for entries reset since the tensor's first step."""
        old, self._old = self._old or {}, None
        groups = {p: g for g in self.optimizer.param_groups for p in g["params"]}
        for p, (before, t_before) in old.items():
            state, group = self.optimizer.state.get(p, {}), groups.get(p)
            t = _adam_step(state)
            if group is None or t == t_before:  # not in the optimizer, or a step skipped (fp16 overflow)
                continue
            tau = (t - self.born[p]).clamp_(min=1)  # entries never reset: τ = t, the update is redone as it was
            (beta1, beta2), lr, eps = group["betas"], float(group["lr"]), group["eps"]
            second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
            first = state["exp_avg"].double() / (1 - beta1 ** tau)
            denom = (second.double() / (1 - beta2 ** tau)).sqrt_().add_(eps)
            start = before.double()
            if group.get("decoupled_weight_decay", self.decoupled) and group["weight_decay"]:
                start = start * (1 - lr * float(group["weight_decay"]))
            fresh = (start - lr * first / denom).to(p.dtype)
            p.copy_(torch.where(self.born[p] > 0, fresh, p.detach()))


@dataclass(frozen=True)
class ReinitSchedule:
    """When to re-initialize: once before fine-tuning, or every K optimizer steps."""

    every: int | None = None

    @classmethod
    def parse(cls, text: str) -> ReinitSchedule:
        if text == "once":
            return cls(None)
        head, _, k = str(text).partition(":")
        if head == "every" and k.isdigit() and int(k) > 0:
            return cls(int(k))
        raise ConfigError(f"schedule={text!r}: use 'once' or 'every:K' with K > 0")

    @property
    def once(self) -> bool:
        return self.every is None

    def due(self, step: int) -> bool:
        """True at optimizer steps K, 2K, ... (never at step 0: the initial reset is separate)."""
        return self.every is not None and step > 0 and step % self.every == 0

    def __str__(self) -> str:
        return "once" if self.every is None else f"every:{self.every}"
