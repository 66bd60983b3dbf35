"""Study files: a YAML grid of fine-tuning runs, parsed, expanded into resolved configs and hashed.

    from replast.study import load_study, expand; specs = expand(load_study("smoke"))

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
lives in `OUT/runs/<hash>/`. Running a study: `replast.experiment.sweep`; its results: `replast.store`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser, get_loader

from replast.config import FinetuneConfig, validation_errors
from replast.errors import ConfigError

log = logging.getLogger(__name__)

STUDY_KEYS = ("name", "description", "out", "base", "grid", "runs", "include")
# Set per run by the sweep, so they never take part in a run's identity.
OPERATIONAL = ("out", "overwrite", "resume")
# Config fields added since the studies' runs were published: at their default they leave a run's hash as
# it was, so published run directories still resume (docs/results/paper/runs*.tgz).
LATE_FIELDS = ("reinit.unpaired",)
SHIPPED_STUDIES = Path(__file__).resolve().parent / "studies"  # packaged, so installs without the repo work
# The command line's YAML reader: it reads 1e-4 as a number, where PyYAML's YAML 1.1 rules read text.
read_yaml = get_loader("yaml")


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


@functools.cache
def late_field_defaults() -> dict[str, Any]:
    """{dotted key: default} of LATE_FIELDS, read from the config classes."""
    defaults = config_keys()
    return {key: defaults[key] for key in LATE_FIELDS}


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


@functools.cache
def _config_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FinetuneConfig, nested_key=None)
    return parser


def _type_error(key: str, value: Any, where: str) -> str | None:
    """The command line's type check of one study value (a study's values do not pass through its parser)."""
    error = _checked_type(key, json.dumps(value, default=str), where)
    if error and isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no unquoted as booleans
        error += f"; YAML read {key}'s value as {str(value).lower()}: quote it ('off', 'on') if you meant the text"
    return error


@functools.cache
def _checked_type(key: str, value_json: str, where: str) -> str | None:
    try:
        _config_parser().parse_object(unflatten({key: json.loads(value_json)}))
    except ArgumentError as e:
        return f"{where}: {' '.join(str(e).split())}"
    return None


# ---- loading and expansion -----------------------------------------------------------------------
def resolve_study_path(path: str | os.PathLike) -> Path:
    """A study file, or a shipped study: its name (smoke, demo, paper) or the repository's studies/NAME.yaml."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = SHIPPED_STUDIES / f"{candidate.stem}.yaml"
    # not any missing NAME.yaml: an edited copy elsewhere, mistyped, must not run the shipped study instead
    if candidate.suffix in ("", ".yaml") and candidate.parent.name in ("", "studies") and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_STUDIES.glob("*.yaml"))
    raise ConfigError(f"study file {str(path)!r} does not exist; give a YAML path or a shipped study: {', '.join(names)}")


def load_study(path: str | os.PathLike) -> Study:
    """Parse a study file; structural problems are all reported in one ConfigError."""
    file = resolve_study_path(path)
    try:
        raw = read_yaml(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"cannot read study file {file} ({e.strerror or e}); check the path") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{file} is not valid YAML ({' '.join(str(e).split())}); fix the syntax") from e
    if twice := repeated_keys(file.read_text(encoding="utf-8")):
        raise ConfigError(f"{file}: {', '.join(twice)} written twice (YAML keeps only the last); keep one of each")
    return parse_study(raw, str(file))


