"""Studies: a YAML grid of fine-tuning runs, expanded into run directories, launched, resumed and collected.

    replast sweep --config studies/smoke.yaml --jobs 2      # then: replast report OUT

A study file has `name`, `out`, `base` (a FinetuneConfig dict for every run), `grid` and `runs`:

    grid:                      # every key is crossed with every other key
      seed: [0, 1, 2]          # dotted config key -> list of choices (a scalar means one choice)
      strategies:              # a list of mappings is a *group*: its key is only a label, each mapping is
        - {reinit.strategy: none}                  # expanded on its own (lists inside are crossed),
        - {reinit.strategy: targeted,              # and the union of all of them is one axis, so a
           reinit.fraction: [0.1, 0.3]}            # strategy's knobs only vary with that strategy.
    runs:                      # (alias: include) extra runs outside the grid, each expanded the same way
      - {train.mode: linear-probe, seed: [0, 1, 2]}

For list-valued fields (`reinit.exclude`) a choice is a list: `reinit.exclude: [[head], [head, stem]]`.
Each run is identified by a short sha256 of its resolved config without `out`/`overwrite`/`resume`, and
lives in `OUT/runs/<hash>/`; `OUT/study.json` ties OUT to one study name. Results: `collect` (results.csv,
curves.csv); launching: `replast.launchers`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from replast import launchers, runfiles
from replast.checkpoint import write_json, write_text
from replast.config import FinetuneConfig, validation_errors
from replast.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

STUDY_KEYS = ("name", "description", "out", "base", "grid", "runs", "include")
# Set per run by the sweep, so they never take part in a run's identity.
OPERATIONAL = ("out", "overwrite", "resume")
SHIPPED_STUDIES = Path(__file__).resolve().parents[2] / "studies"


@dataclass(frozen=True)
class Study:
    name: str
    out: str
    base: dict[str, Any]
    grid: dict[str, Any]
    runs: list[dict[str, Any]]
    hash: str
    path: str = ""


@dataclass(frozen=True)
class RunSpec:
    """One resolved run: `config` is the nested FinetuneConfig dict without the operational keys."""

    hash: str
    config: dict[str, Any]
    overrides: dict[str, Any]

    def run_dir(self, out: str | os.PathLike) -> Path:
        return Path(out) / "runs" / self.hash


# ---- dotted keys ---------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are values, not nesting."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def config_keys() -> dict[str, Any]:
    """Every valid dotted config key with its default value."""
    return flatten(FinetuneConfig().to_dict())


def _key_error(key: str, where: str, keys: Mapping[str, Any]) -> str | None:
    if key in OPERATIONAL:
        return f"{where}: {key!r} is set per run by the sweep; set the study's top-level `out` instead"
    if key in keys:
        return None
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # a bare leaf name such as `fraction` for `reinit.fraction`
        close = [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}"


# ---- loading and expansion -----------------------------------------------------------------------
def resolve_study_path(path: str | os.PathLike) -> Path:
    """A study file, or the name of a shipped study (smoke, demo, paper)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = SHIPPED_STUDIES / f"{candidate.stem}.yaml"
    if candidate.suffix in ("", ".yaml") and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_STUDIES.glob("*.yaml"))
    raise ConfigError(f"study file {str(path)!r} does not exist; give a YAML path or a shipped study: {', '.join(names)}")


def load_study(path: str | os.PathLike) -> Study:
    """Parse a study file; structural problems are all reported in one ConfigError."""
    file = resolve_study_path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{file} is not valid YAML ({' '.join(str(e).split())}); fix the syntax") from e
    return parse_study(raw, str(file))


