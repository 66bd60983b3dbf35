"""Per-layer bar charts of a DiagnosisReport, one PNG per metric, optionally beside a reference report.

    paths = plot_diagnosis(report, "out/plots", reference=ref_report)

Uses matplotlib's object API with the Agg canvas (no pyplot state, safe in threads and without a display).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from replast.checkpoint import atomic_write
from replast.diagnosis import DiagnosisReport
from replast.errors import OutputError

_PARAM = ("mean_abs_weight", "weight_std", "near_zero_fraction", "weight_norm", "grad_norm", "grad_to_weight",
          "small_grad_fraction")  # fmt: skip
_ACTIVATION = (
    "dormant_fraction",
    "zero_unit_fraction",
    "relu_zero_fraction",
    "relu6_cap_fraction",
    "nonfinite",
)
METRICS: dict[str, str] = {
    **dict.fromkeys(_PARAM, "param"),
    **dict.fromkeys(_ACTIVATION, "activation"),
    "attn_entropy": "attention",
    "plasticity_score": "param",
}
"""metric -> the row kind it is drawn from (param rows repeat their activation's dormancy: drawn once)."""
LOG_SCALE = {"grad_norm", "grad_to_weight", "weight_norm"}


def plot_diagnosis(
    report: DiagnosisReport, out_dir: str | Path, *, reference: DiagnosisReport | None = None
) -> list[Path]:
    """Writes `diagnosis_<metric>.png` for every metric with data and returns the paths.

    x = depth (index in named_modules order); with `reference`, its bars stand beside the downstream ones.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create plot directory {out}: {e.strerror}; pick a writable --out") from e
    df = report.to_frame()
    ref = reference.to_frame() if reference is not None else None
    paths = []
    for metric, kind in METRICS.items():
        series = _finite(df, metric, kind)
        ref_series = _finite(ref, metric, kind) if ref is not None else None
        if series.empty and (ref_series is None or ref_series.empty):
            continue
        paths.append(_bar_chart(metric, series, ref_series, out / f"diagnosis_{metric}.png"))
    return paths


def _finite(df: pd.DataFrame, metric: str, kind: str) -> pd.Series:
    """metric by depth for rows of `kind`, finite values only (a layer without the metric has no bar)."""
    s = pd.to_numeric(df[df["kind"] == kind].set_index("depth")[metric], errors="coerce")
    return s[np.isfinite(s)]


def _bar_chart(metric: str, series: pd.Series, ref: pd.Series | None, path: Path) -> Path:
    fig = Figure(figsize=(max(6.0, 0.06 * (len(series) + 1) + 4), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    depths = sorted(set(series.index) | (set(ref.index) if ref is not None else set()))
    gap = float(np.diff(depths).min()) if len(depths) > 1 else 1.0  # bars as wide as the layers allow
    width = 0.8 * gap / (1 if ref is None else 2)
    offset = 0.0 if ref is None else width / 2
    ax.bar(series.index - offset, series.to_numpy(), width=width, label="downstream", color="tab:blue")
    if ref is not None:
        ax.bar(ref.index + offset, ref.to_numpy(), width=width, label="reference", color="tab:orange")
        ax.legend(loc="upper right", fontsize="small")
    if metric in LOG_SCALE and (series > 0).any():
        ax.set_yscale("log")
    ax.set_xlabel("depth (index in named_modules order)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric} per layer")
    ax.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))
