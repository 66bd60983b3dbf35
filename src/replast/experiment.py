"""Sweeps: every unfinished run of a study launched into OUT/runs/<hash>/, resumed, and collected.

    replast sweep --config studies/smoke.yaml --jobs 2      # then: replast report OUT

The study file format, expansion and run hashes live in `replast.study`; reading run directories into
results.csv/curves.csv in `replast.store`; where runs execute in `replast.launchers`. `OUT/study.json`
ties OUT to one study name. `collect`, `load_study`, `expand` and `config_hash` are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from replast import launchers, runfiles
from replast.checkpoint import write_json
from replast.config import FinetuneConfig
from replast.errors import ConfigError, OutputError
from replast.store import RunRecord, Store, collect
from replast.study import RunSpec, Study, config_hash, expand, load_study, select

__all__ = ["SweepSummary", "claim_out", "collect", "config_hash", "expand", "load_study", "sweep"]

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    study: str
    out: Path
    total: int
    skipped: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    damaged: list[dict[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = [f"study {self.study!r} in {self.out}: {self.total} runs, {len(self.skipped)} already finished, "
                 f"{len(self.launched)} launched, {len(self.finished)} finished now, {len(self.damaged)} damaged "
                 f"(moved to damaged/ and re-run), {len(self.busy)} still running elsewhere, "
                 f"{len(self.failures)} not finished; results: {self.out / 'results.csv'}"]
        lines += [f"  {f['hash']} {f['status']}: {f['reason']}" for f in self.failures]
        return "\n".join(lines)


def claim_out(out: Path, study: Study, force: bool) -> None:
    """Tie OUT to one study name: another study's OUT is refused unless forced; edits are allowed."""
    check_claim(out, study, force)
    write_json(out / "study.json", {"name": study.name, "hash": study.hash, "file": study.path,
                                    "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def check_claim(out: Path, study: Study, force: bool) -> None:
    """claim_out's refusals, writing nothing: OUT of another study (unless forced), or OUT holding merged results
    (results.csv without runs/), which a sweep would rebuild from its own runs alone."""
    if (out / "results.csv").is_file() and not (out / "runs").is_dir() and not force:
        raise OutputError(f"{out} holds results.csv without runs/ (as `replast merge` writes them): a sweep "
                          "rebuilds results.csv from runs/ and would drop its rows; sweep into another --out and "
                          "merge that, or pass --force")
    path = out / "study.json"
    if path.exists() and not force:
        try:
            previous = json.loads(path.read_text())
            name = previous["name"]
        except (OSError, ValueError, KeyError, TypeError):
            raise OutputError(f"{path} is unreadable; pass --force to reuse {out} for study {study.name!r}") from None
        if name != study.name:
            raise OutputError(f"{out} holds study {name!r}, not {study.name!r}; choose another --out or pass --force")
        if previous.get("hash") != study.hash:
            log.warning("study %s changed since %s was last swept; finished runs are kept, new ones added",
                        study.name, out)


def _triage(record: RunRecord, run_dir: Path) -> str:
    """new | skip | busy | resume | damaged, from what the run directory says and whether it is alive."""
    state = record.status
    if state != runfiles.FINISHED and launchers.is_alive(run_dir):
        return "busy"
    if state == "damaged":
        return "damaged"
    if state == runfiles.FINISHED:
        return "skip"
    if state in ("missing", "queued"):  # queued: also a resume that never started (its last.pt is there)
        return "resume" if (run_dir / "checkpoints" / "last.pt").exists() else "new"
    return "resume"


def _set_aside(out: Path, run_dir: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = out / "damaged" / f"{run_dir.name}-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    return target


def _prepare(spec: RunSpec, run_dir: Path, resume: bool) -> launchers.Job:
    config = FinetuneConfig.from_dict({**spec.config, "out": str(run_dir.resolve()), "resume": resume})
    run_dir.mkdir(parents=True, exist_ok=True)
    runfiles.write_config(run_dir, config.to_dict())
    # also for a resume: a stale status (interrupted, failed:…) must not outlive an attempt that dies
    # before writing its own, or `launchers.finish` reports the old one
    runfiles.write_status(run_dir, "queued")
    return launchers.Job(spec.hash, run_dir / "config.yaml")


def _plan(out: Path, specs: list[RunSpec], store: Store, summary: SweepSummary) -> list[launchers.Job]:
    jobs = []
    for spec in specs:
        run_dir = spec.run_dir(out)
        action = _triage(store.refresh(spec.hash), run_dir) if run_dir.exists() else "new"
        if action == "skip":
            summary.skipped.append(spec.hash)
        elif action == "busy":
            summary.busy.append(spec.hash)
        else:
            if action == "damaged":
                moved = _set_aside(out, run_dir)
                summary.damaged.append({"hash": spec.hash, "reason": store.records[spec.hash].row["reason"],
                                        "moved_to": str(moved)})
            jobs.append(_prepare(spec, run_dir, resume=action == "resume"))
            store.refresh(spec.hash)
    return jobs


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def progress_line(done: int, total: int, record: RunRecord, elapsed_s: float) -> str:
    """One line per run a sweep has seen end: which, how it ended, and the time left at this sweep's pace."""
    row = record.row
    what = [str(row[k]) for k in ("model", "data", "reinit.strategy") if row.get(k) not in (None, "")]
    what += [f"seed {row['seed']}"] if row.get("seed") not in (None, "") else []
    what_text = f" ({' '.join(what)})" if what else ""
    acc = row.get("test_acc")
    result = f", test acc {acc:.4f}" if isinstance(acc, (int, float)) and record.status == runfiles.FINISHED else ""
    left = elapsed_s / done * (total - done)
    pace = f"; {_duration(elapsed_s)} so far, ~{_duration(left)} left" if done < total else \
        f"; {_duration(elapsed_s)} in all"
    return f"[{done}/{total}] {row['hash']} {record.status}{what_text}{result}{pace}"


def sweep(study_path: str | os.PathLike, *, out: str | os.PathLike | None = None, launcher: str = "local",
          jobs: int = 1, force: bool = False, collect_only: bool = False,
          slurm: Mapping[str, Any] | None = None, wait: bool = True, only: str | None = None,
          on_progress: Callable[[str], None] | None = None) -> SweepSummary:
    """Run every unfinished run of a study, then write results.csv and curves.csv.

    `jobs`: runs at once (local), or the most array tasks at once (slurm; 1 = no limit).
    `slurm`: partition, time_min, gpus_per_node, cpus_per_task, cluster (slurm | local | debug).
    `wait=False` (slurm only) returns once submitted; `replast sweep --collect` gathers results later.
    `only`: run just the matching part of the study (see `replast.study.select`).
    `on_progress`: called with a `progress_line` each time one of the launched runs ends.
    """
    study = load_study(study_path)
    specs = select(expand(study), only)
    out_dir = Path(out or study.out)
    summary = SweepSummary(study.name, out_dir, len(specs))
    if collect_only:
        results, _, summary.failures = collect(out_dir)
        if len(results):  # an empty runs/ gives a table without columns
            summary.skipped = [h for h, st in zip(results["hash"], results["status"], strict=True) if st == "finished"]
        return summary
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"launcher={launcher!r}: valid: local, slurm")
    if jobs < 1:  # checked before OUT is touched: nothing is queued for a sweep that cannot start
        raise ConfigError(f"jobs={jobs}: must be at least 1")
    check_claim(out_dir, study, force)  # before the executor: submitit's local one creates OUT/slurm
    if launcher == "slurm":  # likewise: no srun here
        executor = launchers.slurm_executor(out_dir / "slurm", {"name": study.name, **(slurm or {})},
                                            parallel=jobs if jobs > 1 else 0)
    runfiles.make_directory(out_dir)
    claim_out(out_dir, study, force)
    store = Store(out_dir).load()
    pending = _plan(out_dir, specs, store, summary)
    summary.launched = [j.hash for j in pending]
    started, ended = time.monotonic(), 0
    store.write()
    # The CSVs hold every run of OUT: a rewrite after each run is quadratic (seconds each at 3,000 runs), so
    # one waits until ten times the last one's duration has passed; the end of the sweep always writes.
    written, write_s = time.monotonic(), time.monotonic() - started

    def done(job: launchers.Job, status: str) -> None:
        nonlocal ended, written, write_s
        record = store.refresh(job.hash)
        if record.status == runfiles.FINISHED:
            summary.finished.append(job.hash)
        elif status == "busy":  # another sweep of this OUT took it while it waited
            summary.busy.append(job.hash)
        if time.monotonic() - written >= 10 * write_s:
            before = time.monotonic()
            store.write()
            written = time.monotonic()
            write_s = written - before
        ended += 1
        if on_progress is not None:
            on_progress(progress_line(ended, len(pending), record, time.monotonic() - started))

    try:
        if launcher == "local":
            launchers.run_local(pending, jobs, done)
        elif pending:
            launchers.run_slurm(pending, out_dir / "slurm", executor, done, wait=wait)
    finally:  # also when interrupted: the CSVs as the runs stand
        # read afresh: another sweep of this OUT (another --only part) may have ended runs since this one started
        final = Store(out_dir).load()
        final.write()
    # Only this sweep's runs count: another sweep's queued or running runs are not failures of this one.
    own = {spec.hash for spec in specs} - set(summary.busy)
    summary.failures = [f for f in final.failures() if f["hash"] in own]
    return summary