def parse_study(raw: Any, path: str = "<study>") -> Study:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study must be a mapping with name, base, grid and runs")
    errors = []
    for key in raw:
        if key not in STUDY_KEYS:
            close = difflib.get_close_matches(str(key), STUDY_KEYS, n=1)
            errors.append(f"unknown study key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        errors.append("`name` must be a non-empty string")
    sections = {k: raw.get(k) or {} for k in ("base", "grid")}
    errors += [f"`{k}` must be a mapping" for k, v in sections.items() if not isinstance(v, dict)]
    runs = list(raw.get("runs") or []) + list(raw.get("include") or [])
    errors += [f"runs[{i}] must be a mapping" for i, r in enumerate(runs) if not isinstance(r, dict)]
    if errors:
        raise ConfigError(f"{path}: " + "; ".join(errors))
    content = {"name": name, "base": sections["base"], "grid": sections["grid"], "runs": runs}
    return Study(name=name, out=str(raw.get("out") or f"runs/{name}"), base=sections["base"],
                 grid=sections["grid"], runs=runs, hash=_digest(content), path=path)


def _digest(obj: Any, length: int = 12) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(config: Mapping[str, Any]) -> str:
    """Short sha256 of the canonical JSON of a resolved config, ignoring out/overwrite/resume."""
    return _digest({k: v for k, v in config.items() if k not in OPERATIONAL})


def _choices(key: str, value: Any, where: str, keys: Mapping[str, Any], errors: list[str]) -> list[dict]:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        points: list[dict] = []
        for i, sub in enumerate(value):
            points += _expand(flatten(sub), f"{where}.{key}[{i}]", keys, errors)
        return points
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        errors.append(f"{where}.{key}: mixes mappings and plain values; a group is a list of mappings only")
        return []
    values = value if isinstance(value, list) else [value]
    if not values:
        errors.append(f"{where}.{key}: empty list of choices; give at least one value")
    elif (problem := _key_error(key, where, keys)) is not None:
        errors.append(problem)
    elif isinstance(keys[key], list) and not all(isinstance(v, list) for v in values):
        errors.append(f"{where}.{key}: each choice must be a list, e.g. {key}: [[head], [head, stem]]")
    return [{key: v} for v in values]


def _expand(axes: Mapping[str, Any], where: str, keys: Mapping[str, Any], errors: list[str]) -> list[dict]:
    """Cross product of the axes of one grid (or group member, or run entry) as flat override dicts."""
    points: list[dict] = [{}]
    for key, value in axes.items():
        choices = _choices(key, value, where, keys, errors)
        clash = {k for p in points[:1] for c in choices for k in c if k in p}
        if clash:
            errors.append(f"{where}: {', '.join(sorted(clash))} set by more than one grid entry")
        points = [{**p, **c} for p in points for c in choices]
    return points


def expand(study: Study) -> list[RunSpec]:
    """Every distinct run of a study; one ConfigError lists all unknown keys and invalid values."""
    keys, errors = config_keys(), []
    base = flatten(study.base)
    errors += [e for k in base if (e := _key_error(k, "base", keys))]
    points = _expand(flatten(study.grid), "grid", keys, errors) if study.grid else []
    for i, entry in enumerate(study.runs):
        points += _expand(flatten(entry), f"runs[{i}]", keys, errors)
    if errors:
        raise ConfigError(f"{study.path}: " + "; ".join(dict.fromkeys(errors)))
    if not points:
        raise ConfigError(f"{study.path}: study {study.name!r} has no runs: grid and runs are empty; "
                          "add e.g. grid: {{seed: [0]}}")
    specs = [_resolve(base, p, errors) for p in points]
    if errors:
        raise ConfigError(f"{study.path}: " + "; ".join(dict.fromkeys(errors)))
    return _dedupe([s for s in specs if s is not None], study.name)


def _resolve(base: dict[str, Any], point: dict[str, Any], errors: list[str]) -> RunSpec | None:
    try:
        cfg = FinetuneConfig.from_dict(unflatten({**base, **point}))
        problems = validation_errors(cfg)
    except (ConfigError, TypeError) as e:
        problems = [str(e)]
    if problems:
        errors += [f"{p} (in run {json.dumps(point, default=str)})" for p in problems]
        return None
    config = {k: v for k, v in cfg.to_dict().items() if k not in OPERATIONAL}
    return RunSpec(hash=config_hash(config), config=config, overrides=point)


def _dedupe(specs: list[RunSpec], study_name: str) -> list[RunSpec]:
    unique: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.hash in unique:
            log.warning("study %s: run %s duplicates %s (same resolved config %s); running it once",
                        study_name, json.dumps(spec.overrides, default=str),
                        json.dumps(unique[spec.hash].overrides, default=str), spec.hash)
            continue
        unique[spec.hash] = spec
    return list(unique.values())


# ---- the results store ---------------------------------------------------------------------------
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


# ---- the sweep -----------------------------------------------------------------------------------
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
    write_json(path, {"name": study.name, "hash": study.hash, "file": study.path,
                      "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _triage(record: RunRecord, run_dir: Path) -> str:
    """new | skip | busy | resume | damaged, from what the run directory says and whether it is alive."""
    state = record.status
    if state != runfiles.FINISHED and launchers.is_alive(run_dir):
        return "busy"
    if state == "damaged":
        return "damaged"
    if state == runfiles.FINISHED:
        return "skip"
    return "new" if state in ("missing", "queued") else "resume"


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
    if not resume:
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


def sweep(study_path: str | os.PathLike, *, out: str | os.PathLike | None = None, launcher: str = "local",
          jobs: int = 1, force: bool = False, collect_only: bool = False,
          slurm: Mapping[str, Any] | None = None, wait: bool = True) -> SweepSummary:
    """Run every unfinished run of a study, then write results.csv and curves.csv.

    `jobs`: runs at once (local), or the most array tasks at once (slurm; 1 = no limit).
    `slurm`: partition, time_min, gpus_per_node, cpus_per_task, cluster (slurm | local | debug).
    `wait=False` (slurm only) returns once submitted; `replast sweep --collect` gathers results later.
    """
    study = load_study(study_path)
    specs = expand(study)
    out_dir = Path(out or study.out)
    summary = SweepSummary(study.name, out_dir, len(specs))
    if collect_only:
        results, _, summary.failures = collect(out_dir)
        summary.skipped = [h for h, st in zip(results["hash"], results["status"], strict=True) if st == "finished"]
        return summary
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"launcher={launcher!r}: valid: local, slurm")
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_out(out_dir, study, force)
    store = Store(out_dir).load()
    pending = _plan(out_dir, specs, store, summary)
    summary.launched = [j.hash for j in pending]
    store.write()

    def done(job: launchers.Job, status: str) -> None:
        if store.refresh(job.hash).status == runfiles.FINISHED:
            summary.finished.append(job.hash)
        store.write()

    if launcher == "local":
        launchers.run_local(pending, jobs, done)
    elif pending:
        options = {"name": study.name, **(slurm or {})}
        launchers.run_slurm(pending, out_dir / "slurm", options, done, parallel=jobs if jobs > 1 else 0, wait=wait)
    store.write()
    summary.failures = store.failures()
    return summary
