"""Studies: expansion and hashing, bad study files, sweeps with a fake trainer (skip, resume, damage, crash,
SIGKILL, GPU pinning, SLURM via submitit's debug executor), the results store, and the real smoke study."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from replast import launchers
from replast.config import FinetuneConfig
from replast.errors import ConfigError, OutputError
from replast.experiment import collect, config_hash, expand, load_study, progress_line, sweep
from replast.store import RunRecord, Store, merge
from replast.study import parse_study, select

ROOT = Path(__file__).resolve().parents[1]


def write_study(path: Path, **content) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def study_file(tmp_path):
    return write_study(
        tmp_path / "tiny.yaml", name="tiny", out=str(tmp_path / "out"),
        base={"model": "resnet10t", "weights": "none", "data": "synthetic", "epochs": 3},
        grid={"seed": [0, 1], "strategies": [{"reinit.strategy": "none"},
                                             {"reinit.strategy": "targeted", "reinit.fraction": [0.1, 0.3]}]},
    )


def statuses(out: Path) -> dict[str, str]:
    return {d.name: json.loads((d / "status.json").read_text())["status"] for d in (out / "runs").iterdir()}


# ---- expansion and hashing -----------------------------------------------------------------------
def test_hash_depends_on_content_not_key_order_or_output():
    a = {"model": "m", "seed": 1, "train": {"lr": 0.1, "mode": "finetune"}}
    b = {"train": {"mode": "finetune", "lr": 0.1}, "seed": 1, "model": "m", "out": "/x", "resume": True}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 2})
    assert len(config_hash(a)) == 12


def test_hash_of_the_default_config_is_pinned_and_late_fields_count_only_when_set():
    # Published run directories are named by this hash: a new config field must not rename them (LATE_FIELDS).
    config = FinetuneConfig().to_dict()
    assert config_hash(config) == "53f738c63f8c"
    config["reinit"]["unpaired"] = "skip"
    assert config_hash(config) != "53f738c63f8c"


def test_grid_is_crossed_and_groups_expand_on_their_own():
    study = parse_study({"name": "s", "base": {"epochs": 2}, "grid": {
        "model": ["a", "b"], "seed": [0, 1, 2],
        "strategies": [{"reinit.strategy": "none"},
                       {"reinit.strategy": "targeted", "reinit.utility": ["magnitude", "taylor"],
                        "reinit.fraction": [0.1, 0.3]}]}})
    specs = expand(study)
    assert len(specs) == 2 * 3 * (1 + 4)
    assert len({s.hash for s in specs}) == len(specs)
    none = [s for s in specs if s.config["reinit"]["strategy"] == "none"]
    assert {s.config["reinit"]["fraction"] for s in none} == {0.1}  # knobs do not expand with `none`
    assert {s.config["reinit"]["utility"] for s in none} == {"taylor"}
    assert all(s.config["epochs"] == 2 for s in specs)


def test_nested_groups_runs_entries_and_nested_dict_syntax():
    study = parse_study({"name": "s", "grid": {"train": {"lr": [0.1, 0.01]}, "arms": [
        {"reinit.strategy": "redo"},
        {"reinit.strategy": "targeted", "knobs": [{"reinit.utility": "fisher"},
                                                 {"reinit.utility": "random", "reinit.level": ["weight", "unit"]}]},
    ]}, "include": [{"train.mode": "linear-probe", "seed": [0, 1]}]})
    specs = expand(study)
    assert len(specs) == 2 * (1 + 1 + 2) + 2
    probes = [s for s in specs if s.config["train"]["mode"] == "linear-probe"]
    assert sorted(s.config["seed"] for s in probes) == [0, 1]


def test_list_valued_fields_take_lists_as_choices():
    study = parse_study({"name": "s", "grid": {"reinit.exclude": [["head"], ["head", "stem"]]}})
    assert [s.config["reinit"]["exclude"] for s in expand(study)] == [["head"], ["head", "stem"]]
    with pytest.raises(ConfigError, match=r"each choice must be a list"):
        expand(parse_study({"name": "s", "grid": {"reinit.exclude": ["head", "stem"]}}))


def test_unknown_keys_are_all_listed_with_the_closest_valid_name():
    study = parse_study({"name": "s", "base": {"epocs": 2, "train": {"lrr": 0.1}}, "grid": {
        "reinit.fracton": [0.1], "seed": [0],
        "arms": [{"reinit.strategy": "targeted", "reinit.utilty": ["taylor"]}]},
        "runs": [{"modle": "x"}]})
    with pytest.raises(ConfigError) as info:
        expand(study)
    message = str(info.value)
    for bad, good in [("epocs", "epochs"), ("train.lrr", "train.lr"), ("reinit.fracton", "reinit.fraction"),
                      ("reinit.utilty", "reinit.utility"), ("modle", "model")]:
        assert f"unknown key {bad!r} (did you mean {good!r}?)" in message


def test_invalid_values_and_sweep_owned_keys_are_reported_together():
    study = parse_study({"name": "s", "grid": {"reinit.fraction": [0.1, 1.5], "epochs": [0, 1]}})
    with pytest.raises(ConfigError) as info:
        expand(study)
    assert "reinit.fraction=1.5" in str(info.value) and "epochs=0" in str(info.value)
    with pytest.raises(ConfigError, match="set per run by the sweep"):
        expand(parse_study({"name": "s", "base": {"out": "x"}, "grid": {"seed": [0]}}))


def test_values_are_read_and_type_checked_as_on_the_command_line(tmp_path):
    # PyYAML reads 1e-4 as text; the command line's reader (jsonargparse) reads a number, and so do studies
    (tmp_path / "lr.yaml").write_text("name: s\ngrid: {train.lr: [1e-4, 3e-4]}\n")
    specs = expand(load_study(tmp_path / "lr.yaml"))
    assert [s.config["train"]["lr"] for s in specs] == [1e-4, 3e-4]
    assert select(specs, "train.lr=3e-4") == specs[1:]
    study = parse_study({"name": "s", "base": {"epochs": 2.5}, "grid": {
        "train.mode": ["linearprobe"], "reinit.exclude": [["head", 3]], "image_size": [None, "big"]}})
    with pytest.raises(ConfigError) as info:
        expand(study)
    reported = str(info.value)
    for key, got in [("epochs", "2.5"), ("train.mode", "linearprobe"), ("reinit.exclude", "3"), ("image_size", "big")]:
        assert f'Parser key "{key}"' in reported and f"Given value: {got}" in reported.replace("Got value:", "Given value:")
    assert reported.count("image_size") == 1  # null is a valid image_size, "big" is not


@pytest.mark.parametrize("content, match", [
    ({"name": "s"}, "has no runs"),
    ({"name": "s", "grid": {}}, "has no runs"),
    ({"name": "s", "grid": {"seed": []}}, "empty list of choices"),
    ({"name": "s", "grid": {"seed": [0]}, "gird": {}}, "unknown study key 'gird' .did you mean 'grid'"),
    ({"grid": {"seed": [0]}}, "`name` must be a non-empty string"),
    ({"name": "s", "grid": {"x": [{"seed": 0}, 1]}}, "mixes mappings and plain values"),
    ({"name": "s", "grid": {"seed": [0], "g": [{"seed": 1}]}}, "seed set by more than one grid entry"),
    # a key set by a later member of a group, not the first, still clashes (else one silently wins)
    ({"name": "s", "grid": {"g": [{"seed": 0}, {"epochs": 2, "reinit.fraction": [0.1, 0.3]}],
                            "reinit.fraction": [0.5]}}, "reinit.fraction set by more than one grid entry"),
    ({"name": "s", "runs": 5}, "`runs` must be a list of mappings"),
    ({"name": "s", "include": {"seed": 1}}, "`include` must be a list of mappings"),
])
def test_bad_study_files(content, match):
    with pytest.raises(ConfigError, match=match):
        expand(parse_study(content))


def test_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist.*smoke"):
        load_study(tmp_path / "nope.yaml")
    # a missing copy of a shipped study elsewhere is not silently replaced by the shipped one
    with pytest.raises(ConfigError, match="experiments/paper.yaml' does not exist"):
        load_study(tmp_path / "experiments" / "paper.yaml")
    assert load_study("smoke").name == load_study("studies/smoke.yaml").name == "smoke"  # shipped, or the repo's
    (tmp_path / "latin1.yaml").write_bytes("name: s\n# café\ngrid: {seed: [0]}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml is not UTF-8 text"):
        load_study(tmp_path / "latin1.yaml")
    # a key written twice: YAML readers keep the last silently, and a grid loses its first axis
    (tmp_path / "twice.yaml").write_text("name: s\ngrid:\n  seed: [0, 1]\n  epochs: [1]\n  seed: [2]\n"
                                         "runs:\n  - {seed: 3, seed: 4}\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: seed \(line 5\), seed \(line 7\) written twice"):
        load_study(tmp_path / "twice.yaml")
    # `off` unquoted is YAML 1.1's false: the error says so
    (tmp_path / "off.yaml").write_text("name: s\nbase: {device_cache: off}\ngrid: {seed: [0]}\n")
    with pytest.raises(ConfigError, match=r"device_cache.*read device_cache's value as false: quote it"):
        expand(load_study(tmp_path / "off.yaml"))
    (tmp_path / "quoted.yaml").write_text("name: s\nbase: {device_cache: 'off'}\ngrid: {seed: [0]}\n")
    assert expand(load_study(tmp_path / "quoted.yaml"))


def test_duplicates_run_once_with_a_warning(caplog):
    study = parse_study({"name": "s", "grid": {"seed": [0, 0, 1]}, "runs": [{"seed": 1, "epochs": 10}]})
    with caplog.at_level(logging.WARNING, logger="replast.study"):
        specs = expand(study)
    assert len(specs) == 2
    assert sum("duplicates" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("name, runs", [("smoke", 4), ("demo", None), ("paper", 3105), ("options", 23 * 3),
                                        ("baseline_lr", 2 * 3 * 3 * 5 * 3), ("options_confirm", 4 * 5 * 2),
                                        ("cpu", 10 * 3), ("redo_unpaired", 6 * 5 * 3)])
def test_shipped_studies_expand(name, runs):
    specs = expand(load_study(name))
    assert runs is None or len(specs) == runs
    assert len({s.hash for s in specs}) == len(specs)


def test_paper_study_has_every_strategy_utility_and_fraction():
    specs = expand(load_study("paper"))
    targeted = [s.config["reinit"] for s in specs if s.config["reinit"]["strategy"] == "targeted"]
    assert {r["utility"] for r in targeted} == {"magnitude", "taylor", "fisher", "random"}
    assert {r["fraction"] for r in targeted} == {0.05, 0.1, 0.2, 0.3}
    # fraction only means something with scope all; scope auto sets per-layer fractions itself
    assert {(r["scope"], r["fraction"]) for r in targeted if r["utility"] == "taylor"} == {
        ("all", 0.05), ("all", 0.1), ("all", 0.2), ("all", 0.3), ("auto", 0.1)}
    strategies = {(s.config["reinit"]["strategy"], s.config["train"]["mode"]) for s in specs}
    assert {("none", "finetune"), ("none", "linear-probe"), ("reinit-all", "finetune"), ("redo", "finetune"),
            ("shrink-perturb", "finetune"), ("reinit-top-layers", "finetune")} <= strategies
    assert {s.config["seed"] for s in specs} == set(range(5))


def test_redo_unpaired_study_reuses_the_paper_studys_runs():
    paper = {s.hash for s in expand(load_study("paper"))}
    specs = expand(load_study("redo_unpaired"))
    new = [s for s in specs if s.hash not in paper]
    assert len(new) == 30 and all(s.config["reinit"]["unpaired"] == "skip" for s in new)


# ---- parts of a study (--only) --------------------------------------------------------------------
def test_only_selects_the_matching_part_of_the_paper_study():
    specs = expand(load_study("paper"))
    part = select(specs, "model=mobilenetv2_100 data=animal-mnist train_fraction=0.05")
    assert len(part) == 23 * 5  # every strategy variant and seed of one model x dataset x size cell
    assert {(s.config["model"], s.config["data"], s.config["train_fraction"]) for s in part} == {
        ("mobilenetv2_100", "animal-mnist", 0.05)}
    assert len(select(specs, "data=br35h,animal-mnist seed=0 reinit.utility=taylor reinit.strategy=targeted")) == 3 * 2 * 3 * 5
    assert select(specs, "  ") == specs


@pytest.mark.parametrize("only, match", [
    ("modle=x", "unknown key 'modle' .did you mean 'model'"),
    ("data", "'data' is not KEY=VALUE"),
    ("data= seed=0", "'data=' is not KEY=VALUE"),
    ("data=nope", "matches none of the study's"),
    ("modle=x fraction", "unknown key 'modle'.*'fraction' is not KEY=VALUE"),  # all problems at once
    ("seed=0 data=br35h seed=1", "'seed' is given twice.*seed=A,B"),  # not: the last one silently wins
])
def test_only_errors(only, match):
    with pytest.raises(ConfigError, match=match):
        select(expand(load_study("paper")), only)


# ---- sweeps with the fake trainer ----------------------------------------------------------------
def test_sweep_runs_all_then_skips_finished(fake_trainer, study_file, tmp_path):
    summary = sweep(study_file, jobs=2)
    out = tmp_path / "out"
    assert summary.ok and len(summary.finished) == summary.total == 6
    assert set(statuses(out).values()) == {"finished"}
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and {"reinit.fraction", "test_acc", "wall_time_s", "final.epochs"} <= set(results)
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 6 * 3 and {"hash", "model", "seed", "reinit.strategy", "val_acc"} <= set(curves)
    assert json.loads((out / "study.json").read_text())["name"] == "tiny"
    again = sweep(study_file)
    assert again.launched == [] and len(again.skipped) == 6


def test_sweep_only_runs_one_part_and_a_later_sweep_the_rest(fake_trainer, study_file, tmp_path, cli):
    code, out, _ = cli("sweep", "--config", study_file, "--only", "reinit.strategy=targeted seed=1")
    assert code == 0 and "2 launched" in " ".join(out.split())
    assert sorted(statuses(tmp_path / "out").values()) == ["finished"] * 2
    rest = sweep(study_file)
    assert len(rest.skipped) == 2 and len(rest.finished) == 4


def test_a_sweep_prints_a_line_as_each_run_ends(fake_trainer, study_file, tmp_path, cli):
    code, out, _ = cli("sweep", "--config", study_file, "--only", "seed=1")
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert code == 0 and [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert all(" finished (" in line and "test acc " in line for line in lines)
    assert "left" in lines[0] and lines[-1].endswith("in all")


def test_progress_line_known_answers():
    row = {"hash": "abc", "model": "mobilenetv2_100", "data": "br35h", "reinit.strategy": "redo", "seed": 3,
           "test_acc": 0.93456}
    line = progress_line(2, 5, RunRecord({**row, "status": "finished"}), elapsed_s=600)
    assert line == "[2/5] abc finished (mobilenetv2_100 br35h redo seed 3), test acc 0.9346; 10 min so far, ~15 min left"
    line = progress_line(5, 5, RunRecord({"hash": "abc", "status": "failed:crash", "seed": 0}), elapsed_s=4000)
    assert line == "[5/5] abc failed:crash (seed 0); 1 h 07 min in all"
    assert progress_line(1, 2, RunRecord({"hash": "x", "status": "damaged"}), 30) == "[1/2] x damaged; 0 min so far, ~0 min left"
    # A line never stops a sweep: a finished run whose final.json lacks the accuracy just leaves it out.
    assert progress_line(1, 1, RunRecord({"hash": "x", "status": "finished"}), 0) == "[1/1] x finished; 0 min in all"


def test_a_sweep_reports_only_its_own_runs_as_not_finished(fake_trainer, study_file, tmp_path):
    # Two `--only` sweeps side by side: one's queued runs must not make the other fail.
    first = sweep(study_file, only="seed=0")
    other = tmp_path / "out" / "runs" / first.finished[0]
    (other / "status.json").write_text(json.dumps({"status": "queued", "updated": "x"}))
    second = sweep(study_file, only="seed=1")
    assert len(second.finished) == 3 and second.failures == [] and second.ok
    assert [f["hash"] for f in sweep(study_file, collect_only=True).failures] == [other.name]


def test_crash_is_isolated_listed_and_resumed(fake_trainer, tmp_path, monkeypatch):
    study = write_study(tmp_path / "s.yaml", name="s", out=str(tmp_path / "out"),
                        base={"epochs": 2}, grid={"seed": [0, 13]}, runs=[{"data": "bad"}])
    monkeypatch.setenv("FAKE_CRASH", "1")
    summary = sweep(study)
    failed = {f["status"]: f for f in summary.failures}
    assert set(failed) == {"failed:crash", "failed:bad-input"} and len(summary.finished) == 1
    assert "simulated crash" in failed["failed:crash"]["reason"]
    assert "unknown dataset 'bad'" in failed["failed:bad-input"]["reason"]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(results["status"]) == ["failed:bad-input", "failed:crash", "finished"]
    monkeypatch.setenv("FAKE_CRASH", "0")
    again = sweep(study)
    assert len(again.launched) == 2 and len(again.finished) == 1
    crashed = tmp_path / "out" / "runs" / failed["failed:crash"]["hash"]
    assert (crashed / "attempts.txt").read_text().splitlines() == ["resume=False", "resume=True"]


def test_running_run_is_resumed_when_dead_and_left_alone_when_alive(fake_trainer, study_file, tmp_path):
    sweep(study_file)
    out = tmp_path / "out"
    dead, alive = sorted((out / "runs").iterdir())[:2]
    for run in (dead, alive):
        (run / "status.json").write_text(json.dumps({"status": "running", "updated": "x"}))
    (dead / "launch.json").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename, "config": "x"}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(alive / "config.yaml")])
    try:
        launchers.write_json(alive / "launch.json", {"pid": holder.pid, "host": os.uname().nodename,
                                                     "config": str(alive / "config.yaml")})
        summary = sweep(study_file)
    finally:
        holder.kill()
        holder.wait()
    assert summary.launched == [dead.name] and summary.busy == [alive.name]
    assert (dead / "attempts.txt").read_text().splitlines()[-1] == "resume=True"


def test_a_run_started_by_a_relative_path_counts_as_alive(tmp_path, monkeypatch):
    # A second sweep of a study with a relative `out` must see the first sweep's runs as busy, not start them again.
    monkeypatch.chdir(tmp_path)
    run_dir = Path("out/runs/abc")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(launchers, "finetune_command",
                        lambda config: [sys.executable, "-c", "import time; time.sleep(60)", str(config)])
    proc = launchers.start(run_dir / "config.yaml")
    try:
        assert launchers.is_alive(run_dir)
    finally:
        proc.kill()
        proc.wait()
    assert not launchers.is_alive(run_dir)


def test_a_queued_run_another_sweep_took_meanwhile_is_not_started_twice(fake_trainer, study_file, tmp_path):
    # Two overlapping sweeps of one OUT: while this one waits for a free slot, another sweep starts (or
    # finishes) one of its queued runs; starting it here too would write one run directory from two processes.
    order = [s.hash for s in expand(load_study(study_file))]
    runs = tmp_path / "out" / "runs"
    taken, done_elsewhere = runs / order[1], runs / order[2]
    holder = None

    def other_sweep_takes_two(line):
        nonlocal holder
        if holder is None:
            holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                       str((taken / "config.yaml").resolve())])
            (taken / "launch.json").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                           "config": str((taken / "config.yaml").resolve())}))
            first = runs / order[0]
            (done_elsewhere / "final.json").write_text((first / "final.json").read_text())
            (done_elsewhere / "status.json").write_text((first / "status.json").read_text())

    try:
        summary = sweep(study_file, on_progress=other_sweep_takes_two)
    finally:
        holder.kill()
        holder.wait()
    assert not (taken / "attempts.txt").exists() and not (done_elsewhere / "attempts.txt").exists()
    assert summary.busy == [taken.name] and done_elsewhere.name in summary.finished and summary.ok


def test_corrupt_files_mark_one_run_damaged_and_rerun_it(fake_trainer, study_file, tmp_path):
    sweep(study_file)
    out = tmp_path / "out"
    runs = sorted((out / "runs").iterdir())
    (runs[0] / "status.json").write_text("{not json")
    (runs[1] / "metrics.csv").write_bytes(b"\x00\x17garbage;;\nepoch\nx\n")
    (runs[2] / "metrics.csv").unlink()
    (runs[2] / "metrics.csv").mkdir()  # cannot be read at all (an OSError, as without read permission)
    untouched = {r.name: (r / "final.json").stat().st_mtime_ns for r in runs[3:]}
    _, _, failures = collect(out)
    bad = sorted(r.name for r in runs[:3])
    assert {f["hash"]: f["status"] for f in failures} == dict.fromkeys(bad, "damaged")
    summary = sweep(study_file)
    assert sorted(d["hash"] for d in summary.damaged) == bad
    assert sorted(summary.launched) == bad and summary.ok
    assert len(list((out / "damaged").iterdir())) == 3
    assert {r.name: (r / "final.json").stat().st_mtime_ns for r in runs[3:]} == untouched
    assert set(statuses(out).values()) == {"finished"}


def test_out_of_another_study_is_refused_unless_forced(fake_trainer, study_file, tmp_path):
    sweep(study_file)
    other = write_study(tmp_path / "other.yaml", name="other", grid={"seed": [5]})
    with pytest.raises(OutputError, match="holds study 'tiny', not 'other'.*--force"):
        sweep(other, out=tmp_path / "out")
    assert sweep(other, out=tmp_path / "out", force=True).ok
    (tmp_path / "out" / "study.json").write_text("[")
    with pytest.raises(OutputError, match="unreadable"):
        sweep(other, out=tmp_path / "out")


def test_collect_rebuild_equals_the_incremental_store(fake_trainer, study_file, tmp_path):
    out = tmp_path / "out"
    sweep(study_file, jobs=2)
    incremental = [(out / f).read_text() for f in ("results.csv", "curves.csv")]
    for f in ("results.csv", "curves.csv"):
        (out / f).unlink()
    results, curves, failures = collect(out)
    assert [(out / f).read_text() for f in ("results.csv", "curves.csv")] == incremental
    assert len(results) == 6 and len(curves) == 18 and failures == []
    assert sweep(study_file, collect_only=True).ok


def test_a_sweep_ending_after_another_on_the_same_out_writes_the_others_finished_runs(
        fake_trainer, study_file, tmp_path):
    # Two `--only` parts swept into one OUT at once: the part that ends last writes results.csv, and must
    # not write the other part's runs as they stood when it started (queued) once they have finished.
    out = tmp_path / "out"
    other = sweep(study_file, only="seed=1").finished
    finished = {h: (out / "runs" / h / "status.json").read_text() for h in other}
    for h in other:  # the other sweep has just queued them
        (out / "runs" / h / "status.json").write_text(json.dumps({"status": "queued", "updated": "x"}))

    def other_sweep_finishes(line):
        for h, text in finished.items():
            (out / "runs" / h / "status.json").write_text(text)

    sweep(study_file, only="seed=0", on_progress=other_sweep_finishes)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and set(results["status"]) == {"finished"}


def test_a_sweep_rewrites_slow_results_files_at_a_bounded_share_of_its_time(
        fake_trainer, study_file, tmp_path, monkeypatch):
    # results.csv/curves.csv hold every run of OUT, so rewriting them after each run is quadratic: 3,105 runs
    # of the paper study took seconds per rewrite. A slow rewrite is not repeated after every run.
    writes, write = [], Store.write

    def slow_write(self):
        writes.append(1)
        time.sleep(0.5)
        return write(self)

    monkeypatch.setattr(Store, "write", slow_write)
    summary = sweep(study_file, jobs=2)
    assert summary.ok and len(writes) < 2 + 6  # before and after the sweep, not after each of the 6 runs too
    assert set(pd.read_csv(tmp_path / "out" / "results.csv")["status"]) == {"finished"}

    def interrupt(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an interrupted sweep still leaves the CSVs as the runs stand
        sweep(study_file, out=tmp_path / "stopped", on_progress=interrupt)
    assert list(pd.read_csv(tmp_path / "stopped" / "results.csv")["status"]).count("finished") == 1


def test_collect_reads_a_field_added_later_as_its_default(fake_trainer, study_file, tmp_path):
    out = tmp_path / "out"
    sweep(study_file, only="seed=0")
    config = next((out / "runs").glob("*/config.yaml"))
    text = config.read_text()
    assert "  unpaired: weight\n" in text
    config.write_text(text.replace("  unpaired: weight\n", ""))  # as written before the field existed
    results, _, _ = collect(out)
    assert (results["reinit.unpaired"] == "weight").all()


def test_collect_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(OutputError, match="no runs/ directory"):
        collect(tmp_path)


# ---- merging a study run in parts on several machines ---------------------------------------------
def test_merge_combines_parts_run_in_two_places_and_is_idempotent(fake_trainer, study_file, tmp_path, cli):
    sweep(study_file, only="seed=0")  # machine A: tmp_path/out
    sweep(study_file, out=tmp_path / "b", only="seed=1")  # machine B
    into = tmp_path / "docs"
    first = merge(tmp_path / "out", into)
    # The first part lands byte for byte as the sweep wrote it.
    assert len(first.added) == 3
    for name in ("results.csv", "curves.csv"):
        assert (into / name).read_text() == (tmp_path / "out" / name).read_text()
    code, out, _ = cli("merge", tmp_path / "b", into)
    assert code == 0 and "3 runs added" in " ".join(out.split())
    results, curves = pd.read_csv(into / "results.csv"), pd.read_csv(into / "curves.csv")
    whole = sweep(study_file, out=tmp_path / "whole")
    assert sorted(results["hash"]) == sorted(whole.finished) and set(results["status"]) == {"finished"}
    expected = pd.read_csv(tmp_path / "whole" / "results.csv").set_index("hash")["test_acc"]
    assert results.set_index("hash")["test_acc"].sort_index().equals(expected.sort_index())
    assert len(curves) == 6 * 3 and sorted(set(curves["hash"])) == sorted(results["hash"])
    before = [(into / f).read_text() for f in ("results.csv", "curves.csv")]
    again = merge(tmp_path / "b", into)
    assert again.added == again.replaced == [] and len(again.kept) == 3
    assert [(into / f).read_text() for f in ("results.csv", "curves.csv")] == before


def test_merge_replaces_unfinished_rows_leaves_out_unfinished_runs_and_keeps_column_order(
        fake_trainer, study_file, tmp_path):
    sweep(study_file, only="seed=0")
    out = tmp_path / "out"
    results = pd.read_csv(out / "results.csv")
    failed, queued = results["hash"][0], results["hash"][1]
    # INTO: an older layout (an extra column first, fewer columns) where one run had crashed.
    into = tmp_path / "docs"
    into.mkdir()
    old = results.drop(columns=["wall_time_s"]).assign(note="old")[["note", *results.columns.drop("wall_time_s")]]
    old.loc[old["hash"] == failed, ["status", "test_acc"]] = ["failed:crash", None]
    old.to_csv(into / "results.csv", index=False)
    (into / "curves.csv").write_text("hash,epoch,val_acc\n" + f"{failed},1,0.1\n")
    (out / "runs" / queued / "status.json").write_text(json.dumps({"status": "queued", "updated": "x"}))
    summary = merge(out, into)
    assert summary.replaced == [failed] and summary.not_finished == [queued] and summary.added == []
    merged = pd.read_csv(into / "results.csv")
    assert list(merged.columns) == [*old.columns, "wall_time_s"]
    row = merged.set_index("hash").loc[failed]
    assert row["status"] == "finished" and row["test_acc"] == results.set_index("hash").loc[failed, "test_acc"]
    assert pd.isna(row["note"]) and merged.set_index("hash").loc[queued, "note"] == "old"
    curves = pd.read_csv(into / "curves.csv")
    assert list(curves["epoch"][curves["hash"] == failed]) == [1, 2, 3]  # the crashed run's curve is replaced


def test_merge_bad_input(fake_trainer, study_file, tmp_path, cli):
    sweep(study_file, only="seed=0")
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="holds run directories.*without runs/"):
        merge(tmp_path / "out", out)
    with pytest.raises(OutputError, match="neither runs/ nor results.csv"):
        merge(tmp_path / "nowhere", tmp_path / "docs")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("name,acc\na,1\n")
    with pytest.raises(OutputError, match="no hash, status column"):
        merge(foreign, tmp_path / "docs")
    (foreign / "results.csv").write_text("hash,status\n")
    (foreign / "curves.csv").write_text("epoch,val_acc\n1,0.5\n")
    with pytest.raises(OutputError, match="curves.csv has no hash column"):
        merge(foreign, tmp_path / "docs")
    (foreign / "curves.csv").write_bytes(b"hash,epoch\n\xff\xfe,1\n")  # not UTF-8 text
    with pytest.raises(OutputError, match="curves.csv is not UTF-8 text"):
        merge(foreign, tmp_path / "docs")
    (foreign / "curves.csv").unlink()
    (foreign / "results.csv").write_text("name,acc\na,1\n")
    code, stdout, err = cli("merge", foreign, tmp_path / "docs")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and "no hash, status column" in err
    assert not (tmp_path / "docs").exists()  # nothing written on failure
    (out / "runs").rename(tmp_path / "moved")
    (out / "runs").mkdir()  # a study not started yet: nothing to add, not an error
    assert merge(out, tmp_path / "docs").added == [] and (tmp_path / "docs" / "results.csv").read_text() == "\n"


def test_merge_records_the_study_and_refuses_another_studys_runs(fake_trainer, study_file, tmp_path):
    sweep(study_file, only="seed=0")
    into = tmp_path / "docs"
    merge(tmp_path / "out", into)
    assert json.loads((into / "study.json").read_text())["name"] == "tiny"
    other = write_study(tmp_path / "other.yaml", name="other", out=str(tmp_path / "other"),
                        base={"model": "resnet10t", "weights": "none", "data": "synthetic", "epochs": 3},
                        grid={"seed": [5]})
    sweep(other)
    before = {f: (into / f).read_text() for f in ("results.csv", "curves.csv", "study.json")}
    with pytest.raises(OutputError, match=r"holds study 'other' but .* holds study 'tiny'; merge parts of one"):
        merge(tmp_path / "other", into)
    assert {f: (into / f).read_text() for f in before} == before
    merge(tmp_path / "out", into)  # the same study again: fine


def test_a_sweep_into_a_merged_results_folder_is_refused_rather_than_dropping_its_rows(
        fake_trainer, study_file, tmp_path, cli):
    # A sweep rebuilds results.csv from runs/, so sweeping into a merge's INTO (rows without run directories)
    # would replace the merged rows with its own few.
    sweep(study_file, only="seed=0")
    into = tmp_path / "docs"
    merge(tmp_path / "out", into)
    before = {f: (into / f).read_text() for f in ("results.csv", "curves.csv", "study.json")}
    code, _, err = cli("sweep", "--config", study_file, "--out", into, "--only", "seed=1")
    assert code == 2 and "results.csv without runs/" in err and len(err.strip().splitlines()) == 1
    assert {f: (into / f).read_text() for f in before} == before and not (into / "runs").exists()
    # refused before the launcher is built too: submitit's local executor creates its folder when built
    code, _, err = cli("sweep", "--config", study_file, "--out", into, "--launcher", "slurm", "--cluster", "local")
    assert code == 2 and "results.csv without runs/" in err
    assert sorted(p.name for p in into.iterdir()) == sorted(before)


def test_each_job_gets_its_own_gpu_when_several_exist(fake_trainer, study_file, tmp_path, monkeypatch):
    monkeypatch.setattr(launchers, "visible_gpus", lambda: ["0", "1"])
    sweep(study_file, jobs=2)
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["gpu"].astype(str)) == {"0", "1"}


def test_local_jobs_share_the_cores_unless_the_user_set_threads(fake_trainer, study_file, tmp_path, monkeypatch):
    monkeypatch.setattr(launchers, "available_cpus", lambda: 5)
    monkeypatch.delenv("OMP_NUM_THREADS")
    sweep(study_file, jobs=2)
    assert set(pd.read_csv(tmp_path / "out" / "results.csv")["threads"]) == {2}  # 5 cores // 2 jobs
    sweep(study_file, out=tmp_path / "one", jobs=1)  # one job: torch's own default
    assert pd.read_csv(tmp_path / "one" / "results.csv")["threads"].isna().all()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    sweep(study_file, out=tmp_path / "mine", jobs=2)
    assert set(pd.read_csv(tmp_path / "mine" / "results.csv")["threads"]) == {3}


def test_slurm_launcher_with_submitit_debug_executor(fake_trainer, study_file, tmp_path):
    summary = sweep(study_file, launcher="slurm", slurm={"cluster": "debug", "partition": "gpu", "time_min": 5})
    assert summary.ok and len(summary.finished) == 6
    assert (tmp_path / "out" / "slurm").is_dir()
    launch = json.loads(next((tmp_path / "out" / "runs").glob("*/launch.json")).read_text())
    assert str(launch["slurm_job_id"]).startswith("DEBUG_")


def test_an_array_task_started_before_the_sweep_wrote_its_launch_json_records_the_queue_folder(
        tmp_path, monkeypatch):
    # The sweep writes each run's launch.json after submitting the whole array, so a task may start first.
    # Without the folder, a later sweep cannot ask the queue about the run and takes it for alive forever.
    import submitit

    run_dir = tmp_path / "runs" / "abc"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: type("Env", (), {"job_id": "7_3"})())
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "slurm"))  # what submitit sets in each task
    monkeypatch.setattr(launchers, "finetune_command", lambda config: [sys.executable, "-c", "pass"])
    launchers.start(run_dir / "config.yaml").wait()
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["slurm_job_id"] == "7_3" and launch["slurm_folder"] == str(tmp_path / "slurm")
    monkeypatch.setattr(launchers, "_slurm_state", lambda folder, job_id: "FAILED")
    monkeypatch.setattr(launchers.socket, "gethostname", lambda: "login-node")
    assert not launchers.is_alive(run_dir)


def test_sigkill_of_the_sweep_marks_nothing_finished_that_did_not_finish(fake_trainer, study_file, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import sys
        from replast import experiment, launchers
        launchers.finetune_command = lambda c: [sys.executable, {str(fake_trainer)!r}, "--config", str(c)]
        launchers.visible_gpus = lambda: []
        experiment.sweep({str(study_file)!r}, jobs=2)
    """))
    proc = subprocess.Popen([sys.executable, str(driver)], env={**os.environ, "FAKE_SLEEP": "1.5"})
    out = tmp_path / "out"
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("runs/*/attempts.txt")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # orphaned trainers finish or not; either way they alone decide `finished`
    states = statuses(out)
    assert set(states.values()) != {"finished"}  # the kill did land mid-sweep
    for run, state in states.items():
        assert state != "finished" or (out / "runs" / run / "final.json").exists()
    summary = sweep(study_file)
    assert summary.ok and set(statuses(out).values()) == {"finished"}


