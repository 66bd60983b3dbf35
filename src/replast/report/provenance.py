"""Which software and hardware produced a study's finished runs: one row per distinct environment record
(`replast.environment.describe`, flattened into results.csv as `environment.*`), with its number of runs."""

from __future__ import annotations

import pandas as pd

# results.csv column -> the report's header; world_size = processes (GPUs) per run.
COLUMNS = {"environment.replast": "replast", "environment.commit": "commit", "environment.python": "python",
           "environment.torch": "torch", "environment.torchvision": "torchvision", "environment.timm": "timm",
           "environment.lightning": "lightning", "environment.device_name": "device",
           "environment.threads": "threads", "world_size": "processes"}
NOT_RECORDED = "—"


def environments(results: pd.DataFrame) -> pd.DataFrame:
    """Columns COLUMNS' headers plus `runs`, most runs first; a run without a record (made before replast
    wrote one) shows NOT_RECORDED in each missing column."""
    headers = list(COLUMNS.values())
    finished = results[results["status"] == "finished"] if "status" in results else results.iloc[:0]
    if finished.empty:
        return pd.DataFrame(columns=[*headers, "runs"])
    missing = pd.Series(NOT_RECORDED, index=finished.index)
    cells = pd.DataFrame({header: finished[column].map(_text) if column in finished else missing
                          for column, header in COLUMNS.items()})
    counts = cells.value_counts(sort=False).rename("runs").reset_index()
    return counts.sort_values(["runs", *headers], ascending=[False, *[True] * len(headers)], ignore_index=True)


def _text(value: object) -> str:
    """One cell as text: integers read back from CSV as floats lose their '.0', missing values show —."""
    if pd.isna(value):
        return NOT_RECORDED
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
