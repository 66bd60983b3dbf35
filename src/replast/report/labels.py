"""Names used by the report: which run is which strategy ("arm"), which runs form one comparison ("condition").

An arm is reinit.strategy + train.mode + the reinit knobs that vary within that strategy across the study;
a condition is every other varying config field except the seed (e.g. data, model, train_fraction).
"""

from __future__ import annotations

import re

import pandas as pd

from replast.study import config_keys

BASELINE = "none"
# Fields that change how a run executes, not what it measures.
# Not devices or num_nodes: batch_size is per device and the learning rate follows the global batch.
RUNTIME = {"accelerator", "strategy", "deterministic", "diagnose", "train.compile",
           "train.precision", "train.channels_last", "train.eval_batch_size", "train.track_plasticity"}
# Knobs a run does not use, left out of its label: {knob: (field, value that makes it unused)}.
UNUSED_WHEN = {"reinit.fraction": ("reinit.scope", "auto")}  # scope auto sets each layer's fraction
# ... except where another field makes the run use it after all: selection global ranks with one fraction.
USED_ANYWAY = {"reinit.fraction": ("reinit.selection", "global")}


def default_mode() -> str:
    return str(config_keys()["train.mode"])


def is_arm_column(column: str) -> bool:
    return column.startswith("reinit.") or column == "train.mode"


def condition_columns(results: pd.DataFrame) -> list[str]:
    """Config columns that vary across the study and are neither strategy knobs, the seed nor runtime."""
    keys = [k for k in config_keys() if k in results.columns]
    return [k for k in keys if not is_arm_column(k) and k != "seed" and k not in RUNTIME
            and results[k].astype(str).nunique() > 1]


def _varying_knobs(results: pd.DataFrame) -> dict[str, list[str]]:
    knobs = [c for c in results.columns if c.startswith("reinit.") and c != "reinit.strategy"]
    return {s: [c for c in knobs if group[c].astype(str).nunique() > 1]
            for s, group in results.groupby("reinit.strategy")}


def arm_labels(results: pd.DataFrame) -> pd.Series:
    """One readable label per run: 'none', 'linear-probe', 'targeted (utility=taylor, fraction=0.1)', ..."""
    if results.empty:
        return pd.Series(dtype=str)
    frame = results.assign(**{"reinit.strategy": results.get("reinit.strategy", BASELINE),
                              "train.mode": results.get("train.mode", default_mode())})
    knobs, mode = _varying_knobs(frame), default_mode()

    def label(row: pd.Series) -> str:
        strategy, run_mode = str(row["reinit.strategy"]), str(row["train.mode"])
        if strategy == BASELINE:
            return BASELINE if run_mode == mode else run_mode
        text = strategy + ("" if run_mode == mode else f" [{run_mode}]")
        parts = [f"{c.split('.', 1)[1]}={row[c]}" for c in knobs.get(strategy, []) if not _unused(row, c)]
        return text + (f" ({', '.join(parts)})" if parts else "")

    return frame.apply(label, axis=1)


def _unused(row: pd.Series, knob: str) -> bool:
    field, value = UNUSED_WHEN.get(knob, (None, None))
    used, used_value = USED_ANYWAY.get(knob, (None, None))
    return (field is not None and str(row.get(field)) == value
            and not (used is not None and str(row.get(used)) == used_value))


def condition_titles(results: pd.DataFrame, columns: list[str]) -> pd.Series:
    """'br35h × mobilenetv2_100 (train_fraction=0.25)' per run."""
    if results.empty:
        return pd.Series(dtype=str)
    main = [c for c in ("data", "model") if c in results.columns]
    rest = [c for c in columns if c not in main]

    def title(row: pd.Series) -> str:
        text = " × ".join(str(row[c]) for c in main) or "all runs"
        extra = ", ".join(f"{c}={row[c]}" for c in rest)
        return text + (f" ({extra})" if extra else "")

    return results.apply(title, axis=1)


def figure_stems(titles: list[str]) -> list[str]:
    """A file-name stem per condition title, made from the title itself so that a figure keeps its name when
    conditions are added to a study: 'br35h × mobilenetv2_100 (train_fraction=0.25)' →
    'br35h-mobilenetv2_100-train_fraction-0.25'. Stems that would clash get -2, -3, ..."""
    stems: list[str] = []
    for title in titles:
        stem = re.sub(r"[^a-z0-9._]+", "-", title.lower()).strip("-.")[:120] or "condition"
        candidate, n = stem, 1
        while candidate in stems:
            n += 1
            candidate = f"{stem}-{n}"
        stems.append(candidate)
    return stems


def natural_key(text: str) -> tuple:
    """Sort 'fraction=0.05' before 'fraction=0.1' and 'none' first."""
    parts = re.split(r"(-?\d+(?:\.\d+)?)", text)
    return (text != BASELINE, tuple((0, float(p)) if re.fullmatch(r"-?\d+(?:\.\d+)?", p) else (1, p)
                                    for p in parts if p))
