"""The files of one run directory: config.yaml, status.json, metrics.csv, final.json (see docs/CONTRACTS.md).

Every file is rewritten atomically, so a crash never leaves a half-written table, and a run counts as
finished only when status.json says so, which is written last.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from replast.checkpoint import write_json, write_text
from replast.errors import OutputError

FINISHED = "finished"


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's status record, None if it has none; a damaged file reads as status 'damaged'."""
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict) or "status" not in status:
            raise ValueError("no status field")
        return status
    except (ValueError, OSError) as e:
        return {"status": "damaged", "reason": f"unreadable status.json ({e})"}


def write_status(run_dir: str | os.PathLike, status: str, **extra: Any) -> None:
    record = {"status": status, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    write_json(Path(run_dir) / "status.json", record)


def prepare_run_dir(run_dir: str | os.PathLike, *, overwrite: bool, resume: bool) -> Path:
    """Check that `run_dir` can take this run; refuse to clobber a finished run unless asked."""
    path = Path(run_dir)
    status = read_status(path)
    if status and status["status"] == FINISHED and not overwrite:
        raise OutputError(f"{path} already holds a finished run; choose another --out or pass --overwrite")
    return make_directory(path)


def check_creatable(path: str | os.PathLike, *, directory: bool = False, option: str = "--out") -> None:
    """Fail before any work when `path` can never be written: it is empty, lies below a regular file, or is
    a regular file where a `directory` is wanted (a directory where a file is). `option` names the argument."""
    if not str(path).strip():
        raise OutputError(f"{option} is empty; name the output location")
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; choose a directory")
    if not directory and path.is_dir():
        raise OutputError(f"{option} {path} is a directory; name a file")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{option} {path} is not writable ({existing} is a file); choose another location")


def make_directory(path: str | os.PathLike, *, option: str = "--out") -> Path:
    """Create the output directory `path` (and its parents) and check that it takes files; one OutputError
    naming it when that fails."""
    check_creatable(path, directory=True, option=option)
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{option} {path} is not writable ({e.strerror}); choose another directory") from e
    return path


def clear_previous(run_dir: str | os.PathLike) -> None:
    """Remove the records of an earlier run (for --overwrite), once the new run is known to start."""
    for name in ("final.json", "metrics.csv", "plasticity.csv", "status.json", "reinit_report.json",
                 "diagnosis.json", "autoscope.json"):
        (Path(run_dir) / name).unlink(missing_ok=True)
    for name in ("last.pt", "best.pt"):
        (Path(run_dir) / "checkpoints" / name).unlink(missing_ok=True)


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    write_text(Path(run_dir) / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Rewrite a CSV from all rows (union of their keys, first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
