"""PNG figures for one condition: learning curves with 95% t bands, accuracy vs re-initialized fraction,
and plasticity tracking curves. Figures are built with matplotlib's object API (Agg), never pyplot state.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from replast import stats
from replast.report.labels import BASELINE, arm_labels


def arm_colors(arms: Sequence[str]) -> dict[str, tuple]:
    """One colour per arm: tab10 up to 10 arms, then tab20 and tab20b (40 distinct colours; the paper study
    has 23 arms, which tab20 alone gave the first three arms' colours twice)."""
    palette = colormaps["tab10"].colors if len(arms) <= 10 else colormaps["tab20"].colors + colormaps["tab20b"].colors
    return {arm: tuple(palette[i % len(palette)]) for i, arm in enumerate(arms)}


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def present_arms(colors: Mapping[str, tuple], seen: Iterable[str]) -> list[str]:
    """The arms among `seen`, in the report's colour order."""
    present = set(seen)
    return [a for a in colors if a in present]


def _band(ax, curves: pd.DataFrame, column: str, label: str, color, scale: float) -> None:
    points = [(e, stats.mean_ci(g[column])) for e, g in curves.groupby("epoch")]
    points = [(e, c) for e, c in points if c.n]
    if not points:
        return
    epochs = [e for e, _ in points]
    ax.plot(epochs, [scale * c.mean for _, c in points], color=color, label=label, marker="o", markersize=3)
    ax.fill_between(epochs, [scale * c.low for _, c in points], [scale * c.high for _, c in points],
                    color=color, alpha=0.2, linewidth=0)


def add_legend(ax, n: int) -> None:
    if n > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)


def learning_curves(curves: pd.DataFrame, arm_of: Mapping[str, str], colors: Mapping[str, tuple],
                    title: str, column: str = "val_acc") -> bytes | None:
    """Mean validation accuracy per epoch with a 95% t band over seeds, one line per arm."""
    if curves.empty or column not in curves:
        return None
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    arms = present_arms(colors, arm_of.values())
    for arm in arms:
        hashes = [h for h, a in arm_of.items() if a == arm]
        _band(ax, curves[curves["hash"].isin(hashes)], column, arm, colors[arm], 100.0)
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Validation accuracy (%)")
    ax.set_title(f"Learning curves: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    add_legend(ax, len(arms))
    return png_bytes(fig)


def fraction_plot(runs: pd.DataFrame, colors: Mapping[str, tuple], title: str, metric: str = "test_acc") -> bytes | None:
    """Test accuracy against the re-initialized fraction for every strategy that was run at several fractions."""
    if "reinit.fraction" not in runs or runs.empty:
        return None
    series = arm_labels(runs.assign(**{"reinit.fraction": 0.0}))
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for name, group in runs.groupby(series):
        if name == BASELINE or group["reinit.fraction"].nunique() < 2:
            continue
        points = [(100 * f, stats.mean_ci(g[metric])) for f, g in group.groupby("reinit.fraction")]
        xs, cis = [x for x, _ in points], [c for _, c in points]
        color = colors.get(str(group.sort_values("reinit.fraction")["arm"].iloc[0])) if "arm" in group else None
        ax.errorbar(xs, [100 * c.mean for c in cis], capsize=3, marker="o", label=str(name), color=color,
                    yerr=[[100 * (c.mean - c.low) for c in cis], [100 * (c.high - c.mean) for c in cis]])
        drawn += 1
    if not drawn:
        return None
    base = runs[runs["arm"] == BASELINE] if "arm" in runs else runs.iloc[:0]
    if len(base):
        ci = stats.mean_ci(base[metric])
        ax.axhline(100 * ci.mean, color=colors.get(BASELINE, "k"), linestyle="--", label="none (mean)")
        ax.axhspan(100 * ci.low, 100 * ci.high, color=colors.get(BASELINE, "k"), alpha=0.12)
    ax.set_xlabel("Re-initialized fraction (% of eligible weights)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(f"Accuracy vs re-initialized fraction: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    add_legend(ax, drawn + 1)
    return png_bytes(fig)


def plasticity_curves(curves: pd.DataFrame, arm_of: Mapping[str, str], colors: Mapping[str, tuple],
                      title: str) -> bytes | None:
    """One panel per logged `plasticity_*` metric, mean and 95% band over seeds per arm."""
    columns = [c for c in curves.columns if c.startswith("plasticity_") and curves[c].notna().any()]
    if not columns:
        return None
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    arms = present_arms(colors, arm_of.values())
    for i, column in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for arm in arms:
            hashes = [h for h, a in arm_of.items() if a == arm]
            _band(ax, curves[curves["hash"].isin(hashes)], column, arm, colors[arm], 1.0)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{column.removeprefix('plasticity_').replace('_', ' ')} (value as logged)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"Plasticity tracking: {title}", fontsize=10)
    return png_bytes(fig)