# ---- the real pipeline ---------------------------------------------------------------------------
def _pipeline_ready() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("replast.pipeline", "replast.data", "replast.models"))


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    """The real `replast finetune` subprocesses on the shipped smoke study, then the report."""
    if not _pipeline_ready():
        pytest.fail("replast.pipeline, replast.data or replast.models is missing; the smoke study cannot run")
    summary = sweep("smoke", out=tmp_path / "smoke", jobs=2)
    assert summary.ok, str(summary)
    results = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert len(results) == 4 and results["test_acc"].between(0, 1).all()
    assert sorted(results["reinit.strategy"]) == ["none", "none", "targeted", "targeted"]
    assert len(pd.read_csv(tmp_path / "smoke" / "curves.csv")) == 4 * 2
    assert sweep("smoke", out=tmp_path / "smoke").launched == []
    from replast.report import render

    render(tmp_path / "smoke")
    md = (tmp_path / "smoke" / "report.md").read_text()
    assert "## synthetic × mobilenetv2_050" in md and "| targeted | 2 |" in md
    assert "### Per-layer diagnostics" in md and "of the 4 runs made with `--diagnose true`" in md
    assert (tmp_path / "smoke" / "report" / "figures" / "synthetic-mobilenetv2_050-layers.png").stat().st_size > 1000


