"""The results store of a study: run directories read into one tidy results.csv and one curves.csv.

    from replast.store import collect; results, curves, failures = collect("runs/smoke")

`read_run` never raises on a damaged run directory: it marks the run `damaged` with the reason, so a
sweep can set it aside and re-run it. `Store` keeps the rows in memory and rewrites the CSVs on update.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from replast import runfiles
from replast.checkpoint import write_text
from replast.errors import OutputError
from replast.study import OPERATIONAL, config_keys, flatten

CURVE_KEYS = ("model", "weights", "data", "image_size", "train_fraction", "epochs", "seed", "train.mode",
              "reinit.strategy", "reinit.utility", "reinit.selection", "reinit.fraction", "reinit.level",
              "reinit.scope")
METRIC_COLUMNS = ("epoch", "val_acc", "val_loss", "train_loss", "train_acc")


@dataclass
class RunRecord:
    """What one run directory holds, as one results row and its per-epoch curve."""

    row: dict[str, Any]
    curve: Any = None  # pandas.DataFrame of metrics.csv, or None

    @property
    def status(self) -> str:
        return str(self.row["status"])


def read_metrics(path: str | os.PathLike):
    """metrics.csv as a DataFrame; ValueError when it is not a readable table of numeric epochs."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable metrics.csv ({' '.join(str(e).split())[:120]})") from e
    bad = [c for c in METRIC_COLUMNS if c in df.columns and not pd.api.types.is_numeric_dtype(df[c])]
    if "epoch" not in df.columns or bad:
        raise ValueError(f"damaged metrics.csv (columns {list(df.columns)[:6]}, non-numeric {bad})")
    return df.sort_values("epoch", kind="stable").reset_index(drop=True)


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read a run directory; unreadable files make its status 'damaged' with the reason, never an error."""
    run_dir = Path(run_dir)
    row: dict[str, Any] = {"hash": run_dir.name, "status": "missing", "reason": ""}
    status = runfiles.read_status(run_dir)
    if status:
        row.update(status=status["status"], reason=str(status.get("reason", "")))
    curve, problems = None, []
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        row.update({k: _cell(v) for k, v in flatten(config).items() if k not in OPERATIONAL})
    except (OSError, yaml.YAMLError, AttributeError) as e:
        problems.append(f"unreadable config.yaml ({type(e).__name__})")
    if (run_dir / "metrics.csv").exists():
        try:
            curve = read_metrics(run_dir / "metrics.csv")
        except ValueError as e:
            problems.append(str(e))
    if row["status"] == runfiles.FINISHED:
        problems += _add_final(row, run_dir / "final.json")
    if problems or row["status"] == "damaged":
        row.update(status="damaged", reason="; ".join(problems) or row["reason"])
    return RunRecord(row, curve)


def _add_final(row: dict[str, Any], path: Path) -> list[str]:
    try:
        final = json.loads(path.read_text())
        assert isinstance(final, dict)
    except (OSError, ValueError, AssertionError):
        return ["finished but final.json is missing or unreadable"]
    for key, value in flatten(final).items():
        if isinstance(value, (int, float, str, bool)) or value is None:
            row[f"final.{key}" if key in row else key] = value
    return []


class Store:
    """results.csv + curves.csv of one OUT, rebuilt from run directories and kept in memory for updates."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.records: dict[str, RunRecord] = {}

    def load(self) -> Store:
        runs = self.out / "runs"
        for run_dir in sorted(runs.iterdir()) if runs.is_dir() else []:
            if run_dir.is_dir():
                self.refresh(run_dir.name)
        return self

    def refresh(self, run_hash: str) -> RunRecord:
        record = self.records[run_hash] = read_run(self.out / "runs" / run_hash)
        return record

    def frames(self):
        import pandas as pd

        rows = [self.records[h].row for h in sorted(self.records)]
        results = pd.DataFrame(rows)
        results = results[_column_order(results.columns)] if rows else results
        curves = [_curve(self.records[h]) for h in sorted(self.records) if self.records[h].curve is not None]
        return results, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())

    def failures(self) -> list[dict[str, Any]]:
        keys = ("hash", "status", "reason", "model", "data", "seed", "reinit.strategy", "train.mode")
        return [{k: r.row.get(k, "") for k in keys} | {"run_dir": str(self.out / "runs" / h)}
                for h, r in sorted(self.records.items()) if r.status != runfiles.FINISHED]

    def write(self):
        results, curves = self.frames()
        write_text(self.out / "results.csv", results.to_csv(index=False))
        write_text(self.out / "curves.csv", curves.to_csv(index=False))
        return results, curves


def _curve(record: RunRecord):
    curve = record.curve.copy()
    keys = {k: record.row.get(k) for k in CURVE_KEYS if k in record.row}
    for i, (key, value) in enumerate({"hash": record.row["hash"], **keys}.items()):
        curve.insert(i, key, value)
    return curve


def _column_order(columns: Sequence[str]) -> list[str]:
    lead = ["hash", "status", "reason"]
    config = [k for k in config_keys() if k in columns and k not in lead]
    return lead + config + sorted(c for c in columns if c not in lead and c not in config)


def collect(out: str | os.PathLike, *, write: bool = True):
    """Rebuild (results, curves, failures) from OUT/runs/*/; `write` also rewrites results.csv/curves.csv."""
    if not (Path(out) / "runs").is_dir():
        raise OutputError(f"{out} has no runs/ directory; run `replast sweep` first or check the path")
    store = Store(out).load()
    results, curves = store.write() if write else store.frames()
    return results, curves, store.failures()
