"""The results store of a study: run directories read into one tidy results.csv and one curves.csv.

    from replast.store import collect; results, curves, failures = collect("runs/smoke")
    from replast.store import merge; merge("runs/paper-gpu", into="docs/results/paper")

`read_run` never raises on a damaged run directory: it marks the run `damaged` with the reason, so a
sweep can set it aside and re-run it. `Store` keeps the rows in memory and rewrites the CSVs on update.
`merge` adds the finished runs of one OUT (a study spread over machines) to another's CSVs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from replast import runfiles
from replast.checkpoint import write_text
from replast.errors import OutputError
from replast.study import OPERATIONAL, config_keys, flatten, late_field_defaults

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
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
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
        # a run made before a field existed ran with what is now its default
        row.update({key: default for key, default in late_field_defaults().items() if key not in row})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
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


@dataclass
class CsvTable:
    """A CSV file as text cells, so rows pass through a merge byte for byte (no float reformatting)."""

    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> CsvTable:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        if any(None in row for row in rows):  # DictReader files extra cells under the key None
            raise OutputError(f"{path or 'a CSV table'} has rows with more cells than its header; "
                              "is it a replast results file?")
        return cls(list(reader.fieldnames or []), rows)

    def text(self) -> str:
        if not self.columns:
            return "\n"  # what pandas writes for an empty table
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def add_columns(self, columns: Sequence[str]) -> None:
        self.columns += [c for c in columns if c not in self.columns]


def _tables(out: Path) -> tuple[CsvTable, CsvTable]:
    """OUT's results and curves: rebuilt from runs/ when it has them (as collect would), else its CSV files."""
    if (out / "runs").is_dir():
        results, curves = Store(out).load().frames()
        texts = [results.to_csv(index=False), curves.to_csv(index=False)]
    elif (out / "results.csv").is_file():
        texts = [_read_csv_text(out / name) for name in ("results.csv", "curves.csv")]
    else:
        raise OutputError(f"{out} holds neither runs/ nor results.csv; pass a study's OUT directory")
    tables = CsvTable.parse(texts[0], out / "results.csv"), CsvTable.parse(texts[1], out / "curves.csv")
    for table, name in zip(tables, ("results.csv", "curves.csv"), strict=True):
        check_columns(out / name, table.columns)
    return tables


def _read_csv_text(path: Path) -> str:
    """A results folder's CSV file as text; "" when it is missing."""
    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OutputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); is it a replast results file?") from e
    except OSError as e:
        raise OutputError(f"cannot read {path} ({e.strerror or e}); check its permissions") from e


KEY_COLUMNS = {"results.csv": ("hash", "status"), "curves.csv": ("hash",)}


def check_columns(path: Path, columns: Sequence[str]) -> None:
    """A results.csv or curves.csv must have replast's key columns; one without any columns holds no runs yet."""
    missing = [c for c in KEY_COLUMNS[path.name] if c not in columns]
    if columns and missing:
        raise OutputError(f"{path} has no {', '.join(missing)} column; is it a replast results file?")


@dataclass
class MergeSummary:
    into: Path
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # unfinished in INTO, finished in the source
    kept: list[str] = field(default_factory=list)  # finished in both: INTO's row stays
    not_finished: list[str] = field(default_factory=list)  # source runs left out

    def __str__(self) -> str:
        return (f"merged into {self.into}: {len(self.added)} runs added, {len(self.replaced)} unfinished runs "
                f"replaced by finished ones, {len(self.kept)} already there (kept), {len(self.not_finished)} "
                f"unfinished in the source (left out)")


def merge(source: str | os.PathLike, into: str | os.PathLike) -> MergeSummary:
    """Add SOURCE's finished runs to INTO's results.csv and curves.csv (a study run in parts on several machines).

    INTO's rows, their order and their column order stay as they are; new columns are appended. A run already
    finished in INTO is kept, so merging twice changes nothing. INTO must not hold run directories: a sweep
    there rebuilds its CSVs from them and would drop the merged rows.
    """
    runfiles.check_creatable(into, directory=True, option="INTO")
    source, into = Path(source), Path(into)
    if (into / "runs").is_dir():
        raise OutputError(f"{into} holds run directories, whose sweep rewrites results.csv from them; "
                          "merge into a directory without runs/ (e.g. docs/results/NAME)")
    study, held = study_name(source), study_name(into)
    if study and held and study != held:
        raise OutputError(f"{source} holds study {study!r} but {into} holds study {held!r}; merge parts of "
                          "one study into one directory")
    results, curves = _tables(source)
    if (into / "results.csv").is_file():
        target, target_curves = _tables(into)
    else:
        target, target_curves = CsvTable(), CsvTable()
    summary = MergeSummary(into)
    position = {row["hash"]: i for i, row in enumerate(target.rows)}
    for row in results.rows:
        run_hash, i = row["hash"], position.get(row["hash"])
        if row["status"] != runfiles.FINISHED:
            summary.not_finished.append(run_hash)
        elif i is not None and target.rows[i]["status"] == runfiles.FINISHED:
            summary.kept.append(run_hash)
        elif i is None:
            summary.added.append(run_hash)
            target.rows.append(row)
        else:
            summary.replaced.append(run_hash)
            target.rows[i] = row
    taken = {*summary.added, *summary.replaced}
    target.add_columns(results.columns)
    target_curves.rows = [r for r in target_curves.rows if r["hash"] not in taken]
    target_curves.rows += [r for r in curves.rows if r["hash"] in taken]
    target_curves.add_columns(curves.columns)
    curves_text, results_text = target_curves.text(), target.text()  # both, before either is written
    runfiles.make_directory(into, option="INTO")
    write_text(into / "curves.csv", curves_text)
    write_text(into / "results.csv", results_text)
    if study and not held:  # INTO now holds this study's runs: a later merge of another study is refused
        write_text(into / "study.json", (source / "study.json").read_text())
    return summary


def study_name(out: Path) -> str | None:
    """The study an OUT (a sweep's, or a merge's INTO) holds, from its study.json; None when unknown."""
    try:
        return str(json.loads((Path(out) / "study.json").read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