# ---- run identity, stale statuses, --collect and --only edge cases -------------------------------
def test_a_float_field_written_as_an_integer_keeps_the_run_hash():
    from replast.study import expand, parse_study

    def hashes(grid):
        return [s.hash for s in expand(parse_study({"name": "s", "grid": grid}))]

    # train.warmup_epochs defaults to 1.0: `1`, `1.0` and leaving it out are one run, not three
    assert hashes({"seed": [0], "train.warmup_epochs": [1]}) == hashes({"seed": [0]})
    assert hashes({"seed": [0], "reinit.fraction": [1]}) == hashes({"seed": [0], "reinit.fraction": [1.0]})


def test_sweep_collect_with_an_empty_runs_directory_is_a_one_line_error(cli, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nbase: {data: synthetic}\ngrid: {seed: [0]}\n")
    (tmp_path / "out" / "runs").mkdir(parents=True)
    code, _, err = cli("sweep", "--config", study, "--out", tmp_path / "out", "--collect")
    assert code in (0, 2) and "Traceback" not in err


def test_a_resume_that_fails_before_writing_a_status_is_not_reported_with_the_stale_one(fake_trainer, tmp_path):
    import json

    from replast.experiment import sweep

    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nout: {tmp_path / 'out'}\nbase: {{epochs: 2}}\nruns: [{{data: bad}}]\n")
    [failure] = sweep(study).failures
    assert failure["status"] == "failed:bad-input"
    # as a pre-empted run leaves it; the next attempt (e.g. a corrupt last.pt: exit 2) fails before "running"
    run_dir = tmp_path / "out" / "runs" / failure["hash"]
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted", "step": 7, "epoch": 0}))
    [again] = sweep(study).failures
    assert again["status"] == "failed:bad-input" and "unknown dataset" in again["reason"], again


def test_only_with_a_list_value_selects_it_or_is_a_one_line_error(cli, tmp_path):
    from replast.study import expand, parse_study, select

    specs = expand(parse_study({"name": "s", "grid": {"reinit.exclude": [["head"], ["head", "stem"]]}}))
    # the README's list syntax for list-valued fields; "," also separates choices, so this one is split up
    try:
        chosen = select(specs, "reinit.exclude=[head,stem]")
    except ConfigError:
        pass  # a one-line error is acceptable; a YAML traceback is not
    else:
        assert [s.config["reinit"]["exclude"] for s in chosen] == [["head", "stem"]]
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nbase: {data: synthetic}\ngrid: {seed: [0]}\n")
    code, _, err = cli("sweep", "--config", study, "--out", tmp_path / "out", "--only", "data=[synthetic")
    assert code == 2 and "Traceback" not in err
