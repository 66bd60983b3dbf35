"""The report on fake run directories with known numbers: tables, sentences, figures, failures, and a
headless-Chromium check that report.html shows every image without console errors."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from replast.config import FinetuneConfig
from replast.report import render
from replast.report.labels import arm_labels, figure_stems
from replast.report.plots import arm_colors
from replast.report.summary import sentence, significant_values
from replast.report.tables import arm_table
from replast.study import config_hash, unflatten

CHROMIUM = "/usr/bin/chromium"
BASE = {0: 0.80, 1: 0.82, 2: 0.84}  # test accuracy of `none` per seed
# Extra accuracy per arm and seed: +5 pp on average (sd 1 pp), noise around 0, and a clear loss.
ARMS = {
    "none": ({}, {0: 0.0, 1: 0.0, 2: 0.0}),
    "targeted (fraction=0.1)": ({"reinit.strategy": "targeted", "reinit.fraction": 0.1}, {0: 0.05, 1: 0.04, 2: 0.06}),
    "targeted (fraction=0.3)": ({"reinit.strategy": "targeted", "reinit.fraction": 0.3}, {0: 0.01, 1: -0.01, 2: 0.0}),
    "linear-probe": ({"train.mode": "linear-probe"}, {0: -0.20, 1: -0.18, 2: -0.22}),
}


def write_run(out: Path, overrides: dict, acc: float, curve: list[float], status: str = "finished",
              plasticity: bool = False) -> str:
    config = FinetuneConfig.from_dict(unflatten({"epochs": len(curve), **overrides})).to_dict()
    run_hash = config_hash(config)
    run = out / "runs" / run_hash
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "out": str(run)}))
    (run / "status.json").write_text(json.dumps({"status": status, "updated": "t", "reason": "CUDA OOM"}))
    rows = [{"epoch": e + 1, "step": 10 * (e + 1), "lr": 0.01, "train_loss": 1.0, "train_acc": v, "val_loss": 1 - v,
             "val_acc": v, "val_balanced_acc": v, "val_f1": v, "epoch_time_s": 2.0,
             **({"plasticity_dormant_fraction": 0.3 - 0.05 * e, "plasticity_feature_rank": 10.0 + e}
                if plasticity else {})} for e, v in enumerate(curve)]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    if status == "finished":
        (run / "final.json").write_text(json.dumps({
            "test_acc": acc, "test_balanced_acc": acc, "test_f1": acc, "test_loss": 1 - acc,
            "best_val_acc": max(curve), "final_val_acc": curve[-1], "best_epoch": int(np.argmax(curve)) + 1,
            "wall_time_s": 7.0,
            "reinit_time_s": 0.5 if overrides.get("reinit.strategy") else 0.0, "epoch_time_s": 2.0,
            "epochs": len(curve)}))
    return run_hash


@pytest.fixture
def study_out(tmp_path) -> Path:
    out = tmp_path / "out"
    for data in ("br35h", "fashion-mnist"):
        for overrides, extra in ARMS.values():
            for seed, base in BASE.items():
                acc = round(base + extra[seed], 4)
                curve = [round(acc - 0.2, 4), round(acc - 0.1, 4), acc] if not overrides else \
                        [round(acc - 0.05, 4), acc, acc]
                write_run(out, {"data": data, "seed": seed, "train.track_plasticity": 5, **overrides}, acc, curve,
                          plasticity=True)
    write_run(out, {"data": "br35h", "seed": 9, "reinit.strategy": "redo"}, 0.0, [0.5], status="failed:crash")
    (out / "study.json").write_text(json.dumps({"name": "fake", "hash": "x"}))
    return out


def test_arm_table_known_answers(study_out):
    render(study_out)
    summary = pd.read_csv(study_out / "report" / "summary.csv")
    table = summary[summary["condition"] == "br35h × mobilenetv2_100"].set_index("arm")
    assert list(table.index) == ["none", "linear-probe", "targeted (fraction=0.1)", "targeted (fraction=0.3)"]
    t01 = table.loc["targeted (fraction=0.1)"]
    # differences 5, 4, 6 pp: mean 5, sd 1, t interval 5 ± t(0.975, 2) · 1 / √3 = 5 ± 2.4841; paired t p 0.013072,
    # Holm over three arms: linear-probe's 0.003317 × 3 first, then 0.013072 × 2
    assert (t01["delta"], t01["delta_low"], t01["delta_high"]) == pytest.approx((0.05, 0.025159, 0.074841), abs=1e-6)
    assert t01["p_holm"] == pytest.approx(2 * 0.0130725, abs=1e-6) and t01["n"] == 3 and t01["pairs"] == 3
    assert table.loc["none", "acc"] == pytest.approx(0.82)
    # final validation accuracy (the last curve point) is shown beside test accuracy, for choosing settings
    assert table.loc["none", "val_acc"] == pytest.approx(0.82) and t01["val_acc"] == pytest.approx(0.87)
    # baseline target = mean final val acc of none = 0.82: none reaches it at epoch 3 in 2 of 3 seeds (median 3);
    # targeted 0.1 (curves 0.80/0.85/0.85, 0.81/0.86/0.86, 0.85/0.90/0.90) at epochs 2, 2, 1 -> speed-up 3 / 2
    assert table.loc["none", "epochs_to_100"] == 3 and table.loc["none", "reached_100"] == 2
    assert t01["epochs_to_100"] == 2 and t01["speedup"] == pytest.approx(1.5)
    assert t01["epochs_to_95"] == 1  # 0.95 * 0.82 = 0.779
    assert t01["overhead_pct"] == pytest.approx(25.0)
    # never reached: later than any epoch, no speed-up
    assert table.loc["linear-probe", "epochs_to_100"] == np.inf and np.isnan(table.loc["linear-probe", "speedup"])
    runs = pd.read_csv(study_out / "report" / "runs.csv")
    assert {"arm", "condition", "epochs_to_95", "epochs_to_100"} <= set(runs.columns) and len(runs) == 24


def test_sentence_states_only_what_the_numbers_show(study_out):
    render(study_out)
    md = (study_out / "report.md").read_text()
    assert "targeted (fraction=0.1) is higher than none by 5.0 pp (95% CI [+2.5, +7.5], Holm p = 0.0261)" in md
    assert "linear-probe is lower than none by 20.0 pp" in md
    assert "No significant difference from none for targeted (fraction=0.3)" in md
    assert md.count("Highest mean test accuracy: targeted (fraction=0.1) (87.0%, n=3).") == 2


def test_sentence_without_baseline_or_pairs():
    runs = pd.DataFrame({"arm": ["a", "a", "none"], "seed": [0, 1, 0], "test_acc": [0.5, 0.6, 0.4]})
    text = sentence(arm_table(runs), has_baseline=True)
    assert "Not testable (fewer than 2 seeds paired with none): a." in text
    text = sentence(arm_table(runs[runs["arm"] == "a"]), has_baseline=False)
    assert "No finished baseline run" in text and "Highest mean test accuracy: a (55.0%, n=2)." in text


@pytest.mark.parametrize(("p_holm", "low", "high", "expected"), [
    (0.049, 0.01, 0.02, True), (0.049, -0.02, -0.01, True),  # p < 0.05 and the CI on one side of 0
    (0.05, 0.01, 0.02, False),  # p must be below 0.05, not equal to it
    (0.01, 0.0, 0.02, False), (0.01, -0.02, 0.0, False),  # a CI that touches 0 contains it
    (0.01, -0.01, 0.02, False),  # a small p alone is not enough
    (0.2, 0.01, 0.02, False), (float("nan"), 0.01, 0.02, False),
])
def test_significant_needs_holm_p_below_alpha_and_a_ci_excluding_zero(p_holm, low, high, expected):
    assert significant_values(p_holm, low, high) is expected


def test_overview_leaves_out_conditions_without_a_baseline():
    from replast.report.overview import overview
    from replast.report.tables import Condition

    def condition(title: str, accs: dict) -> Condition:
        runs = pd.DataFrame([{"arm": arm, "seed": seed, "test_acc": acc}
                             for arm, values in accs.items() for seed, acc in enumerate(values)])
        return Condition(title, runs, arm_table(runs), bool((runs["arm"] == "none").any()))

    with_base = condition("a", {"none": [0.5, 0.6, 0.7], "x": [0.74, 0.85, 0.96]})
    without = condition("b", {"x": [0.1, 0.2, 0.3]})
    table = overview([with_base, without]).set_index("arm")
    assert list(table.index) == ["none", "x"]
    assert [c for c in table.columns if ":" in c and not c.startswith("pooled")] == ["delta:a", "significant:a"]
    assert table.loc["none", "delta:a"] == pytest.approx(0.6) and table.loc["x", "delta:a"] == pytest.approx(0.25)
    assert table.loc["x", ["higher", "lower"]].tolist() == [1, 0] and bool(table.loc["x", "significant:a"])
    # pooled over the one condition with a baseline: 3 pairs of +0.24, +0.25, +0.26 (t = 43.3, 2 dof: p 0.00053)
    assert table.loc["x", "pooled_n"] == 3 and table.loc["x", "pooled_delta"] == pytest.approx(0.25)
    assert table.loc["x", "pooled_p_holm"] == pytest.approx(0.000533, abs=1e-5) and bool(table.loc["x", "pooled_significant"])


def test_report_files_figures_and_failures(study_out):
    paths = render(study_out)
    assert [p.name for p in paths] == ["report.md", "report.html"]
    md = (study_out / "report.md").read_text()
    assert md.count("## br35h × mobilenetv2_100") == 1 and md.count("## fashion-mnist × mobilenetv2_100") == 1
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(f).name.rsplit("-", 1)[1] for f in figures} == {"curves.png", "fraction.png", "plasticity.png"}
    assert {Path(f).name.rsplit("-", 1)[0] for f in figures} == {"br35h-mobilenetv2_100", "fashion-mnist-mobilenetv2_100"}
    assert len(figures) == 6 and all((study_out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    assert "## Failed and unfinished runs" in md and "failed:crash" in md and "CUDA OOM" in md
    # These fake runs predate the environment record: one row, every finished run, nothing invented.
    assert pd.read_csv(study_out / "report" / "environments.csv")["runs"].tolist() == [24]
    assert md.index("## Software and hardware") < md.index("## Failed and unfinished runs")
    html = (study_out / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 6 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing outside the file


def _diagnosis(scores: dict[str, tuple[float, float]], ranks: dict[str, float]) -> dict:
    """diagnosis.json with two weighted layers per stage (plus an activation row that must be ignored)."""
    return {stage: {"features": {"effective_rank": ranks.get(stage)}, "rows": [
        {"layer": "a", "kind": "param", "depth": 1, "plasticity_score": a, "dormant_fraction": 0.5,
         "small_grad_fraction": 0.25},
        {"layer": "b", "kind": "param", "depth": 2, "plasticity_score": b, "dormant_fraction": 0.5,
         "small_grad_fraction": None},
        {"layer": "b.act", "kind": "activation", "depth": 3, "plasticity_score": 9.0, "dormant_fraction": 9.0},
    ]} for stage, (a, b) in scores.items()}


def test_per_layer_diagnostics_before_and_after_reinit_known_answers(study_out):
    render(study_out)  # no run has diagnosis.json yet: no section
    assert "Per-layer diagnostics" not in (study_out / "report.md").read_text()
    runs = pd.read_csv(study_out / "report" / "runs.csv")
    runs = runs[runs["data"] == "br35h"]
    plain = _diagnosis({"before_reinit": (0.2, 0.4), "after_reinit": (0.2, 0.4), "after_training": (0.1, 0.3)},
                       {"before_reinit": 10.0, "after_training": 20.0})
    reset = _diagnosis({"before_reinit": (0.2, 0.4), "after_reinit": (0.0, 0.2), "after_training": (0.1, 0.1)},
                       {"before_reinit": 10.0, "after_training": 30.0})
    for run_hash, arm in zip(runs["hash"], runs["arm"], strict=True):
        path = study_out / "runs" / run_hash / "diagnosis.json"
        if arm == "none":
            path.write_text(json.dumps(plain))
        elif arm == "targeted (fraction=0.1)":
            path.write_text(json.dumps(reset))
        elif arm == "linear-probe":
            path.write_text("{not json")  # damaged: counted and left out, the report still renders
    render(study_out)
    md = (study_out / "report.md").read_text()
    section = md.split("## br35h × mobilenetv2_100")[1].split("## fashion-mnist")[0]
    assert "### Per-layer diagnostics" in section and "of the 6 runs made with `--diagnose true`" in section
    assert "3 diagnosis.json file(s) could not be read" in section
    assert "| none | 3 | 0.300 → 0.300 → 0.200 | 50.0 → 50.0 → 50.0 | 25.0 → 25.0 → 25.0 | 10.000 → 20.000 |" in section
    assert "| targeted (fraction=0.1) | 3 | 0.300 → 0.100 → 0.100 | 50.0 → 50.0 → 50.0 | 25.0 → 25.0 → 25.0 | " \
           "10.000 → 30.000 |" in section
    assert "Per-layer diagnostics" not in md.split("## fashion-mnist")[1]  # no diagnosis there: no section
    figure = study_out / "report" / "figures" / "br35h-mobilenetv2_100-layers.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "br35h-mobilenetv2_100-layers.png" in section


def test_figure_stems_from_titles_known_answers():
    assert figure_stems(["br35h × mobilenetv2_100 (train_fraction=0.25)", "all runs", "Ünïcode ×× !"]) == [
        "br35h-mobilenetv2_100-train_fraction-0.25", "all-runs", "n-code"]
    assert figure_stems(["a × b", "a-b", "a b", "×"]) == ["a-b", "a-b-2", "a-b-3", "condition"]
    assert len(figure_stems(["x" * 500])[0]) == 120


def test_figures_keep_their_names_when_a_condition_is_added(study_out):
    """A study run in parts gains conditions; hand-written docs link its figures, so a figure's name must not
    depend on where its condition sorts. Stale figures (of conditions gone, or of older names) are removed."""
    render(study_out)
    figures = study_out / "report" / "figures"
    before = {p.name for p in figures.glob("*.png")}
    (figures / "c00-curves.png").write_bytes(b"old name")
    for seed, base in BASE.items():  # a condition that sorts first
        write_run(study_out, {"data": "animal-mnist", "seed": seed}, base, [base - 0.2, base - 0.1, base])
    render(study_out)
    after = {p.name for p in figures.glob("*.png")}
    assert before < after and "c00-curves.png" not in after
    assert after - before == {"animal-mnist-mobilenetv2_100-curves.png"}  # plain runs only: no fraction plot
    md = (study_out / "report.md").read_text()
    assert "report/figures/br35h-mobilenetv2_100-curves.png" in md.split("## br35h")[1].split("## fashion")[0]


def test_report_from_results_csv_alone_and_with_nothing_finished(study_out, tmp_path):
    from replast.experiment import collect

    collect(study_out)
    alone = tmp_path / "copy"
    alone.mkdir()
    for name in ("results.csv", "curves.csv", "study.json"):
        shutil.copy(study_out / name, alone / name)
    render(alone)
    assert "targeted (fraction=0.1) is higher" in (alone / "report.md").read_text()
    # hex hashes of digits only stay text (a number would lose leading zeros, or read 12e456789012 as inf)
    from replast.report.build import _load

    for name in ("results.csv", "curves.csv"):
        table = pd.read_csv(alone / name, dtype={"hash": str})
        hashes = {h: f"{i + 1:02d}e{i:09d}" for i, h in enumerate(sorted(table["hash"].unique()))}  # 01e000000000
        table.assign(hash=table["hash"].map(hashes)).to_csv(alone / name, index=False)
    results, curves, _ = _load(alone)
    assert set(results["hash"]) == set(curves["hash"]) == set(hashes.values())
    empty = tmp_path / "empty"
    write_run(empty, {"seed": 0}, 0.0, [0.1], status="failed:nonfinite")
    render(empty)
    text = (empty / "report.md").read_text()
    assert "No finished runs yet" in text and "failed:nonfinite" in text


def test_report_from_merged_csvs_of_a_study_with_no_runs_or_without_curves(study_out, tmp_path, cli):
    from replast.experiment import collect
    from replast.store import merge

    not_started = tmp_path / "not-started"
    (not_started / "runs").mkdir(parents=True)
    merge(not_started, tmp_path / "merged")  # writes header-less results.csv and curves.csv ("\n")
    code, _, err = cli("report", tmp_path / "merged")
    assert code == 0, err
    assert "No finished runs yet" in (tmp_path / "merged" / "report.md").read_text()
    collect(study_out)
    no_curves = tmp_path / "no-curves"
    no_curves.mkdir()
    shutil.copy(study_out / "results.csv", no_curves / "results.csv")
    code, _, err = cli("report", no_curves)
    assert code == 0, err
    assert "targeted (fraction=0.1) is higher" in (no_curves / "report.md").read_text()


CHECK_SCRIPT = """<img id="canary" src="data:image/png;base64,AAAA"><script>
console.error("canary-console");
window.addEventListener("load", () => {
  const r = [...document.images].map(i => ({id: i.id, ok: i.complete && i.naturalWidth > 0}));
  const d = document.createElement("pre"); d.id = "img-check"; d.textContent = JSON.stringify(r);
  document.body.appendChild(d);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make install` (it installs the chromium package)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_html_in_headless_chromium(study_out, tmp_path):
    (run,) = [d for d in (study_out / "runs").iterdir()
              if yaml.safe_load((d / "config.yaml").read_text())["reinit"]["strategy"] == "targeted"
              and json.loads((d / "status.json").read_text())["status"] == "finished"][:1]
    (run / "diagnosis.json").write_text(json.dumps(_diagnosis({"before_reinit": (0.2, 0.4)}, {})))  # + layers figure
    render(study_out)
    html = (study_out / "report.html").read_text()
    probe = tmp_path / "probe.html"
    # The canaries prove the checks work: one broken image and one console message must be detected.
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    done = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                     probe.as_uri())
    found = re.search(r'<pre id="img-check">(.*?)</pre>', done.stdout)
    assert found, f"page never finished loading: {done.stderr[-2000:]}"
    images = json.loads(found.group(1))
    assert [i for i in images if not i["ok"]] == [{"id": "canary", "ok": False}]
    assert len(images) == 8  # 6 figures + the per-layer diagnostics figure + the canary
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert len(console) == 1 and "canary-console" in console[0], console
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}",
              (study_out / "report.html").as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 0.05  # text and plots, not a blank page


def test_an_arm_label_leaves_out_the_fraction_that_scope_auto_ignores():
    from replast.report.labels import arm_labels

    runs = pd.DataFrame([{"reinit.strategy": "targeted", "reinit.fraction": f, "reinit.scope": scope}
                         for f, scope in ((0.05, "all"), (0.1, "all"), (0.1, "auto"))])
    assert list(arm_labels(runs)) == ["targeted (fraction=0.05, scope=all)", "targeted (fraction=0.1, scope=all)",
                                      "targeted (scope=auto)"]


def test_devices_and_nodes_are_conditions_but_the_runtime_is_not():
    """batch_size is per device and the learning rate follows the global batch: runs on 1 and on 2 devices
    train differently and must not be pooled as seeds of one condition. Precision and the like only run it."""
    from replast.report.labels import condition_columns

    runs = pd.DataFrame([{"data": "br35h", "devices": d, "num_nodes": n, "train.precision": p, "seed": s}
                         for d, n, p, s in ((1, 1, "32-true", 0), (2, 1, "bf16-mixed", 1), (1, 2, "32-true", 2))])
    assert condition_columns(runs) == ["devices", "num_nodes"]


def test_overview_across_conditions_known_answers(study_out):
    render(study_out)
    table = pd.read_csv(study_out / "report" / "overview.csv").set_index("arm")
    assert list(table.index) == ["none", "linear-probe", "targeted (fraction=0.1)", "targeted (fraction=0.3)"]
    br, fm = "br35h × mobilenetv2_100", "fashion-mnist × mobilenetv2_100"
    assert table.loc["none", f"delta:{br}"] == pytest.approx(0.82)  # the baseline row: its accuracy
    assert table.loc["targeted (fraction=0.1)", f"delta:{fm}"] == pytest.approx(0.05)
    assert table.loc["targeted (fraction=0.1)", ["higher", "lower"]].tolist() == [2, 0]
    assert table.loc["linear-probe", ["higher", "lower"]].tolist() == [0, 2]
    assert table.loc["targeted (fraction=0.3)", ["higher", "lower"]].tolist() == [0, 0]
    md = (study_out / "report.md").read_text()
    assert md.index("## All conditions at a glance") < md.index(f"## {br}")
    assert f"| Strategy | {br} | {fm} | Higher | Lower |" in md
    assert "| none (test acc) | 82.0% | 82.0% |  |  |" in md
    assert "| targeted (fraction=0.1) | +5.0\\* | +5.0\\* | 2 | 0 |" in md
    assert "| targeted (fraction=0.3) | +0.0 | +0.0 | 0 | 0 |" in md
    assert "| linear-probe | -20.0\\* | -20.0\\* | 0 | 2 |" in md
    # Pooled over both conditions: 6 pairs each. Targeted 0.1's +5, +4, +6 pp twice: mean 5, sd 0.8944, t = 13.69
    # with 5 dof (p 3.73e-5), interval 5 ± 2.5706 · 0.8944 / √6 = 5 ± 0.9386; Holm × 2 (linear-probe's is smaller).
    assert table.loc["targeted (fraction=0.1)", ["pooled_n", "pooled_p"]].tolist() == [6, pytest.approx(3.7265e-5, abs=1e-8)]
    assert table.loc["targeted (fraction=0.1)", "pooled_delta"] == pytest.approx(0.05)
    assert table.loc["linear-probe", "pooled_delta"] == pytest.approx(-0.20)
    assert table.loc["targeted (fraction=0.3)", "pooled_p"] == pytest.approx(1.0)
    assert table.loc["targeted (fraction=0.1)", "pooled_p_holm"] == pytest.approx(2 * 3.7265e-5, abs=1e-8)
    assert table.loc["targeted (fraction=0.1)", "pooled_significant"]
    assert "| targeted (fraction=0.1) | +5.0\\* | +5.0\\* | 2 | 0 | +5.0\\* [+4.1, +5.9] (6) | &lt;0.001 |" in md
    assert "| none (test acc) | 82.0% | 82.0% |  |  |  |  |" in md


def _drop_runs(out: Path, *needles: str) -> None:
    for run in (out / "runs").iterdir():
        if all(n in (run / "config.yaml").read_text() for n in needles):
            shutil.rmtree(run)


def test_overview_marks_arms_missing_from_a_condition_and_needs_two_conditions(study_out):
    _drop_runs(study_out, "fashion-mnist", "linear-probe")
    render(study_out)
    assert "| linear-probe | -20.0\\* | — | 0 | 1 |" in (study_out / "report.md").read_text()
    _drop_runs(study_out, "fashion-mnist")
    render(study_out)
    assert "All conditions at a glance" not in (study_out / "report.md").read_text()
    assert len(pd.read_csv(study_out / "report" / "overview.csv")) == 4  # the CSV is written for one too


@pytest.mark.parametrize("n", [1, 10, 11, 23, 40])
def test_every_arm_gets_its_own_colour(n):
    # the paper study has 23 arms: with tab20 alone the last three repeated the first three's colours
    colors = arm_colors([f"arm{i}" for i in range(n)])
    assert len(colors) == n and len(set(colors.values())) == n


def test_table_rows_say_how_many_pairs_and_treat_repeated_seeds_as_one():
    from replast.report.build import table_rows

    # `none` ran seeds 0-2, x ran 0-4: Δ comes from 3 pairs; x's seed 0 ran twice (CPU and GPU), averaged first
    runs = pd.DataFrame({"arm": ["none"] * 3 + ["x"] * 6, "seed": [0, 1, 2, 0, 0, 1, 2, 3, 4],
                         "test_acc": [0.80, 0.82, 0.84, 0.84, 0.86, 0.86, 0.88, 0.70, 0.99]})
    table = arm_table(runs).set_index("arm")
    assert table.loc["x", "n"] == 5 and table.loc["x", "runs"] == 6 and table.loc["x", "pairs"] == 3
    assert table.loc["x", "acc"] == pytest.approx((0.85 + 0.86 + 0.88 + 0.70 + 0.99) / 5)
    assert table.loc["x", "delta"] == pytest.approx(0.0433333, abs=1e-6)  # 5, 4, 4 pp
    row = dict(zip(["arm", "n", "acc", "val", "delta"], table_rows(table.reset_index())[1], strict=False))
    assert row["n"] == "5" and row["delta"].endswith("(3 pairs)")


def test_table_rows_one_seed_never_reached_and_rounding():
    from replast.report.build import _fmt, _p, table_rows

    runs = pd.DataFrame({"arm": ["none", "x"], "seed": [0, 0], "test_acc": [0.8, 0.9], "epochs_to_95": [1.0, np.inf],
                         "epochs_to_100": [2.0, np.inf]})
    base, x = table_rows(arm_table(runs))
    assert base[2] == "80.0" and x[4] == "+10.0"  # one seed: a mean, no interval
    assert x[6] == "never / never" and x[7] == "0/1" and x[8] == "—"
    assert _fmt(-0.0004, scale=100, sign=True) == "+0.0" and _fmt(-0.0004, scale=100) == "0.0"
    assert _p(0.0496) == "0.0496" and _p(0.0504) == "0.0504" and _p(0.05) == "0.050" and _p(0.0123) == "0.012"


def test_sentence_when_no_run_has_an_accuracy():
    runs = pd.DataFrame({"arm": ["none", "x"], "seed": [0, 0], "test_acc": [np.nan, np.nan]})
    assert sentence(arm_table(runs), has_baseline=True) == "No finished runs."


# ---- labels: two settings merged into one arm ---------------------------------------------------------
def test_global_selection_uses_fraction_even_with_a_scope_mapping():
    """Evidence for the next test (passes): selection=global ranks with reinit.fraction whatever the scope,
    so scope auto (a {layer: fraction} mapping) does not make fraction unused there."""
    from test_reinit import batches, tiny

    from replast.reinit import restore_plasticity

    n_reset = [restore_plasticity(tiny(), batches(), utility="magnitude", selection="global", fraction=f,
                                  scope={"0": 0.5, "3": 0.5}).n_reset for f in (0.05, 0.2)]
    assert n_reset[0] < n_reset[1]


def test_scope_auto_with_global_selection_keeps_fraction_in_the_arm_label():
    runs = pd.DataFrame([{"reinit.strategy": "targeted", "reinit.selection": "global", "reinit.scope": "auto",
                          "reinit.fraction": f} for f in (0.05, 0.2)])
    labels = list(arm_labels(runs))
    assert labels[0] != labels[1], labels  # two different settings, one arm: their seeds get averaged


# ---- labels: a late field merged from a part that predates it (regression guard: passes with pandas 3's
# str dtype, whose astype(str) keeps NaN out of nunique; with object columns it would split each arm in two) ----
def test_merging_a_part_without_a_late_field_keeps_one_arm_per_setting(study_out, tmp_path):  # noqa: F811
    from replast.experiment import collect
    from replast.store import merge

    collect(study_out)
    published = tmp_path / "published"  # e.g. docs/results/paper: its results.csv has no reinit.unpaired
    published.mkdir()
    results = pd.read_csv(study_out / "results.csv")
    assert "reinit.unpaired" in results
    results.drop(columns=["reinit.unpaired"]).to_csv(published / "results.csv", index=False)
    (published / "curves.csv").write_text((study_out / "curves.csv").read_text())
    part = tmp_path / "part"  # two more seeds run with today's replast, which writes reinit.unpaired
    for seed in (3, 4):
        write_run(part, {"data": "br35h", "seed": seed, "reinit.strategy": "targeted", "reinit.fraction": 0.1},
                  0.86, [0.80, 0.85, 0.86])
    merge(part, published)
    render(published)
    arms = set(pd.read_csv(published / "report" / "summary.csv")["arm"])
    assert arms == {"none", "linear-probe", "targeted (fraction=0.1)", "targeted (fraction=0.3)"}, arms


# ---- store.collect: a malformed run file is a failure, not a crash ------------------------------------
def test_collect_lists_a_run_whose_config_is_not_utf8_as_damaged(study_out):  # noqa: F811
    from replast.store import collect

    run = sorted((study_out / "runs").iterdir())[0]
    (run / "config.yaml").write_bytes(b"model: mobilenetv2_100\ndata: br35h\xff\xfe\n")
    _, _, failures = collect(study_out, write=False)
    assert {f["hash"]: f["status"] for f in failures}.get(run.name) == "damaged"


# ---- layers: a file counted as "left out" must be left out -------------------------------------------
def test_a_partly_unreadable_diagnosis_file_is_left_out_entirely(tmp_path):
    from replast.report import layers

    run = tmp_path / "runs" / "h1"
    run.mkdir(parents=True)
    good = {"features": {"effective_rank": 10.0}, "rows": [
        {"layer": "a", "kind": "param", "depth": 1, "plasticity_score": 0.2, "dormant_fraction": 0.5,
         "small_grad_fraction": 0.1}]}
    (run / "diagnosis.json").write_text(json.dumps({"before_reinit": good,
                                                    "after_reinit": {"rows": [{"kind": "param"}]}}))
    frame, features, unreadable = layers.load(tmp_path, pd.DataFrame({"hash": ["h1"], "arm": ["x"]}))
    assert unreadable == 1
    assert frame.empty and features.empty, (frame, features)  # the report says it is "left out"


# ---- markdown: failure reasons and arm names shown literally -----------------------------------------
def test_markdown_cells_show_angle_brackets_and_stars_literally():
    from markdown_it import MarkdownIt

    from replast.report.blocks import Table
    from replast.report.markdown import to_markdown

    reason = "AttributeError: Can't pickle local object 'loader.<locals>.<lambda>'"
    arm = 'targeted (include=["blocks.*.conv", "stem*"])'
    html = MarkdownIt("commonmark").enable("table").render(
        to_markdown([Table(["Strategy", "reason"], [[arm, reason]])]))
    assert "&lt;locals&gt;.&lt;lambda&gt;" in html, html  # not swallowed as raw HTML tags
    assert "<em>" not in html and "blocks.*.conv" in html, html


# ---- report from results.csv: blank cells of unfinished runs -----------------------------------------
def test_failures_read_from_results_csv_show_blank_reasons_blank(tmp_path):
    out = tmp_path / "csv"
    out.mkdir()
    pd.DataFrame([{"hash": "abc", "status": "queued", "reason": "", "model": "m", "data": "d", "seed": 0,
                   "reinit.strategy": "none"}]).to_csv(out / "results.csv", index=False)
    render(out)
    md = (out / "report.md").read_text()
    assert "| abc | queued |  | m | d | 0 | none |" in md, md.split("## Failed")[1]


# ---- merge: a malformed CSV is an OutputError before anything is written ---------------------------------
def test_merge_refuses_a_results_row_with_extra_cells_before_writing(tmp_path):
    import pytest

    from replast.errors import OutputError
    from replast.store import merge

    source = tmp_path / "source"
    source.mkdir()
    (source / "results.csv").write_text("hash,status\nabc,finished,stray\n")
    (source / "curves.csv").write_text("hash,epoch,val_acc\nabc,1,0.5\n")
    with pytest.raises(OutputError):
        merge(source, tmp_path / "into")
    assert not (tmp_path / "into" / "curves.csv").exists()  # no half-merged INTO