def repeated_keys(text: str) -> list[str]:
    """'KEY (line N)' for each key a mapping of this YAML text repeats: a YAML reader silently keeps the last."""
    found: list[str] = []
    stack = [yaml.compose(text, Loader=yaml.SafeLoader)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in seen:
                    found.append(f"{key.value} (line {key.start_mark.line + 1})")
                seen.add(getattr(key, "value", None))
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return sorted(found)


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
    runs: list[Any] = []
    for key in ("runs", "include"):
        entries = raw.get(key)
        if isinstance(entries, list):
            runs += entries
        elif entries is not None:
            errors.append(f"`{key}` must be a list of mappings, one `- {{KEY: VALUE}}` per run")
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
    """Short sha256 of the canonical JSON of a resolved config, ignoring out/overwrite/resume; a field added
    after run directories were published counts only when set away from its default (LATE_FIELDS)."""
    kept = {k: v for k, v in config.items() if k not in OPERATIONAL}
    for dotted, default in late_field_defaults().items():
        section, _, key = dotted.partition(".")
        values = kept.get(section)
        if isinstance(values, Mapping) and values.get(key, default) == default:
            kept[section] = {k: v for k, v in values.items() if k != key}
    return _digest(kept)


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
    else:
        errors += [e for v in values if (e := _type_error(key, v, where))]
    return [{key: v} for v in values]


def _expand(axes: Mapping[str, Any], where: str, keys: Mapping[str, Any], errors: list[str]) -> list[dict]:
    """Cross product of the axes of one grid (or group member, or run entry) as flat override dicts."""
    points: list[dict] = [{}]
    for key, value in axes.items():
        choices = _choices(key, value, where, keys, errors)
        # every point meets every choice, and a group's members may set different keys
        clash = set().union(*points) & set().union(*choices)
        if clash:
            errors.append(f"{where}: {', '.join(sorted(clash))} set by more than one grid entry")
        points = [{**p, **c} for p in points for c in choices]
    return points


def expand(study: Study) -> list[RunSpec]:
    """Every distinct run of a study; one ConfigError lists all unknown keys and invalid values."""
    keys, errors = config_keys(), []
    base = flatten(study.base)
    errors += [e for k, v in base.items() if (e := _key_error(k, "base", keys) or _type_error(k, v, "base"))]
    points = _expand(flatten(study.grid), "grid", keys, errors) if study.grid else []
    for i, entry in enumerate(study.runs):
        points += _expand(flatten(entry), f"runs[{i}]", keys, errors)
    if errors:
        raise ConfigError(f"{study.path}: " + "; ".join(dict.fromkeys(errors)))
    if not points:
        raise ConfigError(f"{study.path}: study {study.name!r} has no runs: grid and runs are empty; "
                          "add e.g. grid: {seed: [0]}")
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


# ---- parts of a study ----------------------------------------------------------------------------
def select(specs: list[RunSpec], only: str | None) -> list[RunSpec]:
    """The runs matching every filter of `only`: "KEY=VALUE[,VALUE…] KEY=…" (values read as YAML).

    Lets a study run in parts (`--only "data=animal-mnist train_fraction=0.05"`); the other runs stay
    queued for a later sweep. One ConfigError lists every malformed filter and unknown key.
    """
    if not only or not only.strip():
        return specs
    keys, errors, wanted = config_keys(), [], {}
    for item in only.split():
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            errors.append(f"filter {item!r} is not KEY=VALUE[,VALUE…] (e.g. data=br35h,animal-mnist)")
        elif error := _key_error(key, "--only", keys):
            errors.append(error)
        elif key in wanted:
            errors.append(f"--only: {key!r} is given twice; list its values in one filter, {key}=A,B")
        else:
            try:  # commas inside [...] belong to a list value (reinit.exclude=[head,stem])
                wanted[key] = [read_yaml(v) for v in re.split(r",(?![^\[]*\])", values)]
            except yaml.YAMLError as e:
                errors.append(f"filter {item!r}: {' '.join(str(e).split())[:120]}")
    if errors:
        raise ConfigError("; ".join(errors))
    chosen = [s for s in specs if all(flatten(s.config).get(k) in vs for k, vs in wanted.items())]
    if not chosen:
        raise ConfigError(f"--only {only!r} matches none of the study's {len(specs)} runs; "
                          "check the values against the study file")
    return chosen
