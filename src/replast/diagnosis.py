"""diagnose(): a per-layer table of plasticity metrics of a model on a few batches.

    report = diagnose(model, loader, num_batches=8)
    report.to_frame(); report.to_json("diagnosis.json"); DiagnosisReport.from_json("diagnosis.json")

`cheap_metrics` is the light version for tracking during fine-tuning every K steps.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from torch import Tensor, nn

from replast import diagnostics as dx
from replast.checkpoint import write_text
from replast.probe import DEFAULT_ACTIVATIONS, UNIT_LAYERS, ActivationStats, Labels, LayerStats, capture

COLUMNS = [
    "layer", "kind", "module", "depth", "source",
    "mean_abs_weight", "weight_std", "near_zero_fraction", "weight_norm",
    "grad_norm", "grad_to_weight", "grad_to_weight_rel", "small_grad_fraction",
    "dormant_fraction", "zero_unit_fraction", "relu_zero_fraction", "relu6_cap_fraction",
    "nonfinite", "attn_entropy", "plasticity_score", "notes",
]  # fmt: skip
"""Columns of `DiagnosisReport.to_frame()`; kind is "param" (owns a weight) or "activation"."""
RELU_KINDS = ("ReLU", "ReLU6")


@dataclass
class DiagnosisReport:
    """Rows per layer, penultimate feature ranks, notes and run facts (`meta`)."""

    rows: list[dict]
    features: dict[str, float]
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    attention: dict[str, list[float]] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def to_dict(self) -> dict:
        return _json_safe(asdict(self))

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text (NaN/Inf written as null); also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            write_text(path, text)
        return text

    def to_csv(self, path: str | Path) -> Path:
        """The table as CSV, written atomically (a failed write leaves no partial file)."""
        return write_text(path, self.to_frame().to_csv(index=False))

    @classmethod
    def from_json(cls, source: str | Path) -> DiagnosisReport:
        """Reads `to_json` output from a path or a JSON string; nulls in numeric columns become NaN."""
        text = Path(source).read_text() if not str(source).lstrip().startswith("{") else str(source)
        d = json.loads(text)
        rows = [{k: (math.nan if v is None and k not in ("source", "notes") else v) for k, v in r.items()}
                for r in d["rows"]]  # fmt: skip
        feats = {k: (math.nan if v is None else v) for k, v in d["features"].items()}
        return cls(rows, feats, d.get("notes", []), d.get("meta", {}), d.get("attention", {}))


def diagnose(
    model: nn.Module,
    batches: Iterable,
    *,
    num_batches: int = 8,
    tau: float = dx.DORMANT_TAU,
    backward: bool = True,
    grad_batches: int | None = None,
    labels: Labels = "given",
    activation_types: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
    penultimate: str | None = None,
) -> DiagnosisReport:
    """Probe `model` on up to `num_batches` (x, y) batches (eval mode) and tabulate every layer.

    Gradient statistics come from the first `grad_batches` batches (default half, see `probe.capture`);
    `labels="argmax"` back-propagates the model's own predictions (reference data has no labels).
    Bad batches raise ConfigError naming the expected input; NaN/Inf activations are counted, not fatal.
    """
    start = time.perf_counter()
    stats = capture(
        model, batches, num_batches=num_batches, backward=backward, grad_batches=grad_batches,
        activation_types=activation_types, penultimate=penultimate, labels=labels,
    )  # fmt: skip
    return report_from_stats(model, stats, tau=tau, elapsed=time.perf_counter() - start)


def report_from_stats(
    model: nn.Module, stats: LayerStats, *, tau: float, elapsed: float = 0.0
) -> DiagnosisReport:
    """Turns the sums of `capture` into a DiagnosisReport (metrics from `replast.diagnostics`)."""
    depth = {name: i for i, (name, _) in enumerate(model.named_modules())}
    modules = dict(model.named_modules())
    acts = {name: _activation_row(name, st, tau) for name, st in stats.activations.items()}
    for name, src in stats.sources.items():
        acts[name]["source"] = src
    rows = [_param_row(name, stats, modules[name]) for name in stats.weights]
    _normalize_ratios(rows)
    _link_dormancy(rows, acts, stats)
    rows += list(acts.values())
    for name, ent in stats.attention.items():
        rows.append({"layer": name, "kind": "attention", "module": type(modules[name]).__name__,
                     "attn_entropy": float(ent.mean()), "notes": ""})  # fmt: skip
    for r in rows:
        r["depth"] = depth[r["layer"].split("#")[0]]  # "relu#2": second call of a shared activation
        r["plasticity_score"] = dx.plasticity_score(r)
    rows.sort(key=lambda r: (r["depth"], r["kind"]))
    features, feature_note = dx.feature_ranks(stats.features)
    notes = list(stats.notes) + ([feature_note] if feature_note else [])
    if not stats.activations:
        notes.append("no activation modules of the probed types ran: weight and gradient statistics only")
    meta = {"num_batches": stats.num_batches, "grad_batches": stats.grad_batches, "tau": tau,
            "num_samples": stats.num_samples, "head": stats.head,
            "feature_rows": 0 if stats.features is None else stats.features.shape[0], "time_s": round(elapsed, 4)}  # fmt: skip
    attention = {k: [float(x) for x in v] for k, v in stats.attention.items()}
    return DiagnosisReport(rows, features, notes, meta, attention)


def _param_row(name: str, stats: LayerStats, module: nn.Module) -> dict:
    row = {"layer": name, "kind": "param", "module": type(module).__name__, "source": None, "notes": ""}
    row.update(dx.weight_stats(stats.weights[name]))
    grad = stats.grads.get(name)
    if name not in stats.order:
        row["notes"] = "did not run in forward"
    elif grad is not None:
        row.update(dx.grad_stats(grad, stats.weights[name]))
    return row


def _activation_row(name: str, st: ActivationStats, tau: float) -> dict:
    nonfinite = int(st.nonfinite)
    row = {"layer": name, "kind": "activation", "module": st.kind, "source": None, "nonfinite": nonfinite,
           "notes": f"{nonfinite} non-finite activation values" if nonfinite else ""}  # fmt: skip
    row["dormant_fraction"] = dx.dormant_fraction(dx.redo_scores(st.sum_abs, st.rows), tau)
    row["zero_unit_fraction"] = dx.zero_unit_fraction(st.never_positive)
    if st.kind in RELU_KINDS:
        row["relu_zero_fraction"] = dx.fraction(int(st.zeros), st.sampled)
    if st.kind == "ReLU6":
        row["relu6_cap_fraction"] = dx.fraction(int(st.capped), st.sampled)
    return row


def _normalize_ratios(rows: list[dict]) -> None:
    """grad_to_weight_rel = ratio / median ratio of the model's layers of the same module class.

    Per class because norm layers, convs and linears sit at very different ratios; dividing by a median of
    the same run makes the term insensitive to the overall loss scale of the data.
    """
    by_class: dict[str, list[float]] = {}
    for r in rows:
        if math.isfinite(r.get("grad_to_weight", math.nan)):
            by_class.setdefault(r["module"], []).append(r["grad_to_weight"])
    for r in rows:
        ratio, ratios = r.get("grad_to_weight", math.nan), by_class.get(r["module"], [])
        median = statistics.median(ratios) if ratios else 0.0
        r["grad_to_weight_rel"] = ratio / median if median > 0 and not math.isnan(ratio) else math.nan


def _link_dormancy(rows: list[dict], acts: dict[str, dict], stats: LayerStats) -> None:
    """Param layers from an activation's source Conv/Linear up to it (conv -> bn -> act) take its dormancy
    when their weight has one row per unit; the worst activation wins when a layer feeds several."""
    by_layer = {r["layer"]: r for r in rows}
    pos = {name: i for i, name in enumerate(stats.order)}
    linked: dict[str, str] = {}
    for act, src in stats.sources.items():
        units = stats.activations[act].units
        for name in stats.order[pos[src] : pos[act]]:
            w = stats.weights.get(name)
            if name in by_layer and w is not None and w.shape[0] == units:
                if acts[act]["dormant_fraction"] > by_layer[name].get("dormant_fraction", -1.0):
                    linked[name] = act
                    by_layer[name]["dormant_fraction"] = acts[act]["dormant_fraction"]
                    by_layer[name]["zero_unit_fraction"] = acts[act]["zero_unit_fraction"]
    for name, act in linked.items():
        by_layer[name]["notes"] = "; ".join(filter(None, [by_layer[name]["notes"], f"dormancy of {act}"]))


def cheap_metrics(
    model: nn.Module, batch: tuple[Tensor, Tensor], *, tau: float = dx.DORMANT_TAU
) -> dict[str, float]:
    """Light plasticity metrics for tracking every K training steps: one forward pass, no backward.

    dormant_fraction: dormant units / all activation units; effective_rank: of the head's input on this
    batch; grad_to_weight: mean over Conv/Linear layers of the gradients already in .grad (NaN when none:
    call it after backward() and before zero_grad()). Runs in eval mode, so BatchNorm statistics are not
    updated; mode, grads and requires_grad are restored.
    """
    ratios = [
        dx.grad_stats(m.weight.grad, m.weight)["grad_to_weight"]
        for m in model.modules()
        if isinstance(m, UNIT_LAYERS) and m.weight.grad is not None
    ]
    stats = capture(model, [batch], num_batches=1, backward=False, attention=False)
    dormant = units = 0
    for st in stats.activations.values():
        dormant += dx.dormant_fraction(dx.redo_scores(st.sum_abs, st.rows), tau) * st.units
        units += st.units
    ranks, _ = dx.feature_ranks(stats.features)
    finite = [r for r in ratios if math.isfinite(r)]
    return {
        "dormant_fraction": dormant / units if units else math.nan,
        "effective_rank": ranks["effective_rank"],
        "grad_to_weight": sum(finite) / len(finite) if finite else math.nan,
    }


def _json_safe(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
